//! The engine: a request (and later, callout results) in, a [`Step`] out.
//!
//! Nothing here touches the host. The wasm shell builds a [`Request`] from the headers and the
//! route Envoy matched, runs [`Engine::on_request`], and applies the step: forward (with header
//! edits), respond locally (and stop the request), or make a callout to the provider and feed
//! its result back through [`Engine::on_callout`].

use crate::audit::{EndReason, Event};
use crate::config::{Acquire, Config};
use crate::cookie;
use crate::jwt;
use crate::callout::{CallResult, Callout};
use crate::oauth::{self, TokenError};
use crate::reply::{
    base_headers, cors_headers, error_reply, json_reply, redirect, store_unavailable, with_cookie,
    ErrorCode, Reply, ReplyKind,
};
use crate::policy::{is_safe_method, Access, CsrfMode, Denial, Policy, UnauthMode};
use crate::redirect::sanitize_return_to;
use crate::secret::Secret;
use crate::session::{AudienceToken, Liveness, Session, SessionId};
use crate::store::{PendingLogin, RemoteState, Store, StoreError};
use crate::util::{ct_eq, hex, random_token, sha256, Random};
use crate::verified::VerifiedCookies;
use serde_json::{json, Value};

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
    /// Call the provider, then resume with [`Engine::on_callout`].
    Call {
        /// The request.
        request: Callout,
        /// The continuation.
        then: Box<Pending>,
    },
    /// Read the whole request body (bounded), then call [`Engine::on_body`].
    ReadBody {
        /// The continuation.
        then: Box<Pending>,
    },
    /// Pause until another request finishes renewing this session's token; the shell polls
    /// [`Engine::on_wake`] (on its timer) until it returns a step.
    Wait {
        /// The continuation.
        then: Box<Pending>,
    },
}

/// A paused request waiting for a callout.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// `/auth/callback` waiting for the code exchange.
    CodeExchange {
        /// The login taken from the store.
        login: PendingLogin,
        /// Name of this login's flow cookie (cleared in the reply).
        flow_cookie: String,
        /// Session presented at callback, dropped on success (no fixation).
        old_session: Option<SessionId>,
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
    /// A protected request waiting for another request's renewal (it does not hold the lock).
    AwaitToken {
        /// The request to resume.
        resume: Resume,
        /// Unix seconds when it started waiting.
        since: u64,
        /// Unix seconds when it gives up with 503.
        deadline: u64,
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
        outbox: Box<crate::fleet::Outbox>,
        /// The step to take once the writes are in.
        held: Box<Step>,
    },
    /// A waiting request re-reading its session from a remote store.
    WakeFetch {
        /// The wait to resume.
        pending: Box<Pending>,
    },
    /// `/auth/callback` taking a login started on another Envoy from a remote store.
    PendingFetch {
        /// The callback, decided again when the answer arrives.
        request: Box<Request>,
        /// Its `state`.
        state: String,
        /// Hex SHA-256 of its flow cookie's value.
        flow_hash: String,
    },
    /// `/auth/callback` waiting for the JWKS to verify the ID token's signature.
    LoginJwks(Box<LoginTokens>),
    /// `POST /auth/backchannel-logout` waiting for its body.
    Backchannel,
    /// A back-channel logout token waiting for the JWKS.
    BackchannelJwks {
        /// The logout token (a JWT; not a credential for anything).
        token: String,
    },
    /// `/auth/logout` revoking the session's tokens before it answers.
    Logout {
        /// The reply to send once revocation is done (or timed out).
        reply: Reply,
        /// Tokens still to revoke, with their `token_type_hint`.
        remaining: Vec<(Secret, &'static str)>,
        /// Subject of the ended session (for the access log).
        subject: Option<String>,
    },
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





/// How long a refresh lock (and a wait for it) lasts, in seconds: the provider callout's
/// timeout, rounded up, plus a margin for the store write.
pub fn lock_ttl(cfg: &Config) -> u64 {
    cfg.provider.timeout_ms.div_ceil(1000).saturating_add(2)
}







/// Splits `:path` into path and query.
fn split_path(p: &str) -> (&str, &str) {
    p.split_once('?').unwrap_or((p, ""))
}

/// One query parameter; `Err` if it appears more than once (parameter pollution).
fn query_param(query: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(());
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// A cookie bffgate owns (never forwarded, never set by an upstream): the session cookie or a
/// login flow cookie, in any letter case (a differently-cased copy of ours is not forwarded
/// either).
pub fn is_bff_cookie(cfg: &Config, name: &str) -> bool {
    let prefix = cfg.cookie.flow_prefix.as_bytes();
    name.eq_ignore_ascii_case(&cfg.cookie.name)
        || name
            .as_bytes()
            .get(..prefix.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(prefix))
}

/// Whether a `Host` / `:authority` names this machine's loopback (`127.0.0.1`, `[::1]`,
/// `localhost`, with or without a port).
fn is_loopback_authority(a: &str) -> bool {
    let a = a.trim().to_ascii_lowercase();
    let rest = ["127.0.0.1", "[::1]", "localhost"]
        .iter()
        .find_map(|h| a.strip_prefix(h));
    match rest {
        Some("") => true,
        Some(p) => p.strip_prefix(':').is_some_and(|d| {
            !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

/// Lowest-effort whitespace tolerance for header values.
fn header_is(v: Option<&str>, want: &str) -> bool {
    v.map(str::trim) == Some(want)
}

/// A cached JWKS older than this is refetched before use.
const JWKS_MAX_AGE: u64 = 3600;
/// An unknown `kid` refetches the JWKS at most this often.
const JWKS_MIN_REFETCH: u64 = 10;
/// Largest request body read (back-channel logout).
pub const MAX_REQUEST_BODY: usize = 16 * 1024;
/// The back-channel logout event (OIDC Back-Channel Logout 1.0, 2.4).
const BCL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Outcome of a JWS check against the cached key set.
enum JwsCheck {
    /// Verified; the payload.
    Verified(serde_json::Map<String, Value>),
    /// The key set must be (re)fetched first.
    Fetch(Callout),
    /// Refused.
    Refused(crate::jose::JoseError),
}

/// Leeway for ID-token `exp` checks.
const CLOCK_LEEWAY: u64 = 60;
/// Bounded CAS retries for a session update.
const CAS_RETRIES: usize = 4;

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
    /// request ends in (a forward's response, or a local reply) gets [`cors_headers`] for it.
    pub cors: Option<String>,
    /// The request's session cookie, verified once per engine (the fast path and the full path
    /// ask for it in turn).
    cookie_id: Option<Option<Result<SessionId, ()>>>,
    /// [`SessionId::verifier_bytes`] of that cookie's id, when already known.
    cookie_verifier: Option<[u8; 64]>,
    /// What the same pass over the cookie header found for [`Engine::strip_cookies`]: the
    /// header's address and length (the memo is used only for that very string, so a clone or
    /// another request's header is scanned afresh), whether it has bffgate cookies, and whether
    /// it has others. Like `cookie_id`, it holds for the one request an engine is for.
    cookie_strip: Option<(usize, usize, bool, bool)>,
    /// Session cookie values verified by earlier requests of this VM (see [`Engine::with_verified`]).
    verified: Option<&'a VerifiedCookies>,
}

/// How the session cookie of a request resolved.
enum SessionLookup {
    /// No session cookie.
    Absent,
    /// A cookie that is malformed, forged, for an unknown key, or for a dead session.
    Invalid,
    /// A live session.
    Live(SessionId, Box<Session>, u32),
    /// Not in the local view of a remote store: fetch it, then decide again.
    Fetch(SessionId, Callout),
    /// The remote store could not be reached and nothing cached may be used: fail closed.
    Unavailable,
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
            cookie_id: None,
            cookie_verifier: None,
            cookie_strip: None,
            verified: None,
        }
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

    fn is_bff_cookie(&self, name: &str) -> bool {
        is_bff_cookie(self.cfg, name)
    }

    /// The `cookie` edit that strips every bffgate cookie.
    fn strip_cookies(&self, req: &Request) -> CookieEdit {
        match &req.cookie {
            None => CookieEdit::Keep,
            Some(h) => {
                // Every part, well-formed or not, by the name `cookie::without` would see.
                let (ours, others) = match self.cookie_strip {
                    Some((at, len, ours, others))
                        if (at, len) == (h.as_ptr() as usize, h.len()) =>
                    {
                        (ours, others)
                    }
                    _ => {
                        let (mut ours, mut others) = (false, false);
                        for (_, name) in cookie::parts(h) {
                            if self.is_bff_cookie(name) {
                                ours = true;
                            } else {
                                others = true;
                            }
                        }
                        (ours, others)
                    }
                };
                match (ours, others) {
                    (false, _) => CookieEdit::Keep,
                    // Nothing would be left: no need to build the rest.
                    (true, false) => CookieEdit::Remove,
                    (true, true) => match cookie::without(h, |n| self.is_bff_cookie(n)) {
                        Some(rest) => CookieEdit::Set(rest),
                        None => CookieEdit::Remove,
                    },
                }
            }
        }
    }

    fn clear_session_cookie(&self) -> String {
        cookie::set_cookie(&self.cfg.cookie.name, "", &self.cfg.cookie.attrs, Some(0))
    }

    fn session_cookie(&self, id: &SessionId) -> String {
        let v = self
            .cfg
            .cookie
            .keys
            .seal(&self.cfg.cookie.name, &id.to_bytes());
        cookie::set_cookie(
            &self.cfg.cookie.name,
            &v,
            &self.cfg.cookie.attrs,
            Some(self.cfg.session.absolute_timeout_s),
        )
    }

    fn session_id_from(&mut self, req: &Request) -> Option<Result<SessionId, ()>> {
        if let Some(known) = &self.cookie_id {
            return known.clone();
        }
        let id = self.verify_session_cookie(req);
        self.cookie_id = Some(id.clone());
        id
    }

    fn verify_session_cookie(&mut self, req: &Request) -> Option<Result<SessionId, ()>> {
        let h = req.cookie.as_deref()?;
        let cfg = self.cfg;
        let scan = cookie::scan(h, &cfg.cookie.name, |n| is_bff_cookie(cfg, n));
        self.cookie_strip = Some((h.as_ptr() as usize, h.len(), scan.ours, scan.others));
        let (count, value) = (scan.count, scan.first);
        let value = value?;
        if count > 1 {
            // Two session cookies: one may be planted. Trust neither.
            return Some(Err(()));
        }
        let ring = &self.cfg.cookie.keys;
        if let Some((id, verifier)) = self.verified.and_then(|v| v.get(ring, value)) {
            self.cookie_verifier = Some(verifier);
            return Some(Ok(id));
        }
        let id = self
            .cfg
            .cookie
            .keys
            .open_with(&self.cfg.cookie.name, value, SessionId::from_bytes)
            .ok()
            .flatten();
        if let (Some(id), Some(verified)) = (&id, self.verified) {
            let verifier = id.verifier_bytes();
            verified.insert(ring, value, id, verifier);
            self.cookie_verifier = Some(verifier);
        }
        Some(id.ok_or(()))
    }

    /// The verifier of the request's (verified) session id.
    fn cookie_verifier(&self, id: &SessionId) -> [u8; 64] {
        self.cookie_verifier.unwrap_or_else(|| id.verifier_bytes())
    }

    fn lookup_session(&mut self, req: &Request) -> SessionLookup {
        let id = match self.session_id_from(req) {
            None => return SessionLookup::Absent,
            Some(Err(())) => return SessionLookup::Invalid,
            Some(Ok(id)) => id,
        };
        match self.store.remote_state(&id) {
            RemoteState::Stale if !req.store_fetched => {
                if let Some(call) = self.store.fetch_session(&id) {
                    return SessionLookup::Fetch(id, call);
                }
            }
            RemoteState::Unavailable => return SessionLookup::Unavailable,
            _ => {}
        }
        // The local view is current here: a session it does not hold is known to be gone (a
        // fleet store's fresh "absent" entry answers a logged-out cookie without an etcd read).
        let Some((s, cas)) = self.store.get_session(&id) else {
            return SessionLookup::Invalid;
        };
        match s.liveness(self.now, self.cfg.session.idle_timeout_s) {
            Liveness::Live => {
                self.subject = Some(s.sub.clone());
                SessionLookup::Live(id, Box::new(s), cas)
            }
            why => {
                let _ = self.store.delete_session(&id);
                self.event(Event::SessionEnded {
                    reason: if why == Liveness::Idle {
                        EndReason::Idle
                    } else {
                        EndReason::Expired
                    },
                    session: id.handle(),
                    sub: None,
                });
                SessionLookup::Invalid
            }
        }
    }

    /// Writes `last_seen` back if it is stale (bounded write rate); losing the race is fine.
    fn touch(&mut self, id: &SessionId, s: &Session, cas: u32) {
        if s.needs_touch(self.now, self.cfg.session.touch_interval_s) {
            let mut t = s.clone();
            t.last_seen = self.now;
            let _ = self.store.put_session(id, &t, cas);
        }
    }

    /// Request entry point.
    pub fn on_request(&mut self, req: &Request) -> Step {
        let step = self.decide(req);
        self.finish(step)
    }

    /// Holds `step` until the writes this run queued for a remote store are in (nothing to do
    /// for the embedded store, which writes at once).
    fn finish(&mut self, step: Step) -> Step {
        let Some(mut outbox) = self.store.take_outbox() else {
            return step;
        };
        match self.store.advance(&mut outbox, None) {
            crate::fleet::Flush::Call(request) => Step::Call {
                request,
                then: Box::new(Pending::StoreFlush {
                    outbox: Box::new(outbox),
                    held: Box::new(step),
                }),
            },
            crate::fleet::Flush::Done(o) => self.after_flush(o, outbox.critical, step),
        }
    }

    /// What a held step becomes once its writes are flushed with `outcome`.
    fn after_flush(&mut self, outcome: crate::fleet::Outcome, critical: bool, held: Step) -> Step {
        use crate::fleet::Outcome;
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
                Pending::Token { resume, .. } => {
                    self.event(Event::RefreshCoalesced {
                        session: resume.sid.handle(),
                    });
                    Step::Wait {
                        then: Box::new(Pending::AwaitToken {
                            resume,
                            since: self.now,
                            deadline: self.now.saturating_add(self.lock_ttl()),
                        }),
                    }
                }
                _ => Step::Respond(store_unavailable()),
            },
            _ => Step::Respond(store_unavailable()),
        }
    }

    fn decide(&mut self, req: &Request) -> Step {
        let (path, query) = split_path(&req.path);
        if self.cfg.admin {
            return Step::Respond(self.admin_endpoint(req, path, query));
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
        match policy.access {
            Access::Public => Step::Forward {
                authorization: None,
                cookie: self.strip_cookies(req),
            },
            Access::Session => {
                if req.method == "OPTIONS" && req.cors_method.is_some() {
                    return Step::Respond(self.preflight(req, policy));
                }
                // An allowed cross-origin caller may read whatever this request ends in (the
                // forwarded response, or a refusal now or after a callout): the shell adds the
                // CORS headers to it.
                if req.origin.is_some() {
                    self.cors = self.cors_origin(req, policy);
                }
                match self.fast_path(req, policy) {
                    Some(step) => step,
                    None => self.protected(req, policy),
                }
            }
        }
    }

    /// The request's `Origin` when it is one the route allows cross-origin (not our own).
    fn cors_origin(&self, req: &Request, policy: &Policy) -> Option<String> {
        let o = req.origin.as_deref()?.trim();
        policy
            .allowed_origins
            .iter()
            .any(|a| a == o)
            .then(|| o.to_string())
    }

    /// A CORS preflight on a session route: allowed origins get the methods and headers they
    /// ask for (with credentials, so the session cookie goes along); any other origin is
    /// refused with `403 csrf`, which the browser turns into a failed fetch.
    fn preflight(&mut self, req: &Request, policy: &Policy) -> Reply {
        let method = req.cors_method.as_deref().unwrap_or("").trim();
        let origin = self.cors_origin(req, policy);
        let (Some(origin), true) = (origin, crate::util::is_token(method)) else {
            self.deny(ErrorCode::Csrf, &policy.route, None);
            return error_reply(403, ErrorCode::Csrf, "cross-origin request not allowed");
        };
        // Only header names are echoed (RFC 9110 tokens), never anything else the client sent.
        let headers: Vec<&str> = req
            .cors_headers
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|h| crate::util::is_token(h))
            .take(32)
            .collect();
        let mut r = Reply {
            status: 204,
            headers: base_headers(),
            body: String::new(),
            kind: ReplyKind::Endpoint,
        };
        r.headers.extend([
            ("access-control-allow-methods".into(), method.to_string()),
            ("access-control-max-age".into(), "600".into()),
            (
                "vary".into(),
                "origin, access-control-request-method, access-control-request-headers".into(),
            ),
        ]);
        if !headers.is_empty() {
            r.headers
                .push(("access-control-allow-headers".into(), headers.join(", ")));
        }
        r.headers.extend(cors_headers(origin));
        r
    }

    /// The common case, decided from the binary head of the stored record (no JSON, no
    /// allocation per field; see `record`): a valid cookie, a live session that needs no
    /// last-use write, no claims to check, a fresh token for the audience with the route's
    /// scopes, and a request that passes CSRF. Anything else returns `None` and takes the full
    /// path, which decides (and explains) it.
    fn fast_path(&mut self, req: &Request, policy: &Policy) -> Option<Step> {
        if !policy.claims.is_empty() || !self.csrf_ok(req, policy.csrf, &policy.allowed_origins) {
            return None;
        }
        let audience = policy.audience.as_deref()?;
        let id = self.session_id_from(req)?.ok()?;
        let (mut raw, _) = self.store.get_session_raw(&id)?;
        let view = crate::record::Head::parse(&raw)?;
        if !ct_eq(view.owner, &self.cookie_verifier(&id))
            || self.now >= view.expires
            || self.now
                >= view
                    .last_seen
                    .saturating_add(self.cfg.session.touch_interval_s)
        {
            return None;
        }
        let (span, scope) = view.token_span(audience, self.now, self.cfg.session.refresh_skew_s)?;
        if !policy.scopes_ok(scope) {
            return None;
        }
        let subject = view.sub.to_string();
        // The token is taken out of the record's own buffer: no second allocation or copy.
        raw.truncate(span.end);
        raw.drain(..span.start);
        let token = String::from_utf8(raw).ok()?;
        self.subject = Some(subject);
        Some(Step::Forward {
            authorization: Some(Secret::new(token)),
            cookie: self.strip_cookies(req),
        })
    }

    fn csrf_ok(&self, req: &Request, mode: CsrfMode, allowed: &[String]) -> bool {
        let needed = mode == CsrfMode::AllMethods || !is_safe_method(&req.method);
        if !needed {
            return true;
        }
        if !header_is(req.csrf.as_deref(), &self.cfg.csrf_value) {
            return false;
        }
        if header_is(req.sec_fetch_site.as_deref(), "cross-site") {
            return false;
        }
        match req.origin.as_deref().map(str::trim) {
            None => true,
            Some(o) => o == self.cfg.public_origin || allowed.iter().any(|a| a == o),
        }
    }

    /// A navigation is decided from Fetch Metadata first (`Sec-Fetch-Mode`, then
    /// `Sec-Fetch-Dest`), and from `Accept` only for clients that send neither.
    fn is_navigation(req: &Request) -> bool {
        if let Some(m) = req.sec_fetch_mode.as_deref().map(str::trim) {
            return m.eq_ignore_ascii_case("navigate");
        }
        if let Some(d) = req.sec_fetch_dest.as_deref().map(str::trim) {
            return matches!(
                d.to_ascii_lowercase().as_str(),
                "document" | "iframe" | "frame" | "embed" | "object"
            );
        }
        req.accept
            .as_deref()
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
    }

    fn wants_redirect(req: &Request, mode: UnauthMode) -> bool {
        let safe = req.method == "GET" || req.method == "HEAD";
        match mode {
            UnauthMode::Auto => safe && Self::is_navigation(req),
            UnauthMode::Redirect => safe,
            UnauthMode::Deny => false,
        }
    }

    fn login_location(&self, path: &str) -> String {
        let rt = sanitize_return_to(Some(path));
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("return_to", &rt);
        format!("{}/login?{}", self.cfg.auth_prefix, q.finish())
    }

    fn unauthenticated(&self, navigation: bool, path: &str, had_cookie: bool) -> Reply {
        let r = if navigation {
            let mut r = redirect(&self.login_location(path));
            r.kind = ReplyKind::LoginRedirect;
            r
        } else {
            error_reply(401, ErrorCode::Unauthenticated, "sign in first")
        };
        if had_cookie {
            with_cookie(r, self.clear_session_cookie())
        } else {
            r
        }
    }

    fn protected(&mut self, req: &Request, policy: &Policy) -> Step {
        // The session is looked up first so that every refusal can name it in the audit log.
        let found = self.lookup_session(req);
        if !self.csrf_ok(req, policy.csrf, &policy.allowed_origins) {
            let handle = match &found {
                SessionLookup::Live(id, _, _) => Some(id.handle()),
                _ => None,
            };
            self.deny(ErrorCode::Csrf, &policy.route, handle);
            return Step::Respond(error_reply(
                403,
                ErrorCode::Csrf,
                "cross-site request or missing CSRF header",
            ));
        }
        let navigation = Self::wants_redirect(req, policy.unauthenticated);
        let (id, session, cas) = match found {
            SessionLookup::Live(id, s, cas) => (id, s, cas),
            SessionLookup::Absent => {
                self.deny(ErrorCode::Unauthenticated, &policy.route, None);
                return Step::Respond(self.unauthenticated(navigation, &req.path, false));
            }
            SessionLookup::Invalid => {
                self.deny(ErrorCode::Unauthenticated, &policy.route, None);
                return Step::Respond(self.unauthenticated(navigation, &req.path, true));
            }
            SessionLookup::Fetch(sid, request) => return Self::fetch_then_retry(req, sid, request),
            SessionLookup::Unavailable => return Step::Respond(store_unavailable()),
        };
        if !policy.claims_ok(&session.claims) {
            self.deny(ErrorCode::Forbidden, &policy.route, Some(id.handle()));
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "not allowed for this user",
            ));
        }
        let Some(audience) = policy.audience.clone() else {
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "route has no audience",
            ));
        };
        let cookie = self.strip_cookies(req);
        if let Some(t) = session.token_for(&audience, self.now, self.cfg.session.refresh_skew_s) {
            let token = t.token.clone();
            let scope = t.scope.clone();
            self.touch(&id, &session, cas);
            return self.authorize(policy, &id, &session.claims, &scope, token, cookie);
        }
        let resume = Resume {
            sid: id,
            audience,
            route: policy.route.clone(),
            navigation,
            path: req.path.clone(),
            cookie,
        };
        self.obtain(resume, None)
    }

    /// Gets a token for `r.audience`: uses a fresh one, waits for a renewal in progress, or
    /// takes the session's refresh lock and calls the provider.
    fn obtain(&mut self, r: Resume, waited_since: Option<u64>) -> Step {
        let Some(policy) = self.cfg.routes.get(&r.route).cloned() else {
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "no policy for this route",
            ));
        };
        for _ in 0..CAS_RETRIES {
            let Some((mut s, cas)) = self.store.get_session(&r.sid) else {
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            };
            if s.liveness(self.now, self.cfg.session.idle_timeout_s) != Liveness::Live {
                let _ = self.store.delete_session(&r.sid);
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            }
            self.subject = Some(s.sub.clone());
            if let Some(t) = s.token_for(&r.audience, self.now, self.cfg.session.refresh_skew_s) {
                let (token, scope) = (t.token.clone(), t.scope.clone());
                return self.authorize(&policy, &r.sid, &s.claims, &scope, token, r.cookie);
            }
            if s.refresh_locked(self.now) {
                // Someone else is renewing. A token that has not expired yet is still good.
                if let Some(t) = s.token_for(&r.audience, self.now, 0) {
                    let (token, scope) = (t.token.clone(), t.scope.clone());
                    return self.authorize(&policy, &r.sid, &s.claims, &scope, token, r.cookie);
                }
                let deadline = self.now.saturating_add(self.lock_ttl());
                if waited_since.is_none() {
                    self.event(Event::RefreshCoalesced {
                        session: r.sid.handle(),
                    });
                }
                return Step::Wait {
                    then: Box::new(Pending::AwaitToken {
                        resume: r,
                        since: waited_since.unwrap_or(self.now),
                        deadline,
                    }),
                };
            }
            if let Some(since) = waited_since {
                if s.refresh_failed_at != 0 && s.refresh_failed_at >= since {
                    // The renewal we waited for failed: the provider is unwell; fail fast.
                    return self.transient_failure(&policy, &r);
                }
            }
            // Decide the call before taking the lock.
            let acquire = self
                .cfg
                .audiences
                .iter()
                .find(|a| a.id == r.audience)
                .map_or(Acquire::Refresh, |a| a.acquire);
            let call = match acquire {
                Acquire::Exchange => {
                    if s.token_for(
                        &self.cfg.login_audience,
                        self.now,
                        self.cfg.session.refresh_skew_s,
                    )
                    .is_some()
                    {
                        TokenCall::Exchange
                    } else {
                        TokenCall::RefreshForExchange
                    }
                }
                _ => TokenCall::Refresh,
            };
            let request = match call {
                TokenCall::Exchange => s
                    .token_for(&self.cfg.login_audience, self.now, 0)
                    .map(|t| oauth::exchange_request(self.cfg, t.token.expose(), &r.audience)),
                TokenCall::Refresh => s
                    .refresh_token
                    .as_ref()
                    .map(|rt| oauth::refresh_request(self.cfg, rt.expose(), &r.audience)),
                TokenCall::RefreshForExchange => s.refresh_token.as_ref().map(|rt| {
                    oauth::refresh_request(self.cfg, rt.expose(), &self.cfg.login_audience)
                }),
            };
            let Some(request) = request else {
                // Nothing can renew this session's access: it is over.
                let _ = self.store.delete_session(&r.sid);
                self.event(Event::SessionEnded {
                    reason: EndReason::NoRefreshToken,
                    session: r.sid.handle(),
                    sub: None,
                });
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            };
            s.refreshing_until = self.now.saturating_add(self.lock_ttl());
            // A request that renews a token is activity too (the fast path touches likewise).
            s.last_seen = s.last_seen.max(self.now);
            let lock = s.refreshing_until;
            match self.store.put_session(&r.sid, &s, cas) {
                Ok(()) => {
                    return Step::Call {
                        request,
                        then: Box::new(Pending::Token {
                            resume: r,
                            call,
                            lock,
                        }),
                    }
                }
                Err(StoreError::CasMismatch) => continue,
                Err(_) => break,
            }
        }
        Step::Respond(error_reply(
            503,
            ErrorCode::IdpUnavailable,
            "session store busy; try again",
        ))
    }

    /// How long a refresh lock (and a wait for it) lasts: the callout timeout, rounded up, plus
    /// a margin for the store write.
    fn lock_ttl(&self) -> u64 {
        lock_ttl(self.cfg)
    }

    /// The provider could not renew: use a token that is still valid, else 503.
    fn transient_failure(&mut self, policy: &Policy, r: &Resume) -> Step {
        if let Some((s, _)) = self.store.get_session(&r.sid) {
            if let Some(t) = s.token_for(&r.audience, self.now, 0) {
                let (token, scope) = (t.token.clone(), t.scope.clone());
                return self.authorize(policy, &r.sid, &s.claims, &scope, token, r.cookie.clone());
            }
        }
        Step::Respond(error_reply(
            503,
            ErrorCode::IdpUnavailable,
            "the identity provider is unavailable; try again",
        ))
    }

    /// Polled by the shell for a request in [`Step::Wait`]: `None` while the renewal it waits
    /// for is still in progress.
    pub fn on_wake(&mut self, pending: &Pending) -> Option<Step> {
        let step = self.wake(pending)?;
        Some(self.finish(step))
    }

    fn wake(&mut self, pending: &Pending) -> Option<Step> {
        let Pending::AwaitToken {
            resume,
            since,
            deadline,
        } = pending
        else {
            return Some(Step::Respond(error_reply(
                500,
                ErrorCode::IdpUnavailable,
                "internal: not a waiting request",
            )));
        };
        if self.store.is_stale_for_wait(&resume.sid) {
            // A remote store's renewal shows here only once the session is read again.
            if let Some(request) = self.store.fetch_session(&resume.sid) {
                return Some(Step::Call {
                    request,
                    then: Box::new(Pending::WakeFetch {
                        pending: Box::new(pending.clone()),
                    }),
                });
            }
        }
        let mut fresh = false;
        if let Some((s, _)) = self.store.get_session(&resume.sid) {
            fresh = s
                .token_for(&resume.audience, self.now, self.cfg.session.refresh_skew_s)
                .is_some();
            if !fresh && s.refresh_locked(self.now) && self.now < *deadline {
                return None;
            }
        }
        // A token renewed before the timer got here is used even if the deadline has come.
        if self.now >= *deadline && !fresh {
            self.event(Event::RefreshFailed {
                session: resume.sid.handle(),
                reason: "wait_timeout",
            });
            return Some(Step::Respond(error_reply(
                503,
                ErrorCode::IdpUnavailable,
                "the identity provider is slow; try again",
            )));
        }
        Some(self.obtain(resume.clone(), Some(*since)))
    }

    fn authorize(
        &mut self,
        policy: &Policy,
        id: &SessionId,
        claims: &serde_json::Map<String, Value>,
        scope: &str,
        token: Secret,
        cookie: CookieEdit,
    ) -> Step {
        match policy.decide(claims, scope) {
            Ok(()) => Step::Forward {
                authorization: Some(token),
                cookie,
            },
            Err(Denial::InsufficientScope) => {
                self.deny(
                    ErrorCode::InsufficientScope,
                    &policy.route,
                    Some(id.handle()),
                );
                Step::Respond(error_reply(
                    403,
                    ErrorCode::InsufficientScope,
                    &format!("this route needs scope: {}", policy.scopes.join(" ")),
                ))
            }
            Err(_) => Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "not allowed for this user",
            )),
        }
    }

    // ----- /auth/* -----

    fn auth_endpoint(&mut self, req: &Request, rest: &str, query: &str) -> Step {
        let m = req.method.as_str();
        Step::Respond(match rest {
            "/login" if m == "GET" || m == "HEAD" => self.login(req, query),
            "/callback" if m == "GET" => match self.callback(req, query) {
                Ok(step) => return step,
                Err(reply) => reply,
            },
            "/user" if m == "GET" || m == "HEAD" => return self.user(req),
            "/logout" if m == "POST" => return self.logout(req),
            "/backchannel-logout" if m == "POST" && self.cfg.provider.jwks_path.is_some() => {
                return Step::ReadBody {
                    then: Box::new(Pending::Backchannel),
                }
            }
            "/login" | "/callback" | "/user" | "/logout" | "/backchannel-logout" => {
                let mut r = error_reply(405, ErrorCode::InvalidRequest, "method not allowed");
                let allow = if rest == "/logout" || rest == "/backchannel-logout" {
                    "POST"
                } else {
                    "GET, HEAD"
                };
                r.headers.push(("allow".into(), allow.into()));
                r
            }
            _ => error_reply(404, ErrorCode::InvalidRequest, "no such bffgate endpoint"),
        })
    }

    fn flow_cookie_name(&self, state: &str) -> String {
        let h = sha256(state.as_bytes());
        format!(
            "{}{}",
            self.cfg.cookie.flow_prefix,
            hex(h.get(..6).unwrap_or(&[]))
        )
    }

    fn clear_flow_cookie(&self, name: &str) -> String {
        cookie::set_cookie(name, "", &self.cfg.cookie.attrs, Some(0))
    }

    fn login(&mut self, _req: &Request, query: &str) -> Reply {
        let return_to = match query_param(query, "return_to") {
            Ok(v) => sanitize_return_to(v.as_deref()),
            Err(()) => "/".to_string(),
        };
        let nonce = random_token(self.rng, 16);
        let verifier = random_token(self.rng, 32);
        let flow_secret = random_token(self.rng, 32);
        let pending = PendingLogin {
            verifier: Secret::new(verifier.clone()),
            nonce: nonce.clone(),
            return_to,
            flow_hash: hex(&sha256(flow_secret.as_bytes())),
            expires: self.now.saturating_add(self.cfg.session.login_timeout_s),
            state_hash: String::new(),
        };
        let state = match self.store.create_pending(&pending, self.rng, self.now) {
            Ok(s) => s,
            Err(_) => {
                return self.login_failed(
                    503,
                    ErrorCode::LoginFailed,
                    "cannot start a login now; try again",
                    None,
                )
            }
        };
        let url = oauth::authorize_url(self.cfg, &state, &nonce, &oauth::pkce_challenge(&verifier));
        let flow = cookie::set_cookie(
            &self.flow_cookie_name(&state),
            &flow_secret,
            &self.cfg.cookie.attrs_for_flow(),
            Some(self.cfg.session.login_timeout_s),
        );
        self.event(Event::LoginStarted);
        with_cookie(redirect(&url), flow)
    }

    fn login_failed(
        &mut self,
        status: u16,
        code: ErrorCode,
        why: &str,
        flow_cookie: Option<&str>,
    ) -> Reply {
        self.event(Event::LoginFailed {
            reason: why.to_string(),
        });
        let r = error_reply(status, code, why);
        match flow_cookie {
            Some(n) => with_cookie(r, self.clear_flow_cookie(n)),
            None => r,
        }
    }
}

// `callback` returns a callout, not a reply; keep the plumbing explicit.
impl Engine<'_> {
    fn callback(&mut self, req: &Request, query: &str) -> Result<Step, Reply> {
        let params = |name: &str| query_param(query, name);
        let state = match params("state") {
            Ok(Some(s)) if !s.is_empty() && s.len() <= 256 => s,
            Ok(_) => {
                return Err(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    "missing or invalid state",
                    None,
                ))
            }
            Err(()) => {
                return Err(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    "repeated parameters",
                    None,
                ))
            }
        };
        let flow_name = self.flow_cookie_name(&state);
        let flow_value = req
            .cookie
            .as_deref()
            .and_then(|h| cookie::find(h, &flow_name).1)
            .map(str::to_string);
        let Some(flow_value) = flow_value else {
            return Err(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "this login was not started in this browser",
                None,
            ));
        };
        // The login is taken only by the browser that holds its flow cookie: the store compares
        // the flow cookie's hash before it consumes anything, so a `state` learned elsewhere
        // (history, provider logs) cannot burn the victim's login.
        let flow_hash = hex(&sha256(flow_value.as_bytes()));
        let Some(login) = self.store.take_pending(&state, &flow_hash) else {
            if !req.store_fetched {
                if let Some(request) = self.store.fetch_pending(&state, &flow_hash) {
                    let mut again = req.clone();
                    again.store_fetched = true;
                    return Ok(Step::Call {
                        request,
                        then: Box::new(Pending::PendingFetch {
                            request: Box::new(again),
                            state,
                            flow_hash,
                        }),
                    });
                }
            }
            return Err(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "unknown, expired or already used state, or a login not started in this browser",
                Some(&flow_name),
            ));
        };
        // The store compared already; checked again here so no store can skip it.
        if !ct_eq(flow_hash.as_bytes(), login.flow_hash.as_bytes()) {
            return Err(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "this login was not started in this browser",
                Some(&flow_name),
            ));
        }
        if self.now >= login.expires {
            return Err(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "login took too long",
                Some(&flow_name),
            ));
        }
        match params("error") {
            Ok(None) => {}
            Ok(Some(e)) => {
                let code: String = e
                    .chars()
                    .filter(|c| c.is_ascii_lowercase() || *c == '_')
                    .take(64)
                    .collect();
                let why = format!("the identity provider refused: {code}");
                return Err(self.login_failed(400, ErrorCode::LoginFailed, &why, Some(&flow_name)));
            }
            Err(()) => {
                return Err(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    "repeated parameters",
                    Some(&flow_name),
                ))
            }
        }
        let code = match params("code") {
            Ok(Some(c)) if !c.is_empty() && c.len() <= 2048 => c,
            _ => {
                return Err(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    "missing code",
                    Some(&flow_name),
                ))
            }
        };
        let old_session = match self.session_id_from(req) {
            Some(Ok(id)) => Some(id),
            _ => None,
        };
        let request = oauth::code_request(self.cfg, &code, login.verifier.expose());
        Ok(Step::Call {
            request,
            then: Box::new(Pending::CodeExchange {
                login,
                flow_cookie: flow_name,
                old_session,
            }),
        })
    }

    /// Pauses a request on a store fetch; it is decided again when the answer arrives.
    fn fetch_then_retry(req: &Request, sid: SessionId, request: Callout) -> Step {
        let mut again = req.clone();
        again.store_fetched = true;
        Step::Call {
            request,
            then: Box::new(Pending::StoreFetch {
                request: Box::new(again),
                sid,
            }),
        }
    }

    fn user(&mut self, req: &Request) -> Step {
        Step::Respond(match self.lookup_session(req) {
            SessionLookup::Fetch(sid, request) => return Self::fetch_then_retry(req, sid, request),
            SessionLookup::Live(id, s, cas) => {
                self.touch(&id, &s, cas);
                let mut claims = s.claims.clone();
                claims.remove("sid");
                let last_seen = if s.needs_touch(self.now, self.cfg.session.touch_interval_s) {
                    self.now
                } else {
                    s.last_seen
                };
                let idle_exp = last_seen.saturating_add(self.cfg.session.idle_timeout_s);
                json_reply(
                    200,
                    json!({
                        "sub": s.sub,
                        "claims": claims,
                        "expires_at": idle_exp.min(s.expires),
                        "absolute_expires_at": s.expires,
                        "idle_expires_at": idle_exp,
                    }),
                )
            }
            SessionLookup::Absent => error_reply(401, ErrorCode::Unauthenticated, "no session"),
            SessionLookup::Unavailable => store_unavailable(),
            SessionLookup::Invalid => with_cookie(
                error_reply(401, ErrorCode::Unauthenticated, "no session"),
                self.clear_session_cookie(),
            ),
        })
    }

    fn logout(&mut self, req: &Request) -> Step {
        if !self.csrf_ok(req, CsrfMode::AllMethods, &[]) {
            self.deny(ErrorCode::Csrf, "logout", None);
            return Step::Respond(error_reply(
                403,
                ErrorCode::Csrf,
                "cross-site request or missing CSRF header",
            ));
        }
        let mut revoke: Vec<(Secret, &'static str)> = Vec::new();
        let mut id_token = None;
        let mut ended = None;
        let found = self.lookup_session(req);
        match found {
            SessionLookup::Fetch(sid, request) => return Self::fetch_then_retry(req, sid, request),
            // Not confirmed gone: the cookie stays, so the logout can be tried again.
            SessionLookup::Unavailable => return Step::Respond(store_unavailable()),
            _ => {}
        }
        if let SessionLookup::Live(id, s, _) = found {
            // Gone locally first (every worker sees it at once); revocation follows.
            let _ = self.store.delete_session(&id);
            self.event(Event::SessionEnded {
                reason: EndReason::Logout,
                session: id.handle(),
                sub: Some(s.sub.clone()),
            });
            if let Some(rt) = &s.refresh_token {
                revoke.push((rt.clone(), "refresh_token"));
            }
            if self.cfg.provider.revoke_access_tokens {
                for t in &s.tokens {
                    if t.exp > self.now {
                        revoke.push((t.token.clone(), "access_token"));
                    }
                }
            }
            id_token = s.id_token.clone();
            ended = Some(id.handle());
        }
        let mut body = json!({"logged_out": true});
        if let Some(es) = &self.cfg.provider.end_session_endpoint {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("client_id", &self.cfg.client.client_id);
            if self.cfg.client.logout_id_token_hint {
                if let Some(it) = &id_token {
                    q.append_pair("id_token_hint", it.expose());
                }
            }
            if let Some(p) = &self.cfg.client.post_logout_redirect_uri {
                q.append_pair("post_logout_redirect_uri", p);
            }
            if let Some(obj) = body.as_object_mut() {
                obj.insert(
                    "end_session_url".into(),
                    Value::String(format!("{es}?{}", q.finish())),
                );
            }
        }
        let reply = with_cookie(json_reply(200, body), self.clear_session_cookie());
        if let (Some(h), false) = (&ended, revoke.is_empty()) {
            if self.cfg.provider.revocation_path.is_some() {
                self.event(Event::RevocationSent {
                    session: h.clone(),
                    tokens: revoke.len(),
                });
            }
        }
        self.next_revocation(reply, revoke)
    }

    // ----- callouts -----

    /// Resumes a paused request with the result of its callout.
    pub fn on_callout(&mut self, pending: Pending, result: CallResult) -> Step {
        let step = self.callout(pending, result);
        self.finish(step)
    }

    fn callout(&mut self, pending: Pending, result: CallResult) -> Step {
        match pending {
            Pending::StoreFlush { mut outbox, held } => {
                match self.store.advance(&mut outbox, Some(&result)) {
                    crate::fleet::Flush::Call(request) => Step::Call {
                        request,
                        then: Box::new(Pending::StoreFlush { outbox, held }),
                    },
                    crate::fleet::Flush::Done(o) => self.after_flush(o, outbox.critical, *held),
                }
            }
            Pending::WakeFetch { pending } => {
                if let Pending::AwaitToken { resume, .. } = pending.as_ref() {
                    self.store.absorb(&resume.sid, &result);
                }
                let wait = Step::Wait {
                    then: pending.clone(),
                };
                if matches!(result, CallResult::Failed) {
                    // Wait on (the deadline still holds); the next tick reads again.
                    return wait;
                }
                match self.wake(&pending) {
                    Some(Step::Call { then, .. }) if matches!(*then, Pending::WakeFetch { .. }) => {
                        wait
                    }
                    Some(step) => step,
                    None => wait,
                }
            }
            Pending::PendingFetch {
                request,
                state,
                flow_hash,
            } => {
                self.store.absorb_pending(&state, &flow_hash, &result);
                self.decide(&request)
            }
            Pending::CodeExchange {
                login,
                flow_cookie,
                old_session,
            } => self.finish_login(login, &flow_cookie, old_session, result),
            Pending::LoginJwks(lt) => {
                if let Some(step) = self.store_jwks(&result) {
                    return step;
                }
                let LoginTokens {
                    login,
                    flow_cookie,
                    old_session,
                    tokens,
                } = *lt;
                match self.check_id_token(&login, &flow_cookie, &tokens, false) {
                    Ok(claims) => Step::Respond(self.complete_login(
                        login,
                        &flow_cookie,
                        old_session,
                        tokens,
                        claims,
                    )),
                    Err(step) => step,
                }
            }
            Pending::BackchannelJwks { token } => {
                if let Some(step) = self.store_jwks(&result) {
                    return Step::Respond(match step {
                        Step::Respond(_) => error_reply(
                            503,
                            ErrorCode::IdpUnavailable,
                            "cannot fetch the provider's keys",
                        ),
                        _ => error_reply(503, ErrorCode::IdpUnavailable, "internal"),
                    });
                }
                self.backchannel_token(&token, false)
            }
            Pending::StoreFetch { request, sid } => {
                self.store.absorb(&sid, &result);
                self.decide(&request)
            }
            Pending::Backchannel => Step::Respond(error_reply(
                500,
                ErrorCode::InvalidRequest,
                "internal: body expected",
            )),
            Pending::Token { resume, call, lock } => self.finish_token(resume, call, lock, result),
            Pending::Logout {
                reply,
                remaining,
                subject,
            } => {
                self.subject = subject;
                self.next_revocation(reply, remaining)
            }
            Pending::AwaitToken { .. } => Step::Respond(error_reply(
                500,
                ErrorCode::IdpUnavailable,
                "internal: unexpected callout",
            )),
        }
    }

    fn finish_login(
        &mut self,
        login: PendingLogin,
        flow_cookie: &str,
        old_session: Option<SessionId>,
        result: CallResult,
    ) -> Step {
        let (status, body) = match result {
            CallResult::Response { status, body } => (status, body),
            CallResult::Failed => {
                return Step::Respond(self.login_failed(
                    503,
                    ErrorCode::IdpUnavailable,
                    "the identity provider did not answer",
                    Some(flow_cookie),
                ))
            }
        };
        let tokens = match oauth::parse_token_response(status, &body, self.now) {
            Ok(t) => t,
            Err(TokenError::Unavailable(_)) => {
                return Step::Respond(self.login_failed(
                    503,
                    ErrorCode::IdpUnavailable,
                    "the identity provider is unavailable",
                    Some(flow_cookie),
                ))
            }
            Err(e) => {
                let why = match e {
                    TokenError::InvalidGrant => "the authorization code was refused",
                    TokenError::OAuth(_) => "the token endpoint refused the client",
                    _ => "the token endpoint answered nonsense",
                };
                return Step::Respond(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    why,
                    Some(flow_cookie),
                ));
            }
        };
        let claims = match self.check_id_token(&login, flow_cookie, &tokens, true) {
            Ok(c) => c,
            Err(Step::Call { request, .. }) => {
                return Step::Call {
                    request,
                    then: Box::new(Pending::LoginJwks(Box::new(LoginTokens {
                        login,
                        flow_cookie: flow_cookie.to_string(),
                        old_session,
                        tokens,
                    }))),
                }
            }
            Err(step) => return step,
        };
        Step::Respond(self.complete_login(login, flow_cookie, old_session, tokens, claims))
    }

    /// Checks the ID token's claims, and its signature when a JWKS is configured. `Err` is the
    /// step to take instead: a refusal, or (with `may_fetch`) a JWKS callout whose
    /// continuation the caller fills in.
    // The error is a whole step by design (it is what the caller returns); it is built once.
    #[allow(clippy::result_large_err)]
    fn check_id_token(
        &mut self,
        login: &PendingLogin,
        flow_cookie: &str,
        tokens: &oauth::TokenSet,
        may_fetch: bool,
    ) -> Result<serde_json::Map<String, Value>, Step> {
        let Some(id_token) = tokens.id_token.clone() else {
            return Err(Step::Respond(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "no ID token",
                Some(flow_cookie),
            )));
        };
        let claims = match jwt::check_id_token(
            id_token.expose(),
            &self.cfg.provider.issuer,
            &self.cfg.client.client_id,
            &login.nonce,
            self.now,
            CLOCK_LEEWAY,
        ) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("the ID token was refused ({e:?})");
                return Err(Step::Respond(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    &why,
                    Some(flow_cookie),
                )));
            }
        };
        if self.cfg.provider.jwks_path.is_none() {
            return Ok(claims);
        }
        match self.verify_jws(id_token.expose(), may_fetch) {
            JwsCheck::Verified(_) => Ok(claims),
            JwsCheck::Fetch(request) => Err(Step::Call {
                request,
                then: Box::new(Pending::Backchannel),
            }),
            JwsCheck::Refused(e) => {
                let why = format!("the ID token signature was refused ({e:?})");
                Err(Step::Respond(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    &why,
                    Some(flow_cookie),
                )))
            }
        }
    }

    /// Verifies a JWS with the cached JWKS; asks for a fetch if the cache is missing, stale,
    /// or lacks the token's key (at most one refetch every 10 s, so forged `kid`s cannot make
    /// bffgate hammer the provider).
    fn verify_jws(&mut self, jwt: &str, may_fetch: bool) -> JwsCheck {
        let cached = self.store.jwks();
        let fresh = cached
            .as_ref()
            .is_some_and(|(_, at)| self.now.saturating_sub(*at) < JWKS_MAX_AGE);
        let recently = cached
            .as_ref()
            .is_some_and(|(_, at)| self.now.saturating_sub(*at) < JWKS_MIN_REFETCH);
        let fetch = |e: &Engine<'_>| oauth::jwks_request(e.cfg);
        if let (Some((doc, _)), true) = (&cached, fresh) {
            let set = crate::jose::parse_jwks(doc).unwrap_or_default();
            match crate::jose::verify(jwt, &set) {
                Ok(claims) => return JwsCheck::Verified(claims),
                Err(crate::jose::JoseError::UnknownKey) if may_fetch && !recently => {}
                Err(e) => return JwsCheck::Refused(e),
            }
        } else if !may_fetch {
            return JwsCheck::Refused(crate::jose::JoseError::UnknownKey);
        }
        match fetch(self) {
            Some(r) => JwsCheck::Fetch(r),
            None => JwsCheck::Refused(crate::jose::JoseError::UnknownKey),
        }
    }

    /// Stores a fetched JWKS; `Some(step)` if the fetch failed (the step to answer with).
    fn store_jwks(&mut self, result: &CallResult) -> Option<Step> {
        match result {
            CallResult::Response { status: 200, body }
                if crate::jose::parse_jwks(body).is_ok_and(|s| !s.keys.is_empty()) =>
            {
                self.store.set_jwks(body, self.now);
                None
            }
            _ => Some(Step::Respond(error_reply(
                503,
                ErrorCode::IdpUnavailable,
                "cannot fetch the identity provider's keys",
            ))),
        }
    }

    fn complete_login(
        &mut self,
        login: PendingLogin,
        flow_cookie: &str,
        old_session: Option<SessionId>,
        tokens: oauth::TokenSet,
        claims: serde_json::Map<String, Value>,
    ) -> Reply {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut kept = serde_json::Map::new();
        for k in &self.cfg.keep_claims {
            if let Some(v) = claims.get(k) {
                kept.insert(k.clone(), v.clone());
            }
        }
        let scope = tokens
            .scope
            .clone()
            .or_else(|| jwt_scope(tokens.access_token.expose()))
            .unwrap_or_default();
        let session = Session {
            owner: String::new(),
            handle: String::new(),
            sub: sub.clone(),
            claims: kept,
            created: self.now,
            last_seen: self.now,
            expires: self.now.saturating_add(self.cfg.session.absolute_timeout_s),
            refresh_token: tokens.refresh_token.clone(),
            // Kept only when logout needs it for `id_token_hint`: a smaller record is cheaper on
            // every request, and one token fewer is at rest.
            id_token: if self.cfg.client.logout_id_token_hint {
                tokens.id_token.clone()
            } else {
                None
            },
            tokens: vec![AudienceToken {
                aud: self.cfg.login_audience.clone(),
                token: tokens.access_token.clone(),
                exp: self.now.saturating_add(tokens.expires_in),
                obtained: self.now,
                scope,
            }],
            refreshing_until: 0,
            refresh_failed_at: 0,
        };
        let id = match self.store.create_session(&session, self.rng, self.now) {
            Ok((id, evicted)) => {
                if let Some(ev) = evicted {
                    self.event(Event::SessionEnded {
                        reason: EndReason::Evicted,
                        session: ev.handle,
                        sub: Some(ev.sub),
                    });
                }
                id
            }
            Err(_) => {
                return self.login_failed(
                    503,
                    ErrorCode::LoginFailed,
                    "too many sessions; try again later",
                    Some(flow_cookie),
                )
            }
        };
        if let Some(old) = old_session {
            let _ = self.store.delete_session(&old);
            self.event(Event::SessionEnded {
                reason: EndReason::Relogin,
                session: old.handle(),
                sub: None,
            });
        }
        self.subject = Some(sub.clone());
        self.event(Event::LoginCompleted {
            sub: sub.clone(),
            session: id.handle(),
        });
        let mut r = redirect(&login.return_to);
        r.headers
            .push(("set-cookie".into(), self.session_cookie(&id)));
        r.headers
            .push(("set-cookie".into(), self.clear_flow_cookie(flow_cookie)));
        r
    }

    /// Releases the refresh lock, recording a transient failure if `failed`.
    fn release_lock(&mut self, sid: &SessionId, failed: bool, lock: u64) {
        for _ in 0..CAS_RETRIES {
            let Some((mut s, cas)) = self.store.get_session(sid) else {
                return;
            };
            // A holder whose lock expired must not release the lock a newer holder took.
            if s.refreshing_until == lock {
                s.refreshing_until = 0;
            }
            if failed {
                s.refresh_failed_at = self.now;
            }
            match self.store.put_session(sid, &s, cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => return,
            }
        }
    }

    fn finish_token(&mut self, r: Resume, call: TokenCall, lock: u64, result: CallResult) -> Step {
        let Some(policy) = self.cfg.routes.get(&r.route).cloned() else {
            self.release_lock(&r.sid, false, lock);
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "no policy for this route",
            ));
        };
        let parsed = match result {
            CallResult::Response { status, body } => {
                oauth::parse_token_response(status, &body, self.now)
            }
            CallResult::Failed => Err(TokenError::Unavailable(0)),
        };
        let tokens = match parsed {
            Ok(t) => t,
            Err(e) if e.is_terminal() && call == TokenCall::Exchange => {
                // The exchange was refused (policy at the provider): the session itself is fine.
                self.release_lock(&r.sid, false, lock);
                self.deny(ErrorCode::Forbidden, &r.route, Some(r.sid.handle()));
                return Step::Respond(error_reply(
                    403,
                    ErrorCode::Forbidden,
                    "the identity provider refused a token for this audience",
                ));
            }
            Err(e) if e.is_terminal() => {
                let _ = self.store.delete_session(&r.sid);
                self.event(Event::SessionEnded {
                    reason: EndReason::RefreshRejected,
                    session: r.sid.handle(),
                    sub: None,
                });
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            }
            Err(_) => {
                self.release_lock(&r.sid, true, lock);
                self.event(Event::RefreshFailed {
                    session: r.sid.handle(),
                    reason: "idp_unavailable",
                });
                return self.transient_failure(&policy, &r);
            }
        };
        let scope = tokens
            .scope
            .clone()
            .or_else(|| jwt_scope(tokens.access_token.expose()))
            .unwrap_or_default();
        let got_aud = if call == TokenCall::RefreshForExchange {
            self.cfg.login_audience.clone()
        } else {
            r.audience.clone()
        };
        let token = AudienceToken {
            aud: got_aud,
            token: tokens.access_token.clone(),
            exp: self.now.saturating_add(tokens.expires_in),
            obtained: self.now,
            scope: scope.clone(),
        };
        let keep_lock = call == TokenCall::RefreshForExchange;
        let mut saved = None;
        for _ in 0..CAS_RETRIES {
            let Some((mut s, cas)) = self.store.get_session(&r.sid) else {
                // Logged out while we were waiting: do not revive it.
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            };
            if s.liveness(self.now, self.cfg.session.idle_timeout_s) != Liveness::Live {
                // The session ran out while the provider answered: the answer does not revive it.
                let _ = self.store.delete_session(&r.sid);
                self.event(Event::SessionEnded {
                    reason: EndReason::Expired,
                    session: r.sid.handle(),
                    sub: None,
                });
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            }
            s.put_token(token.clone());
            if let Some(rt) = &tokens.refresh_token {
                // Rotation: the new refresh token replaces the old one in the same write.
                s.refresh_token = Some(rt.clone());
            }
            s.refreshing_until = if keep_lock {
                // The exchange that follows gets a whole callout's worth of lock of its own.
                self.now.saturating_add(self.lock_ttl())
            } else if s.refreshing_until == lock {
                0
            } else {
                // Our lock expired and another request holds a newer one: leave it.
                s.refreshing_until
            };
            s.refresh_failed_at = 0;
            match self.store.put_session(&r.sid, &s, cas) {
                Ok(()) => {
                    saved = Some(s);
                    break;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(_) => break,
            }
        }
        let Some(s) = saved else {
            return Step::Respond(error_reply(
                503,
                ErrorCode::IdpUnavailable,
                "session store busy; try again",
            ));
        };
        self.subject = Some(s.sub.clone());
        self.event(Event::TokenRenewed {
            session: r.sid.handle(),
            audience: token.aud.clone(),
            grant: if call == TokenCall::Exchange {
                "token_exchange"
            } else {
                "refresh_token"
            },
        });
        if keep_lock {
            // Now exchange the fresh login-audience token for the route's audience.
            let request =
                oauth::exchange_request(self.cfg, tokens.access_token.expose(), &r.audience);
            return Step::Call {
                request,
                then: Box::new(Pending::Token {
                    resume: r,
                    call: TokenCall::Exchange,
                    lock: s.refreshing_until,
                }),
            };
        }
        self.authorize(
            &policy,
            &r.sid,
            &s.claims,
            &scope,
            tokens.access_token,
            r.cookie,
        )
    }

    /// The operator API (admin listener only): `GET /sessions?sub=S` counts a subject's live
    /// sessions; `POST /sessions/revoke?sub=S` (with the CSRF header) ends them all, on every
    /// worker. Every call needs the operator's bearer token (`admin_token_env`, compared in
    /// constant time), a loopback `Host` (a page that rebinds its name to 127.0.0.1 still sends
    /// its own name) and no sign of a browser (no `Origin`, `Sec-Fetch-Site` absent or `none`).
    /// A scan of the store runs at most once a second per Envoy (`429` otherwise).
    fn admin_endpoint(&mut self, req: &Request, path: &str, query: &str) -> Reply {
        if !req.authority.as_deref().is_some_and(is_loopback_authority) {
            self.deny(ErrorCode::Forbidden, "admin", None);
            return error_reply(
                403,
                ErrorCode::Forbidden,
                "the operator API answers loopback host names only",
            );
        }
        let from_browser = req.origin.is_some()
            || req
                .sec_fetch_site
                .as_deref()
                .is_some_and(|s| s.trim() != "none");
        if from_browser {
            self.deny(ErrorCode::Forbidden, "admin", None);
            return error_reply(
                403,
                ErrorCode::Forbidden,
                "the operator API does not answer browsers",
            );
        }
        let presented = req
            .authorization
            .as_ref()
            .and_then(|a| a.expose().strip_prefix("Bearer "))
            .map(str::trim);
        let ok = match (&self.cfg.admin_token, presented) {
            (Some(want), Some(got)) => ct_eq(want.expose().as_bytes(), got.as_bytes()),
            _ => false,
        };
        if !ok {
            self.deny(ErrorCode::Unauthenticated, "admin", None);
            let mut r = error_reply(
                401,
                ErrorCode::Unauthenticated,
                "the operator API needs its bearer token",
            );
            for (k, v) in &mut r.headers {
                if k == "www-authenticate" {
                    *v = "Bearer realm=\"bffgate-admin\"".into();
                }
            }
            return r;
        }
        let sub = match query_param(query, "sub") {
            Ok(Some(s)) if !s.is_empty() => s,
            _ => {
                return error_reply(
                    400,
                    ErrorCode::InvalidRequest,
                    "query parameter `sub` is required",
                )
            }
        };
        let scan = |e: &mut Self| {
            if e.store.take_scan_budget(e.now) {
                None
            } else {
                let mut r = error_reply(
                    429,
                    ErrorCode::InvalidRequest,
                    "one store scan per second; try again",
                );
                r.headers.push(("retry-after".into(), "1".into()));
                Some(r)
            }
        };
        match (req.method.as_str(), path) {
            ("GET", "/sessions") => {
                if let Some(r) = scan(self) {
                    return r;
                }
                let n = self.store.count_live_of(&sub, self.now);
                json_reply(200, json!({"sub": sub, "sessions": n}))
            }
            ("POST", "/sessions/revoke") => {
                if !header_is(req.csrf.as_deref(), &self.cfg.csrf_value) {
                    return error_reply(403, ErrorCode::Csrf, "the CSRF header is required");
                }
                if let Some(r) = scan(self) {
                    return r;
                }
                self.store.revoke_remote(Some(&sub), None);
                let ended = self.store.delete_where(&|s: &Session| s.sub == sub);
                for s in &ended {
                    self.event(Event::SessionEnded {
                        reason: EndReason::Admin,
                        session: s.handle.clone(),
                        sub: Some(s.sub.clone()),
                    });
                }
                json_reply(200, json!({"sub": sub, "sessions_ended": ended.len()}))
            }
            _ => error_reply(404, ErrorCode::InvalidRequest, "no such admin endpoint"),
        }
    }

    /// The request body arrived (for a [`Step::ReadBody`]); `None` if it was too large.
    pub fn on_body(&mut self, pending: Pending, body: Option<&[u8]>) -> Step {
        let step = self.body(pending, body);
        self.finish(step)
    }

    fn body(&mut self, pending: Pending, body: Option<&[u8]>) -> Step {
        let Pending::Backchannel = pending else {
            return Step::Respond(error_reply(
                500,
                ErrorCode::InvalidRequest,
                "internal: unexpected body",
            ));
        };
        let Some(body) = body else {
            return Step::Respond(error_reply(
                413,
                ErrorCode::InvalidRequest,
                "body too large",
            ));
        };
        let mut token = None;
        for (k, v) in form_urlencoded::parse(body) {
            if k == "logout_token" {
                if token.is_some() {
                    return Step::Respond(error_reply(
                        400,
                        ErrorCode::InvalidRequest,
                        "repeated logout_token",
                    ));
                }
                token = Some(v.into_owned());
            }
        }
        let Some(token) = token else {
            return Step::Respond(error_reply(
                400,
                ErrorCode::InvalidRequest,
                "missing logout_token",
            ));
        };
        self.backchannel_token(&token, true)
    }

    /// Validates a logout token (OIDC Back-Channel Logout 1.0, 2.6) and ends its sessions.
    fn backchannel_token(&mut self, token: &str, may_fetch: bool) -> Step {
        let bad = |why: &str| Step::Respond(error_reply(400, ErrorCode::InvalidRequest, why));
        let claims = match self.verify_jws(token, may_fetch) {
            JwsCheck::Verified(c) => c,
            JwsCheck::Fetch(request) => {
                return Step::Call {
                    request,
                    then: Box::new(Pending::BackchannelJwks {
                        token: token.to_string(),
                    }),
                }
            }
            JwsCheck::Refused(_) => return bad("logout_token signature refused"),
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.cfg.provider.issuer.as_str()) {
            return bad("logout_token: wrong iss");
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.cfg.client.client_id,
            Some(Value::Array(v)) => v
                .iter()
                .any(|a| a.as_str() == Some(self.cfg.client.client_id.as_str())),
            _ => false,
        };
        if !aud_ok {
            return bad("logout_token: wrong aud");
        }
        match claims.get("iat").and_then(Value::as_u64) {
            Some(iat)
                if iat <= self.now.saturating_add(CLOCK_LEEWAY)
                    && self.now.saturating_sub(iat) <= 600 => {}
            _ => return bad("logout_token: iat missing or out of range"),
        }
        // Back-Channel Logout 1.0, 2.4: `exp` is required.
        match claims.get("exp").and_then(Value::as_u64) {
            None => return bad("logout_token: exp missing"),
            Some(e) if e.saturating_add(CLOCK_LEEWAY) <= self.now => {
                return bad("logout_token: expired")
            }
            Some(_) => {}
        }
        // Explicitly typed logout tokens (2.4): any other `typ` is another kind of JWT signed
        // by the same keys (an ID token, an access token) and is refused.
        if let Some(typ) = crate::jose::header_typ(token) {
            let t = typ.to_ascii_lowercase();
            if t != "logout+jwt" && t != "application/logout+jwt" {
                return bad("logout_token: typ is not logout+jwt");
            }
        }
        let event_ok = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|e| e.get(BCL_EVENT))
            .is_some_and(Value::is_object);
        if !event_ok {
            return bad("logout_token: not a back-channel logout event");
        }
        if claims.contains_key("nonce") {
            return bad("logout_token: must not carry a nonce");
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let sid = claims
            .get("sid")
            .and_then(Value::as_str)
            .map(str::to_string);
        if sub.is_none() && sid.is_none() {
            return bad("logout_token: neither sub nor sid");
        }
        let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
            return bad("logout_token: no jti");
        };
        if !self
            .store
            .remember_jti(jti, self.now.saturating_add(600 + CLOCK_LEEWAY), self.now)
        {
            return bad("logout_token: replayed");
        }
        // Sessions on other Envoys of a fleet too (sessions this Envoy never saw).
        self.store.revoke_remote(sub.as_deref(), sid.as_deref());
        let ended = self.store.delete_where(&|s: &Session| {
            let sid_ok = sid
                .as_deref()
                .is_none_or(|x| s.claims.get("sid").and_then(Value::as_str) == Some(x));
            let sub_ok = sub.as_deref().is_none_or(|x| s.sub == x);
            sid_ok && sub_ok
        });
        for s in &ended {
            self.event(Event::SessionEnded {
                reason: EndReason::Backchannel,
                session: s.handle.clone(),
                sub: Some(s.sub.clone()),
            });
        }
        let mut headers = base_headers();
        headers.push(("content-type".into(), "application/json".into()));
        Step::Respond(Reply {
            status: 200,
            headers,
            body: json!({"sessions_ended": ended.len()}).to_string(),
            kind: ReplyKind::Endpoint,
        })
    }

    /// Logout: revokes the next token (bounded timeout each), then answers.
    fn next_revocation(
        &mut self,
        reply: Reply,
        mut remaining: Vec<(Secret, &'static str)>,
    ) -> Step {
        if remaining.is_empty() {
            return Step::Respond(reply);
        }
        let (token, hint) = remaining.remove(0);
        match oauth::revoke_request(self.cfg, token.expose(), hint) {
            Some(mut request) => {
                // The user waits for the logout reply: each revocation has its own short bound.
                request.timeout_ms = self.cfg.provider.revocation_timeout_ms;
                Step::Call {
                    request,
                    then: Box::new(Pending::Logout {
                        reply,
                        remaining,
                        subject: self.subject.clone(),
                    }),
                }
            }
            None => Step::Respond(reply),
        }
    }
}

fn jwt_scope(token: &str) -> Option<String> {
    jwt::decode_payload(token)?
        .get("scope")
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl crate::config::CookieConfig {
    /// Flow cookies: like the session cookie, but always `SameSite=Lax` — the callback is a
    /// top-level navigation from the provider's site, which `Strict` would strip.
    pub fn attrs_for_flow(&self) -> cookie::Attributes {
        let mut a = self.attrs.clone();
        a.same_site = cookie::SameSite::Lax;
        a
    }
}

/// Whether an audience is obtained at login (used by the shell for metrics).
pub fn is_login_audience(cfg: &Config, aud: &str) -> bool {
    cfg.audiences
        .iter()
        .any(|a| a.id == aud && a.acquire == Acquire::Login)
}
