//! Report mode (`mode: report` on a route policy): the session, audience, token swap and CSRF
//! are enforced as usual, but a failed scope, claim or sign-in-level check only logs
//! `policy_report` and counts `bffgate_policy_report_<code>`; the request goes on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::*;

/// The demo configuration with `orders-write`, `admin` and a step-up route in report mode
/// (`enforce` keeps them as shipped).
fn gate(mode: &str) -> Gate {
    let mut g = Gate::with_config(config_with(K1, |raw| {
        for r in ["orders-write", "admin"] {
            raw["routes"][r]["mode"] = json!(mode);
        }
        raw["routes"]["orders-export"] = export_policy();
        raw["routes"]["orders-export"]["mode"] = json!(mode);
    }));
    g.token_ttl = 3600;
    g
}

fn export(b: &Browser) -> Request {
    api(b, "GET", "/api/orders/export", "orders-export")
}

#[test]
fn a_missing_scope_is_reported_and_the_request_goes_on_with_the_token() {
    let mut g = gate("report");
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, BOB); // orders:read only; orders-write needs orders:write
    let (auth, _) = forward(g.request(&place_order(&b)));
    assert_eq!(
        auth,
        Some(issued.access),
        "the session's token is forwarded"
    );
    let reports = audit_events(&g, "policy_report");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["would_refuse"], json!("insufficient_scope"));
    assert_eq!(reports[0]["route"], json!("orders-write"));
    assert!(reports[0]["session"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(audit_events(&g, "denied").is_empty());
    // Every such request is reported (the fast path leaves it to the full path).
    forward(g.request(&place_order(&b)));
    assert_eq!(audit_events(&g, "policy_report").len(), 2);
}

#[test]
fn the_same_request_is_refused_when_the_route_enforces() {
    let mut g = gate("enforce");
    let mut b = Browser::default();
    g.sign_in(&mut b, BOB);
    assert_error(
        &reply(g.request(&place_order(&b))),
        403,
        "insufficient_scope",
    );
    assert_error(&reply(g.request(&admin(&b))), 403, "forbidden");
    assert_error(
        &reply(g.request(&export(&b))),
        401,
        "insufficient_user_authentication",
    );
    assert!(audit_events(&g, "policy_report").is_empty());
    assert_eq!(audit_events(&g, "denied").len(), 3);
}

#[test]
fn a_claim_and_a_sign_in_level_are_reported_not_enforced() {
    let mut g = gate("report");
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, BOB); // not alice; no acr
    let (auth, _) = forward(g.request(&admin(&b)));
    assert_eq!(auth.as_deref(), Some(issued.access.as_str()));
    let (auth, _) = forward(g.request(&export(&b)));
    assert_eq!(auth.as_deref(), Some(issued.access.as_str()));
    let codes: Vec<Value> = audit_events(&g, "policy_report")
        .iter()
        .map(|v| json!([v["route"], v["would_refuse"]]))
        .collect();
    assert_eq!(
        codes,
        vec![
            json!(["admin", "forbidden"]),
            json!(["orders-export", "insufficient_user_authentication"])
        ]
    );
}

#[test]
fn a_request_that_passes_is_not_reported() {
    let mut g = gate("report");
    let mut b = Browser::default();
    let issued = g.sign_in(&mut b, ALICE);
    let (auth, _) = forward(g.request(&place_order(&b)));
    assert_eq!(auth, Some(issued.access.clone()));
    let (auth, _) = forward(g.request(&admin(&b)));
    assert_eq!(auth, Some(issued.access));
    assert!(audit_events(&g, "policy_report").is_empty());
}

#[test]
fn report_mode_still_enforces_the_session_and_csrf() {
    let mut g = gate("report");
    let anonymous = Browser::default();
    assert_error(
        &reply(g.request(&place_order(&anonymous))),
        401,
        "unauthenticated",
    );
    let mut b = Browser::default();
    g.sign_in(&mut b, BOB);
    let mut no_csrf = place_order(&b);
    no_csrf.csrf = None;
    assert_error(&reply(g.request(&no_csrf)), 403, "csrf");
    let mut cross = place_order(&b);
    cross.origin = Some("https://evil.example".into());
    assert_error(&reply(g.request(&cross)), 403, "csrf");
    assert!(audit_events(&g, "policy_report").is_empty());
}

#[test]
fn a_report_after_a_token_renewal_is_made_once() {
    let mut g = gate("report");
    g.token_ttl = 60;
    let mut b = Browser::default();
    g.sign_in(&mut b, BOB);
    g.advance(61); // the token is due: the request renews it, then decides
    let (_, then) = call(g.request(&place_order(&b)));
    let renewed = g.refresh_answer("openid offline_access orders:read", false);
    let (auth, _) = forward(g.resume(then, renewed.result()));
    assert_eq!(auth, Some(renewed.access));
    let reports = audit_events(&g, "policy_report");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["would_refuse"], json!("insufficient_scope"));
}

#[test]
fn reports_are_not_refusals_for_the_anomaly_signals() {
    for mode in ["report", "enforce"] {
        let mut g = Gate::with_config(config_with(K1, |raw| {
            raw["routes"]["orders-write"]["mode"] = json!(mode);
            raw["session"]["anomaly"] = json!({"max_refusals": 2});
            raw["session"]["on_anomaly"] = json!({"refusals": "log"});
        }));
        g.token_ttl = 3600;
        let mut b = Browser::default();
        let issued = g.sign_in(&mut b, BOB);
        for _ in 0..5 {
            g.request(&place_order(&b));
        }
        let anomalies = audit_events(&g, "session_anomaly");
        if mode == "report" {
            assert!(anomalies.is_empty(), "{anomalies:?}");
        } else {
            assert_eq!(anomalies[0]["kind"], json!("refusals"), "{anomalies:?}");
        }
        let (auth, _) = forward(g.request(&orders(&b)));
        assert_eq!(auth, Some(issued.access), "the session lives on");
    }
}

#[test]
fn the_counters_of_reports_exist_from_the_start() {
    let all = bffgate::audit::all_counters();
    for code in [
        "insufficient_scope",
        "forbidden",
        "insufficient_user_authentication",
    ] {
        let name = format!("bffgate_policy_report_{code}");
        assert!(all.contains(&name), "{name}");
    }
    let e = bffgate::audit::Event::PolicyReport {
        code: "forbidden",
        route: "admin".into(),
        session: "h".into(),
    };
    assert_eq!(
        e.metric().as_deref(),
        Some("bffgate_policy_report_forbidden")
    );
}

#[test]
fn report_mode_is_refused_where_it_means_nothing_or_is_misspelt() {
    let secrets = secrets_with(K1);
    let mut raw = demo_config();
    raw["routes"]["static"]["mode"] = json!("report");
    let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
    assert!(e.to_string().contains("routes.static.mode"), "{e}");
    let mut raw = demo_config();
    raw["routes"]["admin"]["mode"] = json!("shadow");
    let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
    assert!(e.to_string().contains("mode"), "{e}");
}
