//! Step-up authentication per route (RFC 9470): `acr_values` and `max_age_s` on a route, the
//! answers a session that does not satisfy them gets, the step-up login (parameters sent, ID
//! token checked, the session upgraded), and an upstream's own step-up challenge.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use bffgate::policy::StepUp;
use common::*;

/// The demo configuration plus `orders-export`: orders:read, an MFA sign-in at most 300 s old.
fn stepup_config() -> Config {
    config_with(K1, |raw| {
        raw["routes"]["orders-export"] = export_policy();
        raw["routes"]["orders-recent"] = json!({
            "access": "session", "audience": ORDERS, "max_age_s": 0
        });
    })
}

fn export(b: &Browser) -> Request {
    api(b, "GET", "/api/orders/export?format=csv", "orders-export")
}

/// Signed in as `user` with the ID token carrying `acr` (and `auth_time` now).
fn signed_in_with_acr(g: &mut Gate, b: &mut Browser, user: User, acr: &str) {
    let login = g.start_login(b, Some("/"));
    let (_, then) = call(g.callback(b, &login));
    let mut claims = g.id_claims(user, &login.nonce);
    claims["acr"] = json!(acr);
    let issued = g.login_answer_with(user, &claims);
    let r = reply(g.resume(then, issued.result()));
    assert_eq!(r.status, 302, "{r:?}");
    b.accept(&r);
}

/// A step-up login started from `login_url` and answered with these ID-token claims changes.
fn step_up(
    g: &mut Gate,
    b: &mut Browser,
    login_url: &str,
    user: User,
    patch: impl FnOnce(&mut Value),
) -> (Login, Reply) {
    let (_, q) = login_url.split_once('?').unwrap();
    let login = g.start_login_query(b, q);
    let (_, then) = call(g.callback(b, &login));
    let mut claims = g.id_claims(user, &login.nonce);
    patch(&mut claims);
    let issued = g.login_answer_with(user, &claims);
    let r = reply(g.resume(then, issued.result()));
    b.accept(&r);
    (login, r)
}

#[test]
fn an_api_call_without_the_sign_in_gets_401_insufficient_user_authentication() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    let r = reply(g.request(&export(&b)));
    assert_error(&r, 401, "insufficient_user_authentication");
    let body = json_body(&r);
    assert_eq!(body["acr_values"], json!(MFA));
    assert_eq!(body["max_age"], json!(300));
    let url = body["login_url"].as_str().unwrap();
    let (path, q) = url.split_once('?').unwrap();
    assert_eq!(path, "/auth/login");
    assert_eq!(
        param(q, "return_to").as_deref(),
        Some("/api/orders/export?format=csv")
    );
    assert_eq!(param(q, "acr_values").as_deref(), Some(MFA));
    assert_eq!(param(q, "max_age").as_deref(), Some("300"));
    let challenge = header(&r, "www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("acr_values=\"{MFA}\"")),
        "{challenge}"
    );
    assert!(challenge.contains("max_age=\"300\""), "{challenge}");
    // Other routes are unaffected.
    let (tok, _) = forward(g.request(&orders(&b)));
    assert!(tok.is_some());
}

#[test]
fn a_navigation_without_the_sign_in_goes_to_a_step_up_login() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    let r = reply(g.request(&navigation(&b, "/api/orders/export", "orders-export")));
    assert_eq!(r.status, 302);
    let loc = header(&r, "location").unwrap();
    let (path, q) = loc.split_once('?').unwrap();
    assert_eq!(path, "/auth/login");
    assert_eq!(param(q, "acr_values").as_deref(), Some(MFA));
    assert_eq!(param(q, "max_age").as_deref(), Some("300"));
    assert!(b.get(SESSION).is_some());
}

#[test]
fn the_step_up_login_asks_the_provider_for_the_level_and_max_age_zero_for_a_new_sign_in() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    let login = g.start_login_query(
        &mut b,
        &qs(&[("return_to", "/x"), ("acr_values", MFA), ("max_age", "300")]),
    );
    let (_, q) = login.location.split_once('?').unwrap();
    assert_eq!(param(q, "acr_values").as_deref(), Some(MFA));
    assert_eq!(param(q, "max_age").as_deref(), Some("300"));
    assert_eq!(
        params(q, "prompt"),
        vec!["consent"],
        "the configured prompt stays"
    );
    let login = g.start_login_query(&mut b, &qs(&[("max_age", "0")]));
    let (_, q) = login.location.split_once('?').unwrap();
    assert_eq!(param(q, "max_age").as_deref(), Some("0"));
    assert_eq!(
        params(q, "prompt"),
        vec!["login"],
        "max_age 0 asks for a sign-in now, replacing the configured prompt"
    );
    assert_eq!(param(q, "acr_values"), None);
}

#[test]
fn a_step_up_upgrades_the_session_and_keeps_the_other_audiences_tokens() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    // A token for the profile audience, obtained with the refresh token.
    let (_, then) = call(g.request(&profile(&b)));
    let issued = g.refresh_answer("profile", false);
    let (profile_token, _) = forward(g.resume(then, issued.result()));
    let before = b.get(SESSION).unwrap().to_string();
    g.advance(60);
    let r = reply(g.request(&export(&b)));
    let url = json_body(&r)["login_url"].as_str().unwrap().to_string();
    let (_, r) = step_up(&mut g, &mut b, &url, ALICE, |c| c["acr"] = json!(MFA));
    assert_eq!(r.status, 302, "{r:?}");
    assert_eq!(
        header(&r, "location"),
        Some("/api/orders/export?format=csv"),
        "back to where the step-up was asked for"
    );
    let after = b.get(SESSION).unwrap().to_string();
    assert_ne!(before, after, "a fresh session id (no fixation)");
    assert_eq!(g.live_sessions(), 1, "the old record is gone, not doubled");
    // The route is satisfied now, and the profile token is the one obtained before.
    let (tok, _) = forward(g.request(&export(&b)));
    assert!(tok.is_some());
    let (tok, _) = forward(g.request(&profile(&b)));
    assert_eq!(tok, profile_token, "tokens for other audiences stay");
    let u = json_body(&reply(g.request(&user_info(&b))));
    assert_eq!(u["sub"], json!(ALICE.sub));
    assert_eq!(u["acr"], json!(MFA));
    assert_eq!(u["auth_time"], json!(g.now));
    // The old cookie is dead.
    let mut old = b.clone();
    old.set(SESSION, &before);
    assert_error(&reply(g.request(&orders(&old))), 401, "unauthenticated");
}

#[test]
fn the_sign_in_gets_too_old_for_max_age() {
    let mut g = Gate::with_config(stepup_config());
    g.token_ttl = 3600;
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, MFA);
    assert!(forward(g.request(&export(&b))).0.is_some());
    // 300 s of max_age plus the default 60 s of clock skew.
    g.advance(360);
    assert!(forward(g.request(&export(&b))).0.is_some());
    g.advance(1);
    assert_error(
        &reply(g.request(&export(&b))),
        401,
        "insufficient_user_authentication",
    );
    // max_age_s 0 is never satisfied by an earlier sign-in beyond the skew.
    assert_error(
        &reply(g.request(&api(&b, "GET", "/api/orders/recent", "orders-recent"))),
        401,
        "insufficient_user_authentication",
    );
}

#[test]
fn a_provider_that_ignores_acr_values_does_not_satisfy_the_route_and_nothing_is_lost() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    let url = json_body(&reply(g.request(&export(&b))))["login_url"]
        .as_str()
        .unwrap()
        .to_string();
    let before = b.get(SESSION).unwrap().to_string();
    let (_, r) = step_up(&mut g, &mut b, &url, ALICE, |c| c["acr"] = json!(PWD));
    assert_error(&r, 400, "login_failed");
    assert!(
        json_body(&r)["error_description"]
            .as_str()
            .unwrap()
            .contains("acr"),
        "{r:?}"
    );
    assert_eq!(b.get(SESSION), Some(before.clone()), "the session stays");
    assert!(forward(g.request(&orders(&b))).0.is_some());
    assert_error(
        &reply(g.request(&export(&b))),
        401,
        "insufficient_user_authentication",
    );
    // No acr at all: the same.
    let (_, r) = step_up(&mut g, &mut b, &url, ALICE, |c| {
        c.as_object_mut().unwrap().remove("acr");
    });
    assert_error(&r, 400, "login_failed");
}

#[test]
fn auth_time_in_the_future_or_missing_under_max_age_refuses_the_login() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    let url = "/auth/login?return_to=%2F&acr_values=urn%3Abffgate%3Ademo%3Amfa&max_age=300";
    let now = g.now;
    let (_, r) = step_up(&mut g, &mut b, url, ALICE, |c| {
        c["acr"] = json!(MFA);
        c["auth_time"] = json!(now + 3600);
    });
    assert_error(&r, 400, "login_failed");
    let (_, r) = step_up(&mut g, &mut b, url, ALICE, |c| {
        c["acr"] = json!(MFA);
        c.as_object_mut().unwrap().remove("auth_time");
    });
    assert_error(&r, 400, "login_failed");
    let (_, r) = step_up(&mut g, &mut b, url, ALICE, |c| {
        c["acr"] = json!(MFA);
        c["auth_time"] = json!("yesterday");
    });
    assert_error(&r, 400, "login_failed");
    let (_, r) = step_up(&mut g, &mut b, url, ALICE, |c| {
        c["acr"] = json!(MFA);
        c["auth_time"] = json!(now - 1000);
    });
    assert_error(&r, 400, "login_failed");
    // The session from before is still there and still refused the route.
    assert!(forward(g.request(&orders(&b))).0.is_some());
}

#[test]
fn a_step_up_by_another_user_ends_the_old_session_and_starts_a_new_one() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    let (_, then) = call(g.request(&profile(&b)));
    let issued = g.refresh_answer("profile", false);
    let (alice_profile, _) = forward(g.resume(then, issued.result()));
    let url = json_body(&reply(g.request(&export(&b))))["login_url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, r) = step_up(&mut g, &mut b, &url, BOB, |c| c["acr"] = json!(MFA));
    assert_eq!(r.status, 302);
    assert_eq!(g.live_sessions(), 1);
    let u = json_body(&reply(g.request(&user_info(&b))));
    assert_eq!(u["sub"], json!(BOB.sub));
    // Bob does not inherit Alice's profile token: a new one is obtained.
    let step = g.request(&profile(&b));
    match step {
        Step::Call { .. } => {}
        Step::Forward { authorization, .. } => {
            assert_ne!(authorization.map(|a| a.expose().to_string()), alice_profile)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_step_up_parameters_at_login_are_refused_clearly() {
    let mut g = Gate::with_config(stepup_config());
    for q in [
        qs(&[("acr_values", "a\"b")]),
        qs(&[("acr_values", &"x".repeat(200))]),
        qs(&[("max_age", "abc")]),
        qs(&[("max_age", "-1")]),
        qs(&[("max_age", "99999999999")]),
        qs(&[("max_age", "1"), ("max_age", "2")]),
    ] {
        let r = reply(g.request(&get(&format!("/auth/login?{q}"))));
        assert_error(&r, 400, "invalid_request");
        assert!(set_cookies(&r).is_empty(), "{q}: no flow started");
    }
}

#[test]
fn step_up_settings_are_checked_at_load() {
    let secrets = |n: &str| match n {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        _ => None,
    };
    for (route, field) in [
        (
            json!({"access": "public", "max_age_s": 5}),
            "routes.r.access",
        ),
        (
            json!({"access": "session", "audience": ORDERS, "acr_values": ["a\"b"]}),
            "routes.r.acr_values[0]",
        ),
        (
            json!({"access": "session", "audience": ORDERS, "acr_values": [""]}),
            "routes.r.acr_values[0]",
        ),
        (
            json!({"access": "session", "audience": ORDERS, "max_age_s": 99_999_999u64}),
            "routes.r.max_age_s",
        ),
    ] {
        let mut raw = demo_config();
        raw["routes"]["r"] = route;
        let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
        assert!(e.to_string().contains(field), "{e} names {field}");
    }
    let mut raw = demo_config();
    raw["provider"]["clock_skew_s"] = json!(3600);
    let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
    assert!(e.to_string().contains("provider.clock_skew_s"), "{e}");
}

#[test]
fn an_upstream_challenge_is_read_strictly() {
    let got = StepUp::from_challenge([
        "Bearer error=\"insufficient_user_authentication\", error_description=\"x\", acr_values=\"urn:a urn:b\", max_age=\"5\"",
    ])
    .unwrap();
    assert_eq!(got.acr_values.as_deref(), Some("urn:a urn:b"));
    assert_eq!(got.max_age, Some(5));
    // Unquoted values, other schemes first, several headers.
    let got = StepUp::from_challenge([
        "Basic realm=\"x\"",
        "DPoP algs=\"ES256\", Bearer realm=\"api\", error=insufficient_user_authentication, max_age=0",
    ])
    .unwrap();
    assert_eq!(
        got,
        StepUp {
            acr_values: None,
            max_age: Some(0)
        }
    );
    // Garbage parameters are dropped, never echoed.
    let got = StepUp::from_challenge([
        "Bearer error=\"insufficient_user_authentication\", acr_values=\"<script>\\\"\", max_age=\"soon\"",
    ])
    .unwrap();
    assert_eq!(got, StepUp::default());
    // Not a step-up: other errors, other schemes, broken syntax.
    for v in [
        "Bearer error=\"invalid_token\"",
        "Basic error=\"insufficient_user_authentication\"",
        "Bearer error=\"insufficient_user_authentication",
        "",
        "=====",
    ] {
        assert_eq!(StepUp::from_challenge([v]), None, "{v}");
    }
}

#[test]
fn an_upstream_challenge_becomes_the_same_json_answer() {
    let cfg = stepup_config();
    let step = StepUp::from_challenge([
        "Bearer error=\"insufficient_user_authentication\", acr_values=\"urn:x\", max_age=\"60\"",
    ])
    .unwrap();
    let r = bffgate::engine::upstream_step_up_reply(&cfg, "/api/orders/1?a=b", &step);
    assert_error(&r, 401, "insufficient_user_authentication");
    let body = json_body(&r);
    assert_eq!(body["acr_values"], json!("urn:x"));
    assert_eq!(body["max_age"], json!(60));
    let url = body["login_url"].as_str().unwrap();
    let (_, q) = url.split_once('?').unwrap();
    assert_eq!(param(q, "return_to").as_deref(), Some("/api/orders/1?a=b"));
    // An off-site path cannot become the return target.
    let r = bffgate::engine::upstream_step_up_reply(&cfg, "//evil.example/x", &step);
    let url = json_body(&r)["login_url"].as_str().unwrap().to_string();
    let (_, q) = url.split_once('?').unwrap();
    assert_eq!(param(q, "return_to").as_deref(), Some("/"));
}

#[test]
fn a_plain_login_by_the_same_user_starts_afresh_and_carries_nothing() {
    let mut g = Gate::with_config(stepup_config());
    let mut b = Browser::default();
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    let (_, then) = call(g.request(&profile(&b)));
    let issued = g.refresh_answer("profile", false);
    let _ = forward(g.resume(then, issued.result()));
    // Signing in again without asking for a level: a new session, no token carried over.
    signed_in_with_acr(&mut g, &mut b, ALICE, PWD);
    assert_eq!(g.live_sessions(), 1);
    assert!(
        matches!(g.request(&profile(&b)), Step::Call { .. }),
        "the profile token is obtained again"
    );
}
