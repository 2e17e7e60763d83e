//! JWT payload decoding and ID-token claim checks: `jwt::decode_payload`,
//! `jwt::check_id_token`, `jose::header_kid`. Invariants: no panic; an accepted ID token has
//! exactly the issuer, an audience containing the client id, an unexpired `exp`, the nonce and a
//! non-empty string `sub`; decoding is bounded in input length.
#![no_main]

use bffgate::jwt::{check_id_token, decode_payload, MAX_JWT_LEN};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ISS: &str = "http://localhost:9000";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // `nonce\njwt`, or the whole input as the token with nonce "n1".
    let (nonce, jwt) = s.split_once('\n').unwrap_or(("n1", s));
    let p = decode_payload(jwt);
    if p.is_some() {
        assert!(jwt.len() <= MAX_JWT_LEN);
        assert_eq!(jwt.split('.').count(), 3);
    }
    let _ = bffgate::jose::header_kid(jwt);
    for now in [0u64, 1_750_000_000, u64::MAX] {
        if let Ok(c) = check_id_token(jwt, ISS, "bffgate", nonce, now, 60) {
            assert_eq!(c.get("iss").and_then(Value::as_str), Some(ISS));
            let aud_ok = match c.get("aud") {
                Some(Value::String(a)) => a == "bffgate",
                Some(Value::Array(v)) => v.iter().any(|a| a.as_str() == Some("bffgate")),
                _ => false,
            };
            assert!(aud_ok);
            let exp = c.get("exp").and_then(Value::as_u64);
            assert!(exp.is_some_and(|e| e.saturating_add(60) > now));
            assert_eq!(c.get("nonce").and_then(Value::as_str).unwrap_or(""), nonce);
            assert!(c
                .get("sub")
                .and_then(Value::as_str)
                .is_some_and(|x| !x.is_empty()));
            assert_eq!(Some(&c), p.as_ref());
        }
    }
});
