//! Specification of the token lifecycle of the flow engine: single-flight renewal (the session's
//! refresh lock, waiting requests, their deadlines), transient and terminal provider failures,
//! RFC 8693 token exchange (and the refresh that precedes it when the login token is stale),
//! refresh-token rotation, revocation at logout, and the configuration of all this.
//!
//! The configuration is the demo one with the profile audience obtained by token exchange
//! (down-scoped to `profile`) and a third audience, billing, obtained with a refresh grant
//! (down-scoped to `billing:read`). The harness (`common`) is the one of `tests/flow.rs`: every
//! step, including every poll of a waiting request, goes through the leak checker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

const BILLING: &str = "https://billing.api.local";
/// The callout timeout of the demo configuration (`provider.timeout_ms` = 5000).
const CALLOUT_TIMEOUT_S: u64 = 5;
/// How long a refresh lock lasts: the callout timeout plus a 2 s margin for the store write.
const LOCK_TTL: u64 = CALLOUT_TIMEOUT_S + 2;
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

fn lifecycle_raw() -> Value {
    let mut v = demo_config();
    v["audiences"][PROFILE] = json!({"acquire": "exchange", "scopes": ["profile"]});
    v["audiences"][BILLING] = json!({"acquire": "refresh", "scopes": ["billing:read"]});
    v["routes"]["billing"] = json!({
        "access": "session", "audience": BILLING, "scopes": ["billing:read"]
    });
    v
}

fn compile(raw: &Value) -> Result<Config, bffgate::config::ConfigError> {
    let secrets = |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        _ => None,
    };
    Config::from_json(raw.to_string().as_bytes(), &secrets)
}

fn lifecycle_config_with(patch: impl FnOnce(&mut Value)) -> Config {
    let mut raw = lifecycle_raw();
    patch(&mut raw);
    compile(&raw).expect("the lifecycle config compiles")
}

fn gate_with(patch: impl FnOnce(&mut Value)) -> (Gate, Browser, Issued) {
    let mut g = Gate::with_config(lifecycle_config_with(patch));
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, ALICE);
    (g, b, issued)
}

/// Alice signed in; the session holds the login (orders) token only.
fn signed() -> (Gate, Browser, Issued) {
    gate_with(|_| {})
}

fn billing(b: &Browser) -> Request {
    api(b, "GET", "/api/billing", "billing")
}

fn waiting(step: Step) -> AwaitToken {
    match step {
        Step::Wait { then } => *then,
        other => panic!("expected the request to wait, got {other:?}"),
    }
}

/// Callouts made so far (every step is in the transcript).
fn calls_made(g: &Gate) -> usize {
    g.transcript
        .iter()
        .filter(|t| t.starts_with("Call {"))
        .count()
}

/// The one live session record, as stored.
fn record(g: &Gate) -> Value {
    let mut live: Vec<Value> = g
        .store
        .data
        .values()
        .filter_map(bffgate::record::decode)
        .map(|s| serde_json::to_value(&s).unwrap())
        .collect();
    assert_eq!(live.len(), 1, "one live session: {live:?}");
    live.pop().unwrap()
}

fn field(rec: &Value, name: &str) -> u64 {
    rec.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// A good RFC 8693 answer.
fn exchanged(g: &mut Gate, scope: &str) -> Issued {
    let access = g.mint("at-xchg");
    let body = json!({
        "access_token": access,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": g.token_ttl,
        "scope": scope,
    });
    Issued {
        access,
        refresh: None,
        id: None,
        body,
    }
}

fn invalid_grant() -> CallResult {
    answer(400, r#"{"error":"invalid_grant"}"#)
}

/// Gets a billing token into the session.
fn get_billing(g: &mut Gate, b: &Browser) -> Issued {
    let (_, then) = call(g.request(&billing(b)));
    let t = g.refresh_answer("billing:read", false);
    forward(g.resume(then, t.result()));
    t
}

/// Gets a profile token into the session (by exchange of a fresh login token).
fn get_profile(g: &mut Gate, b: &Browser) -> Issued {
    let (_, then) = call(g.request(&profile(b)));
    let t = exchanged(g, "profile");
    forward(g.resume(then, t.result()));
    t
}

// =====================================================================================
// Single flight
// =====================================================================================

#[test]
fn an_expired_token_is_renewed_by_one_request_while_another_waits() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (req, _) = call(g.request(&orders(&b)));
    assert_eq!(
        param(req.body.expose(), "grant_type").as_deref(),
        Some("refresh_token")
    );
    waiting(g.request(&orders(&b)));
}

#[test]
fn the_renewing_request_holds_the_session_lock_for_the_callout() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    assert_eq!(field(&record(&g), "refreshing_until"), 0);
    call(g.request(&orders(&b)));
    assert!(field(&record(&g), "refreshing_until") >= g.now + CALLOUT_TIMEOUT_S);
}

#[test]
fn a_waiter_stays_paused_while_the_renewal_is_in_flight() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    call(g.request(&orders(&b)));
    let w = waiting(g.request(&orders(&b)));
    assert_eq!(g.wake(&w), None);
    for _ in 0..CALLOUT_TIMEOUT_S {
        g.advance(1);
        assert_eq!(g.wake(&w), None);
    }
}

#[test]
fn a_waiter_gets_the_token_the_holder_obtained_and_only_one_call_is_made() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let before = calls_made(&g);
    let (_, then) = call(g.request(&orders(&b)));
    let w = waiting(g.request(&orders(&b)));
    assert_eq!(g.wake(&w), None);
    g.advance(1);
    let t = g.refresh_answer("orders:read orders:write", false);
    let (holder, _) = forward(g.resume(then, t.result()));
    assert_eq!(holder.as_deref(), Some(t.access.as_str()));
    let (waiter, _) = forward(g.wake(&w).expect("woken"));
    assert_eq!(waiter, Some(t.access));
    assert_eq!(calls_made(&g) - before, 1);
}

#[test]
fn many_waiters_share_one_renewal() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let before = calls_made(&g);
    let (_, then) = call(g.request(&orders(&b)));
    let waiters: Vec<AwaitToken> = (0..5).map(|_| waiting(g.request(&orders(&b)))).collect();
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    for w in &waiters {
        let (auth, _) = forward(g.wake(w).expect("woken"));
        assert_eq!(auth.as_deref(), Some(t.access.as_str()));
    }
    assert_eq!(calls_made(&g) - before, 1);
}

#[test]
fn a_waiter_keeps_its_own_cookie_edit() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let mut req = orders(&b);
    req.cookie = Some(format!("theme=dark; {SESSION}={}", b.session()));
    let w = waiting(g.request(&req));
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    let (_, cookie) = forward(g.wake(&w).expect("woken"));
    assert_eq!(cookie, CookieEdit::Set("theme=dark".into()));
}

#[test]
fn a_request_for_another_audience_waits_then_makes_its_own_call() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let w = waiting(g.request(&billing(&b)));
    assert_eq!(g.wake(&w), None);
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    let (req, then) = call(g.wake(&w).expect("woken"));
    let body = req.body.expose();
    assert_eq!(params(body, "resource"), vec![BILLING]);
    // The lock is now the billing request's: a third request waits for it.
    let w2 = waiting(g.request(&billing(&b)));
    let t2 = g.refresh_answer("billing:read", false);
    let (auth, _) = forward(g.resume(then, t2.result()));
    assert_eq!(auth.as_deref(), Some(t2.access.as_str()));
    let (auth, _) = forward(g.wake(&w2).expect("woken"));
    assert_eq!(auth, Some(t2.access));
}

#[test]
fn the_lock_is_released_after_a_successful_renewal() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    assert_eq!(field(&record(&g), "refreshing_until"), 0);
    let (req, _) = call(g.request(&billing(&b)));
    assert_eq!(params(req.body.expose(), "resource"), vec![BILLING]);
}

#[test]
fn a_fresh_token_is_forwarded_at_once_even_while_another_audience_renews() {
    let (mut g, b, issued) = signed();
    call(g.request(&billing(&b)));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(issued.access));
}

// =====================================================================================
// The renewal window
// =====================================================================================

#[test]
fn inside_the_renewal_window_a_locked_session_forwards_the_still_valid_token() {
    let (mut g, b, issued) = signed();
    g.advance(g.token_ttl - SKEW / 2);
    call(g.request(&orders(&b)));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn at_its_expiry_a_token_is_no_longer_used_while_another_request_renews() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl - 1);
    call(g.request(&orders(&b)));
    forward(g.request(&orders(&b)));
    g.advance(1);
    waiting(g.request(&orders(&b)));
}

// =====================================================================================
// Dead holders and deadlines
// =====================================================================================

#[test]
fn a_lock_lasts_at_least_the_callout_timeout() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    call(g.request(&orders(&b)));
    g.advance(CALLOUT_TIMEOUT_S);
    waiting(g.request(&orders(&b)));
}

#[test]
fn a_lock_whose_holder_died_expires() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    call(g.request(&orders(&b)));
    g.advance(LOCK_TTL);
    let (req, then) = call(g.request(&orders(&b)));
    assert_eq!(params(req.body.expose(), "resource"), vec![ORDERS]);
    let t = g.refresh_answer("orders:read orders:write", false);
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
}

#[test]
fn a_waiter_gives_up_at_its_deadline_with_idp_unavailable() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    call(g.request(&orders(&b)));
    let w = waiting(g.request(&orders(&b)));
    g.advance(LOCK_TTL - 1);
    assert_eq!(g.wake(&w), None);
    g.advance(1);
    let r = reply(g.wake(&w).expect("gave up"));
    assert_error(&r, 503, "idp_unavailable");
    assert_sets_no_session_cookie(&r);
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn a_waiter_never_waits_past_its_deadline_even_if_another_holder_took_over() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    call(g.request(&orders(&b)));
    g.advance(3);
    let w = waiting(g.request(&orders(&b)));
    g.advance(LOCK_TTL - 3);
    // The first holder died; a new request takes the lock over.
    call(g.request(&orders(&b)));
    assert_eq!(g.wake(&w), None);
    g.advance(3);
    assert_error(&reply(g.wake(&w).expect("gave up")), 503, "idp_unavailable");
}

#[test]
fn a_waiter_polled_late_still_gets_a_token_renewed_before_its_deadline() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let w = waiting(g.request(&orders(&b)));
    g.advance(LOCK_TTL - 1);
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    // The timer only gets to the waiter once its deadline has come.
    g.advance(1);
    let (auth, _) = forward(g.wake(&w).expect("woken"));
    assert_eq!(auth, Some(t.access));
}

// =====================================================================================
// Transient failures
// =====================================================================================

#[test]
fn a_transient_failure_answers_the_holder_503_and_releases_the_lock() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let r = reply(g.resume(then, answer(503, "busy")));
    assert_error(&r, 503, "idp_unavailable");
    assert_sets_no_session_cookie(&r);
    let rec = record(&g);
    assert_eq!(field(&rec, "refreshing_until"), 0);
    assert_eq!(field(&rec, "refresh_failed_at"), g.now);
}

#[test]
fn an_unreachable_provider_is_a_transient_failure_too() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    g.advance(CALLOUT_TIMEOUT_S);
    assert_error(
        &reply(g.resume(then, CallResult::Failed)),
        503,
        "idp_unavailable",
    );
    assert_eq!(field(&record(&g), "refresh_failed_at"), g.now);
    assert_eq!(field(&record(&g), "refreshing_until"), 0);
}

#[test]
fn a_transient_failure_inside_the_renewal_window_forwards_the_still_valid_token() {
    let (mut g, b, issued) = signed();
    g.advance(g.token_ttl - SKEW);
    let (_, then) = call(g.request(&orders(&b)));
    let (auth, _) = forward(g.resume(then, answer(500, "oops")));
    assert_eq!(auth, Some(issued.access));
    assert_eq!(field(&record(&g), "refreshing_until"), 0);
}

#[test]
fn waiters_fail_fast_after_the_renewal_they_waited_for_failed() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let w1 = waiting(g.request(&orders(&b)));
    let w2 = waiting(g.request(&billing(&b)));
    g.advance(2);
    reply(g.resume(then, answer(502, "bad gateway")));
    let before = calls_made(&g);
    assert_error(&reply(g.wake(&w1).expect("woken")), 503, "idp_unavailable");
    assert_error(&reply(g.wake(&w2).expect("woken")), 503, "idp_unavailable");
    assert_eq!(
        calls_made(&g),
        before,
        "no more calls to an unwell provider"
    );
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn a_later_request_tries_again_after_a_failure() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    reply(g.resume(then, answer(503, "busy")));
    g.advance(1);
    let (_, then) = call(g.request(&orders(&b)));
    let t = g.refresh_answer("orders:read orders:write", false);
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
    assert_eq!(field(&record(&g), "refresh_failed_at"), 0);
}

#[test]
fn a_waiter_that_started_after_a_failure_is_not_failed_by_it() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    reply(g.resume(then, answer(503, "busy")));
    g.advance(1);
    let (_, then) = call(g.request(&orders(&b)));
    let w = waiting(g.request(&orders(&b)));
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    let (auth, _) = forward(g.wake(&w).expect("woken"));
    assert_eq!(auth, Some(t.access));
}

// =====================================================================================
// Terminal failures
// =====================================================================================

#[test]
fn a_refused_refresh_token_ends_the_session_for_the_holder_and_its_waiters() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    let w = waiting(g.request(&orders(&b)));
    let nav = waiting(g.request(&navigation(&b, "/api/orders", "orders-read")));
    assert_rejected_and_cleared(g.resume(then, invalid_grant()));
    assert_eq!(g.live_sessions(), 0);
    assert_rejected_and_cleared(g.wake(&w).expect("woken"));
    let r = reply(g.wake(&nav).expect("woken"));
    assert_eq!(r.status, 302);
    assert_eq!(
        header(&r, "location"),
        Some("/auth/login?return_to=%2Fapi%2Forders")
    );
    assert_clears_session_cookie(&r);
}

#[test]
fn a_refused_refresh_of_a_navigation_sends_to_login() {
    let (mut g, b, _) = signed();
    let (_, then) = call(g.request(&navigation(&b, "/api/billing?m=5", "billing")));
    let r = reply(g.resume(then, invalid_grant()));
    assert_eq!(r.status, 302);
    assert_eq!(
        header(&r, "location"),
        Some("/auth/login?return_to=%2Fapi%2Fbilling%3Fm%3D5")
    );
    assert_clears_session_cookie(&r);
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn an_exchange_refused_by_the_provider_is_forbidden_and_keeps_the_session() {
    for error in [
        "invalid_target",
        "unauthorized_client",
        "invalid_scope",
        "invalid_request",
    ] {
        let (mut g, b, issued) = signed();
        let (_, then) = call(g.request(&profile(&b)));
        let body = json!({"error": error, "error_description": "no"});
        let r = reply(g.resume(then, answer_json(400, &body)));
        assert_error(&r, 403, "forbidden");
        assert_sets_no_session_cookie(&r);
        assert_eq!(g.live_sessions(), 1, "{error}");
        let (auth, _) = forward(g.request(&orders(&b)));
        assert_eq!(auth, Some(issued.access), "{error}");
    }
}

#[test]
fn an_exchange_refusal_releases_the_lock() {
    let (mut g, b, _) = signed();
    let (_, then) = call(g.request(&profile(&b)));
    reply(g.resume(then, answer(400, r#"{"error":"invalid_target"}"#)));
    let rec = record(&g);
    assert_eq!(field(&rec, "refreshing_until"), 0);
    assert_eq!(field(&rec, "refresh_failed_at"), 0);
    call(g.request(&billing(&b)));
}

#[test]
fn a_refused_refresh_before_an_exchange_ends_the_session() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (req, then) = call(g.request(&profile(&b)));
    assert_eq!(
        param(req.body.expose(), "grant_type").as_deref(),
        Some("refresh_token")
    );
    assert_rejected_and_cleared(g.resume(then, invalid_grant()));
    assert_eq!(g.live_sessions(), 0);
}

// =====================================================================================
// Token exchange
// =====================================================================================

#[test]
fn an_exchange_audience_is_obtained_by_exchanging_the_login_token() {
    let (mut g, b, issued) = signed();
    let (req, _) = call(g.request(&profile(&b)));
    assert_eq!(req.path, "/token");
    let body = req.body.expose();
    assert_eq!(param(body, "grant_type").as_deref(), Some(TOKEN_EXCHANGE));
    assert_eq!(param(body, "subject_token"), Some(issued.access));
    assert_eq!(
        param(body, "subject_token_type").as_deref(),
        Some(ACCESS_TOKEN_TYPE)
    );
    assert_eq!(params(body, "resource"), vec![PROFILE]);
    assert_eq!(param(body, "scope").as_deref(), Some("profile"));
    assert_eq!(param(body, "refresh_token"), None);
    let want = format!(
        "Basic {}",
        STANDARD.encode(format!("bffgate:{CLIENT_SECRET}"))
    );
    assert!(req
        .headers
        .iter()
        .any(|(n, v)| n == "authorization" && v.expose() == want));
}

#[test]
fn the_exchanged_token_is_forwarded_and_kept_for_its_audience() {
    let (mut g, b, issued) = signed();
    let (_, then) = call(g.request(&profile(&b)));
    let t = exchanged(&mut g, "profile");
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth.as_deref(), Some(t.access.as_str()));
    let before = calls_made(&g);
    g.advance(60);
    let (auth, _) = forward(g.request(&profile(&b)));
    assert_eq!(auth, Some(t.access));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(issued.access));
    assert_eq!(calls_made(&g), before);
}

#[test]
fn an_exchanged_token_lacking_the_route_scope_is_insufficient_scope() {
    let (mut g, b, _) = signed();
    let (_, then) = call(g.request(&profile(&b)));
    let t = exchanged(&mut g, "email");
    assert_error(
        &reply(g.resume(then, t.result())),
        403,
        "insufficient_scope",
    );
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn a_stale_login_token_is_refreshed_before_the_exchange() {
    let (mut g, b, issued) = signed();
    g.advance(g.token_ttl - SKEW);
    let (req, then) = call(g.request(&profile(&b)));
    let body = req.body.expose();
    assert_eq!(param(body, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(body, "refresh_token"), issued.refresh);
    assert_eq!(params(body, "resource"), vec![ORDERS]);
    assert_eq!(param(body, "subject_token"), None);
    let fresh = g.refresh_answer("orders:read orders:write", false);
    let (req, then) = call(g.resume(then, fresh.result()));
    let body = req.body.expose();
    assert_eq!(param(body, "grant_type").as_deref(), Some(TOKEN_EXCHANGE));
    assert_eq!(param(body, "subject_token"), Some(fresh.access.clone()));
    assert_eq!(params(body, "resource"), vec![PROFILE]);
    assert_eq!(param(body, "scope").as_deref(), Some("profile"));
    let t = exchanged(&mut g, "profile");
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(fresh.access));
}

#[test]
fn the_lock_is_held_through_the_refresh_and_the_exchange_then_released() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&profile(&b)));
    let w = waiting(g.request(&billing(&b)));
    let fresh = g.refresh_answer("orders:read orders:write", false);
    let (_, then) = call(g.resume(then, fresh.result()));
    assert!(field(&record(&g), "refreshing_until") > g.now);
    assert_eq!(g.wake(&w), None);
    waiting(g.request(&profile(&b)));
    let t = exchanged(&mut g, "profile");
    forward(g.resume(then, t.result()));
    assert_eq!(field(&record(&g), "refreshing_until"), 0);
    let (req, _) = call(g.wake(&w).expect("woken"));
    assert_eq!(params(req.body.expose(), "resource"), vec![BILLING]);
}

#[test]
fn the_lock_covers_the_whole_exchange_that_follows_a_slow_refresh() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&profile(&b)));
    g.advance(CALLOUT_TIMEOUT_S - 1);
    let fresh = g.refresh_answer("orders:read orders:write", false);
    call(g.resume(then, fresh.result()));
    // The exchange may take up to the callout timeout; until then nobody starts another one.
    g.advance(CALLOUT_TIMEOUT_S);
    waiting(g.request(&profile(&b)));
}

#[test]
fn during_the_exchange_a_waiter_for_the_login_audience_gets_the_refreshed_token() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&profile(&b)));
    let w = waiting(g.request(&orders(&b)));
    let fresh = g.refresh_answer("orders:read orders:write", false);
    call(g.resume(then, fresh.result()));
    let (auth, _) = forward(g.wake(&w).expect("woken"));
    assert_eq!(auth, Some(fresh.access));
}

#[test]
fn a_failed_exchange_after_a_refresh_keeps_the_refreshed_login_token() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&profile(&b)));
    let fresh = g.refresh_answer("orders:read orders:write", true);
    let (_, then) = call(g.resume(then, fresh.result()));
    assert_error(
        &reply(g.resume(then, CallResult::Failed)),
        503,
        "idp_unavailable",
    );
    let rec = record(&g);
    assert_eq!(field(&rec, "refreshing_until"), 0);
    assert_eq!(field(&rec, "refresh_failed_at"), g.now);
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(fresh.access));
    g.advance(g.token_ttl);
    let (req, _) = call(g.request(&orders(&b)));
    assert_eq!(param(req.body.expose(), "refresh_token"), fresh.refresh);
}

#[test]
fn an_expired_exchanged_token_is_exchanged_again() {
    let (mut g, b, _) = signed();
    get_profile(&mut g, &b);
    g.advance(g.token_ttl - SKEW - 5);
    let (auth, _) = forward(g.request(&orders(&b)));
    assert!(auth.is_some());
    g.advance(10);
    // Both the login and the profile token are in their renewal window now.
    let (req, then) = call(g.request(&profile(&b)));
    assert_eq!(
        param(req.body.expose(), "grant_type").as_deref(),
        Some("refresh_token")
    );
    let fresh = g.refresh_answer("orders:read orders:write", false);
    let (req, then) = call(g.resume(then, fresh.result()));
    assert_eq!(
        param(req.body.expose(), "subject_token"),
        Some(fresh.access)
    );
    let t = exchanged(&mut g, "profile");
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
}

// =====================================================================================
// Down-scoping of refresh grants
// =====================================================================================

#[test]
fn a_refresh_for_an_audience_with_scopes_asks_for_exactly_those() {
    let (mut g, b, issued) = signed();
    let (req, _) = call(g.request(&billing(&b)));
    let body = req.body.expose();
    assert_eq!(param(body, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(body, "refresh_token"), issued.refresh);
    assert_eq!(params(body, "resource"), vec![BILLING]);
    assert_eq!(param(body, "scope").as_deref(), Some("billing:read"));
}

#[test]
fn a_refresh_for_an_audience_without_scopes_asks_for_none() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (req, _) = call(g.request(&orders(&b)));
    assert_eq!(param(req.body.expose(), "scope"), None);
}

#[test]
fn several_audience_scopes_are_sent_space_separated() {
    let (mut g, b, _) = gate_with(|v| {
        v["audiences"][BILLING]["scopes"] = json!(["billing:read", "billing:export"]);
    });
    let (req, _) = call(g.request(&billing(&b)));
    assert_eq!(
        param(req.body.expose(), "scope").as_deref(),
        Some("billing:read billing:export")
    );
}

// =====================================================================================
// Rotation
// =====================================================================================

#[test]
fn a_rotated_refresh_token_is_stored_with_the_new_access_token_and_used_next() {
    let (mut g, b, issued) = signed();
    let (_, then) = call(g.request(&billing(&b)));
    let t = g.refresh_answer("billing:read", true);
    forward(g.resume(then, t.result()));
    let stored = record(&g).to_string();
    assert!(stored.contains(t.refresh.as_deref().unwrap()));
    assert!(stored.contains(&t.access));
    assert!(!stored.contains(issued.refresh.as_deref().unwrap()));
    g.advance(g.token_ttl);
    let (req, _) = call(g.request(&orders(&b)));
    assert_eq!(param(req.body.expose(), "refresh_token"), t.refresh);
}

#[test]
fn successive_rotations_always_use_the_latest_refresh_token() {
    let (mut g, b, _) = signed();
    let mut latest = None;
    for _ in 0..3 {
        g.advance(g.token_ttl);
        let (req, then) = call(g.request(&orders(&b)));
        if latest.is_some() {
            assert_eq!(param(req.body.expose(), "refresh_token"), latest);
        }
        let t = g.refresh_answer("orders:read orders:write", true);
        forward(g.resume(then, t.result()));
        latest = t.refresh;
    }
}

#[test]
fn a_rotation_during_the_refresh_before_an_exchange_is_kept() {
    let (mut g, b, _) = signed();
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&profile(&b)));
    let fresh = g.refresh_answer("orders:read orders:write", true);
    let (_, then) = call(g.resume(then, fresh.result()));
    let t = exchanged(&mut g, "profile");
    forward(g.resume(then, t.result()));
    let (req, _) = call(g.request(&billing(&b)));
    assert_eq!(param(req.body.expose(), "refresh_token"), fresh.refresh);
}

// =====================================================================================
// Session lifetime while renewing
// =====================================================================================

#[test]
fn a_refresh_answer_after_the_absolute_expiry_does_not_revive_the_session() {
    let (mut g, b, _) = gate_with(|v| v["session"] = json!({"absolute_timeout_s": 1800}));
    g.advance(1800 - 2);
    let (_, then) = call(g.request(&billing(&b)));
    g.advance(3);
    let t = g.refresh_answer("billing:read", true);
    assert_rejected_and_cleared(g.resume(then, t.result()));
    assert_eq!(g.live_sessions(), 0);
    assert_rejected_and_cleared(g.request(&orders(&b)));
}

#[test]
fn a_renewal_finishing_after_the_absolute_expiry_ends_the_session_for_its_waiters_too() {
    let (mut g, b, _) = gate_with(|v| v["session"] = json!({"absolute_timeout_s": 1800}));
    g.advance(1800 - 2);
    let (_, then) = call(g.request(&billing(&b)));
    let w = waiting(g.request(&billing(&b)));
    g.advance(3);
    let t = g.refresh_answer("billing:read", false);
    assert_rejected_and_cleared(g.resume(then, t.result()));
    assert_rejected_and_cleared(g.wake(&w).expect("woken"));
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn a_request_that_renews_a_token_counts_as_activity() {
    let (mut g, b, _) = signed();
    g.advance(IDLE - 10);
    let (_, then) = call(g.request(&orders(&b)));
    let t = g.refresh_answer("orders:read orders:write", false);
    forward(g.resume(then, t.result()));
    g.advance(20);
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(t.access));
}

// =====================================================================================
// Logout and revocation
// =====================================================================================

#[test]
fn logout_revokes_the_refresh_token_first_then_each_live_access_token() {
    let (mut g, b, issued) = signed();
    let bt = get_billing(&mut g, &b);
    let pt = get_profile(&mut g, &b);
    let (r, calls) = g.logout_done(&b);
    assert_eq!(r.status, 200);
    let revoked: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            assert_eq!(c.path, "/token/revocation");
            let body = c.body.expose();
            (
                param(body, "token").unwrap(),
                param(body, "token_type_hint").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revoked.first(),
        Some(&(issued.refresh.clone().unwrap(), "refresh_token".to_string()))
    );
    let mut access: Vec<String> = revoked[1..]
        .iter()
        .map(|(t, hint)| {
            assert_eq!(hint, "access_token");
            t.clone()
        })
        .collect();
    access.sort();
    let mut want = vec![issued.access, bt.access, pt.access];
    want.sort();
    assert_eq!(access, want);
}

#[test]
fn revocation_authenticates_the_client() {
    let (mut g, b, _) = signed();
    let (_, calls) = g.logout_done(&b);
    let want = format!(
        "Basic {}",
        STANDARD.encode(format!("bffgate:{CLIENT_SECRET}"))
    );
    assert!(!calls.is_empty());
    for c in &calls {
        assert!(c
            .headers
            .iter()
            .any(|(n, v)| n == "authorization" && v.expose() == want));
    }
}

#[test]
fn expired_access_tokens_are_not_revoked() {
    let (mut g, b, issued) = signed();
    g.advance(g.token_ttl);
    let (_, calls) = g.logout_done(&b);
    assert_eq!(calls.len(), 1);
    assert_eq!(param(calls[0].body.expose(), "token"), issued.refresh);
}

#[test]
fn each_revocation_call_uses_the_revocation_timeout() {
    let (mut g, b, _) = signed();
    get_billing(&mut g, &b);
    let (_, calls) = g.logout_done(&b);
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(c.timeout_ms, g.cfg.provider.revocation_timeout_ms);
        assert_eq!(c.timeout_ms, 1000);
    }
    let (mut g, b, _) = gate_with(|v| v["provider"]["revocation_timeout_ms"] = json!(250));
    let (_, calls) = g.logout_done(&b);
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|c| c.timeout_ms == 250), "{calls:?}");
}

#[test]
fn token_calls_keep_the_provider_timeout() {
    let (mut g, b, _) = gate_with(|v| v["provider"]["revocation_timeout_ms"] = json!(250));
    let (req, _) = call(g.request(&billing(&b)));
    assert_eq!(req.timeout_ms, 5000);
}

#[test]
fn the_session_is_gone_before_the_first_revocation_call() {
    let (mut g, b, _) = signed();
    let (_, then) = call(g.request(&logout(&b)));
    assert_eq!(g.live_sessions(), 0);
    assert_rejected_and_cleared(g.request(&orders(&b)));
    let r = answer_revocations(&mut g, then, answer(200, ""));
    assert_eq!(r.status, 200);
}

/// Answers the revocation `then` and every one after it with `result`; the final reply.
fn answer_revocations(g: &mut Gate, then: AfterCall, result: CallResult) -> Reply {
    let mut step = g.resume(then, result.clone());
    loop {
        match step {
            Step::Call { then, .. } => step = g.resume(*then, result.clone()),
            Step::Respond(r) => return r,
            other => panic!("unexpected step during logout: {other:?}"),
        }
    }
}

#[test]
fn a_failed_revocation_still_logs_out() {
    for failure in [CallResult::Failed, answer(503, "busy"), answer(400, "{}")] {
        let (mut g, b, _) = signed();
        get_billing(&mut g, &b);
        let mut step = g.request(&logout(&b));
        let mut n = 0;
        let r = loop {
            match step {
                Step::Call { then, .. } => {
                    n += 1;
                    step = g.resume(*then, failure.clone());
                }
                Step::Respond(r) => break r,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(n, 3, "every token is still tried");
        assert_eq!(r.status, 200);
        assert_eq!(json_body(&r)["logged_out"], true);
        assert_clears_session_cookie(&r);
        assert_eq!(g.live_sessions(), 0);
    }
}

#[test]
fn logout_without_a_session_makes_no_revocation_call() {
    let mut g = Gate::with_config(lifecycle_config_with(|_| {}));
    for b in [
        Browser::default(),
        Browser::default().with_session("k1.forged"),
    ] {
        let r = reply(g.request(&logout(&b)));
        assert_eq!(r.status, 200);
        assert_clears_session_cookie(&r);
    }
}

#[test]
fn logout_of_a_session_that_already_expired_makes_no_revocation_call() {
    let (mut g, b, _) = signed();
    g.advance(IDLE);
    let r = reply(g.request(&logout(&b)));
    assert_eq!(r.status, 200);
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn logout_without_a_revocation_endpoint_answers_at_once() {
    let (mut g, b, _) = gate_with(|v| {
        v["provider"]
            .as_object_mut()
            .unwrap()
            .remove("revocation_endpoint");
    });
    let r = reply(g.request(&logout(&b)));
    assert_eq!(r.status, 200);
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn end_session_url_has_no_id_token_hint_by_default() {
    let (mut g, b, _) = signed();
    let (r, _) = g.logout_done(&b);
    let url = json_body(&r)["end_session_url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, q) = url.split_once('?').unwrap();
    assert_eq!(param(q, "id_token_hint"), None);
    assert_eq!(param(q, "client_id").as_deref(), Some("bffgate"));
}

#[test]
fn end_session_url_carries_the_id_token_hint_when_configured() {
    let (mut g, b, issued) = gate_with(|v| v["client"]["logout_id_token_hint"] = json!(true));
    // Configured on purpose: the ID token is handed to the browser, so it is no leak here.
    let id = issued.id.unwrap();
    g.secrets.retain(|s| s != &id);
    let (r, _) = g.logout_done(&b);
    let url = json_body(&r)["end_session_url"]
        .as_str()
        .unwrap()
        .to_string();
    let (endpoint, q) = url.split_once('?').unwrap();
    assert_eq!(endpoint, "http://localhost:9000/session/end");
    assert_eq!(param(q, "id_token_hint"), Some(id));
    assert_eq!(
        param(q, "post_logout_redirect_uri").as_deref(),
        Some("https://localhost:8443/")
    );
}

#[test]
fn a_renewal_answer_arriving_during_logout_does_not_revive_the_session() {
    let (mut g, b, _) = signed();
    let (_, renewal) = call(g.request(&billing(&b)));
    let (_, revocation) = call(g.request(&logout(&b)));
    let t = g.refresh_answer("billing:read", true);
    assert_rejected_and_cleared(g.resume(renewal, t.result()));
    answer_revocations(&mut g, revocation, answer(200, ""));
    assert_eq!(g.live_sessions(), 0);
}

// =====================================================================================
// Configuration
// =====================================================================================

fn config_error(patch: impl FnOnce(&mut Value)) -> bffgate::config::ConfigError {
    let mut raw = lifecycle_raw();
    patch(&mut raw);
    compile(&raw).expect_err("the configuration is refused")
}

#[test]
fn the_lifecycle_configuration_compiles() {
    let cfg = lifecycle_config_with(|_| {});
    let scope_of = |aud: &str| {
        cfg.audiences
            .iter()
            .find(|a| a.id == aud)
            .map(|a| (a.acquire, a.scope.clone()))
            .unwrap()
    };
    use bffgate::config::Acquire;
    assert_eq!(scope_of(ORDERS), (Acquire::Login, None));
    assert_eq!(
        scope_of(PROFILE),
        (Acquire::Exchange, Some("profile".to_string()))
    );
    assert_eq!(
        scope_of(BILLING),
        (Acquire::Refresh, Some("billing:read".to_string()))
    );
    assert_eq!(cfg.provider.revocation_timeout_ms, 1000);
}

#[test]
fn an_audience_scope_that_is_not_a_scope_token_is_refused_by_place() {
    for (bad, i) in [
        (json!(["profile", "two words"]), 1),
        (json!([""]), 0),
        (json!(["profile", "billing", "caf\u{e9}"]), 2),
        (json!(["tab\there"]), 0),
        (json!(["ok", "nul\u{0}"]), 1),
    ] {
        let e = config_error(|v| v["audiences"][PROFILE]["scopes"] = bad.clone());
        assert_eq!(e.field, format!("audiences.{PROFILE}.scopes[{i}]"), "{bad}");
    }
}

#[test]
fn audience_scopes_must_be_a_list_of_strings() {
    for bad in [json!("profile"), json!([1]), json!({"a": "b"})] {
        let e = config_error(|v| v["audiences"][PROFILE]["scopes"] = bad.clone());
        assert!(
            e.field.starts_with(&format!("audiences.{PROFILE}.scopes")),
            "{bad}: {e}"
        );
    }
}

#[test]
fn an_unknown_acquire_mode_or_audience_field_is_refused() {
    let e = config_error(|v| v["audiences"][PROFILE]["acquire"] = json!("magic"));
    assert!(e.field.starts_with(&format!("audiences.{PROFILE}")), "{e}");
    let e = config_error(|v| v["audiences"][PROFILE]["scope"] = json!("profile"));
    assert!(e.field.starts_with(&format!("audiences.{PROFILE}")), "{e}");
}

#[test]
fn the_revocation_timeout_is_positive_and_within_the_callout_timeout() {
    for bad in [json!(0), json!(5001), json!(60_000)] {
        let e = config_error(|v| v["provider"]["revocation_timeout_ms"] = bad.clone());
        assert_eq!(e.field, "provider.revocation_timeout_ms", "{bad}");
    }
    let e = config_error(|v| {
        v["provider"]["timeout_ms"] = json!(500);
    });
    assert_eq!(
        e.field, "provider.revocation_timeout_ms",
        "the 1000 ms default exceeds 500"
    );
    for good in [1, 250, 5000] {
        let cfg = lifecycle_config_with(|v| v["provider"]["revocation_timeout_ms"] = json!(good));
        assert_eq!(cfg.provider.revocation_timeout_ms, good);
    }
}

// =====================================================================================
// Nothing leaks
// =====================================================================================

#[test]
fn a_whole_token_lifecycle_never_shows_a_secret() {
    // Every step, including every poll of a waiting request, is checked by `Gate::observe`; this
    // drives every kind of lifecycle secret through the engine and checks they were tracked.
    let (mut g, b, issued) = signed();
    let bt = get_billing(&mut g, &b);
    g.advance(g.token_ttl);
    let (xreq, then) = call(g.request(&profile(&b)));
    let w = waiting(g.request(&orders(&b)));
    g.wake(&w);
    let fresh = g.refresh_answer("orders:read orders:write", true);
    let (ex, then) = call(g.resume(then, fresh.result()));
    let subject = param(ex.body.expose(), "subject_token").unwrap();
    forward(g.wake(&w).expect("woken"));
    let t = exchanged(&mut g, "profile");
    forward(g.resume(then, t.result()));
    let (_, then) = call(g.request(&billing(&b)));
    reply(g.resume(then, answer(503, "busy")));
    let (_, calls) = g.logout_done(&b);

    let tracked = |s: &str| g.secrets.iter().any(|x| x == s);
    assert!(tracked(&issued.access));
    assert!(tracked(&bt.access));
    assert!(tracked(&subject));
    assert_eq!(subject, fresh.access);
    assert!(tracked(&t.access));
    assert!(tracked(fresh.refresh.as_deref().unwrap()));
    assert!(tracked(
        param(xreq.body.expose(), "refresh_token").unwrap().as_str()
    ));
    for c in &calls {
        assert!(tracked(&param(c.body.expose(), "token").unwrap()));
    }
    assert!(calls.len() >= 3);
}
