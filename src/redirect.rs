//! `return_to` validation: only local paths survive; everything else becomes `/`.
//!
//! The input is the already percent-decoded query value. A local path starts with a single `/`,
//! is printable ASCII with no backslash, and stays local after one more round of
//! percent-decoding (so `/%2F%2Fevil` and `/%5Cevil` are refused too).

use percent_encoding::percent_decode_str;

/// Longest `return_to` kept.
pub const MAX_LEN: usize = 2048;

fn is_local(p: &str) -> bool {
    let b = p.as_bytes();
    match (b.first(), b.get(1)) {
        (Some(b'/'), Some(b'/' | b'\\')) => return false,
        (Some(b'/'), _) => {}
        _ => return false,
    }
    p.bytes().all(|c| (0x21..0x7f).contains(&c) && c != b'\\')
}

/// The safe redirect target for a requested `return_to`.
pub fn sanitize_return_to(raw: Option<&str>) -> String {
    let Some(p) = raw else { return "/".into() };
    if p.is_empty() || p.len() > MAX_LEN || !is_local(p) {
        return "/".into();
    }
    // Browsers and servers may decode again: the decoded form must be local as well.
    // Browsers also drop tabs and newlines inside URLs, so control characters are refused.
    let decoded = percent_decode_str(p).decode_utf8_lossy();
    let db = decoded.as_bytes();
    if matches!(
        (db.first(), db.get(1)),
        (Some(b'/'), Some(b'/' | b'\\')) | (Some(b'\\'), _)
    ) || decoded.chars().any(|c| c.is_control())
    {
        return "/".into();
    }
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_kept() {
        for ok in [
            "/",
            "/orders",
            "/orders?id=5&x=y",
            "/a/b/c#frag",
            "/search?q=%2F%2F",
            "/path/with%20space",
            "/~user/",
            "/a:b@c",
        ] {
            assert_eq!(sanitize_return_to(Some(ok)), ok, "{ok}");
        }
    }

    #[test]
    fn off_site_and_odd_forms_become_root() {
        let bad = [
            "//evil.com",
            "//evil.com/path",
            "/\\evil.com",
            "\\\\evil.com",
            "\\/evil.com",
            "https://evil.com",
            "http://evil.com",
            "HTTPS://evil.com",
            "javascript:alert(1)",
            "data:text/html,x",
            "vbscript:x",
            "evil.com",
            "",
            " /orders",
            "\t/orders",
            "/orders\n",
            "/or\rders",
            "/\u{0}x",
            "/%2F%2Fevil.com",
            "/%2f/evil.com",
            "/%5Cevil.com",
            "/%5cevil.com",
            "%2F%2Fevil.com",
            "/\u{3000}evil",
            "/évil",
            "///evil.com",
            "/ /evil.com",
            "/\u{7f}",
            "/a\\b",
            "//",
            "/\t/evil.com",
            "https:evil.com",
            "//evil.com%2F@good",
            "/%09/evil.com",
            "/%0d%0aSet-Cookie:x",
            "mailto:a@b",
            "./x",
            "../x",
            "?x=/",
            "#/x",
            "/%2F%5Cevil",
            "/%5C%5Cevil",
            "/%0a/evil.com",
            "/\u{200b}/evil",
        ];
        assert!(bad.len() >= 40);
        for b in bad {
            assert_eq!(sanitize_return_to(Some(b)), "/", "{b:?}");
        }
        assert_eq!(sanitize_return_to(None), "/");
        assert_eq!(
            sanitize_return_to(Some(&format!("/{}", "a".repeat(3000)))),
            "/"
        );
    }
}
