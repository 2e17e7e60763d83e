//! The request's cookies, read once: one pass over the Cookie header finds the session cookie
//! and whether bffgate's cookies must be stripped before forwarding ([`CookieView`]); the
//! session cookie is verified at most once per decision ([`SessionCookie`]) and its session
//! looked up in the store ([`SessionLookup`]).

use super::{AfterCall, CookieEdit, Engine, Request, Step};
use crate::audit::{EndReason, Event};
use crate::callout::Callout;
use crate::config::Config;
use crate::cookie;
use crate::session::{Liveness, Session, SessionId};
use crate::store::{Cas, RemoteState};

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

/// What one pass over a request's Cookie header found.
pub(super) struct CookieView<'r> {
    /// The whole header (all `cookie` headers joined).
    header: Option<&'r str>,
    /// How many cookies carry the session cookie's exact name, and the first one's value.
    sessions: usize,
    session: Option<&'r str>,
    /// Whether the header has bffgate cookies, and other cookies.
    ours: bool,
    others: bool,
    /// The header without bffgate's cookies when it has both (built by the scan; taken by the
    /// first [`CookieView::strip_edit`], a later one rebuilds it).
    rest: std::cell::Cell<Option<String>>,
}

impl<'r> CookieView<'r> {
    /// Scans the Cookie header once, rebuilding it without bffgate's cookies on the way (for
    /// a request that is forwarded: [`CookieView::strip_edit`]).
    pub(super) fn scan(cfg: &Config, header: Option<&'r str>) -> CookieView<'r> {
        Self::scan_inner(cfg, header, true)
    }

    /// Scans the Cookie header once, for the session cookie only (a request bffgate answers).
    pub(super) fn scan_session(cfg: &Config, header: Option<&'r str>) -> CookieView<'r> {
        Self::scan_inner(cfg, header, false)
    }

    fn scan_inner(cfg: &Config, header: Option<&'r str>, rebuild: bool) -> CookieView<'r> {
        let Some(h) = header else {
            return CookieView {
                header: None,
                sessions: 0,
                session: None,
                ours: false,
                others: false,
                rest: std::cell::Cell::new(None),
            };
        };
        let ours = |n: &str| is_bff_cookie(cfg, n);
        let (s, rest) = if rebuild {
            cookie::scan_without(h, &cfg.cookie.name, ours)
        } else {
            (cookie::scan(h, &cfg.cookie.name, ours), None)
        };
        CookieView {
            header: Some(h),
            sessions: s.count,
            session: s.first,
            ours: s.ours,
            others: s.others,
            rest: std::cell::Cell::new(rest),
        }
    }

    /// The `cookie` edit that strips every bffgate cookie (every part, well-formed or not, by
    /// the name `cookie::without` would see).
    pub(super) fn strip_edit(&self, cfg: &Config) -> CookieEdit {
        match (self.header, self.ours, self.others) {
            (None, ..) | (_, false, _) => CookieEdit::Keep,
            // Nothing would be left: no need to build the rest.
            (Some(_), true, false) => CookieEdit::Remove,
            (Some(h), true, true) => match self
                .rest
                .take()
                .or_else(|| cookie::without(h, |n| is_bff_cookie(cfg, n)))
            {
                Some(rest) => CookieEdit::Set(rest),
                None => CookieEdit::Remove,
            },
        }
    }
}

/// The request's session cookie, verified.
#[derive(Clone)]
pub(super) enum SessionCookie {
    /// None sent.
    Absent,
    /// Malformed, forged, under an unknown key, or sent twice (one may be planted).
    Invalid,
    /// A valid MAC: the session id, and its [`SessionId::verifier_bytes`].
    Valid(SessionId, [u8; 64]),
}

impl SessionCookie {
    /// The id, if the cookie verified.
    pub(super) fn id(&self) -> Option<&SessionId> {
        match self {
            SessionCookie::Valid(id, _) => Some(id),
            _ => None,
        }
    }
}

/// How the session cookie of a request resolved against the store.
pub(super) enum SessionLookup {
    /// No session cookie.
    Absent,
    /// A cookie that is malformed, forged, for an unknown key, or for a dead session.
    Invalid,
    /// A live session.
    Live(SessionId, Box<Session>, Cas),
    /// Not in the local view of a remote store: fetch it, then decide again.
    Fetch(SessionId, Callout),
    /// The remote store could not be reached and nothing cached may be used: fail closed.
    Unavailable,
}

impl Engine<'_> {
    /// Verifies the view's session cookie: once per decision (the fast path and the full path
    /// share the result), and with no HMAC at all for a value this VM verified before.
    pub(super) fn session_of(&mut self, view: &CookieView<'_>) -> SessionCookie {
        let Some(value) = view.session else {
            return SessionCookie::Absent;
        };
        if view.sessions > 1 {
            // Two session cookies: one may be planted. Trust neither.
            return SessionCookie::Invalid;
        }
        let ring = &self.cfg.cookie.keys;
        if let Some((id, verifier)) = self.verified.and_then(|v| v.get(ring, value)) {
            return SessionCookie::Valid(id, verifier);
        }
        match ring.open_with(&self.cfg.cookie.name, value, SessionId::from_bytes) {
            Ok(Some(id)) => {
                let verifier = id.verifier_bytes();
                if let Some(verified) = self.verified {
                    verified.insert(ring, value, &id, verifier);
                }
                SessionCookie::Valid(id, verifier)
            }
            _ => SessionCookie::Invalid,
        }
    }

    /// The session cookie of a request that is not on a session route (a bffgate endpoint).
    pub(super) fn session_cookie_of(&mut self, req: &Request) -> SessionCookie {
        let view = CookieView::scan_session(self.cfg, req.cookie.as_deref());
        self.session_of(&view)
    }

    /// Looks the session up: in the store, after a fetch from a remote store if the local view
    /// is stale (the request is then decided again with the answer).
    pub(super) fn lookup_session(
        &mut self,
        req: &Request,
        cookie: &SessionCookie,
    ) -> SessionLookup {
        let id = match cookie {
            SessionCookie::Absent => return SessionLookup::Absent,
            SessionCookie::Invalid => return SessionLookup::Invalid,
            SessionCookie::Valid(id, _) => id.clone(),
        };
        match self.store.state_of(&id) {
            RemoteState::Stale if !req.store_fetched => {
                if let Some(call) = self.store.remote().map(|r| r.fetch_session(&id)) {
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
                // Gone either way: a failed delete (another worker emptied the slot first) is
                // the same outcome.
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

    /// Pauses a request on a store fetch; it is decided again when the answer arrives.
    pub(super) fn fetch_then_retry(req: &Request, sid: SessionId, request: Callout) -> Step {
        let mut again = req.clone();
        again.store_fetched = true;
        Step::Call {
            request,
            then: Box::new(AfterCall::StoreFetch {
                request: Box::new(again),
                sid,
            }),
        }
    }

    /// Writes `last_seen` back if it is stale (bounded write rate).
    pub(super) fn touch(&mut self, id: &SessionId, s: &Session, cas: Cas) {
        if s.needs_touch(self.now, self.cfg.session.touch_interval_s) {
            let mut t = s.clone();
            t.last_seen = self.now;
            // Losing the race is fine: whoever won wrote a last use at least as recent.
            let _ = self.store.put_session(id, &t, cas);
        }
    }

    /// `Set-Cookie` that clears the session cookie.
    pub(super) fn clear_session_cookie(&self) -> String {
        cookie::set_cookie(&self.cfg.cookie.name, "", &self.cfg.cookie.attrs, Some(0))
    }

    /// `Set-Cookie` for a new session.
    pub(super) fn session_cookie(&self, id: &SessionId) -> String {
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
}
