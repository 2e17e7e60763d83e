//! Specification of the engine (`bffgate::engine`), run natively: login, callback, sessions,
//! CSRF, policies, tokens per audience, logout. The harness (fake clock, randomness, store,
//! browser and provider, and the leak checker applied to every step) is in `common`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;
// =====================================================================================
// Login
// =====================================================================================

#[test]
fn login_redirects_to_the_provider_authorization_endpoint() {
    let mut g = Gate::new();
    let login = g.start_login(&mut Browser::default(), Some("/orders"));
    let (endpoint, q) = login.location.split_once('?').unwrap();
    assert_eq!(endpoint, "http://localhost:9000/auth");
    assert_eq!(param(q, "response_type").as_deref(), Some("code"));
    assert_eq!(param(q, "client_id").as_deref(), Some("bffgate"));
    assert_eq!(param(q, "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(
        param(q, "scope").as_deref(),
        Some("openid profile offline_access orders:read orders:write")
    );
    assert_eq!(param(q, "prompt").as_deref(), Some("consent"));
    assert!(login.reply.body.is_empty());
}

#[test]
fn login_sends_state_nonce_and_an_s256_pkce_challenge() {
    let mut g = Gate::new();
    let login = g.start_login(&mut Browser::default(), None);
    let (_, q) = login.location.split_once('?').unwrap();
    assert_eq!(param(q, "code_challenge_method").as_deref(), Some("S256"));
    assert!(login.state.len() >= 43, "state has at least 256 bits");
    assert!(login.nonce.len() >= 22, "nonce has at least 128 bits");
    assert_eq!(login.challenge.len(), 43, "a base64url SHA-256");
    assert!(login
        .challenge
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
}

#[test]
fn login_asks_for_every_configured_resource() {
    let mut g = Gate::new();
    let login = g.start_login(&mut Browser::default(), None);
    let (_, q) = login.location.split_once('?').unwrap();
    assert_eq!(params(q, "resource"), vec![ORDERS, PROFILE]);
}

#[test]
fn login_sets_a_host_prefixed_flow_cookie() {
    let mut g = Gate::new();
    let login = g.start_login(&mut Browser::default(), None);
    let cookies = set_cookies(&login.reply);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(login.flow_cookie.starts_with(FLOW_PREFIX));
    let (value, attrs) = parse_set_cookie(cookies[0]);
    assert!(
        value.len() >= 43,
        "the flow cookie carries a 256-bit secret"
    );
    for want in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        &format!("Max-Age={LOGIN_TIMEOUT}"),
    ] {
        assert!(attrs.iter().any(|a| a == want), "{want} in {attrs:?}");
    }
    assert!(!attrs.iter().any(|a| a.starts_with("Domain")), "{attrs:?}");
}

#[test]
fn login_replies_are_not_cacheable() {
    let mut g = Gate::new();
    let login = g.start_login(&mut Browser::default(), None);
    assert_eq!(header(&login.reply, "cache-control"), Some("no-store"));
}

#[test]
fn every_login_gets_its_own_state_nonce_verifier_and_flow_cookie() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let one = g.start_login(&mut b, None);
    let two = g.start_login(&mut b, None);
    assert_ne!(one.state, two.state);
    assert_ne!(one.nonce, two.nonce);
    assert_ne!(one.challenge, two.challenge);
    assert_ne!(one.flow_cookie, two.flow_cookie);
    assert_eq!(b.flow_cookies().len(), 2);
}

#[test]
fn flow_cookie_stays_lax_when_the_session_cookie_is_strict() {
    let cfg = config_with(K1, |v| v["cookie"] = json!({"same_site": "Strict"}));
    let mut g = Gate::with_config(cfg);
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (_, attrs) = parse_set_cookie(set_cookies(&login.reply)[0]);
    assert!(attrs.iter().any(|a| a == "SameSite=Lax"), "{attrs:?}");
    let r = g.finish(&mut b, &login, ALICE);
    let (_, attrs) = parse_set_cookie(set_cookie_for(&r, SESSION).unwrap());
    assert!(attrs.iter().any(|a| a == "SameSite=Strict"), "{attrs:?}");
}

#[test]
fn login_by_post_is_not_allowed() {
    let mut g = Gate::new();
    let mut req = get("/auth/login");
    req.method = "POST".into();
    let r = reply(g.request(&req));
    assert_error(&r, 405, "invalid_request");
    assert_eq!(header(&r, "allow"), Some("GET, HEAD"));
}

/// Runs a whole login that asked for `query` and returns where the browser is sent at the end.
fn final_location(query: &str) -> String {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login_query(&mut b, query);
    let r = g.finish(&mut b, &login, ALICE);
    assert_eq!(r.status, 302, "{r:?}");
    header(&r, "location").unwrap().to_string()
}

#[test]
fn login_returns_to_a_local_path() {
    assert_eq!(
        final_location(&qs(&[("return_to", "/orders?id=5&x=y")])),
        "/orders?id=5&x=y"
    );
}

#[test]
fn login_without_return_to_returns_to_the_root() {
    assert_eq!(final_location(""), "/");
}

#[test]
fn an_off_site_return_to_is_replaced_by_the_root() {
    for target in [
        "https://evil.example/x",
        "//evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        " /orders",
        "javascript:alert(1)",
        "evil.example",
    ] {
        assert_eq!(
            final_location(&qs(&[("return_to", target)])),
            "/",
            "{target:?}"
        );
    }
}

#[test]
fn a_repeated_return_to_is_replaced_by_the_root() {
    let q = qs(&[("return_to", "/orders"), ("return_to", "//evil.example")]);
    assert_eq!(final_location(&q), "/");
}

// =====================================================================================
// Happy path
// =====================================================================================

#[test]
fn callback_exchanges_the_code_at_the_token_endpoint_with_the_pkce_verifier() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, Some("/"));
    let code = g.mint("code");
    let (req, _) = call(g.callback_with(&b, &qs(&[("code", &code), ("state", &login.state)])));
    assert_eq!(req.path, "/token");
    let body = req.body.expose();
    assert_eq!(
        param(body, "grant_type").as_deref(),
        Some("authorization_code")
    );
    assert_eq!(param(body, "code"), Some(code));
    assert_eq!(param(body, "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(params(body, "resource"), vec![ORDERS]);
    let verifier = param(body, "code_verifier").expect("a code_verifier");
    assert!(verifier.len() >= 43, "RFC 7636: 43..128 characters");
    assert_eq!(s256(&verifier), login.challenge);
}

#[test]
fn code_exchange_authenticates_the_client_with_http_basic() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, Some("/"));
    let (req, _) = call(g.callback(&b, &login));
    let auth: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.expose())
        .collect();
    let want = format!(
        "Basic {}",
        STANDARD.encode(format!("bffgate:{CLIENT_SECRET}"))
    );
    assert_eq!(auth, vec![want.as_str()]);
    assert_eq!(param(req.body.expose(), "client_secret"), None);
}

#[test]
fn successful_login_redirects_to_return_to_with_a_session_cookie() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, Some("/orders"));
    let r = g.finish(&mut b, &login, ALICE);
    assert_eq!(r.status, 302);
    assert_eq!(header(&r, "location"), Some("/orders"));
    let sc = set_cookie_for(&r, SESSION).expect("a session cookie");
    assert!(sc.starts_with("__Host-bff-session="), "{sc}");
    let (value, attrs) = parse_set_cookie(sc);
    assert!(!value.is_empty());
    for want in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(attrs.iter().any(|a| a == want), "{want} in {sc}");
    }
    assert!(!attrs.iter().any(|a| a.starts_with("Domain")), "{sc}");
}

#[test]
fn the_session_cookie_lives_as_long_as_the_absolute_session_lifetime() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let r = g.finish(&mut b, &login, ALICE);
    let (_, attrs) = parse_set_cookie(set_cookie_for(&r, SESSION).unwrap());
    assert!(attrs.contains(&format!("Max-Age={ABSOLUTE}")), "{attrs:?}");
}

#[test]
fn successful_login_clears_the_flow_cookie() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let r = g.finish(&mut b, &login, ALICE);
    let sc = set_cookie_for(&r, &login.flow_cookie).expect("the flow cookie is cleared");
    let (value, attrs) = parse_set_cookie(sc);
    assert_eq!(value, "");
    assert!(attrs.iter().any(|a| a == "Max-Age=0"), "{sc}");
    assert!(b.flow_cookies().is_empty());
}

#[test]
fn successful_login_stores_exactly_one_session_and_no_pending_login() {
    let (g, _, _) = signed_in(ALICE);
    assert_eq!(g.live_sessions(), 1);
    assert_eq!(
        g.store.count(g.now),
        (1, 0),
        "one live session, no pending login"
    );
}

#[test]
fn the_session_cookie_is_swapped_for_the_access_token() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn bffgate_cookies_are_stripped_and_other_cookies_kept() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = orders(&b);
    req.cookie = Some(format!("theme=dark; {SESSION}={}; lang=en", b.session()));
    let (auth, cookie) = forward(g.request(&req));
    assert!(auth.is_some());
    assert_eq!(cookie, CookieEdit::Set("theme=dark; lang=en".into()));
}

#[test]
fn a_request_carrying_only_bffgate_cookies_forwards_no_cookie_header() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, cookie) = forward(g.request(&orders(&b)));
    assert_eq!(cookie, CookieEdit::Remove);
}

#[test]
fn leftover_flow_cookies_and_differently_cased_copies_are_not_forwarded() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = orders(&b);
    req.cookie = Some(format!(
        "a=1; {FLOW_PREFIX}0123456789ab=x; {SESSION}={}; __HOST-BFF-SESSION=y; b=2",
        b.session()
    ));
    let (_, cookie) = forward(g.request(&req));
    assert_eq!(cookie, CookieEdit::Set("a=1; b=2".into()));
}

#[test]
fn user_endpoint_describes_the_session_without_any_token() {
    let (mut g, b, issued) = signed_in(ALICE);
    let r = reply(g.request(&user_info(&b)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let u = json_body(&r);
    assert_eq!(u["sub"], ALICE.sub);
    assert_eq!(u["claims"]["preferred_username"], "alice");
    assert_eq!(u["claims"]["name"], "Alice");
    assert_eq!(u["claims"]["email"], "alice@example.test");
    assert_eq!(u["expires_at"], T0 + IDLE);
    for t in [
        issued.access.as_str(),
        issued.refresh.as_deref().unwrap(),
        issued.id.as_deref().unwrap(),
    ] {
        assert!(!r.body.contains(t));
    }
}

#[test]
fn user_endpoint_shows_only_display_and_policy_claims() {
    let (mut g, b, _) = signed_in(ALICE);
    let u = json_body(&reply(g.request(&user_info(&b))));
    let claims = u["claims"].as_object().unwrap();
    for hidden in [
        "sid",
        "nonce",
        "iss",
        "aud",
        "azp",
        "exp",
        "iat",
        "auth_time",
    ] {
        assert!(!claims.contains_key(hidden), "{hidden} in {claims:?}");
    }
}

#[test]
fn user_endpoint_expiry_moves_with_activity() {
    let (mut g, b, _) = signed_in(ALICE);
    g.advance(100);
    let u = json_body(&reply(g.request(&user_info(&b))));
    assert_eq!(u["expires_at"], T0 + 100 + IDLE);
    g.advance(10);
    let again = json_body(&reply(g.request(&user_info(&b))));
    assert_eq!(
        again["expires_at"],
        T0 + 100 + IDLE,
        "last use is recorded at most every minute"
    );
}

#[test]
fn user_endpoint_without_a_session_is_401() {
    let mut g = Gate::new();
    let r = reply(g.request(&user_info(&Browser::default())));
    assert_error(&r, 401, "unauthenticated");
    assert_sets_no_session_cookie(&r);
}

#[test]
fn user_endpoint_with_a_bad_cookie_is_401_and_clears_it() {
    let mut g = Gate::new();
    let b = Browser::default().with_session("k1.garbage.garbage");
    assert_rejected_and_cleared(g.request(&user_info(&b)));
}

// =====================================================================================
// Callback failures
// =====================================================================================

/// A refused login: the contract error, no session cookie, and no session stored.
fn assert_login_refused(g: &Gate, r: &Reply, status: u16, code: &str) {
    assert_error(r, status, code);
    assert_sets_no_session_cookie(r);
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn callback_without_state_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    g.start_login(&mut b, None);
    let code = g.mint("code");
    let r = reply(g.callback_with(&b, &qs(&[("code", &code)])));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn callback_with_an_empty_or_oversized_state_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    g.start_login(&mut b, None);
    let long = "s".repeat(300);
    for state in ["", long.as_str()] {
        let code = g.mint("code");
        let r = reply(g.callback_with(&b, &qs(&[("code", &code), ("state", state)])));
        assert_login_refused(&g, &r, 400, "login_failed");
    }
}

#[test]
fn callback_with_an_undecodable_state_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    g.start_login(&mut b, None);
    let code = g.mint("code");
    let r = reply(g.callback_with(&b, &format!("code={code}&state=%FF%FE%00%C3")));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn callback_with_an_unknown_state_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    g.start_login(&mut b, None);
    let code = g.mint("code");
    let state = "x".repeat(43);
    let r = reply(g.callback_with(&b, &qs(&[("code", &code), ("state", &state)])));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_state_is_accepted_only_once() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    call(g.callback(&b, &login));
    let r = reply(g.callback(&b, &login));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_completed_login_cannot_be_replayed() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let before = b.clone();
    g.finish(&mut b, &login, ALICE);
    let r = reply(g.callback(&before, &login));
    assert_error(&r, 400, "login_failed");
    assert_sets_no_session_cookie(&r);
    assert_eq!(
        g.live_sessions(),
        1,
        "only the first callback made a session"
    );
}

#[test]
fn callback_in_a_browser_without_the_flow_cookie_is_refused() {
    let mut g = Gate::new();
    let login = g.start_login(&mut Browser::default(), None);
    let other = Browser::default();
    let r = reply(g.callback(&other, &login));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_callback_from_another_browser_does_not_spoil_the_real_login() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let r = reply(g.callback(&Browser::default(), &login));
    assert_error(&r, 400, "login_failed");
    let r = g.finish(&mut b, &login, ALICE);
    assert_eq!(r.status, 302, "{r:?}");
    assert!(b.get(SESSION).is_some());
}

#[test]
fn callback_with_a_wrong_flow_cookie_value_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let mut forged = b.clone();
    forged.set(&login.flow_cookie, &"A".repeat(43));
    let r = reply(g.callback(&forged, &login));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn callback_with_another_logins_flow_cookie_is_refused() {
    let mut g = Gate::new();
    let mut mine = Browser::default();
    let mut theirs = Browser::default();
    let login = g.start_login(&mut mine, None);
    let other = g.start_login(&mut theirs, None);
    // The attacker's flow cookie value, planted under the name of the victim's login.
    let mut planted = mine.clone();
    planted.set(&login.flow_cookie, &theirs.get(&other.flow_cookie).unwrap());
    let r = reply(g.callback(&planted, &login));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn callback_after_the_login_timeout_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    g.advance(LOGIN_TIMEOUT + 1);
    let r = reply(g.callback(&b, &login));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn callback_just_within_the_login_timeout_is_accepted() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    g.advance(LOGIN_TIMEOUT - 1);
    let r = g.finish(&mut b, &login, ALICE);
    assert_eq!(r.status, 302, "{r:?}");
}

#[test]
fn an_error_from_the_provider_fails_the_login_without_an_exchange() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let r = reply(g.callback_with(
        &b,
        &qs(&[("error", "access_denied"), ("state", &login.state)]),
    ));
    assert_login_refused(&g, &r, 400, "login_failed");
    assert!(json_body(&r)["error_description"]
        .as_str()
        .unwrap()
        .contains("access_denied"));
    b.accept(&r);
    assert!(b.flow_cookies().is_empty(), "the flow cookie is cleared");
}

#[test]
fn the_provider_error_is_not_reflected_verbatim() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let r = reply(g.callback_with(
        &b,
        &qs(&[
            (
                "error",
                "access_denied<script>alert(1)</script>\r\nX-Evil: 1",
            ),
            ("state", &login.state),
        ]),
    ));
    assert_login_refused(&g, &r, 400, "login_failed");
    let d = json_body(&r)["error_description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !d.contains('<') && !d.contains('\n') && !d.contains("X-Evil"),
        "{d}"
    );
}

#[test]
fn callback_without_code_is_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let r = reply(g.callback_with(&b, &qs(&[("state", &login.state)])));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn repeated_state_parameters_are_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let code = g.mint("code");
    let q = qs(&[
        ("code", &code),
        ("state", &login.state),
        ("state", &login.state),
    ]);
    let r = reply(g.callback_with(&b, &q));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn repeated_code_parameters_are_refused() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (c1, c2) = (g.mint("code"), g.mint("code"));
    let q = qs(&[("code", &c1), ("code", &c2), ("state", &login.state)]);
    let r = reply(g.callback_with(&b, &q));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn callback_by_post_is_not_allowed() {
    let mut g = Gate::new();
    let mut req = get("/auth/callback?code=c&state=s");
    req.method = "POST".into();
    assert_error(&reply(g.request(&req)), 405, "invalid_request");
}

/// A login whose code exchange gets `answer`; returns the final reply.
fn exchange_answered(answer: impl FnOnce(&mut Gate, &Login) -> CallResult) -> (Gate, Reply) {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, Some("/"));
    let (_, then) = call(g.callback(&b, &login));
    let result = answer(&mut g, &login);
    let r = reply(g.resume(then, result));
    b.accept(&r);
    assert!(b.flow_cookies().is_empty(), "the flow cookie is cleared");
    (g, r)
}

/// A login whose code exchange returns an ID token with patched claims.
fn id_token_answered(patch: impl FnOnce(&mut Value)) -> (Gate, Reply) {
    exchange_answered(|g, login| {
        let mut claims = g.id_claims(ALICE, &login.nonce);
        patch(&mut claims);
        g.login_answer_with(ALICE, &claims).result()
    })
}

#[test]
fn a_code_refused_by_the_provider_fails_the_login() {
    let (g, r) = exchange_answered(|_, _| {
        answer(
            400,
            r#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
        )
    });
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_provider_server_error_at_code_exchange_is_idp_unavailable() {
    let (g, r) = exchange_answered(|_, _| answer(500, "internal error"));
    assert_login_refused(&g, &r, 503, "idp_unavailable");
}

#[test]
fn no_answer_to_the_code_exchange_is_idp_unavailable() {
    let (g, r) = exchange_answered(|_, _| CallResult::Failed);
    assert_login_refused(&g, &r, 503, "idp_unavailable");
}

#[test]
fn a_non_json_token_answer_fails_the_login() {
    let (g, r) = exchange_answered(|_, _| answer(200, "<html>hello</html>"));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_token_answer_without_access_token_fails_the_login() {
    let (g, r) = exchange_answered(|g, login| {
        let mut issued = g.login_answer(ALICE, &login.nonce);
        issued.body.as_object_mut().unwrap().remove("access_token");
        issued.result()
    });
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_token_answer_without_id_token_fails_the_login() {
    let (g, r) = exchange_answered(|g, login| {
        let mut issued = g.login_answer(ALICE, &login.nonce);
        issued.body.as_object_mut().unwrap().remove("id_token");
        issued.result()
    });
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn an_id_token_with_another_nonce_fails_the_login() {
    let (g, r) = id_token_answered(|c| c["nonce"] = json!("some-other-nonce"));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn an_id_token_without_nonce_fails_the_login() {
    let (g, r) = id_token_answered(|c| {
        c.as_object_mut().unwrap().remove("nonce");
    });
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn an_id_token_from_another_issuer_fails_the_login() {
    let (g, r) = id_token_answered(|c| c["iss"] = json!("http://evil.example"));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn an_id_token_for_another_client_fails_the_login() {
    let (g, r) = id_token_answered(|c| c["aud"] = json!(["some-other-client"]));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn an_expired_id_token_fails_the_login() {
    let (g, r) = id_token_answered(|c| c["exp"] = json!(T0 - 3600));
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn an_id_token_without_subject_fails_the_login() {
    let (g, r) = id_token_answered(|c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    assert_login_refused(&g, &r, 400, "login_failed");
}

#[test]
fn a_garbled_id_token_fails_the_login() {
    let (g, r) = exchange_answered(|g, login| {
        let mut issued = g.login_answer(ALICE, &login.nonce);
        issued.body["id_token"] = json!("not.a-jwt");
        issued.result()
    });
    assert_login_refused(&g, &r, 400, "login_failed");
}

// =====================================================================================
// Parallel tabs and session fixation
// =====================================================================================

fn two_tabs_finishing_in(order: [usize; 2]) {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let tabs = [
        g.start_login(&mut b, Some("/one")),
        g.start_login(&mut b, Some("/two")),
    ];
    let targets = ["/one", "/two"];
    assert_eq!(b.flow_cookies().len(), 2);
    for i in order {
        let r = g.finish(&mut b, &tabs[i], ALICE);
        assert_eq!(r.status, 302, "tab {i}: {r:?}");
        assert_eq!(header(&r, "location"), Some(targets[i]));
        assert!(set_cookie_for(&r, SESSION).is_some(), "tab {i}");
    }
    assert!(b.flow_cookies().is_empty());
    let (auth, _) = forward(g.request(&orders(&b)));
    assert!(auth.is_some());
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn two_logins_started_in_one_browser_both_finish_in_start_order() {
    two_tabs_finishing_in([0, 1]);
}

#[test]
fn two_logins_started_in_one_browser_both_finish_in_reverse_order() {
    two_tabs_finishing_in([1, 0]);
}

#[test]
fn login_replaces_the_session_the_browser_already_had() {
    let (mut g, mut b, _) = signed_in(ALICE);
    let old = b.clone();
    let login = g.start_login(&mut b, None);
    let r = g.finish(&mut b, &login, ALICE);
    assert_eq!(r.status, 302);
    assert_ne!(b.session(), old.session(), "a fresh session id");
    assert_rejected_and_cleared(g.request(&orders(&old)));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert!(auth.is_some());
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn a_planted_session_of_another_user_is_dropped_at_login() {
    // The attacker signs in as bob and plants bob's cookie in alice's browser.
    let mut g = Gate::new();
    let mut attacker = Browser::default();
    g.sign_in(&mut attacker, BOB);
    let mut victim = Browser::default().with_session(&attacker.session());
    let login = g.start_login(&mut victim, None);
    g.finish(&mut victim, &login, ALICE);
    let u = json_body(&reply(g.request(&user_info(&victim))));
    assert_eq!(u["sub"], ALICE.sub);
    assert_rejected_and_cleared(g.request(&orders(&attacker)));
}

// =====================================================================================
// Protected routes: unauthenticated requests
// =====================================================================================

#[test]
fn a_fetch_without_a_session_gets_401_json() {
    let mut g = Gate::new();
    let r = reply(g.request(&orders(&Browser::default())));
    assert_error(&r, 401, "unauthenticated");
    assert!(header(&r, "www-authenticate").is_some());
    assert!(set_cookies(&r).is_empty());
}

#[test]
fn a_json_request_without_fetch_metadata_gets_401() {
    let mut g = Gate::new();
    let mut req = orders(&Browser::default());
    req.sec_fetch_mode = None;
    req.sec_fetch_site = None;
    req.accept = Some("application/json".into());
    assert_error(&reply(g.request(&req)), 401, "unauthenticated");
}

#[test]
fn a_navigation_without_a_session_is_sent_to_login_with_its_path() {
    let mut g = Gate::new();
    let req = navigation(
        &Browser::default(),
        "/api/orders?status=open",
        "orders-read",
    );
    let r = reply(g.request(&req));
    assert_eq!(r.status, 302);
    let loc = header(&r, "location").unwrap();
    let (path, q) = loc.split_once('?').unwrap();
    assert_eq!(path, "/auth/login");
    assert_eq!(
        param(q, "return_to").as_deref(),
        Some("/api/orders?status=open")
    );
}

#[test]
fn an_html_request_without_fetch_metadata_is_sent_to_login() {
    let mut g = Gate::new();
    let mut req = navigation(&Browser::default(), "/api/orders", "orders-read");
    req.sec_fetch_mode = None;
    req.sec_fetch_site = None;
    let r = reply(g.request(&req));
    assert_eq!(r.status, 302);
    assert!(header(&r, "location")
        .unwrap()
        .starts_with("/auth/login?return_to="));
}

#[test]
fn fetch_metadata_wins_over_accept() {
    let mut g = Gate::new();
    let mut req = orders(&Browser::default());
    req.accept = Some("text/html".into());
    assert_error(&reply(g.request(&req)), 401, "unauthenticated");
}

#[test]
fn an_unsafe_navigation_without_a_session_gets_401_not_a_redirect() {
    let mut g = Gate::new();
    let mut req = place_order(&Browser::default());
    req.sec_fetch_mode = Some("navigate".into());
    req.accept = Some("text/html".into());
    assert_error(&reply(g.request(&req)), 401, "unauthenticated");
}

// =====================================================================================
// Protected routes: bad cookies
// =====================================================================================

fn sealed_parts(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('.').collect();
    assert_eq!(parts.len(), 3, "{v}");
    (parts[0].into(), parts[1].into(), parts[2].into())
}

#[test]
fn a_cookie_with_a_forged_mac_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    let (kid, payload, _) = sealed_parts(&b.session());
    let forged = format!("{kid}.{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
    assert_rejected_and_cleared(g.request(&orders(&b.with_session(&forged))));
}

#[test]
fn a_cookie_for_another_session_id_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    let (kid, _, mac) = sealed_parts(&b.session());
    let forged = format!("{kid}.{}.{mac}", URL_SAFE_NO_PAD.encode([7u8; 16]));
    assert_rejected_and_cleared(g.request(&orders(&b.with_session(&forged))));
}

#[test]
fn a_garbled_cookie_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    for junk in ["garbage", "", "...", "k1..", "k1.!!!.???", "\"k1.a.b\""] {
        assert_rejected_and_cleared(g.request(&orders(&b.with_session(junk))));
    }
}

#[test]
fn an_oversized_cookie_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    let huge = format!("{}{}", b.session(), "A".repeat(4096));
    assert_rejected_and_cleared(g.request(&orders(&b.with_session(&huge))));
}

#[test]
fn a_truncated_cookie_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    let v = b.session();
    for cut in [1, 4, v.len() / 2] {
        let short = &v[..v.len() - cut];
        assert_rejected_and_cleared(g.request(&orders(&b.with_session(short))));
    }
}

#[test]
fn a_cookie_under_an_unknown_key_id_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, payload, mac) = sealed_parts(&b.session());
    let other = format!("k9.{payload}.{mac}");
    assert_rejected_and_cleared(g.request(&orders(&b.with_session(&other))));
}

#[test]
fn a_duplicated_session_cookie_is_rejected_and_cleared() {
    let (mut g, b, _) = signed_in(ALICE);
    let v = b.session();
    let mut req = orders(&b);
    req.cookie = Some(format!("{SESSION}={v}; theme=dark; {SESSION}={v}"));
    assert_rejected_and_cleared(g.request(&req));
}

#[test]
fn a_differently_cased_session_cookie_is_no_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = orders(&b);
    req.cookie = Some(format!("__host-bff-session={}", b.session()));
    assert_error(&reply(g.request(&req)), 401, "unauthenticated");
}

#[test]
fn a_validly_signed_cookie_for_a_session_that_does_not_exist_is_rejected_and_cleared() {
    let mut g = Gate::new();
    let v = g.cfg.cookie.keys.seal(SESSION, &[42u8; 16]);
    let b = Browser::default().with_session(&v);
    assert_rejected_and_cleared(g.request(&orders(&b)));
}

#[test]
fn a_cookie_signed_for_another_cookie_name_is_rejected() {
    let (mut g, b, _) = signed_in(ALICE);
    let id = g.cfg.cookie.keys.open(SESSION, &b.session()).unwrap();
    let other = g
        .cfg
        .cookie
        .keys
        .seal(&format!("{FLOW_PREFIX}0123456789ab"), &id);
    assert_rejected_and_cleared(g.request(&orders(&b.with_session(&other))));
}

#[test]
fn a_navigation_with_a_bad_cookie_is_sent_to_login_and_the_cookie_cleared() {
    let mut g = Gate::new();
    let b = Browser::default().with_session("k1.bad.cookie");
    let r = reply(g.request(&navigation(&b, "/api/orders", "orders-read")));
    assert_eq!(r.status, 302);
    assert!(header(&r, "location")
        .unwrap()
        .starts_with("/auth/login?return_to="));
    assert_clears_session_cookie(&r);
}

// =====================================================================================
// Protected routes: session lifetime
// =====================================================================================

#[test]
fn an_idle_session_ends() {
    let mut g = Gate::new();
    g.token_ttl = 86_400;
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    g.advance(IDLE);
    assert_rejected_and_cleared(g.request(&orders(&b)));
    assert_eq!(g.live_sessions(), 0, "the idle session is deleted");
}

#[test]
fn a_session_is_still_live_just_before_the_idle_timeout() {
    let mut g = Gate::new();
    g.token_ttl = 86_400;
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    g.advance(IDLE - 1);
    forward(g.request(&orders(&b)));
}

#[test]
fn a_session_in_use_does_not_go_idle() {
    let mut g = Gate::new();
    g.token_ttl = 86_400;
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    g.advance(1000);
    forward(g.request(&orders(&b)));
    g.advance(1700);
    forward(g.request(&orders(&b)));
}

#[test]
fn a_session_ends_at_its_absolute_lifetime_however_active() {
    let mut g = Gate::new();
    g.token_ttl = 86_400;
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    let mut t = 0;
    while t + 1500 < ABSOLUTE {
        t += 1500;
        g.now = T0 + t;
        forward(g.request(&orders(&b)));
    }
    g.now = T0 + ABSOLUTE;
    assert_rejected_and_cleared(g.request(&orders(&b)));
    assert_eq!(g.live_sessions(), 0);
}

// =====================================================================================
// Protected routes: policy
// =====================================================================================

#[test]
fn a_user_without_the_route_scope_gets_insufficient_scope() {
    let (mut g, b, _) = signed_in(BOB);
    let r = reply(g.request(&place_order(&b)));
    assert_error(&r, 403, "insufficient_scope");
    assert_sets_no_session_cookie(&r);
}

#[test]
fn insufficient_scope_does_not_end_the_session() {
    let (mut g, b, issued) = signed_in(BOB);
    reply(g.request(&place_order(&b)));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn a_user_with_the_route_scope_may_write() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (auth, _) = forward(g.request(&place_order(&b)));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn a_claims_policy_forbids_other_users() {
    let (mut g, b, _) = signed_in(BOB);
    assert_error(&reply(g.request(&admin(&b))), 403, "forbidden");
}

#[test]
fn a_claims_policy_admits_the_named_user() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (auth, _) = forward(g.request(&admin(&b)));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn a_route_without_a_policy_is_forbidden_even_with_a_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let req = api(&b, "GET", "/api/secret", "no-such-route");
    assert_error(&reply(g.request(&req)), 403, "forbidden");
}

#[test]
fn a_request_envoy_matched_to_no_route_is_forbidden() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = orders(&b);
    req.route = None;
    assert_error(&reply(g.request(&req)), 403, "forbidden");
}

#[test]
fn a_public_route_forwards_no_token_and_strips_bffgate_cookies() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = api(&b, "GET", "/", "static");
    req.cookie = Some(format!("theme=dark; {SESSION}={}", b.session()));
    assert_eq!(
        forward(g.request(&req)),
        (None, CookieEdit::Set("theme=dark".into()))
    );
}

#[test]
fn a_public_route_needs_no_session_and_keeps_other_cookies_untouched() {
    let mut g = Gate::new();
    let mut req = api(&Browser::default(), "GET", "/app.js", "static");
    assert_eq!(forward(g.request(&req)), (None, CookieEdit::Keep));
    req.cookie = Some("theme=dark".into());
    assert_eq!(forward(g.request(&req)), (None, CookieEdit::Keep));
}

#[test]
fn a_public_route_ignores_a_bad_session_cookie() {
    let mut g = Gate::new();
    let b = Browser::default().with_session("garbage");
    let (auth, cookie) = forward(g.request(&api(&b, "GET", "/", "static")));
    assert_eq!(auth, None);
    assert_eq!(cookie, CookieEdit::Remove);
}

// =====================================================================================
// CSRF
// =====================================================================================

#[test]
fn an_unsafe_request_without_the_csrf_header_is_refused() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = place_order(&b);
    req.csrf = None;
    assert_error(&reply(g.request(&req)), 403, "csrf");
}

#[test]
fn an_unsafe_request_with_a_wrong_csrf_value_is_refused() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = place_order(&b);
    req.csrf = Some("0".into());
    assert_error(&reply(g.request(&req)), 403, "csrf");
}

#[test]
fn an_unsafe_request_from_another_origin_is_refused() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = place_order(&b);
    req.origin = Some("https://evil.example".into());
    assert_error(&reply(g.request(&req)), 403, "csrf");
}

#[test]
fn an_unsafe_request_marked_cross_site_is_refused() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = place_order(&b);
    req.sec_fetch_site = Some("cross-site".into());
    assert_error(&reply(g.request(&req)), 403, "csrf");
}

#[test]
fn an_unsafe_same_origin_request_with_the_header_is_allowed() {
    let (mut g, b, issued) = signed_in(ALICE);
    let req = place_order(&b);
    assert_eq!(req.origin.as_deref(), Some(ORIGIN));
    let (auth, _) = forward(g.request(&req));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn an_unsafe_request_with_the_header_and_no_origin_is_allowed() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = place_order(&b);
    req.origin = None;
    req.sec_fetch_site = None;
    forward(g.request(&req));
}

#[test]
fn every_unsafe_method_needs_the_csrf_header() {
    let (mut g, b, _) = signed_in(ALICE);
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        let mut req = api(&b, m, "/api/orders/1", "orders-write");
        req.csrf = None;
        assert_error(&reply(g.request(&req)), 403, "csrf");
    }
}

#[test]
fn a_safe_request_needs_no_csrf_header() {
    let (mut g, b, _) = signed_in(ALICE);
    let req = orders(&b);
    assert_eq!(req.csrf, None);
    forward(g.request(&req));
}

#[test]
fn csrf_is_checked_before_the_session() {
    let mut g = Gate::new();
    let mut req = place_order(&Browser::default());
    req.csrf = None;
    assert_error(&reply(g.request(&req)), 403, "csrf");
}

#[test]
fn logout_without_the_csrf_header_is_refused_and_keeps_the_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = logout(&b);
    req.csrf = None;
    let r = reply(g.request(&req));
    assert_error(&r, 403, "csrf");
    assert_sets_no_session_cookie(&r);
    forward(g.request(&orders(&b)));
}

#[test]
fn logout_from_another_origin_is_refused() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = logout(&b);
    req.origin = Some("https://evil.example".into());
    assert_error(&reply(g.request(&req)), 403, "csrf");
    forward(g.request(&orders(&b)));
}

#[test]
fn logout_ends_the_session_and_clears_the_cookie() {
    let (mut g, b, _) = signed_in(ALICE);
    let r = g.logout_done(&b).0;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_body(&r)["logged_out"], true);
    assert_clears_session_cookie(&r);
    assert_eq!(g.live_sessions(), 0);
    assert_rejected_and_cleared(g.request(&orders(&b)));
}

#[test]
fn logout_offers_the_provider_end_session_url() {
    let (mut g, b, _) = signed_in(ALICE);
    let body = json_body(&g.logout_done(&b).0);
    let url = body["end_session_url"].as_str().expect("end_session_url");
    let (endpoint, q) = url.split_once('?').unwrap();
    assert_eq!(endpoint, "http://localhost:9000/session/end");
    assert_eq!(param(q, "client_id").as_deref(), Some("bffgate"));
    assert_eq!(
        param(q, "post_logout_redirect_uri").as_deref(),
        Some("https://localhost:8443/")
    );
}

#[test]
fn logout_without_a_session_still_succeeds_and_clears_the_cookie() {
    let mut g = Gate::new();
    let r = reply(g.request(&logout(&Browser::default().with_session("stale"))));
    assert_eq!(r.status, 200);
    assert_clears_session_cookie(&r);
}

#[test]
fn logout_by_get_is_not_allowed() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = logout(&b);
    req.method = "GET".into();
    let r = reply(g.request(&req));
    assert_error(&r, 405, "invalid_request");
    assert_eq!(header(&r, "allow"), Some("POST"));
    forward(g.request(&orders(&b)));
}

// =====================================================================================
// Tokens per audience
// =====================================================================================

#[test]
fn the_first_request_for_another_audience_asks_for_a_token_with_the_refresh_token() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (req, _) = call(g.request(&profile(&b)));
    assert_eq!(req.path, "/token");
    let body = req.body.expose();
    assert_eq!(param(body, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(body, "refresh_token"), issued.refresh);
    assert_eq!(params(body, "resource"), vec![PROFILE]);
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
fn the_audience_token_obtained_is_forwarded() {
    let (mut g, b, _) = signed_in(ALICE);
    let mut req = profile(&b);
    req.cookie = Some(format!("theme=dark; {SESSION}={}", b.session()));
    let (_, then) = call(g.request(&req));
    let t = g.refresh_answer("profile", false);
    let (auth, cookie) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
    assert_eq!(cookie, CookieEdit::Set("theme=dark".into()));
}

#[test]
fn the_audience_token_is_reused_while_fresh() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    forward(g.resume(then, t.result()));
    g.advance(100);
    let (auth, _) = forward(g.request(&profile(&b)));
    assert_eq!(auth, Some(t.access));
}

#[test]
fn each_audience_gets_its_own_token() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    forward(g.resume(then, t.result()));
    let (orders_auth, _) = forward(g.request(&orders(&b)));
    let (profile_auth, _) = forward(g.request(&profile(&b)));
    assert_eq!(orders_auth, Some(issued.access));
    assert_eq!(profile_auth, Some(t.access));
}

#[test]
fn the_audience_token_is_renewed_shortly_before_it_expires() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    forward(g.resume(then, t.result()));
    g.advance(g.token_ttl - SKEW - 1);
    forward(g.request(&profile(&b)));
    g.advance(2);
    let (req, then) = call(g.request(&profile(&b)));
    assert_eq!(params(req.body.expose(), "resource"), vec![PROFILE]);
    let t2 = g.refresh_answer("profile", false);
    let (auth, _) = forward(g.resume(then, t2.result()));
    assert_eq!(auth, Some(t2.access));
}

#[test]
fn the_login_audience_token_is_renewed_with_a_refresh_grant() {
    let (mut g, b, issued) = signed_in(ALICE);
    g.advance(g.token_ttl);
    let (req, then) = call(g.request(&orders(&b)));
    let body = req.body.expose();
    assert_eq!(param(body, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(body, "refresh_token"), issued.refresh);
    assert_eq!(params(body, "resource"), vec![ORDERS]);
    let t = g.refresh_answer("orders:read orders:write", false);
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
}

#[test]
fn a_token_answer_without_expires_in_is_good_for_a_default_minute() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (_, then) = call(g.callback(&b, &login));
    let mut issued = g.login_answer(ALICE, &login.nonce);
    issued.body.as_object_mut().unwrap().remove("expires_in");
    b.accept(&reply(g.resume(then, issued.result())));
    g.advance(60 - SKEW - 1);
    forward(g.request(&orders(&b)));
    g.advance(2);
    call(g.request(&orders(&b)));
}

#[test]
fn a_refused_refresh_token_ends_the_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let r = g.resume(then, answer(400, r#"{"error":"invalid_grant"}"#));
    assert_rejected_and_cleared(r);
    assert_eq!(g.live_sessions(), 0);
    assert_rejected_and_cleared(g.request(&orders(&b)));
}

#[test]
fn a_refused_refresh_on_a_navigation_sends_to_login() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&navigation(&b, "/api/profile", "profile")));
    let r = reply(g.resume(then, answer(400, r#"{"error":"invalid_grant"}"#)));
    assert_eq!(r.status, 302);
    let loc = header(&r, "location").unwrap();
    assert_eq!(loc, "/auth/login?return_to=%2Fapi%2Fprofile");
    assert_clears_session_cookie(&r);
}

#[test]
fn a_provider_error_during_refresh_is_idp_unavailable_and_keeps_the_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let r = reply(g.resume(then, answer(503, "busy")));
    assert_error(&r, 503, "idp_unavailable");
    assert_sets_no_session_cookie(&r);
    assert_eq!(g.live_sessions(), 1);
    g.advance(5);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
}

#[test]
fn an_unreachable_provider_during_refresh_is_idp_unavailable_and_keeps_the_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let r = reply(g.resume(then, CallResult::Failed));
    assert_error(&r, 503, "idp_unavailable");
    assert_sets_no_session_cookie(&r);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    let (auth, _) = forward(g.resume(then, t.result()));
    assert_eq!(auth, Some(t.access));
}

#[test]
fn a_malformed_refresh_answer_is_idp_unavailable_and_keeps_the_session() {
    let (mut g, b, _) = signed_in(ALICE);
    for bad in ["not json", "{}", r#"{"access_token":"x"}"#] {
        let (_, then) = call(g.request(&profile(&b)));
        let r = reply(g.resume(then, answer(200, bad)));
        assert_error(&r, 503, "idp_unavailable");
    }
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn an_outage_inside_the_renewal_window_keeps_using_the_still_valid_token() {
    let (mut g, b, issued) = signed_in(ALICE);
    g.advance(g.token_ttl - SKEW / 2);
    let (_, then) = call(g.request(&orders(&b)));
    let (auth, _) = forward(g.resume(then, answer(502, "bad gateway")));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn a_rotated_refresh_token_replaces_the_old_one() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (req, then) = call(g.request(&profile(&b)));
    assert_eq!(param(req.body.expose(), "refresh_token"), issued.refresh);
    let t = g.refresh_answer("profile", true);
    forward(g.resume(then, t.result()));
    g.advance(g.token_ttl);
    let (req, _) = call(g.request(&orders(&b)));
    assert_eq!(param(req.body.expose(), "refresh_token"), t.refresh);
}

#[test]
fn without_rotation_the_refresh_token_is_kept() {
    let (mut g, b, issued) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", false);
    forward(g.resume(then, t.result()));
    g.advance(g.token_ttl);
    let (req, _) = call(g.request(&orders(&b)));
    assert_eq!(param(req.body.expose(), "refresh_token"), issued.refresh);
}

#[test]
fn a_refresh_answer_arriving_after_logout_does_not_revive_the_session() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    g.logout_done(&b);
    let t = g.refresh_answer("profile", true);
    assert_rejected_and_cleared(g.resume(then, t.result()));
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn the_scope_of_a_jwt_access_token_counts_when_the_answer_omits_scope() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let claims = json!({"iss": ISSUER, "aud": PROFILE, "sub": ALICE.sub, "scope": "profile", "exp": g.now + 300});
    let jwt = g.id_token(&claims);
    let body = json!({"access_token": jwt, "token_type": "Bearer", "expires_in": 300});
    let (auth, _) = forward(g.resume(then, answer_json(200, &body)));
    assert_eq!(auth, Some(jwt));
}

#[test]
fn a_token_of_unknown_scope_does_not_satisfy_a_scoped_route() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let at = g.mint("at-opaque");
    let body = json!({"access_token": at, "token_type": "Bearer", "expires_in": 300});
    assert_error(
        &reply(g.resume(then, answer_json(200, &body))),
        403,
        "insufficient_scope",
    );
}

#[test]
fn an_audience_token_lacking_the_route_scope_is_insufficient_scope() {
    let (mut g, b, _) = signed_in(ALICE);
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("openid email", false);
    assert_error(
        &reply(g.resume(then, t.result())),
        403,
        "insufficient_scope",
    );
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn a_session_without_refresh_token_ends_when_its_token_expires() {
    let mut g = Gate::new();
    let mut b = Browser::default();
    let login = g.start_login(&mut b, None);
    let (_, then) = call(g.callback(&b, &login));
    let mut issued = g.login_answer(ALICE, &login.nonce);
    issued.body.as_object_mut().unwrap().remove("refresh_token");
    b.accept(&reply(g.resume(then, issued.result())));
    forward(g.request(&orders(&b)));
    g.advance(g.token_ttl);
    assert_rejected_and_cleared(g.request(&orders(&b)));
    assert_eq!(g.live_sessions(), 0);
}

// =====================================================================================
// Cookie key rotation
// =====================================================================================

#[test]
fn new_session_cookies_are_signed_with_the_current_key() {
    let mut g = Gate::with_config(config(&format!("{K1},{K0}")));
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    assert!(b.session().starts_with("k1."), "{}", b.session());
}

#[test]
fn a_cookie_signed_with_the_previous_key_still_works_after_rotation() {
    let mut g = Gate::with_config(config(K0));
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, ALICE);
    assert!(b.session().starts_with("k0."));
    g.cfg = config(&format!("{K1},{K0}"));
    let (auth, _) = forward(g.request(&orders(&b)));
    assert_eq!(auth, Some(issued.access));
}

#[test]
fn a_cookie_signed_with_a_retired_key_is_rejected() {
    let mut g = Gate::with_config(config(K0));
    let mut b = Browser::default();
    g.sign_in(&mut b, ALICE);
    g.cfg = config(K1);
    assert_rejected_and_cleared(g.request(&orders(&b)));
}

#[test]
fn a_cookie_already_verified_under_a_retired_key_is_rejected_too() {
    // The VM remembers cookies it verified (`verified`); retiring the key must still refuse
    // a cookie that was in use a moment before.
    let mut g = Gate::with_config(config(K0));
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, ALICE);
    g.cfg = config(&format!("{K1},{K0}"));
    for _ in 0..2 {
        let (auth, _) = forward(g.request(&orders(&b)));
        assert_eq!(auth, Some(issued.access.clone()));
    }
    g.cfg = config(K1);
    assert_rejected_and_cleared(g.request(&orders(&b)));
}

#[test]
fn a_repeated_cookie_is_decided_exactly_as_the_first_time() {
    let (mut g, b, issued) = signed_in(ALICE);
    let mut req = orders(&b);
    req.cookie = Some(format!("theme=dark; {SESSION}={}; lang=en", b.session()));
    for _ in 0..3 {
        let (auth, cookie) = forward(g.request(&req));
        assert_eq!(auth, Some(issued.access.clone()));
        assert_eq!(cookie, CookieEdit::Set("theme=dark; lang=en".into()));
    }
    // A remembered cookie next to a second session cookie is still refused.
    req.cookie = Some(format!("{SESSION}={}; {SESSION}=x", b.session()));
    assert_rejected_and_cleared(g.request(&req));
}

// =====================================================================================
// /auth endpoints
// =====================================================================================

#[test]
fn unknown_auth_endpoints_are_404() {
    let mut g = Gate::new();
    for p in [
        "/auth",
        "/auth/",
        "/auth/nope",
        "/auth/login/x",
        "/auth/../api/orders",
    ] {
        assert_error(&reply(g.request(&get(p))), 404, "invalid_request");
    }
}

#[test]
fn paths_that_only_start_with_the_prefix_letters_are_ordinary_routes() {
    let mut g = Gate::new();
    let mut req = get("/authors");
    req.route = Some("static".into());
    assert_eq!(forward(g.request(&req)), (None, CookieEdit::Keep));
}

// =====================================================================================
// Nothing leaks
// =====================================================================================

#[test]
#[should_panic(expected = "secret leaked")]
fn the_leak_check_catches_a_token_in_a_reply() {
    let step = Step::Respond(Reply {
        status: 200,
        headers: vec![],
        body: r#"{"t":"at-orders-1-q7Wzabc"}"#.into(),
        kind: bffgate::reply::ReplyKind::Endpoint,
    });
    assert_no_secret(&step, &[], &["at-orders-1-q7Wzabc".to_string()]);
}

#[test]
#[should_panic(expected = "secret leaked")]
fn the_leak_check_catches_a_secret_in_an_audit_note() {
    let step = Step::Respond(Reply {
        status: 200,
        headers: vec![],
        body: String::new(),
        kind: bffgate::reply::ReplyKind::Endpoint,
    });
    assert_no_secret(
        &step,
        &["code=code-9-q7Wz".to_string()],
        &["code-9-q7Wz".to_string()],
    );
}

#[test]
fn a_whole_session_never_shows_a_secret_to_the_browser_or_the_log() {
    // Every step below is checked by `Gate::observe`; this drives all the kinds of secret through
    // the engine and checks they were all tracked.
    let mut g = Gate::new();
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, ALICE);
    reply(g.request(&user_info(&b)));
    forward(g.request(&orders(&b)));
    let (_, then) = call(g.request(&profile(&b)));
    let t = g.refresh_answer("profile", true);
    forward(g.resume(then, t.result()));
    g.advance(g.token_ttl);
    let (_, then) = call(g.request(&orders(&b)));
    reply(g.resume(then, answer(500, "oops")));
    let (_, then) = call(g.request(&orders(&b)));
    reply(g.resume(then, answer(400, r#"{"error":"invalid_grant"}"#)));
    let login = g.start_login(&mut b, None);
    let (exchange, then) = call(g.callback(&b, &login));
    let verifier = param(exchange.body.expose(), "code_verifier").unwrap();
    reply(g.resume(then, answer(200, "garbage")));
    g.sign_in(&mut b, ALICE);
    g.logout_done(&b);

    let tracked = |s: &str| g.secrets.iter().any(|x| x == s);
    assert!(tracked(CLIENT_SECRET));
    assert!(tracked(&issued.access));
    assert!(tracked(issued.refresh.as_deref().unwrap()));
    assert!(tracked(issued.id.as_deref().unwrap()));
    assert!(tracked(t.refresh.as_deref().unwrap()));
    assert!(g.secrets.iter().any(|s| s.starts_with("code-")));
    assert!(tracked(&verifier));
    assert!(g.transcript.len() > 20);
}

// =====================================================================================
// Which path a request took (the shell counts it: bffgate_fast_path_taken / _missed_<reason>)
// =====================================================================================

#[test]
fn the_engine_tells_which_path_a_session_request_took_and_why_it_left_the_fast_path() {
    use bffgate::engine::FastPathMiss;
    let (mut g, b, _) = signed_in(ALICE);
    let run = |g: &mut Gate, req: &Request| {
        let mut e = Engine::new(&g.cfg, g.now, &mut g.rng, &mut g.store).with_verified(&g.verified);
        let step = e.on_request(req);
        (e.fast_path, step)
    };
    let (path, step) = run(&mut g, &orders(&b));
    assert_eq!(path, Some(Ok(())));
    assert!(forward(step).0.is_some());
    // Past the touch interval the full path writes the last use (and allows); then fast again.
    g.advance(61);
    let (path, step) = run(&mut g, &orders(&b));
    assert_eq!(path, Some(Err(FastPathMiss::TouchDue)));
    assert!(forward(step).0.is_some());
    assert_eq!(run(&mut g, &orders(&b)).0, Some(Ok(())));
    // Refusals are decided (and explained) by the full path.
    let mut no_csrf = place_order(&b);
    no_csrf.csrf = None;
    assert_eq!(run(&mut g, &no_csrf).0, Some(Err(FastPathMiss::Csrf)));
    assert_eq!(
        run(&mut g, &orders(&Browser::default())).0,
        Some(Err(FastPathMiss::NoCookie))
    );
    let forged = b.with_session("garbage");
    assert_eq!(
        run(&mut g, &orders(&forged)).0,
        Some(Err(FastPathMiss::Cookie))
    );
    // A public route never tries it.
    assert_eq!(run(&mut g, &api(&b, "GET", "/app.js", "static")).0, None);
}
