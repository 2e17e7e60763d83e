//! `bffgate-config explain`: the decision is the engine's, and the listed reasons agree with it
//! for every combination of route, method, CSRF, origin, session, scopes, claims and sign-in
//! level tried here (a check list that drifted from the engine would fail).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use bffgate::explain::{explain, Ask, Outcome};
use common::*;

fn cfg() -> Config {
    config_with(K1, |raw| {
        raw["routes"]["orders-export"] = export_policy();
        raw["routes"]["admin-report"] = json!({
            "access": "session", "audience": ORDERS, "scopes": ["orders:write"],
            "claims": {"preferred_username": ["alice"]}, "acr_values": [MFA], "mode": "report"
        });
        raw["routes"]["strict"] = json!({
            "access": "session", "audience": ORDERS, "csrf": "all-methods",
            "allowed_origins": ["https://partner.example"]
        });
    })
}

fn ask(route: &str, method: &str) -> Ask {
    Ask {
        route: route.into(),
        method: method.into(),
        session: true,
        ..Ask::default()
    }
}

#[test]
fn the_listed_reasons_agree_with_the_engine_decision_everywhere() {
    let cfg = cfg();
    let routes = [
        "static",
        "orders-read",
        "orders-write",
        "profile",
        "admin",
        "orders-export",
        "admin-report",
        "strict",
        "no-such-route",
    ];
    let header_sets: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("X-CSRF", "1")],
        vec![("X-CSRF", "1"), ("Origin", ORIGIN)],
        vec![("X-CSRF", "1"), ("Origin", "https://evil.example")],
        vec![("X-CSRF", "1"), ("Origin", "https://partner.example")],
        vec![("X-CSRF", "1"), ("Sec-Fetch-Site", "cross-site")],
    ];
    let users: Vec<Value> = vec![
        json!({}),
        json!({"sub": "a", "preferred_username": "alice"}),
        json!({"sub": "b", "preferred_username": "bob"}),
        json!({"sub": "c", "preferred_username": ["carol", "alice"]}),
    ];
    let scope_sets = [
        None,
        Some(""),
        Some("orders:read"),
        Some("orders:read orders:write profile"),
    ];
    let levels = [
        (None, None),
        (Some(MFA), Some(10)),
        (Some(MFA), Some(3_000)),
        (Some("urn:bffgate:demo:pwd"), Some(10)),
    ];
    let mut tried = 0;
    let mut decisions = std::collections::BTreeSet::new();
    for route in routes {
        for method in ["GET", "POST", "DELETE"] {
            for headers in &header_sets {
                for (ui, claims) in users.iter().enumerate() {
                    for scopes in scope_sets {
                        for (acr, age) in levels {
                            for session in [true, false] {
                                // Keep the product bounded: vary users, scopes and levels only
                                // for requests with a session and the usual headers.
                                if !session && (ui > 0 || scopes.is_some() || acr.is_some()) {
                                    continue;
                                }
                                let mut a = ask(route, method);
                                a.session = session;
                                a.headers = headers
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                                    .collect();
                                a.claims = claims.as_object().unwrap().clone();
                                a.scopes = scopes
                                    .map(|s| s.split_whitespace().map(str::to_string).collect());
                                a.acr = acr.map(str::to_string);
                                a.auth_age_s = age;
                                let e = explain(&cfg, &a).unwrap();
                                tried += 1;
                                decisions.insert(e.decision.clone());
                                let reported: Vec<&str> = e
                                    .checks
                                    .iter()
                                    .filter_map(|c| match c.outcome {
                                        Outcome::Report(code) => Some(code),
                                        _ => None,
                                    })
                                    .collect();
                                match e.first_refusal() {
                                    Some(c) => {
                                        let Outcome::Refuse(code) = c.outcome else {
                                            unreachable!()
                                        };
                                        assert_eq!(
                                            e.decision,
                                            format!("deny:{code}"),
                                            "{route} {method} {headers:?} {claims} {scopes:?} {acr:?}: {}",
                                            e.to_text()
                                        );
                                    }
                                    None => {
                                        let want =
                                            if route == "static" { "public" } else { "allow" };
                                        assert_eq!(
                                            e.decision, want,
                                            "{route} {method} {headers:?} {claims} {scopes:?} {acr:?}: {}",
                                            e.to_text()
                                        );
                                        let logged: Vec<&str> = e
                                            .audit
                                            .iter()
                                            .filter(|v| v["event"] == json!("policy_report"))
                                            .filter_map(|v| v["would_refuse"].as_str())
                                            .collect();
                                        assert_eq!(logged, reported, "{}", e.to_text());
                                    }
                                }
                                if route != "admin-report" {
                                    assert!(reported.is_empty(), "{}", e.to_text());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(tried > 1000, "{tried}");
    // The matrix reaches every kind of decision.
    for d in [
        "allow",
        "public",
        "deny:csrf",
        "deny:unauthenticated",
        "deny:forbidden",
        "deny:insufficient_scope",
        "deny:insufficient_user_authentication",
    ] {
        assert!(decisions.contains(d), "{d} never decided: {decisions:?}");
    }
}

#[test]
fn every_failed_check_is_listed_not_only_the_first() {
    let cfg = cfg();
    let mut a = ask("admin-report", "POST");
    a.claims = json!({"preferred_username": "bob"})
        .as_object()
        .unwrap()
        .clone();
    a.scopes = Some(vec!["orders:read".into()]);
    let e = explain(&cfg, &a).unwrap();
    let outcomes: Vec<(String, String)> = e
        .checks
        .iter()
        .map(|c| (c.name.clone(), c.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("route".to_string(), "pass".to_string()),
            ("csrf".into(), "refuse:csrf".into()),
            ("session".into(), "pass".into()),
            (
                "claims.preferred_username".into(),
                "report:forbidden".into()
            ),
            (
                "sign_in".into(),
                "report:insufficient_user_authentication".into()
            ),
            ("audience".into(), "pass".into()),
            (
                "scope.orders:write".into(),
                "report:insufficient_scope".into()
            ),
        ]
    );
    assert_eq!(e.decision, "deny:csrf");
    assert!(e.checks[4].why.contains(MFA), "{}", e.checks[4].why);
    assert!(e.to_text().contains("decision: deny:csrf (403)"));
}

#[test]
fn the_path_the_filter_took_is_named() {
    let cfg = cfg();
    let e = explain(&cfg, &ask("orders-read", "GET")).unwrap();
    assert_eq!(e.path.as_deref(), Some("fast"));
    let e = explain(&cfg, &ask("orders-export", "GET")).unwrap();
    assert_eq!(e.path.as_deref(), Some("full (step_up)"));
    let e = explain(&cfg, &ask("static", "GET")).unwrap();
    assert_eq!(e.path, None);
}

#[test]
fn a_header_the_filter_does_not_read_or_a_bad_method_is_refused_by_name() {
    let cfg = cfg();
    let mut a = ask("orders-read", "GET");
    a.headers = vec![("X-Forwarded-Host".into(), "evil".into())];
    let err = explain(&cfg, &a).unwrap_err();
    assert!(err.contains("x-forwarded-host"), "{err}");
    let err = explain(&cfg, &ask("orders-read", "GE T")).unwrap_err();
    assert!(err.contains("--method"), "{err}");
}

/// Runs `bffgate-config explain` on the shipped settings and policies with `args`.
fn explain_tool(args: &[&str]) -> std::process::Output {
    let shipped = [
        "explain",
        "--settings",
        "envoy/bffgate.yaml",
        "--policies",
        "policies",
    ];
    std::process::Command::new(env!("CARGO_BIN_EXE_bffgate-config"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(shipped.iter().chain(args))
        .output()
        .unwrap()
}

#[test]
fn the_command_line_tool_explains_the_shipped_policies() {
    let out = explain_tool(&[
        "--route",
        "orders-write",
        "--method",
        "POST",
        "--header",
        "X-CSRF: 1",
        "--scopes",
        "orders:read",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], json!("deny:insufficient_scope"));
    assert_eq!(v["status"], json!(403));
    let last = v["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["check"], json!("scope.orders:write"));
    assert_eq!(last["outcome"], json!("refuse:insufficient_scope"));
    // A malformed option is refused by name.
    let out = explain_tool(&["--route", "x", "--method", "GET", "--claims", "[1]"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--claims"));
}
