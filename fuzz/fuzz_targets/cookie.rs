//! `Cookie` header parsing: `cookie::pairs`, `cookie::find`, `cookie::without`.
//! Invariants: no panic; `find` agrees with `pairs`; `without` never keeps a cookie it was told
//! to drop (as `pairs` or an upstream splitting on `;` would read it), keeps every other pair, and
//! its output parses to the same pairs minus the dropped ones; `scan_without` agrees with `scan`
//! and rebuilds exactly `without`'s output whenever it drops a part and keeps another;
//! `set_cookie` output parses back.
#![no_main]

use bffgate::cookie::{find, pairs, scan, scan_without, set_cookie, without, Attributes};
use bffgate_fuzz::upstream_cookie_names;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = std::str::from_utf8(data) else {
        return;
    };
    let all: Vec<(&str, &str)> = pairs(h).collect();
    for name in ["__Host-bff-session", "a", ""] {
        let (n, first) = find(h, name);
        let want: Vec<&str> = all
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(n, want.len());
        assert_eq!(first, want.first().copied());
    }
    for (n, v) in &all {
        assert!(!n.is_empty() && !n.contains(';') && !v.contains(';'));
    }
    let drop = |n: &str| n.to_ascii_lowercase().starts_with("__host-bff");
    let (s, rest) = scan_without(h, "__Host-bff-session", drop);
    assert_eq!(s, scan(h, "__Host-bff-session", drop));
    let want = if s.ours && s.others { without(h, drop) } else { None };
    assert_eq!(rest, want, "{h:?}: the scan's rebuilt header differs from without's");
    match without(h, drop) {
        None => assert!(
            all.iter().all(|(n, _)| drop(n)),
            "{h:?}: a kept pair was lost"
        ),
        Some(out) => {
            for n in upstream_cookie_names(&out) {
                assert!(!drop(&n), "{h:?} -> {out:?} still carries {n}");
            }
            let kept: Vec<(&str, &str)> = pairs(&out).collect();
            let want: Vec<(&str, &str)> = all.iter().copied().filter(|(n, _)| !drop(n)).collect();
            assert_eq!(kept, want, "{h:?} -> {out:?}");
        }
    }
    // Building a Set-Cookie from a parsed pair and parsing its first pair back.
    if let Some((n, v)) = all.first() {
        // For names that are tokens and values made of RFC 6265 cookie-octets.
        let octet = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\');
        if n.chars().all(|c| octet(c) && c != '=') && v.chars().all(octet) {
            let sc = set_cookie(n, v, &Attributes::default(), Some(60));
            let back: Vec<(&str, &str)> = pairs(&sc).take(1).collect();
            assert_eq!(back, vec![(*n, *v)], "{sc}");
        }
    }
});
