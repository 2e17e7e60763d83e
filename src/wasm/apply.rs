//! A [`Step`] applied to a request; callouts dispatched by the root context and their answers
//! delivered back to the engine, and to the request if it is still there.

use super::{log, now_ms, run, with_engine, Outgoing, Ran, Shared, DISPATCH_BATCH};
use crate::audit::Decision;
use crate::callout::CallResult;
use crate::callout::Callout;
use crate::config::Config;
use crate::engine::{CookieEdit, Step};
use crate::reply::{error_reply, ErrorCode};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, LogLevel, MapType};
use std::time::Duration;

/// Records the decision in the metrics and, with `access_log_state`, for the access log (filter
/// state `wasm.bffgate_decision` and `wasm.bffgate_subject`), once the request's fate is known.
pub(super) fn record_decision(shared: &Shared, cfg: &Config, step: &Step, subject: Option<&str>) {
    let d = step.decision();
    if d == Decision::Pending {
        return;
    }
    if d == Decision::Allowed {
        // The hottest counter: added up here, handed to Envoy by the root's tick.
        shared.allowed_pending.set(shared.allowed_pending.get() + 1);
    } else if let Some(m) = d.metric() {
        shared.count(&m);
    }
    if !cfg.access_log_state {
        return;
    }
    let _ = hostcalls::set_property(vec!["bffgate_decision"], Some(d.as_str().as_bytes()));
    if let Some(sub) = subject {
        let _ = hostcalls::set_property(vec!["bffgate_subject"], Some(sub.as_bytes()));
    }
}

pub(super) fn respond(
    shared: &Shared,
    ctx: u32,
    status: u16,
    headers: &[(String, String)],
    body: &str,
) -> Action {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = if body.is_empty() {
        None
    } else {
        Some(body.as_bytes())
    };
    shared.set_stopped(ctx, true);
    // An allowed cross-origin caller may read the refusal too.
    let cors = shared
        .cors
        .borrow_mut()
        .remove(&ctx)
        .map(crate::reply::cors_headers);
    let mut h = h;
    if let Some(cors) = &cors {
        h.extend(cors.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    let _ = hostcalls::send_http_response(u32::from(status), h, body);
    Action::Pause
}

pub(super) fn fail_closed(shared: &Shared, ctx: u32, why: &str) -> Action {
    let r = error_reply(503, ErrorCode::IdpUnavailable, why);
    respond(shared, ctx, r.status, &r.headers, &r.body)
}

/// Applies a step to the request `ctx`, which must be the current effective context.
/// `resumed` is true when the request is paused (so forwarding must resume it).
pub(super) fn apply(shared: &Shared, cfg: &Config, ctx: u32, step: Step, resumed: bool) -> Action {
    match step {
        Step::Forward {
            authorization,
            cookie,
        } => {
            const H: MapType = MapType::HttpRequestHeaders;
            // Unknown counts (should not happen) take the always-correct remove-then-add.
            let (auths, cookies) = shared
                .header_counts
                .borrow()
                .get(&ctx)
                .copied()
                .unwrap_or((2, 2));
            // Never forward an Authorization header the client sent. With at most one header
            // present, a replace (or an add) is one host call and leaves exactly ours.
            match (authorization, auths) {
                (Some(t), n) => {
                    let v = t.prefixed("Bearer ");
                    let v = v.expose();
                    if n <= 1 {
                        let _ = hostcalls::set_map_value(H, "authorization", Some(v));
                    } else {
                        let _ = hostcalls::set_map_value(H, "authorization", None);
                        let _ = hostcalls::add_map_value(H, "authorization", v);
                    }
                }
                (None, 0) => {}
                (None, _) => {
                    let _ = hostcalls::set_map_value(H, "authorization", None);
                }
            }
            match cookie {
                CookieEdit::Keep => {}
                CookieEdit::Remove => {
                    let _ = hostcalls::set_map_value(H, "cookie", None);
                }
                CookieEdit::Set(v) if cookies <= 1 => {
                    let _ = hostcalls::set_map_value(H, "cookie", Some(&v));
                }
                CookieEdit::Set(v) => {
                    let _ = hostcalls::set_map_value(H, "cookie", None);
                    let _ = hostcalls::add_map_value(H, "cookie", &v);
                }
            }
            shared.set_stopped(ctx, false);
            if resumed {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Step::Respond(r) => respond(shared, ctx, r.status, &r.headers, &r.body),
        Step::Wait { then } => {
            shared.set_stopped(ctx, true);
            shared.waiters.borrow_mut().insert(ctx, *then);
            Action::Pause
        }
        Step::ReadBody { then } => {
            // Pausing the headers would stop the body too (proxy-wasm turns a header pause
            // into StopAllIteration), so the headers continue -- into the buffer filter that
            // the shipped config enables on the `/auth/` route, which holds them -- and the
            // body callbacks buffer it here until the end of the stream.
            shared.body_waiters.borrow_mut().insert(ctx, then);
            Action::Continue
        }
        Step::Call { request, then } => {
            shared.set_stopped(ctx, true);
            let was_empty = shared.outgoing.borrow().is_empty();
            shared.outgoing.borrow_mut().push_back(Outgoing {
                ctx,
                request,
                then: *then,
            });
            match shared.queue.get() {
                // The root dispatches it at the next turn of this worker's event loop.
                Some(q) if was_empty => {
                    if hostcalls::enqueue_shared_queue(q, Some(b"")).is_err() {
                        // The tick (every 20 ms) dispatches what is queued.
                        log(LogLevel::Warn, "callout queue notification failed");
                    }
                }
                Some(_) => {}
                // No queue (registration failed at start): dispatch from here, as the only way
                // left; an answer may then be lost if the request ends first.
                None => dispatch_outgoing(shared, cfg, false),
            }
            Action::Pause
        }
    }
}

/// Dispatches queued callouts. From a root callback (`as_root`), with the root as the effective
/// context, so that the host and the SDK both file each callout, and its answer, under the root.
pub(super) fn dispatch_outgoing(shared: &Shared, cfg: &Config, as_root: bool) {
    for _ in 0..DISPATCH_BATCH {
        let Some(o) = shared.outgoing.borrow_mut().pop_front() else {
            return;
        };
        if as_root {
            let _ = hostcalls::set_effective_context(shared.root_id);
        }
        match send(shared, cfg, &o.request) {
            Some(token) => {
                shared
                    .calls
                    .borrow_mut()
                    .insert(token, (o.ctx, o.then, now_ms()));
            }
            None => {
                // Feed the engine a failed call so locks are released and state stays right.
                let ran = run(shared, cfg, |e| e.on_callout(o.then, CallResult::Failed));
                deliver(shared, cfg, o.ctx, ran, true);
            }
        }
    }
}

/// Dispatches one callout under the current effective context: its token, or `None` if the
/// host refused it (logged and counted as failed).
pub(super) fn send(shared: &Shared, cfg: &Config, request: &Callout) -> Option<u32> {
    let mut headers: Vec<(&str, &str)> = vec![
        (":method", request.method),
        (":path", request.path.as_str()),
        (":authority", request.authority.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "application/json"),
    ];
    for (k, v) in &request.headers {
        headers.push((k.as_str(), v.expose()));
    }
    let body = request.body.expose().as_bytes();
    let cluster = request
        .cluster
        .as_deref()
        .unwrap_or(cfg.provider.cluster.as_str());
    // Every attempt: once the answers are in, dispatched = ok + http_error + failed.
    shared.count("bffgate_callouts_dispatched");
    match hostcalls::dispatch_http_call(
        cluster,
        headers,
        if body.is_empty() { None } else { Some(body) },
        vec![],
        Duration::from_millis(request.timeout_ms),
    ) {
        Ok(token) => Some(token),
        Err(_) => {
            log(
                LogLevel::Warn,
                &format!("callout to cluster `{cluster}` could not be dispatched"),
            );
            shared.count("bffgate_callouts_failed");
            None
        }
    }
}

/// Sends queued background revocations (a revoke-all's refresh tokens) while fewer than
/// `admin_revoke_concurrency` are in flight on this worker. Each request is built when it is
/// sent (a `private_key_jwt` assertion is short-lived). From a root callback.
pub(super) fn pump_background(shared: &Shared, cfg: &Config) {
    pump_background_up_to(shared, cfg, cfg.admin_revoke_concurrency as usize);
}

/// [`pump_background`] with another bound (a shutdown sends everything at once: Envoy's event
/// loop has stopped, so nothing would be sent later).
pub(super) fn pump_background_up_to(shared: &Shared, cfg: &Config, limit: usize) {
    while shared.bg_calls.borrow().len() < limit {
        let Some((token, hint)) = shared.background.borrow_mut().pop_front() else {
            break;
        };
        let built = with_engine(shared, cfg, |e| e.revocation_callout(token.expose(), hint));
        let sent = match built {
            Ok(request) => send(shared, cfg, &request),
            Err(why) => {
                log(
                    LogLevel::Warn,
                    &format!("revoke-all: a refresh token cannot be revoked: {why}"),
                );
                shared.count("bffgate_revoke_all_not_sent");
                shared.bg_progress(false);
                continue;
            }
        };
        match sent {
            Some(t) => {
                shared.bg_calls.borrow_mut().insert(t, now_ms());
            }
            None => {
                shared.count("bffgate_revoke_all_failed");
                shared.bg_progress(false);
            }
        }
    }
}

/// A background revocation answered (or timed out).
pub(super) fn background_done(shared: &Shared, cfg: &Config, token: u32) {
    if shared.bg_calls.borrow_mut().remove(&token).is_none() {
        return;
    }
    let ok = call_status(shared).is_some_and(|s| (200..300).contains(&s));
    shared.count(if ok {
        "bffgate_revoke_all_revoked"
    } else {
        "bffgate_revoke_all_failed"
    });
    shared.bg_progress(ok);
    pump_background(shared, cfg);
}

/// The `:status` of the callout answer being delivered (counted as ok / http_error / failed).
fn call_status(shared: &Shared) -> Option<u16> {
    let status = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
        });
    shared.count(match status {
        Some(s) if (200..300).contains(&s) => "bffgate_callouts_ok",
        Some(_) => "bffgate_callouts_http_error",
        None => "bffgate_callouts_failed",
    });
    status
}

/// Hands the engine's next step for request `ctx` (after a callout, a failed dispatch or a
/// wake) to the request: a further callout is queued whether or not the request is still
/// there (its work must finish); a forward or a reply needs the request, and is dropped if it
/// has gone. `failed_dispatch`: the step follows a callout that could not even be dispatched,
/// so a request still waiting is answered 503 rather than sent round again.
pub(super) fn deliver(shared: &Shared, cfg: &Config, ctx: u32, ran: Ran, failed_dispatch: bool) {
    let alive = shared.alive.borrow().contains(&ctx);
    match ran.step {
        Step::Call { request, then } => {
            shared.outgoing.borrow_mut().push_back(Outgoing {
                ctx,
                request,
                then: *then,
            });
        }
        _ if !alive => {}
        step => {
            if hostcalls::set_effective_context(ctx).is_err() {
                return;
            }
            record_decision(shared, cfg, &step, ran.subject.as_deref());
            match step {
                Step::Wait { .. } | Step::ReadBody { .. } if failed_dispatch => {
                    fail_closed(shared, ctx, "the identity provider is unreachable");
                }
                step => {
                    apply(shared, cfg, ctx, step, true);
                }
            }
        }
    }
}

/// A callout finished (or failed): route it to its request.
pub(super) fn on_call_done(shared: &Shared, token: u32, body_size: usize) {
    let Some((ctx, pending, started)) = shared.calls.borrow_mut().remove(&token) else {
        if let Some(cfg) = shared.config() {
            background_done(shared, &cfg, token);
        }
        return;
    };
    let Some(cfg) = shared.config() else { return };
    shared.histogram(
        "bffgate_callout_duration_ms",
        now_ms().saturating_sub(started),
    );
    let result = match call_status(shared) {
        Some(status) => CallResult::Response {
            status,
            body: hostcalls::get_buffer(
                proxy_wasm::types::BufferType::HttpCallResponseBody,
                0,
                body_size.min(crate::oauth::MAX_BODY + 1),
            )
            .ok()
            .flatten()
            .unwrap_or_default(),
        },
        None => CallResult::Failed,
    };
    // The engine records the result in the session whether or not the request is still there.
    let ran = run(shared, &cfg, |e| e.on_callout(pending, result));
    deliver(shared, &cfg, ctx, ran, false);
    // A next callout of the chain (or of another request) goes out from here, as the root.
    dispatch_outgoing(shared, &cfg, true);
}
