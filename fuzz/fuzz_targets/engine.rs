//! The whole engine: a script of requests (arbitrary method, path, route, cookies, CSRF and
//! Fetch-Metadata headers, bodies), callout answers (arbitrary status and body, or good answers
//! of the fake provider) and clock jumps, run against a world where alice is signed in and a
//! login is pending. Every step is checked by `check_step` (no panic, no bffgate cookie or
//! client token forwarded, no forward without a policy and a valid session, contract errors,
//! local redirects only, nothing secret visible), and alice's session must survive every script
//! that never presented it (and did not let it expire or evict it).
//!
//! Script lines (anything else is ignored):
//! ```text
//! world shipped|demo|admin        first line only; default shipped
//! > METHOD PATH [ROUTE|-]          a request; PATH may use {session} {state} {flow} ...
//! cookie: VALUE                    a header of the current request (also x-csrf, origin,
//!                                  sec-fetch-site, sec-fetch-mode, sec-fetch-dest, accept)
//! < STATUS BODY | < failed | < token SCOPE | < idt CLAIMS-JSON | < jwks | < hold
//!                                  queued answers to the next callouts (default: a good one)
//! | BODY | | logout CLAIMS-JSON    the request body, raw or a signed logout token form
//! + SECONDS                        advance the clock before the next request
//! ```
#![no_main]

use bffgate::callout::CallResult;
use bffgate::engine::{AfterCall, Engine, Request, Step};
use bffgate::session::SessionId;
use bffgate::store::Store;
use bffgate_fuzz::*;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::VecDeque;

#[derive(Default, Debug)]
struct Req {
    req: Request,
    body: Option<Vec<u8>>,
    advance: u64,
}

#[derive(Debug)]
enum Answer {
    Raw(u16, Vec<u8>),
    Failed,
    Token(String),
    Idt(String),
    Jwks,
    /// Never answered: the request is abandoned mid-callout (its refresh lock stays behind).
    Hold,
}

struct Jar {
    cookies: Vec<(String, String)>,
    state: String,
    nonce: String,
    flow_name: String,
    flow_value: String,
}

impl Jar {
    fn get(&self, n: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
    fn header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
    fn subst(&self, s: &str, session_name: &str) -> String {
        if !s.contains('{') {
            return s.to_string();
        }
        s.replace("{session}", self.get(session_name).unwrap_or(""))
            .replace(
                "{state}",
                &form_urlencoded::byte_serialize(self.state.as_bytes()).collect::<String>(),
            )
            .replace("{rawstate}", &self.state)
            .replace("{flow}", &format!("{}={}", self.flow_name, self.flow_value))
            .replace("{flowname}", &self.flow_name)
            .replace("{flowvalue}", &self.flow_value)
            .replace("{nonce}", &self.nonce)
            .replace("{jar}", &self.header())
    }
}

fn parse(text: &str) -> (String, Vec<Req>, VecDeque<Answer>) {
    let mut world = "shipped".to_string();
    let mut reqs: Vec<Req> = Vec::new();
    let mut answers = VecDeque::new();
    let mut advance = 0u64;
    for (i, line) in text.split('\n').enumerate() {
        if i == 0 {
            if let Some(w) = line.strip_prefix("world ") {
                world = w.trim().to_string();
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("> ") {
            if reqs.len() >= 8 {
                break;
            }
            let mut it = rest.splitn(3, ' ');
            let method = it.next().unwrap_or("GET").to_string();
            let path = it.next().unwrap_or("/").to_string();
            let route = match it.next() {
                None | Some("-") => None,
                Some(r) => Some(r.to_string()),
            };
            reqs.push(Req {
                req: Request {
                    method,
                    path,
                    route,
                    ..Request::default()
                },
                body: None,
                advance: std::mem::take(&mut advance),
            });
        } else if let Some(rest) = line.strip_prefix("< ") {
            if answers.len() >= 24 {
                continue;
            }
            let a = if rest == "failed" {
                Answer::Failed
            } else if rest == "jwks" {
                Answer::Jwks
            } else if rest == "hold" {
                Answer::Hold
            } else if let Some(s) = rest.strip_prefix("token ") {
                Answer::Token(s.to_string())
            } else if let Some(c) = rest.strip_prefix("idt ") {
                Answer::Idt(c.to_string())
            } else {
                let (st, body) = rest.split_once(' ').unwrap_or((rest, ""));
                Answer::Raw(st.parse().unwrap_or(200), body.as_bytes().to_vec())
            };
            answers.push_back(a);
        } else if let Some(rest) = line.strip_prefix("| ") {
            if let Some(r) = reqs.last_mut() {
                r.body = Some(rest.as_bytes().to_vec());
            }
        } else if let Some(rest) = line.strip_prefix("+ ") {
            advance =
                advance.saturating_add(rest.trim().parse::<u64>().unwrap_or(0).min(1_000_000));
        } else if let Some((name, value)) = line.split_once(": ") {
            let Some(r) = reqs.last_mut() else { continue };
            let v = Some(value.to_string());
            match name.to_ascii_lowercase().as_str() {
                "cookie" => {
                    // Several cookie headers are joined with "; ", as the shell does.
                    r.req.cookie = Some(match r.req.cookie.take() {
                        Some(c) => format!("{c}; {value}"),
                        None => value.to_string(),
                    })
                }
                "x-csrf" => r.req.csrf = v,
                "origin" => r.req.origin = v,
                "sec-fetch-site" => r.req.sec_fetch_site = v,
                "sec-fetch-mode" => r.req.sec_fetch_mode = v,
                "sec-fetch-dest" => r.req.sec_fetch_dest = v,
                "accept" => r.req.accept = v,
                _ => {}
            }
        }
    }
    (world, reqs, answers)
}

fn merge_claims(base: Value, patch: &str) -> Value {
    let mut b = base;
    if let (Some(o), Ok(Value::Object(p))) =
        (b.as_object_mut(), serde_json::from_str::<Value>(patch))
    {
        for (k, v) in p {
            if v.is_null() {
                o.remove(&k);
            } else {
                o.insert(k, v);
            }
        }
    }
    b
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 8192 {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let (world_name, reqs, mut answers) = parse(&text);
    let w = match world_name.as_str() {
        "demo" => demo_world(),
        "admin" => admin_world(),
        _ => shipped_world(),
    };
    let cfg = &w.cfg;
    let (mut st, mut rng) = w.parts();
    let mut now = w.now;
    let secret = never_visible(&text);
    let mut jar = Jar {
        cookies: vec![(cfg.cookie.name.clone(), w.session.clone())],
        state: w.state.clone(),
        nonce: w.nonce.clone(),
        flow_name: w.flow_name.clone(),
        flow_value: w.flow_value.clone(),
    };
    let alice = cfg
        .cookie
        .keys
        .open(&cfg.cookie.name, &w.session)
        .ok()
        .and_then(|p| SessionId::from_bytes(&p));
    let mut alice_presented = false;
    let mut bodies = false;
    let mut serial = 100u32;
    let mut logins = 0usize;

    for r in reqs {
        now = now.saturating_add(r.advance);
        let mut req = r.req;
        if cfg.admin {
            // An operator's request (its credential is checked by the engine suites): the
            // script explores what comes after the checks.
            req.authority = Some("127.0.0.1:9902".into());
            req.authorization = Some(bffgate::secret::Secret::new(format!(
                "Bearer {}",
                bffgate::testkit::ADMIN_TOKEN
            )));
        }
        let sn = cfg.cookie.name.clone();
        req.path = jar.subst(&req.path, &sn);
        for f in [
            &mut req.cookie,
            &mut req.csrf,
            &mut req.origin,
            &mut req.sec_fetch_site,
            &mut req.sec_fetch_mode,
            &mut req.sec_fetch_dest,
            &mut req.accept,
        ] {
            if let Some(v) = f.as_mut() {
                *v = jar.subst(v, &sn);
            }
        }
        if req
            .cookie
            .as_deref()
            .is_some_and(|c| c.contains(&w.session))
            || req.path.contains(&w.session)
        {
            alice_presented = true;
        }
        let seen = Seen::new(cfg, &req);
        let Some(mut step) = run_checked(cfg, &mut st, &mut rng, now, &seen, &secret, |e| {
            Some(e.on_request(&req))
        }) else {
            return;
        };
        let mut wakes = 0;
        for _ in 0..12 {
            step = match step {
                Step::Call { request, then } => {
                    let answer = answers.pop_front();
                    serial += 1;
                    let result = match answer {
                        Some(Answer::Hold) => break,
                        Some(Answer::Failed) => CallResult::Failed,
                        Some(Answer::Raw(s, b)) => CallResult::Response { status: s, body: b },
                        Some(Answer::Jwks) => CallResult::Response {
                            status: 200,
                            body: jwks().into_bytes(),
                        },
                        Some(Answer::Token(scope)) => CallResult::Response {
                            status: 200,
                            body: token_answer(&scope, None, json!(300), serial).into_bytes(),
                        },
                        Some(Answer::Idt(c)) => {
                            let claims = merge_claims(
                                id_claims("sub-mallory", "mallory", &jar.nonce, now),
                                &c,
                            );
                            let id = sign_jwt(&claims);
                            CallResult::Response {
                                status: 200,
                                body: token_answer(
                                    "openid orders:read",
                                    Some(&id),
                                    json!(300),
                                    serial,
                                )
                                .into_bytes(),
                            }
                        }
                        None => {
                            // A good answer for what was asked.
                            let hand = &cfg.provider.by_hand;
                            let body = if request.path == "/jwks" {
                                jwks()
                            } else if request.path.ends_with("/.well-known/openid-configuration") {
                                discovery_document(&cfg.provider.issuer)
                            } else if hand.revocation.as_ref().map(|t| t.path.as_str())
                                == Some(request.path.as_str())
                                || request.path == "/token/revocation"
                            {
                                String::new()
                            } else if matches!(*then, AfterCall::CodeExchange { .. }) {
                                let id = sign_jwt(&id_claims("sub-bob", "bob", &jar.nonce, now));
                                token_answer(
                                    "openid profile orders:read",
                                    Some(&id),
                                    json!(300),
                                    serial,
                                )
                            } else {
                                token_answer("openid profile orders:read", None, json!(300), serial)
                            };
                            CallResult::Response {
                                status: 200,
                                body: body.into_bytes(),
                            }
                        }
                    };
                    match run_checked(cfg, &mut st, &mut rng, now, &seen, &secret, |e| {
                        Some(e.on_callout(*then, result))
                    }) {
                        Some(s) => s,
                        None => return,
                    }
                }
                Step::ReadBody { then } => {
                    bodies = true;
                    let body = r.body.clone().map(|b| {
                        let t = String::from_utf8_lossy(&b).to_string();
                        match t.strip_prefix("logout ") {
                            Some(c) => {
                                let base = json!({
                                    "iss": "http://localhost:9000", "aud": "bffgate", "iat": now,
                                    "jti": format!("jti-{serial}"), "sub": "sub-alice",
                                    "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
                                });
                                let tok = sign_jwt(&merge_claims(base, c));
                                format!("logout_token={tok}").into_bytes()
                            }
                            None => b,
                        }
                    });
                    let body = body.filter(|b| b.len() <= bffgate::engine::MAX_REQUEST_BODY);
                    match run_checked(cfg, &mut st, &mut rng, now, &seen, &secret, |e| {
                        Some(e.on_body(then, body.as_deref()))
                    }) {
                        Some(s) => s,
                        None => return,
                    }
                }
                Step::Wait { then } => {
                    wakes += 1;
                    now = now.saturating_add(1);
                    let mut e = Engine::new(cfg, now, &mut rng, &mut st);
                    let next = e.on_wake(&then);
                    let notes = std::mem::take(&mut e.notes);
                    match next {
                        Some(s) => {
                            check_step(cfg, &seen, &s, &notes, &secret);
                            s
                        }
                        None if wakes < 8 => Step::Wait { then },
                        None => break,
                    }
                }
                done => {
                    if let Step::Respond(reply) = &done {
                        for (n, v) in reply.headers.iter().filter(|(n, _)| n == "set-cookie") {
                            let _ = n;
                            let first = v.split(';').next().unwrap_or_default();
                            let (name, value) = first.split_once('=').unwrap_or((first, ""));
                            let deleting = v.contains("Max-Age=0");
                            if name == cfg.cookie.name && !deleting {
                                logins += 1;
                            }
                            if name.starts_with(&cfg.cookie.flow_prefix) && !deleting {
                                jar.flow_name = name.to_string();
                                jar.flow_value = value.to_string();
                            }
                            jar.cookies.retain(|(k, _)| k != name);
                            if !deleting {
                                jar.cookies.push((name.to_string(), value.to_string()));
                            }
                        }
                        if let Some((_, loc)) = reply.headers.iter().find(|(n, _)| n == "location")
                        {
                            if let Some(q) = loc.split_once('?').map(|(_, q)| q) {
                                for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                                    match &*k {
                                        "state" => jar.state = v.into_owned(),
                                        "nonce" => jar.nonce = v.into_owned(),
                                        _ => {}
                                    }
                                }
                            }
                        }
                    }
                    break;
                }
            };
        }
    }

    // A valid session is never lost to requests that did not present it.
    let elapsed = now.saturating_sub(w.now);
    if let Some(id) = alice {
        if !alice_presented
            && !bodies
            && !cfg.admin
            && elapsed < cfg.session.idle_timeout_s
            && logins < 6
        {
            assert!(
                st.get_session(&id).is_some(),
                "alice's session was lost to requests that never presented it"
            );
        }
    }
});
