//! The `private_key_jwt` client key: `assertion::ClientKey::parse` on arbitrary text (a PEM, a
//! JWK or garbage), with a configured `kid` when the input starts with `kid=<kid>\n`.
//! Invariants: no panic; an accepted key signs an assertion that verifies against its own
//! public JWK through the filter's JWS verifier, with the claims and lifetime promised; its
//! public JWK and `Debug` hold no private member; a refusal's message never repeats a base64
//! run of the input.
#![no_main]

use bffgate::assertion::{client_assertion, ClientKey, LIFETIME};
use bffgate::jose::{parse_jwks, verify};
use bffgate::testkit::TestRandom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (kid, spec) = match text.strip_prefix("kid=").and_then(|r| r.split_once('\n')) {
        Some((kid, spec)) => (Some(kid), spec),
        None => (None, text),
    };
    match ClientKey::parse(spec, kid) {
        Ok(key) => {
            assert!(matches!(key.alg(), "ES256" | "RS256"));
            assert_eq!(format!("{key:?}"), "[redacted]");
            let jwk = key.public_jwk();
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(jwk.get(private).is_none(), "public JWK with `{private}`");
            }
            if let Some(k) = kid {
                assert_eq!(key.kid(), Some(k));
            }
            let jws = client_assertion(
                &key,
                "fuzz-client",
                "https://idp/token",
                7,
                &mut TestRandom(3),
            );
            let set = parse_jwks(serde_json::json!({"keys": [jwk]}).to_string().as_bytes())
                .expect("its own public JWK is a key set");
            let claims = verify(&jws, &set).expect("an accepted key signs verifiably");
            assert_eq!(claims["iss"], "fuzz-client");
            assert_eq!(claims["sub"], "fuzz-client");
            assert_eq!(claims["aud"], "https://idp/token");
            assert_eq!(claims["exp"].as_u64(), Some(7 + LIFETIME));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            // Messages are fixed sentences (and numbers) whose words are shorter than 16
            // characters: no base64 run of the input (key material) comes back.
            let b64 = |c: char| c.is_ascii_alphanumeric() || "+/=_-".contains(c);
            for run in spec.split(|c: char| !b64(c)).filter(|r| r.len() >= 16) {
                assert!(!msg.contains(run), "{msg:?} repeats the input");
            }
        }
    }
});
