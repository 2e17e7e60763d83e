//! `bffgate-config explain`: what the filter decides for one request to one route, and why.
//!
//! The decision is the filter's own: the request runs through [`Engine::on_request`] against an
//! in-memory store holding a session made of what the operator described (its claims, sign-in
//! level, and a token for the route's audience with the given scopes). Each reason comes from
//! the same predicates the engine calls ([`csrf_check`], [`claim_matches`], [`Policy::step_up`],
//! [`has_scope`]), evaluated without stopping at the first failure, so every check is listed.
//! A test (tests/explain.rs) holds the two together: the first refusing check is the decision.

use crate::config::Config;
use crate::engine::{csrf_check, CsrfFail, CsrfPass, Engine, Request, Step};
use crate::policy::{claim_matches, has_scope, Access, Mode, Policy};
use crate::secret::Secret;
use crate::session::{AudienceToken, Session};
use crate::store::Store;
use serde_json::{json, Map, Value};

/// One request to explain, and the session it carries.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// Envoy route name.
    pub route: String,
    /// Request method.
    pub method: String,
    /// `:path` (default `/`).
    pub path: Option<String>,
    /// Request headers (`Origin`, the CSRF header, `Sec-Fetch-*`, `Accept`, ...).
    pub headers: Vec<(String, String)>,
    /// `false`: the request carries no session cookie.
    pub session: bool,
    /// Scopes of the session's token for the route's audience (`None`: what bffgate asks the
    /// provider for: the audience's `scope`, else `client.scopes`).
    pub scopes: Option<Vec<String>>,
    /// The session's ID-token claims.
    pub claims: Map<String, Value>,
    /// The sign-in's `acr`.
    pub acr: Option<String>,
    /// How long ago the user signed in (`auth_time`), seconds; `None`: unknown.
    pub auth_age_s: Option<u64>,
}

/// What became of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Refused the request (with this contract error code).
    Refuse(&'static str),
    /// Failed, but the route is in report mode: logged and counted, not refused.
    Report(&'static str),
    /// Not checked for this request (and why is in the reason).
    Skip,
}

impl Outcome {
    /// `pass`, `refuse:<code>`, `report:<code>` or `skip`.
    pub fn as_str(&self) -> String {
        match self {
            Outcome::Pass => "pass".into(),
            Outcome::Refuse(c) => format!("refuse:{c}"),
            Outcome::Report(c) => format!("report:{c}"),
            Outcome::Skip => "skip".into(),
        }
    }
}

/// One check and its outcome, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `route`, `csrf`, `session`, `claims.<name>`, `sign_in`, `audience`, `scope.<s>`.
    pub name: String,
    /// What became of it.
    pub outcome: Outcome,
    /// Why.
    pub why: String,
}

/// The filter's decision and every reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The decision as the access log writes it: `allow`, `public`, `deny:<code>`,
    /// `login_redirect`, ...
    pub decision: String,
    /// The local answer's status, if the filter answers itself.
    pub status: Option<u16>,
    /// Every check, in the order the filter makes them.
    pub checks: Vec<Check>,
    /// Which path the filter took: `fast`, `full (<reason>)`, or `None` (not a session route).
    pub path: Option<String>,
    /// Audit events the request would log.
    pub audit: Vec<Value>,
}

impl Explanation {
    /// The first check that refused, if any.
    pub fn first_refusal(&self) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| matches!(c.outcome, Outcome::Refuse(_)))
    }

    /// As JSON (`--json`).
    pub fn to_json(&self) -> Value {
        json!({
            "decision": self.decision,
            "status": self.status,
            "path": self.path,
            "checks": self.checks.iter().map(|c| json!({
                "check": c.name, "outcome": c.outcome.as_str(), "why": c.why,
            })).collect::<Vec<_>>(),
            "audit": self.audit,
        })
    }

    /// For people.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "decision: {}{}\n",
            self.decision,
            self.status.map(|s| format!(" ({s})")).unwrap_or_default()
        );
        if let Some(p) = &self.path {
            out.push_str(&format!("path: {p}\n"));
        }
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<22} {:<40} {}\n",
                c.name,
                c.outcome.as_str(),
                c.why
            ));
        }
        for a in &self.audit {
            out.push_str(&format!("audit: {a}\n"));
        }
        out
    }
}

/// The operating system's random source (a session id for a session that lives only in this
/// process's memory; without /dev/urandom the ids are merely unique per run).
struct OsRandom;

impl crate::util::Random for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        use std::io::Read;
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
        if read.is_err() {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(151).wrapping_add(7);
            }
        }
    }
}

/// A fixed "now" for the explanation (the result does not depend on it).
const NOW: u64 = 1_800_000_000;

/// Explains `ask` under `cfg`. `Err` names what is wrong with the ask itself.
pub fn explain(cfg: &Config, ask: &Ask) -> Result<Explanation, String> {
    let method = ask.method.trim().to_ascii_uppercase();
    if !crate::util::is_token(&method) {
        return Err(format!("--method `{}` is not an HTTP method", ask.method));
    }
    let mut req = Request {
        method,
        path: ask.path.clone().unwrap_or_else(|| "/".into()),
        route: Some(ask.route.clone()),
        ..Request::default()
    };
    for (name, value) in &ask.headers {
        set_header(cfg, &mut req, name, value)?;
    }
    let mut checks = Vec::new();
    let policy = cfg.routes.get(&ask.route);
    // One session is all it holds: a small table (the slot count changes nothing decided).
    let mut store = crate::store::memory::memory_store(crate::config::Limits {
        max_sessions: 4,
        max_pending: 4,
        ..cfg.store
    });
    let mut rng = OsRandom;
    if let Some(p) = policy {
        checks.push(Check {
            name: "route".into(),
            outcome: Outcome::Pass,
            why: format!(
                "policy `{}`: access {}{}",
                p.route,
                if p.access == Access::Public {
                    "public"
                } else {
                    "session"
                },
                if p.mode == Mode::Report {
                    ", mode report (scopes, claims and sign-in level are reported, not enforced)"
                } else {
                    ""
                }
            ),
        });
        if p.access == Access::Session {
            let scopes = token_scopes(cfg, p, ask);
            checks.extend(session_checks(cfg, p, &req, ask, &scopes));
            if ask.session {
                let cookie = plant_session(cfg, p, ask, &scopes, &mut store, &mut rng)?;
                req.cookie = Some(match req.cookie.take() {
                    Some(c) => format!("{c}; {cookie}"),
                    None => cookie,
                });
            }
        } else {
            checks.push(Check {
                name: "token".into(),
                outcome: Outcome::Skip,
                why: "a public route forwards no token (a client's Authorization and bffgate's cookies are removed)".into(),
            });
        }
    } else {
        checks.push(Check {
            name: "route".into(),
            outcome: Outcome::Refuse("forbidden"),
            why: format!(
                "no policy named `{}` (an Envoy route without a policy is refused)",
                ask.route
            ),
        });
    }
    let mut engine = Engine::new(cfg, NOW, &mut rng, &mut store);
    let step = engine.on_request(&req);
    let path = engine.fast_path.map(|f| match f {
        Ok(()) => "fast".to_string(),
        Err(miss) => format!(
            "full ({})",
            miss.metric()
                .trim_start_matches("bffgate_fast_path_missed_")
        ),
    });
    let audit = engine
        .notes
        .iter()
        .filter_map(|n| n.strip_prefix("audit "))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let status = match &step {
        Step::Respond(r) => Some(r.status),
        _ => None,
    };
    Ok(Explanation {
        decision: step.decision().as_str(),
        status,
        checks,
        path,
        audit,
    })
}

/// Sets the request field a header feeds (the same headers the wasm shell reads).
fn set_header(cfg: &Config, req: &mut Request, name: &str, value: &str) -> Result<(), String> {
    let v = Some(value.trim().to_string());
    match name.trim().to_ascii_lowercase().as_str() {
        "origin" => req.origin = v,
        "sec-fetch-site" => req.sec_fetch_site = v,
        "sec-fetch-mode" => req.sec_fetch_mode = v,
        "sec-fetch-dest" => req.sec_fetch_dest = v,
        "accept" => req.accept = v,
        "user-agent" => req.user_agent = v,
        "cookie" => req.cookie = v,
        "access-control-request-method" => req.cors_method = v,
        "access-control-request-headers" => req.cors_headers = v,
        n if n == cfg.csrf_header => req.csrf = v,
        other => {
            return Err(format!(
                "--header `{other}`: bffgate does not read it (it reads origin, {}, sec-fetch-site, sec-fetch-mode, sec-fetch-dest, accept, user-agent, cookie, access-control-request-method, access-control-request-headers)",
                cfg.csrf_header
            ))
        }
    }
    Ok(())
}

/// The scopes of the session's token for the route's audience.
fn token_scopes(cfg: &Config, p: &Policy, ask: &Ask) -> String {
    if let Some(s) = &ask.scopes {
        return s.join(" ");
    }
    let aud = cfg
        .audiences
        .iter()
        .find(|a| Some(a.id.as_str()) == p.audience.as_deref());
    match aud.and_then(|a| a.scope.clone()) {
        Some(s) => s,
        None => cfg.client.scope.clone(),
    }
}

/// The checks of a session route, in the filter's order, none skipped for an earlier failure.
fn session_checks(cfg: &Config, p: &Policy, req: &Request, ask: &Ask, scopes: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let fail = |code: &'static str| {
        if p.mode == Mode::Report {
            Outcome::Report(code)
        } else {
            Outcome::Refuse(code)
        }
    };
    let (outcome, why) = match csrf_check(cfg, req, p.csrf, &p.allowed_origins) {
        Ok(CsrfPass::NotNeeded) => (
            Outcome::Pass,
            format!(
                "{} needs no CSRF header under csrf: {}",
                req.method,
                csrf_mode(p)
            ),
        ),
        Ok(CsrfPass::Checked) => (
            Outcome::Pass,
            format!(
                "{}: {} present, not cross-site, Origin absent or allowed",
                req.method, cfg.csrf_header
            ),
        ),
        Err(CsrfFail::Header) => (
            Outcome::Refuse("csrf"),
            format!(
                "{} needs `{}: {}` (csrf: {})",
                req.method,
                cfg.csrf_header,
                cfg.csrf_value,
                csrf_mode(p)
            ),
        ),
        Err(CsrfFail::CrossSite) => (
            Outcome::Refuse("csrf"),
            "Sec-Fetch-Site: cross-site".to_string(),
        ),
        Err(CsrfFail::Origin) => (
            Outcome::Refuse("csrf"),
            format!(
                "Origin `{}` is neither public_origin ({}) nor in allowed_origins",
                req.origin.as_deref().unwrap_or_default(),
                cfg.public_origin
            ),
        ),
    };
    out.push(Check {
        name: "csrf".into(),
        outcome,
        why,
    });
    if !ask.session {
        out.push(Check {
            name: "session".into(),
            outcome: Outcome::Refuse("unauthenticated"),
            why: "no session cookie (a navigation is sent to login, anything else gets 401)".into(),
        });
        return out;
    }
    out.push(Check {
        name: "session".into(),
        outcome: Outcome::Pass,
        why: "a live session (described by --scopes, --claims, --acr, --auth-age)".into(),
    });
    for (name, accepted) in &p.claims {
        let have = ask.claims.get(name);
        let ok = claim_matches(accepted, have);
        out.push(Check {
            name: format!("claims.{name}"),
            outcome: if ok { Outcome::Pass } else { fail("forbidden") },
            why: format!(
                "has {}, accepted {}",
                have.map_or("nothing".to_string(), Value::to_string),
                Value::Array(accepted.clone())
            ),
        });
    }
    if p.wants_step_up() {
        let auth_time = ask.auth_age_s.map(|a| NOW.saturating_sub(a));
        let level = p.step_up(
            ask.acr.as_deref(),
            auth_time,
            NOW,
            cfg.provider.clock_skew_s,
        );
        let have = format!(
            "acr {}, signed in {}",
            ask.acr.as_deref().unwrap_or("(none)"),
            ask.auth_age_s
                .map_or("(auth_time unknown)".to_string(), |a| format!("{a} s ago"))
        );
        let want = format!(
            "wants acr {} and a sign-in at most {} old (skew {} s)",
            if p.acr_values.is_empty() {
                "any".to_string()
            } else {
                p.acr_values.join("|")
            },
            p.max_age_s
                .map_or("any age".to_string(), |m| format!("{m} s")),
            cfg.provider.clock_skew_s
        );
        out.push(Check {
            name: "sign_in".into(),
            outcome: if level.is_ok() {
                Outcome::Pass
            } else {
                fail("insufficient_user_authentication")
            },
            why: format!("{have}; {want}"),
        });
    }
    match &p.audience {
        Some(a) => out.push(Check {
            name: "audience".into(),
            outcome: Outcome::Pass,
            why: format!("forwards the session's token for {a} (token scopes: {scopes})"),
        }),
        None => out.push(Check {
            name: "audience".into(),
            outcome: Outcome::Refuse("forbidden"),
            why: "the route names no audience".into(),
        }),
    }
    for need in &p.scopes {
        let ok = has_scope(scopes, need);
        out.push(Check {
            name: format!("scope.{need}"),
            outcome: if ok {
                Outcome::Pass
            } else {
                fail("insufficient_scope")
            },
            why: if ok {
                "the token carries it".into()
            } else {
                "the token does not carry it".into()
            },
        });
    }
    out
}

fn csrf_mode(p: &Policy) -> &'static str {
    match p.csrf {
        crate::policy::CsrfMode::UnsafeMethods => "unsafe-methods",
        crate::policy::CsrfMode::AllMethods => "all-methods",
    }
}

/// Stores the session `ask` describes; its `Cookie` pair.
fn plant_session(
    cfg: &Config,
    p: &Policy,
    ask: &Ask,
    scopes: &str,
    store: &mut dyn Store,
    rng: &mut dyn crate::util::Random,
) -> Result<String, String> {
    let sub = ask
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("explained-user")
        .to_string();
    let mut s = Session {
        sub,
        claims: ask.claims.clone(),
        created: NOW,
        last_seen: NOW,
        expires: NOW + cfg.session.absolute_timeout_s.max(1),
        acr: ask.acr.clone(),
        auth_time: ask.auth_age_s.map(|a| NOW.saturating_sub(a)),
        ..Session::default()
    };
    if let Some(aud) = &p.audience {
        s.put_token(AudienceToken {
            aud: aud.clone(),
            token: Secret::new("explained-token".to_string()),
            exp: NOW + 3600,
            obtained: NOW,
            scope: scopes.to_string(),
        });
    }
    let (id, _) = store
        .create_session(&s, rng, NOW)
        .map_err(|e| format!("the in-memory store refused the session: {e:?}"))?;
    let value = cfg.cookie.keys.seal(&cfg.cookie.name, &id.to_bytes());
    Ok(format!("{}={value}", cfg.cookie.name))
}
