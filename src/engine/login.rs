//! The login: `/auth/login` (a pending login bound to the browser by a flow cookie, PKCE,
//! `state`, `nonce`) and `/auth/callback` (the flow cookie compared before the login is taken,
//! the code exchange, the ID token checked, a new session with a fresh id).

use super::provider::{AfterDiscovery, JwsCheck};
use super::{query_param, AfterCall, Engine, LoginTokens, Repeated, Request, Step, CLOCK_LEEWAY};
use crate::audit::{EndReason, Event};
use crate::callout::{CallResult, Callout};
use crate::cookie;
use crate::jwt;
use crate::oauth::{self, TokenError};
use crate::policy::StepUp;
use crate::redirect::sanitize_return_to;
use crate::reply::{error_reply, redirect, with_cookie, ErrorCode, Reply};
use crate::secret::Secret;
use crate::session::{AudienceToken, Session, SessionId};
use crate::store::{PendingLogin, Replaced};
use crate::util::{ct_eq, hex, random_token, sha256};
use serde_json::Value;

/// Outcome of the ID token's checks.
enum IdTokenCheck {
    /// Valid: its claims.
    Valid(serde_json::Map<String, Value>),
    /// The provider's keys must be fetched first.
    FetchJwks(Callout),
    /// Refused: the reply (the login failed).
    Refused(Reply),
}

impl Engine<'_> {
    /// `GET /auth/login?return_to=...`: a pending login in the store, a flow cookie that binds it
    /// to this browser, and a redirect to the provider.
    pub(super) fn login(&mut self, req: &Request, query: &str) -> Step {
        let ep = match self.endpoints(|| AfterDiscovery::Request(Box::new(req.clone()))) {
            Ok(ep) => ep,
            Err(step) => return *step,
        };
        let return_to = match query_param(query, "return_to") {
            Ok(v) => sanitize_return_to(v.as_deref()),
            Err(Repeated) => "/".to_string(),
        };
        // A step-up login (RFC 9470): the sign-in level a route asked for. Only asks the
        // provider for more; whatever comes back is checked at the callback and again by the
        // route.
        let (acr, max_age) = match (
            query_param(query, "acr_values"),
            query_param(query, "max_age"),
        ) {
            (Ok(a), Ok(m)) => (a, m),
            _ => {
                return Step::Respond(error_reply(
                    400,
                    ErrorCode::InvalidRequest,
                    "repeated parameters",
                ))
            }
        };
        let step_up = match StepUp::parse(acr.as_deref(), max_age.as_deref()) {
            Ok(s) => s,
            Err(name) => {
                return Step::Respond(error_reply(
                    400,
                    ErrorCode::InvalidRequest,
                    &format!("invalid {name}: acr_values are space-separated tokens (at most 16 of 128 characters), max_age whole seconds up to a year"),
                ))
            }
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
            step_up,
            binding: self.binding_of(req),
        };
        let state = match self.store.create_pending(&pending, self.rng, self.now) {
            Ok(s) => s,
            Err(_) => {
                return Step::Respond(self.login_failed(
                    503,
                    ErrorCode::LoginFailed,
                    "cannot start a login now; try again",
                    None,
                ))
            }
        };
        let challenge = oauth::pkce_challenge(&verifier);
        let url = oauth::authorize_url(self.cfg, &ep, &state, &nonce, &challenge, &pending.step_up);
        let flow = cookie::set_cookie(
            &self.flow_cookie_name(&state),
            &flow_secret,
            &self.cfg.cookie.attrs_for_flow(),
            Some(self.cfg.session.login_timeout_s),
        );
        self.event(Event::LoginStarted);
        Step::Respond(with_cookie(redirect(&url), flow))
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

    /// `GET /auth/callback`: the provider sends the browser back; on success a code exchange.
    pub(super) fn callback(&mut self, req: &Request, query: &str) -> Step {
        match self.callback_checked(req, query) {
            Ok(step) => step,
            Err(refusal) => Step::Respond(refusal),
        }
    }

    /// The callback's checks, each refusal a reply (and an audit line).
    fn callback_checked(&mut self, req: &Request, query: &str) -> Result<Step, Reply> {
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
            Err(Repeated) => {
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
        // The provider's endpoints before anything is consumed: a callback paused for the
        // discovery document is decided again from the start.
        let ep = match self.endpoints(|| AfterDiscovery::Request(Box::new(req.clone()))) {
            Ok(ep) => ep,
            Err(step) => return Ok(*step),
        };
        let Some(login) = self.store.take_pending(&state, &flow_hash) else {
            let remote = self.store.remote().filter(|_| !req.store_fetched);
            if let Some(r) = remote {
                // A login started on another Envoy of the fleet: take it from the store.
                let request = r.fetch_pending(&state, &flow_hash);
                let mut again = req.clone();
                again.store_fetched = true;
                return Ok(Step::Call {
                    request,
                    then: Box::new(AfterCall::PendingFetch {
                        request: Box::new(again),
                        state,
                        flow_hash,
                    }),
                });
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
            Err(Repeated) => {
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
        let old_session = self.session_cookie_of(req).id().cloned();
        let request = self
            .provider(&ep)
            .code_request(&code, login.verifier.expose());
        Ok(Step::Call {
            request,
            then: Box::new(AfterCall::CodeExchange {
                login,
                flow_cookie: flow_name,
                old_session,
            }),
        })
    }

    /// The code exchange answered.
    pub(super) fn finish_login(
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
                // The provider's error code (filtered) says which: invalid_client is the
                // client's credentials or assertion, invalid_request a parameter, and so on.
                let why = match e {
                    TokenError::InvalidGrant => {
                        "the authorization code was refused (invalid_grant)".to_string()
                    }
                    TokenError::OAuth(_) => format!(
                        "the token endpoint refused the request ({})",
                        super::tokens::provider_error(&e)
                    ),
                    _ => "the token endpoint answered nonsense".to_string(),
                };
                return Step::Respond(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    &why,
                    Some(flow_cookie),
                ));
            }
        };
        let claims = match self.check_id_token(&login, flow_cookie, &tokens, true) {
            IdTokenCheck::Valid(c) => c,
            IdTokenCheck::FetchJwks(request) => {
                return Step::Call {
                    request,
                    then: Box::new(AfterCall::LoginJwks(Box::new(LoginTokens {
                        login,
                        flow_cookie: flow_cookie.to_string(),
                        old_session,
                        tokens,
                    }))),
                }
            }
            IdTokenCheck::Refused(r) => return Step::Respond(r),
        };
        self.with_userinfo(
            LoginTokens {
                login,
                flow_cookie: flow_cookie.to_string(),
                old_session,
                tokens,
            },
            claims,
        )
    }

    /// The ID token is good: with `provider.userinfo`, its claims are completed from the
    /// userinfo endpoint first (some providers put profile claims only there); then the session.
    fn with_userinfo(&mut self, lt: LoginTokens, claims: serde_json::Map<String, Value>) -> Step {
        if self.cfg.provider.userinfo {
            match self.known_endpoints().and_then(|e| e.userinfo) {
                Some(target) => {
                    let request =
                        oauth::userinfo_request(self.cfg, &target, &lt.tokens.access_token);
                    return Step::Call {
                        request,
                        then: Box::new(AfterCall::Userinfo(Box::new((lt, claims)))),
                    };
                }
                None => self.notes.push(
                    "userinfo: provider.userinfo is on but the provider names no userinfo endpoint; the ID token's claims only".into(),
                ),
            }
        }
        let LoginTokens {
            login,
            flow_cookie,
            old_session,
            tokens,
        } = lt;
        Step::Respond(self.complete_login(login, &flow_cookie, old_session, tokens, claims))
    }

    /// The userinfo endpoint answered: its claims join the ID token's (which win), under the
    /// same `sub` (OpenID Connect Core 5.3.2: a different `sub` is refused).
    pub(super) fn login_with_userinfo(
        &mut self,
        lt: LoginTokens,
        mut claims: serde_json::Map<String, Value>,
        result: &CallResult,
    ) -> Step {
        let info = match result {
            CallResult::Response { status: 200, body } if body.len() <= oauth::MAX_BODY => {
                serde_json::from_slice::<serde_json::Map<String, Value>>(body).ok()
            }
            _ => None,
        };
        let Some(info) = info else {
            return Step::Respond(self.login_failed(
                503,
                ErrorCode::IdpUnavailable,
                "the identity provider's userinfo endpoint did not answer with JSON claims",
                Some(&lt.flow_cookie),
            ));
        };
        if info.get("sub") != claims.get("sub") {
            return Step::Respond(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "the userinfo `sub` is not the ID token's",
                Some(&lt.flow_cookie),
            ));
        }
        for (k, v) in info {
            claims.entry(k).or_insert(v);
        }
        let LoginTokens {
            login,
            flow_cookie,
            old_session,
            tokens,
        } = lt;
        Step::Respond(self.complete_login(login, &flow_cookie, old_session, tokens, claims))
    }

    /// The JWKS arrived for a login's ID token.
    pub(super) fn login_with_jwks(&mut self, lt: LoginTokens, result: &CallResult) -> Step {
        if let Err(r) = self.store_jwks(result) {
            return Step::Respond(r);
        }
        let LoginTokens {
            login,
            flow_cookie,
            old_session,
            tokens,
        } = lt;
        match self.check_id_token(&login, &flow_cookie, &tokens, false) {
            IdTokenCheck::Valid(claims) => {
                Step::Respond(self.complete_login(login, &flow_cookie, old_session, tokens, claims))
            }
            IdTokenCheck::Refused(r) => Step::Respond(r),
            // Without `may_fetch` no second fetch is asked for.
            IdTokenCheck::FetchJwks(_) => Step::Respond(error_reply(
                503,
                ErrorCode::IdpUnavailable,
                "cannot fetch the identity provider's keys",
            )),
        }
    }

    /// Checks the ID token's claims, and its signature when a JWKS is configured (with
    /// `may_fetch`, asking for the JWKS first if it is missing or lacks the token's key).
    fn check_id_token(
        &mut self,
        login: &PendingLogin,
        flow_cookie: &str,
        tokens: &oauth::TokenSet,
        may_fetch: bool,
    ) -> IdTokenCheck {
        let Some(id_token) = tokens.id_token.clone() else {
            return IdTokenCheck::Refused(self.login_failed(
                400,
                ErrorCode::LoginFailed,
                "no ID token",
                Some(flow_cookie),
            ));
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
                let why = match e {
                    // Which issuer was expected and which arrived: a trailing slash or a tenant
                    // in the path is the usual difference.
                    crate::jwt::IdTokenError::Issuer => {
                        let got = crate::jwt::decode_payload(id_token.expose())
                            .and_then(|c| {
                                c.get("iss")
                                    .and_then(Value::as_str)
                                    .map(super::tokens::clip)
                            })
                            .unwrap_or_default();
                        format!(
                            "the ID token was refused (Issuer): its `iss` is \"{got}\" but provider.issuer is \"{}\"",
                            self.cfg.provider.issuer
                        )
                    }
                    other => format!("the ID token was refused ({other:?}): {other}"),
                };
                return IdTokenCheck::Refused(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    &why,
                    Some(flow_cookie),
                ));
            }
        };
        if !self.cfg.provider.verifies_signatures() {
            return IdTokenCheck::Valid(claims);
        }
        match self.verify_jws(id_token.expose(), may_fetch) {
            JwsCheck::Verified(_) => IdTokenCheck::Valid(claims),
            JwsCheck::Fetch(request) => IdTokenCheck::FetchJwks(request),
            JwsCheck::Refused(e) => {
                let why = format!("the ID token signature was refused ({e:?})");
                IdTokenCheck::Refused(self.login_failed(
                    400,
                    ErrorCode::LoginFailed,
                    &why,
                    Some(flow_cookie),
                ))
            }
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
        let (acr, auth_time) = match self.sign_in_level(&login, &claims) {
            Ok(v) => v,
            Err(why) => {
                return self.login_failed(400, ErrorCode::LoginFailed, &why, Some(flow_cookie))
            }
        };
        let mut kept = serde_json::Map::new();
        for k in &self.cfg.keep_claims {
            if let Some(v) = claims.get(k) {
                kept.insert(k.clone(), v.clone());
            }
        }
        let login_audience = self.cfg.login_audience.clone();
        let scope = self.granted_scope(
            &login_audience,
            tokens.scope.as_deref(),
            tokens.access_token.expose(),
            &oauth::login_scope(self.cfg),
        );
        if let Err((reason, detail)) =
            self.check_token(&login_audience, tokens.access_token.expose(), &scope)
        {
            self.event(Event::TokenRefused {
                session: None,
                audience: login_audience,
                reason,
                detail,
            });
            return self.login_failed(
                400,
                ErrorCode::LoginFailed,
                if reason == "audience" {
                    "the identity provider issued a token for another audience"
                } else {
                    "the identity provider issued a token with more scopes than asked for"
                },
                Some(flow_cookie),
            );
        }
        // A step-up login (one that asked for acr_values or max_age) by the same user in a
        // browser that has a live session upgrades it: a fresh id (no fixation) that keeps the
        // tokens of the other audiences and the absolute lifetime. Any other login starts
        // afresh, and the session presented at the callback ends (below).
        let carried = old_session
            .as_ref()
            .filter(|_| !login.step_up.is_empty())
            .and_then(|old| self.store.get_session(old))
            .map(|(s, _)| s)
            .filter(|s| {
                s.sub == sub
                    && s.liveness(self.now, self.cfg.session.idle_timeout_s)
                        == crate::session::Liveness::Live
            });
        let mut session = Session {
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
            acr,
            auth_time,
            reauth: false,
            binding: login.binding.clone().unwrap_or_default(),
        };
        let upgraded = carried.is_some();
        if let Some(prev) = carried {
            session.created = prev.created;
            session.expires = prev.expires.min(session.expires);
            for t in prev.tokens {
                if t.aud != self.cfg.login_audience {
                    session.put_token(t);
                }
            }
        }
        let id = match self.store.create_session(&session, self.rng, self.now) {
            Ok((id, evicted)) => {
                if let Some(ev) = evicted {
                    self.event(Event::SessionEnded {
                        reason: match ev.why {
                            Replaced::Evicted => EndReason::Evicted,
                            Replaced::Idle => EndReason::Idle,
                            Replaced::Expired => EndReason::Expired,
                        },
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
            // No fixation: the session presented at the callback ends (if it is already gone,
            // so much the better).
            let _ = self.store.delete_session(&old);
            self.event(Event::SessionEnded {
                reason: if upgraded {
                    EndReason::SteppedUp
                } else {
                    EndReason::Relogin
                },
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

    /// The sign-in level of a login's ID token: its `acr` and `auth_time`, kept in the session
    /// for the routes that ask for them (RFC 9470). An `auth_time` that is not a time in the
    /// past (beyond `provider.clock_skew_s`) refuses the login; a step-up login also needs the
    /// `acr` it asked for (a provider that ignores `acr_values` must not satisfy it) and an
    /// `auth_time` within the `max_age` it asked for.
    fn sign_in_level(
        &self,
        login: &PendingLogin,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<(Option<String>, Option<u64>), String> {
        let skew = self.cfg.provider.clock_skew_s;
        let auth_time = match claims.get("auth_time") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(t) if t <= self.now.saturating_add(skew) => Some(t),
                _ => {
                    return Err(
                        "the ID token's auth_time is not a time in the past (see provider.clock_skew_s)"
                            .into(),
                    )
                }
            },
        };
        let acr = claims
            .get("acr")
            .and_then(Value::as_str)
            .filter(|a| a.len() <= 128 && a.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .map(str::to_string);
        if let Some(want) = &login.step_up.acr_values {
            if !acr
                .as_deref()
                .is_some_and(|a| want.split(' ').any(|w| w == a))
            {
                let got = acr
                    .as_deref()
                    .map_or("none".to_string(), |a| format!("`{a}`"));
                return Err(format!(
                    "the identity provider did not sign in at the level asked for (acr_values `{want}`; the ID token's acr: {got})"
                ));
            }
        }
        if let Some(max) = login.step_up.max_age {
            match auth_time {
                Some(t) if self.now <= t.saturating_add(max).saturating_add(skew) => {}
                Some(_) => {
                    return Err(format!(
                        "the identity provider did not sign the user in again (auth_time older than the max_age {max} asked for)"
                    ))
                }
                None => {
                    return Err(
                        "the ID token has no auth_time, but max_age was asked for".into(),
                    )
                }
            }
        }
        Ok((acr, auth_time))
    }
}
