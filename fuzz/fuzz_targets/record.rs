//! The stored session record (`record::decode`, `record::Head`): a binary head the fast path
//! walks in place, then JSON. Shared data is trusted, but a record is read on every request, so
//! its decoder must be total. Invariants: no panic; what decodes re-encodes and decodes to the
//! same session; the head agrees with the full decode (owner, subject, lifetimes, and the token
//! it finds for each audience).
#![no_main]

use bffgate::record::{decode, encode, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = Head::parse(data);
    let full = decode(data);
    if let Some(h) = &head {
        for aud in ["https://orders.api.local", "", "a"] {
            for after in [0, 1_750_000_000, u64::MAX] {
                let _ = h.token(aud, after, 30);
            }
        }
    }
    let Some(s) = full else { return };
    let Some(h) = head else {
        panic!("decode succeeded where the head did not parse")
    };
    assert_eq!(h.owner, s.owner.as_bytes());
    assert_eq!(
        (h.sub, h.expires, h.last_seen),
        (s.sub.as_str(), s.expires, s.last_seen)
    );
    for t in &s.tokens {
        let first = s.tokens.iter().find(|x| x.aud == t.aud && x.exp > 0);
        let got = h.token(&t.aud, 0, 0);
        assert_eq!(
            got,
            first.map(|x| (x.token.expose(), x.scope.as_str())),
            "the head finds another token than the full decode"
        );
    }
    let Some(again) = encode(&s) else {
        panic!("a decoded session does not encode")
    };
    let back = decode(&again);
    // serde_json without its `float_roundtrip` feature may move a float claim by one ulp per
    // round trip (found by this target); everything else must come back exactly.
    if s.claims.values().any(has_float) {
        assert!(back.is_some(), "a re-encoded session does not decode");
    } else {
        assert_eq!(back.as_ref(), Some(&s), "decode(encode(s)) != s");
    }
});

fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(has_float),
        serde_json::Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}
