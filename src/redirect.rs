//! `return_to` validation: only local paths survive; everything else becomes `/`.
//!
//! The input is the already percent-decoded query value. A local path starts with a single `/`,
//! is printable ASCII with no backslash, and stays local after one more round of
//! percent-decoding (so `/%2F%2Fevil` and `/%5Cevil` are refused too).
//!
//! Dot segments are resolved (RFC 3986 section 5.2.4) before those checks, in the path as given
//! and in its decoded form (`%2e`, `%2f`, `%5c` decoded, a backslash read as a slash, as some
//! servers and browsers do): a path that would climb out of the root, or that resolves to one
//! starting with `//` (a protocol-relative URL once an upstream or a later redirect normalises
//! it, e.g. `/a/..//evil.com`), is refused. What is kept is the path with its dot segments
//! resolved, so the `Location` sent never carries one.

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

/// Whether a segment is `.` or `..` once its percent-encoded dots are read (`%2e`, `.%2E`).
fn dot_segment(seg: &str) -> Option<bool> {
    let mut dots = 0;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return None,
        }
        dots += 1;
    }
    match dots {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// RFC 3986 5.2.4 on an absolute path: `None` if a `..` would climb above the root.
fn remove_dot_segments(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    for (i, seg) in segs.iter().enumerate() {
        match dot_segment(seg) {
            Some(up) => {
                if up && out.pop().is_none() {
                    return None;
                }
                // A trailing dot segment leaves a directory: `/a/b/..` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
            None => out.push(seg),
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// The decoded form a lenient server or browser may see: percent-decoded once, backslashes as
/// slashes.
fn lenient(p: &str) -> String {
    percent_decode_str(p).decode_utf8_lossy().replace('\\', "/")
}

fn starts_with_two_slashes(p: &str) -> bool {
    matches!(p.as_bytes(), [b'/', b'/' | b'\\', ..])
}

/// The safe redirect target for a requested `return_to`.
pub fn sanitize_return_to(raw: Option<&str>) -> String {
    let Some(p) = raw else { return "/".into() };
    if p.is_empty() || p.len() > MAX_LEN || !is_local(p) {
        return "/".into();
    }
    let split = p.find(['?', '#']).unwrap_or(p.len());
    let (path, rest) = p.split_at(split);
    // Dot segments resolved in the path as given (the form kept) ...
    let Some(path) = remove_dot_segments(path) else {
        return "/".into();
    };
    if starts_with_two_slashes(&path) {
        return "/".into();
    }
    // ... and in the forms a server or browser may decode it into.
    let decoded = lenient(&path);
    if remove_dot_segments(&decoded).is_none_or(|d| starts_with_two_slashes(&d)) {
        return "/".into();
    }
    let kept = format!("{path}{rest}");
    // Browsers and servers may decode again: the decoded form must be local as well.
    // Browsers also drop tabs and newlines inside URLs, so control characters are refused.
    let decoded = percent_decode_str(&kept).decode_utf8_lossy();
    let db = decoded.as_bytes();
    if matches!(
        (db.first(), db.get(1)),
        (Some(b'/'), Some(b'/' | b'\\')) | (Some(b'\\'), _)
    ) || decoded.chars().any(|c| c.is_control())
    {
        return "/".into();
    }
    kept
}

/// Whether `p` is a redirect target [`sanitize_return_to`] may produce: `/`, or a local path
/// with no dot segment and no `//` prefix in its given or decoded forms. The oracle of the
/// property and fuzz tests.
pub fn is_safe_target(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    if !is_local(p) {
        return false;
    }
    let path = &p[..p.find(['?', '#']).unwrap_or(p.len())];
    let decoded = lenient(path);
    for form in [path, decoded.as_str()] {
        if starts_with_two_slashes(form) {
            return false;
        }
        match remove_dot_segments(form) {
            Some(n) if !starts_with_two_slashes(&n) => {}
            _ => return false,
        }
    }
    path.split('/').all(|seg| dot_segment(seg).is_none())
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
        for b in bad {
            assert!(is_safe_target(&sanitize_return_to(Some(b))));
        }
    }

    #[test]
    fn dot_segments_that_resolve_off_site_or_above_the_root_become_root() {
        let bad = [
            "/a/..//evil.com",
            "/a/b/../..//evil.com",
            "/./..//evil.com",
            "/a/.././/evil.com",
            "/.//evil.com",
            "/a/%2e%2e//evil.com",
            "/a/%2E%2E//evil.com",
            "/a/.%2e//evil.com",
            "/a/%2e.//evil.com",
            "/%2e//evil.com",
            "/a/..%2F%2Fevil.com",
            "/a%2F..%2F%2Fevil.com",
            "/a/..%5C%5Cevil.com",
            "/a/..%5C/evil.com",
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/a/%2e%2e/%2e%2e/x",
            "/a%2F..%2F..%2Fx",
            "/x/..%2F..%2Fy",
            "/a/..//evil.com?next=/",
            "/a/..//evil.com#/frag",
        ];
        for b in bad {
            assert_eq!(sanitize_return_to(Some(b)), "/", "{b:?}");
        }
    }

    #[test]
    fn dot_segments_inside_the_site_are_resolved() {
        for (given, kept) in [
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2e%2e/b?x=../..", "/b?x=../.."),
            ("/a/b/../c#../../..", "/a/c#../../.."),
            ("/.../x", "/.../x"),
            ("/a..b/c", "/a..b/c"),
            ("/.", "/"),
        ] {
            assert_eq!(sanitize_return_to(Some(given)), kept, "{given:?}");
            assert!(is_safe_target(kept), "{kept:?}");
        }
        assert!(!is_safe_target("/a/../b"));
        assert!(!is_safe_target("//evil.com"));
        assert!(!is_safe_target("/a/%2e%2e//evil"));
    }
}
