//! Filter configuration: `config::Config::from_json` on arbitrary JSON (what Envoy hands the
//! VM), and arbitrary key-ring specs in the secret environment variable. Invariants: no panic;
//! an accepted document round-trips (RawConfig -> JSON -> RawConfig equal, and compiles again
//! to the same routes); no error message carries the client secret or key material.
//!
//! Input: the JSON document, optionally followed by a line `#keys <spec>` (the key ring).
#![no_main]

use bffgate::config::{Config, RawConfig};
use bffgate_fuzz::{CLIENT_SECRET, KEYS, KEY_MATERIAL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (doc, keys) = match data.windows(7).position(|w| w == b"\n#keys ") {
        Some(i) => (
            data.get(..i).unwrap_or(&[]),
            String::from_utf8_lossy(data.get(i + 7..).unwrap_or(&[])).to_string(),
        ),
        None => (data, KEYS.to_string()),
    };
    let secrets = |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(keys.clone()),
        _ => None,
    };
    // Strings the document itself carries may come back in errors (a quoted unknown field) or in
    // the compiled config: libFuzzer learns the secrets from the comparisons that look for them.
    let in_doc = |s: &str| !s.is_empty() && doc.windows(s.len()).any(|w| w == s.as_bytes());
    match Config::from_json(doc, &secrets) {
        Ok(c) => {
            let Ok(raw) = serde_json::from_slice::<RawConfig>(doc) else {
                panic!("compiled but RawConfig does not parse")
            };
            let again = match serde_json::to_vec(&raw) {
                Ok(j) => j,
                Err(e) => panic!("RawConfig does not serialize: {e}"),
            };
            let raw2: RawConfig = match serde_json::from_slice(&again) {
                Ok(r) => r,
                Err(e) => panic!("serialized RawConfig does not parse back: {e}"),
            };
            assert_eq!(raw, raw2, "RawConfig -> JSON -> RawConfig changed it");
            match Config::from_json(&again, &secrets) {
                Ok(c2) => {
                    assert_eq!(c.routes, c2.routes);
                    assert_eq!(c.audiences, c2.audiences);
                    assert_eq!(c.keep_claims, c2.keep_claims);
                }
                Err(e) => panic!("round-tripped config refused: {e}"),
            }
            assert!(in_doc(CLIENT_SECRET) || !format!("{c:?}").contains(CLIENT_SECRET));
        }
        Err(e) => {
            let text = e.to_string();
            for s in std::iter::once(CLIENT_SECRET).chain(KEY_MATERIAL) {
                assert!(
                    in_doc(s) || !text.contains(s),
                    "a secret in a config error: {text}"
                );
            }
            let kids: String = keys
                .split(',')
                .map(|e| e.trim().split_once(':').map_or(e, |(k, _)| k))
                .collect::<Vec<_>>()
                .join(",");
            for entry in keys.split(',') {
                if let Some((_, key)) = entry.trim().split_once(':') {
                    // Only what would be usable key material: base64url of 32 bytes or more.
                    let material = bffgate::util::b64url_decode(key.trim_end_matches('='))
                        .is_some_and(|k| k.len() >= 32);
                    if material && !kids.contains(key) && !in_doc(key) {
                        assert!(
                            !text.contains(key),
                            "key material in a config error: {text}"
                        );
                    }
                }
            }
        }
    }
});
