//! `Cookie` request-header parsing and `Set-Cookie` building. No cryptography here.
//!
//! Parsing is lenient in what it skips (malformed pairs are ignored, as browsers do) and strict
//! in what it returns: names are compared exactly (cookie names are case-sensitive), and the
//! caller decides what a duplicate means.

/// Iterates over the `name=value` pairs of a `Cookie` header, skipping malformed pairs.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|part| {
        let part = part.trim_matches(|c| c == ' ' || c == '\t');
        let (name, value) = part.split_once('=')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((name, value))
    })
}

/// How many cookies named exactly `name` the header carries, and the first one's value.
pub fn find<'a>(header: &'a str, name: &str) -> (usize, Option<&'a str>) {
    let mut count = 0;
    let mut first = None;
    for (n, v) in pairs(header) {
        if n == name {
            count += 1;
            if first.is_none() {
                first = Some(v);
            }
        }
    }
    (count, first)
}

/// Rebuilds a `Cookie` header without the cookies for which `drop` is true.
/// Returns `None` when nothing is left (the header should then be removed).
pub fn without(header: &str, drop: impl Fn(&str) -> bool) -> Option<String> {
    let mut out = String::with_capacity(header.len());
    for part in header.split(';') {
        let trimmed = part.trim();
        if trimmed.is_empty() {
            continue;
        }
        let name = trimmed.split_once('=').map_or(trimmed, |(n, _)| n).trim();
        if drop(name) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(trimmed);
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// The `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites (needed for the login callback).
    Lax,
    /// Never sent cross-site.
    Strict,
    /// Sent everywhere (requires Secure); only with an explicit opt-in.
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// Attributes of a `Set-Cookie`.
#[derive(Debug, Clone)]
pub struct Attributes {
    /// `Secure`.
    pub secure: bool,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Path`.
    pub path: String,
    /// `Domain` (never with a `__Host-` name; config validation refuses it).
    pub domain: Option<String>,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes {
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
        }
    }
}

/// Builds a `Set-Cookie` value. `max_age` of `Some(0)` deletes the cookie; `None` makes a
/// browser-session cookie.
pub fn set_cookie(name: &str, value: &str, attrs: &Attributes, max_age: Option<u64>) -> String {
    let mut s = String::with_capacity(name.len() + value.len() + 80);
    s.push_str(name);
    s.push('=');
    s.push_str(value);
    s.push_str("; Path=");
    s.push_str(&attrs.path);
    if let Some(d) = &attrs.domain {
        s.push_str("; Domain=");
        s.push_str(d);
    }
    if let Some(age) = max_age {
        s.push_str("; Max-Age=");
        s.push_str(&age.to_string());
        if age == 0 {
            s.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        }
    }
    if attrs.secure {
        s.push_str("; Secure");
    }
    if attrs.http_only {
        s.push_str("; HttpOnly");
    }
    s.push_str("; SameSite=");
    s.push_str(attrs.same_site.as_str());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_skips_garbage() {
        let h = "a=1; __Host-bff-session=v.1.2 ; junk; =x; b=\"q\"";
        let v: Vec<_> = pairs(h).collect();
        assert_eq!(
            v,
            vec![("a", "1"), ("__Host-bff-session", "v.1.2"), ("b", "q")]
        );
    }

    #[test]
    fn find_counts_duplicates_and_is_case_sensitive() {
        let h = "__Host-bff-session=one; __host-bff-session=two; __Host-bff-session=three";
        assert_eq!(find(h, "__Host-bff-session"), (2, Some("one")));
        assert_eq!(find(h, "missing"), (0, None));
    }

    #[test]
    fn without_keeps_other_cookies() {
        let h = "theme=dark; __Host-bff-session=abc; __Host-bff-flow-x=y; lang=en";
        let out = without(h, |n| n.starts_with("__Host-bff-"));
        assert_eq!(out.as_deref(), Some("theme=dark; lang=en"));
        assert_eq!(
            without("__Host-bff-session=abc", |n| n.starts_with("__Host-bff-")),
            None
        );
    }

    #[test]
    fn set_cookie_has_safe_defaults() {
        let c = set_cookie("__Host-bff-session", "v", &Attributes::default(), None);
        assert_eq!(
            c,
            "__Host-bff-session=v; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        let d = set_cookie("n", "", &Attributes::default(), Some(0));
        assert!(d.contains("Max-Age=0") && d.contains("Expires=Thu, 01 Jan 1970"));
    }
}
