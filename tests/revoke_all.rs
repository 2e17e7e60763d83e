//! `POST /sessions/revoke-all` on the operator API: every session ends at once, and their
//! refresh tokens are queued for revocation at the provider (the shell sends them paced, at most
//! `admin_revoke_concurrency` per worker, each request built when it goes out).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use bffgate::testkit::ADMIN_TOKEN;
use common::*;

/// The operator instance's configuration (`admin: true`) over the same settings.
fn operator_config(patch: impl Fn(&mut Value)) -> Config {
    let mut raw = demo_config();
    patch(&mut raw);
    raw["admin"] = json!(true);
    let secrets = |name: &str| match name {
        "BFFGATE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
        other => secrets_with(K1)(other),
    };
    Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap()
}

fn op(method: &str, path: &str) -> Request {
    operator_request(method, path)
}

/// Runs `req` on the operator instance of the same store, then goes back to the public one.
fn as_operator(g: &mut Gate, cfg: &Config, req: &Request) -> Reply {
    let public = std::mem::replace(&mut g.cfg, cfg.clone());
    g.register(ADMIN_TOKEN);
    let r = reply(g.request(req));
    g.cfg = public;
    r
}

/// Three sessions: alice twice, bob once; their browsers and refresh tokens.
fn three_sessions(g: &mut Gate) -> (Vec<Browser>, Vec<String>) {
    let mut browsers = Vec::new();
    let mut refresh = Vec::new();
    for user in [ALICE, BOB, ALICE] {
        let mut b = Browser::default();
        let issued = g.sign_in(&mut b, user);
        refresh.push(issued.refresh.unwrap());
        browsers.push(b);
    }
    (browsers, refresh)
}

#[test]
fn every_session_ends_and_every_refresh_token_is_queued_for_revocation() {
    let mut g = Gate::new();
    let (browsers, refresh) = three_sessions(&mut g);
    for b in &browsers {
        forward(g.request(&orders(b)));
    }
    let r = as_operator(
        &mut g,
        &operator_config(|_| {}),
        &op("POST", "/sessions/revoke-all"),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let body = json_body(&r);
    assert_eq!(body["sessions_ended"], json!(3));
    assert_eq!(body["revocations_queued"], json!(3));
    assert_eq!(body["revocations_not_sent"], json!(0));
    assert_eq!(body["concurrency"], json!(4));
    let mut queued: Vec<String> = g.background.iter().map(|(t, _)| t.clone()).collect();
    queued.sort();
    let mut want = refresh.clone();
    want.sort();
    assert_eq!(queued, want, "exactly the sessions' refresh tokens");
    assert!(g.background.iter().all(|(_, h)| *h == "refresh_token"));
    // The sessions are over at once, for every browser.
    for b in &browsers {
        assert_rejected_and_cleared(g.request(&orders(b)));
    }
    assert_eq!(g.live_sessions(), 0);
    let ended = audit_events(&g, "session_ended");
    assert_eq!(
        ended
            .iter()
            .filter(|e| e["reason"] == json!("admin"))
            .count(),
        3
    );
    let summary = audit_events(&g, "revoke_all");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["sessions"], json!(3));
    assert_eq!(summary[0]["trigger"], json!("operator"));
    assert_eq!(summary[0]["revocations_queued"], json!(3));
}

#[test]
fn each_queued_token_becomes_an_authenticated_revocation_with_the_short_bound() {
    let mut g = Gate::new();
    let (_, refresh) = three_sessions(&mut g);
    let cfg = operator_config(|_| {});
    as_operator(&mut g, &cfg, &op("POST", "/sessions/revoke-all"));
    let mut e = Engine::new(&cfg, g.now, &mut g.rng, &mut g.store);
    let c = e
        .revocation_callout(&refresh[0], "refresh_token")
        .expect("a revocation request");
    assert_eq!(c.path, "/token/revocation");
    assert_eq!(c.method, "POST");
    assert_eq!(
        param(c.body.expose(), "token").as_deref(),
        Some(refresh[0].as_str())
    );
    assert_eq!(
        param(c.body.expose(), "token_type_hint").as_deref(),
        Some("refresh_token")
    );
    assert!(
        c.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.expose().starts_with("Basic ")),
        "the client authenticates"
    );
    assert_eq!(c.timeout_ms, cfg.provider.revocation_timeout_ms);
}

#[test]
fn without_a_revocation_endpoint_the_sessions_end_and_the_answer_says_so() {
    let no_endpoint = |raw: &mut Value| {
        raw["provider"]
            .as_object_mut()
            .unwrap()
            .remove("revocation_endpoint");
    };
    let mut g = Gate::new();
    let (browsers, _) = three_sessions(&mut g);
    let r = as_operator(
        &mut g,
        &operator_config(no_endpoint),
        &op("POST", "/sessions/revoke-all"),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let body = json_body(&r);
    assert_eq!(body["sessions_ended"], json!(3));
    assert_eq!(body["revocations_queued"], json!(0));
    assert_eq!(body["revocations_not_sent"], json!(3));
    assert_eq!(body["why_not_sent"], json!("not supported"));
    assert!(g.background.is_empty());
    assert_rejected_and_cleared(g.request(&orders(&browsers[0])));
}

#[test]
fn revoke_all_needs_the_csrf_header_the_token_and_a_loopback_host() {
    let mut g = Gate::new();
    let (browsers, _) = three_sessions(&mut g);
    let cfg = operator_config(|_| {});
    let mut no_csrf = op("POST", "/sessions/revoke-all");
    no_csrf.csrf = None;
    assert_error(&as_operator(&mut g, &cfg, &no_csrf), 403, "csrf");
    let mut no_token = op("POST", "/sessions/revoke-all");
    no_token.authorization = None;
    assert_error(
        &as_operator(&mut g, &cfg, &no_token),
        401,
        "unauthenticated",
    );
    let mut rebound = op("POST", "/sessions/revoke-all");
    rebound.authority = Some("evil.example".into());
    assert_error(&as_operator(&mut g, &cfg, &rebound), 403, "forbidden");
    let get = op("GET", "/sessions/revoke-all");
    assert_eq!(as_operator(&mut g, &cfg, &get).status, 404);
    // Nothing ended.
    assert_eq!(g.live_sessions(), 3);
    forward(g.request(&orders(&browsers[1])));
    // The public instance has no operator API at all.
    let r = reply(g.request(&op("POST", "/sessions/revoke-all")));
    assert_error(&r, 403, "forbidden");
    assert_eq!(g.live_sessions(), 3);
}

#[test]
fn the_concurrency_is_bounded_at_load() {
    for bad in [json!(0), json!(65), json!(-1), json!("4")] {
        let mut raw = demo_config();
        raw["admin_revoke_concurrency"] = bad.clone();
        let e = Config::from_json(raw.to_string().as_bytes(), &secrets_with(K1)).unwrap_err();
        assert!(
            e.to_string().contains("admin_revoke_concurrency"),
            "{bad}: {e}"
        );
    }
    let cfg = operator_config(|raw| raw["admin_revoke_concurrency"] = json!(16));
    assert_eq!(cfg.admin_revoke_concurrency, 16);
}

#[test]
fn a_key_change_revokes_the_same_way_from_the_shell() {
    // The shell calls this when the ring's first key changed (cookie.revoke_on_key_change).
    let mut g = Gate::new();
    let (browsers, refresh) = three_sessions(&mut g);
    let cfg = config_with(K0, |raw| {
        raw["cookie"]["revoke_on_key_change"] = json!(true)
    });
    assert!(cfg.cookie.revoke_on_key_change);
    let mut e = Engine::new(&cfg, g.now, &mut g.rng, &mut g.store);
    let counts = e.revoke_all_sessions("key_change");
    assert_eq!((counts.ended, counts.queued, counts.not_sent), (3, 3, 0));
    let mut queued: Vec<String> = e
        .background
        .iter()
        .map(|(t, _)| t.expose().to_string())
        .collect();
    queued.sort();
    let mut want = refresh;
    want.sort();
    assert_eq!(queued, want);
    assert!(e.notes.iter().any(
        |n| n.contains("\"event\":\"revoke_all\"") && n.contains("\"trigger\":\"key_change\"")
    ));
    drop(e);
    assert_rejected_and_cleared(g.request(&orders(&browsers[2])));
    assert!(!config(K1).cookie.revoke_on_key_change, "off unless asked");
}
