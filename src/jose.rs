//! JWS verification against a JSON Web Key Set: RS256 and ES256 only (never `none`, never an
//! HMAC with a public key as secret), with the key chosen by `kid` and its `kty`/`alg`
//! checked against the token's header.

use crate::util::b64url_decode;
use serde_json::{Map, Value};

/// Why a JWS was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoseError {
    /// Not a compact JWS with JSON header and payload.
    Malformed,
    /// `alg` is not RS256 or ES256.
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

/// A verification key from a JWKS.
#[derive(Clone)]
pub enum Key {
    /// RSA public key (RS256).
    Rsa(rsa::RsaPublicKey),
    /// P-256 public key (ES256).
    Ec(p256::ecdsa::VerifyingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Rsa(_) => f.write_str("Key::Rsa"),
            Key::Ec(_) => f.write_str("Key::Ec"),
        }
    }
}

/// A parsed key set: `(kid, key)`; keys whose type or use we don't support are skipped.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// The keys.
    pub keys: Vec<(Option<String>, Key)>,
}

/// Longest JWKS document accepted.
pub const MAX_JWKS: usize = 64 * 1024;

fn b64_field(k: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    b64url_decode(k.get(name)?.as_str()?.trim_end_matches('='))
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
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        let key = match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                let (Some(n), Some(e)) = (b64_field(k, "n"), b64_field(k, "e")) else {
                    continue;
                };
                match rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(&n),
                    rsa::BigUint::from_bytes_be(&e),
                ) {
                    Ok(pk) => Key::Rsa(pk),
                    Err(_) => continue,
                }
            }
            Some("EC") if k.get("crv").and_then(Value::as_str) == Some("P-256") => {
                let (Some(x), Some(y)) = (b64_field(k, "x"), b64_field(k, "y")) else {
                    continue;
                };
                if x.len() != 32 || y.len() != 32 {
                    continue;
                }
                let point = p256::EncodedPoint::from_affine_coordinates(
                    p256::FieldBytes::from_slice(&x),
                    p256::FieldBytes::from_slice(&y),
                    false,
                );
                match p256::ecdsa::VerifyingKey::from_encoded_point(&point) {
                    Ok(vk) => Key::Ec(vk),
                    Err(_) => continue,
                }
            }
            _ => continue,
        };
        out.keys.push((kid, key));
    }
    Ok(out)
}

/// The `kid` of a compact JWS header, if any (to decide whether a key set must be refetched).
pub fn header_kid(jwt: &str) -> Option<String> {
    let h = jwt.split('.').next()?;
    let v: Value = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    v.get("kid").and_then(Value::as_str).map(str::to_string)
}

/// The `typ` of a compact JWS header, if any (a back-channel logout token must not be another
/// kind of JWT signed by the same keys).
pub fn header_typ(jwt: &str) -> Option<String> {
    let h = jwt.split('.').next()?;
    let v: Value = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    v.get("typ").and_then(Value::as_str).map(str::to_string)
}

/// Verifies a compact JWS and returns its JSON payload.
pub fn verify(jwt: &str, set: &KeySet) -> Result<Map<String, Value>, JoseError> {
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
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if header.get("crit").is_some() {
        return Err(JoseError::Malformed);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let sig = b64url_decode(s64).ok_or(JoseError::Malformed)?;
    let signing_input = jwt
        .as_bytes()
        .get(..h64.len() + 1 + p64.len())
        .ok_or(JoseError::Malformed)?;
    let candidates = set
        .keys
        .iter()
        .filter(|(k, _)| kid.is_none() || k.as_deref() == kid)
        .map(|(_, key)| key);
    let mut any = false;
    let mut verified = false;
    for key in candidates {
        match (alg, key) {
            ("RS256", Key::Rsa(pk)) => {
                any = true;
                use rsa::signature::Verifier;
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk.clone());
                if let Ok(s) = rsa::pkcs1v15::Signature::try_from(sig.as_slice()) {
                    if vk.verify(signing_input, &s).is_ok() {
                        verified = true;
                        break;
                    }
                }
            }
            ("ES256", Key::Ec(vk)) => {
                any = true;
                use p256::ecdsa::signature::Verifier;
                if let Ok(s) = p256::ecdsa::Signature::from_slice(&sig) {
                    if vk.verify(signing_input, &s).is_ok() {
                        verified = true;
                        break;
                    }
                }
            }
            ("RS256" | "ES256", _) => {}
            _ => return Err(JoseError::Algorithm),
        }
    }
    if !matches!(alg, "RS256" | "ES256") {
        return Err(JoseError::Algorithm);
    }
    if !any {
        return Err(JoseError::UnknownKey);
    }
    if !verified {
        return Err(JoseError::BadSignature);
    }
    let payload: Value = b64url_decode(p64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JoseError::Malformed)?;
    match payload {
        Value::Object(m) => Ok(m),
        _ => Err(JoseError::Malformed),
    }
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
            r#"{"alg":"RS512","kid":"rs256-test"}"#,
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
}
