//! Property tests of the core's invariants (proptest), over generated keys, cookies, policies,
//! sessions, paths and configurations:
//!
//! - a sealed value opens to its payload, and no single-bit change of it (or of the cookie name,
//!   or the key) opens;
//! - `Set-Cookie` / `Cookie` building and parsing round-trip, and stripping drops exactly the
//!   cookies asked for;
//! - no request is forwarded unless the session holds a token for the route's audience that
//!   carries every scope the route requires (and the claims match): driven through the engine,
//!   with tokens for other audiences, renewals with other scopes, and missing refresh tokens;
//! - `return_to` output is always a local path;
//! - configurations round-trip (RawConfig -> JSON -> RawConfig) and compile deterministically.
//!
//! Case counts are moderate so the file runs in about a second; a failure is saved by proptest
//! in `tests/prop.proptest-regressions` (commit it) and replayed first on every later run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bffgate::callout::CallResult;
use bffgate::config::{Config, RawConfig};
use bffgate::cookie::{self, Attributes, SameSite};
use bffgate::engine::{Engine, Request, Step};
use bffgate::redirect::sanitize_return_to;
use bffgate::seal::KeyRing;
use bffgate::secret::Secret;
use bffgate::session::{AudienceToken, Session};
use bffgate::store::Store;
use bffgate::testkit::memory_store;
use bffgate::testkit::TestRandom;
use bffgate::util::b64url;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

const T0: u64 = 1_750_000_000;
const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn secrets(name: &str) -> Option<String> {
    match name {
        "BFFGATE_CLIENT_SECRET" => Some("prop-client-secret".into()),
        "BFFGATE_COOKIE_KEYS" => Some(KEYS.into()),
        _ => None,
    }
}

// =====================================================================================
// MAC: sign / verify
// =====================================================================================

const KID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
/// RFC 6265 cookie-name (token) characters.
const TOKEN_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";

fn from_alphabet(alphabet: &'static [u8], len: std::ops::Range<usize>) -> BoxedStrategy<String> {
    prop::collection::vec(select(alphabet), len)
        .prop_map(|v| String::from_utf8(v).unwrap())
        .boxed()
}

/// RFC 6265 cookie-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E.
fn cookie_value() -> BoxedStrategy<String> {
    let octets: Vec<u8> = (0x21u8..=0x7e)
        .filter(|c| !matches!(c, b'"' | b',' | b';' | b'\\'))
        .collect();
    prop::collection::vec(select(octets), 0..48)
        .prop_map(|v| String::from_utf8(v).unwrap())
        .boxed()
}

fn ring_strategy() -> impl Strategy<Value = (String, Vec<u8>, KeyRing)> {
    (
        from_alphabet(KID_CHARS, 1..17),
        prop::collection::vec(any::<u8>(), 32..64),
    )
        .prop_map(|(kid, key)| {
            let ring = KeyRing::parse(&format!("{kid}:{}", b64url(&key))).unwrap();
            (kid, key, ring)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sealed_values_open_to_their_payload(
        (kid, _key, ring) in ring_strategy(),
        name in from_alphabet(TOKEN_CHARS, 1..24),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let v = ring.seal(&name, &payload);
        let prefix = format!("{kid}.");
        prop_assert!(v.starts_with(&prefix));
        prop_assert_eq!(ring.open(&name, &v), Ok(payload.clone()));
        // Rotation: a ring whose signing key is new still opens the old value.
        let newer = KeyRing::parse(&format!("zz0new:{},{kid}:{}", b64url(&[7u8; 32]), b64url(&_key))).unwrap();
        prop_assert_eq!(newer.open(&name, &v), Ok(payload));
    }

    #[test]
    fn any_single_bit_change_is_rejected(
        (_kid, _key, ring) in ring_strategy(),
        name in from_alphabet(TOKEN_CHARS, 1..24),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let v = ring.seal(&name, &payload);
        let mut b = v.clone().into_bytes();
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        if let Ok(s) = String::from_utf8(b) {
            prop_assert_ne!(&s, &v);
            prop_assert!(ring.open(&name, &s).is_err(), "bit {} of byte {} flipped and still accepted: {}", bit, i, s);
        }
        // The same for the cookie name the value is bound to.
        let mut n = name.clone().into_bytes();
        let j = pos.index(n.len());
        n[j] ^= 1 << bit;
        if let Ok(other) = String::from_utf8(n) {
            prop_assert!(ring.open(&other, &v).is_err(), "opened under another name {:?}", other);
        }
    }

    #[test]
    fn a_value_sealed_with_another_key_is_rejected(
        (kid, key, ring) in ring_strategy(),
        payload in prop::collection::vec(any::<u8>(), 0..32),
        flip in 0usize..32,
    ) {
        let mut other = key.clone();
        let at = flip % other.len();
        other[at] ^= 0x01;
        let forger = KeyRing::parse(&format!("{kid}:{}", b64url(&other))).unwrap();
        let forged = forger.seal("__Host-bff-session", &payload);
        prop_assert!(ring.open("__Host-bff-session", &forged).is_err());
    }
}

// =====================================================================================
// Cookies: build / parse
// =====================================================================================

fn attrs() -> impl Strategy<Value = Attributes> {
    (
        any::<bool>(),
        any::<bool>(),
        select(vec![SameSite::Lax, SameSite::Strict, SameSite::None]),
        prop_oneof![Just("/".to_string()), "/[a-z]{1,8}"],
        proptest::option::of("[a-z]{1,8}\\.example"),
    )
        .prop_map(|(secure, http_only, same_site, path, domain)| Attributes {
            secure,
            http_only,
            same_site,
            path,
            domain,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn set_cookie_parses_back_to_its_pair(
        name in from_alphabet(TOKEN_CHARS, 1..24),
        value in cookie_value(),
        a in attrs(),
        max_age in proptest::option::of(0u64..100_000_000),
    ) {
        let sc = cookie::set_cookie(&name, &value, &a, max_age);
        let first: Vec<(&str, &str)> = cookie::pairs(&sc).take(1).collect();
        prop_assert_eq!(first, vec![(name.as_str(), value.as_str())]);
        prop_assert_eq!(sc.contains("; Secure"), a.secure);
        prop_assert_eq!(sc.contains("; HttpOnly"), a.http_only);
        prop_assert!(sc.contains(&format!("; Path={}", a.path)), "{}", sc);
        if max_age == Some(0) {
            prop_assert!(sc.contains("Max-Age=0") && sc.contains("Expires=Thu, 01 Jan 1970"));
        }
    }

    #[test]
    fn cookie_headers_round_trip_and_strip_exactly(
        jar in prop::collection::vec((from_alphabet(TOKEN_CHARS, 1..16), cookie_value(), any::<bool>()), 0..8),
        sep in select(vec!["; ", ";", " ;  ", ";\t"]),
    ) {
        // Some cookies are given a bffgate name (differently cased at times).
        let jar: Vec<(String, String)> = jar
            .into_iter()
            .enumerate()
            .map(|(i, (n, v, ours))| {
                if ours {
                    let n = match i % 3 {
                        0 => "__Host-bff-session".to_string(),
                        1 => format!("__Host-bff-flow-{n}"),
                        _ => "__HOST-BFF-SESSION".to_string(),
                    };
                    (n, v)
                } else {
                    (n, v)
                }
            })
            .collect();
        let header = jar.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(sep);
        let parsed: Vec<(String, String)> =
            cookie::pairs(&header).map(|(n, v)| (n.to_string(), v.to_string())).collect();
        prop_assert_eq!(&parsed, &jar);
        for (n, _) in &jar {
            let (count, first) = cookie::find(&header, n);
            prop_assert_eq!(count, jar.iter().filter(|(m, _)| m == n).count());
            prop_assert_eq!(first, jar.iter().find(|(m, _)| m == n).map(|(_, v)| v.as_str()));
        }
        let ours = |n: &str| n.to_ascii_lowercase().starts_with("__host-bff-");
        let kept: Vec<(String, String)> = jar.iter().filter(|(n, _)| !ours(n)).cloned().collect();
        // The scan's rebuilt header (what the engine forwards) is `without`'s whenever it drops.
        let (s, rest) = cookie::scan_without(&header, "__Host-bff-session", ours);
        prop_assert_eq!(s, cookie::scan(&header, "__Host-bff-session", ours));
        let want = if s.ours && s.others { cookie::without(&header, ours) } else { None };
        prop_assert_eq!(rest, want);
        match cookie::without(&header, ours) {
            None => prop_assert!(kept.is_empty()),
            Some(out) => {
                let back: Vec<(String, String)> =
                    cookie::pairs(&out).map(|(n, v)| (n.to_string(), v.to_string())).collect();
                prop_assert_eq!(back, kept);
                prop_assert!(!out.to_ascii_lowercase().contains("__host-bff-session="));
            }
        }
    }
}

// =====================================================================================
// Policy decisions, through the engine
// =====================================================================================

const ORDERS: &str = "https://orders.api.local";
const PROFILE: &str = "https://profile.api.local";
const SCOPES: &[&str] = &[
    "orders:read",
    "orders:write",
    "profile",
    "admin",
    "a:b",
    "x",
];

fn scope_set() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::subsequence(SCOPES, 0..=SCOPES.len())
}

#[derive(Debug, Clone)]
struct Case {
    /// Audience of the route.
    route_aud: &'static str,
    /// Scopes the route requires.
    required: Vec<&'static str>,
    /// Claim rules: name -> accepted values.
    rules: Vec<(&'static str, Vec<Value>)>,
    /// The session's claims.
    claims: Vec<(&'static str, Value)>,
    /// Tokens the session holds: (audience, scopes, seconds left).
    tokens: Vec<(&'static str, Vec<&'static str>, u64)>,
    /// Whether it has a refresh token.
    refresh: bool,
    /// Scopes a renewal comes back with (or a refusal).
    renewal: Option<Vec<&'static str>>,
}

fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec!["alice", "bob", "admins", "users"]).prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
        (0i64..3).prop_map(|n| json!(n)),
        prop::collection::vec(select(vec!["admins", "users", "ops"]), 0..3).prop_map(|v| json!(v)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let names = vec!["preferred_username", "groups", "email_verified", "tier"];
    (
        select(vec![ORDERS, PROFILE]),
        // Routes need few scopes and rules, sessions hold many: both outcomes are common.
        prop::sample::subsequence(SCOPES, 0..=2),
        prop::collection::vec(
            (
                select(names.clone()),
                prop::collection::vec(claim_value(), 1..4),
            ),
            0..2,
        ),
        prop::collection::vec((select(names), claim_value()), 0..5),
        prop::collection::vec(
            (
                select(vec![ORDERS, PROFILE, "https://other.api.local"]),
                scope_set(),
                select(vec![0u64, 10, 29, 31, 300]),
            ),
            0..3,
        ),
        prop::bool::weighted(0.8),
        proptest::option::weighted(0.8, scope_set()),
    )
        .prop_map(
            |(route_aud, required, rules, claims, tokens, refresh, renewal)| {
                let mut rules = rules;
                rules.sort_by_key(|(n, _)| *n);
                rules.dedup_by_key(|(n, _)| *n);
                Case {
                    route_aud,
                    required,
                    rules,
                    claims,
                    tokens,
                    refresh,
                    renewal,
                }
            },
        )
}

fn policy_config(c: &Case) -> Config {
    let claims: serde_json::Map<String, Value> = c
        .rules
        .iter()
        .map(|(n, v)| (n.to_string(), Value::Array(v.clone())))
        .collect();
    let mut route = json!({"access": "session", "audience": c.route_aud, "scopes": c.required});
    if !claims.is_empty() {
        route["claims"] = Value::Object(claims);
    }
    let raw = json!({
        "public_origin": "https://localhost:8443",
        "provider": {
            "issuer": "http://localhost:9000",
            "authorization_endpoint": "http://localhost:9000/auth",
            "token_endpoint": "http://localhost:9000/token",
            "cluster": "bffgate_idp"
        },
        "client": {
            "client_id": "bffgate",
            "redirect_uri": "https://localhost:8443/auth/callback",
            "scopes": ["openid"]
        },
        "store": {"max_sessions": 4, "max_pending_logins": 2},
        "audiences": {ORDERS: {"acquire": "login"}, PROFILE: {"acquire": "refresh"}},
        "routes": {"r": route}
    });
    Config::from_json(raw.to_string().as_bytes(), &secrets).expect("the generated policy compiles")
}

/// `(allowed, forwarded token)` of one GET to route `r`, answering a renewal as the case says.
fn decide(c: &Case) -> (Step, Option<String>) {
    let cfg = policy_config(c);
    let mut st = memory_store(cfg.store);
    let mut rng = TestRandom(11);
    let session = Session {
        sub: "sub-x".into(),
        claims: c
            .claims
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
        created: T0,
        last_seen: T0,
        expires: T0 + 3600,
        refresh_token: c.refresh.then(|| Secret::new("rt")),
        tokens: c
            .tokens
            .iter()
            .enumerate()
            .map(|(i, (aud, scopes, left))| AudienceToken {
                aud: aud.to_string(),
                token: Secret::new(format!("tok-{i}")),
                exp: T0 + left,
                // Unknown (an older record): the plain skew applies, as the property expects.
                obtained: 0,
                scope: scopes.join(" "),
            })
            .collect(),
        ..Session::default()
    };
    let (id, _) = st.create_session(&session, &mut rng, T0).unwrap();
    let value = cfg.cookie.keys.seal(&cfg.cookie.name, &id.to_bytes());
    let req = Request {
        method: "GET".into(),
        path: "/api/x".into(),
        route: Some("r".into()),
        cookie: Some(format!("{}={value}", cfg.cookie.name)),
        accept: Some("application/json".into()),
        ..Request::default()
    };
    let mut step = Engine::new(&cfg, T0, &mut rng, &mut st).on_request(&req);
    let mut renewed = None;
    for _ in 0..4 {
        let Step::Call { then, .. } = step else { break };
        let result = match &c.renewal {
            Some(sc) => {
                renewed = Some("renewed".to_string());
                CallResult::Response {
                    status: 200,
                    body: json!({"access_token": "renewed", "token_type": "Bearer",
                        "expires_in": 300, "scope": sc.join(" ")})
                    .to_string()
                    .into_bytes(),
                }
            }
            None => CallResult::Response {
                status: 400,
                body: br#"{"error":"invalid_grant"}"#.to_vec(),
            },
        };
        step = Engine::new(&cfg, T0, &mut rng, &mut st).on_callout(*then, result);
    }
    (step, renewed)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn no_request_is_allowed_without_the_audience_and_every_scope(c in case()) {
        let (step, renewed) = decide(&c);
        let skew = 30;
        // The token the session holds for the route's audience, still fresh.
        let held = c
            .tokens
            .iter()
            .enumerate()
            .find(|(_, (aud, _, left))| *aud == c.route_aud && *left > skew);
        let claims_ok = c.rules.iter().all(|(name, accepted)| {
            // The session's claims are a map: of repeated names, the last one counts.
            match c.claims.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v) {
                Some(Value::Array(have)) => have.iter().any(|v| accepted.contains(v)),
                Some(v) => accepted.contains(v),
                None => false,
            }
        });
        if let Step::Forward { authorization, .. } = &step {
            let token = authorization.as_ref().map(|s| s.expose().to_string());
            prop_assert!(claims_ok, "allowed although a claim rule fails: {:?}", c);
            let (scope, want_token): (Vec<&str>, String) = match held {
                Some((i, (_, sc, _))) => (sc.clone(), format!("tok-{i}")),
                None => {
                    let r = c.renewal.clone();
                    prop_assert!(r.is_some() && c.refresh, "allowed without any token for the audience: {:?}", c);
                    (r.unwrap_or_default(), renewed.clone().unwrap_or_default())
                }
            };
            for need in &c.required {
                prop_assert!(scope.contains(need), "allowed without scope {}: {:?}", need, c);
            }
            prop_assert_eq!(token, Some(want_token), "forwarded a token that is not the audience's: {:?}", c);
        } else {
            // And the converse: a session that has all it needs is not refused.
            let has_all = |sc: &[&str]| c.required.iter().all(|n| sc.contains(n));
            let could = claims_ok
                && match held {
                    Some((_, (_, sc, _))) => has_all(sc),
                    None => c.refresh && c.renewal.as_deref().is_some_and(has_all),
                };
            prop_assert!(!could, "refused although the session holds everything: {:?} -> {:?}", c, step);
        }
    }
}

// =====================================================================================
// return_to
// =====================================================================================

const PIECES: &[&str] = &[
    "/",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "/../",
    "/./",
    "//",
    "\\",
    "%2F",
    "%2f",
    "%5C",
    "%5c",
    "%25",
    "%",
    "2F",
    ":",
    "evil.com",
    "a",
    " ",
    "\t",
    "\n",
    "%09",
    "%0a",
    "%00",
    "?",
    "#",
    "@",
    ".",
    "..",
    "https:",
    "javascript:",
    "\u{3000}",
    "\u{200b}",
    "é",
    "~",
    "+",
    "&",
    "=",
    "%E2%80%AE",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn return_to_is_always_a_local_path(parts in prop::collection::vec(select(PIECES), 0..10)) {
        let input: String = parts.concat();
        let out = sanitize_return_to(Some(&input));
        prop_assert!(
            out == "/" || out == input || has_dot_segment(&input),
            "rewritten: {:?} -> {:?}", input, out
        );
        prop_assert!(bffgate::redirect::is_safe_target(&out), "{:?} -> {:?}", input, out);
        prop_assert!(out.starts_with('/'));
        prop_assert!(!out.starts_with("//") && !out.starts_with("/\\"), "{:?} -> {:?}", input, out);
        prop_assert!(out.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\'), "{:?}", out);
        let once = percent_encoding::percent_decode_str(&out).decode_utf8_lossy().to_string();
        prop_assert!(!once.starts_with("//") && !once.starts_with("/\\"), "{:?} decodes to {:?}", out, once);
        prop_assert!(!once.chars().any(char::is_control), "{:?} decodes to control characters", out);
        prop_assert_eq!(sanitize_return_to(Some(&out)), out.clone(), "not idempotent");
    }
}

/// Whether the path part of `s` has a `.` or `..` segment (also percent-encoded).
fn has_dot_segment(s: &str) -> bool {
    let path = &s[..s.find(['?', '#']).unwrap_or(s.len())];
    path.split('/').any(|seg| {
        let d = seg.replace("%2e", ".").replace("%2E", ".");
        d == "." || d == ".."
    })
}

// =====================================================================================
// Configuration round trips
// =====================================================================================

fn raw_config() -> impl Strategy<Value = Value> {
    let route = (
        any::<bool>(),
        select(vec![ORDERS, PROFILE]),
        scope_set(),
        prop::collection::vec((select(vec!["groups", "tier"]), claim_value()), 0..2),
        select(vec!["unsafe-methods", "all-methods"]),
        select(vec!["auto", "redirect", "deny"]),
        proptest::option::of("[a-z ]{0,12}"),
    )
        .prop_map(|(public, aud, scopes, claims, csrf, unauth, description)| {
            if public {
                let mut r = json!({"access": "public"});
                if let Some(d) = description {
                    r["description"] = json!(d);
                }
                return r;
            }
            let claims: serde_json::Map<String, Value> = claims
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            json!({"access": "session", "audience": aud, "scopes": scopes, "claims": claims,
                   "csrf": csrf, "unauthenticated": unauth,
                   "allowed_origins": ["https://app.example:8443"]})
        });
    (
        prop::collection::btree_map("[a-z][a-z0-9-]{0,10}", route, 1..6),
        select(vec!["refresh", "exchange"]),
        proptest::option::of(scope_set()),
        (1u64..60_000, 60u64..100_000, 1u64..59, 1u64..3600, 0u64..600),
        select(vec!["Lax", "Strict", "lax"]),
        select(vec!["client_secret_basic", "client_secret_post"]),
        prop::collection::btree_map("[a-z_]{1,8}", "[a-z0-9 ]{0,8}", 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(routes, acquire, aud_scopes, (timeout, idle, touch, login, skew), same_site, auth, extra, admin)| {
                let mut profile = json!({"acquire": acquire});
                if let Some(s) = aud_scopes {
                    profile["scopes"] = json!(s);
                }
                json!({
                    "public_origin": "https://localhost:8443",
                    "provider": {
                        "issuer": "http://localhost:9000",
                        "authorization_endpoint": "http://localhost:9000/auth",
                        "token_endpoint": "http://localhost:9000/token",
                        "revocation_endpoint": "http://localhost:9000/token/revocation",
                        "jwks_uri": "http://localhost:9000/jwks",
                        "cluster": "bffgate_idp",
                        "timeout_ms": timeout,
                        "revocation_timeout_ms": timeout.div_ceil(2)
                    },
                    "client": {
                        "client_id": "bffgate",
                        "auth_method": auth,
                        "redirect_uri": "https://localhost:8443/auth/callback",
                        "scopes": ["openid", "offline_access"],
                        "extra_authorize_params": extra
                    },
                    "cookie": {"same_site": same_site},
                    "session": {"idle_timeout_s": idle, "absolute_timeout_s": idle * 2,
                                "touch_interval_s": touch, "login_timeout_s": login, "refresh_skew_s": skew},
                    "store": {"max_sessions": 4, "max_pending_logins": 2},
                    "audiences": {ORDERS: {"acquire": "login"}, PROFILE: profile},
                    "routes": routes,
                    "admin": admin
                })
            },
        )
}

fn fingerprint(c: &Config) -> String {
    let mut routes: Vec<_> = c.routes.iter().collect();
    routes.sort_by(|a, b| a.0.cmp(b.0));
    format!(
        "{} {} {:?} {:?} {:?} {:?} {:?} {:?} {} {} {:?} {} {:?} {:?} {}",
        c.public_origin,
        c.auth_prefix,
        c.provider,
        c.client,
        c.cookie,
        c.session,
        c.store,
        routes,
        c.csrf_header,
        c.csrf_value,
        c.audiences,
        c.login_audience,
        c.keep_claims,
        c.client.extra_authorize_params,
        c.admin
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn configs_round_trip_and_compile_deterministically(doc in raw_config()) {
        let raw: RawConfig = serde_json::from_value(doc.clone()).expect("generated configs parse");
        let text = serde_json::to_string(&raw).unwrap();
        let back: RawConfig = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &raw, "RawConfig -> JSON -> RawConfig");
        // Pretty and compact forms, and the YAML the config tool reads, agree too.
        let pretty: RawConfig = serde_json::from_str(&serde_json::to_string_pretty(&raw).unwrap()).unwrap();
        prop_assert_eq!(&pretty, &raw);
        #[cfg(feature = "cli")]
        {
            let yaml = serde_yaml::to_string(&raw).unwrap();
            let from_yaml: RawConfig = serde_yaml::from_str(&yaml).unwrap();
            prop_assert_eq!(&from_yaml, &raw, "RawConfig -> YAML -> RawConfig");
        }

        let a = Config::compile(&raw, &secrets);
        let b = Config::from_json(text.as_bytes(), &secrets);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(fingerprint(&a), fingerprint(&b));
                prop_assert_eq!(&a.routes, &b.routes);
                // Compiling is a pure function of the document: a third time, same result.
                let c = Config::compile(&back, &secrets).unwrap();
                prop_assert_eq!(fingerprint(&a), fingerprint(&c));
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "compile and from_json disagree: {:?} vs {:?}", a.err(), b.err()),
        }
    }
}
