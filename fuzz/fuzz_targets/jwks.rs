//! JWKS and JWS: `jose::parse_jwks` on arbitrary documents and `jose::verify` of arbitrary
//! tokens against it and against a real key set (tests/data, made by the provider's own JOSE
//! library). Invariants: no panic; against the real set only the two real tokens' exact
//! header.payload verify (no alg confusion, no `none`, no malleated payload); a parsed set
//! holds at most 64 keys.
#![no_main]

use bffgate::jose::{parse_jwks, verify, KeySet};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const JWKS: &str = include_str!("../../tests/data/jwks.json");
const RS: &str = include_str!("../../tests/data/rs256.jwt");
const ES: &str = include_str!("../../tests/data/es256.jwt");

fn real() -> &'static KeySet {
    static S: OnceLock<KeySet> = OnceLock::new();
    S.get_or_init(|| parse_jwks(JWKS.as_bytes()).unwrap_or_default())
}

fn signing_input(t: &str) -> &str {
    t.trim().rsplit_once('.').map_or("", |(si, _)| si)
}

fuzz_target!(|data: &[u8]| {
    // `jwks-document\n\njwt` or just a token (checked against the real set).
    let (doc, tok) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (
            data.get(..i).unwrap_or(&[]),
            data.get(i + 2..).unwrap_or(&[]),
        ),
        None => (&[][..], data),
    };
    let tok = String::from_utf8_lossy(tok);
    let tok = tok.trim_end_matches('\n');
    if let Ok(c) = verify(tok, real()) {
        let si = signing_input(tok);
        assert!(
            si == signing_input(RS) || si == signing_input(ES),
            "a token the provider never signed verifies: {tok:?}"
        );
        assert!(c.contains_key("sub"));
    }
    if !doc.is_empty() {
        if let Ok(set) = parse_jwks(doc) {
            assert!(set.keys.len() <= 64);
            let _ = verify(tok, &set);
            let _ = verify(RS.trim(), &set);
            let _ = verify(ES.trim(), &set);
        }
    }
});
