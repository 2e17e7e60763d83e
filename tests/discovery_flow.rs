//! OpenID Connect discovery in the engine: `provider.issuer` alone is enough. The document is
//! read through the provider's cluster at the first request that needs an endpoint, cached
//! for every worker, read again when older than `provider.discovery_max_age_s`, and refused
//! (one audit line naming what was wrong, `503 idp_unavailable` for logins, nothing retried
//! for a few seconds) when it is not the issuer's. Sessions that need no provider call never
//! notice; a stale document that cannot be renewed stays in use. Endpoints set by hand
//! override discovered ones; the client authentication method follows what the provider
//! lists when it is not configured; ID tokens are verified with the discovered keys.
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
use bffgate::engine::DISCOVERY_RETRY;
use common::*;

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// The demo configuration with the endpoints taken out (issuer only), then `patch`.
fn issuer_only(patch: impl FnOnce(&mut Value)) -> Gate {
    Gate::with_config(config_with(K1, |v| {
        let p = v["provider"].as_object_mut().unwrap();
        for k in [
            "authorization_endpoint",
            "token_endpoint",
            "revocation_endpoint",
            "end_session_endpoint",
        ] {
            p.remove(k);
        }
        patch(v);
    }))
}

/// The provider's discovery document (oidc-provider's shape), with `patch` applied.
fn document(patch: impl FnOnce(&mut Value)) -> String {
    let mut d = json!({
        "issuer": ISSUER,
        "authorization_endpoint": "http://localhost:9000/auth",
        "token_endpoint": "http://tokens.idp.test:9443/oauth/token",
        "jwks_uri": "http://localhost:9000/jwks",
        "revocation_endpoint": "http://localhost:9000/token/revocation",
        "end_session_endpoint": "http://localhost:9000/session/end",
        "userinfo_endpoint": "http://localhost:9000/me",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "backchannel_logout_supported": true
    });
    patch(&mut d);
    d.to_string()
}

/// A provider that answers each callout by its path: the discovery document, the keys, the
/// token endpoint (`tokens`, in order), revocation (200).
struct Idp {
    doc: CallResult,
    tokens: Vec<CallResult>,
    calls: Vec<Callout>,
}

impl Idp {
    fn new(doc: CallResult) -> Idp {
        Idp {
            doc,
            tokens: Vec::new(),
            calls: Vec::new(),
        }
    }

    fn answer(&mut self, c: &Callout) -> CallResult {
        self.calls.push(c.clone());
        match c.path.as_str() {
            WELL_KNOWN => self.doc.clone(),
            "/jwks" => answer(200, &bffgate::testkit::jwks()),
            "/oauth/token" | "/token" => {
                assert!(
                    !self.tokens.is_empty(),
                    "an unexpected token request: {c:?}"
                );
                self.tokens.remove(0)
            }
            _ => answer(200, ""),
        }
    }

    /// The callouts made so far to `path`.
    fn count(&self, path: &str) -> usize {
        self.calls.iter().filter(|c| c.path == path).count()
    }
}

/// Runs `step` to its end, answering every callout from `idp`.
fn run(g: &mut Gate, idp: &mut Idp, mut step: Step) -> Step {
    for _ in 0..16 {
        match step {
            Step::Call { request, then } => {
                let result = idp.answer(&request);
                step = g.resume(*then, result);
            }
            other => return other,
        }
    }
    panic!("more than 16 callouts for one request")
}

fn login_request(b: &Browser) -> Request {
    let mut req = get("/auth/login?return_to=%2Forders");
    req.cookie = b.cookie_header();
    req.sec_fetch_mode = Some("navigate".into());
    req
}

/// A code-exchange answer with an ID token signed by the fake provider's key.
fn signed_login_answer(g: &mut Gate, nonce: &str) -> CallResult {
    let claims = g.id_claims(ALICE, nonce);
    let id = bffgate::testkit::sign_jwt(&claims);
    g.register(&id);
    let access = g.mint("at-orders");
    let refresh = g.mint("rt");
    answer_json(
        200,
        &json!({"access_token": access, "token_type": "Bearer", "expires_in": g.token_ttl,
                "scope": "openid offline_access orders:read", "refresh_token": refresh,
                "id_token": id}),
    )
}

/// `/auth/login` through discovery: the redirect's location.
fn login(g: &mut Gate, idp: &mut Idp, b: &mut Browser) -> String {
    let r = reply(go(g, idp, &login_request(b)));
    assert_eq!(r.status, 302, "{r:?}");
    b.accept(&r);
    header(&r, "location").unwrap().to_string()
}

/// A request from the browser, run to its end.
fn go(g: &mut Gate, idp: &mut Idp, req: &Request) -> Step {
    let step = g.request(req);
    run(g, idp, step)
}

/// Empties a cached document, as on a freshly started Envoy (shared data cannot delete).
fn forget(g: &mut Gate, key: &str) {
    use bffgate::store::SharedData;
    g.store.data.set(key, b"", None).unwrap();
}

/// A whole login through discovery: the browser ends up with a session.
fn sign_in(g: &mut Gate, idp: &mut Idp, b: &mut Browser) {
    let location = login(g, idp, b);
    let q = location.split_once('?').unwrap().1;
    let (state, nonce) = (param(q, "state").unwrap(), param(q, "nonce").unwrap());
    let answer = signed_login_answer(g, &nonce);
    idp.tokens.push(answer);
    let code = g.mint("code");
    let step = g.callback_with(b, &qs(&[("code", &code), ("state", &state)]));
    let r = reply(run(g, idp, step));
    assert_eq!(r.status, 302, "{r:?}");
    b.accept(&r);
    assert!(b.get(SESSION).is_some());
}

fn audits(g: &Gate, event: &str) -> Vec<Value> {
    g.transcript
        .iter()
        .filter_map(|t| t.strip_prefix("audit "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

#[test]
fn the_issuer_alone_is_enough_and_the_document_is_read_once() {
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    let location = login(&mut g, &mut idp, &mut b);
    assert!(location.starts_with("http://localhost:9000/auth?response_type=code"));
    assert_eq!(idp.count(WELL_KNOWN), 1);
    let first = &idp.calls[0];
    assert_eq!(
        (first.method, first.authority.as_str()),
        ("GET", "localhost:9000")
    );
    // The whole login: code exchange at the discovered token endpoint (its own host), the ID
    // token verified with the discovered keys; the document is not read again.
    sign_in(&mut g, &mut idp, &mut b);
    assert_eq!(idp.count(WELL_KNOWN), 1, "cached for every later request");
    let exchange = idp.calls.iter().find(|c| c.path == "/oauth/token").unwrap();
    assert_eq!(exchange.authority, "tokens.idp.test:9443");
    assert_eq!(idp.count("/jwks"), 1);
    assert!(g.transcript.iter().any(
        |t| t.starts_with("discovery: read http://localhost:9000/.well-known/openid-configuration")
    ));
    assert!(audits(&g, "discovery_failed").is_empty());
}

#[test]
fn a_refused_document_is_one_audit_line_and_503_and_is_not_retried_at_once() {
    let cases: Vec<(&str, CallResult, &str)> = vec![
        ("5xx", answer(502, "bad gateway"), "HTTP 502"),
        ("timeout", CallResult::Failed, "no answer"),
        ("not json", answer(200, "<html>login</html>"), "JSON"),
        (
            "too large",
            answer(200, &format!("{{\"x\":\"{}\"}}", "a".repeat(70_000))),
            "65536",
        ),
        (
            "another issuer",
            answer(
                200,
                &document(|d| d["issuer"] = json!("http://localhost:9000/")),
            ),
            "http://localhost:9000/",
        ),
        (
            "no token endpoint",
            answer(
                200,
                &document(|d| {
                    d.as_object_mut().unwrap().remove("token_endpoint");
                }),
            ),
            "token_endpoint",
        ),
        (
            "no S256",
            answer(
                200,
                &document(|d| d["code_challenge_methods_supported"] = json!(["plain"])),
            ),
            "S256",
        ),
    ];
    for (name, result, says) in cases {
        let mut g = issuer_only(|_| {});
        let mut idp = Idp::new(result);
        let b = Browser::default();
        let r = reply(go(&mut g, &mut idp, &login_request(&b)));
        assert_error(&r, 503, "idp_unavailable");
        assert!(
            set_cookies(&r).is_empty(),
            "{name}: no flow cookie, no pending login"
        );
        let lines = audits(&g, "discovery_failed");
        assert_eq!(lines.len(), 1, "{name}: one line");
        let reason = lines[0]["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{name}: {reason}");
        assert_eq!(
            lines[0]["url"],
            "http://localhost:9000/.well-known/openid-configuration"
        );
        // Within the retry time: 503 at once, no callout.
        g.advance(DISCOVERY_RETRY - 1);
        let step = g.request(&login_request(&b));
        assert_error(&reply(step), 503, "idp_unavailable");
        assert_eq!(idp.count(WELL_KNOWN), 1, "{name}: not retried at once");
        // Then read again; a good document lets logins through.
        g.advance(1);
        idp.doc = answer(200, &document(|_| {}));
        let r = reply(go(&mut g, &mut idp, &login_request(&b)));
        assert_eq!(r.status, 302, "{name}: {r:?}");
        assert_eq!(idp.count(WELL_KNOWN), 2);
    }
}

#[test]
fn a_stale_document_is_read_again_and_kept_if_that_fails() {
    let mut g = issuer_only(|v| v["provider"]["discovery_max_age_s"] = json!(600));
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    login(&mut g, &mut idp, &mut b);
    g.advance(599);
    login(&mut g, &mut idp, &mut b);
    assert_eq!(idp.count(WELL_KNOWN), 1, "fresh for 600 s");
    g.advance(1);
    // The provider moved its authorization endpoint: the renewed document says so.
    idp.doc = answer(
        200,
        &document(|d| d["authorization_endpoint"] = json!("http://localhost:9000/v2/auth")),
    );
    let location = login(&mut g, &mut idp, &mut b);
    assert_eq!(idp.count(WELL_KNOWN), 2);
    assert!(
        location.starts_with("http://localhost:9000/v2/auth?"),
        "{location}"
    );
    // Stale again, and the provider is down: the old document stays in use, one audit line.
    g.advance(600);
    idp.doc = answer(503, "");
    let location = login(&mut g, &mut idp, &mut b);
    assert!(
        location.starts_with("http://localhost:9000/v2/auth?"),
        "{location}"
    );
    assert_eq!(audits(&g, "discovery_failed").len(), 1);
    // Not retried on every request meanwhile.
    login(&mut g, &mut idp, &mut b);
    assert_eq!(idp.count(WELL_KNOWN), 3);
}

#[test]
fn sessions_that_need_no_provider_call_never_notice_a_failing_provider() {
    let mut g = issuer_only(|v| v["provider"]["discovery_max_age_s"] = json!(600));
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    // The document goes stale and cannot be read again; the session's token (300 s) has
    // expired: the renewal uses the stale document's token endpoint.
    g.advance(600);
    idp.doc = CallResult::Failed;
    let before = idp.calls.len();
    let refresh = g.refresh_answer("orders:read", false);
    idp.tokens.push(refresh.result());
    let (auth, _) = forward(go(&mut g, &mut idp, &orders(&b)));
    assert_eq!(auth.as_deref(), Some(refresh.access.as_str()));
    let paths: Vec<&str> = idp.calls[before..]
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(paths, vec![WELL_KNOWN, "/oauth/token"]);
    assert_eq!(audits(&g, "discovery_failed").len(), 1);
    // With the token fresh, nothing is called at all.
    let before = idp.calls.len();
    let (auth, _) = forward(go(&mut g, &mut idp, &orders(&b)));
    assert!(auth.is_some());
    assert_eq!(idp.calls.len(), before);
}

#[test]
fn a_callback_waits_for_the_document_before_it_consumes_the_login() {
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    let location = login(&mut g, &mut idp, &mut b);
    let q = location.split_once('?').unwrap().1;
    let (state, nonce) = (param(q, "state").unwrap(), param(q, "nonce").unwrap());
    // While the user is at the provider the cache is lost (a restarted Envoy's worker) and
    // the document cannot be read now.
    g.advance(60);
    forget(&mut g, "bffgate:discovery");
    idp.doc = answer(500, "");
    let code = g.mint("code");
    let query = qs(&[("code", &code), ("state", &state)]);
    let step = g.callback_with(&b, &query);
    let r = reply(run(&mut g, &mut idp, step));
    assert_error(&r, 503, "idp_unavailable");
    // The login was not consumed: once the provider is back, the same callback completes.
    g.advance(DISCOVERY_RETRY);
    idp.doc = answer(200, &document(|_| {}));
    idp.tokens.push(signed_login_answer(&mut g, &nonce));
    let step = g.callback_with(&b, &query);
    let r = reply(run(&mut g, &mut idp, step));
    assert_eq!(r.status, 302, "{r:?}");
    b.accept(&r);
    assert!(b.get(SESSION).is_some());
}

#[test]
fn endpoints_set_by_hand_override_discovered_ones() {
    let mut g = issuer_only(|v| {
        v["provider"]["token_endpoint"] = json!("http://10.0.0.7:8080/token");
    });
    assert_eq!(
        g.cfg.provider.by_hand.fields(),
        vec!["provider.token_endpoint"]
    );
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    let exchange = idp
        .calls
        .iter()
        .find(|c| c.method == "POST")
        .expect("a code exchange");
    assert_eq!(
        (exchange.authority.as_str(), exchange.path.as_str()),
        ("10.0.0.7:8080", "/token")
    );
    assert!(g
        .transcript
        .iter()
        .any(|t| t.starts_with("discovery: read")
            && t.contains("set by hand: provider.token_endpoint")));
}

#[test]
fn the_client_authenticates_as_the_provider_lists_unless_configured() {
    // Only client_secret_post listed: the secret goes in the form.
    let post_only = |d: &mut Value| {
        d["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
    };
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(post_only)));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    let exchange = idp.calls.iter().find(|c| c.method == "POST").unwrap();
    assert!(exchange.headers.iter().all(|(k, _)| k != "authorization"));
    assert_eq!(
        param(exchange.body.expose(), "client_secret").as_deref(),
        Some(CLIENT_SECRET)
    );
    // Configured: kept, and the log line says the provider does not list it.
    let mut g = issuer_only(|v| v["client"]["auth_method"] = json!("client_secret_basic"));
    let mut idp = Idp::new(answer(200, &document(post_only)));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    let exchange = idp.calls.iter().find(|c| c.method == "POST").unwrap();
    assert!(exchange.headers.iter().any(|(k, _)| k == "authorization"));
    assert!(g.transcript.iter().any(|t| t.contains(
        "client.auth_method client_secret_basic is not among the provider's (client_secret_post)"
    )));
}

#[test]
fn an_id_token_not_signed_by_the_discovered_keys_is_refused() {
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    let location = login(&mut g, &mut idp, &mut b);
    let q = location.split_once('?').unwrap().1;
    let (state, nonce) = (param(q, "state").unwrap(), param(q, "nonce").unwrap());
    // An unsigned ID token (what a provider without keys would send) with the right claims.
    let issued = g.login_answer(ALICE, &nonce);
    idp.tokens.push(issued.result());
    let code = g.mint("code");
    let step = g.callback_with(&b, &qs(&[("code", &code), ("state", &state)]));
    let r = reply(run(&mut g, &mut idp, step));
    assert_error(&r, 400, "login_failed");
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn logout_ends_the_session_even_when_the_document_cannot_be_read() {
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    assert_eq!(g.live_sessions(), 1);
    g.advance(60);
    forget(&mut g, "bffgate:discovery");
    idp.doc = CallResult::Failed;
    let r = reply(go(&mut g, &mut idp, &logout(&b)));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_body(&r)["logged_out"], true);
    assert!(json_body(&r).get("end_session_url").is_none());
    assert_eq!(g.live_sessions(), 0);
    let rev = audits(&g, "revocation");
    assert_eq!(rev.len(), 1);
    assert_eq!(
        rev[0]["results"][0]["result"],
        "provider metadata unavailable"
    );
}

#[test]
fn logout_uses_the_discovered_end_session_and_revocation_endpoints() {
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    let r = reply(go(&mut g, &mut idp, &logout(&b)));
    let url = json_body(&r)["end_session_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("http://localhost:9000/session/end?client_id=bffgate"));
    assert_eq!(idp.count("/token/revocation"), 2);
}

#[test]
fn a_backchannel_logout_reads_the_document_and_keys_it_needs() {
    let mut g = issuer_only(|_| {});
    let mut idp = Idp::new(answer(200, &document(|_| {})));
    let mut b = Browser::default();
    sign_in(&mut g, &mut idp, &mut b);
    // A restarted worker's cache is empty.
    forget(&mut g, "bffgate:discovery");
    forget(&mut g, "bffgate:jwks");
    let token = bffgate::testkit::sign_jwt_with_header(
        &json!({"typ": "logout+jwt"}),
        &json!({"iss": ISSUER, "aud": "bffgate", "iat": g.now, "exp": g.now + 120,
                "jti": "j1", "sub": "sub-alice", "sid": "idp-session-1",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
    );
    let mut req = get("/auth/backchannel-logout");
    req.method = "POST".into();
    let Step::ReadBody { then } = g.request(&req) else {
        panic!("the endpoint reads its body")
    };
    let body = qs(&[("logout_token", &token)]);
    let before = idp.calls.len();
    let mut e = Engine::new(&g.cfg, g.now, &mut g.rng, &mut g.store);
    let mut step = e.on_body(then, Some(body.as_bytes()));
    while let Step::Call { request, then } = step {
        let result = idp.answer(&request);
        step = e.on_callout(*then, result);
    }
    drop(e);
    let r = reply(step);
    assert_eq!(r.status, 200, "{r:?}");
    let paths: Vec<&str> = idp.calls[before..]
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(paths, vec![WELL_KNOWN, "/jwks"]);
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn discovery_settings_are_checked_at_load() {
    let refuse = |patch: &dyn Fn(&mut Value), field: &str| {
        let mut v = demo_config();
        patch(&mut v);
        let e = Config::from_json(v.to_string().as_bytes(), &bffgate::testkit::test_secrets)
            .unwrap_err();
        assert_eq!(e.field, field, "{e}");
    };
    refuse(
        &|v| {
            v["provider"]["discovery"] = json!(false);
            v["provider"]
                .as_object_mut()
                .unwrap()
                .remove("token_endpoint");
        },
        "provider.token_endpoint",
    );
    refuse(
        &|v| {
            v["provider"]["discovery"] = json!(true);
            v["provider"]["discovery_max_age_s"] = json!(5);
        },
        "provider.discovery_max_age_s",
    );
    refuse(
        &|v| {
            v["provider"]
                .as_object_mut()
                .unwrap()
                .remove("token_endpoint");
            v["provider"]["issuer"] = json!("http://localhost:9000/?tenant=a");
        },
        "provider.issuer",
    );
    // Every endpoint by hand: no discovery unless asked for.
    let c = config_with(K1, |_| {});
    assert!(c.provider.discovery.is_none());
    let c = config_with(K1, |v| v["provider"]["discovery"] = json!(true));
    let d = c.provider.discovery.expect("asked for");
    assert_eq!(d.target.path, WELL_KNOWN);
    assert_eq!(d.max_age_s, 3600);
    // An issuer with a path: the document is under it (OIDC Discovery 4).
    let c = config_with(K1, |v| {
        v["provider"]["issuer"] = json!("https://login.example.com/tenant-a/v2.0/");
        v["provider"]["discovery"] = json!(true);
    });
    let d = c.provider.discovery.unwrap();
    assert_eq!(d.target.authority, "login.example.com");
    assert_eq!(
        d.target.path,
        "/tenant-a/v2.0/.well-known/openid-configuration"
    );
}

/// An HS256/384/512 JWS of `claims` under `secret` (OIDC Core 10.1: the client secret's octets).
fn sign_hmac(alg: &str, secret: &[u8], claims: &Value) -> String {
    use hmac::{Mac, SimpleHmac};
    let input = format!(
        "{}.{}",
        bffgate::util::b64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
        bffgate::util::b64url(claims.to_string().as_bytes())
    );
    let mac = match alg {
        "HS256" => {
            let mut m = SimpleHmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        "HS384" => {
            let mut m = SimpleHmac::<sha2::Sha384>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut m = SimpleHmac::<sha2::Sha512>::new_from_slice(secret).unwrap();
            m.update(input.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
    };
    format!("{input}.{}", bffgate::util::b64url(&mac))
}

/// A login through discovery whose ID token is made by `sign` from the right claims: the
/// callback's reply.
fn login_with(g: &mut Gate, idp: &mut Idp, sign: &dyn Fn(&Value) -> String) -> Reply {
    let mut b = Browser::default();
    let location = login(g, idp, &mut b);
    let q = location.split_once('?').unwrap().1;
    let (state, nonce) = (param(q, "state").unwrap(), param(q, "nonce").unwrap());
    let id = sign(&g.id_claims(ALICE, &nonce));
    g.register(&id);
    let (access, refresh) = (g.mint("at-orders"), g.mint("rt"));
    idp.tokens.push(answer_json(
        200,
        &json!({"access_token": access, "token_type": "Bearer", "expires_in": g.token_ttl,
                "scope": "openid offline_access orders:read", "refresh_token": refresh,
                "id_token": id}),
    ));
    let code = g.mint("code");
    let step = g.callback_with(&b, &qs(&[("code", &code), ("state", &state)]));
    reply(run(g, idp, step))
}

#[test]
fn hmac_id_tokens_are_verified_with_the_client_secret_and_no_keys() {
    // LemonLDAP::NG's default: HS512 with the client secret, which the provider lists.
    for alg in ["HS256", "HS384", "HS512"] {
        let mut g = issuer_only(|_| {});
        let mut idp = Idp::new(answer(
            200,
            &document(|d| d["id_token_signing_alg_values_supported"] = json!([alg, "RS256"])),
        ));
        let r = login_with(&mut g, &mut idp, &|c| {
            sign_hmac(alg, CLIENT_SECRET.as_bytes(), c)
        });
        assert_eq!(r.status, 302, "{alg}: {r:?}");
        assert_eq!(g.live_sessions(), 1, "{alg}");
        assert_eq!(
            idp.count("/jwks"),
            0,
            "{alg}: an HMAC token needs no key set"
        );
        // Another secret (someone else's client at the same provider): refused.
        let mut g = issuer_only(|_| {});
        let mut idp = Idp::new(answer(
            200,
            &document(|d| d["id_token_signing_alg_values_supported"] = json!([alg])),
        ));
        let r = login_with(&mut g, &mut idp, &|c| sign_hmac(alg, b"other-secret", c));
        assert_error(&r, 400, "login_failed");
        assert_eq!(g.live_sessions(), 0, "{alg}");
    }
}

#[test]
fn only_the_algorithms_the_provider_lists_and_the_config_pins_are_accepted() {
    let es256 = |c: &Value| bffgate::testkit::sign_jwt(c);
    let hs256 = |c: &Value| sign_hmac("HS256", CLIENT_SECRET.as_bytes(), c);
    // (document's list, pinned, signer, accepted)
    type Signer<'a> = &'a dyn Fn(&Value) -> String;
    let cases: [(Value, Option<Value>, Signer, bool); 6] = [
        (json!(["ES256", "RS256"]), None, &es256, true),
        // The provider signs with ES256 but says it uses RS256 only: refused (a downgrade or
        // a key confusion is not guessed at).
        (json!(["RS256"]), None, &es256, false),
        // An HMAC token from a provider that lists only asymmetric algorithms: refused,
        // whatever the client secret.
        (json!(["ES256", "RS256"]), None, &hs256, false),
        // Pinned narrower than the provider's list.
        (
            json!(["ES256", "RS256"]),
            Some(json!(["RS256"])),
            &es256,
            false,
        ),
        (
            json!(["ES256", "HS256"]),
            Some(json!(["ES256"])),
            &hs256,
            false,
        ),
        (
            json!(["ES256", "HS256"]),
            Some(json!(["HS256", "ES256"])),
            &hs256,
            true,
        ),
    ];
    for (i, (listed, pinned, sign, ok)) in cases.into_iter().enumerate() {
        let mut g = issuer_only(|v| {
            if let Some(p) = &pinned {
                v["provider"]["id_token_signing_algs"] = p.clone();
            }
        });
        let mut idp = Idp::new(answer(
            200,
            &document(|d| d["id_token_signing_alg_values_supported"] = listed.clone()),
        ));
        let r = login_with(&mut g, &mut idp, sign);
        if ok {
            assert_eq!(r.status, 302, "case {i}: {r:?}");
            assert_eq!(g.live_sessions(), 1, "case {i}");
        } else {
            assert_error(&r, 400, "login_failed");
            assert_eq!(g.live_sessions(), 0, "case {i}");
        }
    }
}

#[test]
fn pinned_algorithms_are_checked_at_load() {
    let refuse = |patch: &dyn Fn(&mut Value), field: &str, says: &str| {
        let mut v = demo_config();
        patch(&mut v);
        let e = Config::from_json(v.to_string().as_bytes(), &bffgate::testkit::test_secrets)
            .unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(says), "{e}");
    };
    refuse(
        &|v| v["provider"]["id_token_signing_algs"] = json!(["RS256", "none"]),
        "provider.id_token_signing_algs[1]",
        "\"none\" is not an algorithm bffgate verifies",
    );
    refuse(
        &|v| v["provider"]["id_token_signing_algs"] = json!(["EdDSA"]),
        "provider.id_token_signing_algs[0]",
        "one of RS256",
    );
    refuse(
        &|v| v["provider"]["id_token_signing_algs"] = json!([]),
        "provider.id_token_signing_algs",
        "at least one",
    );
    // Without discovery: the RS, PS and ES algorithms unless pinned.
    let c = config_with(K1, |_| {});
    let ep = c.provider.fixed(&c.client).unwrap();
    assert!(ep.id_token_algs.iter().all(|a| !bffgate::jose::is_hmac(a)));
    assert!(ep.id_token_algs.iter().any(|a| a == "PS256"));
    let c = config_with(K1, |v| {
        v["provider"]["id_token_signing_algs"] = json!(["HS512"])
    });
    assert_eq!(
        c.provider.fixed(&c.client).unwrap().id_token_algs,
        ["HS512"]
    );
}
