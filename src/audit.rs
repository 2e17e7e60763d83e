//! Audit events and per-request decisions: what the engine reports for the audit log, metrics
//! and Envoy's access log. Sessions are named only by their non-reversible handle; no token,
//! code, verifier, secret or cookie value ever appears in an event.

use serde_json::{json, Value};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `POST /auth/logout`.
    Logout,
    /// Unused for longer than the idle timeout.
    Idle,
    /// Past its absolute lifetime.
    Expired,
    /// The provider refused the refresh token (`invalid_grant` or another terminal error).
    RefreshRejected,
    /// A token was needed and there is no refresh token.
    NoRefreshToken,
    /// The same browser logged in again.
    Relogin,
    /// Evicted to make room in a full store.
    Evicted,
    /// OIDC back-channel logout from the provider.
    Backchannel,
    /// OIDC front-channel logout from the provider's logout page.
    FrontChannel,
    /// Ended by an operator through the admin endpoint.
    Admin,
    /// The same user signed in again (a step-up): the session went on under a fresh id.
    SteppedUp,
    /// An anomaly whose action is `revoke` (`session.on_anomaly`).
    Anomaly,
}

impl EndReason {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::Idle => "idle",
            EndReason::Expired => "expired",
            EndReason::RefreshRejected => "refresh_rejected",
            EndReason::NoRefreshToken => "no_refresh_token",
            EndReason::Relogin => "relogin",
            EndReason::Evicted => "evicted",
            EndReason::Backchannel => "backchannel",
            EndReason::FrontChannel => "frontchannel",
            EndReason::Admin => "admin",
            EndReason::SteppedUp => "stepped_up",
            EndReason::Anomaly => "anomaly",
        }
    }
    /// Every reason (metrics are defined for each).
    pub const ALL: [EndReason; 12] = [
        EndReason::Logout,
        EndReason::Idle,
        EndReason::Expired,
        EndReason::RefreshRejected,
        EndReason::NoRefreshToken,
        EndReason::Relogin,
        EndReason::Evicted,
        EndReason::Backchannel,
        EndReason::FrontChannel,
        EndReason::Admin,
        EndReason::SteppedUp,
        EndReason::Anomaly,
    ];
}

/// An audit event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A login was started.
    LoginStarted,
    /// A login completed and a session was created.
    LoginCompleted {
        /// Subject.
        sub: String,
        /// Session handle.
        session: String,
    },
    /// A login failed.
    LoginFailed {
        /// Why (fixed text, no input echoed).
        reason: String,
    },
    /// A session ended.
    SessionEnded {
        /// Why.
        reason: EndReason,
        /// Session handle.
        session: String,
        /// Subject, when known.
        sub: Option<String>,
    },
    /// A token was renewed or exchanged.
    TokenRenewed {
        /// Session handle.
        session: String,
        /// Audience.
        audience: String,
        /// `refresh_token` or `token_exchange`.
        grant: &'static str,
    },
    /// A renewal failed without ending the session.
    RefreshFailed {
        /// Session handle.
        session: String,
        /// Why.
        reason: &'static str,
    },
    /// A request waited for another request's renewal instead of making its own.
    RefreshCoalesced {
        /// Session handle.
        session: String,
    },
    /// A session was used in an unusual way (see `anomaly`).
    SessionAnomaly {
        /// `refusals`, `rate`, `user_agent` or `network`.
        kind: crate::anomaly::Kind,
        /// For `refusals`: the refusal code.
        code: Option<&'static str>,
        /// The session's handle.
        session: String,
        /// What was done: `log`, `step_up` or `revoke`.
        action: crate::anomaly::Action,
    },
    /// A request was refused.
    Denied {
        /// Contract error code.
        code: &'static str,
        /// Route name, or the bffgate endpoint.
        route: String,
        /// Session handle, if the request had a live session.
        session: Option<String>,
    },
    /// `POST /sessions/revoke-all` ended every session; their refresh tokens are revoked at the
    /// provider in the background (progress: `revoke-all:` log lines and counters).
    RevokeAll {
        /// `operator` (`POST /sessions/revoke-all`) or `key_change` (the cookie key ring's
        /// first key changed, with `cookie.revoke_on_key_change`).
        trigger: &'static str,
        /// Sessions ended.
        sessions: usize,
        /// Refresh tokens queued for revocation.
        queued: usize,
        /// Refresh tokens that cannot be revoked (no revocation endpoint known).
        not_sent: usize,
        /// Why not, if so.
        why_not: Option<&'static str>,
    },
    /// A route in report mode (`mode: report`) let through a request its scopes, claims or
    /// sign-in level would have refused.
    PolicyReport {
        /// The refusal it would have been (contract error code).
        code: &'static str,
        /// Route name.
        route: String,
        /// Session handle.
        session: String,
    },
    /// Writes to the fleet store (etcd) did not apply; the request got `store_unavailable` or
    /// waited for another Envoy's renewal.
    StoreWriteFailed {
        /// `conflict` (another Envoy changed the session first) or `unavailable`.
        outcome: &'static str,
    },
    /// What became of a logged-out session's tokens at the provider (RFC 7009), as the
    /// provider answered: `revoked` (2xx), `refused (<status>)`, `no answer`, or
    /// `not supported` (no revocation endpoint: the refresh token outlives the logout at the
    /// provider).
    Revocation {
        /// Session handle.
        session: String,
        /// Per token: its `token_type_hint` and the result.
        results: Vec<(&'static str, String)>,
    },
    /// The provider's discovery document could not be read or was refused; logins answer
    /// `503 idp_unavailable` until one is read (a stale one stays in use).
    DiscoveryFailed {
        /// The document's URL.
        url: String,
        /// What was wrong (bounded, control characters removed).
        reason: String,
    },
    /// A token the provider issued (or refused to issue) for an audience was not used.
    TokenRefused {
        /// Session handle, if there is a session yet.
        session: Option<String>,
        /// The audience asked for.
        audience: String,
        /// `provider_error` (the provider refused; `detail` is its error code), `audience` (a
        /// JWT access token for another audience; `detail` is its `aud`), or `scope` (more
        /// scopes than asked for; `detail` lists the extra ones).
        reason: &'static str,
        /// What the provider said or issued (filtered; never a token).
        detail: String,
    },
}

impl Event {
    /// The audit JSON line (without timestamp; the log line carries one).
    pub fn to_json(&self) -> Value {
        match self {
            Event::LoginStarted => json!({"event": "login_started"}),
            Event::LoginCompleted { sub, session } => {
                json!({"event": "login", "sub": sub, "session": session})
            }
            Event::LoginFailed { reason } => json!({"event": "login_failed", "reason": reason}),
            Event::SessionEnded {
                reason,
                session,
                sub,
            } => {
                json!({"event": "session_ended", "reason": reason.as_str(), "session": session, "sub": sub})
            }
            Event::TokenRenewed {
                session,
                audience,
                grant,
            } => {
                json!({"event": "token_renewed", "session": session, "audience": audience, "grant": grant})
            }
            Event::RefreshFailed { session, reason } => {
                json!({"event": "refresh_failed", "session": session, "reason": reason})
            }
            Event::RefreshCoalesced { session } => {
                json!({"event": "refresh_coalesced", "session": session})
            }
            Event::Denied {
                code,
                route,
                session,
            } => json!({"event": "denied", "code": code, "route": route, "session": session}),
            Event::RevokeAll {
                trigger,
                sessions,
                queued,
                not_sent,
                why_not,
            } => {
                json!({"event": "revoke_all", "trigger": trigger, "sessions": sessions, "revocations_queued": queued,
                       "revocations_not_sent": not_sent, "why_not_sent": why_not})
            }
            Event::PolicyReport {
                code,
                route,
                session,
            } => {
                json!({"event": "policy_report", "would_refuse": code, "route": route, "session": session})
            }
            Event::SessionAnomaly {
                kind,
                code,
                session,
                action,
            } => {
                let mut v = json!({"event": "session_anomaly", "kind": kind.as_str(),
                                   "session": session, "action": action.as_str()});
                if let (Some(c), Some(o)) = (code, v.as_object_mut()) {
                    o.insert("code".into(), json!(c));
                }
                v
            }
            Event::Revocation { session, results } => {
                let results: Vec<Value> = results
                    .iter()
                    .map(|(hint, r)| json!({"token": hint, "result": r}))
                    .collect();
                json!({"event": "revocation", "session": session, "results": results})
            }
            Event::TokenRefused {
                session,
                audience,
                reason,
                detail,
            } => {
                json!({"event": "token_refused", "session": session, "audience": audience, "reason": reason, "detail": detail})
            }
            Event::StoreWriteFailed { outcome } => {
                json!({"event": "store_write_failed", "outcome": outcome})
            }
            Event::DiscoveryFailed { url, reason } => {
                json!({"event": "discovery_failed", "url": url, "reason": reason})
            }
        }
    }

    /// The counter this event increments (denials are counted from decisions instead).
    pub fn metric(&self) -> Option<String> {
        Some(match self {
            Event::LoginStarted => "bffgate_logins_started".into(),
            Event::LoginCompleted { .. } => "bffgate_logins_completed".into(),
            Event::LoginFailed { .. } => "bffgate_logins_failed".into(),
            Event::SessionEnded { reason, .. } => {
                format!("bffgate_sessions_ended_{}", reason.as_str())
            }
            Event::TokenRenewed { grant, .. } => {
                if *grant == "token_exchange" {
                    "bffgate_exchanges_ok".into()
                } else {
                    "bffgate_refreshes_ok".into()
                }
            }
            Event::RefreshFailed { .. } => "bffgate_refreshes_failed".into(),
            Event::RefreshCoalesced { .. } => "bffgate_refreshes_coalesced".into(),
            Event::Denied { .. } => return None,
            Event::PolicyReport { code, .. } => format!("bffgate_policy_report_{code}"),
            Event::RevokeAll { .. } => "bffgate_revoke_all".into(),
            Event::SessionAnomaly { kind, .. } => {
                format!("bffgate_session_anomalies_{}", kind.as_str())
            }
            Event::Revocation { .. } => "bffgate_revocations_sent".into(),
            Event::TokenRefused { .. } => "bffgate_tokens_refused".into(),
            Event::DiscoveryFailed { .. } => "bffgate_discovery_failed".into(),
            Event::StoreWriteFailed { outcome } => format!("bffgate_store_write_{outcome}"),
        })
    }
}

/// The refusals a route in report mode reports instead of answering.
pub const REPORTED: [crate::reply::ErrorCode; 3] = [
    crate::reply::ErrorCode::InsufficientScope,
    crate::reply::ErrorCode::Forbidden,
    crate::reply::ErrorCode::InsufficientUserAuthentication,
];

/// Every counter name the events can produce (defined up front so they show as 0).
pub fn all_counters() -> Vec<String> {
    let mut v: Vec<String> = [
        "bffgate_logins_started",
        "bffgate_logins_completed",
        "bffgate_logins_failed",
        "bffgate_refreshes_ok",
        "bffgate_exchanges_ok",
        "bffgate_refreshes_failed",
        "bffgate_refreshes_coalesced",
        "bffgate_revocations_sent",
        "bffgate_tokens_refused",
        "bffgate_discovery_failed",
        "bffgate_csrf_rejections",
        "bffgate_upstream_cookies_removed",
        "bffgate_upstream_step_up",
        "bffgate_callouts_dispatched",
        "bffgate_callouts_ok",
        "bffgate_callouts_http_error",
        "bffgate_callouts_failed",
        "bffgate_store_evictions",
        "bffgate_store_cas_retries",
        "bffgate_store_record_cache_misses",
        "bffgate_store_write_conflict",
        "bffgate_store_write_unavailable",
        "bffgate_requests_allowed",
        "bffgate_requests_public",
        "bffgate_config_refused",
        "bffgate_revoke_all",
        "bffgate_revoke_all_revoked",
        "bffgate_revoke_all_failed",
        "bffgate_revoke_all_not_sent",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in EndReason::ALL {
        v.push(format!("bffgate_sessions_ended_{}", r.as_str()));
    }
    for code in crate::reply::ErrorCode::ALL {
        v.push(format!("bffgate_denied_{}", code.as_str()));
    }
    for code in REPORTED {
        v.push(format!("bffgate_policy_report_{}", code.as_str()));
    }
    for k in crate::anomaly::Kind::ALL {
        v.push(format!("bffgate_session_anomalies_{}", k.as_str()));
    }
    v
}

/// What the filter decided for one request (for the access log and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Decision {
    /// Not decided yet (paused).
    #[default]
    Pending,
    /// A public route: forwarded with no token.
    Public,
    /// A session route: forwarded with a bearer token.
    Allowed,
    /// Answered by a bffgate endpoint (`/auth/*`).
    Endpoint,
    /// A navigation redirected to login.
    LoginRedirect,
    /// Refused with this error code.
    Denied(&'static str),
}

impl Decision {
    /// The counter a final decision increments.
    pub fn metric(&self) -> Option<std::borrow::Cow<'static, str>> {
        match self {
            Decision::Pending | Decision::Endpoint | Decision::LoginRedirect => None,
            Decision::Public => Some("bffgate_requests_public".into()),
            Decision::Allowed => Some("bffgate_requests_allowed".into()),
            Decision::Denied(c) => Some(format!("bffgate_denied_{c}").into()),
        }
    }

    /// Access-log value.
    pub fn as_str(&self) -> String {
        match self {
            Decision::Pending => "pending".into(),
            Decision::Public => "public".into(),
            Decision::Allowed => "allow".into(),
            Decision::Endpoint => "endpoint".into(),
            Decision::LoginRedirect => "login_redirect".into(),
            Decision::Denied(c) => format!("deny:{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render_as_json_with_their_metric() {
        let e = Event::SessionEnded {
            reason: EndReason::Logout,
            session: "abc".into(),
            sub: Some("alice".into()),
        };
        assert_eq!(e.to_json()["reason"], "logout");
        assert_eq!(e.metric().as_deref(), Some("bffgate_sessions_ended_logout"));
        assert!(all_counters().contains(&e.metric().unwrap()));
        for code in crate::reply::ErrorCode::ALL {
            let m = Decision::Denied(code.as_str()).metric().unwrap();
            assert!(all_counters().contains(&m.into_owned()));
        }
        assert_eq!(Decision::Denied("csrf").as_str(), "deny:csrf");
    }
}
