//! Fitting the providers people run: how an audience is asked for (`resource`, `audience` or
//! scopes), what is checked of the tokens that come back (their `aud`, their scopes), what an
//! omitted `scope` means, `scp`, the ID token's issuer named in the refusal, userinfo at login,
//! front-channel logout, what the audit says of revocations and of the provider's refusals.
//!
//! The harness is the one of `tests/flow.rs` (`common`): fake clock and random, in-memory
//! shared data, a leak checker on every step.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

fn gate(patch: impl FnOnce(&mut Value)) -> (Gate, Browser) {
    let mut g = Gate::with_config(config_with(K1, patch));
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    (g, b)
}

/// A token-endpoint answer with a JWT access token of these claims (unsigned: bffgate reads
/// access tokens, it does not verify them; the API does), and `scope` unless `None`.
fn jwt_answer(g: &mut Gate, claims: &Value, scope: Option<&str>) -> (String, CallResult) {
    let access = unsigned_jwt(claims);
    g.register(&access);
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 300});
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    (access, answer_json(200, &body))
}

fn audits(g: &Gate, event: &str) -> Vec<Value> {
    g.transcript
        .iter()
        .filter_map(|t| t.strip_prefix("audit "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

// =====================================================================================
// How an audience is asked for
// =====================================================================================

#[test]
fn resource_indicators_name_every_audience_at_login_and_one_per_token_request() {
    let (mut g, b) = gate(|_| {});
    let mut c = Browser::default();
    let login = g.start_login(&mut c, None);
    let q = login.location.split_once('?').unwrap().1;
    assert_eq!(params(q, "resource").len(), 2);
    assert!(params(q, "audience").is_empty());
    let (req, _) = call(g.request(&profile(&b)));
    assert_eq!(params(req.body.expose(), "resource"), vec![PROFILE]);
}

#[test]
fn the_audience_indicator_sends_audience_never_resource() {
    let (mut g, b) = gate(|v| {
        v["audiences"][ORDERS] = json!({"acquire": "login", "indicator": "audience"});
        v["audiences"][PROFILE] =
            json!({"acquire": "refresh", "indicator": "audience", "scopes": ["profile"]});
    });
    let mut c = Browser::default();
    let login = g.start_login(&mut c, None);
    let q = login.location.split_once('?').unwrap().1;
    assert_eq!(
        params(q, "audience"),
        vec![ORDERS],
        "only the login audience"
    );
    assert!(params(q, "resource").is_empty());
    let (req, then) = call(g.callback(&c, &login));
    assert_eq!(params(req.body.expose(), "audience"), vec![ORDERS]);
    assert!(params(req.body.expose(), "resource").is_empty());
    drop(then);
    let (req, _) = call(g.request(&profile(&b)));
    let body = req.body.expose();
    assert_eq!(params(body, "audience"), vec![PROFILE]);
    assert_eq!(params(body, "scope"), vec!["profile"]);
    assert!(params(body, "resource").is_empty());
}

#[test]
fn the_scope_indicator_asks_by_resource_scopes_only() {
    let (mut g, b) = gate(|v| {
        v["audiences"][ORDERS] = json!({"acquire": "login", "indicator": "scope",
            "scopes": ["https://orders.api.local/orders:read", "https://orders.api.local/orders:write"]});
        v["audiences"][PROFILE] = json!({"acquire": "refresh", "indicator": "scope",
            "scopes": ["https://profile.api.local/profile"]});
    });
    let mut c = Browser::default();
    let login = g.start_login(&mut c, None);
    let q = login.location.split_once('?').unwrap().1;
    let scope = param(q, "scope").unwrap();
    assert!(scope.contains("openid") && scope.contains("https://orders.api.local/orders:read"));
    assert!(
        !scope.contains("profile.api.local"),
        "one resource per request: {scope}"
    );
    assert!(params(q, "resource").is_empty() && params(q, "audience").is_empty());
    let (req, _) = call(g.request(&profile(&b)));
    let body = req.body.expose();
    assert_eq!(
        params(body, "scope"),
        vec!["https://profile.api.local/profile"]
    );
    assert!(params(body, "resource").is_empty() && params(body, "audience").is_empty());
}

#[test]
fn resource_scopes_are_kept_by_their_short_name_so_route_policies_match() {
    let (mut g, b) = gate(|v| {
        v["audiences"][ORDERS] = json!({"acquire": "login", "indicator": "scope",
            "scopes": ["https://orders.api.local/orders:read"]});
        v["audiences"][PROFILE] = json!({"acquire": "refresh", "indicator": "scope",
            "scopes": ["https://profile.api.local/profile"]});
    });
    let (_, then) = call(g.request(&profile(&b)));
    let claims = json!({"aud": PROFILE, "scp": "profile"});
    let (access, result) = jwt_answer(&mut g, &claims, Some("https://profile.api.local/profile"));
    let (auth, _) = forward(g.resume(then, result));
    assert_eq!(auth, Some(access));
}

#[test]
fn a_scope_indicator_needs_scopes_and_a_coherent_login_audience() {
    let secrets = |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        _ => None,
    };
    let mut v = demo_config();
    v["audiences"][PROFILE] = json!({"acquire": "refresh", "indicator": "scope"});
    let e = Config::from_json(v.to_string().as_bytes(), &secrets).unwrap_err();
    assert_eq!(e.field, format!("audiences.{PROFILE}.scopes"));
    let mut v = demo_config();
    v["audiences"][PROFILE] =
        json!({"acquire": "refresh", "indicator": "scope", "scopes": ["x/profile"]});
    let e = Config::from_json(v.to_string().as_bytes(), &secrets).unwrap_err();
    assert_eq!(e.field, format!("audiences.{PROFILE}.indicator"), "{e}");
}

// =====================================================================================
// What is checked of the tokens that come back
// =====================================================================================

#[test]
fn a_token_for_another_audience_is_refused_never_stored_nor_forwarded() {
    let (mut g, b) = gate(|_| {});
    let api_before = g.transcript.len();
    let (_, then) = call(g.request(&profile(&b)));
    // The provider ignored the resource and issued a token for the client (LemonLDAP does).
    let claims = json!({"aud": ["bffgate"], "scope": "profile"});
    let (_, result) = jwt_answer(&mut g, &claims, Some("profile"));
    let r = reply(g.resume(then, result));
    assert_error(&r, 403, "forbidden");
    assert!(json_body(&r)["error_description"]
        .as_str()
        .unwrap()
        .contains("another audience"));
    let refused = audits(&g, "token_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["reason"], "audience");
    assert_eq!(refused[0]["audience"], PROFILE);
    assert_eq!(refused[0]["detail"], "bffgate");
    assert!(g.transcript.len() > api_before);
    // Not kept: the next request asks again, and the session is still there.
    let (req, _) = call(g.request(&profile(&b)));
    assert_eq!(
        param(req.body.expose(), "grant_type").as_deref(),
        Some("refresh_token")
    );
    assert!(forward(g.request(&orders(&b))).0.is_some());
}

#[test]
fn a_token_audience_can_be_named_for_providers_that_use_another_identifier() {
    let (mut g, b) = gate(|v| {
        v["audiences"][PROFILE] = json!({"acquire": "refresh",
            "token_audience": "00000000-aaaa-bbbb-cccc-000000000001"});
    });
    let (_, then) = call(g.request(&profile(&b)));
    let claims = json!({"aud": "00000000-aaaa-bbbb-cccc-000000000001", "scope": "profile"});
    let (access, result) = jwt_answer(&mut g, &claims, None);
    assert_eq!(forward(g.resume(then, result)).0, Some(access));
}

#[test]
fn a_down_scoped_token_with_more_api_scopes_than_asked_for_is_refused() {
    let (mut g, b) = gate(|v| {
        v["audiences"][PROFILE] = json!({"acquire": "refresh", "scopes": ["profile"]});
    });
    let (_, then) = call(g.request(&profile(&b)));
    // Down-scoping ignored: the token carries an API scope that was not asked for.
    let claims = json!({"aud": PROFILE});
    let (_, result) = jwt_answer(&mut g, &claims, Some("openid profile orders:write"));
    let r = reply(g.resume(then, result));
    assert_error(&r, 403, "forbidden");
    let refused = audits(&g, "token_refused");
    assert_eq!(refused[0]["reason"], "scope");
    assert_eq!(refused[0]["detail"], "orders:write");
}

#[test]
fn a_login_token_for_another_audience_fails_the_login() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (_, then) = call(g.callback(&b, &login));
    let mut issued = g.login_answer(ALICE, &login.nonce);
    let access = unsigned_jwt(&json!({"aud": "https://elsewhere.example", "scope": "orders:read"}));
    g.register(&access);
    issued.body["access_token"] = json!(access);
    let r = reply(g.resume(then, issued.result()));
    assert_error(&r, 400, "login_failed");
    assert_sets_no_session_cookie(&r);
    assert_eq!(audits(&g, "token_refused")[0]["reason"], "audience");
}

#[test]
fn an_opaque_token_is_taken_as_is() {
    // Nothing can be read from it: the provider is trusted for it (documented).
    let (mut g, b) = gate(|_| {});
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    assert_eq!(forward(g.resume(then, t.result())).0, Some(t.access));
}

// =====================================================================================
// What an omitted scope means, and scp
// =====================================================================================

#[test]
fn an_omitted_scope_on_refresh_means_as_asked_for_or_as_granted_at_login() {
    // Down-scoped audience: as asked for.
    let (mut g, b) = gate(|v| {
        v["audiences"][PROFILE] = json!({"acquire": "refresh", "scopes": ["profile"]});
    });
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("unused", false);
    let mut body = t.body.clone();
    body.as_object_mut().unwrap().remove("scope");
    let (auth, _) = forward(g.resume(then, answer_json(200, &body)));
    assert_eq!(auth, Some(t.access));
    // Renewal of the login audience without a scope: as granted at login.
    g.advance(300);
    let (_, then) = call(g.request(&place_order(&b)));
    let t = g.refresh_answer("unused", true);
    let mut body = t.body.clone();
    body.as_object_mut().unwrap().remove("scope");
    let (auth, _) = forward(g.resume(then, answer_json(200, &body)));
    assert_eq!(auth, Some(t.access), "orders:write still granted");
}

#[test]
fn an_empty_scope_means_no_scopes() {
    let (mut g, b) = gate(|_| {});
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("", false);
    assert_error(
        &reply(g.resume(then, t.result())),
        403,
        "insufficient_scope",
    );
}

#[test]
fn scp_is_read_as_a_string_or_an_array() {
    for scp in [json!("profile"), json!(["profile", "other"])] {
        let (mut g, b) = gate(|_| {});
        let (_, then) = call(g.request(&profile(&b)));
        let claims = json!({"aud": PROFILE, "scp": scp});
        let (access, result) = jwt_answer(&mut g, &claims, None);
        assert_eq!(forward(g.resume(then, result)).0, Some(access), "{scp}");
    }
}

// =====================================================================================
// The ID token, userinfo
// =====================================================================================

#[test]
fn an_issuer_mismatch_names_both_issuers() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (_, then) = call(g.callback(&b, &login));
    let mut claims = g.id_claims(ALICE, &login.nonce);
    claims["iss"] = json!(format!("{ISSUER}/"));
    let issued = g.login_answer_with(ALICE, &claims);
    let r = reply(g.resume(then, issued.result()));
    assert_error(&r, 400, "login_failed");
    let d = json_body(&r)["error_description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains(&format!("\"{ISSUER}/\"")) && d.contains(&format!("\"{ISSUER}\"")),
        "{d}"
    );
}

fn userinfo_gate() -> Gate {
    Gate::with_config(config_with(K1, |v| {
        v["provider"]["userinfo"] = json!(true);
        v["provider"]["userinfo_endpoint"] = json!("http://localhost:9000/me");
    }))
}

#[test]
fn userinfo_claims_complete_the_id_tokens_under_the_same_sub() {
    let mut g = userinfo_gate();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (_, then) = call(g.callback(&b, &login));
    let mut claims = g.id_claims(ALICE, &login.nonce);
    claims.as_object_mut().unwrap().remove("name");
    let issued = g.login_answer_with(ALICE, &claims);
    let (req, then) = call(g.resume(then, issued.result()));
    assert_eq!((req.method, req.path.as_str()), ("GET", "/me"));
    assert_eq!(
        req.headers[0].1.expose(),
        format!("Bearer {}", issued.access)
    );
    let info = json!({"sub": ALICE.sub, "name": "Alice from userinfo", "preferred_username": "x"});
    let r = reply(g.resume(then, answer_json(200, &info)));
    assert_eq!(r.status, 302, "{r:?}");
    b.accept(&r);
    let u = json_body(&reply(g.request(&user_info(&b))));
    assert_eq!(u["claims"]["name"], "Alice from userinfo");
    assert_eq!(
        u["claims"]["preferred_username"], "alice",
        "the ID token's claims win"
    );
}

#[test]
fn userinfo_for_another_sub_or_no_answer_fails_the_login() {
    for (result, status, code) in [
        (
            answer_json(200, &json!({"sub": "someone-else"})),
            400,
            "login_failed",
        ),
        (CallResult::Failed, 503, "idp_unavailable"),
        (answer(200, "<html>"), 503, "idp_unavailable"),
    ] {
        let mut g = userinfo_gate();
        let mut b = Browser::default();
        let login = g.start_login(&mut b, None);
        let (_, then) = call(g.callback(&b, &login));
        let issued = g.login_answer(ALICE, &login.nonce);
        let (_, then) = call(g.resume(then, issued.result()));
        let r = reply(g.resume(then, result));
        assert_error(&r, status, code);
        assert_sets_no_session_cookie(&r);
    }
}

// =====================================================================================
// Front-channel logout
// =====================================================================================

fn fcl(g: &mut Gate, query: &str) -> Reply {
    reply(g.request(&get(&format!("/auth/frontchannel-logout?{query}"))))
}

#[test]
fn front_channel_logout_ends_the_provider_sessions_sessions() {
    let mut g = Gate::with_config(config_with(K1, |v| {
        v["provider"]["frontchannel_logout"] = json!(true);
    }));
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    let r = fcl(&mut g, &qs(&[("iss", ISSUER), ("sid", "idp-session-1")]));
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    assert_eq!(
        header(&r, "x-frame-options"),
        None,
        "the provider frames it"
    );
    assert_error(&reply(g.request(&orders(&b))), 401, "unauthenticated");
    let ended = audits(&g, "session_ended");
    assert!(ended.iter().any(|e| e["reason"] == "frontchannel"));
}

#[test]
fn front_channel_logout_needs_our_issuer_and_a_sid_and_is_off_by_default() {
    let mut g = Gate::with_config(config_with(K1, |v| {
        v["provider"]["frontchannel_logout"] = json!(true);
    }));
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    for q in [
        qs(&[("sid", "idp-session-1")]),
        qs(&[("iss", ISSUER)]),
        qs(&[("iss", "http://evil.example"), ("sid", "idp-session-1")]),
        qs(&[("iss", ISSUER), ("sid", "a"), ("sid", "idp-session-1")]),
    ] {
        assert_error(&fcl(&mut g, &q), 400, "invalid_request");
    }
    assert!(forward(g.request(&orders(&b))).0.is_some(), "nothing ended");
    // Off: no such endpoint.
    let (mut g, _) = gate(|_| {});
    let r = fcl(&mut g, &qs(&[("iss", ISSUER), ("sid", "idp-session-1")]));
    assert_error(&r, 404, "invalid_request");
}

#[test]
fn front_channel_logout_scans_the_store_at_most_once_a_second() {
    let mut g = Gate::with_config(config_with(K1, |v| {
        v["provider"]["frontchannel_logout"] = json!(true);
    }));
    let q = qs(&[("iss", ISSUER), ("sid", "nobody")]);
    assert_eq!(fcl(&mut g, &q).status, 200);
    let r = fcl(&mut g, &q);
    assert_eq!(r.status, 429);
    g.advance(1);
    assert_eq!(fcl(&mut g, &q).status, 200);
}

// =====================================================================================
// What the audit says
// =====================================================================================

#[test]
fn the_audit_says_what_became_of_each_revoked_token() {
    let (mut g, b) = gate(|v| {
        v["provider"]["revoke_access_tokens"] = json!(true);
    });
    let mut step = g.request(&logout(&b));
    let mut n = 0;
    while let Step::Call { then, .. } = step {
        let result = match n {
            0 => answer(200, ""),
            _ => answer(401, r#"{"error":"invalid_client"}"#),
        };
        n += 1;
        step = g.resume(*then, result);
    }
    assert_eq!(reply(step).status, 200);
    let r = &audits(&g, "revocation")[0]["results"];
    assert_eq!(r[0], json!({"token": "refresh_token", "result": "revoked"}));
    assert_eq!(
        r[1],
        json!({"token": "access_token", "result": "refused (401)"})
    );
}

#[test]
fn without_a_revocation_endpoint_the_audit_says_not_supported() {
    let (mut g, b) = gate(|v| {
        v["provider"]
            .as_object_mut()
            .unwrap()
            .remove("revocation_endpoint");
    });
    let r = reply(g.request(&logout(&b)));
    assert_eq!(r.status, 200);
    let results = &audits(&g, "revocation")[0]["results"];
    assert_eq!(results[0]["result"], "not supported");
}

#[test]
fn a_refused_exchange_puts_the_providers_error_code_in_the_audit() {
    let (mut g, b) = gate(|v| {
        v["audiences"][PROFILE] = json!({"acquire": "exchange"});
    });
    let (_, then) = call(g.request(&profile(&b)));
    let r = reply(g.resume(
        then,
        answer(
            400,
            r#"{"error":"unauthorized_client","error_description":"<script>x</script>"}"#,
        ),
    ));
    assert_error(&r, 403, "forbidden");
    let refused = audits(&g, "token_refused");
    assert_eq!(refused[0]["reason"], "provider_error");
    assert_eq!(refused[0]["detail"], "unauthorized_client");
    assert!(!g.transcript.iter().any(|t| t.contains("<script>")));
}
