//! A request to a `session` route: the fast path (decided from the stored record's binary head),
//! the full path (CSRF, session lookup, claims, a token for the route's audience), CORS
//! preflights and the answers an unauthenticated request gets; and `/auth/user`.

use super::cookies::{CookieView, SessionCookie, SessionLookup};
use super::{header_is, Engine, Request, Resume, Step};
use crate::policy::{is_safe_method, CsrfMode, Mode, Policy, StepUp, UnauthMode};
use crate::redirect::sanitize_return_to;
use crate::reply::{
    base_headers, cors_headers, error_reply, json_reply, redirect, step_up_reply,
    store_unavailable, with_cookie, ErrorCode, Reply, ReplyKind,
};
use crate::secret::Secret;
use crate::session::SessionId;
use crate::util::ct_eq;
use serde_json::json;

/// Why a request to a session route left the fast path for the full path. The full path then
/// decides the request (it may still be allowed: e.g. after a last-use write or a renewal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPathMiss {
    /// The route's policy checks claims (decoded JSON: full path only).
    Claims,
    /// The request does not pass CSRF as it stands (the full path refuses it).
    Csrf,
    /// The route names no audience.
    NoAudience,
    /// No session cookie.
    NoCookie,
    /// A session cookie that does not verify (or two of them).
    Cookie,
    /// No record for the session in the store (gone, evicted, or not in a fleet cache).
    NoSession,
    /// A record the fast path cannot read.
    Record,
    /// The session is past its absolute lifetime.
    Expired,
    /// Last use is older than `session.touch_interval_s`: the full path writes it.
    TouchDue,
    /// No token for the audience that is not due for renewal: renewal or exchange.
    NoToken,
    /// The token lacks a scope the route requires.
    Scope,
    /// The route asks for a sign-in level (`acr_values`, `max_age_s`): decided on the full path.
    StepUp,
    /// A session anomaly signal (client binding drift, rate), or a session that must sign in
    /// again: reported and acted on by the full path.
    Anomaly,
}

impl FastPathMiss {
    /// Every reason (their counters are defined at start).
    pub const ALL: [FastPathMiss; 13] = [
        Self::Claims,
        Self::Csrf,
        Self::NoAudience,
        Self::NoCookie,
        Self::Cookie,
        Self::NoSession,
        Self::Record,
        Self::Expired,
        Self::TouchDue,
        Self::NoToken,
        Self::Scope,
        Self::StepUp,
        Self::Anomaly,
    ];

    /// The counter of this reason.
    pub fn metric(self) -> &'static str {
        match self {
            Self::Claims => "bffgate_fast_path_missed_claims",
            Self::Csrf => "bffgate_fast_path_missed_csrf",
            Self::NoAudience => "bffgate_fast_path_missed_no_audience",
            Self::NoCookie => "bffgate_fast_path_missed_no_cookie",
            Self::Cookie => "bffgate_fast_path_missed_cookie",
            Self::NoSession => "bffgate_fast_path_missed_no_session",
            Self::Record => "bffgate_fast_path_missed_record",
            Self::Expired => "bffgate_fast_path_missed_expired",
            Self::TouchDue => "bffgate_fast_path_missed_touch_due",
            Self::NoToken => "bffgate_fast_path_missed_no_token",
            Self::Scope => "bffgate_fast_path_missed_scope",
            Self::StepUp => "bffgate_fast_path_missed_step_up",
            Self::Anomaly => "bffgate_fast_path_missed_anomaly",
        }
    }
}

/// Why a request passes the CSRF defence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfPass {
    /// The method needs no CSRF header under the route's `csrf` mode.
    NotNeeded,
    /// The header is there, the request is not cross-site, its `Origin` is absent or allowed.
    Checked,
}

/// Why a request fails the CSRF defence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfFail {
    /// The configured CSRF header is missing or has another value.
    Header,
    /// `Sec-Fetch-Site: cross-site`.
    CrossSite,
    /// An `Origin` that is neither `public_origin` nor one of the route's `allowed_origins`.
    Origin,
}

/// The CSRF defence: on unsafe methods (every method with `csrf: all-methods`) the CSRF
/// header, no `Sec-Fetch-Site: cross-site`, and no foreign `Origin`.
pub fn csrf_check(
    cfg: &crate::config::Config,
    req: &Request,
    mode: CsrfMode,
    allowed: &[String],
) -> Result<CsrfPass, CsrfFail> {
    let needed = mode == CsrfMode::AllMethods || !is_safe_method(&req.method);
    if !needed {
        return Ok(CsrfPass::NotNeeded);
    }
    if !header_is(req.csrf.as_deref(), &cfg.csrf_value) {
        return Err(CsrfFail::Header);
    }
    if header_is(req.sec_fetch_site.as_deref(), "cross-site") {
        return Err(CsrfFail::CrossSite);
    }
    match req.origin.as_deref().map(str::trim) {
        None => Ok(CsrfPass::Checked),
        Some(o) if o == cfg.public_origin || allowed.iter().any(|a| a == o) => {
            Ok(CsrfPass::Checked)
        }
        Some(_) => Err(CsrfFail::Origin),
    }
}

/// The login URL that comes back to `path`, asking for the sign-in `step` names.
fn step_up_location(cfg: &crate::config::Config, path: &str, step: &StepUp) -> String {
    let rt = sanitize_return_to(Some(path));
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("return_to", &rt);
    if let Some(a) = &step.acr_values {
        q.append_pair("acr_values", a);
    }
    if let Some(m) = step.max_age {
        q.append_pair("max_age", &m.to_string());
    }
    format!("{}/login?{}", cfg.auth_prefix, q.finish())
}

/// What the browser gets when the upstream of `path` answered with a step-up challenge
/// (RFC 9470): the same `401 insufficient_user_authentication` as a route's own step-up, with
/// the challenge's valid parameters and a login URL that comes back to `path`.
pub fn upstream_step_up_reply(cfg: &crate::config::Config, path: &str, step: &StepUp) -> Reply {
    step_up_reply(step, &step_up_location(cfg, path, step))
}

impl Engine<'_> {
    /// A request to a route whose policy is `access: session`.
    pub(super) fn session_route(
        &mut self,
        req: &Request,
        policy: &Policy,
        view: &CookieView<'_>,
    ) -> Step {
        if req.method == "OPTIONS" && req.cors_method.is_some() {
            return Step::Respond(self.preflight(req, policy));
        }
        // An allowed cross-origin caller may read whatever this request ends in (the forwarded
        // response, or a refusal now or after a callout): the shell adds the CORS headers to it.
        if req.origin.is_some() {
            self.cors = self.cors_origin(req, policy);
        }
        let cookie = self.session_of(view);
        match self.fast_path(req, policy, view, &cookie) {
            Some(step) => step,
            None => self.protected(req, policy, view, &cookie),
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
    /// path, which decides (and explains) it. Which way it went is left in `self.fast_path`.
    fn fast_path(
        &mut self,
        req: &Request,
        policy: &Policy,
        view: &CookieView<'_>,
        cookie: &SessionCookie,
    ) -> Option<Step> {
        match self.try_fast_path(req, policy, view, cookie) {
            Ok(step) => {
                self.fast_path = Some(Ok(()));
                Some(step)
            }
            Err(why) => {
                self.fast_path = Some(Err(why));
                None
            }
        }
    }

    fn try_fast_path(
        &mut self,
        req: &Request,
        policy: &Policy,
        view: &CookieView<'_>,
        cookie: &SessionCookie,
    ) -> Result<Step, FastPathMiss> {
        use FastPathMiss as M;
        if !policy.claims.is_empty() {
            return Err(M::Claims);
        }
        if policy.wants_step_up() {
            return Err(M::StepUp);
        }
        if !self.csrf_ok(req, policy.csrf, &policy.allowed_origins) {
            return Err(M::Csrf);
        }
        let audience = policy.audience.as_deref().ok_or(M::NoAudience)?;
        let (id, verifier) = match cookie {
            SessionCookie::Absent => return Err(M::NoCookie),
            SessionCookie::Invalid => return Err(M::Cookie),
            SessionCookie::Valid(id, verifier) => (id, verifier),
        };
        let (mut raw, _) = self.store.get_session_raw(id).ok_or(M::NoSession)?;
        let head = crate::record::Head::parse(&raw).ok_or(M::Record)?;
        if !ct_eq(head.owner, verifier) {
            return Err(M::NoSession);
        }
        if self.now >= head.expires {
            return Err(M::Expired);
        }
        if head.flags & crate::record::FLAG_REAUTH != 0 {
            return Err(M::Anomaly);
        }
        let mut sig = self.drift(req, head.bind_kid, head.bind_ua, head.bind_net);
        if let Some(k) = self.count_request(super::anomaly::track_key(verifier)) {
            sig.push((k, None));
        }
        if !sig.is_empty() {
            self.signals = sig;
            return Err(M::Anomaly);
        }
        if self.now
            >= head
                .last_seen
                .saturating_add(self.cfg.session.touch_interval_s)
        {
            return Err(M::TouchDue);
        }
        let (span, scope) = head
            .token_span(audience, self.now, self.cfg.session.refresh_skew_s)
            .ok_or(M::NoToken)?;
        if !policy.scopes_ok(scope) {
            return Err(M::Scope);
        }
        let subject = head.sub.to_string();
        // The token is taken out of the record's own buffer: no second allocation or copy.
        raw.truncate(span.end);
        raw.drain(..span.start);
        let token = String::from_utf8(raw).map_err(|_| M::Record)?;
        self.subject = Some(subject);
        Ok(Step::Forward {
            authorization: Some(Secret::new(token)),
            cookie: view.strip_edit(self.cfg),
        })
    }

    /// The full path: decides (and explains) what the fast path did not.
    fn protected(
        &mut self,
        req: &Request,
        policy: &Policy,
        view: &CookieView<'_>,
        cookie: &SessionCookie,
    ) -> Step {
        // The session is looked up first so that every refusal can name it in the audit log.
        let found = self.lookup_session(req, cookie);
        if !self.csrf_ok(req, policy.csrf, &policy.allowed_origins) {
            let handle = match &found {
                SessionLookup::Live(id, _, _) => {
                    self.refused(ErrorCode::Csrf, id);
                    Some(id.handle())
                }
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
                // A session bffgate ended itself (an anomaly): the page is told why.
                let note = cookie.id().and_then(|id| self.ended_note(id));
                if let (Some((text, _)), false) = (note, navigation) {
                    return Step::Respond(with_cookie(
                        error_reply(401, ErrorCode::Unauthenticated, text),
                        self.clear_session_cookie(),
                    ));
                }
                return Step::Respond(self.unauthenticated(navigation, &req.path, true));
            }
            SessionLookup::Fetch(sid, request) => return Self::fetch_then_retry(req, sid, request),
            SessionLookup::Unavailable => return Step::Respond(store_unavailable()),
        };
        let sig = self.signals_of(req, &id, &session);
        if let Some(step) = self.on_signals(sig, navigation, &req.path, &id, &session, cas) {
            return step;
        }
        if session.reauth {
            // An anomaly asked for a fresh sign-in: nothing is served until there is one.
            self.refused(ErrorCode::InsufficientUserAuthentication, &id);
            self.deny(
                ErrorCode::InsufficientUserAuthentication,
                &policy.route,
                Some(id.handle()),
            );
            return Step::Respond(self.step_up_needed(
                navigation,
                &req.path,
                &StepUp {
                    acr_values: None,
                    max_age: Some(0),
                },
            ));
        }
        if !policy.claims_ok(&session.claims)
            && !self.report_only(policy, ErrorCode::Forbidden, &id)
        {
            self.refused(ErrorCode::Forbidden, &id);
            self.deny(ErrorCode::Forbidden, &policy.route, Some(id.handle()));
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "not allowed for this user",
            ));
        }
        let level = policy.step_up(
            session.acr.as_deref(),
            session.auth_time,
            self.now,
            self.cfg.provider.clock_skew_s,
        );
        let level = match level {
            Err(_) if self.report_only(policy, ErrorCode::InsufficientUserAuthentication, &id) => {
                Ok(())
            }
            other => other,
        };
        if let Err(need) = level {
            self.refused(ErrorCode::InsufficientUserAuthentication, &id);
            self.deny(
                ErrorCode::InsufficientUserAuthentication,
                &policy.route,
                Some(id.handle()),
            );
            return Step::Respond(self.step_up_needed(navigation, &req.path, &need));
        }
        let Some(audience) = policy.audience.clone() else {
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                "route has no audience",
            ));
        };
        let edit = view.strip_edit(self.cfg);
        if let Some(t) = session.token_for(&audience, self.now, self.cfg.session.refresh_skew_s) {
            let token = t.token.clone();
            let scope = t.scope.clone();
            self.touch(&id, &session, cas);
            return self.authorize(policy, &id, &session.claims, &scope, token, edit);
        }
        let resume = Resume {
            sid: id,
            audience,
            route: policy.route.clone(),
            navigation,
            path: req.path.clone(),
            cookie: edit,
        };
        self.obtain(resume, None)
    }

    /// For a route in report mode (shadow mode), a check on top of the session failed with
    /// `code`: logged (`policy_report`) and counted, and `true` (the request goes on). `false`
    /// for a route that enforces its checks.
    pub(super) fn report_only(&mut self, policy: &Policy, code: ErrorCode, id: &SessionId) -> bool {
        if policy.mode != Mode::Report {
            return false;
        }
        self.event(crate::audit::Event::PolicyReport {
            code: code.as_str(),
            route: policy.route.clone(),
            session: id.handle(),
        });
        true
    }

    /// The CSRF defence (see [`csrf_check`]).
    pub(super) fn csrf_ok(&self, req: &Request, mode: CsrfMode, allowed: &[String]) -> bool {
        csrf_check(self.cfg, req, mode, allowed).is_ok()
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

    /// Whether an unauthenticated request gets a redirect to login rather than a 401.
    fn wants_redirect(req: &Request, mode: UnauthMode) -> bool {
        let safe = req.method == "GET" || req.method == "HEAD";
        match mode {
            UnauthMode::Auto => safe && Self::is_navigation(req),
            UnauthMode::Redirect => safe,
            UnauthMode::Deny => false,
        }
    }

    fn login_location(&self, path: &str) -> String {
        self.step_up_location(path, &StepUp::default())
    }

    /// The login URL that comes back to `path`, asking for the sign-in `step` names.
    pub(super) fn step_up_location(&self, path: &str, step: &StepUp) -> String {
        step_up_location(self.cfg, path, step)
    }

    /// The session's sign-in is not enough for the route (RFC 9470): a navigation goes to a
    /// step-up login and comes back; anything else gets `401 insufficient_user_authentication`.
    pub(super) fn step_up_needed(&self, navigation: bool, path: &str, step: &StepUp) -> Reply {
        let url = self.step_up_location(path, step);
        if navigation {
            let mut r = redirect(&url);
            r.kind = ReplyKind::LoginRedirect;
            r
        } else {
            step_up_reply(step, &url)
        }
    }

    /// No valid session: a redirect to login for a navigation, else `401`; a dead or forged
    /// cookie is cleared in the same answer.
    pub(super) fn unauthenticated(&self, navigation: bool, path: &str, had_cookie: bool) -> Reply {
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

    /// `GET /auth/user`: who is signed in, and until when (no token in it).
    pub(super) fn user(&mut self, req: &Request) -> Step {
        let cookie = self.session_cookie_of(req);
        Step::Respond(match self.lookup_session(req, &cookie) {
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
                        "acr": s.acr,
                        "auth_time": s.auth_time,
                        "reauth_required": s.reauth,
                    }),
                )
            }
            SessionLookup::Absent => error_reply(401, ErrorCode::Unauthenticated, "no session"),
            SessionLookup::Unavailable => store_unavailable(),
            SessionLookup::Invalid => {
                let mut r = error_reply(401, ErrorCode::Unauthenticated, "no session");
                // A session bffgate ended itself (an anomaly's `revoke`): why, in words and as
                // a code the page can act on.
                if let Some((text, reason)) = cookie.id().and_then(|id| self.ended_note(id)) {
                    r.body = json!({"error": "unauthenticated", "error_description": text,
                                    "reason": reason})
                    .to_string();
                }
                with_cookie(r, self.clear_session_cookie())
            }
        })
    }
}
