//! `discovery::parse` against real providers' discovery documents (tests/data/discovery, see its
//! README) and against every way a document can be wrong.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bffgate::config::split_url;
use bffgate::discovery::{
    parse, split_endpoint, well_known_path, well_known_url, Discovered, DiscoveryError, MAX_BODY,
    SHOWN,
};
use serde_json::{json, Map, Value};

/// `(file, issuer, where its document lives)`.
const FIXTURES: &[(&str, &str, &str)] = &[
    (
        "oidc-provider",
        "http://localhost:9000",
        "/.well-known/openid-configuration",
    ),
    (
        "glewlwyd",
        "http://localhost:9100/api/oidc",
        "/api/oidc/.well-known/openid-configuration",
    ),
    (
        "keycloak",
        "https://sso.example.com/realms/bffgate",
        "/realms/bffgate/.well-known/openid-configuration",
    ),
    (
        "entra-v2",
        "https://login.microsoftonline.com/3f2b7a1c-5d4e-4c8b-9a6f-1e2d3c4b5a69/v2.0",
        "/3f2b7a1c-5d4e-4c8b-9a6f-1e2d3c4b5a69/v2.0/.well-known/openid-configuration",
    ),
    (
        "auth0",
        "https://bffgate-demo.eu.auth0.com/",
        "/.well-known/openid-configuration",
    ),
    (
        "okta",
        "https://dev-31337.okta.com/oauth2/default",
        "/oauth2/default/.well-known/openid-configuration",
    ),
    (
        "google",
        "https://accounts.google.com",
        "/.well-known/openid-configuration",
    ),
    (
        "lemonldap-ng",
        "https://auth.example.com",
        "/.well-known/openid-configuration",
    ),
];

const REQUIRED: &[&str] = &[
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "response_types_supported",
    "id_token_signing_alg_values_supported",
];

const URL_FIELDS: &[&str] = &[
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "revocation_endpoint",
    "end_session_endpoint",
    "userinfo_endpoint",
    "introspection_endpoint",
    "pushed_authorization_request_endpoint",
];

const LIST_FIELDS: &[&str] = &[
    "token_endpoint_auth_methods_supported",
    "id_token_signing_alg_values_supported",
    "code_challenge_methods_supported",
    "scopes_supported",
    "grant_types_supported",
    "response_types_supported",
];

const FLAG_FIELDS: &[&str] = &[
    "backchannel_logout_supported",
    "backchannel_logout_session_supported",
    "frontchannel_logout_supported",
    "frontchannel_logout_session_supported",
    "authorization_response_iss_parameter_supported",
    "require_pushed_authorization_requests",
];

fn body(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/discovery/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn doc(name: &str) -> Map<String, Value> {
    match serde_json::from_slice(&body(name)).unwrap() {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn ok(name: &str) -> Discovered {
    let (_, issuer, _) = FIXTURES.iter().find(|(n, _, _)| *n == name).unwrap();
    parse(&body(name), issuer).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses `m` with the issuer it names (or a placeholder when it names none).
fn parse_map(m: &Map<String, Value>) -> Result<Discovered, DiscoveryError> {
    let issuer = m.get("issuer").and_then(Value::as_str).unwrap_or("x");
    parse(&serde_json::to_vec(m).unwrap(), issuer)
}

fn with(name: &str, field: &str, v: Value) -> Map<String, Value> {
    let mut m = doc(name);
    m.insert(field.into(), v);
    m
}

#[test]
fn every_fixture_parses_with_its_issuer() {
    for (name, issuer, path) in FIXTURES {
        let d = ok(name);
        assert_eq!(d.issuer, *issuer, "{name}");
        // The document lives where well_known_path says it does, on the issuer's host.
        let (authority, p) = well_known_path(issuer).unwrap();
        assert_eq!(p, *path, "{name}");
        assert_eq!(Some(authority), split_endpoint(issuer).map(|(a, _)| a));
        // Every endpoint splits for a callout, and the same way as the configuration's parser.
        for (field, url) in d.callout_endpoints() {
            let (a, p) = split_endpoint(url).unwrap_or_else(|| panic!("{name} {field}"));
            let (_, ca, cp) = split_url(url).unwrap();
            assert_eq!((a, p), (ca, cp), "{name} {field}");
            assert!(p.starts_with('/'));
        }
        assert!(d.response_types_supported.iter().any(|t| t == "code"));
        assert!(d
            .id_token_signing_alg_values_supported
            .iter()
            .any(|a| bffgate::jose::ALGS.contains(&a.as_str())));
        assert!(
            d.code_challenge_methods_supported.is_empty()
                || d.code_challenge_methods_supported
                    .iter()
                    .any(|m| m == "S256")
        );
        assert!(d.supports_auth_method("client_secret_basic"), "{name}");
        // Parsing is a function of the document: the same body parses to the same value.
        assert_eq!(parse(&body(name), issuer).unwrap(), d);
    }
}

#[test]
fn what_each_provider_offers() {
    let kc = ok("keycloak");
    assert_eq!(
        kc.token_endpoint,
        "https://sso.example.com/realms/bffgate/protocol/openid-connect/token"
    );
    assert_eq!(
        kc.revocation_endpoint.as_deref(),
        Some("https://sso.example.com/realms/bffgate/protocol/openid-connect/revoke")
    );
    assert!(kc.backchannel_logout_supported && kc.backchannel_logout_session_supported);
    assert!(kc.frontchannel_logout_supported && kc.authorization_response_iss_parameter_supported);
    assert!(!kc.require_pushed_authorization_requests);
    assert!(kc.pushed_authorization_request_endpoint.is_some());
    assert_eq!(kc.callout_endpoints().len(), 6);

    // Entra: no revocation, userinfo on Graph, PKCE not advertised (but enforced), no grant list.
    let entra = ok("entra-v2");
    assert_eq!(entra.revocation_endpoint, None);
    assert_eq!(
        entra.userinfo_endpoint.as_deref(),
        Some("https://graph.microsoft.com/oidc/userinfo")
    );
    assert!(entra.code_challenge_methods_supported.is_empty());
    assert_eq!(
        entra.grant_types_supported,
        ["authorization_code", "implicit"],
        "the spec's default"
    );
    assert!(entra.frontchannel_logout_supported && !entra.backchannel_logout_supported);

    let auth0 = ok("auth0");
    assert_eq!(
        auth0.end_session_endpoint.as_deref(),
        Some("https://bffgate-demo.eu.auth0.com/oidc/logout")
    );
    assert!(auth0.backchannel_logout_supported);
    assert_eq!(auth0.scopes_supported.len(), 14);

    let okta = ok("okta");
    assert_eq!(okta.code_challenge_methods_supported, ["S256"]);
    assert!(okta.supports_auth_method("client_secret_post"));
    assert!(!okta.backchannel_logout_supported);

    // Google: three hosts behind one issuer.
    let g = ok("google");
    let hosts: Vec<&str> = g
        .callout_endpoints()
        .iter()
        .map(|(_, u)| split_endpoint(u).unwrap().0)
        .collect();
    assert_eq!(
        hosts,
        [
            "oauth2.googleapis.com",
            "www.googleapis.com",
            "oauth2.googleapis.com",
            "openidconnect.googleapis.com"
        ]
    );
    assert_eq!(g.end_session_endpoint, None);

    let ll = ok("lemonldap-ng");
    assert!(ll.backchannel_logout_supported && ll.frontchannel_logout_session_supported);
    assert_eq!(ll.revocation_endpoint, None);

    // Glewlwyd 2.7 does back-channel logout but does not say so in its metadata.
    let gw = ok("glewlwyd");
    assert!(!gw.backchannel_logout_supported);
    assert_eq!(
        gw.end_session_endpoint.as_deref(),
        Some("http://localhost:9100/api/oidc/end_session")
    );
    assert_eq!(
        gw.token_endpoint_auth_methods_supported,
        ["client_secret_basic", "client_secret_post"]
    );

    let op = ok("oidc-provider");
    assert_eq!(op.token_endpoint, "http://localhost:9000/token");
    assert_eq!(
        split_endpoint(&op.jwks_uri),
        Some(("localhost:9000", "/jwks"))
    );
    assert!(op.backchannel_logout_supported && op.authorization_response_iss_parameter_supported);
}

#[test]
fn a_trailing_slash_difference_is_refused_naming_both_values() {
    // Auth0's issuer ends in `/`; configured without it, and Keycloak's the other way round.
    for (name, configured, published) in [
        (
            "auth0",
            "https://bffgate-demo.eu.auth0.com",
            "https://bffgate-demo.eu.auth0.com/",
        ),
        (
            "keycloak",
            "https://sso.example.com/realms/bffgate/",
            "https://sso.example.com/realms/bffgate",
        ),
    ] {
        let e = parse(&body(name), configured).unwrap_err();
        assert_eq!(
            e,
            DiscoveryError::IssuerMismatch {
                found: published.into(),
                expected: configured.into()
            }
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "the discovery document names issuer \"{published}\" but provider.issuer is \
                 \"{configured}\""
            )),
            "{msg}"
        );
        assert!(msg.contains("trailing `/`"), "{msg}");
    }
    // Either spelling fetches the same document (no `//`).
    assert_eq!(
        well_known_path("https://bffgate-demo.eu.auth0.com/"),
        well_known_path("https://bffgate-demo.eu.auth0.com")
    );
    assert_eq!(
        well_known_url("https://sso.example.com/realms/bffgate/").as_deref(),
        Some("https://sso.example.com/realms/bffgate/.well-known/openid-configuration")
    );
}

#[test]
fn other_issuer_mismatches() {
    // Entra's multi-tenant document names a template, never a real issuer.
    let e = parse(
        &body("entra-common"),
        "https://login.microsoftonline.com/common/v2.0",
    )
    .unwrap_err();
    assert!(
        matches!(&e, DiscoveryError::IssuerMismatch { found, .. } if found.contains("{tenantid}"))
    );
    assert!(!e.to_string().contains("trailing"));
    // Case, scheme and host are not normalised either.
    for configured in [
        "https://ACCOUNTS.google.com",
        "http://accounts.google.com",
        "https://accounts.google.com:443",
        "accounts.google.com",
        "",
    ] {
        assert!(
            matches!(
                parse(&body("google"), configured),
                Err(DiscoveryError::IssuerMismatch { .. })
            ),
            "{configured}"
        );
    }
    // Another provider's document under our issuer.
    assert!(matches!(
        parse(&body("okta"), "https://accounts.google.com"),
        Err(DiscoveryError::IssuerMismatch { .. })
    ));
}

#[test]
fn each_required_member_missing_or_null_is_named() {
    for (name, _, _) in FIXTURES {
        for field in REQUIRED {
            let issuer = doc(name)["issuer"].as_str().unwrap().to_string();
            for absent in [None, Some(Value::Null)] {
                let mut m = doc(name);
                match &absent {
                    None => m.remove(*field),
                    Some(v) => m.insert(field.to_string(), v.clone()),
                };
                let e = parse(&serde_json::to_vec(&m).unwrap(), &issuer).unwrap_err();
                assert_eq!(e, DiscoveryError::Missing(field), "{name} {field}");
                assert_eq!(
                    e.to_string(),
                    format!("the discovery document has no `{field}` (required)")
                );
            }
        }
    }
}

#[test]
fn bad_endpoint_urls_are_refused_with_the_member_named() {
    let long = format!("https://sso.example.com/{}", "a".repeat(3000));
    let bad = [
        "",
        "/protocol/openid-connect/token",
        "sso.example.com/token",
        "ftp://sso.example.com/token",
        "javascript:alert(1)",
        "javascript://sso.example.com/%0aalert(1)",
        "https://",
        "https:///token",
        "https://user:pw@sso.example.com/token",
        "https://sso.example.com/token#frag",
        "https://sso.example.com/to ken",
        "https://sso.example.com/token\r\nx-injected: 1",
        "https://sso.example.com\t/token",
        "https://sso.exämple.com/token",
        "https://sso.example.com/tökén",
        "https://sso.example.com:/token",
        "https://sso.example.com:44x/token",
        "https://sso.example.com:123456/token",
        "https://sso.example.com:65536/token",
        "https://sso.example.com:+443/token",
        "https://sso.example.com?x=1",
        "https://[]/token",
        "https://a%2eb/token",
        "https://a,b/token",
        long.as_str(),
    ];
    for field in URL_FIELDS {
        for value in bad {
            let m = with("keycloak", field, json!(value));
            match parse_map(&m) {
                Err(DiscoveryError::BadUrl {
                    field: f, value: v, ..
                }) => {
                    assert_eq!(f, *field);
                    assert!(v.chars().count() <= SHOWN + 1);
                    assert!(!v.chars().any(char::is_control));
                }
                other => panic!("{field} = {value:?}: {other:?}"),
            }
            assert_eq!(split_endpoint(value), None, "{value:?}");
        }
        // Not a string at all.
        for v in [
            json!(1),
            json!(["https://a/b"]),
            json!({"url": "https://a/b"}),
            json!(true),
        ] {
            assert_eq!(
                parse_map(&with("keycloak", field, v)).unwrap_err(),
                DiscoveryError::WrongType {
                    field,
                    expected: "a string"
                }
            );
        }
    }
    // A query is fine on a back-channel endpoint, not on the authorization endpoint.
    let m = with(
        "keycloak",
        "token_endpoint",
        json!("https://sso.example.com/token?p=b2c_1_signin"),
    );
    assert_eq!(
        parse_map(&m).unwrap().token_endpoint,
        "https://sso.example.com/token?p=b2c_1_signin"
    );
    let m = with(
        "keycloak",
        "authorization_endpoint",
        json!("https://sso.example.com/auth?p=b2c_1_signin"),
    );
    let e = parse_map(&m).unwrap_err();
    assert!(e.to_string().contains("has a query"), "{e}");
    // Ports and IP literals are hosts.
    for good in [
        "https://sso.example.com:8443/token",
        "https://10.0.0.1/token",
        "https://[2001:db8::1]:8443/token",
        "https://[::1]/token",
        "https://sso_internal.example.com/token",
    ] {
        let d = parse_map(&with("keycloak", "token_endpoint", json!(good))).unwrap();
        assert_eq!(d.token_endpoint, good);
        assert_eq!(
            split_endpoint(good),
            split_url(good).map(|(_, a, p)| (a, p)),
            "{good}"
        );
    }
}

#[test]
fn an_https_issuer_s_endpoints_are_never_http() {
    for field in URL_FIELDS {
        let m = with("keycloak", field, json!("http://sso.example.com/x"));
        match parse_map(&m) {
            Err(e @ DiscoveryError::BadUrl { .. }) => {
                assert!(e.to_string().contains("not https"), "{e}");
                assert!(e.to_string().contains(field), "{e}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // An http issuer (a local provider) may have https endpoints as well as http ones.
    let m = with(
        "oidc-provider",
        "end_session_endpoint",
        json!("https://localhost:9443/session/end"),
    );
    assert!(parse_map(&m).is_ok());
}

#[test]
fn what_is_not_a_json_object_is_refused() {
    for b in [
        &b""[..],
        b"   ",
        b"<html><body>502 Bad Gateway</body></html>",
        b"{",
        b"{\"issuer\":\"https://accounts.google.com\",}",
        b"{\"issuer\":\"https://accounts.google.com\"} {}",
        b"\xff\xfe{}",
        b"{\"issuer\":\"\xc3\x28\"}",
    ] {
        let e = parse(b, "https://accounts.google.com").unwrap_err();
        assert!(matches!(e, DiscoveryError::NotJson(_)), "{b:?}: {e:?}");
        assert!(e
            .to_string()
            .starts_with("the discovery document is not JSON: "));
    }
    for b in [
        &b"null"[..],
        b"[]",
        b"[{}]",
        b"\"https://x\"",
        b"42",
        b"true",
    ] {
        assert_eq!(
            parse(b, "https://accounts.google.com").unwrap_err(),
            DiscoveryError::NotObject
        );
    }
    // A byte order mark is skipped; deep nesting is an error, not a stack overflow.
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend(body("google"));
    assert!(parse(&bom, "https://accounts.google.com").is_ok());
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    assert!(matches!(
        parse(deep.as_bytes(), "x"),
        Err(DiscoveryError::NotJson(_))
    ));
}

#[test]
fn the_size_limit_is_64_kib() {
    let issuer = "https://accounts.google.com";
    let mut b = body("google");
    b.resize(MAX_BODY, b' ');
    assert!(parse(&b, issuer).is_ok(), "exactly {MAX_BODY} bytes");
    b.push(b' ');
    let e = parse(&b, issuer).unwrap_err();
    assert_eq!(e, DiscoveryError::TooLarge { len: MAX_BODY + 1 });
    assert_eq!(
        e.to_string(),
        "the discovery document is 65537 bytes, more than the 65536 accepted"
    );
}

#[test]
fn wrong_types_are_refused_with_the_member_named() {
    for field in LIST_FIELDS {
        for v in [
            json!("S256"),
            json!(1),
            json!({"0": "S256"}),
            json!(["S256", 1]),
            json!(["S256", null]),
            json!([["S256"]]),
            json!(true),
        ] {
            let e = parse_map(&with("okta", field, v.clone())).unwrap_err();
            assert_eq!(
                e,
                DiscoveryError::WrongType {
                    field,
                    expected: "an array of strings"
                },
                "{field} = {v}"
            );
            assert_eq!(
                e.to_string(),
                format!("`{field}` in the discovery document must be an array of strings")
            );
        }
    }
    for field in FLAG_FIELDS {
        for v in [json!("true"), json!(1), json!([true]), json!({})] {
            assert_eq!(
                parse_map(&with("okta", field, v)).unwrap_err(),
                DiscoveryError::WrongType {
                    field,
                    expected: "a boolean"
                }
            );
        }
    }
    let m = with(
        "okta",
        "issuer",
        json!(["https://dev-31337.okta.com/oauth2/default"]),
    );
    assert_eq!(
        parse(
            &serde_json::to_vec(&m).unwrap(),
            "https://dev-31337.okta.com/oauth2/default"
        )
        .unwrap_err(),
        DiscoveryError::WrongType {
            field: "issuer",
            expected: "a string"
        }
    );
}

#[test]
fn pkce_without_s256_is_refused() {
    for v in [json!(["plain"]), json!([]), json!(["s256", "S384"])] {
        let e = parse_map(&with(
            "google",
            "code_challenge_methods_supported",
            v.clone(),
        ))
        .unwrap_err();
        assert!(matches!(e, DiscoveryError::S256Unsupported { .. }), "{v}");
        let msg = e.to_string();
        assert!(
            msg.contains("lacks S256") && msg.contains("always uses PKCE with S256"),
            "{msg}"
        );
    }
    let e = parse_map(&with(
        "google",
        "code_challenge_methods_supported",
        json!(["plain"]),
    ))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the provider's code_challenge_methods_supported [plain] lacks S256, and bffgate always \
         uses PKCE with S256"
    );
    // Absent: accepted (Entra and Auth0-like providers enforce PKCE without saying so).
    let mut m = doc("google");
    m.remove("code_challenge_methods_supported");
    assert!(parse_map(&m)
        .unwrap()
        .code_challenge_methods_supported
        .is_empty());
}

#[test]
fn lists_without_what_the_code_flow_needs_are_refused() {
    for (field, v, needs) in [
        (
            "response_types_supported",
            json!(["id_token", "token"]),
            "`code`",
        ),
        ("response_types_supported", json!([]), "`code`"),
        (
            "grant_types_supported",
            json!(["implicit", "client_credentials"]),
            "`authorization_code`",
        ),
        (
            "id_token_signing_alg_values_supported",
            json!(["EdDSA", "ES512", "ES256K", "none"]),
            "one of RS256",
        ),
    ] {
        let e = parse_map(&with("okta", field, v)).unwrap_err();
        assert!(
            matches!(e, DiscoveryError::Unsupported { field: f, .. } if f == field),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(field) && e.to_string().contains(needs),
            "{e}"
        );
    }
    // Any one verified algorithm alone is enough (HS512: LemonLDAP::NG's default).
    for alg in ["ES256", "PS384", "HS512"] {
        let d = parse_map(&with(
            "okta",
            "id_token_signing_alg_values_supported",
            json!([alg]),
        ))
        .unwrap();
        assert_eq!(d.id_token_signing_alg_values_supported, [alg]);
    }
}

#[test]
fn absent_members_take_the_spec_defaults_and_unknown_ones_are_ignored() {
    let minimal = json!({
        "issuer": "https://idp.example",
        "authorization_endpoint": "https://idp.example/authorize",
        "token_endpoint": "https://idp.example/token",
        "jwks_uri": "https://idp.example/jwks",
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "revocation_endpoint": null,
        "backchannel_logout_supported": null,
        "x-vendor": {"nested": [1, 2, {"a": null}]},
        "tenant_region_scope": null,
        "mtls_endpoint_aliases": {"token_endpoint": "not a url"},
        "check_session_iframe": 17,
    });
    let d = parse(minimal.to_string().as_bytes(), "https://idp.example").unwrap();
    assert_eq!(
        d,
        Discovered {
            issuer: "https://idp.example".into(),
            authorization_endpoint: "https://idp.example/authorize".into(),
            token_endpoint: "https://idp.example/token".into(),
            jwks_uri: "https://idp.example/jwks".into(),
            revocation_endpoint: None,
            end_session_endpoint: None,
            userinfo_endpoint: None,
            introspection_endpoint: None,
            pushed_authorization_request_endpoint: None,
            backchannel_logout_supported: false,
            backchannel_logout_session_supported: false,
            frontchannel_logout_supported: false,
            frontchannel_logout_session_supported: false,
            authorization_response_iss_parameter_supported: false,
            require_pushed_authorization_requests: false,
            token_endpoint_auth_methods_supported: vec!["client_secret_basic".into()],
            id_token_signing_alg_values_supported: vec!["RS256".into()],
            code_challenge_methods_supported: vec![],
            scopes_supported: vec![],
            grant_types_supported: vec!["authorization_code".into(), "implicit".into()],
            response_types_supported: vec!["code".into()],
        }
    );
    assert!(d.supports_auth_method("client_secret_basic"));
    assert!(!d.supports_auth_method("client_secret_post"));
    assert_eq!(
        d.callout_endpoints(),
        [
            ("token_endpoint", "https://idp.example/token"),
            ("jwks_uri", "https://idp.example/jwks")
        ]
    );
}

#[test]
fn errors_quote_little_of_the_document_and_no_control_characters() {
    let hostile = format!(
        "https://evil.example/\u{1b}[31m\r\n\u{202e}\u{200b}{}\u{7}",
        "x".repeat(10_000)
    );
    for field in ["issuer", "token_endpoint"] {
        let m = with("keycloak", field, json!(hostile));
        let e = parse(
            &serde_json::to_vec(&m).unwrap(),
            "https://sso.example.com/realms/bffgate",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.chars().count() < SHOWN + 250, "{} chars", msg.len());
        assert!(
            !msg.chars()
                .any(|c| c.is_control() || c == '\u{202e}' || c == '\u{200b}'),
            "{msg:?}"
        );
        assert!(msg.contains("https://evil.example/[31m"), "{msg}");
        assert!(msg.contains('…'));
    }
    let many: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    let e = parse_map(&with(
        "google",
        "code_challenge_methods_supported",
        json!(many),
    ))
    .unwrap_err();
    assert!(e.to_string().chars().count() < SHOWN + 150);
}

#[test]
fn split_endpoint_and_well_known_path() {
    assert_eq!(
        split_endpoint("https://idp.example/realms/x/protocol/openid-connect/token"),
        Some(("idp.example", "/realms/x/protocol/openid-connect/token"))
    );
    assert_eq!(
        split_endpoint("http://localhost:9000"),
        Some(("localhost:9000", "/"))
    );
    assert_eq!(
        split_endpoint("https://idp.example/t?a=1&b=2"),
        Some(("idp.example", "/t?a=1&b=2"))
    );
    assert_eq!(
        well_known_path("https://idp.example/realms/x"),
        Some((
            "idp.example",
            "/realms/x/.well-known/openid-configuration".to_string()
        ))
    );
    assert_eq!(
        well_known_path("https://idp.example"),
        Some((
            "idp.example",
            "/.well-known/openid-configuration".to_string()
        ))
    );
    assert_eq!(
        well_known_path("https://idp.example/"),
        well_known_path("https://idp.example")
    );
    assert_eq!(
        well_known_url("http://localhost:9100/api/oidc").as_deref(),
        Some("http://localhost:9100/api/oidc/.well-known/openid-configuration")
    );
    for issuer in [
        "",
        "idp.example",
        "https://idp.example/x?tenant=1",
        "https://idp.example/x#f",
        "https://u@idp.example/",
        "ftp://idp.example/",
        "https://idp example/",
    ] {
        assert_eq!(well_known_path(issuer), None, "{issuer}");
        assert_eq!(well_known_url(issuer), None, "{issuer}");
    }
}
