//! `Cookie` request-header parsing and `Set-Cookie` building. No cryptography here.
//!
//! Parsing is lenient in what it skips (malformed pairs are ignored, as browsers do) and strict
//! in what it returns: names are compared exactly (cookie names are case-sensitive), and the
//! caller decides what a duplicate means.

/// The first position of `needle` in `hay`, eight bytes at a time (the session cookie's value is
/// most of a `Cookie` header and is scanned on every request).
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        // A zero byte of `w` is a match; the lowest flagged byte is exactly the first zero.
        let w = u64::from_le_bytes(bytes) ^ pattern;
        let zero = w.wrapping_sub(LO) & !w & HI;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    hay.get(at..)?
        .iter()
        .position(|b| *b == needle)
        .map(|i| at + i)
}

/// `header` split at every `;` (as `str::split(';')`, by a byte search: `;` is ASCII, so every
/// piece is a `str`).
fn split_semicolons(header: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_byte(r.as_bytes(), b';') {
            Some(i) => {
                rest = r.get(i + 1..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s` without leading and trailing spaces and tabs.
fn trim_sp_tab(s: &str) -> &str {
    let b = s.as_bytes();
    let keep = |c: &u8| *c != b' ' && *c != b'\t';
    let Some(start) = b.iter().position(keep) else {
        return "";
    };
    let end = b.iter().rposition(keep).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or("")
}

/// `str::trim`, by bytes for the ASCII whitespace at either end; the character-by-character
/// search only runs when an end is not ASCII.
fn trim(s: &str) -> &str {
    // The ASCII characters `char::is_whitespace` accepts: U+0009 to U+000D and U+0020.
    let ws = |b: &u8| matches!(b, b'\t'..=b'\r' | b' ');
    let b = s.as_bytes();
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    let t = s.get(start..end).unwrap_or("");
    let ascii = |b: Option<&u8>| b.is_none_or(u8::is_ascii);
    if ascii(t.as_bytes().first()) && ascii(t.as_bytes().last()) {
        t
    } else {
        t.trim()
    }
}

/// `s` split at its first `=`.
fn split_eq(s: &str) -> Option<(&str, &str)> {
    let i = find_byte(s.as_bytes(), b'=')?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// `part` as a `name=value` pair (as [`pairs`] reads it), if it is one.
fn pair(part: &str) -> Option<(&str, &str)> {
    let part = trim_sp_tab(part);
    let (name, value) = split_eq(part)?;
    let name = trim(name);
    if name.is_empty() {
        return None;
    }
    let value = trim(value);
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((name, value))
}

/// `part`, trimmed, with the name it is dropped by (as [`parts`] reads it); `None` if empty.
fn part_named(part: &str) -> Option<(&str, &str)> {
    let trimmed = trim(part);
    if trimmed.is_empty() {
        return None;
    }
    Some((trimmed, trim(split_eq(trimmed).map_or(trimmed, |(n, _)| n))))
}

/// Iterates over the `name=value` pairs of a `Cookie` header, skipping malformed pairs.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    split_semicolons(header).filter_map(pair)
}

/// How many cookies named exactly `name` the header carries, and the first one's value.
pub fn find<'a>(header: &'a str, name: &str) -> (usize, Option<&'a str>) {
    let s = scan(header, name, |_| false);
    (s.count, s.first)
}

/// What one pass over a `Cookie` header found: [`find`]'s answer for a name, and whether
/// [`without`] would drop something (`ours`) and keep something (`others`) for a predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Cookies named exactly `name`.
    pub count: usize,
    /// The first one's value.
    pub first: Option<&'a str>,
    /// Some part would be dropped.
    pub ours: bool,
    /// Some part would be kept.
    pub others: bool,
}

/// [`find`] for `name`, and what [`without`] would do with `drop`, in one pass.
pub fn scan<'a>(header: &'a str, name: &str, drop: impl Fn(&str) -> bool) -> Scan<'a> {
    scan_parts(header, name, drop, false).0
}

/// [`scan`], and in the same pass [`without`]'s answer when it would drop a part and keep
/// another (`ours` and `others`), otherwise `None`: the header is read once for both (a request
/// with a session cookie among a site's cookies needs both).
pub fn scan_without<'a>(
    header: &'a str,
    name: &str,
    drop: impl Fn(&str) -> bool,
) -> (Scan<'a>, Option<String>) {
    scan_parts(header, name, drop, true)
}

fn scan_parts<'a>(
    header: &'a str,
    name: &str,
    drop: impl Fn(&str) -> bool,
    rebuild: bool,
) -> (Scan<'a>, Option<String>) {
    let mut s = Scan {
        count: 0,
        first: None,
        ours: false,
        others: false,
    };
    // The kept parts, as `without` joins them (built only with `rebuild`).
    let mut kept = String::new();
    for part in split_semicolons(header) {
        if let Some((n, v)) = pair(part) {
            if n == name {
                s.count += 1;
                if s.first.is_none() {
                    s.first = Some(v);
                }
            }
        }
        if let Some((trimmed, n)) = part_named(part) {
            if drop(n) {
                s.ours = true;
            } else {
                s.others = true;
                if rebuild {
                    if kept.is_empty() {
                        kept.reserve(header.len());
                    } else {
                        kept.push_str("; ");
                    }
                    kept.push_str(trimmed);
                }
            }
        }
    }
    let rest = (rebuild && s.ours && s.others).then_some(kept);
    (s, rest)
}

/// Every part of a `Cookie` header, well-formed or not, trimmed, with the name it is dropped by
/// (the text before its first `=`, or the whole part, trimmed). Empty parts are skipped.
pub fn parts(header: &str) -> impl Iterator<Item = (&str, &str)> {
    split_semicolons(header).filter_map(part_named)
}

/// Rebuilds a `Cookie` header without the cookies for which `drop` is true.
/// Returns `None` when nothing is left (the header should then be removed).
pub fn without(header: &str, drop: impl Fn(&str) -> bool) -> Option<String> {
    let mut out = String::with_capacity(header.len());
    for (trimmed, name) in parts(header) {
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
    fn scan_without_rebuilds_exactly_what_without_does_when_it_drops_and_keeps() {
        let ours = |n: &str| n.starts_with("__Host-bff-");
        for h in [
            "theme=dark; __Host-bff-session=abc; __Host-bff-flow-x=y; lang=en",
            "__Host-bff-session=abc",
            "theme=dark",
            "  a=1 ;;__Host-bff-session=x;\tb = 2 ; junk ; =v; __Host-bff-flow-q",
            "__Host-bff-session=a; __Host-bff-session=b; c=\"q\"",
            "",
            " ; ; ",
        ] {
            let (s, rest) = scan_without(h, "__Host-bff-session", ours);
            assert_eq!(s, scan(h, "__Host-bff-session", ours), "{h:?}");
            let want = if s.ours && s.others {
                without(h, ours)
            } else {
                None
            };
            assert_eq!(rest, want, "{h:?}");
        }
        let (s, rest) = scan_without("x=1; __Host-bff-session=v; y=2", "__Host-bff-session", ours);
        assert_eq!((s.count, s.first), (1, Some("v")));
        assert_eq!(rest.as_deref(), Some("x=1; y=2"));
    }

    #[test]
    fn find_counts_exactly_the_pairs_of_the_name_whatever_the_whitespace() {
        for h in [
            "a=1; a=2",
            "\u{a0}a=1;a\u{3000}=2; \ta =3;\r\na=4; a; =a; a==5; \"a\"=6",
            " a = \"q\" ; b=; a",
            "\u{85}a\u{85}=x\u{85}",
        ] {
            for name in ["a", "b", ""] {
                let want: Vec<&str> = pairs(h)
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!(
                    find(h, name),
                    (want.len(), want.first().copied()),
                    "{h:?} {name:?}"
                );
            }
        }
    }

    #[test]
    fn find_byte_finds_the_first_match_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut hay = vec![b'a'; len];
                hay[at] = b';';
                if at + 3 < len {
                    hay[at + 3] = b';';
                }
                // Bytes that differ from `;` only in a high bit, or by one, never match.
                if at > 0 {
                    hay[at - 1] = b';' | 0x80;
                }
                assert_eq!(find_byte(&hay, b';'), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_byte(&vec![b':'; len], b';'), None);
            assert_eq!(find_byte(&vec![0xbb; len], b';'), None);
        }
    }

    #[test]
    fn byte_scanning_matches_the_str_library() {
        // The reference: what `pairs` and `without` did with `str::split`, `trim` and
        // `split_once` before they scanned bytes.
        fn ref_pairs(header: &str) -> Vec<(&str, &str)> {
            header
                .split(';')
                .filter_map(|part| {
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
                .collect()
        }
        fn ref_parts(header: &str) -> Vec<(&str, &str)> {
            header
                .split(';')
                .filter_map(|part| {
                    let t = part.trim();
                    if t.is_empty() {
                        return None;
                    }
                    Some((t, t.split_once('=').map_or(t, |(n, _)| n).trim()))
                })
                .collect()
        }
        for h in [
            "",
            ";",
            ";;",
            " ; \t;",
            "a=1",
            "a=1;",
            ";a=1",
            "a=1; b=2",
            "a = 1 ;\tb=\"2\" ; c",
            "=x; y=; z==; w=a=b",
            "\u{a0}a=1\u{a0}; b\u{3000}=\u{2003}2",
            "n\u{e9}=v\u{e9}; \u{e9}=\u{e9}",
            "\r\na=1\n; \x0bb=2\x0c",
            "\x1ca=1\x1f; \x1cb = 2 \x1d",
            "__Host-bff-session=k1.AAAA.BBBB; theme=dark",
            "x=\"; y=\"\"",
        ] {
            assert_eq!(pairs(h).collect::<Vec<_>>(), ref_pairs(h), "pairs {h:?}");
            assert_eq!(parts(h).collect::<Vec<_>>(), ref_parts(h), "parts {h:?}");
            for name in ["a", "b", "__Host-bff-session", "x"] {
                let drop = |n: &str| n.eq_ignore_ascii_case(name);
                let s = scan(h, name, drop);
                let found: Vec<&str> = ref_pairs(h)
                    .into_iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!((s.count, s.first), (found.len(), found.first().copied()));
                assert_eq!(s.ours, ref_parts(h).iter().any(|(_, n)| drop(n)), "{h:?}");
                assert_eq!(s.others, without(h, drop).is_some(), "{h:?}");
            }
        }
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
