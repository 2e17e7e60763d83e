//! The engine: a request (and later, callout results) in, a [`Step`] out.
//!
//! Nothing here touches the host. The wasm shell builds a [`Request`] from the headers and the
//! route Envoy matched, runs [`Engine::on_request`], and applies the step: forward (with header
//! edits), respond locally (and stop the request), make a callout and feed its result back
//! through [`Engine::on_callout`], read the body ([`Engine::on_body`]), or wait for another
//! request's renewal ([`Engine::on_wake`]).
//!
//! One file per flow a reader looks for:
//! - this file: the [`Engine`] state, the steps and their continuations, the entry points, and
//!   [`Engine::decide`], which routes a request to the rest;
//! - `cookies`: the Cookie header read once ([`cookies::CookieView`]), the session cookie
//!   verified once, the session looked up;
//! - `request`: the decision on a protected route (fast path, full path, CSRF, CORS,
//!   unauthenticated answers) and `/auth/user`;
//! - `tokens`: a token for the route's audience: use, wait, renew or exchange, and the result;
//! - `login`: `/auth/login` and `/auth/callback` (code exchange, ID token, new session);
//! - `logout`: `/auth/logout` with revocation, and back-channel logout;
//! - `admin`: the operator API, and the sweep of dead sessions.

mod admin;
mod anomaly;
mod cookies;
mod login;
mod logout;
mod provider;
mod request;
mod tokens;

pub use admin::{sweep, FleetRevokeAll, RevokeAllCounts, RingHead};
pub use cookies::is_bff_cookie;
pub use provider::{AfterDiscovery, DISCOVERY_RETRY};
pub use request::{csrf_check, upstream_step_up_reply, CsrfFail, CsrfPass, FastPathMiss};

use crate::audit::{Decision, Event};
use crate::callout::{CallResult, Callout};
use crate::config::{Config, Endpoints};
use crate::oauth;
use crate::policy::Access;
use crate::reply::{error_reply, store_unavailable, ErrorCode, Reply, ReplyKind};
use crate::secret::Secret;
use crate::session::SessionId;
use crate::store::{Flush, Outbox, Outcome, PendingLogin, Store};
use crate::util::Random;
use crate::verified::VerifiedCookies;
use serde_json::Value;

/// What the engine needs to know about a request. Header values are as received; `cookie` is
/// every `cookie` header joined with `; ` (HTTP/2 sends one header per cookie).
#[derive(Clone, Default, PartialEq)]
pub struct Request {
    /// `:method`.
    pub method: String,
    /// `:path`, with the query.
    pub path: String,
    /// Name of the route Envoy matched (`xds.route_name`), if any.
    pub route: Option<String>,
    /// All `cookie` headers, joined.
    pub cookie: Option<String>,
    /// The configured CSRF header's value.
    pub csrf: Option<String>,
    /// `origin`.
    pub origin: Option<String>,
    /// `sec-fetch-site`.
    pub sec_fetch_site: Option<String>,
    /// `sec-fetch-mode`.
    pub sec_fetch_mode: Option<String>,
    /// `sec-fetch-dest`.
    pub sec_fetch_dest: Option<String>,
    /// `accept`.
    pub accept: Option<String>,
    /// `access-control-request-method` (a CORS preflight).
    pub cors_method: Option<String>,
    /// `access-control-request-headers` (a CORS preflight).
    pub cors_headers: Option<String>,
    /// `:authority`: read by the operator API only (it answers loopback names only).
    pub authority: Option<String>,
    /// The `authorization` header's value: read by the operator API only (its credential);
    /// never forwarded, never logged.
    pub authorization: Option<Secret>,
    /// `user-agent` (session anomaly signals: hashed, never kept).
    pub user_agent: Option<String>,
    /// The header of `session.anomaly.client_address_header` (`x-forwarded-for` by default), all
    /// of its values joined with `, ` (session anomaly signals: only the client's network is
    /// hashed, never kept).
    pub client_address: Option<String>,
    /// Set by the engine when it re-decides a request after a store fetch (never twice).
    pub store_fetched: bool,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cookie header carries the session cookie: never print it.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path.split('?').next().unwrap_or(""))
            .field("route", &self.route)
            .field("cookie", &self.cookie.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// What to do with the `cookie` request header when forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieEdit {
    /// Leave it (it carries no bffgate cookie).
    Keep,
    /// Remove every `cookie` header.
    Remove,
    /// Replace every `cookie` header with this one.
    Set(String),
}

/// The engine's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Forward upstream. Any client `Authorization` is always removed; `authorization` is the
    /// bearer token to send, if the route forwards one.
    Forward {
        /// Token for the route's audience.
        authorization: Option<Secret>,
        /// Cookie header edit.
        cookie: CookieEdit,
    },
    /// Answer locally; nothing reaches the upstream.
    Respond(Reply),
    /// Make a callout, then resume with [`Engine::on_callout`].
    Call {
        /// The request.
        request: Callout,
        /// What the answer resumes.
        then: Box<AfterCall>,
    },
    /// Read the whole request body (bounded), then call [`Engine::on_body`].
    ReadBody {
        /// What the body is for.
        then: AfterBody,
    },
    /// Pause until another request finishes renewing this session's token; the shell polls
    /// [`Engine::on_wake`] (on its timer) until it returns a step.
    Wait {
        /// The wait.
        then: Box<AwaitToken>,
    },
}

impl Step {
    /// What this step amounts to, for the access log and metrics.
    pub fn decision(&self) -> Decision {
        match self {
            Step::Forward {
                authorization: Some(_),
                ..
            } => Decision::Allowed,
            Step::Forward { .. } => Decision::Public,
            Step::Call { .. } | Step::Wait { .. } | Step::ReadBody { .. } => Decision::Pending,
            Step::Respond(r) => match r.kind {
                ReplyKind::Error(code) => Decision::Denied(code.as_str()),
                ReplyKind::LoginRedirect => Decision::LoginRedirect,
                ReplyKind::Endpoint => Decision::Endpoint,
            },
        }
    }
}

/// A request paused on a callout: what its answer resumes.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterCall {
    /// `/auth/callback` waiting for the code exchange.
    CodeExchange {
        /// The login taken from the store.
        login: PendingLogin,
        /// Name of this login's flow cookie (cleared in the reply).
        flow_cookie: String,
        /// Session presented at callback, dropped on success (no fixation).
        old_session: Option<SessionId>,
    },
    /// `/auth/callback` waiting for the JWKS to verify the ID token's signature.
    LoginJwks(Box<LoginTokens>),
    /// `/auth/callback` waiting for the userinfo endpoint (with the ID token's claims).
    Userinfo(Box<(LoginTokens, serde_json::Map<String, Value>)>),
    /// `/auth/callback` taking a login started on another Envoy from a remote store.
    PendingFetch {
        /// The callback, decided again when the answer arrives.
        request: Box<Request>,
        /// Its `state`.
        state: String,
        /// Hex SHA-256 of its flow cookie's value.
        flow_hash: String,
    },
    /// A protected request whose token for its audience is being obtained (this request holds
    /// the session's refresh lock).
    Token {
        /// The request to resume.
        resume: Resume,
        /// Which call is in flight.
        call: TokenCall,
        /// The lock this request holds (its `refreshing_until`): released only if still ours.
        lock: u64,
    },
    /// A request waiting for a remote store to fetch its session.
    StoreFetch {
        /// The request, decided again when the answer arrives.
        request: Box<Request>,
        /// The session being fetched.
        sid: SessionId,
    },
    /// A request whose writes are being flushed to a remote store before it goes on.
    StoreFlush {
        /// What is left to send.
        outbox: Box<Outbox>,
        /// The step to take once the writes are in.
        held: Box<Step>,
    },
    /// A waiting request re-reading its session from a remote store.
    WakeFetch {
        /// The wait to resume.
        wait: Box<AwaitToken>,
    },
    /// A back-channel logout token waiting for the JWKS.
    BackchannelJwks {
        /// The logout token (a JWT; not a credential for anything).
        token: String,
    },
    /// `/auth/logout` revoking the session's tokens before it answers.
    Logout(Box<Revoking>),
    /// A request waiting for the provider's discovery document.
    Discovery(AfterDiscovery),
    /// An operator's revoke-all in fleet mode, reading and deleting the fleet's sessions a
    /// page at a time.
    RevokeAll(Box<admin::FleetRevokeAll>),
    /// A fleet's check of the cookie key ring's first key.
    RingHead(admin::RingHead),
}

/// A logout revoking its session's tokens one after the other.
#[derive(Debug, Clone, PartialEq)]
pub struct Revoking {
    /// The reply to send once revocation is done (or timed out).
    pub reply: Reply,
    /// Tokens still to revoke, with their `token_type_hint`.
    pub remaining: Vec<(Secret, &'static str)>,
    /// The one whose revocation is in flight (its hint).
    pub current: &'static str,
    /// What became of each one so far.
    pub results: Vec<(&'static str, String)>,
    /// Audit handle of the ended session.
    pub session: String,
    /// Subject of the ended session (for the access log).
    pub subject: Option<String>,
}

/// A request reading its body: what the body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterBody {
    /// `POST /auth/backchannel-logout`: the form with the logout token.
    BackchannelLogout,
}

/// A protected request waiting for another request's renewal (it does not hold the lock).
#[derive(Debug, Clone, PartialEq)]
pub struct AwaitToken {
    /// The request to resume.
    pub resume: Resume,
    /// Unix seconds when it started waiting.
    pub since: u64,
    /// Unix seconds when it gives up with 503.
    pub deadline: u64,
}

/// A completed code exchange waiting for the provider's JWKS to verify its ID token.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginTokens {
    /// The login.
    pub login: PendingLogin,
    /// Its flow cookie.
    pub flow_cookie: String,
    /// Session presented at callback.
    pub old_session: Option<SessionId>,
    /// The token response.
    pub tokens: oauth::TokenSet,
}

/// A protected request paused for its token.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The session.
    pub sid: SessionId,
    /// The audience.
    pub audience: String,
    /// The route (policy name).
    pub route: String,
    /// Whether an unauthenticated outcome is a redirect to login.
    pub navigation: bool,
    /// The path, for `return_to`.
    pub path: String,
    /// Cookie edit for the forward.
    pub cookie: CookieEdit,
}

/// The token-endpoint call made for a [`Resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCall {
    /// Refresh-token grant for the resume's audience.
    Refresh,
    /// Refresh of the login audience, to be followed by an exchange for the resume's audience.
    RefreshForExchange,
    /// RFC 8693 exchange for the resume's audience.
    Exchange,
}

/// Leeway for `exp`, `iat` and `nbf` checks of JWTs from the provider.
const CLOCK_LEEWAY: u64 = 60;
/// Bounded CAS retries for a session update.
const CAS_RETRIES: usize = 4;
/// Largest request body read (back-channel logout).
pub const MAX_REQUEST_BODY: usize = 16 * 1024;

/// The engine, for one request. Cheap to build: borrows everything.
pub struct Engine<'a> {
    /// Configuration.
    pub cfg: &'a Config,
    /// Now, unix seconds.
    pub now: u64,
    /// Randomness.
    pub rng: &'a mut dyn Random,
    /// Store.
    pub store: &'a mut dyn Store,
    /// Audit lines for the shell to log (never a secret).
    pub notes: Vec<String>,
    /// Audit events (for metrics).
    pub events: Vec<Event>,
    /// Subject of the session the request was decided for (for the access log).
    pub subject: Option<String>,
    /// An origin the route's policy allows cross-origin that sent this request: whatever the
    /// request ends in (a forward's response, or a local reply) gets
    /// [`crate::reply::cors_headers`] for it.
    pub cors: Option<String>,
    /// For a request to a session route: whether it took the fast path, or why not (the shell
    /// counts it: `bffgate_fast_path_taken`, `bffgate_fast_path_missed_<reason>`).
    pub fast_path: Option<Result<(), FastPathMiss>>,
    /// Session cookie values verified by earlier requests of this VM (see [`Engine::with_verified`]).
    verified: Option<&'a VerifiedCookies>,
    /// The provider's endpoints, once known in this run.
    endpoints: Option<Endpoints>,
    /// A discovery read failed in this run (no second read before the retry time).
    discovery_failed: bool,
    /// The VM's session anomaly counters (see [`Engine::with_anomalies`]).
    anomalies: Option<&'a crate::anomaly::Tracker>,
    /// Signals the fast path found, for the full path to act on.
    signals: crate::anomaly::Signals,
    /// This request was counted for the rate signal already.
    rate_counted: bool,
    /// A refusal crossed the `refusals` threshold: its session and code.
    refusal_anomaly: Option<(SessionId, &'static str)>,
    /// Tokens to revoke at the provider after this request, paced by the shell (at most
    /// `admin_revoke_concurrency` in flight per worker; see [`Engine::revocation_callout`]):
    /// the refresh tokens of the sessions `POST /sessions/revoke-all` ended.
    pub background: Vec<(Secret, &'static str)>,
}

impl<'a> Engine<'a> {
    /// Builds an engine.
    pub fn new(
        cfg: &'a Config,
        now: u64,
        rng: &'a mut dyn Random,
        store: &'a mut dyn Store,
    ) -> Self {
        Engine {
            cfg,
            now,
            rng,
            store,
            notes: Vec::new(),
            events: Vec::new(),
            subject: None,
            cors: None,
            fast_path: None,
            verified: None,
            endpoints: None,
            discovery_failed: false,
            anomalies: None,
            signals: Vec::new(),
            rate_counted: false,
            refusal_anomaly: None,
            background: Vec::new(),
        }
    }

    /// Uses (and fills) a VM's session anomaly counters: request rate and refusals per session
    /// in a sliding window, and a memo of the binding hashes. Without them only the binding
    /// drift is checked.
    pub fn with_anomalies(mut self, anomalies: &'a crate::anomaly::Tracker) -> Self {
        self.anomalies = Some(anomalies);
        self
    }

    /// Uses (and fills) a memo of session cookie values whose MAC verified before, so a repeated
    /// cookie costs no HMAC and no verifier hash (see `verified`; the memo is bound to `cfg`'s key
    /// ring and forgets everything when asked with another).
    pub fn with_verified(mut self, verified: &'a VerifiedCookies) -> Self {
        self.verified = Some(verified);
        self
    }

    /// Records an audit event (and its JSON line in `notes`, which the shell logs).
    pub fn event(&mut self, e: Event) {
        let mut line = e.to_json();
        if let Some(o) = line.as_object_mut() {
            o.insert("ts".into(), Value::from(self.now));
        }
        self.notes.push(format!("audit {line}"));
        self.events.push(e);
    }

    fn deny(&mut self, code: ErrorCode, route: &str, session: Option<String>) {
        self.event(Event::Denied {
            code: code.as_str(),
            route: route.to_string(),
            session,
        });
    }

    // ----- entry points -----

    /// A request's headers arrived.
    pub fn on_request(&mut self, req: &Request) -> Step {
        let step = self.decide(req);
        self.finish(step)
    }

    /// A callout answered (or failed): resumes the paused request with its result.
    pub fn on_callout(&mut self, then: AfterCall, result: CallResult) -> Step {
        let step = match then {
            AfterCall::CodeExchange {
                login,
                flow_cookie,
                old_session,
            } => self.finish_login(login, &flow_cookie, old_session, result),
            AfterCall::LoginJwks(lt) => self.login_with_jwks(*lt, &result),
            AfterCall::Userinfo(b) => {
                let (lt, claims) = *b;
                self.login_with_userinfo(lt, claims, &result)
            }
            AfterCall::PendingFetch {
                request,
                state,
                flow_hash,
            } => {
                if let Some(r) = self.store.remote() {
                    r.absorb_pending(&state, &flow_hash, &result);
                }
                self.decide(&request)
            }
            AfterCall::Token { resume, call, lock } => {
                self.finish_token(resume, call, lock, result)
            }
            AfterCall::StoreFetch { request, sid } => {
                if let Some(r) = self.store.remote() {
                    r.absorb(&sid, &result);
                }
                self.decide(&request)
            }
            AfterCall::StoreFlush { outbox, held } => self.flush(outbox, Some(&result), *held),
            AfterCall::WakeFetch { wait } => self.wake_fetched(*wait, &result),
            AfterCall::BackchannelJwks { token } => match self.store_jwks(&result) {
                Ok(()) => self.backchannel_token(&token, false),
                Err(r) => Step::Respond(r),
            },
            AfterCall::Logout(mut r) => {
                self.subject = r.subject.clone();
                let outcome = match &result {
                    CallResult::Response { status, .. } if (200..300).contains(status) => {
                        "revoked".to_string()
                    }
                    CallResult::Response { status, .. } => format!("refused ({status})"),
                    CallResult::Failed => "no answer".to_string(),
                };
                r.results.push((r.current, outcome));
                self.next_revocation(*r)
            }
            AfterCall::Discovery(then) => self.after_discovery(then, &result),
            AfterCall::RevokeAll(run) => self.fleet_revoke_all(*run, &result),
            AfterCall::RingHead(stage) => self.ring_head_step(stage, &result),
        };
        self.finish(step)
    }

    /// The request body arrived (for a [`Step::ReadBody`]); `None` if it was too large.
    pub fn on_body(&mut self, then: AfterBody, body: Option<&[u8]>) -> Step {
        let step = match then {
            AfterBody::BackchannelLogout => self.backchannel_body(body),
        };
        self.finish(step)
    }

    /// Polled by the shell for a request in [`Step::Wait`]: `None` while the renewal it waits
    /// for is still in progress.
    pub fn on_wake(&mut self, wait: &AwaitToken) -> Option<Step> {
        let step = self.wake(wait)?;
        Some(self.finish(step))
    }

    // ----- store flushes (a remote store's writes go out before the request goes on) -----

    /// Holds `step` until the writes this run queued for a remote store are in (nothing to do
    /// for the embedded store, which writes at once).
    fn finish(&mut self, step: Step) -> Step {
        let step = self.apply_refusal_anomaly(step);
        let Some(outbox) = self.store.remote().and_then(|r| r.take_outbox()) else {
            return step;
        };
        self.flush(Box::new(outbox), None, step)
    }

    /// Advances a flush with the answer of its last callout (`None` at the start).
    fn flush(&mut self, mut outbox: Box<Outbox>, result: Option<&CallResult>, held: Step) -> Step {
        let next = match self.store.remote() {
            Some(r) => r.advance(&mut outbox, result),
            // A flush is only ever started by a remote store.
            None => Flush::Done(Outcome::Ok),
        };
        match next {
            Flush::Call(request) => Step::Call {
                request,
                then: Box::new(AfterCall::StoreFlush {
                    outbox,
                    held: Box::new(held),
                }),
            },
            Flush::Done(o) => self.after_flush(o, outbox.critical, held),
        }
    }

    /// What a held step becomes once its writes are flushed with `outcome`.
    fn after_flush(&mut self, outcome: Outcome, critical: bool, held: Step) -> Step {
        if outcome == Outcome::Ok || !critical {
            if outcome != Outcome::Ok {
                self.notes
                    .push("store: a last-use write did not reach the store".into());
            }
            return held;
        }
        self.event(Event::StoreWriteFailed {
            outcome: if outcome == Outcome::Conflict {
                "conflict"
            } else {
                "unavailable"
            },
        });
        match held {
            // Another Envoy took the refresh lock (or changed the session) first: wait for
            // its renewal like a request on this Envoy would.
            Step::Call { then, .. } if outcome == Outcome::Conflict => match *then {
                AfterCall::Token { resume, .. } => {
                    self.event(Event::RefreshCoalesced {
                        session: resume.sid.handle(),
                    });
                    Step::Wait {
                        then: Box::new(AwaitToken {
                            resume,
                            since: self.now,
                            deadline: self.now.saturating_add(self.cfg.lock_ttl()),
                        }),
                    }
                }
                _ => Step::Respond(store_unavailable()),
            },
            _ => Step::Respond(store_unavailable()),
        }
    }

    // ----- routing -----

    /// Decides a request: the operator API (admin instance), a bffgate endpoint, or the policy
    /// of the route Envoy matched.
    fn decide(&mut self, req: &Request) -> Step {
        let (path, query) = split_path(&req.path);
        if self.cfg.admin {
            return self.admin_endpoint(req, path, query);
        }
        let prefix = self.cfg.auth_prefix.as_str();
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                return self.auth_endpoint(req, rest, query);
            }
        }
        let cfg: &'a Config = self.cfg;
        let Some(policy) = req.route.as_deref().and_then(|r| cfg.routes.get(r)) else {
            self.deny(
                ErrorCode::Forbidden,
                req.route.as_deref().unwrap_or(""),
                None,
            );
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "no policy for this route",
            ));
        };
        let view = cookies::CookieView::scan(cfg, req.cookie.as_deref());
        match policy.access {
            Access::Public => Step::Forward {
                authorization: None,
                cookie: view.strip_edit(cfg),
            },
            Access::Session => self.session_route(req, policy, &view),
        }
    }

    /// `<auth_prefix>/*`.
    fn auth_endpoint(&mut self, req: &Request, rest: &str, query: &str) -> Step {
        let m = req.method.as_str();
        Step::Respond(match rest {
            "/login" if m == "GET" || m == "HEAD" => return self.login(req, query),
            "/callback" if m == "GET" => return self.callback(req, query),
            "/user" if m == "GET" || m == "HEAD" => return self.user(req),
            "/logout" if m == "POST" => return self.logout(req),
            "/backchannel-logout" if m == "POST" && self.cfg.provider.verifies_signatures() => {
                return Step::ReadBody {
                    then: AfterBody::BackchannelLogout,
                }
            }
            "/frontchannel-logout" if self.cfg.provider.frontchannel_logout => {
                if m == "GET" {
                    self.frontchannel_logout(query)
                } else {
                    let mut r = error_reply(405, ErrorCode::InvalidRequest, "method not allowed");
                    r.headers.push(("allow".into(), "GET".into()));
                    r
                }
            }
            "/login" | "/callback" | "/user" | "/logout" | "/backchannel-logout" => {
                let mut r = error_reply(405, ErrorCode::InvalidRequest, "method not allowed");
                let allow = match rest {
                    "/logout" | "/backchannel-logout" => "POST",
                    _ => "GET, HEAD",
                };
                r.headers.push(("allow".into(), allow.into()));
                r
            }
            _ => error_reply(404, ErrorCode::InvalidRequest, "no such bffgate endpoint"),
        })
    }
}

/// Splits `:path` into path and query.
fn split_path(p: &str) -> (&str, &str) {
    p.split_once('?').unwrap_or((p, ""))
}

/// A query parameter that appears more than once (parameter pollution): refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Repeated;

/// One query parameter, `None` if absent.
fn query_param(query: &str, name: &str) -> Result<Option<String>, Repeated> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(Repeated);
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// Lowest-effort whitespace tolerance for header values.
fn header_is(v: Option<&str>, want: &str) -> bool {
    v.map(str::trim) == Some(want)
}
