//! The native core bench's signed-in user, shared with the test that hands the same session to
//! the built `.wasm` (`tests/fast_path_fixture.rs`, `scripts/wasm-profile.mjs`): the bench's
//! configuration (bench/bffgate.yaml's audiences, bench/policies' routes), a session record of
//! the demo IdP's shape with both audiences' tokens cached, and a page's API request.

#![allow(clippy::indexing_slicing)]

use crate::config::Config;
use crate::engine::Request;
use crate::secret::Secret;
use crate::session::{AudienceToken, Session};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// The secrets the configuration names.
pub fn secrets(name: &str) -> Option<String> {
    match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(COOKIE_KEYS.to_string()),
        _ => None,
    }
}

/// The client secret (test only).
pub const CLIENT_SECRET: &str = "bench-client-secret-0123456789abcdef";

pub const NOW: u64 = 1_750_000_000;
pub const COOKIE_KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
pub const COOKIE: &str = "__Host-bff-session";
pub const ORDERS: &str = "https://orders.api.local";
pub const PROFILE: &str = "https://profile.api.local";
/// The benchmark's filter configuration: the shared demo configuration with bench/bffgate.yaml's
/// audiences and bench/policies/bench.yaml's routes (its ports do not matter natively).
pub fn config() -> Config {
    Config::from_json(raw_config().to_string().as_bytes(), &secrets)
        .expect("the bench config compiles")
}

/// The configuration as the filter receives it (secrets named, not included).
pub fn raw_config() -> Value {
    let mut raw = super::demo_json();
    raw["provider"]["jwks_uri"] = json!("http://localhost:9000/jwks");
    raw["audiences"][PROFILE] = json!({"acquire": "exchange", "scopes": ["profile"]});
    raw["routes"] = json!({
        "bffgate-auth": {"access": "public"},
        "orders-read": {"access": "session", "audience": ORDERS, "scopes": ["orders:read"]},
        "profile": {"access": "session", "audience": PROFILE, "scopes": ["profile"]},
        "other": {"access": "public"}
    });
    raw
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A JWT of the demo IdP's shape and size (ES256: 64-byte signature). Never verified here.
fn jwt(header: &Value, claims: &Value) -> String {
    let sig: Vec<u8> = (0u8..64).collect();
    format!(
        "{}.{}.{}",
        b64(header),
        b64(claims),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

pub const KID: &str = "m1Qk8wH2f5mC0nJ3vXo6yT9rB4sL7aZ1eD2gU5iP8kQ";

pub fn access_token(aud: &str, scope: &str) -> String {
    jwt(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": KID}),
        &json!({
            "jti": "Zr3dYk0bQ8uV1nJ6xW2cF5tH9mL4pA7sE0gK3iO6qR1",
            "sub": "alice",
            "iat": NOW,
            "exp": NOW + 3600,
            "scope": scope,
            "client_id": "bffgate",
            "iss": "http://localhost:19000",
            "aud": aud,
            "name": "Alice Example",
            "preferred_username": "alice",
            "email": "alice@example.test"
        }),
    )
}

/// The server-side record of a signed-in demo user with both audiences' tokens cached.
pub fn session() -> Session {
    let id_token = jwt(
        &json!({"alg": "ES256", "typ": "JWT", "kid": KID}),
        &json!({
            "sub": "alice",
            "name": "Alice Example",
            "preferred_username": "alice",
            "email": "alice@example.test",
            "email_verified": true,
            "nonce": "u2Jf8sKq1xVb6nZ0cW4yT7rH3mE9pL5aG1dS8iO2kQ0",
            "at_hash": "x7Hq2LmN9bV4cR1tY6uE3o",
            "sid": "c3b1d5e7-9f2a-4b6c-8d0e-1f3a5b7c9d2e",
            "auth_time": NOW,
            "iat": NOW,
            "exp": NOW + 3600,
            "aud": "bffgate",
            "iss": "http://localhost:19000"
        }),
    );
    let mut claims = serde_json::Map::new();
    claims.insert("name".into(), json!("Alice Example"));
    claims.insert("preferred_username".into(), json!("alice"));
    claims.insert("email".into(), json!("alice@example.test"));
    Session {
        owner: String::new(),
        handle: String::new(),
        sub: "alice".into(),
        claims,
        created: NOW,
        last_seen: NOW,
        expires: NOW + 8 * 3600,
        refresh_token: Some(Secret::new("Yq8pF2nW5vK1xR7cT4mB9jL3hG6dS0aZ2eU8iO5kN1s")),
        id_token: Some(Secret::new(id_token)),
        tokens: vec![
            AudienceToken {
                aud: ORDERS.into(),
                token: Secret::new(access_token(ORDERS, "orders:read orders:write")),
                exp: NOW + 3600,
                obtained: NOW,
                scope: "orders:read orders:write".into(),
            },
            AudienceToken {
                aud: PROFILE.into(),
                token: Secret::new(access_token(PROFILE, "profile")),
                exp: NOW + 3600,
                obtained: NOW,
                scope: "profile".into(),
            },
        ],
        ..Default::default()
    }
}

/// An API request (a page's fetch) for `path` on `route`, with the session cookie among others.
pub fn api_request(path: &str, route: &str, session_cookie: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        route: Some(route.into()),
        cookie: Some(format!("theme=dark; {COOKIE}={session_cookie}")),
        accept: Some("application/json".into()),
        sec_fetch_site: Some("same-origin".into()),
        sec_fetch_mode: Some("cors".into()),
        sec_fetch_dest: Some("empty".into()),
        ..Default::default()
    }
}

/// What a host needs to run this fast-path request through the built `.wasm`: the plugin
/// configuration and its secrets, shared data as the filter's store wrote it for a signed-in
/// session, the request's headers (the session cookie next to a site cookie), its route, and
/// the clock (one second after the session's last use: no last-use write due). Also returns
/// the store, so a caller can check natively that the request takes the fast path.
pub fn wasm_fixture() -> (Value, crate::store::SharedStore<super::MemoryData>, Request) {
    use crate::store::Store as _;
    let cfg = config();
    let mut store = crate::store::SharedStore::new(super::MemoryData::default(), cfg.store);
    store.init_slots();
    let mut rng = super::TestRandom(7);
    let (id, _) = store
        .create_session(&session(), &mut rng, NOW)
        .expect("a free slot");
    let sealed = cfg.cookie.keys.seal(COOKIE, &id.to_bytes());
    let req = api_request("/api/orders?page=1", "orders-read", &sealed);
    let shared: serde_json::Map<String, Value> = store
        .data
        .entries()
        .map(|(k, v)| (k.to_string(), json!(URL_SAFE_NO_PAD.encode(v))))
        .collect();
    let fixture = json!({
        "configuration": raw_config().to_string(),
        "env": {"BFFGATE_CLIENT_SECRET": CLIENT_SECRET, "BFFGATE_COOKIE_KEYS": COOKIE_KEYS},
        "now_ms": (NOW + 1) * 1000,
        "route": "orders-read",
        "audience": ORDERS,
        "token": access_token(ORDERS, "orders:read orders:write"),
        "session_cookie": COOKIE,
        "headers": [
            [":authority", "localhost:8443"],
            [":path", req.path],
            [":method", req.method],
            [":scheme", "https"],
            ["accept", "application/json"],
            ["sec-fetch-site", "same-origin"],
            ["sec-fetch-mode", "cors"],
            ["sec-fetch-dest", "empty"],
            ["cookie", req.cookie],
            ["x-forwarded-proto", "https"],
            ["x-request-id", "5f0c3a1e-8a3b-4c55-9d1e-2b7f6a4c9e01"],
        ],
        "shared_data": shared,
    });
    (fixture, store, req)
}
