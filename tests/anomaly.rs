//! Session anomaly signals (`session.anomaly`, `session.on_anomaly`): the client binding made
//! at sign-in and its drift (User-Agent, network), the request rate and refusals per session in
//! a sliding window, each kind with each action (`log`, `step_up`, `revoke`), and what is kept
//! (keyed hashes only).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

const UA1: &str = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 legit-browser";
const UA2: &str = "curl/8.10 attacker-tool";
const IP1: &str = "203.0.113.5";
const IP1_SAME_NET: &str = "203.0.113.77";
const IP2: &str = "198.51.100.9";

fn gate(patch: impl FnOnce(&mut Value)) -> Gate {
    let mut g = Gate::with_config(config_with(K1, |raw| {
        raw["session"]["anomaly"] =
            json!({"window_s": 60, "max_requests_per_s": 1, "max_refusals": 3});
        patch(raw);
    }));
    g.token_ttl = 3600;
    g
}

/// A request `r` as it comes from a client with this User-Agent and address (Envoy appends the
/// peer address to X-Forwarded-For; a client's own XFF comes first).
fn from(mut r: Request, ua: &str, xff: &str) -> Request {
    r.user_agent = Some(ua.into());
    r.client_address = Some(xff.into());
    r
}

/// Signs `user` in from (`ua`, `ip`): the binding is made at /auth/login.
fn sign_in_from(g: &mut Gate, b: &mut Browser, user: User, ua: &str, ip: &str) {
    let mut req = from(get("/auth/login?return_to=%2F"), ua, ip);
    req.cookie = b.cookie_header();
    req.sec_fetch_mode = Some("navigate".into());
    let r = reply(g.request(&req));
    assert_eq!(r.status, 302, "{r:?}");
    let location = header(&r, "location").unwrap().to_string();
    let (_, q) = location.split_once('?').unwrap();
    let login = Login {
        state: param(q, "state").unwrap(),
        nonce: param(q, "nonce").unwrap(),
        challenge: param(q, "code_challenge").unwrap(),
        flow_cookie: String::new(),
        location: location.clone(),
        reply: r.clone(),
    };
    b.accept(&r);
    let (_, then) = call(g.callback(b, &login));
    let issued = g.login_answer(user, &login.nonce);
    let r = reply(g.resume(then, issued.result()));
    assert_eq!(r.status, 302, "{r:?}");
    b.accept(&r);
}

fn anomalies(g: &Gate, kind: &str) -> Vec<Value> {
    g.transcript
        .iter()
        .filter_map(|l| l.strip_prefix("audit "))
        .filter_map(|j| serde_json::from_str::<Value>(j).ok())
        .filter(|v| v["event"] == "session_anomaly" && v["kind"] == kind)
        .collect()
}

fn forwarded(step: Step) -> bool {
    matches!(
        step,
        Step::Forward {
            authorization: Some(_),
            ..
        }
    )
}

#[test]
fn the_same_client_is_not_an_anomaly_and_another_host_of_its_network_neither() {
    let mut g = gate(|_| {});
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    assert!(forwarded(g.request(&from(orders(&b), UA1, IP1))));
    assert!(forwarded(g.request(&from(orders(&b), UA1, IP1_SAME_NET))));
    // A client's own X-Forwarded-For entry is not the address Envoy saw.
    assert!(forwarded(g.request(&from(
        orders(&b),
        UA1,
        &format!("{IP2}, {IP1}")
    ))));
    assert!(anomalies(&g, "network").is_empty());
    assert!(anomalies(&g, "user_agent").is_empty());
}

#[test]
fn drift_is_logged_once_per_window_by_default_and_the_request_goes_on() {
    let mut g = gate(|_| {});
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    for _ in 0..3 {
        assert!(forwarded(g.request(&from(orders(&b), UA2, IP2))));
    }
    let net = anomalies(&g, "network");
    let ua = anomalies(&g, "user_agent");
    assert_eq!((net.len(), ua.len()), (1, 1), "once per window each");
    assert_eq!(net[0]["action"], json!("log"));
    assert!(net[0]["session"].as_str().unwrap().len() >= 8);
    g.advance(61);
    assert!(forwarded(g.request(&from(orders(&b), UA2, IP2))));
    assert_eq!(
        anomalies(&g, "network").len(),
        2,
        "again in the next window"
    );
}

#[test]
fn a_stolen_cookie_from_another_network_is_revoked_and_the_owner_told_why() {
    let mut g = gate(|raw| raw["session"]["on_anomaly"] = json!({"network": "revoke"}));
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    assert!(forwarded(g.request(&from(orders(&b), UA1, IP1))));
    let thief = b.clone();
    // The replay: the refresh token is revoked at the provider, then the thief gets a 401.
    let mut step = g.request(&from(orders(&thief), UA1, IP2));
    let mut revoked = Vec::new();
    let r = loop {
        match step {
            Step::Call { request, then } => {
                assert_eq!(request.path, "/token/revocation");
                revoked.extend(params(request.body.expose(), "token_type_hint"));
                step = g.resume(*then, answer(200, ""));
            }
            Step::Respond(r) => break r,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        revoked.contains(&"refresh_token".to_string()),
        "{revoked:?}"
    );
    assert_error(&r, 401, "unauthenticated");
    assert_clears_session_cookie(&r);
    assert_eq!(anomalies(&g, "network")[0]["action"], json!("revoke"));
    assert_eq!(g.live_sessions(), 0);
    // The owner's next request, and /auth/user, say why.
    let r = reply(g.request(&from(orders(&b), UA1, IP1)));
    assert_error(&r, 401, "unauthenticated");
    assert!(
        json_body(&r)["error_description"]
            .as_str()
            .unwrap()
            .contains("another network"),
        "{r:?}"
    );
    let u = reply(g.request(&user_info(&b)));
    assert_error(&u, 401, "unauthenticated");
    assert_eq!(json_body(&u)["reason"], json!("anomaly:network"));
}

#[test]
fn a_new_user_agent_with_step_up_needs_a_fresh_sign_in_and_a_sign_in_clears_it() {
    let mut g = gate(|raw| raw["session"]["on_anomaly"] = json!({"user_agent": "step_up"}));
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    let r = reply(g.request(&from(orders(&b), UA2, IP1)));
    assert_error(&r, 401, "insufficient_user_authentication");
    assert_eq!(json_body(&r)["max_age"], json!(0));
    // The owner too, from its own browser: the session needs a fresh sign-in now.
    let r = reply(g.request(&from(orders(&b), UA1, IP1)));
    assert_error(&r, 401, "insufficient_user_authentication");
    assert_eq!(
        json_body(&reply(g.request(&user_info(&b))))["reauth_required"],
        json!(true)
    );
    // A fresh sign-in by the same user makes a session without the mark.
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    assert!(forwarded(g.request(&from(orders(&b), UA1, IP1))));
    assert_eq!(g.live_sessions(), 1);
}

#[test]
fn too_many_requests_in_the_window_is_a_rate_signal_once() {
    // 1 request per second over 60 s: the 61st request in the window crosses it.
    let mut g = gate(|_| {});
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    for _ in 0..100 {
        assert!(forwarded(g.request(&from(orders(&b), UA1, IP1))));
    }
    let rate = anomalies(&g, "rate");
    assert_eq!(rate.len(), 1, "once per window");
    assert_eq!(rate[0]["action"], json!("log"));
}

#[test]
fn rate_with_revoke_ends_the_session() {
    let mut g = gate(|raw| raw["session"]["on_anomaly"] = json!({"rate": "revoke"}));
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    let mut ended = false;
    for _ in 0..100 {
        match g.request(&from(orders(&b), UA1, IP1)) {
            Step::Forward { .. } => {}
            Step::Call { .. } | Step::Respond(_) => {
                ended = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(ended, "the session ended within 100 requests");
    assert_eq!(g.live_sessions(), 0);
}

#[test]
fn repeated_refusals_of_one_code_are_a_signal_and_step_up_marks_the_session() {
    let mut g = gate(|raw| raw["session"]["on_anomaly"] = json!({"refusals": "step_up"}));
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, BOB, UA1, IP1);
    // bob lacks orders:write: each POST is refused with insufficient_scope.
    for _ in 0..4 {
        let r = reply(g.request(&from(place_order(&b), UA1, IP1)));
        assert_error(&r, 403, "insufficient_scope");
    }
    let sig = anomalies(&g, "refusals");
    assert_eq!(sig.len(), 1, "{sig:?}");
    assert_eq!(sig[0]["code"], json!("insufficient_scope"));
    assert_eq!(sig[0]["action"], json!("step_up"));
    let r = reply(g.request(&from(orders(&b), UA1, IP1)));
    assert_error(&r, 401, "insufficient_user_authentication");
}

#[test]
fn repeated_refusals_with_revoke_end_the_session_on_the_refusal_itself() {
    let mut g = gate(|raw| raw["session"]["on_anomaly"] = json!({"refusals": "revoke"}));
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, BOB, UA1, IP1);
    for _ in 0..3 {
        assert_error(
            &reply(g.request(&from(place_order(&b), UA1, IP1))),
            403,
            "insufficient_scope",
        );
    }
    let mut step = g.request(&from(place_order(&b), UA1, IP1));
    let r = loop {
        match step {
            Step::Call { then, .. } => step = g.resume(*then, answer(200, "")),
            Step::Respond(r) => break r,
            other => panic!("{other:?}"),
        }
    };
    assert_error(&r, 403, "insufficient_scope");
    assert_clears_session_cookie(&r);
    assert_eq!(g.live_sessions(), 0);
    assert_eq!(
        json_body(&reply(g.request(&user_info(&b))))["reason"],
        json!("anomaly:refusals")
    );
}

#[test]
fn only_keyed_hashes_are_kept_and_logged() {
    let mut g = gate(|_| {});
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    let _ = g.request(&from(orders(&b), UA2, IP2));
    let stored: Vec<u8> = g
        .store
        .data
        .values()
        .flat_map(|v| v.iter().copied())
        .collect();
    let stored = String::from_utf8_lossy(&stored).to_string();
    for raw in [
        UA1,
        UA2,
        "203.0.113",
        "198.51.100",
        "legit-browser",
        "attacker",
    ] {
        assert!(!stored.contains(raw), "{raw} is in the store");
        assert!(
            !g.transcript.iter().any(|l| l.contains(raw)),
            "{raw} is in a log line or reply"
        );
    }
}

#[test]
fn a_binding_whose_key_left_the_ring_tells_nothing() {
    let mut g = gate(|_| {});
    let mut b = Browser::default();
    sign_in_from(&mut g, &mut b, ALICE, UA1, IP1);
    // Rotation: a new first key, the old one still verifying cookies; then the old one gone
    // would sign the user out anyway, so the middle state is the one to check.
    g.cfg = config_with(&format!("{K0},{K1}"), |raw| {
        raw["session"]["anomaly"] =
            json!({"window_s": 60, "max_requests_per_s": 1, "max_refusals": 3});
    });
    assert!(forwarded(g.request(&from(orders(&b), UA1, IP1))));
    assert!(forwarded(g.request(&from(orders(&b), UA2, IP2))));
    assert_eq!(anomalies(&g, "network").len(), 1, "k1 is still in the ring");
}

#[test]
fn anomaly_settings_are_checked_at_load() {
    let secrets = |n: &str| match n {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        _ => None,
    };
    for (patch, field) in [
        (
            json!({"anomaly": {"window_s": 0}}),
            "session.anomaly.window_s",
        ),
        (
            json!({"anomaly": {"client_address_header": "X-Forwarded-For"}}),
            "session.anomaly.client_address_header",
        ),
        (
            json!({"anomaly": {"trusted_hops": 99}}),
            "session.anomaly.trusted_hops",
        ),
        (json!({"on_anomaly": {"rate": "explode"}}), "rate"),
        (json!({"on_anomaly": {"speed": "log"}}), "speed"),
    ] {
        let mut raw = demo_config();
        for (k, v) in patch.as_object().unwrap() {
            raw["session"][k] = v.clone();
        }
        let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
        assert!(e.to_string().contains(field), "{e} names {field}");
    }
}

/// Drives a session of `user` into an anomaly of `kind` from the owner's own browser or a
/// thief's copy; returns the owner's browser.
fn trigger(g: &mut Gate, kind: &str) -> Browser {
    let mut b = Browser::default();
    let user = if kind == "refusals" { BOB } else { ALICE };
    sign_in_from(g, &mut b, user, UA1, IP1);
    let settle = |g: &mut Gate, req: Request| {
        let mut step = g.request(&req);
        while let Step::Call { then, .. } = step {
            step = g.resume(*then, answer(200, ""));
        }
    };
    match kind {
        "network" => settle(g, from(orders(&b), UA1, IP2)),
        "user_agent" => settle(g, from(orders(&b), UA2, IP1)),
        "rate" => {
            for _ in 0..61 {
                settle(g, from(orders(&b), UA1, IP1));
            }
        }
        "refusals" => {
            for _ in 0..4 {
                settle(g, from(place_order(&b), UA1, IP1));
            }
        }
        _ => unreachable!(),
    }
    b
}

#[test]
fn every_kind_with_every_action() {
    for kind in ["network", "user_agent", "rate", "refusals"] {
        for action in ["log", "step_up", "revoke"] {
            let mut g = gate(|raw| raw["session"]["on_anomaly"] = json!({ kind: action }));
            let b = trigger(&mut g, kind);
            let what = format!("{kind} -> {action}");
            let sig = anomalies(&g, kind);
            assert_eq!(sig.len(), 1, "{what}: one signal: {sig:?}");
            assert_eq!(sig[0]["action"], json!(action), "{what}");
            // The owner's next request, from the browser and network it signed in with.
            let next = g.request(&from(orders(&b), UA1, IP1));
            match action {
                "log" => {
                    assert!(forwarded(next), "{what}: the session goes on");
                    assert_eq!(g.live_sessions(), 1, "{what}");
                }
                "step_up" => {
                    let r = reply(next);
                    assert_error(&r, 401, "insufficient_user_authentication");
                    assert_eq!(json_body(&r)["max_age"], json!(0), "{what}");
                    assert_eq!(g.live_sessions(), 1, "{what}: kept, marked");
                }
                _ => {
                    assert_error(&reply(next), 401, "unauthenticated");
                    assert_eq!(g.live_sessions(), 0, "{what}: ended");
                    let u = reply(g.request(&user_info(&b)));
                    assert_eq!(
                        json_body(&u)["reason"],
                        json!(format!("anomaly:{kind}")),
                        "{what}"
                    );
                }
            }
        }
    }
}
