//! A token for the route's audience: the one the session holds, or a wait for another
//! request's renewal, or a renewal (refresh-token grant, or RFC 8693 exchange of the login
//! audience's token) under the session's refresh lock; and what the provider's answer does to
//! the session (rotated refresh token, released lock, ended session on `invalid_grant`).

use super::provider::AfterDiscovery;
use super::{AfterCall, AwaitToken, CookieEdit, Engine, Resume, Step, TokenCall, CAS_RETRIES};
use crate::audit::{EndReason, Event};
use crate::callout::CallResult;
use crate::config::Acquire;
use crate::oauth::{self, TokenError};
use crate::policy::{Denial, Mode, Policy};
use crate::reply::{error_reply, ErrorCode};
use crate::secret::Secret;
use crate::session::{AudienceToken, Liveness, SessionId};
use crate::store::StoreError;
use serde_json::Value;

impl Engine<'_> {
    /// Gets a token for `r.audience`: uses a fresh one, waits for a renewal in progress, or
    /// takes the session's refresh lock and calls the provider.
    pub(super) fn obtain(&mut self, r: Resume, waited_since: Option<u64>) -> Step {
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
                // Dead either way: a failed delete means another request emptied the slot first.
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
                let deadline = self.now.saturating_add(self.cfg.lock_ttl());
                if waited_since.is_none() {
                    self.event(Event::RefreshCoalesced {
                        session: r.sid.handle(),
                    });
                }
                return Step::Wait {
                    then: Box::new(AwaitToken {
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
            // The token endpoint before the lock: a request paused for the discovery document
            // holds nothing and starts again.
            let ep = match self.endpoints(|| AfterDiscovery::Obtain(Box::new(r.clone()))) {
                Ok(ep) => ep,
                Err(step) if matches!(*step, Step::Respond(_)) => {
                    return self.transient_failure(&policy, &r)
                }
                Err(step) => return *step,
            };
            let login_audience = self.cfg.login_audience.as_str();
            let request = match call {
                TokenCall::Exchange => s.token_for(login_audience, self.now, 0).map(|t| {
                    self.provider(&ep)
                        .exchange_request(t.token.expose(), &r.audience)
                }),
                TokenCall::Refresh => s
                    .refresh_token
                    .as_ref()
                    .map(|rt| self.provider(&ep).refresh_request(rt.expose(), &r.audience)),
                TokenCall::RefreshForExchange => s.refresh_token.as_ref().map(|rt| {
                    self.provider(&ep)
                        .refresh_request(rt.expose(), login_audience)
                }),
            };
            let Some(request) = request else {
                // Nothing can renew this session's access: it is over (a failed delete means
                // another request ended it first).
                let _ = self.store.delete_session(&r.sid);
                self.event(Event::SessionEnded {
                    reason: EndReason::NoRefreshToken,
                    session: r.sid.handle(),
                    sub: None,
                });
                return Step::Respond(self.unauthenticated(r.navigation, &r.path, true));
            };
            s.refreshing_until = self.now.saturating_add(self.cfg.lock_ttl());
            // A request that renews a token is activity too (the fast path touches likewise).
            s.last_seen = s.last_seen.max(self.now);
            let lock = s.refreshing_until;
            match self.store.put_session(&r.sid, &s, cas) {
                Ok(()) => {
                    return Step::Call {
                        request,
                        then: Box::new(AfterCall::Token {
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

    /// A waiting request, polled: `None` while the renewal it waits for is in progress.
    pub(super) fn wake(&mut self, wait: &AwaitToken) -> Option<Step> {
        let AwaitToken {
            resume,
            since,
            deadline,
        } = wait;
        let remote = self
            .store
            .remote()
            .filter(|r| r.stale_for_wait(&resume.sid));
        if let Some(r) = remote {
            // A remote store's renewal shows here only once the session is read again.
            return Some(Step::Call {
                request: r.fetch_session(&resume.sid),
                then: Box::new(AfterCall::WakeFetch {
                    wait: Box::new(wait.clone()),
                }),
            });
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

    /// A waiting request re-read its session from a remote store.
    pub(super) fn wake_fetched(&mut self, wait: AwaitToken, result: &CallResult) -> Step {
        if let Some(r) = self.store.remote() {
            r.absorb(&wait.resume.sid, result);
        }
        if matches!(result, CallResult::Failed) {
            // Wait on (the deadline still holds); the next tick reads again.
            return Step::Wait {
                then: Box::new(wait),
            };
        }
        match self.wake(&wait) {
            // Just read: no second read in the same turn.
            Some(Step::Call { then, .. }) if matches!(*then, AfterCall::WakeFetch { .. }) => {
                Step::Wait {
                    then: Box::new(wait),
                }
            }
            Some(step) => step,
            None => Step::Wait {
                then: Box::new(wait),
            },
        }
    }

    pub(super) fn authorize(
        &mut self,
        policy: &Policy,
        id: &SessionId,
        claims: &serde_json::Map<String, Value>,
        scope: &str,
        token: Secret,
        cookie: CookieEdit,
    ) -> Step {
        let verdict = if policy.mode == Mode::Report {
            // Claims were reported before the token was looked for: only scopes are left.
            if !policy.scopes_ok(scope) {
                self.report_only(policy, ErrorCode::InsufficientScope, id);
            }
            Ok(())
        } else {
            policy.decide(claims, scope)
        };
        match verdict {
            Ok(()) => Step::Forward {
                authorization: Some(token),
                cookie,
            },
            Err(Denial::InsufficientScope) => {
                self.refused(ErrorCode::InsufficientScope, id);
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

    pub(super) fn finish_token(
        &mut self,
        r: Resume,
        call: TokenCall,
        lock: u64,
        result: CallResult,
    ) -> Step {
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
                self.event(Event::TokenRefused {
                    session: Some(r.sid.handle()),
                    audience: r.audience.clone(),
                    reason: "provider_error",
                    detail: provider_error(&e),
                });
                self.deny(ErrorCode::Forbidden, &r.route, Some(r.sid.handle()));
                return Step::Respond(error_reply(
                    403,
                    ErrorCode::Forbidden,
                    "the identity provider refused a token for this audience",
                ));
            }
            Err(e) if e.is_terminal() => {
                self.event(Event::TokenRefused {
                    session: Some(r.sid.handle()),
                    audience: r.audience.clone(),
                    reason: "provider_error",
                    detail: provider_error(&e),
                });
                // The grant is dead: so is the session, whoever deletes it first.
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
        let got_aud = if call == TokenCall::RefreshForExchange {
            self.cfg.login_audience.clone()
        } else {
            r.audience.clone()
        };
        let login_granted = self
            .store
            .get_session(&r.sid)
            .and_then(|(s, _)| {
                s.tokens
                    .iter()
                    .find(|t| t.aud == self.cfg.login_audience)
                    .map(|t| t.scope.clone())
            })
            .unwrap_or_else(|| self.cfg.client.scope.clone());
        let requested = self.requested_scope(&got_aud, &login_granted);
        let scope = self.granted_scope(
            &got_aud,
            tokens.scope.as_deref(),
            tokens.access_token.expose(),
            &requested,
        );
        if let Err((reason, detail)) =
            self.check_token(&got_aud, tokens.access_token.expose(), &scope)
        {
            // Never stored, never forwarded: the session keeps what it had.
            self.release_lock(&r.sid, false, lock);
            self.event(Event::TokenRefused {
                session: Some(r.sid.handle()),
                audience: got_aud.clone(),
                reason,
                detail,
            });
            self.deny(ErrorCode::Forbidden, &r.route, Some(r.sid.handle()));
            return Step::Respond(error_reply(
                403,
                ErrorCode::Forbidden,
                if reason == "audience" {
                    "the identity provider issued a token for another audience"
                } else {
                    "the identity provider issued a token with more scopes than asked for"
                },
            ));
        }
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
                // The session ran out while the provider answered: the answer does not revive it
                // (a failed delete means another request emptied the slot first).
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
                self.now.saturating_add(self.cfg.lock_ttl())
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
            let request = self.known_endpoints().map(|ep| {
                self.provider(&ep)
                    .exchange_request(tokens.access_token.expose(), &r.audience)
            });
            let Some(request) = request else {
                self.release_lock(&r.sid, true, s.refreshing_until);
                return self.transient_failure(&policy, &r);
            };
            return Step::Call {
                request,
                then: Box::new(AfterCall::Token {
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
}

/// The scopes a JWT access token carries: `scope` (RFC 9068: a space-separated string) or
/// `scp` (Entra ID, Okta: a string or an array of strings).
fn jwt_scope(token: &str) -> Option<String> {
    let claims = crate::jwt::decode_payload(token)?;
    match claims.get("scope").or_else(|| claims.get("scp"))? {
        Value::String(s) => Some(s.clone()),
        Value::Array(v) => Some(
            v.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

/// Scopes that name the user's own data at the provider (OpenID Connect's), not an API's:
/// providers put them in access tokens freely; the least-privilege check ignores them.
const OIDC_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "address",
    "phone",
    "offline_access",
];

impl Engine<'_> {
    /// The scopes a token for `aud` carries, as bffgate keeps them: the token response's
    /// `scope`; else the JWT's `scope` or `scp`; else what was asked for (RFC 6749 section 5.1:
    /// an omitted `scope` means as requested, which on a refresh is as originally granted).
    /// The resource scopes of a scope-indicated audience (`api://orders/Orders.Read`) are kept
    /// by their short name (`Orders.Read`), as route policies name them.
    pub(super) fn granted_scope(
        &self,
        aud: &str,
        response: Option<&str>,
        token: &str,
        requested: &str,
    ) -> String {
        let raw = response
            .map(str::to_string)
            .or_else(|| jwt_scope(token))
            .unwrap_or_else(|| requested.to_string());
        self.short_scopes(aud, &raw)
    }

    /// `scope` with the resource prefixes of `aud`'s configured scopes removed (for an audience
    /// asked for by scope; others unchanged).
    fn short_scopes(&self, aud: &str, scope: &str) -> String {
        let a = self.cfg.audiences.iter().find(|a| a.id == aud);
        let Some(configured) = a
            .filter(|a| a.indicator == crate::config::Indicator::Scope)
            .and_then(|a| a.scope.as_deref())
        else {
            return scope.to_string();
        };
        let prefixes: Vec<&str> = configured
            .split_whitespace()
            .filter_map(|s| s.rfind('/').and_then(|i| s.get(..=i)))
            .collect();
        scope
            .split_whitespace()
            .map(|s| prefixes.iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What was asked for `aud` on a renewal: its configured (down-scoping) scopes, else what
    /// the session was granted at login.
    pub(super) fn requested_scope(&self, aud: &str, login_granted: &str) -> String {
        self.cfg
            .audiences
            .iter()
            .find(|a| a.id == aud)
            .and_then(|a| a.scope.clone())
            .map_or_else(|| login_granted.to_string(), |s| self.short_scopes(aud, &s))
    }

    /// Checks a token the provider issued for `aud` before it is stored or forwarded: a JWT
    /// access token must name the audience (`aud`, or the audience's `token_audience`), and,
    /// when the audience is down-scoped, carry no API scope beyond those asked for. An opaque
    /// token cannot be checked (nothing is assumed about it). `Err`: the reason and what the
    /// token said instead.
    pub(super) fn check_token(
        &self,
        aud: &str,
        token: &str,
        granted: &str,
    ) -> Result<(), (&'static str, String)> {
        let Some(a) = self.cfg.audiences.iter().find(|a| a.id == aud) else {
            return Ok(());
        };
        let Some(claims) = crate::jwt::decode_payload(token) else {
            return Ok(());
        };
        let auds: Vec<&str> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(v)) => v.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !auds.contains(&a.token_audience.as_str()) {
            return Err(("audience", clip(&auds.join(" "))));
        }
        if let Some(asked) = a.scope.as_deref() {
            let asked = self.short_scopes(aud, asked);
            let asked: Vec<&str> = asked.split_whitespace().collect();
            // `.default` (Entra ID) asks for whatever is granted on the resource.
            if !asked.iter().any(|s| s.ends_with(".default")) {
                let extra: Vec<&str> = granted
                    .split_whitespace()
                    .filter(|s| !asked.contains(s) && !OIDC_SCOPES.contains(s))
                    .collect();
                if !extra.is_empty() {
                    return Err(("scope", clip(&extra.join(" "))));
                }
            }
        }
        Ok(())
    }
}

/// The provider's error code of a refused token request (filtered: `[a-z0-9_]`, 64 at most).
pub(super) fn provider_error(e: &TokenError) -> String {
    match e {
        TokenError::InvalidGrant => "invalid_grant".into(),
        TokenError::OAuth(code) => code
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .take(64)
            .collect(),
        other => clip(&other.to_string()),
    }
}

/// At most 200 printable ASCII characters of what a provider said (for an audit line).
pub(super) fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}
