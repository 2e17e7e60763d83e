//! The proxy-wasm shell: the only code that touches the host.
//!
//! It turns host callbacks into [`Request`]s and callout results, runs the core [`Engine`], and
//! applies the resulting [`Step`]. It reads the clock and draws randomness for the core, and
//! adapts shared data to the core's [`SharedData`] trait.
//!
//! Every host operation on a request goes through free functions on the *current effective
//! context*, so the same code serves a request from its own callbacks and from the root
//! context's callbacks (which wake requests waiting for another request's token renewal, and
//! deliver callout answers, by switching the effective context to them).
//!
//! **Callouts belong to the root context.** Envoy ties a callout to the context that made it
//! (and cancels it when that context ends), and the proxy-wasm SDK files its answer under the
//! context that was active at dispatch and drops it when that context is gone. So a request
//! never dispatches a callout itself: it queues it in [`Shared::outgoing`] and notifies its
//! worker's root context through a shared queue of its own (`on_queue_ready` runs on the same
//! worker at the next turn of its event loop); the root dispatches it, receives the answer, and
//! the engine applies it (stores a rotated refresh token, releases a refresh lock, writes the
//! fleet store, revokes at logout) whether or not the request is still there. Only the final
//! step (forward or reply) needs the request; for a request that has gone it is dropped. A
//! request's bookkeeping is cleaned in `on_done`; a callout's when its answer (or Envoy's
//! timeout) arrives, so nothing leaks when a client resets its stream.
//!
//! Only the `_bytes` header accessors are used on downstream input: the SDK's `String` variants
//! panic on non-UTF-8 header values, and nothing may panic on input.

use crate::audit::{decision_of, Decision, EndReason, Event};
use crate::config::Config;
use crate::fleet::FleetStore;
use crate::callout::{CallResult, Callout};
use crate::flow::{CookieEdit, Engine, Pending, Request, Step};
use crate::secret::Secret;
use crate::store::{Cas, SharedData, SharedStore, StoreError};
use crate::util::{IdHasher, Random};
use crate::verified::VerifiedCookies;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        let shared = Shared { root_id: context_id, ..Shared::default() };
        Box::new(Root { shared: Rc::new(shared), ticks: 0, sweep_at: 0, memory_kib: 0 })
    });
}}

/// How often the root context wakes waiting requests.
const TICK: Duration = Duration::from_millis(20);

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Secrets from the VM's environment (Envoy `vm_config.environment_variables`).
fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The host CSPRNG (WASI `random_get`, served by Envoy). If it fails there is no safe fallback:
/// abort, which traps the VM; FAIL_RELOAD replaces it and the request fails closed.
struct HostRandom;

impl Random for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            log(
                LogLevel::Critical,
                "host random source failed; aborting the VM",
            );
            std::process::abort();
        }
    }
}

/// Shared data through host calls.
struct HostData;

impl SharedData for HostData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Unavailable),
        }
    }
}

/// Maps keyed by the ids the host hands out (see [`IdHasher`]).
type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u32, BuildHasherDefault<IdHasher>>;

/// A callout a request asked for, waiting for the root context to dispatch it.
struct Outgoing {
    /// The request it is for (it may be gone by the time the answer arrives).
    ctx: u32,
    request: Callout,
    then: Pending,
}

/// Most queued callouts dispatched in one turn (the rest go at the next notification or tick).
const DISPATCH_BATCH: usize = 256;

/// State shared by the root context and every request context of one VM (one worker thread).
#[derive(Default)]
struct Shared {
    /// The root context's id: callouts are dispatched with it as the effective context.
    root_id: u32,
    /// This worker's shared queue: a request pushes a callout into `outgoing` and enqueues a
    /// notification here; the root drains both in `on_queue_ready`.
    queue: Cell<Option<u32>>,
    /// Callouts waiting for the root to dispatch them.
    outgoing: RefCell<VecDeque<Outgoing>>,
    /// Requests whose answer an allowed cross-origin page may read: context id -> origin.
    cors: RefCell<IdMap<String>>,
    config: RefCell<Option<Rc<Config>>>,
    /// Callouts in flight: token -> (request context id, continuation, start in ms).
    calls: RefCell<IdMap<(u32, Pending, u64)>>,
    /// Metric ids by name.
    metrics: RefCell<HashMap<String, u32>>,
    /// The id of `bffgate_requests_allowed` (counted on every fast-path request).
    allowed_metric: Cell<Option<u32>>,
    /// Requests waiting for another request's renewal: context id -> continuation.
    waiters: RefCell<IdMap<Pending>>,
    /// Requests whose body the engine asked for: context id -> continuation.
    body_waiters: RefCell<IdMap<Pending>>,
    /// Requests that are paused or answered locally: their body must not continue them.
    stopped: RefCell<IdSet>,
    /// Request contexts still alive.
    alive: RefCell<IdSet>,
    /// How many `authorization` and `cookie` headers each request arrived with (to edit them
    /// with the fewest host calls; they do not change while a request is paused).
    header_counts: RefCell<IdMap<(usize, usize)>>,
    /// Session cookie values this VM has verified (bound to the key ring that verified them).
    verified: VerifiedCookies,
}

impl Shared {
    fn metric(&self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metrics.borrow().get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.metrics.borrow_mut().insert(name.to_string(), id);
        Some(id)
    }
    fn count(&self, name: &str) {
        if let Some(id) = self.metric(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
    fn gauge(&self, name: &str, v: u64) {
        if let Some(id) = self.metric(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, v);
        }
    }
    fn histogram(&self, name: &str, v: u64) {
        if let Some(id) = self.metric(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, v);
        }
    }
    /// Counts the events of one engine run.
    fn account(&self, events: &[Event]) {
        for e in events {
            if let Some(m) = e.metric() {
                self.count(&m);
            }
            match e {
                Event::Denied { code: "csrf", .. } => self.count("bffgate_csrf_rejections"),
                Event::SessionEnded {
                    reason: EndReason::Evicted,
                    ..
                } => self.count("bffgate_store_evictions"),
                _ => {}
            }
        }
    }
    fn config(&self) -> Option<Rc<Config>> {
        self.config.borrow().clone()
    }
    fn set_stopped(&self, ctx: u32, stopped: bool) {
        if stopped {
            self.stopped.borrow_mut().insert(ctx);
        } else {
            self.stopped.borrow_mut().remove(&ctx);
        }
    }
}

fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one engine run produced besides its step.
struct Ran {
    step: Step,
    subject: Option<String>,
    cors: Option<String>,
}

/// Runs the engine with host clock, randomness and store; logs its audit lines and counts its
/// events.
fn run<F>(shared: &Shared, cfg: &Config, f: F) -> Ran
where
    F: FnOnce(&mut Engine<'_>) -> Step,
{
    let mut rng = HostRandom;
    let now = now_ms();
    let conflicts;
    let ran = match &cfg.etcd {
        None => {
            let mut store = SharedStore::new(HostData, cfg.store);
            let ran = run_on(shared, cfg, now / 1000, &mut rng, &mut store, f);
            conflicts = store.cas_conflicts.get();
            ran
        }
        Some(etcd) => {
            let mut store = FleetStore::new(
                HostData,
                cfg.store,
                etcd,
                now,
                HostRandom,
                crate::flow::lock_ttl(cfg),
                cfg.session.login_timeout_s,
            );
            let ran = run_on(shared, cfg, now / 1000, &mut rng, &mut store, f);
            conflicts = store.local.cas_conflicts.get();
            ran
        }
    };
    for _ in 0..conflicts.min(64) {
        shared.count("bffgate_store_cas_retries");
    }
    ran
}

fn run_on<F>(
    shared: &Shared,
    cfg: &Config,
    now: u64,
    rng: &mut HostRandom,
    store: &mut dyn crate::store::Store,
    f: F,
) -> Ran
where
    F: FnOnce(&mut Engine<'_>) -> Step,
{
    let mut engine = Engine::new(cfg, now, rng, store).with_verified(&shared.verified);
    let step = f(&mut engine);
    for n in &engine.notes {
        log(LogLevel::Info, n);
    }
    shared.account(&engine.events);
    let subject = engine.subject.take();
    let cors = engine.cors.take();
    Ran {
        step,
        subject,
        cors,
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Records the decision for the access log (filter state `wasm.bffgate_decision` and
/// `wasm.bffgate_subject`) and metrics, once the request's fate is known.
fn record_decision(shared: &Shared, cfg: &Config, step: &Step, subject: Option<&str>) {
    let d = decision_of(step, &cfg.auth_prefix);
    if d == Decision::Pending {
        return;
    }
    if d == Decision::Allowed {
        // The fast path's counter, without looking its name up.
        let id = match shared.allowed_metric.get() {
            Some(id) => Some(id),
            None => {
                let id = d
                    .metric()
                    .and_then(|m| shared.metric(MetricType::Counter, &m));
                shared.allowed_metric.set(id);
                id
            }
        };
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    } else if let Some(m) = d.metric() {
        shared.count(&m);
    }
    let _ = hostcalls::set_property(vec!["bffgate_decision"], Some(d.as_str().as_bytes()));
    if let Some(sub) = subject {
        let _ = hostcalls::set_property(vec!["bffgate_subject"], Some(sub.as_bytes()));
    }
}

fn respond(
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

fn fail_closed(shared: &Shared, ctx: u32, why: &str) -> Action {
    let r = crate::reply::error_reply(503, crate::reply::ErrorCode::IdpUnavailable, why);
    respond(shared, ctx, r.status, &r.headers, &r.body)
}

/// Applies a step to the request `ctx`, which must be the current effective context.
/// `resumed` is true when the request is paused (so forwarding must resume it).
fn apply(shared: &Shared, cfg: &Config, ctx: u32, step: Step, resumed: bool) -> Action {
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
            shared.body_waiters.borrow_mut().insert(ctx, *then);
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
fn dispatch_outgoing(shared: &Shared, cfg: &Config, as_root: bool) {
    for _ in 0..DISPATCH_BATCH {
        let Some(o) = shared.outgoing.borrow_mut().pop_front() else {
            return;
        };
        if as_root {
            let _ = hostcalls::set_effective_context(shared.root_id);
        }
        let request = &o.request;
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", request.method),
            (":path", request.path.as_str()),
            (
                ":authority",
                request
                    .authority
                    .as_deref()
                    .unwrap_or(cfg.provider.authority.as_str()),
            ),
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
            Ok(token) => {
                shared
                    .calls
                    .borrow_mut()
                    .insert(token, (o.ctx, o.then, now_ms()));
            }
            Err(_) => {
                log(
                    LogLevel::Warn,
                    &format!("callout to cluster `{cluster}` could not be dispatched"),
                );
                // Feed the engine a failed call so locks are released and state stays right.
                shared.count("bffgate_callouts_failed");
                let ran = run(shared, cfg, |e| e.on_callout(o.then, CallResult::Failed));
                deliver(shared, cfg, o.ctx, ran, true);
            }
        }
    }
}

/// Hands the engine's next step for request `ctx` (after a callout, a failed dispatch or a
/// wake) to the request: a further callout is queued whether or not the request is still
/// there (its work must finish); a forward or a reply needs the request, and is dropped if it
/// has gone. `failed_dispatch`: the step follows a callout that could not even be dispatched,
/// so a request still waiting is answered 503 rather than sent round again.
fn deliver(shared: &Shared, cfg: &Config, ctx: u32, ran: Ran, failed_dispatch: bool) {
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
fn on_call_done(shared: &Shared, token: u32, body_size: usize) {
    let Some((ctx, pending, started)) = shared.calls.borrow_mut().remove(&token) else {
        return;
    };
    let Some(cfg) = shared.config() else { return };
    shared.histogram(
        "bffgate_callout_duration_ms",
        now_ms().saturating_sub(started),
    );
    let status = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
        });
    let result = match status {
        Some(status) => {
            shared.count(if (200..300).contains(&status) {
                "bffgate_callouts_ok"
            } else {
                "bffgate_callouts_http_error"
            });
            CallResult::Response {
                status,
                body: hostcalls::get_buffer(
                    proxy_wasm::types::BufferType::HttpCallResponseBody,
                    0,
                    body_size.min(crate::oauth::MAX_BODY + 1),
                )
                .ok()
                .flatten()
                .unwrap_or_default(),
            }
        }
        None => {
            shared.count("bffgate_callouts_failed");
            CallResult::Failed
        }
    };
    // The engine records the result in the session whether or not the request is still there.
    let ran = run(shared, &cfg, |e| e.on_callout(pending, result));
    deliver(shared, &cfg, ctx, ran, false);
    // A next callout of the chain (or of another request) goes out from here, as the root.
    dispatch_outgoing(shared, &cfg, true);
}

struct Root {
    shared: Rc<Shared>,
    ticks: u64,
    sweep_at: u32,
    /// The VM's linear memory at the last look, KiB (it only grows).
    memory_kib: usize,
}

/// Sweep a batch every this many ticks (about once a second).
const SWEEP_EVERY: u64 = 50;
/// The occupancy counters are recounted with a full scan every this many sweeps (10 min).
const RECOUNT_EVERY: u64 = 600;
/// Slots looked at per sweep, per worker.
const SWEEP_BATCH: u32 = 64;

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
        on_call_done(&self.shared, token, body_size);
    }
}

/// Registers this worker's callout queue under a name no other worker uses (a queue name is
/// shared by every VM of the `vm_id`; the last to register a name would get all notifications).
fn register_queue() -> Option<u32> {
    let mut b = [0u8; 8];
    HostRandom.fill(&mut b);
    let name = format!("bffgate:callouts:{}", crate::util::hex(&b));
    match hostcalls::register_shared_queue(&name) {
        Ok(q) => Some(q),
        Err(_) => {
            log(
                LogLevel::Warn,
                "cannot register the callout queue; callouts are dispatched by the request (an answer may be lost if the client goes away first)",
            );
            None
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log(
                LogLevel::Critical,
                "configuration refused: field `.`: no plugin configuration (a StringValue holding JSON)",
            );
            return false;
        };
        match Config::from_json(&bytes, &env_secret) {
            Ok(c) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "configured: {} route policies, {} audiences, cookie key `{}`",
                        c.routes.len(),
                        c.audiences.len(),
                        c.cookie.keys.current_kid()
                    ),
                );
                // Create the slot table (only the slots not there yet: another VM of this Envoy
                // may have done it, and sessions in it must survive a VM reload).
                match &c.etcd {
                    None => SharedStore::new(HostData, c.store).init_slots(),
                    Some(etcd) => FleetStore::new(
                        HostData,
                        c.store,
                        etcd,
                        now_ms(),
                        HostRandom,
                        crate::flow::lock_ttl(&c),
                        c.session.login_timeout_s,
                    )
                    .init_slots(),
                }
                for name in crate::audit::all_counters() {
                    self.shared.metric(MetricType::Counter, &name);
                }
                self.shared
                    .metric(MetricType::Gauge, "bffgate_sessions_in_use");
                self.shared
                    .metric(MetricType::Gauge, "bffgate_pending_logins");
                self.shared
                    .metric(MetricType::Gauge, "bffgate_vm_memory_kib");
                self.shared
                    .metric(MetricType::Histogram, "bffgate_callout_duration_ms");
                if self.shared.queue.get().is_none() {
                    self.shared.queue.set(register_queue());
                }
                *self.shared.config.borrow_mut() = Some(Rc::new(c));
                // Workers sweep from different places.
                let mut b = [0u8; 4];
                HostRandom.fill(&mut b);
                self.sweep_at = u32::from_le_bytes(b);
                self.set_tick_period(TICK);
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("configuration refused: {e}"));
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // The notifications carry nothing: empty the host's queue, then dispatch what waits.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        if let Some(cfg) = self.shared.config() {
            dispatch_outgoing(&self.shared, &cfg, true);
        }
    }

    fn on_tick(&mut self) {
        let shared = &self.shared;
        let Some(cfg) = shared.config() else { return };
        self.ticks = self.ticks.wrapping_add(1);
        // A safety net: anything queued whose notification went missing.
        if !shared.outgoing.borrow().is_empty() {
            dispatch_outgoing(shared, &cfg, true);
        }
        // In fleet mode etcd's leases end sessions; the cache needs no sweep.
        if self.ticks % SWEEP_EVERY == 0 {
            // The VM's memory only grows; each growth is logged (and the gauge set), so a leak
            // shows as growth under a steady load.
            let kib = core::arch::wasm32::memory_size::<0>().saturating_mul(64);
            if kib > self.memory_kib {
                self.memory_kib = kib;
                log(LogLevel::Info, &format!("vm memory {kib} KiB"));
                shared.gauge("bffgate_vm_memory_kib", kib as u64);
            }
        }
        if self.ticks % SWEEP_EVERY == 0 && cfg.etcd.is_none() {
            // Reclaim dead sessions and expired logins a batch at a time.
            let mut store = SharedStore::new(HostData, cfg.store);
            let now = now_secs();
            let (next, reclaimed) = store.sweep(self.sweep_at, SWEEP_BATCH, now);
            self.sweep_at = next;
            let events: Vec<Event> = reclaimed
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
            for e in &events {
                log(LogLevel::Info, &format!("audit {}", e.to_json()));
            }
            shared.account(&events);
            let (sessions, pending) = if self.ticks % (SWEEP_EVERY * RECOUNT_EVERY) == 0 {
                store.recount()
            } else {
                store.occupancy()
            };
            shared.gauge("bffgate_sessions_in_use", sessions);
            shared.gauge("bffgate_pending_logins", pending);
        }
        if shared.waiters.borrow().is_empty() {
            return;
        }
        self.wake_waiters(&cfg);
        // Wakes that need a callout (a fleet re-read, a renewal) go out as the root.
        dispatch_outgoing(shared, &cfg, true);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always return a context (None makes the SDK panic); without a config it fails closed.
        self.shared.alive.borrow_mut().insert(context_id);
        Some(Box::new(Http {
            id: context_id,
            shared: self.shared.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    /// Polls the requests waiting for another request's renewal.
    fn wake_waiters(&self, cfg: &Config) {
        let shared = &self.shared;
        let ids: Vec<u32> = shared.waiters.borrow().keys().copied().collect();
        for ctx in ids {
            let Some(pending) = shared.waiters.borrow_mut().remove(&ctx) else {
                continue;
            };
            if !shared.alive.borrow().contains(&ctx) {
                continue;
            }
            let mut woke = false;
            let ran = run(shared, cfg, |e| match e.on_wake(&pending) {
                Some(s) => {
                    woke = true;
                    s
                }
                None => Step::Wait {
                    then: Box::new(pending.clone()),
                },
            });
            if !woke {
                shared.waiters.borrow_mut().insert(ctx, pending);
                continue;
            }
            deliver(shared, cfg, ctx, ran, false);
        }
    }
}

struct Http {
    id: u32,
    shared: Rc<Shared>,
}

/// Feeds a requested body (or `None` if too large) to the engine.
fn body_done(shared: &Shared, ctx: u32, body: Option<&[u8]>) -> Action {
    let Some(pending) = shared.body_waiters.borrow_mut().remove(&ctx) else {
        return Action::Pause;
    };
    let Some(cfg) = shared.config() else {
        return fail_closed(shared, ctx, "bffgate is not configured");
    };
    let ran = run(shared, &cfg, |e| e.on_body(pending, body));
    record_decision(shared, &cfg, &ran.step, ran.subject.as_deref());
    apply(shared, &cfg, ctx, ran.step, false)
}

/// A header value as text: moved, not copied, when it is UTF-8 (nearly always).
fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Http {
    fn request(&self, cfg: &Config) -> Request {
        let mut req = Request::default();
        let mut cookie: Option<String> = None;
        let (mut auths, mut cookies) = (0, 0);
        for (name, value) in self.get_http_request_headers_bytes() {
            match name.as_str() {
                "authorization" => {
                    auths += 1;
                    // Only the operator API reads it (its credential); never kept otherwise.
                    if cfg.admin && req.authorization.is_none() {
                        req.authorization = Some(Secret::new(text(value)));
                    }
                }
                ":authority" if cfg.admin => req.authority = Some(text(value)),
                ":method" => req.method = text(value),
                ":path" => req.path = text(value),
                "cookie" => {
                    // Every `cookie` header, joined with `; ` (HTTP/2 sends one per cookie).
                    cookies += 1;
                    let v = text(value);
                    cookie = Some(match cookie {
                        None => v,
                        Some(mut all) => {
                            all.push_str("; ");
                            all.push_str(&v);
                            all
                        }
                    });
                }
                "origin" => req.origin = Some(text(value)),
                "sec-fetch-site" => req.sec_fetch_site = Some(text(value)),
                "sec-fetch-mode" => req.sec_fetch_mode = Some(text(value)),
                "sec-fetch-dest" => req.sec_fetch_dest = Some(text(value)),
                "accept" => req.accept = Some(text(value)),
                "access-control-request-method" => req.cors_method = Some(text(value)),
                "access-control-request-headers" => req.cors_headers = Some(text(value)),
                n if n == cfg.csrf_header => req.csrf = Some(text(value)),
                _ => {}
            }
        }
        self.shared
            .header_counts
            .borrow_mut()
            .insert(self.id, (auths, cookies));
        req.cookie = cookie;
        req.route = self
            .get_property(vec!["xds", "route_name"])
            .map(text)
            .filter(|s| !s.is_empty());
        req
    }

    fn paused(&self) -> bool {
        self.shared.stopped.borrow().contains(&self.id)
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
        on_call_done(&self.shared, token, body_size);
    }

    fn on_done(&mut self) -> bool {
        // Everything kept for this request. Its callouts (queued or in flight) stay: their
        // answers still update the session; their entries go when the answers arrive.
        let s = &self.shared;
        s.alive.borrow_mut().remove(&self.id);
        s.waiters.borrow_mut().remove(&self.id);
        s.body_waiters.borrow_mut().remove(&self.id);
        s.stopped.borrow_mut().remove(&self.id);
        s.header_counts.borrow_mut().remove(&self.id);
        s.cors.borrow_mut().remove(&self.id);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(cfg) = self.shared.config() else {
            return fail_closed(&self.shared, self.id, "bffgate is not configured");
        };
        let req = self.request(&cfg);
        let mut ran = run(&self.shared, &cfg, |e| e.on_request(&req));
        if let Some(origin) = ran.cors.take() {
            self.shared.cors.borrow_mut().insert(self.id, origin);
        }
        record_decision(&self.shared, &cfg, &ran.step, ran.subject.as_deref());
        let action = apply(&self.shared, &cfg, self.id, ran.step, false);
        if end_of_stream && self.shared.body_waiters.borrow().contains_key(&self.id) {
            return body_done(&self.shared, self.id, Some(b""));
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.shared.body_waiters.borrow().contains_key(&self.id) {
            if body_size > crate::flow::MAX_REQUEST_BODY {
                return body_done(&self.shared, self.id, None);
            }
            if !end_of_stream {
                return Action::Pause;
            }
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            return body_done(&self.shared, self.id, Some(&body));
        }
        // While a callout or a wait is in progress (or after a local reply), the body must not
        // continue the request: Continue here would forward the headers without our decision.
        if self.paused() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.paused() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A reply of our own (it carries our own `set-cookie` and CORS headers already).
        if self.paused() {
            return Action::Continue;
        }
        const H: MapType = MapType::HttpResponseHeaders;
        if let Some(origin) = self.shared.cors.borrow_mut().remove(&self.id) {
            for (k, v) in crate::reply::cors_headers(origin) {
                let _ = hostcalls::set_map_value(H, &k, Some(&v));
            }
        }
        // An upstream must not set bffgate's cookies (it would swap the browser into another
        // session, or plant a flow cookie): one host call when it sets no cookie at all.
        if !matches!(hostcalls::get_map_value_bytes(H, "set-cookie"), Ok(Some(_))) {
            return Action::Continue;
        }
        let Some(cfg) = self.shared.config() else {
            return Action::Continue;
        };
        let all: Vec<Vec<u8>> = hostcalls::get_map_bytes(H)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v)
            .collect();
        let ours = |v: &[u8]| {
            let name = v.split(|b| *b == b'=').next().unwrap_or(v);
            std::str::from_utf8(name).is_ok_and(|n| crate::flow::is_bff_cookie(&cfg, n.trim()))
        };
        if all.iter().any(|v| ours(v)) {
            let _ = hostcalls::set_map_value(H, "set-cookie", None);
            for v in all.iter().filter(|v| !ours(v)) {
                let _ = hostcalls::add_map_value_bytes(H, "set-cookie", v);
            }
            log(
                LogLevel::Warn,
                "an upstream tried to set a bffgate cookie; removed",
            );
            self.shared.count("bffgate_upstream_cookies_removed");
        }
        Action::Continue
    }
}
