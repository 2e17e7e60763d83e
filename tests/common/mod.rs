//! The harness shared by the engine specification suites (`tests/flow.rs`,
//! `tests/lifecycle.rs`).
//!
//! The world around the engine is faked: the clock is the `now` handed to each [`Engine`], the
//! randomness is [`TestRandom`], the store is in memory, a [`Browser`] keeps a cookie jar, and the
//! identity provider is played by hand-made token-endpoint answers (with unsigned ID tokens).
//!
//! Every step the engine returns goes through [`Gate::observe`], which checks invariants that
//! hold for every request: no token, code, verifier or client secret in a reply, an audit note or
//! a `Debug` rendering; no bffgate cookie forwarded upstream; every local reply uncacheable and
//! every error a contract JSON error.

// Test code: a failed expectation is a test failure. clippy.toml's `allow-*-in-tests` covers
// `#[test]` functions only, not the shared helpers of an integration-test crate. Each suite uses
// only part of the harness.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
pub use base64::Engine as _;
pub use bffgate::callout::{CallResult, Callout};
pub use bffgate::config::Config;
pub use bffgate::engine::{AfterBody, AfterCall, AwaitToken, CookieEdit, Engine, Request, Step};
pub use bffgate::reply::Reply;

pub use bffgate::store::SharedStore;
pub use bffgate::testkit::MemoryData;
pub use bffgate::testkit::TestRandom;
pub use bffgate::verified::VerifiedCookies;
pub use serde_json::{json, Value};
pub use sha2::{Digest, Sha256};

// ----- fixed facts of the demo configuration -----

pub const T0: u64 = 1_750_000_000;
pub const CLIENT_SECRET: &str = "cs-Zk3pQ9vXw7LmN2bR5tY8uE1oA4sD6fG0hJ";
pub const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
pub const K0: &str = "k0:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A";
pub const ORIGIN: &str = "https://localhost:8443";
pub const ISSUER: &str = "http://localhost:9000";
pub const REDIRECT_URI: &str = "https://localhost:8443/auth/callback";
pub const ORDERS: &str = "https://orders.api.local";
pub const PROFILE: &str = "https://profile.api.local";
pub const SESSION: &str = "__Host-bff-session";
pub const FLOW_PREFIX: &str = "__Host-bff-flow-";
pub const IDLE: u64 = 1800;
pub const ABSOLUTE: u64 = 8 * 3600;
pub const LOGIN_TIMEOUT: u64 = 600;
pub const SKEW: u64 = 30;
/// The demo provider's `acr` for a password plus a one-time code, and for a password only.
pub const MFA: &str = "urn:bffgate:demo:mfa";
pub const PWD: &str = "urn:bffgate:demo:pwd";

/// The demo's step-up route `orders-export` (orders:read, an MFA sign-in at most 300 s old).
pub fn export_policy() -> Value {
    json!({
        "access": "session", "audience": ORDERS, "scopes": ["orders:read"],
        "acr_values": [MFA], "max_age_s": 300
    })
}

/// The demo configuration (`testkit::demo_json`, shared with the unit tests and fuzz targets).
pub fn demo_config() -> Value {
    bffgate::testkit::demo_json()
}

pub fn config_with(keys: &str, patch: impl FnOnce(&mut Value)) -> Config {
    let mut raw = demo_config();
    patch(&mut raw);
    Config::from_json(raw.to_string().as_bytes(), &secrets_with(keys))
        .expect("the demo config compiles")
}

/// The demo's secrets (client secret, and this cookie key ring) as the environment would hold
/// them.
pub fn secrets_with(keys: &str) -> impl Fn(&str) -> Option<String> {
    let keys = keys.to_string();
    move |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(keys.clone()),
        _ => None,
    }
}

pub fn config(keys: &str) -> Config {
    config_with(keys, |_| {})
}

// ----- users of the fake provider -----

#[derive(Debug, Clone, Copy)]
pub struct User {
    pub sub: &'static str,
    pub username: &'static str,
    pub name: &'static str,
    /// Scopes the provider grants this user on the orders audience.
    pub orders_scope: &'static str,
}

pub const ALICE: User = User {
    sub: "sub-alice",
    username: "alice",
    name: "Alice",
    orders_scope: "orders:read orders:write",
};

pub const BOB: User = User {
    sub: "sub-bob",
    username: "bob",
    name: "Bob",
    orders_scope: "orders:read",
};

// ----- small helpers -----

pub fn qs(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

pub fn params(query: &str, name: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The single value of a query/form parameter (`None` if absent; panics if repeated).
pub fn param(query: &str, name: &str) -> Option<String> {
    let mut v = params(query, name);
    assert!(
        v.len() <= 1,
        "`{name}` appears {} times in {query}",
        v.len()
    );
    v.pop()
}

pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub fn unsigned_jwt(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT","kid":"test"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"not-a-signature")
    )
}

pub fn answer(status: u16, body: &str) -> CallResult {
    CallResult::Response {
        status,
        body: body.as_bytes().to_vec(),
    }
}

pub fn answer_json(status: u16, body: &Value) -> CallResult {
    answer(status, &body.to_string())
}

pub fn reply(step: Step) -> Reply {
    match step {
        Step::Respond(r) => r,
        other => panic!("expected a local reply, got {other:?}"),
    }
}

pub fn call(step: Step) -> (Callout, AfterCall) {
    match step {
        Step::Call { request, then } => (request, *then),
        other => panic!("expected a callout, got {other:?}"),
    }
}

/// The forwarded bearer token (exposed) and the cookie edit.
pub fn forward(step: Step) -> (Option<String>, CookieEdit) {
    match step {
        Step::Forward {
            authorization,
            cookie,
        } => (authorization.map(|s| s.expose().to_string()), cookie),
        other => panic!("expected a forward, got {other:?}"),
    }
}

pub fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn set_cookies(r: &Reply) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The `Set-Cookie` for the cookie `name`, if the reply has one.
pub fn set_cookie_for<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    set_cookies(r)
        .into_iter()
        .find(|c| c.split_once('=').is_some_and(|(n, _)| n == name))
}

/// `(value, attributes)` of a `Set-Cookie`.
pub fn parse_set_cookie(sc: &str) -> (String, Vec<String>) {
    let mut parts = sc.split(';').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let (_, value) = first.split_once('=').expect("name=value");
    (value.to_string(), parts.map(str::to_string).collect())
}

pub fn json_body(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", r.body))
}

pub fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(header(r, "content-type"), Some("application/json"), "{r:?}");
    let b = json_body(r);
    assert_eq!(b["error"], code, "{r:?}");
    assert!(b["error_description"].is_string(), "{r:?}");
}

pub fn assert_sets_no_session_cookie(r: &Reply) {
    assert_eq!(set_cookie_for(r, SESSION), None, "{r:?}");
}

pub fn assert_clears_session_cookie(r: &Reply) {
    let sc = set_cookie_for(r, SESSION).unwrap_or_else(|| panic!("no session Set-Cookie: {r:?}"));
    let (value, attrs) = parse_set_cookie(sc);
    assert_eq!(value, "", "{sc}");
    assert!(attrs.iter().any(|a| a == "Max-Age=0"), "{sc}");
    assert!(attrs.iter().any(|a| a == "Path=/"), "{sc}");
    assert!(attrs.iter().any(|a| a == "Secure"), "{sc}");
}

pub fn assert_rejected_and_cleared(step: Step) {
    let r = reply(step);
    assert_error(&r, 401, "unauthenticated");
    assert_clears_session_cookie(&r);
}

pub fn render(r: &Reply) -> String {
    let headers: Vec<String> = r.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    format!("{}\n{}\n\n{}", r.status, headers.join("\n"), r.body)
}

/// Asserts that nothing a browser, an upstream or a log reader sees of `step` (its reply, its
/// forwarded cookie header, its `Debug` form, the audit `notes` written while making it)
/// contains one of `secrets`.
pub fn assert_no_secret(step: &Step, notes: &[String], secrets: &[String]) {
    let mut visible = vec![format!("{step:?}")];
    match step {
        Step::Respond(r) => visible.push(render(r)),
        Step::Forward { cookie, .. } => visible.push(format!("{cookie:?}")),
        Step::Call { .. } | Step::Wait { .. } | Step::ReadBody { .. } => {}
    }
    visible.extend(notes.iter().cloned());
    for text in &visible {
        for s in secrets {
            assert!(!text.contains(s.as_str()), "secret leaked ({s}) in: {text}");
        }
    }
}

// ----- the browser -----

/// A cookie jar that applies `Set-Cookie` like a browser (by name; `Max-Age=0` deletes).
#[derive(Debug, Clone, Default)]
pub struct Browser {
    pub jar: Vec<(String, String)>,
}

impl Browser {
    pub fn cookie_header(&self) -> Option<String> {
        if self.jar.is_empty() {
            return None;
        }
        let pairs: Vec<String> = self.jar.iter().map(|(n, v)| format!("{n}={v}")).collect();
        Some(pairs.join("; "))
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.jar
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn session(&self) -> String {
        self.get(SESSION)
            .expect("the browser holds a session cookie")
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.jar.retain(|(n, _)| n != name);
        self.jar.push((name.to_string(), value.to_string()));
    }

    pub fn flow_cookies(&self) -> Vec<String> {
        self.jar
            .iter()
            .filter(|(n, _)| n.starts_with(FLOW_PREFIX))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn accept(&mut self, r: &Reply) {
        for sc in set_cookies(r) {
            let (name, _) = sc.split_once('=').expect("name=value");
            let (value, attrs) = parse_set_cookie(sc);
            self.jar.retain(|(n, _)| n != name);
            if !attrs.iter().any(|a| a == "Max-Age=0") {
                self.jar.push((name.to_string(), value));
            }
        }
    }

    /// A copy whose session cookie is `value`.
    pub fn with_session(&self, value: &str) -> Browser {
        let mut b = self.clone();
        b.set(SESSION, value);
        b
    }
}

// ----- requests -----

pub fn get(path: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        ..Request::default()
    }
}

/// A `fetch()` from the app's own page, as the demo page sends it: CORS mode, JSON wanted, same
/// origin, the browser's cookies, and the CSRF header and `Origin` on unsafe methods.
pub fn api(b: &Browser, method: &str, path: &str, route: &str) -> Request {
    let unsafe_method = !matches!(method, "GET" | "HEAD" | "OPTIONS");
    Request {
        method: method.into(),
        path: path.into(),
        route: Some(route.into()),
        cookie: b.cookie_header(),
        csrf: unsafe_method.then(|| "1".to_string()),
        origin: unsafe_method.then(|| ORIGIN.to_string()),
        sec_fetch_site: Some("same-origin".into()),
        sec_fetch_mode: Some("cors".into()),
        sec_fetch_dest: Some("empty".into()),
        accept: Some("application/json".into()),
        ..Request::default()
    }
}

/// A top-level navigation (typed URL, link, bookmark).
pub fn navigation(b: &Browser, path: &str, route: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        route: Some(route.into()),
        cookie: b.cookie_header(),
        sec_fetch_site: Some("none".into()),
        sec_fetch_mode: Some("navigate".into()),
        accept: Some("text/html,application/xhtml+xml,*/*;q=0.8".into()),
        ..Request::default()
    }
}

pub fn orders(b: &Browser) -> Request {
    api(b, "GET", "/api/orders", "orders-read")
}

pub fn place_order(b: &Browser) -> Request {
    api(b, "POST", "/api/orders", "orders-write")
}

pub fn profile(b: &Browser) -> Request {
    api(b, "GET", "/api/profile", "profile")
}

pub fn admin(b: &Browser) -> Request {
    api(b, "GET", "/api/admin", "admin")
}

pub fn user_info(b: &Browser) -> Request {
    let mut r = get("/auth/user");
    r.cookie = b.cookie_header();
    r.sec_fetch_mode = Some("cors".into());
    r.accept = Some("application/json".into());
    r
}

pub fn logout(b: &Browser) -> Request {
    Request {
        method: "POST".into(),
        path: "/auth/logout".into(),
        cookie: b.cookie_header(),
        csrf: Some("1".into()),
        origin: Some(ORIGIN.into()),
        sec_fetch_site: Some("same-origin".into()),
        sec_fetch_mode: Some("cors".into()),
        accept: Some("application/json".into()),
        ..Request::default()
    }
}

// ----- the gateway under test, with the provider's side -----

/// Tokens the fake provider issued in one answer.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access: String,
    pub refresh: Option<String>,
    pub id: Option<String>,
    pub body: Value,
}

impl Issued {
    pub fn result(&self) -> CallResult {
        answer_json(200, &self.body)
    }
}

/// What `/auth/login` produced.
#[derive(Debug, Clone)]
pub struct Login {
    pub state: String,
    pub nonce: String,
    pub challenge: String,
    pub flow_cookie: String,
    pub location: String,
    pub reply: Reply,
}

pub struct Gate {
    pub cfg: Config,
    pub store: SharedStore<MemoryData>,
    pub rng: TestRandom,
    pub now: u64,
    /// `expires_in` of the tokens the fake provider issues.
    pub token_ttl: u64,
    pub serial: u32,
    /// Strings no reply, note or `Debug` output may contain.
    pub secrets: Vec<String>,
    /// Everything visible so far (replies, notes, `Debug` of steps), to check late secrets.
    pub transcript: Vec<String>,
    /// The VM's memo of verified session cookies, kept across requests as the wasm shell keeps
    /// it (so every spec also runs the repeated-cookie path; `cfg` may change under it).
    pub verified: VerifiedCookies,
    /// The VM's session anomaly counters, kept across requests as the wasm shell keeps them.
    pub anomalies: bffgate::anomaly::Tracker,
    /// Tokens the last request left for background revocation (a revoke-all), exposed.
    pub background: Vec<(String, &'static str)>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::with_config(config(K1))
    }

    pub fn with_config(cfg: Config) -> Gate {
        let mut store = SharedStore::new(MemoryData::default(), cfg.store);
        store.init_slots();
        let mut g = Gate {
            cfg,
            store,
            rng: TestRandom(0x5eed_1234_abcd_0042),
            now: T0,
            token_ttl: 300,
            serial: 0,
            secrets: Vec::new(),
            transcript: Vec::new(),
            verified: VerifiedCookies::default(),
            anomalies: Default::default(),
            background: Vec::new(),
        };
        g.register(CLIENT_SECRET);
        g
    }

    pub fn advance(&mut self, seconds: u64) {
        self.now += seconds;
    }

    /// Runs a request through a fresh engine at the current time.
    /// POST /auth/logout, answering each revocation callout with 200; returns the final reply
    /// and the revocation requests made.
    pub fn logout_done(&mut self, b: &Browser) -> (Reply, Vec<Callout>) {
        let mut step = self.request(&logout(b));
        let mut calls = Vec::new();
        loop {
            match step {
                Step::Call { request, then } => {
                    calls.push(request);
                    step = self.resume(
                        *then,
                        CallResult::Response {
                            status: 200,
                            body: Vec::new(),
                        },
                    );
                }
                Step::Respond(r) => return (r, calls),
                other => panic!("unexpected step during logout: {other:?}"),
            }
        }
    }

    pub fn request(&mut self, req: &Request) -> Step {
        let mut e = Engine::new(&self.cfg, self.now, &mut self.rng, &mut self.store)
            .with_verified(&self.verified)
            .with_anomalies(&self.anomalies);
        let step = e.on_request(req);
        let notes = std::mem::take(&mut e.notes);
        let background = std::mem::take(&mut e.background);
        self.background = background
            .into_iter()
            .map(|(t, hint)| (t.expose().to_string(), hint))
            .collect();
        self.observe(&step, &notes);
        step
    }

    /// Resumes a paused request with a callout result, at the current time.
    pub fn resume(&mut self, then: AfterCall, result: CallResult) -> Step {
        let mut e = Engine::new(&self.cfg, self.now, &mut self.rng, &mut self.store)
            .with_verified(&self.verified)
            .with_anomalies(&self.anomalies);
        let step = e.on_callout(then, result);
        let notes = std::mem::take(&mut e.notes);
        self.observe(&step, &notes);
        step
    }

    /// The shell's timer polls a request paused in [`Step::Wait`], at the current time.
    pub fn wake(&mut self, then: &AwaitToken) -> Option<Step> {
        let mut e = Engine::new(&self.cfg, self.now, &mut self.rng, &mut self.store)
            .with_verified(&self.verified)
            .with_anomalies(&self.anomalies);
        let step = e.on_wake(then);
        let notes = std::mem::take(&mut e.notes);
        if let Some(step) = &step {
            self.observe(step, &notes);
        } else {
            // Still waiting: the same continuation, checked like any other step.
            let still = Step::Wait {
                then: Box::new(then.clone()),
            };
            self.observe(&still, &notes);
        }
        step
    }

    /// Invariants of every step (see the module docs).
    pub fn observe(&mut self, step: &Step, notes: &[String]) {
        match step {
            Step::Call { request, .. } => {
                for (_, v) in &request.headers {
                    self.register(v.expose());
                    if let Some(b64) = v.expose().strip_prefix("Basic ") {
                        self.register(b64);
                    }
                }
                let body = request.body.expose();
                for key in [
                    "code",
                    "code_verifier",
                    "refresh_token",
                    "client_secret",
                    "subject_token",
                    "token",
                ] {
                    for v in params(body, key) {
                        self.register(&v);
                    }
                }
            }
            Step::Wait { .. } | Step::ReadBody { .. } => {}
            Step::Forward { cookie, .. } => {
                if let CookieEdit::Set(h) = cookie {
                    assert!(
                        !h.to_ascii_lowercase().contains("__host-bff"),
                        "a bffgate cookie is forwarded upstream: {h}"
                    );
                }
            }
            Step::Respond(r) => {
                assert_eq!(header(r, "cache-control"), Some("no-store"), "{r:?}");
                assert_eq!(
                    header(r, "x-content-type-options"),
                    Some("nosniff"),
                    "{r:?}"
                );
                if r.status >= 400 {
                    let b = json_body(r);
                    let code = b["error"].as_str().unwrap_or_default();
                    assert!(
                        bffgate::testkit::error_codes().contains(&code),
                        "not a contract error: {r:?}"
                    );
                }
            }
        }
        assert_no_secret(step, notes, &self.secrets);
        self.transcript.push(format!("{step:?}"));
        if let Step::Respond(r) = step {
            self.transcript.push(render(r));
        }
        self.transcript.extend(notes.iter().cloned());
    }

    /// Adds a secret, checking it did not already show up.
    pub fn register(&mut self, secret: &str) {
        if secret.is_empty() || self.secrets.iter().any(|s| s == secret) {
            return;
        }
        for t in &self.transcript {
            assert!(!t.contains(secret), "secret leaked ({secret}) in: {t}");
        }
        self.secrets.push(secret.to_string());
    }

    /// A fresh provider-issued secret string (code, opaque token).
    pub fn mint(&mut self, kind: &str) -> String {
        self.serial += 1;
        let s = format!(
            "{kind}-{}-q7Wz{:x}",
            self.serial,
            0x9e37_79b9_u32.wrapping_mul(self.serial)
        );
        self.register(&s);
        s
    }

    pub fn live_sessions(&self) -> usize {
        self.store
            .data
            .values()
            .filter_map(bffgate::record::decode)
            .count()
    }

    // --- the provider's answers ---

    pub fn id_claims(&self, user: User, nonce: &str) -> Value {
        json!({
            "iss": ISSUER,
            "aud": "bffgate",
            "azp": "bffgate",
            "nonce": nonce,
            "iat": self.now,
            "exp": self.now + 300,
            "auth_time": self.now,
            "sub": user.sub,
            "preferred_username": user.username,
            "name": user.name,
            "email": format!("{}@example.test", user.username),
            "sid": "idp-session-1",
        })
    }

    pub fn id_token(&mut self, claims: &Value) -> String {
        let t = unsigned_jwt(claims);
        self.register(&t);
        t
    }

    /// A good code-exchange answer for `user` with these ID-token claims.
    pub fn login_answer_with(&mut self, user: User, id_claims: &Value) -> Issued {
        let id = self.id_token(id_claims);
        let access = self.mint("at-orders");
        let refresh = self.mint("rt");
        let body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "scope": format!("openid offline_access {}", user.orders_scope),
            "refresh_token": refresh,
            "id_token": id,
        });
        Issued {
            access,
            refresh: Some(refresh),
            id: Some(id),
            body,
        }
    }

    pub fn login_answer(&mut self, user: User, nonce: &str) -> Issued {
        let claims = self.id_claims(user, nonce);
        self.login_answer_with(user, &claims)
    }

    /// A good refresh-grant answer; `rotate` adds a new refresh token.
    pub fn refresh_answer(&mut self, scope: &str, rotate: bool) -> Issued {
        let access = self.mint("at");
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "scope": scope,
        });
        let refresh = rotate.then(|| self.mint("rt"));
        if let Some(rt) = &refresh {
            body["refresh_token"] = json!(rt);
        }
        Issued {
            access,
            refresh,
            id: None,
            body,
        }
    }

    // --- the login dance ---

    /// `GET /auth/login?<query>` from the browser; the browser keeps the flow cookie.
    pub fn start_login_query(&mut self, b: &mut Browser, query: &str) -> Login {
        let path = if query.is_empty() {
            "/auth/login".to_string()
        } else {
            format!("/auth/login?{query}")
        };
        let mut req = get(&path);
        req.cookie = b.cookie_header();
        req.sec_fetch_mode = Some("navigate".into());
        let r = reply(self.request(&req));
        assert_eq!(r.status, 302, "{r:?}");
        let location = header(&r, "location").expect("a location").to_string();
        let (_, q) = location.split_once('?').expect("a query");
        let flow = set_cookies(&r)
            .into_iter()
            .find(|c| c.starts_with(FLOW_PREFIX))
            .expect("a flow cookie");
        let (flow_cookie, _) = flow.split_once('=').expect("name=value");
        let login = Login {
            state: param(q, "state").expect("state"),
            nonce: param(q, "nonce").expect("nonce"),
            challenge: param(q, "code_challenge").expect("code_challenge"),
            flow_cookie: flow_cookie.to_string(),
            location: location.clone(),
            reply: r.clone(),
        };
        b.accept(&r);
        login
    }

    pub fn start_login(&mut self, b: &mut Browser, return_to: Option<&str>) -> Login {
        match return_to {
            Some(rt) => self.start_login_query(b, &qs(&[("return_to", rt)])),
            None => self.start_login_query(b, ""),
        }
    }

    /// The provider sends the browser back: `GET /auth/callback?<query>`.
    pub fn callback_with(&mut self, b: &Browser, query: &str) -> Step {
        let mut req = get(&format!("/auth/callback?{query}"));
        req.cookie = b.cookie_header();
        req.sec_fetch_mode = Some("navigate".into());
        req.sec_fetch_site = Some("cross-site".into());
        req.accept = Some("text/html".into());
        self.request(&req)
    }

    /// The provider sends the browser back with a fresh code and this login's state.
    pub fn callback(&mut self, b: &Browser, login: &Login) -> Step {
        let code = self.mint("code");
        self.callback_with(b, &qs(&[("code", &code), ("state", &login.state)]))
    }

    /// Callback plus a good code exchange for `user`; the browser takes the cookies.
    pub fn finish(&mut self, b: &mut Browser, login: &Login, user: User) -> Reply {
        let (_, then) = call(self.callback(b, login));
        let issued = self.login_answer(user, &login.nonce);
        let r = reply(self.resume(then, issued.result()));
        b.accept(&r);
        r
    }

    /// A complete, successful login of `user` in `b`.
    pub fn sign_in(&mut self, b: &mut Browser, user: User) -> Issued {
        let login = self.start_login(b, Some("/"));
        let (_, then) = call(self.callback(b, &login));
        let issued = self.login_answer(user, &login.nonce);
        let r = reply(self.resume(then, issued.result()));
        assert_eq!(r.status, 302, "{r:?}");
        b.accept(&r);
        assert!(b.get(SESSION).is_some(), "no session cookie after login");
        issued
    }
}

/// The audit events of one kind seen so far (from the audit lines in the transcript).
pub fn audit_events(g: &Gate, event: &str) -> Vec<Value> {
    g.transcript
        .iter()
        .filter_map(|l| l.strip_prefix("audit "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == json!(event))
        .collect()
}

/// A request from an operator's script (curl) on the machine: loopback host, the operator
/// token, and the CSRF header on a POST.
pub fn operator_request(method: &str, path: &str) -> Request {
    let mut r = get(path);
    r.method = method.into();
    r.authority = Some("127.0.0.1:9902".into());
    r.authorization = Some(bffgate::secret::Secret::new(format!(
        "Bearer {}",
        bffgate::testkit::ADMIN_TOKEN
    )));
    if method == "POST" {
        r.csrf = Some("1".into());
    }
    r
}

pub fn signed_in(user: User) -> (Gate, Browser, Issued) {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, user);
    (g, b, issued)
}
