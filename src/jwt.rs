//! JWT payload decoding and ID-token claim checks.
//!
//! The ID token is received directly from the token endpoint over the provider's back channel
//! (OIDC Core 3.1.3.7 allows TLS server validation in place of the signature there). Its claims
//! are still checked: `iss`, `aud`, `exp`, `iat` and `nonce`.

use crate::util::b64url_decode;
use serde_json::{Map, Value};

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdTokenError {
    /// Not a three-part JWT with a JSON object payload.
    Malformed,
    /// `iss` differs from the configured issuer.
    Issuer,
    /// `aud` does not contain the client id.
    Audience,
    /// `exp` missing or in the past.
    Expired,
    /// `nonce` differs from the one sent at login.
    Nonce,
    /// `sub` missing or not a string.
    Subject,
}

impl std::fmt::Display for IdTokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdTokenError::Malformed => "not a JWT with a JSON object payload",
            IdTokenError::Issuer => "`iss` is not the configured issuer",
            IdTokenError::Audience => "`aud` does not contain the client id",
            IdTokenError::Expired => "`exp` missing or in the past",
            IdTokenError::Nonce => "`nonce` is not the one sent at login",
            IdTokenError::Subject => "`sub` missing or not a string",
        })
    }
}

impl std::error::Error for IdTokenError {}

/// Longest JWT considered.
pub const MAX_JWT_LEN: usize = 16 * 1024;

/// Decodes the payload of a compact JWS without verifying it.
pub fn decode_payload(jwt: &str) -> Option<Map<String, Value>> {
    if jwt.len() > MAX_JWT_LEN {
        return None;
    }
    let mut parts = jwt.split('.');
    let (Some(_h), Some(p), Some(_s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = b64url_decode(p.trim_end_matches('='))?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Checks an ID token's claims; returns them on success.
pub fn check_id_token(
    jwt: &str,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: u64,
    leeway: u64,
) -> Result<Map<String, Value>, IdTokenError> {
    let claims = decode_payload(jwt).ok_or(IdTokenError::Malformed)?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(IdTokenError::Issuer);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(IdTokenError::Audience);
    }
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp.saturating_add(leeway) > now => {}
        _ => return Err(IdTokenError::Expired),
    }
    let got_nonce = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !crate::util::ct_eq(got_nonce.as_bytes(), nonce.as_bytes()) {
        return Err(IdTokenError::Nonce);
    }
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(IdTokenError::Subject),
    }
    Ok(claims)
}

#[cfg(test)]
pub fn make_jwt(claims: &Value) -> String {
    use crate::util::b64url;
    format!(
        "{}.{}.{}",
        b64url(br#"{"alg":"ES256","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes()),
        b64url(b"sig")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tok(v: Value) -> String {
        make_jwt(&v)
    }

    fn good() -> Value {
        json!({"iss": "http://idp", "aud": "bff", "exp": 2000, "iat": 1000, "nonce": "n1", "sub": "alice"})
    }

    #[test]
    fn accepts_a_good_token() {
        let c = check_id_token(&tok(good()), "http://idp", "bff", "n1", 1500, 30).unwrap();
        assert_eq!(c["sub"], "alice");
        let mut multi = good();
        multi["aud"] = json!(["other", "bff"]);
        assert!(check_id_token(&tok(multi), "http://idp", "bff", "n1", 1500, 30).is_ok());
    }

    #[test]
    fn refuses_each_bad_claim() {
        let cases: Vec<(&str, Value, IdTokenError)> = vec![
            ("iss", json!("http://evil"), IdTokenError::Issuer),
            ("aud", json!("other"), IdTokenError::Audience),
            ("aud", json!(5), IdTokenError::Audience),
            ("exp", json!(1000), IdTokenError::Expired),
            ("exp", json!("2000"), IdTokenError::Expired),
            ("nonce", json!("n2"), IdTokenError::Nonce),
            ("sub", json!(""), IdTokenError::Subject),
            ("sub", json!(7), IdTokenError::Subject),
        ];
        for (k, v, e) in cases {
            let mut c = good();
            c[k] = v;
            assert_eq!(
                check_id_token(&tok(c), "http://idp", "bff", "n1", 1500, 30),
                Err(e),
                "{k}"
            );
        }
        let mut no_nonce = good();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert_eq!(
            check_id_token(&tok(no_nonce), "http://idp", "bff", "n1", 1500, 30),
            Err(IdTokenError::Nonce)
        );
    }

    #[test]
    fn malformed_tokens() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "x.!!!.y",
            "x.WzFd.y",
            &"a".repeat(20000),
        ] {
            assert_eq!(decode_payload(bad), None, "{bad}");
        }
    }
}
