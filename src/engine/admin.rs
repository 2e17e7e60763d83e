//! The operator API (a filter instance with `admin: true`, on a loopback listener) and the
//! sweep that reclaims dead sessions of the embedded store.

use super::provider::AfterDiscovery;
use super::{header_is, query_param, AfterCall, Engine, Request, Step};
use crate::audit::{EndReason, Event};
use crate::callout::CallResult;
use crate::reply::{error_reply, json_reply, ErrorCode, Reply};
use crate::secret::Secret;
use crate::session::Session;
use crate::store::{ScanKind, SharedData, SharedStore};
use crate::util::ct_eq;
use serde_json::json;

impl Engine<'_> {
    /// The operator API (admin listener only): `GET /sessions?sub=S` counts a subject's live
    /// sessions; `POST /sessions/revoke?sub=S` (with the CSRF header) ends them all, on every
    /// worker. Every call needs the operator's bearer token (`admin_token_env`, compared in
    /// constant time), a loopback `Host` (a page that rebinds its name to 127.0.0.1 still sends
    /// its own name) and no sign of a browser (no `Origin`, `Sec-Fetch-Site` absent or `none`).
    /// A scan of the store runs at most once a second per Envoy (`429` otherwise).
    pub(super) fn admin_endpoint(&mut self, req: &Request, path: &str, query: &str) -> Step {
        match self.operator_api(req, path, query) {
            Ok(step) => step,
            Err(r) => Step::Respond(r),
        }
    }

    /// [`Engine::admin_endpoint`]; `Err` is a local answer (a refusal or a result).
    fn operator_api(&mut self, req: &Request, path: &str, query: &str) -> Result<Step, Reply> {
        if !req.authority.as_deref().is_some_and(is_loopback_authority) {
            self.deny(ErrorCode::Forbidden, "admin", None);
            return Err(error_reply(
                403,
                ErrorCode::Forbidden,
                "the operator API answers loopback host names only",
            ));
        }
        let from_browser = req.origin.is_some()
            || req
                .sec_fetch_site
                .as_deref()
                .is_some_and(|s| s.trim() != "none");
        if from_browser {
            self.deny(ErrorCode::Forbidden, "admin", None);
            return Err(error_reply(
                403,
                ErrorCode::Forbidden,
                "the operator API does not answer browsers",
            ));
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
            return Err(r);
        }
        let sub = || match query_param(query, "sub") {
            Ok(Some(s)) if !s.is_empty() => Ok(s),
            _ => Err(error_reply(
                400,
                ErrorCode::InvalidRequest,
                "query parameter `sub` is required",
            )),
        };
        let scan = |e: &mut Self| {
            if e.store.take_scan_budget(ScanKind::Operator, e.now) {
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
        // A call that ends sessions: the CSRF header (a page cannot send it to this port),
        // then the scan budget.
        let change = |e: &mut Self| {
            if header_is(req.csrf.as_deref(), &e.cfg.csrf_value) {
                scan(e)
            } else {
                Some(error_reply(
                    403,
                    ErrorCode::Csrf,
                    "the CSRF header is required",
                ))
            }
        };
        match (req.method.as_str(), path) {
            ("GET", "/sessions") => {
                let sub = sub()?;
                if let Some(r) = scan(self) {
                    return Err(r);
                }
                let n = self.store.count_live_of(&sub, self.now);
                Err(json_reply(200, json!({"sub": sub, "sessions": n})))
            }
            ("POST", "/sessions/revoke") => {
                let sub = sub()?;
                if let Some(r) = change(self) {
                    return Err(r);
                }
                if let Some(r) = self.store.remote() {
                    r.revoke_everywhere(Some(&sub), None);
                }
                let ended = self.store.delete_where(&|s: &Session| s.sub == sub);
                for s in &ended {
                    self.event(Event::SessionEnded {
                        reason: EndReason::Admin,
                        session: s.handle.clone(),
                        sub: Some(s.sub.clone()),
                    });
                }
                Err(json_reply(
                    200,
                    json!({"sub": sub, "sessions_ended": ended.len()}),
                ))
            }
            ("POST", "/sessions/revoke-all") => {
                if let Some(r) = change(self) {
                    return Err(r);
                }
                if let Some(r) = self.store.remote() {
                    // The whole fleet's sessions, a page at a time, from etcd.
                    return Ok(Step::Call {
                        request: r.start_revoke_all(),
                        then: Box::new(AfterCall::RevokeAll(Box::default())),
                    });
                }
                let counts = self.revoke_all_sessions("operator");
                Err(self.revoke_all_reply(&counts))
            }
            _ => Err(error_reply(
                404,
                ErrorCode::InvalidRequest,
                "no such admin endpoint",
            )),
        }
    }
}

/// What a revoke-all did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokeAllCounts {
    /// Sessions ended.
    pub ended: usize,
    /// Refresh tokens queued for revocation (in [`Engine::background`]).
    pub queued: usize,
    /// Refresh tokens that cannot be revoked (no revocation endpoint known).
    pub not_sent: usize,
    /// Why not, if so.
    pub why_not: Option<&'static str>,
}

/// A fleet's check of the cookie key ring's first key in progress (see
/// [`Engine::fleet_ring_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingHead {
    /// Reading the fleet's list of first key ids.
    Read,
    /// Writing it with this configuration's key id added; the last id before it, if any.
    Claim(Option<String>),
}

/// The end of a chain of callouts the shell started by itself (no request waits for it).
fn background_done() -> Step {
    Step::Respond(Reply {
        status: 204,
        headers: Vec::new(),
        body: String::new(),
        kind: crate::reply::ReplyKind::Endpoint,
    })
}

/// A fleet-wide revoke-all in progress (carried by the operator's request between callouts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetRevokeAll {
    /// `key_change` when a new first key of the cookie key ring started it (`None`: the
    /// operator).
    trigger: Option<&'static str>,
    /// Refresh tokens of the sessions read so far.
    tokens: Vec<Secret>,
    /// Sessions ended so far (opened or not).
    ended: usize,
    /// Records that did not open: deleted, their grants not revoked.
    unopened: usize,
    /// `Some(next)` while the page just read is being deleted: where the next page starts
    /// (`Some(None)`: it was the last).
    deleting: Option<Option<String>>,
    /// The provider's discovery document was asked for (an Envoy just started has none yet).
    discovered: bool,
}

impl Engine<'_> {
    /// The operator's answer to a revoke-all.
    fn revoke_all_reply(&self, counts: &RevokeAllCounts) -> Reply {
        let mut body = json!({
            "sessions_ended": counts.ended,
            "revocations_queued": counts.queued,
            "revocations_not_sent": counts.not_sent,
            "concurrency": self.cfg.admin_revoke_concurrency,
        });
        if let (Some(why), Some(o)) = (counts.why_not, body.as_object_mut()) {
            o.insert("why_not_sent".into(), json!(why));
        }
        json_reply(202, body)
    }

    /// Why the provider cannot be asked to revoke (no endpoint known), if so.
    fn revocation_unavailable(&mut self) -> Option<&'static str> {
        match self.known_endpoints() {
            None => Some("provider metadata unavailable"),
            Some(ep) if ep.revocation.is_none() => Some("not supported"),
            Some(_) => None,
        }
    }

    /// A page of a fleet-wide revoke-all answered (`run.deleting` says which call it was):
    /// the sessions it read are ended and their records deleted, then the next page; at the end
    /// the refresh tokens are queued like the embedded store's, and the operator answered.
    pub(super) fn fleet_revoke_all(
        &mut self,
        mut run: FleetRevokeAll,
        result: &CallResult,
    ) -> Step {
        let Some(remote) = self.store.remote() else {
            return self.fleet_revoke_all_done(run, false);
        };
        if let Some(next) = run.deleting.take() {
            let deleted = matches!(result, CallResult::Response { status: 200, .. });
            return match (deleted, next) {
                (true, Some(after)) => Step::Call {
                    request: remote.next_revoke_page(&after),
                    then: Box::new(AfterCall::RevokeAll(Box::new(run))),
                },
                (ok, _) => self.fleet_revoke_all_done(run, !ok),
            };
        }
        let Ok(page) = remote.revoke_page(result) else {
            return self.fleet_revoke_all_done(run, true);
        };
        for s in &page.sessions {
            self.event(Event::SessionEnded {
                reason: EndReason::Admin,
                session: s.handle.clone(),
                sub: Some(s.sub.clone()),
            });
            if let Some(rt) = &s.refresh_token {
                run.tokens.push(rt.clone());
            }
        }
        run.ended += page.sessions.len() + page.unopened;
        run.unopened += page.unopened;
        match (page.delete, page.next) {
            (Some(request), next) => {
                run.deleting = Some(next);
                Step::Call {
                    request,
                    then: Box::new(AfterCall::RevokeAll(Box::new(run))),
                }
            }
            (None, _) => self.fleet_revoke_all_done(run, false),
        }
    }

    /// Fleet mode: the check of this configuration's cookie key ring against the fleet's list
    /// of first key ids (etcd key `ring_head`), which the shell starts at a configuration's
    /// first request on a worker and again every minute (a failed read is retried that way).
    /// A key id the fleet has not seen is added with a compare-and-swap; the one Envoy whose
    /// write wins, when the list was not empty and `cookie.revoke_on_key_change` is set, ends
    /// every session of the fleet and queues their grants, as the operator's revoke-all does.
    /// `None` for the embedded store (the shell checks shared data itself).
    pub fn fleet_ring_head(&mut self) -> Option<Step> {
        let r = self.store.remote()?;
        Some(Step::Call {
            request: r.read_ring_head(),
            then: Box::new(AfterCall::RingHead(RingHead::Read)),
        })
    }

    /// A step of [`Engine::fleet_ring_head`] answered.
    pub(super) fn ring_head_step(&mut self, stage: RingHead, result: &CallResult) -> Step {
        let cfg = self.cfg;
        let kid = cfg.cookie.keys.current_kid();
        let Some(r) = self.store.remote() else {
            return background_done();
        };
        match stage {
            RingHead::Read => {
                let Ok((mut list, rev)) = r.ring_head_of(result) else {
                    return background_done();
                };
                if list.iter().any(|k| k == kid) {
                    return background_done();
                }
                let previous = list.last().cloned();
                list.push(kid.to_string());
                Step::Call {
                    request: r.claim_ring_head(&list, rev),
                    then: Box::new(AfterCall::RingHead(RingHead::Claim(previous))),
                }
            }
            RingHead::Claim(previous) => {
                let won = matches!(r.claimed(result), Ok(true));
                let Some(previous) = previous.filter(|_| won) else {
                    return background_done();
                };
                if !cfg.cookie.revoke_on_key_change {
                    self.notes.push(format!(
                        "cookie key ring: first key `{previous}` -> `{kid}` in the fleet; sessions kept (cookie.revoke_on_key_change is off)"
                    ));
                    return background_done();
                }
                let request = r.start_revoke_all();
                self.notes.push(format!(
                    "cookie key ring: first key `{previous}` -> `{kid}` in the fleet: ending every session of the fleet (cookie.revoke_on_key_change)"
                ));
                Step::Call {
                    request,
                    then: Box::new(AfterCall::RevokeAll(Box::new(FleetRevokeAll {
                        trigger: Some("key_change"),
                        ..FleetRevokeAll::default()
                    }))),
                }
            }
        }
    }

    /// The end of a fleet-wide revoke-all (`failed`: etcd stopped answering part way).
    pub(super) fn fleet_revoke_all_done(&mut self, mut run: FleetRevokeAll, failed: bool) -> Step {
        if !run.discovered && !run.tokens.is_empty() && self.known_endpoints().is_none() {
            // No revocation endpoint known yet (a freshly started Envoy): read the discovery
            // document first, once.
            run.discovered = true;
            let mut held = Some((run, failed));
            let asked = self
                .endpoints(|| AfterDiscovery::RevokeAll(Box::new(held.take().unwrap_or_default())));
            match (asked, held) {
                (Err(step), None) if matches!(*step, Step::Call { .. }) => return *step,
                (_, Some((r, f))) => return self.fleet_revoke_all_done(r, f),
                (_, None) => return background_done(),
            }
        }
        let why_not = self.revocation_unavailable();
        let mut counts = RevokeAllCounts {
            ended: run.ended,
            queued: 0,
            not_sent: run.unopened,
            why_not,
        };
        if why_not.is_some() {
            counts.not_sent += run.tokens.len();
        } else {
            counts.queued = run.tokens.len();
            self.background
                .extend(run.tokens.into_iter().map(|t| (t, "refresh_token")));
        }
        self.event(Event::RevokeAll {
            trigger: run.trigger.unwrap_or("operator"),
            sessions: counts.ended,
            queued: counts.queued,
            not_sent: counts.not_sent,
            why_not,
        });
        if failed {
            return Step::Respond(error_reply(
                503,
                ErrorCode::StoreUnavailable,
                &format!(
                    "etcd stopped answering: {} sessions ended so far, {} refresh tokens queued for revocation; run it again",
                    counts.ended, counts.queued
                ),
            ));
        }
        Step::Respond(self.revoke_all_reply(&counts))
    }

    /// Ends every session of the embedded store and queues their refresh tokens for
    /// revocation at the provider in [`Engine::background`] (the shell sends them paced). The
    /// sessions end now: their cookies are refused from this run on. `trigger` (`operator`,
    /// `key_change`) goes into the audit line.
    pub fn revoke_all_sessions(&mut self, trigger: &'static str) -> RevokeAllCounts {
        let ended = self.store.delete_where(&|_: &Session| true);
        let mut not_sent = 0usize;
        // Checked once here (the shell builds each request when it sends it).
        let why_not = self.revocation_unavailable();
        let before = self.background.len();
        for s in &ended {
            self.event(Event::SessionEnded {
                reason: EndReason::Admin,
                session: s.handle.clone(),
                sub: Some(s.sub.clone()),
            });
            if let Some(rt) = &s.refresh_token {
                if why_not.is_some() {
                    not_sent += 1;
                } else {
                    self.background.push((rt.clone(), "refresh_token"));
                }
            }
        }
        let counts = RevokeAllCounts {
            ended: ended.len(),
            queued: self.background.len() - before,
            not_sent,
            why_not,
        };
        self.event(Event::RevokeAll {
            trigger,
            sessions: counts.ended,
            queued: counts.queued,
            not_sent,
            why_not,
        });
        counts
    }
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

/// Reclaims up to `batch` slots of dead sessions and expired logins of the embedded store from
/// slot `from` at `now` (the shell runs it on every worker's timer): the next slot, and an
/// audit event for every session that ended (idle or expired).
pub fn sweep<D: SharedData>(
    store: &mut SharedStore<D>,
    from: u32,
    batch: u32,
    now: u64,
) -> (u32, Vec<Event>) {
    let (next, reclaimed) = store.sweep(from, batch, now);
    let events = reclaimed
        .into_iter()
        .map(|s| Event::SessionEnded {
            reason: if now >= s.expires {
                EndReason::Expired
            } else {
                EndReason::Idle
            },
            session: s.handle,
            sub: Some(s.sub),
        })
        .collect();
    (next, events)
}
