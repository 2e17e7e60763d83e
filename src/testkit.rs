//! Test kit: deterministic doubles and the demo configuration, shared by the unit tests, the
//! engine suites (`tests/`), the property tests, the fuzz targets and the benches.
//!
//! Compiled only for `cargo test` of this crate or with the `testkit` feature, which the
//! crate's own dev-dependency and the fuzz crate turn on: nothing here is in the shipped
//! `.wasm` (`TestRandom` is not a CSPRNG and must never reach production code).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// A deterministic generator for tests (xorshift; NOT cryptographic).
#[derive(Debug, Clone)]
pub struct TestRandom(pub u64);

impl crate::util::Random for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
    }
}

pub use crate::store::memory::{memory_store, MemoryData};

pub mod fast_path;

/// The demo stack's filter configuration without secrets and JWKS, as JSON: the one example the
/// unit tests, the engine suites and the fuzz targets share (each patches what it needs).
pub fn demo_json() -> serde_json::Value {
    serde_json::json!({
        "public_origin": "https://localhost:8443",
        "provider": {
            "issuer": "http://localhost:9000",
            "authorization_endpoint": "http://localhost:9000/auth",
            "token_endpoint": "http://localhost:9000/token",
            "revocation_endpoint": "http://localhost:9000/token/revocation",
            "end_session_endpoint": "http://localhost:9000/session/end",
            "cluster": "bffgate_idp"
        },
        "client": {
            "client_id": "bffgate",
            "redirect_uri": "https://localhost:8443/auth/callback",
            "scopes": ["openid", "profile", "offline_access", "orders:read", "orders:write"],
            "extra_authorize_params": {"prompt": "consent"},
            "post_logout_redirect_uri": "https://localhost:8443/"
        },
        "audiences": {
            "https://orders.api.local": {"acquire": "login"},
            "https://profile.api.local": {"acquire": "refresh"}
        },
        "routes": {
            "static": {"access": "public"},
            "orders-read": {"access": "session", "audience": "https://orders.api.local", "scopes": ["orders:read"]},
            "orders-write": {"access": "session", "audience": "https://orders.api.local", "scopes": ["orders:write"]},
            "profile": {"access": "session", "audience": "https://profile.api.local", "scopes": ["profile"]},
            "admin": {"access": "session", "audience": "https://orders.api.local", "claims": {"preferred_username": ["alice"]}}
        }
    })
}

/// A complete, valid configuration for tests (matches the demo stack).
pub fn test_raw() -> crate::config::RawConfig {
    let json = demo_json();
    serde_json::from_value(json).unwrap()
}

/// The contract's error codes, from [`crate::reply::ErrorCode::ALL`]: what every error reply
/// must carry.
pub fn error_codes() -> Vec<&'static str> {
    crate::reply::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect()
}

/// The operator API's bearer token in the test secrets.
pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789abcdef";

/// Secrets for tests.
pub fn test_secrets(name: &str) -> Option<String> {
    match name {
        "BFFGATE_CLIENT_SECRET" => Some("test-client-secret".into()),
        "BFFGATE_COOKIE_KEYS" => Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into()),
        "BFFGATE_STORE_KEYS" => Some("s1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY".into()),
        "BFFGATE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        _ => None,
    }
}

/// The fake provider's signing key (ES256, fixed: tests are deterministic).
fn signing_key() -> p256::ecdsa::SigningKey {
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(1);
    }
    p256::ecdsa::SigningKey::from_slice(&d).expect("a fixed valid scalar")
}

/// The `kid` of the fake provider's key.
pub const KID: &str = "testkit-es256";

/// The fake provider's JWKS (one ES256 key, `kid` [`KID`]).
pub fn jwks() -> String {
    let p = signing_key().verifying_key().to_encoded_point(false);
    let enc = |b: Option<&p256::FieldBytes>| b.map(|b| crate::util::b64url(b)).unwrap_or_default();
    serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": enc(p.x()), "y": enc(p.y()),
                                 "kid": KID, "use": "sig", "alg": "ES256"}]})
    .to_string()
}

/// A compact JWS signed by the fake provider with this protected header (`alg` ES256 and `kid`
/// [`KID`] are added when missing). Signatures are deterministic (RFC 6979) and cached: fuzz
/// scripts sign the same few claim sets over and over.
pub fn sign_jwt_with_header(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    use p256::ecdsa::signature::Signer;
    thread_local! {
        static CACHE: std::cell::RefCell<std::collections::HashMap<String, String>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    let mut h = header.clone();
    if let Some(o) = h.as_object_mut() {
        o.entry("alg").or_insert("ES256".into());
        o.entry("kid").or_insert(KID.into());
    }
    let input = format!(
        "{}.{}",
        crate::util::b64url(h.to_string().as_bytes()),
        crate::util::b64url(claims.to_string().as_bytes())
    );
    if let Some(t) = CACHE.with(|c| c.borrow().get(&input).cloned()) {
        return t;
    }
    let sig: p256::ecdsa::Signature = signing_key().sign(input.as_bytes());
    let token = format!("{input}.{}", crate::util::b64url(&sig.to_bytes()));
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() > 4096 {
            c.clear();
        }
        c.insert(input, token.clone());
    });
    token
}

/// The fake provider's discovery document for `issuer`: oidc-provider's endpoint paths under
/// it, the test kit's key set at `/jwks`.
pub fn discovery_document(issuer: &str) -> String {
    let base = issuer.trim_end_matches('/');
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/auth"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "revocation_endpoint": format!("{base}/token/revocation"),
        "end_session_endpoint": format!("{base}/session/end"),
        "userinfo_endpoint": format!("{base}/me"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "backchannel_logout_supported": true
    })
    .to_string()
}

/// [`sign_jwt_with_header`] with `typ: JWT`.
pub fn sign_jwt(claims: &serde_json::Value) -> String {
    sign_jwt_with_header(&serde_json::json!({"typ": "JWT"}), claims)
}
