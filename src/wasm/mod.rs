//! The proxy-wasm shell: the only code that touches the host.
//!
//! - this file: the VM's entry, the state shared by its contexts ([`Shared`]), host clock,
//!   randomness and shared data for the core, and [`run`], which runs the engine once;
//! - `root`: the root context (configuration, the timer, the callout queue);
//! - `http`: the request context (a [`Request`] from the headers, the body, the response);
//! - `apply`: a [`Step`] applied to a request, callouts dispatched and their answers delivered.
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

use crate::audit::{EndReason, Event};
use crate::callout::Callout;
use crate::config::Config;
use crate::engine::{AfterBody, AfterCall, AwaitToken, Engine, Step};
use crate::store::{Cas, SharedData, StoreError};
use crate::util::{IdHasher, Random};
use crate::verified::VerifiedCookies;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{LogLevel, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod apply;
mod http;
mod root;

use root::Root;

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
    fn epoch(&self, shard: u32) -> Option<u64> {
        EPOCHS.with(|e| e.borrow_mut().read(shard))
    }
    fn bump(&mut self, shard: u32) {
        // Every VM bumps (the count is the process's), whether or not it caches.
        if let Some(id) = EPOCHS.with(|e| e.borrow_mut().writable(shard)) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
    fn records(&self) -> Option<&crate::store::RecordCache> {
        Some(RECORDS.with(|r| *r))
    }
}

/// The write counts of the session table's shards: Envoy counters `bffgate_store_writes_<nn>`,
/// one per shard, shared by name by every VM of the process (stats belong to the process, like
/// shared data). Counters, not gauges: a counter only grows (a hot restart adds the old
/// process's counts to the new one's and never takes them back, where it would take back a
/// gauge's), so a count seen once is never seen again for another state of the shard. The one
/// exception is an operator's `POST /reset_counters`, which sets every count to 0: a count lower
/// than one this VM saw before empties the cache, on any read and on every fifth tick of the root
/// (100 ms), which reads every shard's count (a reset would have to be followed, within 100 ms,
/// by as many writes as every shard had seen before it to go unnoticed).
///
/// Defined at the first use on a VM and checked then: a counter that does not move when added to
/// (a stats configuration that rejects the name gives a null counter) or a failed definition
/// turns the record cache off on this VM (a warning says so); writes still bump what exists.
#[derive(Default)]
struct Epochs {
    ids: Vec<Option<u32>>,
    /// The last count read per shard.
    seen: Vec<u64>,
    checked: bool,
    usable: bool,
}

impl Epochs {
    fn define(&mut self) {
        if self.checked {
            return;
        }
        self.checked = true;
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        self.ids = (0..crate::store::EPOCH_SHARDS)
            .map(|i| counter(&format!("bffgate_store_writes_{i:02}")))
            .collect();
        self.seen = vec![0; self.ids.len()];
        let moves = |id: Option<u32>| {
            id.is_some_and(|id| {
                let before = hostcalls::get_metric(id).unwrap_or(0);
                let _ = hostcalls::increment_metric(id, 1);
                hostcalls::get_metric(id).unwrap_or(0) > before
            })
        };
        self.usable = self.ids.iter().all(|id| moves(*id));
        if !self.usable {
            log(
                LogLevel::Warn,
                "the session record cache is off on this worker: the counters bffgate_store_writes_* are not usable (a stats configuration rejecting them?); every request reads its session from shared data",
            );
        }
    }
    /// The count of `shard` if the cache may use it; a count lower than one seen before (the
    /// counters were reset) empties the cache first.
    fn read(&mut self, shard: u32) -> Option<u64> {
        self.define();
        if !self.usable {
            return None;
        }
        let id = self.ids.get(shard as usize).copied().flatten()?;
        let v = hostcalls::get_metric(id).ok()?;
        let seen = self.seen.get_mut(shard as usize)?;
        let back = v < *seen;
        *seen = v;
        if back {
            self.reset("the counters were reset");
        }
        Some(v)
    }
    /// The counter of `shard` to bump (even when this VM does not cache).
    fn writable(&mut self, shard: u32) -> Option<u32> {
        self.define();
        self.ids.get(shard as usize).copied().flatten()
    }
    /// The root's tick: every shard's count, against the last one read (a reset shows as a
    /// count lower than that).
    fn check_reset(&mut self) {
        if !self.checked || !self.usable {
            return;
        }
        let mut back = false;
        for (id, seen) in self.ids.iter().zip(self.seen.iter_mut()) {
            if let Some(v) = id.and_then(|id| hostcalls::get_metric(id).ok()) {
                back |= v < *seen;
                *seen = v;
            }
        }
        if back {
            self.reset("the counters were reset");
        }
    }
    fn reset(&mut self, why: &str) {
        RECORDS.with(|r| r.clear());
        log(
            LogLevel::Info,
            &format!("session record cache emptied on this worker: {why}"),
        );
    }
}

/// The root's tick: empties the record cache if the write counts were reset.
fn check_epoch_reset() {
    EPOCHS.with(|e| e.borrow_mut().check_reset());
}

thread_local! {
    static EPOCHS: RefCell<Epochs> = RefCell::new(Epochs::default());
    /// This VM's session record cache (see [`crate::store::RecordCache`]); one per VM, for as long
    /// as the VM lives (every configuration of the VM reads the same shared data).
    static RECORDS: &'static crate::store::RecordCache = Box::leak(Box::default());
}

/// Maps keyed by the ids the host hands out (see [`IdHasher`]).
type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u32, BuildHasherDefault<IdHasher>>;

/// A callout a request asked for, waiting for the root context to dispatch it.
struct Outgoing {
    /// The request it is for (it may be gone by the time the answer arrives).
    ctx: u32,
    request: Callout,
    then: AfterCall,
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
    calls: RefCell<IdMap<(u32, AfterCall, u64)>>,
    /// Metric ids by name.
    metrics: RefCell<HashMap<String, u32>>,
    /// The id of `bffgate_requests_allowed` (counted on every fast-path request).
    allowed_metric: Cell<Option<u32>>,
    /// Requests forwarded to a session route (`bffgate_requests_allowed`) and fast-path
    /// decisions (`bffgate_fast_path_taken`) not yet added to their counters: the hottest two
    /// counters are added up here and handed to Envoy by the root's tick (every [`TICK`]), so
    /// the fast path makes no metric host call.
    allowed_pending: Cell<u64>,
    fast_path_taken: Cell<u64>,
    /// The id of `bffgate_fast_path_taken` (likewise).
    fast_path_metric: Cell<Option<u32>>,
    /// Requests waiting for another request's renewal: context id -> continuation.
    waiters: RefCell<IdMap<AwaitToken>>,
    /// Requests whose body the engine asked for: context id -> continuation.
    body_waiters: RefCell<IdMap<AfterBody>>,
    /// Requests that are paused or answered locally: their body must not continue them.
    stopped: RefCell<IdSet>,
    /// Request contexts still alive.
    alive: RefCell<IdSet>,
    /// How many `authorization` and `cookie` headers each request arrived with (to edit them
    /// with the fewest host calls; they do not change while a request is paused).
    header_counts: RefCell<IdMap<(usize, usize)>>,
    /// Requests forwarded (or that may be, after a callout) with a bearer token, and their
    /// path: the upstream's answer is read for a step-up challenge (RFC 9470), whose login URL
    /// comes back to that path (the request's headers cannot be read in the response phase).
    bearer: RefCell<IdMap<String>>,
    /// Session cookie values this VM has verified (bound to the key ring that verified them).
    verified: VerifiedCookies,
    /// Session anomaly counters of this VM (rate and refusals per session, binding hashes).
    anomalies: crate::anomaly::Tracker,
    /// Refresh tokens a revoke-all ended, to revoke at the provider (paced by the root).
    background: RefCell<VecDeque<(crate::secret::Secret, &'static str)>>,
    /// Background revocations in flight: token -> start in ms.
    bg_calls: RefCell<IdMap<u64>>,
    /// Background revocations finished on this worker since the queue was last empty:
    /// (revoked, not revoked).
    bg_counts: Cell<(u64, u64)>,
    /// Whether a request of this root context's configuration checked the cookie key ring's
    /// first key against the one the sessions were made under (`root::ring_head`): only VMs
    /// that serve requests do (never the main thread's, which only validates configurations).
    ring_checked: Cell<bool>,
    /// Fleet mode: when the root's tick checks the fleet's key ring list again (ms).
    ring_next_ms: Cell<u64>,
    /// Envoy is shutting this VM down and it revokes what it held (`store.revoke_on_shutdown`):
    /// since when (ms), and how many it queued.
    shutdown: Cell<Option<(u64, usize)>>,
}

impl Shared {
    /// Hands the hot counters added up since the last call to Envoy (the root's tick).
    fn flush_hot_counters(&self) {
        for (pending, cache, name) in [
            (
                &self.allowed_pending,
                &self.allowed_metric,
                "bffgate_requests_allowed",
            ),
            (
                &self.fast_path_taken,
                &self.fast_path_metric,
                "bffgate_fast_path_taken",
            ),
        ] {
            let n = pending.replace(0);
            if n == 0 {
                continue;
            }
            let id = cache.get().or_else(|| {
                let id = self.metric(MetricType::Counter, name);
                cache.set(id);
                id
            });
            if let Some(id) = id {
                let _ = hostcalls::increment_metric(id, n as i64);
            }
        }
    }

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
    /// One background revocation finished (`ok`: the provider answered 2xx); progress in the
    /// log every 100, and when this worker's queue is done.
    fn bg_progress(&self, ok: bool) {
        let (mut revoked, mut not) = self.bg_counts.get();
        if ok {
            revoked += 1;
        } else {
            not += 1;
        }
        let done = self.background.borrow().is_empty() && self.bg_calls.borrow().is_empty();
        if done || (revoked + not) % 100 == 0 {
            let left = self.background.borrow().len() + self.bg_calls.borrow().len();
            log(
                LogLevel::Info,
                &format!(
                    "revoke-all: {} on this worker: {revoked} revoked, {not} not revoked, {left} left",
                    if done { "done" } else { "progress" }
                ),
            );
        }
        self.bg_counts
            .set(if done { (0, 0) } else { (revoked, not) });
        if done {
            self.finish_shutdown(revoked, false);
        }
    }

    /// Tells the host a shutdown revocation is over (all answered, or `timed_out`).
    fn finish_shutdown(&self, revoked: u64, timed_out: bool) {
        let Some((since, queued)) = self.shutdown.take() else {
            return;
        };
        log(
            LogLevel::Info,
            &format!(
                "shutdown: revoked {revoked} of {queued} refresh tokens in {} ms{}",
                now_ms().saturating_sub(since),
                if timed_out {
                    " (time bound reached)"
                } else {
                    ""
                }
            ),
        );
        let _ = hostcalls::done();
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

/// Runs the engine once with host clock, randomness and the store the configuration asks for;
/// logs its audit lines and counts its events.
fn run<F>(shared: &Shared, cfg: &Config, f: F) -> Ran
where
    F: FnOnce(&mut Engine<'_>) -> Step,
{
    let mut rng = HostRandom;
    let now = now_ms();
    let mut store = crate::store::open(cfg, HostData, now, HostRandom);
    let (step, subject, cors, notes, events, fast_path) = {
        let mut engine = Engine::new(cfg, now / 1000, &mut rng, &mut store)
            .with_verified(&shared.verified)
            .with_anomalies(&shared.anomalies);
        let step = f(&mut engine);
        let Engine {
            subject,
            cors,
            notes,
            events,
            fast_path,
            background,
            ..
        } = engine;
        if !background.is_empty() {
            shared.background.borrow_mut().extend(background);
        }
        (step, subject, cors, notes, events, fast_path)
    };
    // Which path a request to a session route took, and why it left the fast path.
    match fast_path {
        Some(Ok(())) => shared.fast_path_taken.set(shared.fast_path_taken.get() + 1),
        Some(Err(why)) => shared.count(why.metric()),
        None => {}
    }
    for n in &notes {
        log(LogLevel::Info, n);
    }
    shared.account(&events);
    for _ in 0..store.cas_conflicts().min(64) {
        shared.count("bffgate_store_cas_retries");
    }
    if store.cache_misses() > 0 {
        shared.count("bffgate_store_record_cache_misses");
    }
    Ran {
        step,
        subject,
        cors,
    }
}

/// Runs `f` on an engine with host clock, randomness and store, outside any request (its
/// audit lines are logged, its events counted, its background revocations queued).
fn with_engine<T>(shared: &Shared, cfg: &Config, f: impl FnOnce(&mut Engine<'_>) -> T) -> T {
    let mut rng = HostRandom;
    let now = now_ms();
    let mut store = crate::store::open(cfg, HostData, now, HostRandom);
    let mut engine = Engine::new(cfg, now / 1000, &mut rng, &mut store);
    let out = f(&mut engine);
    for n in &engine.notes {
        log(LogLevel::Info, n);
    }
    shared.account(&engine.events);
    if !engine.background.is_empty() {
        shared
            .background
            .borrow_mut()
            .extend(std::mem::take(&mut engine.background));
    }
    out
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
