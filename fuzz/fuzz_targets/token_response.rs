//! Token, exchange and revocation responses: `oauth::parse_token_response` on arbitrary status
//! codes and bodies. Invariants: no panic; success only for 2xx with a non-empty string
//! `access_token` and a Bearer `token_type`; a bounded lifetime; `invalid_grant` only from a
//! 4xx; 5xx and 429 always transient; error codes are bounded in length.
#![no_main]

use bffgate::oauth::{parse_token_response, TokenError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) % 700, rest),
        _ => (200, data),
    };
    for (st, now) in [(status, 1_750_000_000u64), (200, 0), (400, u64::MAX)] {
        match parse_token_response(st, body, now) {
            Ok(t) => {
                assert!((200..300).contains(&st));
                assert!(!t.access_token.expose().is_empty());
                assert!(t.expires_in <= 365 * 86400);
                let v: serde_json::Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => panic!("accepted a non-JSON body: {e}"),
                };
                assert_eq!(v["access_token"].as_str(), Some(t.access_token.expose()));
                assert!(v["token_type"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case("bearer")));
                assert!(format!("{t:?}").contains("access_token: [redacted]"));
            }
            Err(TokenError::InvalidGrant) => assert!((400..500).contains(&st) && st != 429),
            Err(TokenError::OAuth(code)) => {
                assert!((400..500).contains(&st) && st != 429);
                assert!(code.chars().count() <= 64);
                assert!(TokenError::OAuth(code).is_terminal());
            }
            Err(TokenError::Unavailable(s)) => {
                assert_eq!(s, st);
                assert!(!(200..300).contains(&st));
            }
            Err(TokenError::Malformed(_)) => assert!((200..300).contains(&st)),
            Err(_) => {}
        }
    }
});
