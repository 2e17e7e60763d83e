//! Ending sessions: `/auth/logout` (delete, revoke at the provider, `end_session_url`) and
//! OIDC Back-Channel Logout 1.0 (a logout token from the provider, verified with its JWKS, ends
//! the sessions it names on every worker, and in fleet mode on every Envoy).

use super::cookies::SessionLookup;
use super::provider::{AfterDiscovery, JwsCheck};
use super::{query_param, AfterCall, Engine, Request, Revoking, Step, CLOCK_LEEWAY};
use crate::audit::{EndReason, Event};
use crate::callout::Callout;
use crate::policy::CsrfMode;
use crate::reply::{
    base_headers, error_reply, json_reply, store_unavailable, with_cookie, ErrorCode, Reply,
    ReplyKind,
};
use crate::secret::Secret;
use crate::session::Session;
use crate::store::ScanKind;
use serde_json::{json, Value};

/// The back-channel logout event (OIDC Back-Channel Logout 1.0, 2.4).
const BCL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Engine<'_> {
    /// `POST /auth/logout`: the session ends everywhere at once, then its tokens are revoked at
    /// the provider (each callout bounded), then the answer with `end_session_url`.
    pub(super) fn logout(&mut self, req: &Request) -> Step {
        if !self.csrf_ok(req, CsrfMode::AllMethods, &[]) {
            self.deny(ErrorCode::Csrf, "logout", None);
            return Step::Respond(error_reply(
                403,
                ErrorCode::Csrf,
                "cross-site request or missing CSRF header",
            ));
        }
        // The provider's endpoints (revocation, end session) first, as nothing has changed yet;
        // a provider whose metadata cannot be read does not keep the session alive.
        let ep = match self.endpoints(|| AfterDiscovery::Request(Box::new(req.clone()))) {
            Ok(ep) => Some(ep),
            Err(step) if matches!(*step, Step::Respond(_)) => None,
            Err(step) => return *step,
        };
        let mut revoke: Vec<(Secret, &'static str)> = Vec::new();
        let mut id_token = None;
        let mut ended = None;
        let cookie = self.session_cookie_of(req);
        let found = self.lookup_session(req, &cookie);
        match found {
            SessionLookup::Fetch(sid, request) => return Self::fetch_then_retry(req, sid, request),
            // Not confirmed gone: the cookie stays, so the logout can be tried again.
            SessionLookup::Unavailable => return Step::Respond(store_unavailable()),
            _ => {}
        }
        if let SessionLookup::Live(id, s, _) = found {
            // Gone locally first (every worker sees it at once); revocation follows. A failed
            // delete means another request ended it first: gone either way.
            let _ = self.store.delete_session(&id);
            self.event(Event::SessionEnded {
                reason: EndReason::Logout,
                session: id.handle(),
                sub: Some(s.sub.clone()),
            });
            revoke = self.tokens_to_revoke(&s);
            id_token = s.id_token.clone();
            ended = Some(id.handle());
        }
        let mut body = json!({"logged_out": true});
        if let Some(es) = ep.as_ref().and_then(|e| e.end_session.as_ref()) {
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
        let Some(session) = ended else {
            return Step::Respond(reply);
        };
        self.next_revocation(Revoking {
            reply,
            remaining: revoke,
            current: "",
            results: Vec::new(),
            session,
            subject: self.subject.clone(),
        })
    }

    /// The RFC 7009 revocation request for `token` (with its `token_type_hint`), with the short
    /// bound of `provider.revocation_timeout_ms` (someone waits for it: a logout's user, or a
    /// paced revoke-all); `Err` says why none can be sent (`not supported`: no revocation
    /// endpoint; `provider metadata unavailable`: discovery could not be read).
    pub fn revocation_callout(&mut self, token: &str, hint: &str) -> Result<Callout, &'static str> {
        let ep = self
            .known_endpoints()
            .ok_or("provider metadata unavailable")?;
        let mut request = self
            .provider(&ep)
            .revoke_request(token, hint)
            .ok_or("not supported")?;
        request.timeout_ms = self.cfg.provider.revocation_timeout_ms;
        Ok(request)
    }

    /// Logout: revokes the next token (each callout with its own short bound), then answers
    /// and audits what became of each token.
    pub(super) fn next_revocation(&mut self, mut r: Revoking) -> Step {
        if r.remaining.is_empty() {
            if !r.results.is_empty() {
                self.event(Event::Revocation {
                    session: r.session,
                    results: r.results,
                });
            }
            return Step::Respond(r.reply);
        }
        let (token, hint) = r.remaining.remove(0);
        let request = match self.revocation_callout(token.expose(), hint) {
            Ok(request) => request,
            Err(why) => {
                // No revocation endpoint (or none known): the provider keeps honouring these
                // tokens (a refresh token until it expires there); said in the audit line.
                r.results.push((hint, why.to_string()));
                for (_, h) in r.remaining.drain(..) {
                    r.results.push((h, why.to_string()));
                }
                return self.next_revocation(r);
            }
        };
        r.current = hint;
        Step::Call {
            request,
            then: Box::new(AfterCall::Logout(Box::new(r))),
        }
    }

    /// `POST /auth/backchannel-logout`: its form body (`None`: too large).
    pub(super) fn backchannel_body(&mut self, body: Option<&[u8]>) -> Step {
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
        self.backchannel_known(token)
    }

    /// A logout token once the provider's endpoints are known (its keys come from there).
    pub(super) fn backchannel_known(&mut self, token: String) -> Step {
        if let Err(step) = self.endpoints(|| AfterDiscovery::Backchannel {
            token: token.clone(),
        }) {
            return *step;
        }
        self.backchannel_token(&token, true)
    }

    /// Validates a logout token (OIDC Back-Channel Logout 1.0, 2.6) and ends its sessions; a
    /// refused one is answered 400 and logged with the reason (a provider whose tokens are
    /// always refused shows in the log, not only in its own).
    pub(super) fn backchannel_token(&mut self, token: &str, may_fetch: bool) -> Step {
        match self.backchannel_checked(token, may_fetch) {
            Ok(step) => step,
            Err(why) => {
                self.notes
                    .push(format!("back-channel logout refused: {why}"));
                Step::Respond(error_reply(400, ErrorCode::InvalidRequest, why))
            }
        }
    }

    fn backchannel_checked(&mut self, token: &str, may_fetch: bool) -> Result<Step, &'static str> {
        let claims = match self.verify_jws(token, may_fetch) {
            JwsCheck::Verified(c) => c,
            JwsCheck::Fetch(request) => {
                return Ok(Step::Call {
                    request,
                    then: Box::new(AfterCall::BackchannelJwks {
                        token: token.to_string(),
                    }),
                })
            }
            JwsCheck::Refused(_) => return Err("logout_token signature refused"),
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.cfg.provider.issuer.as_str()) {
            return Err("logout_token: wrong iss");
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.cfg.client.client_id,
            Some(Value::Array(v)) => v
                .iter()
                .any(|a| a.as_str() == Some(self.cfg.client.client_id.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err("logout_token: wrong aud");
        }
        match claims.get("iat").and_then(Value::as_u64) {
            Some(iat)
                if iat <= self.now.saturating_add(CLOCK_LEEWAY)
                    && self.now.saturating_sub(iat) <= 600 => {}
            _ => return Err("logout_token: iat missing or out of range"),
        }
        // Back-Channel Logout 1.0, 2.4: `exp` is required.
        match claims.get("exp").and_then(Value::as_u64) {
            None => return Err("logout_token: exp missing"),
            Some(e) if e.saturating_add(CLOCK_LEEWAY) <= self.now => {
                return Err("logout_token: expired")
            }
            Some(_) => {}
        }
        // Explicitly typed logout tokens (2.4): any other `typ` is another kind of JWT signed
        // by the same keys (an ID token, an access token) and is refused.
        if let Some(typ) = crate::jose::header_typ(token) {
            let t = typ.to_ascii_lowercase();
            if t != "logout+jwt" && t != "application/logout+jwt" {
                return Err("logout_token: typ is not logout+jwt");
            }
        }
        let event_ok = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|e| e.get(BCL_EVENT))
            .is_some_and(Value::is_object);
        if !event_ok {
            return Err("logout_token: not a back-channel logout event");
        }
        if claims.contains_key("nonce") {
            return Err("logout_token: must not carry a nonce");
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
            return Err("logout_token: neither sub nor sid");
        }
        let Some(jti) = claims.get("jti").and_then(Value::as_str) else {
            return Err("logout_token: no jti");
        };
        if !self
            .store
            .remember_jti(jti, self.now.saturating_add(600 + CLOCK_LEEWAY), self.now)
        {
            return Err("logout_token: replayed");
        }
        // Sessions on other Envoys of a fleet too (sessions this Envoy never saw).
        if let Some(r) = self.store.remote() {
            r.revoke_everywhere(sub.as_deref(), sid.as_deref());
        }
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
        Ok(Step::Respond(Reply {
            status: 200,
            headers,
            body: json!({"sessions_ended": ended.len()}).to_string(),
            kind: ReplyKind::Endpoint,
        }))
    }

    /// OIDC Front-Channel Logout 1.0: the provider's logout page loads
    /// `<auth_prefix>/frontchannel-logout?iss=...&sid=...` in an iframe; the sessions of that
    /// provider session end (on every worker, and in fleet mode on every Envoy). Both `iss` (the
    /// configured issuer) and `sid` are required. The request is not authenticated, so it can
    /// only end sessions (never start or reveal one) and its store scan runs at most once a
    /// second per Envoy. The answer is an empty page the provider may frame, never cached.
    pub(super) fn frontchannel_logout(&mut self, query: &str) -> Reply {
        let (iss, sid) = match (query_param(query, "iss"), query_param(query, "sid")) {
            (Ok(Some(iss)), Ok(Some(sid))) if !sid.is_empty() && sid.len() <= 256 => (iss, sid),
            _ => {
                return error_reply(
                    400,
                    ErrorCode::InvalidRequest,
                    "front-channel logout needs `iss` and `sid`, once each",
                )
            }
        };
        if iss != self.cfg.provider.issuer {
            return error_reply(400, ErrorCode::InvalidRequest, "`iss` is not our provider");
        }
        if !self
            .store
            .take_scan_budget(ScanKind::FrontChannel, self.now)
        {
            let mut r = error_reply(
                429,
                ErrorCode::InvalidRequest,
                "one front-channel logout a second; try again",
            );
            r.headers.push(("retry-after".into(), "1".into()));
            return r;
        }
        if let Some(r) = self.store.remote() {
            r.revoke_everywhere(None, Some(&sid));
        }
        let ended = self.store.delete_where(&|s: &Session| {
            s.claims.get("sid").and_then(Value::as_str) == Some(sid.as_str())
        });
        for s in &ended {
            self.event(Event::SessionEnded {
                reason: EndReason::FrontChannel,
                session: s.handle.clone(),
                sub: Some(s.sub.clone()),
            });
        }
        let mut headers = base_headers();
        headers.push(("content-type".into(), "text/html; charset=utf-8".into()));
        Reply {
            status: 200,
            headers,
            body: String::new(),
            kind: ReplyKind::Endpoint,
        }
    }
}
