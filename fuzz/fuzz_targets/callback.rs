//! The login callback: `GET /auth/callback?<query>` with arbitrary query and cookies (the
//! pending login's state and flow cookie available as `{state}` `{rawstate}` `{flow}`), then an
//! arbitrary token-endpoint answer (`{idtoken}` is a correctly signed ID token for the pending
//! login). Run on the demo world (claims-only ID token) and the shipped one (signature checked
//! against the JWKS).
//!
//! Input lines: query, cookie header, then the token-endpoint answer `STATUS BODY`.
//! Invariants: no panic; the code exchange is only started for exactly one `state` equal to the
//! pending one, with its flow cookie; a session is only set after a 2xx token response whose ID
//! token passes the claim checks for that login's nonce; every step passes `check_step`.
#![no_main]

use bffgate::callout::CallResult;
use bffgate::engine::{Request, Step};
use bffgate_fuzz::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > 8192 {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(3, '\n');
    let query = lines.next().unwrap_or_default();
    let cookie = lines.next();
    let answer = lines.next().unwrap_or("200 ");
    for w in [demo_world(), shipped_world()] {
        let cfg = &w.cfg;
        let (mut st, mut rng) = w.parts();
        let id_token = sign_jwt(&id_claims("sub-bob", "bob", &w.nonce, w.now));
        let sub = |s: &str| {
            s.replace(
                "{state}",
                &form_urlencoded::byte_serialize(w.state.as_bytes()).collect::<String>(),
            )
            .replace("{rawstate}", &w.state)
            .replace("{flow}", &format!("{}={}", w.flow_name, w.flow_value))
            .replace("{session}", &w.session)
            .replace("{idtoken}", &id_token)
        };
        let req = Request {
            method: "GET".into(),
            path: format!("/auth/callback?{}", sub(query)),
            cookie: cookie.map(sub),
            sec_fetch_mode: Some("navigate".into()),
            sec_fetch_site: Some("cross-site".into()),
            ..Request::default()
        };
        let secret = never_visible(&text);
        let seen = Seen::new(cfg, &req);
        let Some(step) = run_checked(cfg, &mut st, &mut rng, w.now, &seen, &secret, |e| {
            Some(e.on_request(&req))
        }) else {
            return;
        };
        let (status, body) = {
            let a = sub(answer);
            let (s, b) = a.split_once(' ').unwrap_or((&a, ""));
            (s.parse::<u16>().unwrap_or(200), b.as_bytes().to_vec())
        };
        match step {
            Step::Respond(r) => {
                assert!(
                    r.status >= 400,
                    "callback answered {} without an exchange",
                    r.status
                );
                assert!(
                    !r.headers.iter().any(|(n, v)| n == "set-cookie"
                        && v.starts_with(&format!("{}=", cfg.cookie.name))
                        && !v.contains("Max-Age=0")),
                    "a session without a code exchange"
                );
            }
            Step::Call { then, .. } => {
                let (_, q) = req.path.split_once('?').unwrap_or(("", ""));
                let states: Vec<String> = form_urlencoded::parse(q.as_bytes())
                    .filter(|(k, _)| k == "state")
                    .map(|(_, v)| v.into_owned())
                    .collect();
                assert_eq!(
                    states,
                    vec![w.state.clone()],
                    "an exchange for a state that is not the pending one"
                );
                let flow = req
                    .cookie
                    .as_deref()
                    .and_then(|h| bffgate::cookie::find(h, &w.flow_name).1);
                assert_eq!(
                    flow,
                    Some(w.flow_value.as_str()),
                    "an exchange without the flow cookie"
                );
                let mut result = CallResult::Response {
                    status,
                    body: body.clone(),
                };
                let mut step = then;
                for _ in 0..3 {
                    let Some(next) =
                        run_checked(cfg, &mut st, &mut rng, w.now, &seen, &secret, |e| {
                            Some(e.on_callout(*step, result))
                        })
                    else {
                        return;
                    };
                    match next {
                        Step::Call { then, .. } => {
                            // The JWKS fetch: the provider's real keys.
                            step = then;
                            result = CallResult::Response {
                                status: 200,
                                body: jwks().into_bytes(),
                            };
                        }
                        Step::Respond(r) => {
                            let sets = r.headers.iter().any(|(n, v)| {
                                n == "set-cookie"
                                    && v.starts_with(&format!("{}=", cfg.cookie.name))
                                    && !v.contains("Max-Age=0")
                            });
                            if sets {
                                let t = bffgate::oauth::parse_token_response(status, &body, w.now);
                                let Ok(t) = t else {
                                    panic!("a session from a refused token response: {r:?}")
                                };
                                let Some(id) = t.id_token else {
                                    panic!("a session without an ID token")
                                };
                                assert!(
                                    bffgate::jwt::check_id_token(
                                        id.expose(),
                                        &cfg.provider.issuer,
                                        "bffgate",
                                        &w.nonce,
                                        w.now,
                                        60
                                    )
                                    .is_ok(),
                                    "a session from an ID token that fails its claim checks"
                                );
                                if cfg.provider.verifies_signatures() {
                                    let set = bffgate::jose::parse_jwks(jwks().as_bytes())
                                        .unwrap_or_default();
                                    assert!(
                                        bffgate::jose::verify(id.expose(), &set).is_ok(),
                                        "a session from an ID token with a bad signature"
                                    );
                                }
                            }
                            break;
                        }
                        _ => break,
                    }
                }
            }
            other => panic!("unexpected step for a callback: {other:?}"),
        }
    }
});
