//! JWKS and JWS: `jose::parse_jwks` on arbitrary documents and `jose::verify_with` of arbitrary
//! tokens against it and against real key sets (tests/data and tests/data/jose, made by npm
//! `jose`, the provider's own JOSE library), with every algorithm bffgate verifies in the
//! policy and the HMAC fixtures' client secret. Invariants: no panic; against the real sets
//! only the real tokens' exact header.payload verify (no alg confusion, no HMAC with a public
//! key, no `none`, no malleated payload); a parsed set holds at most 64 keys.
#![no_main]

use bffgate::jose::{parse_jwks, verify_with, KeySet, Policy, ALGS};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const JWKS: &str = include_str!("../../tests/data/jwks.json");
const JOSE_JWKS: &str = include_str!("../../tests/data/jose/jwks.json");
const HS_SECRET: &[u8] = b"test-client-secret-for-hs-fixtures";
const TOKENS: &[&str] = &[
    include_str!("../../tests/data/rs256.jwt"),
    include_str!("../../tests/data/es256.jwt"),
    include_str!("../../tests/data/jose/RS256.jwt"),
    include_str!("../../tests/data/jose/RS384.jwt"),
    include_str!("../../tests/data/jose/RS512.jwt"),
    include_str!("../../tests/data/jose/PS256.jwt"),
    include_str!("../../tests/data/jose/PS384.jwt"),
    include_str!("../../tests/data/jose/PS512.jwt"),
    include_str!("../../tests/data/jose/ES256.jwt"),
    include_str!("../../tests/data/jose/ES384.jwt"),
    include_str!("../../tests/data/jose/HS256.jwt"),
    include_str!("../../tests/data/jose/HS384.jwt"),
    include_str!("../../tests/data/jose/HS512.jwt"),
];

fn real() -> &'static [KeySet; 2] {
    static S: OnceLock<[KeySet; 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            parse_jwks(JWKS.as_bytes()).unwrap_or_default(),
            parse_jwks(JOSE_JWKS.as_bytes()).unwrap_or_default(),
        ]
    })
}

fn algs() -> &'static [String] {
    static A: OnceLock<Vec<String>> = OnceLock::new();
    A.get_or_init(|| ALGS.iter().map(|a| a.to_string()).collect())
}

fn signing_input(t: &str) -> &str {
    t.trim().rsplit_once('.').map_or("", |(si, _)| si)
}

fuzz_target!(|data: &[u8]| {
    // `jwks-document\n\njwt` or just a token (checked against the real sets).
    let (doc, tok) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (
            data.get(..i).unwrap_or(&[]),
            data.get(i + 2..).unwrap_or(&[]),
        ),
        None => (&[][..], data),
    };
    let tok = String::from_utf8_lossy(tok);
    let tok = tok.trim_end_matches('\n');
    let policy = Policy {
        algs: algs(),
        hmac_secret: Some(HS_SECRET),
    };
    for set in real() {
        if let Ok(c) = verify_with(tok, set, policy) {
            let si = signing_input(tok);
            assert!(
                TOKENS.iter().any(|t| signing_input(t) == si),
                "a token the provider never signed verifies: {tok:?}"
            );
            assert!(c.contains_key("sub"));
        }
    }
    if !doc.is_empty() {
        if let Ok(set) = parse_jwks(doc) {
            assert!(set.keys.len() <= 64);
            let _ = verify_with(tok, &set, policy);
            for t in TOKENS {
                let _ = verify_with(t.trim(), &set, policy);
            }
        }
    }
});
