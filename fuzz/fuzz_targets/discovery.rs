//! Discovery documents: `discovery::parse` on arbitrary bodies, with the issuer the body names
//! (so the checks past the issuer are reached) and with a fixed one; `split_endpoint` and
//! `well_known_path` on arbitrary strings. Invariants: no panic; an accepted document is a JSON
//! object naming exactly the expected issuer, whose endpoints are absolute http(s) URLs that
//! split for a callout as the configuration's parser splits them (https only under an https
//! issuer, no fragment, no query on the authorization endpoint), with `code`, an algorithm `jose` verifies,
//! `authorization_code`, and S256 if PKCE methods are listed; errors are short and free of
//! control characters.
#![no_main]

use bffgate::config::split_url;
use bffgate::discovery::{
    parse, split_endpoint, well_known_path, Discovered, DiscoveryError, MAX_BODY, SHOWN, WELL_KNOWN,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_endpoint(what: &str, url: &str, https_only: bool) {
    assert!(
        url.starts_with("https://") || (!https_only && url.starts_with("http://")),
        "{what} {url:?}"
    );
    assert!(!url.contains('#'), "{what} {url:?}");
    let (authority, path) = split_endpoint(url).unwrap_or_else(|| panic!("{what} {url:?}"));
    assert!(
        !authority.is_empty() && path.starts_with('/'),
        "{what} {url:?}"
    );
    let (_, a, p) = split_url(url).unwrap_or_else(|| panic!("config refuses {what} {url:?}"));
    assert_eq!((a, p), (authority, path), "{what}");
}

fn check_ok(d: &Discovered, body: &[u8], expected: &str) {
    assert_eq!(d.issuer, expected);
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let v: Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("accepted non-JSON: {e}"));
    assert_eq!(v.get("issuer").and_then(Value::as_str), Some(expected));
    let https_only = expected.starts_with("https://");
    check_endpoint(
        "authorization_endpoint",
        &d.authorization_endpoint,
        https_only,
    );
    assert!(!d.authorization_endpoint.contains('?'));
    for (what, url) in d.callout_endpoints() {
        check_endpoint(what, url, https_only);
    }
    if let Some(u) = &d.end_session_endpoint {
        check_endpoint("end_session_endpoint", u, https_only);
    }
    assert!(d.response_types_supported.iter().any(|t| t == "code"));
    assert!(d
        .id_token_signing_alg_values_supported
        .iter()
        .any(|a| bffgate::jose::ALGS.contains(&a.as_str())));
    assert!(d
        .grant_types_supported
        .iter()
        .any(|g| g == "authorization_code"));
    assert!(
        d.code_challenge_methods_supported.is_empty()
            || d.code_challenge_methods_supported
                .iter()
                .any(|m| m == "S256")
    );
}

fn check_err(e: &DiscoveryError, body: &[u8]) {
    let msg = e.to_string();
    assert!(!msg.is_empty());
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    // Two quoted values at most (issuer mismatch), each shortened, plus the fixed wording.
    assert!(
        msg.chars().count() <= 2 * (SHOWN + 1) + 300,
        "{} chars",
        msg.len()
    );
    if let DiscoveryError::TooLarge { len } = e {
        assert_eq!(*len, body.len());
        assert!(*len > MAX_BODY);
    }
}

fuzz_target!(|data: &[u8]| {
    let named = serde_json::from_slice::<Value>(data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data))
        .ok()
        .and_then(|v| v.get("issuer").and_then(Value::as_str).map(str::to_string));
    let mut issuers = vec!["https://idp.example".to_string()];
    if let Some(i) = named {
        issuers.push(format!("{i}/"));
        issuers.push(i);
    }
    for expected in &issuers {
        match parse(data, expected) {
            Ok(d) => {
                check_ok(&d, data, expected);
                if let Some((authority, path)) = well_known_path(&d.issuer) {
                    assert!(!authority.is_empty());
                    assert!(path.ends_with(WELL_KNOWN), "{path}");
                    assert!(!path.ends_with(&format!("/{WELL_KNOWN}")), "{path}");
                }
            }
            Err(e) => check_err(&e, data),
        }
    }
    // The helpers on the raw input as a string.
    let s = String::from_utf8_lossy(data);
    if let Some((authority, path)) = split_endpoint(&s) {
        let (_, a, p) = split_url(&s).unwrap_or_else(|| panic!("config refuses {s:?}"));
        assert_eq!((a, p), (authority, path));
    }
    if let Some((_, path)) = well_known_path(&s) {
        assert!(path.ends_with(WELL_KNOWN), "{path}");
        assert!(!path.ends_with(&format!("/{WELL_KNOWN}")), "{path}");
    }
});
