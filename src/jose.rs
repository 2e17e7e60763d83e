//! JWS verification: the RSA (`RS256/384/512`, `PS256/384/512`) and ECDSA (`ES256`, `ES384`)
//! algorithms against a JSON Web Key Set, and the HMAC ones (`HS256/384/512`) with the OAuth
//! client's secret only (OpenID Connect Core 10.1), never with a key of the set: a public key
//! used as an HMAC secret is the classic algorithm-confusion forgery. Never `none`. Which
//! algorithms a verification accepts is the caller's [`Policy`] (the provider's advertised
//! ones); the key is chosen by `kid`, and its `kty`, curve and (when the JWK names one) `alg`
//! must fit the token's header.

use crate::util::b64url_decode;
use serde_json::{Map, Value};

/// Why a JWS was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoseError {
    /// Not a compact JWS with JSON header and payload.
    Malformed,
    /// `alg` is not one the policy accepts (or an HMAC one without a client secret).
    Algorithm,
    /// No key in the set has the token's `kid` (refetch the set, then give up).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
}

impl std::fmt::Display for JoseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoseError::Malformed => "not a compact JWS with a JSON header and payload",
            JoseError::Algorithm => "algorithm not accepted",
            JoseError::UnknownKey => "no key in the set has the token's `kid`",
            JoseError::BadSignature => "the signature does not verify",
        })
    }
}

impl std::error::Error for JoseError {}

/// Every algorithm bffgate can verify.
pub const ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "HS256", "HS384",
    "HS512",
];

/// The algorithms that need a key of the provider's set (all but the HMAC ones).
pub const ASYMMETRIC_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

/// Whether `alg` is an HMAC algorithm (verified with the client secret, needs no key set).
pub fn is_hmac(alg: &str) -> bool {
    matches!(alg, "HS256" | "HS384" | "HS512")
}

/// Shortest RSA modulus accepted, in bits (RFC 7518 3.3: 2048 or larger).
pub const MIN_RSA_BITS: usize = 2048;

/// A verification key from a JWKS.
#[derive(Clone)]
pub enum Key {
    /// RSA public key (RS*, PS*).
    Rsa(rsa::RsaPublicKey),
    /// P-256 public key (ES256).
    Ec(p256::ecdsa::VerifyingKey),
    /// P-384 public key (ES384).
    P384(p384::ecdsa::VerifyingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Rsa(_) => f.write_str("Key::Rsa"),
            Key::Ec(_) => f.write_str("Key::Ec"),
            Key::P384(_) => f.write_str("Key::P384"),
        }
    }
}

/// One key of a set: its `kid`, its `alg` when the JWK names one, and the key.
#[derive(Debug, Clone)]
pub struct SetKey {
    /// `kid`.
    pub kid: Option<String>,
    /// The JWK's `alg`: the only algorithm it may verify, when present.
    pub alg: Option<String>,
    /// The key.
    pub key: Key,
}

/// A parsed key set; keys whose type, curve, size or use we don't support are skipped.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// The keys.
    pub keys: Vec<SetKey>,
}

/// What a verification accepts.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Accepted `alg` values (others are refused before any key is looked at).
    pub algs: &'a [String],
    /// The OAuth client secret, for the HMAC algorithms (none: they are refused).
    pub hmac_secret: Option<&'a [u8]>,
}

/// Longest JWKS document accepted.
pub const MAX_JWKS: usize = 64 * 1024;

fn b64_field(k: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    b64url_decode(k.get(name)?.as_str()?.trim_end_matches('='))
}

/// An EC point from a JWK's `x` and `y`, each exactly `len` bytes.
fn ec_xy(k: &Map<String, Value>, len: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let (x, y) = (b64_field(k, "x")?, b64_field(k, "y")?);
    (x.len() == len && y.len() == len).then_some((x, y))
}

fn parse_key(k: &Map<String, Value>) -> Option<Key> {
    match k.get("kty").and_then(Value::as_str)? {
        "RSA" => {
            let (n, e) = (b64_field(k, "n")?, b64_field(k, "e")?);
            let pk = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .ok()?;
            use rsa::traits::PublicKeyParts;
            (pk.n().bits() >= MIN_RSA_BITS).then_some(Key::Rsa(pk))
        }
        "EC" => match k.get("crv").and_then(Value::as_str)? {
            "P-256" => {
                let (x, y) = ec_xy(k, 32)?;
                let point = p256::EncodedPoint::from_affine_coordinates(
                    p256::FieldBytes::from_slice(&x),
                    p256::FieldBytes::from_slice(&y),
                    false,
                );
                p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .ok()
                    .map(Key::Ec)
            }
            "P-384" => {
                let (x, y) = ec_xy(k, 48)?;
                let point = p384::EncodedPoint::from_affine_coordinates(
                    p384::FieldBytes::from_slice(&x),
                    p384::FieldBytes::from_slice(&y),
                    false,
                );
                p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .ok()
                    .map(Key::P384)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Parses a JWKS document. Unsupported keys are skipped; a document that is not a key set is
/// an error.
pub fn parse_jwks(bytes: &[u8]) -> Result<KeySet, JoseError> {
    if bytes.len() > MAX_JWKS {
        return Err(JoseError::Malformed);
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|_| JoseError::Malformed)?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JoseError::Malformed)?;
    let mut out = KeySet::default();
    for k in keys.iter().filter_map(Value::as_object).take(64) {
        if k.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let Some(key) = parse_key(k) else { continue };
        out.keys.push(SetKey {
            kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
            alg: k.get("alg").and_then(Value::as_str).map(str::to_string),
            key,
        });
    }
    Ok(out)
}

fn header_field(jwt: &str, name: &str) -> Option<String> {
    let h = jwt.split('.').next()?;
    let v: Value = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    v.get(name).and_then(Value::as_str).map(str::to_string)
}

/// The `kid` of a compact JWS header, if any (to decide whether a key set must be refetched).
pub fn header_kid(jwt: &str) -> Option<String> {
    header_field(jwt, "kid")
}

/// The `typ` of a compact JWS header, if any (a back-channel logout token must not be another
/// kind of JWT signed by the same keys).
pub fn header_typ(jwt: &str) -> Option<String> {
    header_field(jwt, "typ")
}

/// The `alg` of a compact JWS header, if any (an HMAC token needs no key set).
pub fn header_alg(jwt: &str) -> Option<String> {
    header_field(jwt, "alg")
}

/// Whether `sig` is `alg`'s signature of `input` under `key` (`None`: the key cannot verify
/// that algorithm).
fn check(alg: &str, key: &Key, input: &[u8], sig: &[u8]) -> Option<bool> {
    use rsa::signature::Verifier;
    fn pkcs1<D>(pk: &rsa::RsaPublicKey, input: &[u8], sig: &[u8]) -> bool
    where
        D: sha2::Digest + rsa::pkcs8::AssociatedOid,
    {
        let vk = rsa::pkcs1v15::VerifyingKey::<D>::new(pk.clone());
        rsa::pkcs1v15::Signature::try_from(sig).is_ok_and(|s| vk.verify(input, &s).is_ok())
    }
    fn pss<D>(pk: &rsa::RsaPublicKey, input: &[u8], sig: &[u8]) -> bool
    where
        D: sha2::Digest + sha2::digest::FixedOutputReset,
    {
        let vk = rsa::pss::VerifyingKey::<D>::new(pk.clone());
        rsa::pss::Signature::try_from(sig).is_ok_and(|s| vk.verify(input, &s).is_ok())
    }
    Some(match (alg, key) {
        ("RS256", Key::Rsa(pk)) => pkcs1::<sha2::Sha256>(pk, input, sig),
        ("RS384", Key::Rsa(pk)) => pkcs1::<sha2::Sha384>(pk, input, sig),
        ("RS512", Key::Rsa(pk)) => pkcs1::<sha2::Sha512>(pk, input, sig),
        ("PS256", Key::Rsa(pk)) => pss::<sha2::Sha256>(pk, input, sig),
        ("PS384", Key::Rsa(pk)) => pss::<sha2::Sha384>(pk, input, sig),
        ("PS512", Key::Rsa(pk)) => pss::<sha2::Sha512>(pk, input, sig),
        // JWS ECDSA signatures are the fixed-size r || s (RFC 7518 3.4), never DER.
        ("ES256", Key::Ec(vk)) => p256::ecdsa::Signature::from_slice(sig)
            .is_ok_and(|s| p256::ecdsa::signature::Verifier::verify(vk, input, &s).is_ok()),
        ("ES384", Key::P384(vk)) => p384::ecdsa::Signature::from_slice(sig)
            .is_ok_and(|s| p384::ecdsa::signature::Verifier::verify(vk, input, &s).is_ok()),
        _ => return None,
    })
}

/// Whether `sig` is `alg`'s HMAC of `input` under `secret` (compared in constant time).
fn check_hmac(alg: &str, secret: &[u8], input: &[u8], sig: &[u8]) -> bool {
    use hmac::{Mac, SimpleHmac};
    fn mac<D>(secret: &[u8], input: &[u8], sig: &[u8]) -> bool
    where
        D: sha2::Digest + sha2::digest::core_api::BlockSizeUser,
    {
        let Ok(mut m) = SimpleHmac::<D>::new_from_slice(secret) else {
            return false;
        };
        m.update(input);
        m.verify_slice(sig).is_ok()
    }
    match alg {
        "HS256" => mac::<sha2::Sha256>(secret, input, sig),
        "HS384" => mac::<sha2::Sha384>(secret, input, sig),
        "HS512" => mac::<sha2::Sha512>(secret, input, sig),
        _ => false,
    }
}

/// Verifies a compact JWS under `policy` and returns its JSON payload.
pub fn verify_with(
    jwt: &str,
    set: &KeySet,
    policy: Policy<'_>,
) -> Result<Map<String, Value>, JoseError> {
    if jwt.len() > crate::jwt::MAX_JWT_LEN {
        return Err(JoseError::Malformed);
    }
    let mut parts = jwt.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JoseError::Malformed);
    };
    let header: Value = b64url_decode(h64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JoseError::Malformed)?;
    if header.get("crit").is_some() {
        return Err(JoseError::Malformed);
    }
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !ALGS.contains(&alg) || !policy.algs.iter().any(|a| a == alg) {
        return Err(JoseError::Algorithm);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let sig = b64url_decode(s64).ok_or(JoseError::Malformed)?;
    let signing_input = jwt
        .as_bytes()
        .get(..h64.len() + 1 + p64.len())
        .ok_or(JoseError::Malformed)?;
    if is_hmac(alg) {
        // Only ever the client secret: no key of the set, whatever the header's `kid` says.
        let secret = policy
            .hmac_secret
            .filter(|s| !s.is_empty())
            .ok_or(JoseError::Algorithm)?;
        if !check_hmac(alg, secret, signing_input, &sig) {
            return Err(JoseError::BadSignature);
        }
    } else {
        let mut any = false;
        let mut verified = false;
        let candidates = set.keys.iter().filter(|k| {
            (kid.is_none() || k.kid.as_deref() == kid) && k.alg.as_deref().is_none_or(|a| a == alg)
        });
        for k in candidates {
            if let Some(ok) = check(alg, &k.key, signing_input, &sig) {
                any = true;
                if ok {
                    verified = true;
                    break;
                }
            }
        }
        if !any {
            return Err(JoseError::UnknownKey);
        }
        if !verified {
            return Err(JoseError::BadSignature);
        }
    }
    let payload: Value = b64url_decode(p64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JoseError::Malformed)?;
    match payload {
        Value::Object(m) => Ok(m),
        _ => Err(JoseError::Malformed),
    }
}

/// Verifies a compact JWS with any asymmetric algorithm bffgate supports (no HMAC) and returns
/// its JSON payload.
pub fn verify(jwt: &str, set: &KeySet) -> Result<Map<String, Value>, JoseError> {
    let algs: Vec<String> = ASYMMETRIC_ALGS.iter().map(|a| a.to_string()).collect();
    verify_with(
        jwt,
        set,
        Policy {
            algs: &algs,
            hmac_secret: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::b64url;

    const JWKS: &str = include_str!("../tests/data/jwks.json");
    const RS: &str = include_str!("../tests/data/rs256.jwt");
    const ES: &str = include_str!("../tests/data/es256.jwt");

    #[test]
    fn verifies_rs256_and_es256_from_a_real_provider_library() {
        let set = parse_jwks(JWKS.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 2);
        assert_eq!(verify(RS, &set).unwrap()["sub"], "alice");
        assert_eq!(verify(ES, &set).unwrap()["sid"], "s1");
        assert_eq!(header_kid(RS).as_deref(), Some("rs256-test"));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let set = parse_jwks(JWKS.as_bytes()).unwrap();
        for jwt in [RS, ES] {
            let parts: Vec<&str> = jwt.split('.').collect();
            let forged_payload = b64url(br#"{"sub":"mallory","iss":"http://localhost:9000"}"#);
            let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
            assert_eq!(verify(&forged, &set), Err(JoseError::BadSignature));
            let mut sig = b64url_decode(parts[2]).unwrap();
            sig[5] ^= 1;
            let bad = format!("{}.{}.{}", parts[0], parts[1], b64url(&sig));
            assert_eq!(verify(&bad, &set), Err(JoseError::BadSignature));
        }
    }

    #[test]
    fn alg_none_hs256_and_unknown_kids_are_refused() {
        let set = parse_jwks(JWKS.as_bytes()).unwrap();
        let parts: Vec<&str> = RS.split('.').collect();
        for header in [
            r#"{"alg":"none","kid":"rs256-test"}"#,
            r#"{"alg":"HS256","kid":"rs256-test"}"#,
            r#"{"alg":"EdDSA","kid":"rs256-test"}"#,
            r#"{"alg":"ES512","kid":"rs256-test"}"#,
        ] {
            let t = format!("{}.{}.{}", b64url(header.as_bytes()), parts[1], parts[2]);
            assert_eq!(verify(&t, &set), Err(JoseError::Algorithm), "{header}");
        }
        let t = format!(
            "{}.{}.{}",
            b64url(br#"{"alg":"RS256","kid":"other"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(verify(&t, &set), Err(JoseError::UnknownKey));
        // ES256 header on an RSA key's kid: no usable key.
        let t = format!(
            "{}.{}.{}",
            b64url(br#"{"alg":"ES256","kid":"rs256-test"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(verify(&t, &set), Err(JoseError::UnknownKey));
        let t = format!(
            "{}.{}.{}",
            b64url(br#"{"alg":"RS256","crit":["x"]}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(verify(&t, &set), Err(JoseError::Malformed));
    }

    #[test]
    fn garbage_key_sets_and_tokens_do_not_panic() {
        for j in [
            "",
            "{}",
            "[]",
            r#"{"keys":5}"#,
            r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
        ] {
            let _ = parse_jwks(j.as_bytes());
        }
        let set = parse_jwks(JWKS.as_bytes()).unwrap();
        for t in ["", "a.b.c", "..", "a.b.c.d", &"x".repeat(20000)] {
            assert!(verify(t, &set).is_err());
        }
    }

    // Fixtures signed by npm `jose` (tests/data/jose/make.mjs): one token per algorithm.
    const SET: &str = include_str!("../tests/data/jose/jwks.json");
    const HS_SECRET: &[u8] = b"test-client-secret-for-hs-fixtures";
    const FIXTURES: &[(&str, &str)] = &[
        ("RS256", include_str!("../tests/data/jose/RS256.jwt")),
        ("RS384", include_str!("../tests/data/jose/RS384.jwt")),
        ("RS512", include_str!("../tests/data/jose/RS512.jwt")),
        ("PS256", include_str!("../tests/data/jose/PS256.jwt")),
        ("PS384", include_str!("../tests/data/jose/PS384.jwt")),
        ("PS512", include_str!("../tests/data/jose/PS512.jwt")),
        ("ES256", include_str!("../tests/data/jose/ES256.jwt")),
        ("ES384", include_str!("../tests/data/jose/ES384.jwt")),
        ("HS256", include_str!("../tests/data/jose/HS256.jwt")),
        ("HS384", include_str!("../tests/data/jose/HS384.jwt")),
        ("HS512", include_str!("../tests/data/jose/HS512.jwt")),
    ];

    fn all() -> Vec<String> {
        ALGS.iter().map(|a| a.to_string()).collect()
    }

    fn policy(algs: &[String]) -> Policy<'_> {
        Policy {
            algs,
            hmac_secret: Some(HS_SECRET),
        }
    }

    #[test]
    fn every_algorithm_verifies_a_token_of_another_library() {
        let set = parse_jwks(SET.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 3, "RSA, P-256 and P-384 keys");
        let algs = all();
        for (alg, jwt) in FIXTURES {
            let claims = verify_with(jwt.trim(), &set, policy(&algs))
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(claims["alg_used"], *alg);
            assert_eq!(claims["sub"], "alice");
            // ... and only with its own algorithm in the policy.
            let others: Vec<String> = algs.iter().filter(|a| *a != alg).cloned().collect();
            assert_eq!(
                verify_with(jwt.trim(), &set, policy(&others)),
                Err(JoseError::Algorithm),
                "{alg} out of policy"
            );
        }
    }

    #[test]
    fn a_changed_payload_or_signature_is_refused_for_every_algorithm() {
        let set = parse_jwks(SET.as_bytes()).unwrap();
        let algs = all();
        for (alg, jwt) in FIXTURES {
            let parts: Vec<&str> = jwt.trim().split('.').collect();
            let forged = b64url(br#"{"iss":"http://localhost:9000","sub":"mallory","aud":"bffgate","exp":4102444800}"#);
            let t = format!("{}.{}.{}", parts[0], forged, parts[2]);
            assert_eq!(
                verify_with(&t, &set, policy(&algs)),
                Err(JoseError::BadSignature),
                "{alg} payload"
            );
            let mut sig = b64url_decode(parts[2]).unwrap();
            let last = sig.len() - 1;
            sig[last] ^= 1;
            let t = format!("{}.{}.{}", parts[0], parts[1], b64url(&sig));
            assert_eq!(
                verify_with(&t, &set, policy(&algs)),
                Err(JoseError::BadSignature),
                "{alg} signature"
            );
        }
    }

    #[test]
    fn hmac_is_only_ever_the_client_secret() {
        let set = parse_jwks(SET.as_bytes()).unwrap();
        let algs = all();
        let hs = FIXTURES
            .iter()
            .find(|(a, _)| *a == "HS256")
            .unwrap()
            .1
            .trim();
        // No secret (private_key_jwt) or an empty one: refused, whatever the key set holds.
        for secret in [None, Some(&b""[..])] {
            let p = Policy {
                algs: &algs,
                hmac_secret: secret,
            };
            assert_eq!(verify_with(hs, &set, p), Err(JoseError::Algorithm));
        }
        // Another secret: refused.
        let p = Policy {
            algs: &algs,
            hmac_secret: Some(b"another-secret"),
        };
        assert_eq!(verify_with(hs, &set, p), Err(JoseError::BadSignature));
        // The algorithm-confusion forgery: an HS256 token whose MAC key is a public key of the
        // set (its JWK bytes, its DER, its modulus) and whose header names that key.
        let rsa_jwk = serde_json::from_str::<Value>(SET).unwrap()["keys"][0].clone();
        let payload = b64url(
            br#"{"iss":"http://localhost:9000","sub":"mallory","aud":"bffgate","exp":4102444800}"#,
        );
        let header = b64url(br#"{"alg":"HS256","kid":"rsa-1"}"#);
        let input = format!("{header}.{payload}");
        for key in [
            rsa_jwk.to_string().into_bytes(),
            b64url_decode(rsa_jwk["n"].as_str().unwrap()).unwrap(),
        ] {
            use hmac::{Mac, SimpleHmac};
            let mut m = SimpleHmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            m.update(input.as_bytes());
            let t = format!("{input}.{}", b64url(&m.finalize().into_bytes()));
            assert_eq!(
                verify_with(&t, &set, policy(&algs)),
                Err(JoseError::BadSignature)
            );
        }
    }

    #[test]
    fn a_key_verifies_only_its_own_family_curve_and_named_alg() {
        let set = parse_jwks(SET.as_bytes()).unwrap();
        let algs = all();
        let by = |a: &str| FIXTURES.iter().find(|(x, _)| *x == a).unwrap().1.trim();
        // The ES384 token's header re-labelled ES256 (same kid, a P-384 key): no usable key.
        for (from, to) in [("ES384", "ES256"), ("ES256", "ES384"), ("RS256", "ES256")] {
            let parts: Vec<&str> = by(from).split('.').collect();
            let mut h: Value = serde_json::from_slice(&b64url_decode(parts[0]).unwrap()).unwrap();
            h["alg"] = Value::from(to);
            let t = format!(
                "{}.{}.{}",
                b64url(h.to_string().as_bytes()),
                parts[1],
                parts[2]
            );
            assert_eq!(
                verify_with(&t, &set, policy(&algs)),
                Err(JoseError::UnknownKey),
                "{from} as {to}"
            );
        }
        // A JWK that names its alg verifies only that alg: the P-256 key says ES256, so a set
        // where it says ES384 has no key for the ES256 token.
        let mut doc: Value = serde_json::from_str(SET).unwrap();
        doc["keys"][1]["alg"] = Value::from("ES384");
        let set = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(
            verify_with(by("ES256"), &set, policy(&algs)),
            Err(JoseError::UnknownKey)
        );
        // RSA keys under 2048 bits are not kept.
        let mut doc: Value = serde_json::from_str(SET).unwrap();
        let n = b64url_decode(doc["keys"][0]["n"].as_str().unwrap()).unwrap();
        doc["keys"][0]["n"] = Value::from(b64url(&n[..128]));
        assert_eq!(
            parse_jwks(doc.to_string().as_bytes()).unwrap().keys.len(),
            2
        );
    }
}
