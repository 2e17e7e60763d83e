//! Session anomaly signals in the engine (see [`crate::anomaly`]): the client binding made at
//! the start of a login, its drift on later requests, the rate and refusal counts, and what
//! `session.on_anomaly` says to do (`log`, `step_up`, `revoke`).

use super::{Engine, Request, Revoking, Step};
use crate::anomaly::{self, Action, Binding, Kind, Signals};
use crate::audit::{EndReason, Event};
use crate::policy::StepUp;
use crate::reply::{error_reply, with_cookie, ErrorCode};
use crate::secret::Secret;
use crate::session::{Session, SessionId};
use crate::store::Cas;

/// The label of the key the binding hashes are keyed with (derived from a cookie key).
const KEY_LABEL: &str = "session-binding";

/// The tracker's key for a session: 8 bytes of its verifier (given as 64 hex digits).
pub(super) fn track_key(verifier: &[u8]) -> [u8; 8] {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    };
    let mut k = [0u8; 8];
    for (out, pair) in k.iter_mut().zip(verifier.chunks(2)) {
        let hi = pair.first().copied().map_or(0, nibble);
        let lo = pair.get(1).copied().map_or(0, nibble);
        *out = (hi << 4) | lo;
    }
    k
}

/// What the legitimate user is told when a `revoke` ended the session.
fn ended_text(reason: &str) -> &'static str {
    match reason {
        "anomaly:network" => "the session was used from another network and has been ended",
        "anomaly:user_agent" => "the session was used from another browser and has been ended",
        "anomaly:rate" => "the session made too many requests and has been ended",
        "anomaly:refusals" => "the session was refused too often and has been ended",
        _ => "the session has been ended",
    }
}

impl Engine<'_> {
    /// A keyed hash (the tracker's memo when there is one) with the binding key of cookie key
    /// `kid`; `None` when that key is no longer in the ring.
    fn bind_hash(&self, kid: &str, domain: &'static str, value: &[u8]) -> Option<[u8; 8]> {
        let key = || self.cfg.cookie.keys.derive(kid, KEY_LABEL);
        match self.anomalies {
            Some(t) => t.hash(kid, key, domain, value),
            None => Some(anomaly::keyed(&key()?, domain, value)),
        }
    }

    fn ua_hash(&self, kid: &str, req: &Request) -> Option<[u8; 8]> {
        let ua = req.user_agent.as_deref().unwrap_or("");
        self.bind_hash(kid, "user-agent", ua.as_bytes())
    }

    fn net_hash(&self, kid: &str, req: &Request) -> Option<[u8; 8]> {
        let xff = req.client_address.as_deref()?;
        let addr = anomaly::client_address(xff, self.cfg.session.anomaly.trusted_hops)?;
        let of_addr = || {
            let net = anomaly::network_of(addr)?;
            let key = self.cfg.cookie.keys.derive(kid, KEY_LABEL)?;
            Some(anomaly::keyed(&key, "network", &net))
        };
        match self.anomalies {
            // Memoized by the address itself: a hit parses nothing.
            Some(t) => t.hash_of(kid, "network-address", addr.as_bytes(), of_addr),
            None => of_addr(),
        }
    }

    /// The binding of the browser making `req` (at the start of a login), with the current
    /// cookie key; `None` when binding is off.
    pub(super) fn binding_of(&self, req: &Request) -> Option<Binding> {
        let a = &self.cfg.session.anomaly;
        if !a.bind_user_agent && !a.bind_network {
            return None;
        }
        let kid = self.cfg.cookie.keys.current_kid().to_string();
        let ua = if a.bind_user_agent {
            self.ua_hash(&kid, req)
        } else {
            None
        };
        let net = if a.bind_network {
            self.net_hash(&kid, req)
        } else {
            None
        };
        Some(Binding { kid, ua, net })
    }

    /// Where `req` departs from a session's binding. A binding whose key left the ring, or a
    /// request without a client address, tells nothing.
    pub(super) fn drift(
        &self,
        req: &Request,
        kid: &str,
        ua: Option<[u8; 8]>,
        net: Option<[u8; 8]>,
    ) -> Signals {
        let mut out = Signals::new();
        if kid.is_empty() {
            return out;
        }
        let a = &self.cfg.session.anomaly;
        if let (true, Some(bound)) = (a.bind_user_agent, ua) {
            if self.ua_hash(kid, req).is_some_and(|h| h != bound) {
                out.push((Kind::UserAgent, None));
            }
        }
        if let (true, Some(bound)) = (a.bind_network, net) {
            if self.net_hash(kid, req).is_some_and(|h| h != bound) {
                out.push((Kind::Network, None));
            }
        }
        out
    }

    /// Counts a request of the session `key` (once per request); the rate signal, if any.
    pub(super) fn count_request(&mut self, key: [u8; 8]) -> Option<Kind> {
        if self.rate_counted {
            return None;
        }
        self.rate_counted = true;
        let a = &self.cfg.session.anomaly;
        let max = a.max_requests_per_s.saturating_mul(a.window_s);
        self.anomalies?.request(key, self.now, a.window_s, max)
    }

    /// A refusal with `code` of a request of the live session `id`: counted, and when it
    /// crosses the threshold the `refusals` action is applied once the request's step is known
    /// ([`Engine::apply_refusal_anomaly`]).
    pub(super) fn refused(&mut self, code: ErrorCode, id: &SessionId) {
        let a = &self.cfg.session.anomaly;
        let Some(t) = self.anomalies else {
            return;
        };
        let key = track_key(&id.verifier_bytes());
        if let Some(code) = t.refusal(key, code.as_str(), self.now, a.window_s, a.max_refusals) {
            self.refusal_anomaly = Some((id.clone(), code));
        }
    }

    /// The signals of a request of a live session (its drift, and its rate unless the fast
    /// path counted it already), after those the fast path found.
    pub(super) fn signals_of(&mut self, req: &Request, id: &SessionId, s: &Session) -> Signals {
        let mut sig = std::mem::take(&mut self.signals);
        if !self.rate_counted {
            sig = self.drift(req, &s.binding.kid, s.binding.ua, s.binding.net);
            if let Some(k) = self.count_request(track_key(&id.verifier_bytes())) {
                sig.push((k, None));
            }
        }
        sig
    }

    /// Reports the signals and applies the strongest action: `None` to go on with the request
    /// (`log`), or the answer (`step_up`: a fresh sign-in is needed from now on; `revoke`: the
    /// session is over).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_signals(
        &mut self,
        sig: Signals,
        navigation: bool,
        path: &str,
        id: &SessionId,
        session: &Session,
        cas: Cas,
    ) -> Option<Step> {
        if sig.is_empty() {
            return None;
        }
        let key = track_key(&id.verifier_bytes());
        let window = self.cfg.session.anomaly.window_s;
        let mut strongest: Option<(Action, Kind)> = None;
        for (kind, code) in sig {
            let action = self.cfg.session.on_anomaly.action(kind);
            // Rate and refusals come once per window already; a drift that is only logged is
            // reported once per window too (the next requests from there say the same).
            let report = match kind {
                Kind::UserAgent | Kind::Network if action == Action::Log => self
                    .anomalies
                    .is_none_or(|t| t.first_in_window(key, kind, self.now, window)),
                _ => true,
            };
            if report {
                self.event(Event::SessionAnomaly {
                    kind,
                    code,
                    session: id.handle(),
                    action,
                });
            }
            if strongest.is_none_or(|(a, _)| action.rank() > a.rank()) {
                strongest = Some((action, kind));
            }
        }
        match strongest? {
            (Action::Log, _) => None,
            (Action::StepUp, _) => {
                self.require_reauth(id, session, cas);
                self.deny(
                    ErrorCode::InsufficientUserAuthentication,
                    "anomaly",
                    Some(id.handle()),
                );
                Some(Step::Respond(self.step_up_needed(
                    navigation,
                    path,
                    &StepUp {
                        acr_values: None,
                        max_age: Some(0),
                    },
                )))
            }
            (Action::Revoke, kind) => Some(self.revoke_for(kind, id, session, navigation, path)),
        }
    }

    /// Marks the session: its next requests need a fresh sign-in (`max_age=0`).
    fn require_reauth(&mut self, id: &SessionId, session: &Session, cas: Cas) {
        let mut s = session.clone();
        s.reauth = true;
        if self.store.put_session(id, &s, cas).is_err() {
            // Changed meanwhile (a touch, a renewal): once more on the current record.
            if let Some((mut s, cas)) = self.store.get_session(id) {
                s.reauth = true;
                let _ = self.store.put_session(id, &s, cas);
            }
        }
    }

    /// Ends the session for an anomaly: gone from the store at once, why remembered for its
    /// cookie, its tokens revoked at the provider, and the request answered as unauthenticated.
    fn revoke_for(
        &mut self,
        kind: Kind,
        id: &SessionId,
        session: &Session,
        navigation: bool,
        path: &str,
    ) -> Step {
        let reason = format!("anomaly:{}", kind.as_str());
        self.deny(ErrorCode::Unauthenticated, "anomaly", Some(id.handle()));
        let reply = if navigation {
            self.unauthenticated(true, path, true)
        } else {
            with_cookie(
                error_reply(401, ErrorCode::Unauthenticated, ended_text(&reason)),
                self.clear_session_cookie(),
            )
        };
        self.end_for_anomaly(id, session, &reason, reply)
    }

    /// Ends the session: deleted, why remembered for its cookie, audited, and `reply` sent once
    /// its tokens are revoked at the provider.
    fn end_for_anomaly(
        &mut self,
        id: &SessionId,
        session: &Session,
        reason: &str,
        reply: crate::reply::Reply,
    ) -> Step {
        let _ = self.store.delete_session(id);
        let handle = id.handle();
        let until = self.now.saturating_add(self.cfg.session.idle_timeout_s);
        self.store.note_ended(&handle, reason, until, self.now);
        self.event(Event::SessionEnded {
            reason: EndReason::Anomaly,
            session: handle.clone(),
            sub: Some(session.sub.clone()),
        });
        self.next_revocation(Revoking {
            reply,
            remaining: self.tokens_to_revoke(session),
            current: "",
            results: Vec::new(),
            session: handle,
            subject: Some(session.sub.clone()),
        })
    }

    /// The refresh token, and the live access tokens when `provider.revoke_access_tokens`.
    pub(super) fn tokens_to_revoke(&self, s: &Session) -> Vec<(Secret, &'static str)> {
        let mut revoke = Vec::new();
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
        revoke
    }

    /// The `refusals` action, once the refused request's step is known: `log` keeps the step,
    /// `step_up` marks the session, `revoke` ends it (the refusal then also clears the cookie,
    /// and waits for the revocation).
    pub(super) fn apply_refusal_anomaly(&mut self, step: Step) -> Step {
        let Some((id, code)) = self.refusal_anomaly.take() else {
            return step;
        };
        let action = self.cfg.session.on_anomaly.refusals;
        self.event(Event::SessionAnomaly {
            kind: Kind::Refusals,
            code: Some(code),
            session: id.handle(),
            action,
        });
        let Some((session, cas)) = self.store.get_session(&id) else {
            return step;
        };
        match action {
            Action::Log => step,
            Action::StepUp => {
                self.require_reauth(&id, &session, cas);
                step
            }
            Action::Revoke => {
                let Step::Respond(reply) = step else {
                    return step;
                };
                let reply = with_cookie(reply, self.clear_session_cookie());
                self.end_for_anomaly(&id, &session, "anomaly:refusals", reply)
            }
        }
    }

    /// Why a valid cookie's session is gone, when bffgate ended it itself (an anomaly's
    /// `revoke`): the text for the user and the reason code.
    pub(super) fn ended_note(&self, id: &SessionId) -> Option<(&'static str, String)> {
        let reason = self.store.ended_reason(&id.handle(), self.now)?;
        Some((ended_text(&reason), reason))
    }
}
