//! Shared harness of the bffgate fuzz targets.
//!
//! - [`demo_config`] / [`shipped_config`]: the configurations the engine targets run on (the
//!   unit-test demo configuration, and the shipped `envoy/bffgate.yaml` + `policies/*.yaml`
//!   merged by the config tool's own code, with a JWKS so ID-token signatures are verified).
//! - [`World`]: a store in which a user is already signed in and another login is pending, built
//!   once per process by driving the engine through a real login (the fake provider signs its ID
//!   tokens with a fixed P-256 key and serves the matching JWKS).
//! - [`check_step`]: the invariants every step of the engine must hold, whatever the input.
//!
//! Fuzz inputs for the engine are small text scripts (see `fuzz_targets/engine.rs`), so the seed
//! corpora are readable and realistic, and placeholders such as `{session}` let the fuzzer mix
//! valid pieces (a live session cookie, a pending state) with hostile ones.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bffgate::callout::CallResult;
use bffgate::config::Config;
use bffgate::engine::{CookieEdit, Engine, Request, Step};
use bffgate::reply::Reply;
use bffgate::seal::KeyRing;
use bffgate::store::SharedStore;
use bffgate::testkit::TestRandom;
use bffgate::testkit::{memory_store, MemoryData};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// The clock of every world (unix seconds).
pub const T0: u64 = 1_750_000_000;
/// Client secret of the test configurations.
pub const CLIENT_SECRET: &str = "fuzz-client-secret-7c1d9e2f8a3b4c5d6e7f8091a2b3c4d5";
/// Cookie key ring of the test configurations.
pub const KEYS: &str =
    "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,k0:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A";
/// The raw key bytes of `k1` and `k0`, base64url (must never show up in any output).
pub const KEY_MATERIAL: [&str; 2] = [
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
    "ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A",
];

/// Secrets of the test configurations, as the filter's VM would see them.
pub fn secrets(name: &str) -> Option<String> {
    match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(KEYS.to_string()),
        "BFFGATE_ADMIN_TOKEN" => Some(bffgate::testkit::ADMIN_TOKEN.to_string()),
        _ => None,
    }
}

/// The demo configuration of the unit tests (no JWKS: ID tokens are checked by claims only),
/// with a small store so that scripts reach its limits.
pub fn demo_config_json() -> Value {
    let mut v = bffgate::testkit::demo_json();
    v["store"] = json!({"max_sessions": 8, "max_pending_logins": 8});
    v
}

/// The shipped settings file.
pub const SHIPPED_SETTINGS: &str = include_str!("../../envoy/bffgate.yaml");
/// The shipped policy files.
pub const SHIPPED_POLICIES: &[(&str, &str)] = &[
    (
        "policies/demo.yaml",
        include_str!("../../policies/demo.yaml"),
    ),
    (
        "policies/orders.yaml",
        include_str!("../../policies/orders.yaml"),
    ),
    (
        "policies/profile.yaml",
        include_str!("../../policies/profile.yaml"),
    ),
];

/// The shipped configuration as the config tool merges it (settings + policy files), with
/// small store limits so a world is cheap to copy.
pub fn shipped_config_json() -> Value {
    let settings: Value = serde_yaml::from_str(SHIPPED_SETTINGS).unwrap_or(Value::Null);
    let files = SHIPPED_POLICIES
        .iter()
        .filter_map(|(n, t)| {
            serde_yaml::from_str::<bffgate::render::PolicyFile>(t)
                .ok()
                .map(|p| (n.to_string(), p))
        })
        .collect();
    let (mut merged, _) =
        bffgate::render::merge(settings, files).unwrap_or((Value::Null, Default::default()));
    if let Some(o) = merged.as_object_mut() {
        o.insert(
            "store".into(),
            json!({"max_sessions": 8, "max_pending_logins": 8}),
        );
    }
    merged
}

fn compile(v: &Value) -> Config {
    match Config::from_json(v.to_string().as_bytes(), &secrets) {
        Ok(c) => c,
        Err(e) => panic!("the fuzz harness configuration does not compile: {e}"),
    }
}

// ----- the fake provider (the test kit's ES256 key) -----

pub use bffgate::testkit::{discovery_document, jwks, sign_jwt};

/// Claims of a good ID token for `sub` at `now`.
pub fn id_claims(sub: &str, username: &str, nonce: &str, now: u64) -> Value {
    json!({
        "iss": "http://localhost:9000", "aud": "bffgate", "azp": "bffgate", "nonce": nonce,
        "iat": now, "exp": now + 300, "auth_time": now, "sub": sub,
        "preferred_username": username, "name": username, "sid": format!("sid-{username}"),
    })
}

/// Tokens the fake provider hands out all share this marker, so the invariant checker can tell
/// that one leaked. The fuzzer never sees them unless the filter shows them.
pub const TOKEN_MARK: &str = "Q9zX7tok";

/// A good token-endpoint answer: access token (a JWT with `scope`), refresh token, ID token.
pub fn token_answer(scope: &str, id_token: Option<&str>, expires_in: Value, serial: u32) -> String {
    // For every audience of the demo configuration, so that the engine's token check (a JWT
    // must name the audience it is used for) lets the harness's logins and renewals through.
    let at_claims = json!({"scope": scope, "exp": T0 + 300, "jti": format!("{TOKEN_MARK}-at-{serial}"),
                           "aud": ["https://orders.api.local", "https://profile.api.local"]});
    let at = format!(
        "{}.{}.{TOKEN_MARK}sig{serial}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(at_claims.to_string())
    );
    let mut body = json!({
        "access_token": at,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
        "refresh_token": format!("{TOKEN_MARK}-rt-{serial}"),
    });
    if let Some(id) = id_token {
        body["id_token"] = json!(id);
    }
    body.to_string()
}

// ----- worlds -----

/// A signed-in world: configuration, a store snapshot, and the cookies of the browser.
#[derive(Clone)]
pub struct World {
    /// Configuration.
    pub cfg: Config,
    /// The store after alice signed in and another login was started.
    pub data: MemoryData,
    /// alice's session cookie value.
    pub session: String,
    /// The pending login: its state, nonce, flow cookie name and value.
    pub state: String,
    /// Nonce of the pending login.
    pub nonce: String,
    /// Flow cookie name of the pending login.
    pub flow_name: String,
    /// Flow cookie value of the pending login.
    pub flow_value: String,
    /// Clock at the end of the setup.
    pub now: u64,
    /// Seed for the world's randomness.
    pub seed: u64,
}

impl World {
    /// A store holding this world's data.
    pub fn store(&self) -> SharedStore<MemoryData> {
        let mut st = memory_store(self.cfg.store);
        st.data = self.data.clone();
        st
    }

    /// An engine-ready set of parts: `(store, rng)`.
    pub fn parts(&self) -> (SharedStore<MemoryData>, TestRandom) {
        (self.store(), TestRandom(self.seed))
    }
}

fn location(r: &Reply) -> Option<&str> {
    r.headers
        .iter()
        .find(|(n, _)| n == "location")
        .map(|(_, v)| v.as_str())
}

fn set_cookie_pairs(r: &Reply) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .filter_map(|(_, v)| {
            let first = v.split(';').next()?;
            let (n, val) = first.split_once('=')?;
            Some((n.to_string(), val.to_string()))
        })
        .collect()
}

fn query_value(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Drives a step to its end, answering callouts with `answer(n, request_path)`.
fn drive(
    cfg: &Config,
    st: &mut SharedStore<MemoryData>,
    rng: &mut TestRandom,
    now: u64,
    mut step: Step,
    answer: &mut dyn FnMut(usize, &str) -> CallResult,
) -> Step {
    for n in 0..8 {
        match step {
            Step::Call { request, then } => {
                let result = answer(n, &request.path);
                let mut e = Engine::new(cfg, now, rng, st);
                step = e.on_callout(*then, result);
            }
            other => return other,
        }
    }
    step
}

fn start_login(
    cfg: &Config,
    st: &mut SharedStore<MemoryData>,
    rng: &mut TestRandom,
    now: u64,
) -> (String, String, String, String) {
    let req = Request {
        method: "GET".into(),
        path: "/auth/login?return_to=%2Forders".into(),
        sec_fetch_mode: Some("navigate".into()),
        ..Request::default()
    };
    let step = Engine::new(cfg, now, rng, st).on_request(&req);
    let issuer = cfg.provider.issuer.clone();
    let mut answer = |_: usize, _: &str| CallResult::Response {
        status: 200,
        body: discovery_document(&issuer).into_bytes(),
    };
    let Step::Respond(r) = drive(cfg, st, rng, now, step, &mut answer) else {
        panic!("login did not answer")
    };
    let loc = location(&r).unwrap_or_default().to_string();
    let state = query_value(&loc, "state").unwrap_or_default();
    let nonce = query_value(&loc, "nonce").unwrap_or_default();
    let (flow_name, flow_value) = set_cookie_pairs(&r).into_iter().next().unwrap_or_default();
    (state, nonce, flow_name, flow_value)
}

fn build_world(cfg_json: &Value, seed: u64) -> World {
    let cfg = compile(cfg_json);
    let mut st = memory_store(cfg.store);
    let mut rng = TestRandom(seed);
    let now = T0;
    // alice signs in.
    let (state, nonce, flow_name, flow_value) = start_login(&cfg, &mut st, &mut rng, now);
    let req = Request {
        method: "GET".into(),
        path: format!(
            "/auth/callback?code={TOKEN_MARK}-code-1&state={}",
            form_urlencoded::byte_serialize(state.as_bytes()).collect::<String>()
        ),
        cookie: Some(format!("{flow_name}={flow_value}")),
        sec_fetch_mode: Some("navigate".into()),
        ..Request::default()
    };
    let step = Engine::new(&cfg, now, &mut rng, &mut st).on_request(&req);
    let id = sign_jwt(&id_claims("sub-alice", "alice", &nonce, now));
    let mut answer = |_: usize, path: &str| {
        let body = if path.contains("jwks") {
            jwks()
        } else if path.ends_with("/.well-known/openid-configuration") {
            discovery_document(&cfg.provider.issuer)
        } else {
            token_answer(
                "openid profile offline_access orders:read orders:write",
                Some(&id),
                json!(300),
                1,
            )
        };
        CallResult::Response {
            status: 200,
            body: body.into_bytes(),
        }
    };
    let done = drive(&cfg, &mut st, &mut rng, now, step, &mut answer);
    let Step::Respond(r) = done else {
        panic!("the harness login did not finish: {done:?}")
    };
    let session = set_cookie_pairs(&r)
        .into_iter()
        .find(|(n, _)| n == &cfg.cookie.name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("the harness login set no session: {r:?}"));
    // Another login, left pending (its state and flow cookie are the fuzzer's to use).
    let (state, nonce, flow_name, flow_value) = start_login(&cfg, &mut st, &mut rng, now);
    World {
        cfg,
        data: st.data.clone(),
        session,
        state,
        nonce,
        flow_name,
        flow_value,
        now,
        seed: rng.0,
    }
}

/// The world over the unit-test demo configuration.
pub fn demo_world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| build_world(&demo_config_json(), 0x5eed_0001))
}

/// The world over the shipped configuration (JWKS, token exchange, back-channel logout).
pub fn shipped_world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| build_world(&shipped_config_json(), 0x5eed_0002))
}

/// The operator-API configuration (the shipped one with `admin: true`) over the same store.
pub fn admin_world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut w = shipped_world().clone();
        let mut v = shipped_config_json();
        v["admin"] = json!(true);
        w.cfg = compile(&v);
        w
    })
}

// ----- invariants -----

/// Whether `name` is a bffgate cookie name for `cfg` (compared case-insensitively, as the
/// filter strips them).
pub fn is_bff_cookie(cfg: &Config, name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l == cfg.cookie.name.to_ascii_lowercase()
        || l.starts_with(&cfg.cookie.flow_prefix.to_ascii_lowercase())
}

/// Cookie names in a `Cookie` header as an upstream would read them (split on `;`, trimmed of
/// any whitespace, surrounding quotes ignored).
pub fn upstream_cookie_names(h: &str) -> Vec<String> {
    h.split(';')
        .filter_map(|p| {
            let p = p.trim();
            let name = p.split_once('=').map_or(p, |(n, _)| n).trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Strings that must never show up in a reply, an audit note, or a forwarded cookie header:
/// the client secret, the cookie keys and the tokens of the fake provider. Those that the fuzz
/// input itself contains are left out (the filter may echo its input, e.g. an unknown cookie;
/// and libFuzzer learns these strings from the very comparisons that check for them).
pub fn never_visible(input: &str) -> Vec<String> {
    let mut v = vec![CLIENT_SECRET.to_string(), TOKEN_MARK.to_string()];
    v.extend(KEY_MATERIAL.iter().map(|s| s.to_string()));
    v.retain(|s| !input.contains(s.as_str()));
    v
}

/// What the request looked like, for the invariants that depend on it.
pub struct Seen<'a> {
    /// The request.
    pub req: &'a Request,
    /// Whether the request carried exactly one session cookie that verifies with the key ring.
    pub had_valid_mac: bool,
}

impl<'a> Seen<'a> {
    /// Classifies a request.
    pub fn new(cfg: &Config, req: &'a Request) -> Seen<'a> {
        let had_valid_mac = req.cookie.as_deref().is_some_and(|h| {
            let (n, v) = bffgate::cookie::find(h, &cfg.cookie.name);
            n == 1 && v.is_some_and(|v| verifies(&cfg.cookie.keys, &cfg.cookie.name, v))
        });
        Seen { req, had_valid_mac }
    }
}

fn verifies(keys: &KeyRing, name: &str, v: &str) -> bool {
    keys.open(name, v).is_ok()
}

/// Checks the invariants of one step; panics (a fuzz finding) with a description otherwise.
pub fn check_step(cfg: &Config, seen: &Seen<'_>, step: &Step, notes: &[String], secret: &[String]) {
    let visible: Vec<String> = match step {
        Step::Respond(r) => {
            check_reply(cfg, seen, r);
            let mut v: Vec<String> = r.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            v.push(r.body.clone());
            v
        }
        Step::Forward {
            authorization,
            cookie,
        } => {
            check_forward(cfg, seen, authorization.is_some(), cookie);
            vec![format!("{cookie:?}")]
        }
        Step::Call { request, .. } => {
            assert!(
                request.path.starts_with('/'),
                "a callout path is not a path: {:?}",
                request.path
            );
            vec![]
        }
        Step::Wait { .. } | Step::ReadBody { .. } => vec![],
    };
    // Debug renderings are redacted too (they end up in panics and logs).
    let mut all = visible;
    all.push(format!("{step:?}"));
    all.extend(notes.iter().cloned());
    for text in &all {
        for s in secret {
            assert!(
                !text.contains(s.as_str()),
                "a secret ({s}) is visible in: {text}"
            );
        }
    }
    // The decision classifier of the access log never fails either.
    let _ = step.decision().as_str();
}

fn check_forward(cfg: &Config, seen: &Seen<'_>, with_token: bool, cookie: &CookieEdit) {
    let req = seen.req;
    if cfg.admin {
        panic!("the operator API forwarded a request: {:?}", req.path);
    }
    let (path, _) = req.path.split_once('?').unwrap_or((&req.path, ""));
    if let Some(rest) = path.strip_prefix(cfg.auth_prefix.as_str()) {
        assert!(
            !(rest.is_empty() || rest.starts_with('/')),
            "a request to bffgate's own endpoints was forwarded: {:?}",
            req.path
        );
    }
    let policy = req.route.as_deref().and_then(|r| cfg.routes.get(r));
    let Some(policy) = policy else {
        panic!("forwarded without a policy for route {:?}", req.route)
    };
    match policy.access {
        bffgate::policy::Access::Public => {
            assert!(
                !with_token,
                "a token was forwarded on the public route {}",
                policy.route
            )
        }
        bffgate::policy::Access::Session => {
            assert!(
                with_token,
                "a session route was forwarded without a token: {}",
                policy.route
            );
            assert!(
                seen.had_valid_mac,
                "a session route was forwarded for a request without one valid session cookie: {:?}",
                req.cookie
            );
        }
    }
    let forwarded = match cookie {
        CookieEdit::Keep => req.cookie.clone(),
        CookieEdit::Remove => None,
        CookieEdit::Set(h) => Some(h.clone()),
    };
    if let Some(h) = forwarded {
        for n in upstream_cookie_names(&h) {
            assert!(
                !is_bff_cookie(cfg, &n),
                "a bffgate cookie ({n}) is forwarded upstream in {h:?} (edit {cookie:?})"
            );
        }
        for (n, _) in bffgate::cookie::pairs(&h) {
            assert!(
                !is_bff_cookie(cfg, n),
                "bffgate cookie {n} forwarded in {h:?}"
            );
        }
    }
}

fn check_reply(cfg: &Config, seen: &Seen<'_>, r: &Reply) {
    let h = |name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("cache-control"), Some("no-store"), "{r:?}");
    assert_eq!(h("x-content-type-options"), Some("nosniff"), "{r:?}");
    for (n, v) in &r.headers {
        assert!(
            !v.contains('\r') && !v.contains('\n') && !n.contains(':'),
            "header injection: {n}: {v:?}"
        );
    }
    if r.status >= 400 {
        let b: Value = match serde_json::from_str(&r.body) {
            Ok(b) => b,
            Err(e) => panic!("error reply is not JSON ({e}): {r:?}"),
        };
        let code = b.get("error").and_then(Value::as_str).unwrap_or_default();
        assert!(
            bffgate::testkit::error_codes().contains(&code),
            "not a contract error code: {r:?}"
        );
        assert!(
            b.get("error_description").is_some_and(Value::is_string),
            "no error_description: {r:?}"
        );
        assert_eq!(h("content-type"), Some("application/json"), "{r:?}");
    }
    if let Some(loc) = h("location") {
        assert!(
            (300..400).contains(&r.status),
            "location on a {} reply",
            r.status
        );
        // The authorization endpoint set by hand, or the one the fuzz provider's discovery
        // document names.
        let authorize = cfg
            .provider
            .by_hand
            .authorization
            .as_deref()
            .unwrap_or("http://localhost:9000/auth");
        let idp = loc.starts_with(&format!("{authorize}?"));
        let local = loc.starts_with('/') && !loc.starts_with("//") && !loc.starts_with("/\\");
        assert!(idp || local, "redirect off site: {loc:?}");
        if local {
            assert!(
                loc.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\'),
                "odd bytes in a local redirect: {loc:?}"
            );
        }
        if let Some(rt) = loc
            .strip_prefix(&format!("{}/login?", cfg.auth_prefix))
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "return_to")
                    .map(|(_, v)| v.into_owned())
            })
        {
            assert_return_to_local(&rt);
        }
    }
    for (n, v) in r.headers.iter().filter(|(n, _)| n == "set-cookie") {
        let _ = n;
        let (name, rest) = v.split_once('=').unwrap_or((v, ""));
        assert!(
            name == cfg.cookie.name || name.starts_with(&cfg.cookie.flow_prefix),
            "a cookie that is not bffgate's is set: {v}"
        );
        for attr in ["; Path=/", "; Secure", "; HttpOnly"] {
            assert!(rest.contains(attr), "Set-Cookie without {attr}: {v}");
        }
        assert!(!rest.contains("Domain="), "Set-Cookie with a Domain: {v}");
        if name == cfg.cookie.name {
            let value = rest.split(';').next().unwrap_or_default();
            if !value.is_empty() {
                // A new session cookie only ever comes out of a login callback.
                assert!(
                    seen.req
                        .path
                        .starts_with(&format!("{}/callback", cfg.auth_prefix)),
                    "a session cookie was set outside a login callback: {:?}",
                    seen.req.path
                );
                assert_eq!(r.status, 302, "session set on a non-redirect: {r:?}");
            }
        }
    }
}

/// The invariant of `redirect::sanitize_return_to`'s output.
pub fn assert_return_to_local(out: &str) {
    assert!(
        out == "/" || (out.starts_with('/') && !out.starts_with("//") && !out.starts_with("/\\")),
        "return_to output is not a local path: {out:?}"
    );
    assert!(
        out.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\'),
        "return_to output has odd bytes: {out:?}"
    );
    let once = percent_encoding::percent_decode_str(out).decode_utf8_lossy();
    assert!(
        !once.starts_with("//") && !once.starts_with("/\\") && !once.starts_with('\\'),
        "return_to output decodes to an off-site path: {out:?} -> {once:?}"
    );
    assert!(
        !once.chars().any(char::is_control),
        "return_to output decodes to control characters: {out:?}"
    );
    // No dot segment left, and none of its decoded forms resolves to `//` or above the root.
    assert!(
        bffgate::redirect::is_safe_target(out),
        "return_to output has dot segments that resolve off-site: {out:?}"
    );
}

/// Whether the path part of `s` has a `.` or `..` segment (also percent-encoded): the only
/// inputs `sanitize_return_to` may rewrite instead of keeping or replacing with `/`.
pub fn has_dot_segment(s: &str) -> bool {
    let path = &s[..s.find(['?', '#']).unwrap_or(s.len())];
    path.split('/').any(|seg| {
        let d = seg.replace("%2e", ".").replace("%2E", ".");
        d == "." || d == ".."
    })
}

/// Runs one engine call and checks it.
pub fn run_checked(
    cfg: &Config,
    st: &mut SharedStore<MemoryData>,
    rng: &mut TestRandom,
    now: u64,
    seen: &Seen<'_>,
    secret: &[String],
    f: impl FnOnce(&mut Engine<'_>) -> Option<Step>,
) -> Option<Step> {
    let mut e = Engine::new(cfg, now, rng, st);
    let step = f(&mut e);
    let notes = std::mem::take(&mut e.notes);
    for ev in &e.events {
        let _ = ev.metric();
        let _ = ev.to_json();
    }
    if let Some(s) = &step {
        check_step(cfg, seen, s, &notes, secret);
    } else {
        for n in &notes {
            for s in secret {
                assert!(!n.contains(s.as_str()), "secret in a note: {n}");
            }
        }
    }
    step
}
