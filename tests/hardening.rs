//! Hardening of the engine, each behaviour with the attack or fault it answers: renewal of
//! tokens that live shorter than the refresh skew, `return_to` with dot segments, a callback
//! that cannot burn another browser's login, back-channel logout tokens that must expire and be
//! typed, the operator API's credential and browser defences, CORS preflights per policy, and a
//! login into a full store that reads a bounded number of slots.
//!
//! The harness is the one of `tests/flow.rs` (`common`): fake clock and random, in-memory shared
//! data, a leak checker on every step.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use bffgate::store::{Cas, SharedData, StoreError};
use bffgate::testkit::ADMIN_TOKEN;
use common::*;
use std::cell::Cell;

fn waiting(step: Step) -> AwaitToken {
    match step {
        Step::Wait { then } => *then,
        other => panic!("expected the request to wait, got {other:?}"),
    }
}

fn calls_made(g: &Gate) -> usize {
    g.transcript
        .iter()
        .filter(|t| t.starts_with("Call {"))
        .count()
}

// =====================================================================================
// Tokens that live shorter than the refresh skew
// =====================================================================================

/// Alice signed in with tokens living `ttl` seconds, under the default 30 s refresh skew.
fn short_lived(ttl: u64) -> (Gate, Browser) {
    let mut g = Gate::new();
    assert_eq!(g.cfg.session.refresh_skew_s, 30);
    g.token_ttl = ttl;
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    (g, b)
}

/// 30 concurrent requests on an expired token: one refresh grant, and all 30 forward the one
/// token it returned.
fn thirty_concurrent_requests_make_one_grant(ttl: u64) {
    let (mut g, b) = short_lived(ttl);
    g.advance(ttl);
    let before = calls_made(&g);
    let (_, then) = call(g.request(&orders(&b)));
    let waiters: Vec<AwaitToken> = (0..29).map(|_| waiting(g.request(&orders(&b)))).collect();
    let t = g.refresh_answer("orders:read orders:write", false);
    let (holder, _) = forward(g.resume(then, t.result()));
    assert_eq!(holder.as_deref(), Some(t.access.as_str()), "ttl {ttl}");
    for w in &waiters {
        let (auth, _) = forward(g.wake(w).expect("woken"));
        assert_eq!(auth.as_deref(), Some(t.access.as_str()), "ttl {ttl}");
    }
    // And the next requests, the same second, use it too.
    for _ in 0..30 {
        let (auth, _) = forward(g.request(&orders(&b)));
        assert_eq!(auth.as_deref(), Some(t.access.as_str()), "ttl {ttl}");
    }
    assert_eq!(calls_made(&g) - before, 1, "ttl {ttl}: one grant");
}

#[test]
fn a_2_second_token_is_renewed_once_for_thirty_concurrent_requests() {
    thirty_concurrent_requests_make_one_grant(2);
}

#[test]
fn an_8_second_token_is_renewed_once_for_thirty_concurrent_requests() {
    thirty_concurrent_requests_make_one_grant(8);
}

#[test]
fn a_60_second_token_is_renewed_once_for_thirty_concurrent_requests() {
    thirty_concurrent_requests_make_one_grant(60);
}

/// Under steady traffic (a request every second for 10 lifetimes), each token is renewed once,
/// at half its life when it lives shorter than twice the skew: about two grants per lifetime,
/// never one per request.
#[test]
fn steady_traffic_renews_each_short_lived_token_once() {
    for ttl in [2u64, 8, 60] {
        let (mut g, b) = short_lived(ttl);
        let before = calls_made(&g);
        let mut grants = 0;
        for _ in 0..10 * ttl {
            g.advance(1);
            match g.request(&orders(&b)) {
                Step::Call { then, .. } => {
                    grants += 1;
                    let t = g.refresh_answer("orders:read orders:write", false);
                    forward(g.resume(*then, t.result()));
                }
                step => {
                    forward(step);
                }
            }
        }
        assert_eq!(calls_made(&g) - before, grants);
        let lifetimes = 10;
        assert!(
            grants <= 2 * lifetimes + 1,
            "ttl {ttl}: {grants} grants in {lifetimes} lifetimes"
        );
        assert!(grants >= lifetimes - 1, "ttl {ttl}: renewed as it expires");
    }
}

#[test]
fn a_long_lived_token_keeps_the_configured_skew() {
    let (mut g, b) = short_lived(1000);
    g.advance(1000 - 31);
    forward(g.request(&orders(&b)));
    g.advance(1);
    call(g.request(&orders(&b)));
}

// =====================================================================================
// return_to with dot segments
// =====================================================================================

/// Where a login started with `return_to` sends the browser back after the callback.
fn lands_on(return_to: &str) -> String {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, Some(return_to));
    let r = g.finish(&mut b, &login, ALICE);
    assert_eq!(r.status, 302, "{r:?}");
    header(&r, "location").unwrap().to_string()
}

#[test]
fn return_to_dot_segments_that_resolve_off_site_land_on_the_root() {
    for rt in [
        "/a/..//evil.com",
        "/a/%2e%2e//evil.com",
        "/a/.%2E//evil.com",
        "/a/..%2F%2Fevil.com",
        "/a/..%5C%5Cevil.com",
        "/../evil",
        "/a/b/../../..//evil.com",
    ] {
        assert_eq!(lands_on(rt), "/", "{rt:?}");
    }
}

#[test]
fn return_to_dot_segments_inside_the_site_are_resolved_before_the_redirect() {
    assert_eq!(lands_on("/orders/../profile?x=1"), "/profile?x=1");
    assert_eq!(lands_on("/a/./b/%2e%2e/c"), "/a/c");
}

// =====================================================================================
// The callback compares the flow cookie before it consumes the login
// =====================================================================================

#[test]
fn a_callback_with_the_state_but_another_flow_cookie_does_not_burn_the_login() {
    let mut g = Gate::new();
    let mut victim = Browser::default();
    let login = g.start_login(&mut victim, Some("/orders"));
    // The attacker learned the state (history, provider logs) and brings a junk flow cookie.
    let mut attacker = Browser::default();
    attacker.set(&login.flow_cookie, "junk-flow-secret-of-the-attacker");
    let r = reply(g.callback(&attacker, &login));
    assert_error(&r, 400, "login_failed");
    // The victim's login still completes.
    let r = g.finish(&mut victim, &login, ALICE);
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(header(&r, "location"), Some("/orders"));
    assert!(victim.get(SESSION).is_some());
}

#[test]
fn a_replayed_callback_is_still_refused_once_the_login_is_taken() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let b2 = b.clone();
    g.finish(&mut b, &login, ALICE);
    assert_error(&reply(g.callback(&b2, &login)), 400, "login_failed");
}

// =====================================================================================
// Back-channel logout tokens
// =====================================================================================

fn bcl_gate() -> Gate {
    let cfg = config_with(K1, |v| {
        v["provider"]["jwks_uri"] = json!("http://localhost:9000/jwks");
    });
    Gate::with_config(cfg)
}

fn logout_claims(now: u64) -> Value {
    json!({
        "iss": ISSUER,
        "aud": "bffgate",
        "iat": now,
        "exp": now + 120,
        "jti": format!("jti-{now}"),
        "sub": "sub-alice",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    })
}

/// POSTs a logout token to `/auth/backchannel-logout` (answering the JWKS fetch): the reply.
fn post_logout_token(g: &mut Gate, token: &str) -> Reply {
    let mut req = get("/auth/backchannel-logout");
    req.method = "POST".into();
    let Step::ReadBody { then } = g.request(&req) else {
        panic!("the endpoint reads its body")
    };
    let body = qs(&[("logout_token", token)]);
    let mut e = Engine::new(&g.cfg, g.now, &mut g.rng, &mut g.store);
    let mut step = e.on_body(then, Some(body.as_bytes()));
    if let Step::Call { request, then } = step {
        assert!(request.path.contains("jwks"), "{request:?}");
        step = e.on_callout(*then, answer(200, &bffgate::testkit::jwks()));
    }
    reply(step)
}

#[test]
fn a_typed_logout_token_with_exp_is_accepted() {
    let mut g = bcl_gate();
    let t = bffgate::testkit::sign_jwt_with_header(
        &json!({"typ": "logout+jwt"}),
        &logout_claims(g.now),
    );
    let r = post_logout_token(&mut g, &t);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_logout_token_without_exp_is_refused() {
    let mut g = bcl_gate();
    let mut claims = logout_claims(g.now);
    claims.as_object_mut().unwrap().remove("exp");
    let t = bffgate::testkit::sign_jwt_with_header(&json!({"typ": "logout+jwt"}), &claims);
    let r = post_logout_token(&mut g, &t);
    assert_error(&r, 400, "invalid_request");
    assert!(json_body(&r)["error_description"]
        .as_str()
        .unwrap()
        .contains("exp"));
}

#[test]
fn a_logout_token_of_another_type_is_refused() {
    for typ in ["JWT", "at+jwt", "id_token+jwt"] {
        let mut g = bcl_gate();
        let t = bffgate::testkit::sign_jwt_with_header(&json!({"typ": typ}), &logout_claims(g.now));
        let r = post_logout_token(&mut g, &t);
        assert_error(&r, 400, "invalid_request");
        assert!(
            json_body(&r)["error_description"]
                .as_str()
                .unwrap()
                .contains("typ"),
            "{typ}: {r:?}"
        );
    }
}

// =====================================================================================
// The operator API
// =====================================================================================

fn operator() -> Gate {
    let mut raw = demo_config();
    raw["admin"] = json!(true);
    let secrets = |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        "BFFGATE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
        _ => None,
    };
    let cfg = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap();
    let mut g = Gate::with_config(cfg);
    g.register(ADMIN_TOKEN);
    g
}

fn op(method: &str, path: &str) -> Request {
    operator_request(method, path)
}

#[test]
fn the_operator_api_answers_its_token_on_a_loopback_host() {
    let mut g = operator();
    let r = reply(g.request(&op("GET", "/sessions?sub=sub-alice")));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_body(&r)["sessions"], 0);
    for host in ["localhost:9902", "[::1]:9902", "127.0.0.1", "LOCALHOST"] {
        g.advance(1);
        let mut req = op("GET", "/sessions?sub=x");
        req.authority = Some(host.into());
        assert_eq!(reply(g.request(&req)).status, 200, "{host}");
    }
}

#[test]
fn the_operator_api_refuses_a_missing_or_wrong_token() {
    let mut g = operator();
    let mut none = op("POST", "/sessions/revoke?sub=sub-alice");
    none.authorization = None;
    let mut wrong = none.clone();
    wrong.authorization = Some(bffgate::secret::Secret::new("Bearer not-the-token"));
    let mut basic = none.clone();
    basic.authorization = Some(bffgate::secret::Secret::new(format!("Basic {ADMIN_TOKEN}")));
    let mut prefix = none.clone();
    prefix.authorization = Some(bffgate::secret::Secret::new(format!(
        "Bearer {}",
        &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]
    )));
    for req in [none, wrong, basic, prefix] {
        let r = reply(g.request(&req));
        assert_error(&r, 401, "unauthenticated");
        assert!(header(&r, "www-authenticate")
            .unwrap()
            .starts_with("Bearer"));
    }
    assert!(g
        .transcript
        .iter()
        .any(|t| t.contains("\"event\":\"denied\"") && t.contains("\"route\":\"admin\"")));
}

#[test]
fn the_operator_api_refuses_a_rebound_host_and_anything_from_a_browser() {
    let mut g = operator();
    for host in [
        "evil.example:9902",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "127.0.0.10:9902",
        "",
    ] {
        let mut req = op("GET", "/sessions?sub=x");
        req.authority = Some(host.into());
        assert_error(&reply(g.request(&req)), 403, "forbidden");
    }
    let mut req = op("GET", "/sessions?sub=x");
    req.authority = None;
    assert_error(&reply(g.request(&req)), 403, "forbidden");
    let mut req = op("POST", "/sessions/revoke?sub=x");
    req.origin = Some("http://127.0.0.1:9902".into());
    assert_error(&reply(g.request(&req)), 403, "forbidden");
    for site in ["same-origin", "same-site", "cross-site"] {
        let mut req = op("POST", "/sessions/revoke?sub=x");
        req.sec_fetch_site = Some(site.into());
        assert_error(&reply(g.request(&req)), 403, "forbidden");
    }
    let mut req = op("GET", "/sessions?sub=x");
    req.sec_fetch_site = Some("none".into());
    assert_eq!(reply(g.request(&req)).status, 200);
}

#[test]
fn the_operator_api_scans_the_store_at_most_once_a_second() {
    let mut g = operator();
    assert_eq!(reply(g.request(&op("GET", "/sessions?sub=a"))).status, 200);
    let r = reply(g.request(&op("GET", "/sessions?sub=a")));
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(header(&r, "retry-after"), Some("1"));
    g.advance(1);
    assert_eq!(reply(g.request(&op("GET", "/sessions?sub=a"))).status, 200);
}

#[test]
fn an_operator_instance_without_its_token_is_refused_at_load() {
    for token in [None, Some("short")] {
        let mut raw = demo_config();
        raw["admin"] = json!(true);
        let secrets = move |name: &str| match name {
            "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
            "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
            "BFFGATE_ADMIN_TOKEN" => token.map(str::to_string),
            _ => None,
        };
        let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
        assert_eq!(e.field, "admin_token_env", "{e}");
    }
}

// =====================================================================================
// CORS per policy
// =====================================================================================

const ADMIN_ORIGIN: &str = "https://admin.localhost:8443";

fn cors_gate() -> (Gate, Browser) {
    let cfg = config_with(K1, |v| {
        v["routes"]["orders-write"]["allowed_origins"] = json!([ADMIN_ORIGIN]);
    });
    let mut g = Gate::with_config(cfg);
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    (g, b)
}

fn preflight(origin: &str, route: &str) -> Request {
    Request {
        method: "OPTIONS".into(),
        path: "/api/orders".into(),
        route: Some(route.into()),
        origin: Some(origin.into()),
        cors_method: Some("POST".into()),
        cors_headers: Some("content-type, x-csrf, x-bad header".into()),
        sec_fetch_site: Some("same-site".into()),
        sec_fetch_mode: Some("cors".into()),
        ..Request::default()
    }
}

#[test]
fn a_preflight_from_an_allowed_origin_is_answered_with_credentials() {
    let (mut g, _) = cors_gate();
    let r = reply(g.request(&preflight(ADMIN_ORIGIN, "orders-write")));
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some(ADMIN_ORIGIN)
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("POST"));
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("content-type, x-csrf"),
        "only header names are echoed"
    );
}

#[test]
fn a_preflight_from_another_origin_is_refused() {
    let (mut g, _) = cors_gate();
    for (origin, route) in [
        ("https://evil.example", "orders-write"),
        (ADMIN_ORIGIN, "orders-read"),
        ("http://admin.localhost:8443", "orders-write"),
    ] {
        let r = reply(g.request(&preflight(origin, route)));
        assert_error(&r, 403, "csrf");
        assert_eq!(header(&r, "access-control-allow-origin"), None);
    }
}

#[test]
fn an_allowed_cross_origin_call_is_marked_for_the_response_headers() {
    let (mut g, b) = cors_gate();
    let mut req = place_order(&b);
    req.origin = Some(ADMIN_ORIGIN.into());
    req.sec_fetch_site = Some("same-site".into());
    let mut e = Engine::new(&g.cfg, g.now, &mut g.rng, &mut g.store);
    let step = e.on_request(&req);
    assert!(matches!(step, Step::Forward { .. }), "{step:?}");
    assert_eq!(e.cors.as_deref(), Some(ADMIN_ORIGIN));
    // Our own origin and other origins get nothing.
    for o in [ORIGIN, "https://evil.example"] {
        let mut req = place_order(&b);
        req.origin = Some(o.into());
        let mut e = Engine::new(&g.cfg, g.now, &mut g.rng, &mut g.store);
        e.on_request(&req);
        assert_eq!(e.cors, None, "{o}");
    }
}

#[test]
fn an_http_allowed_origin_is_refused_at_load() {
    let mut raw = demo_config();
    raw["routes"]["orders-write"]["allowed_origins"] = json!(["http://admin.example"]);
    let secrets = |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        _ => None,
    };
    let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
    assert_eq!(e.field, "routes.orders-write.allowed_origins[0]", "{e}");
    assert!(e.message.contains("https"), "{e}");
}

// =====================================================================================
// A login into a full store
// =====================================================================================

/// Shared data that counts reads.
struct Counting<'a> {
    inner: &'a mut MemoryData,
    gets: &'a Cell<usize>,
}

impl SharedData for Counting<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        self.gets.set(self.gets.get() + 1);
        self.inner.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_login_into_a_full_store_reads_a_bounded_number_of_slots() {
    use bffgate::config::{Limits, WhenFull};
    use bffgate::session::Session;
    use bffgate::store::{SharedStore, Store, FREE_SEARCH};
    for when_full in [WhenFull::EvictLeastRecentlyUsed, WhenFull::Refuse] {
        let limits = Limits {
            max_sessions: 4000,
            max_pending: 1,
            idle_s: 1800,
            when_full,
        };
        let mut data = MemoryData::default();
        let gets = Cell::new(0);
        let mut rng = TestRandom(5);
        let s = |i: u64| Session {
            sub: format!("user-{i}"),
            created: T0,
            last_seen: T0 + i % 100,
            expires: T0 + 3600,
            ..Session::default()
        };
        // Fill every slot with a live session (refusing, so nothing is evicted on the way).
        {
            let mut st = SharedStore::new(
                &mut data,
                Limits {
                    when_full: WhenFull::Refuse,
                    ..limits
                },
            );
            st.init_slots();
            let mut i = 0;
            while st.occupancy().0 < 4000 {
                let _ = st.create_session(&s(i), &mut rng, T0 + 100);
                i += 1;
                assert!(i < 200_000, "the table fills");
            }
        }
        {
            let mut st = SharedStore::new(
                Counting {
                    inner: &mut data,
                    gets: &gets,
                },
                limits,
            );
            let r = st.create_session(&s(9999), &mut rng, T0 + 100);
            match when_full {
                WhenFull::Refuse => assert!(r.is_err()),
                _ => assert!(r.unwrap().1.is_some(), "the least recently used gives way"),
            }
        }
        let n = gets.get();
        assert!(
            n <= FREE_SEARCH as usize + 16,
            "{when_full:?}: {n} reads for a login into a full table of 4000"
        );
    }
}
