//! The root context: the configuration (refused at load with a line naming the field), the
//! timer (sweeps, gauges, waiting requests, the VM's memory), and this worker's callout queue.

use super::apply::{
    deliver, dispatch_outgoing, on_call_done, pump_background, pump_background_up_to,
};
use super::http::Http;
use super::{env_secret, log, now_ms, now_secs, run, HostData, HostRandom, Shared, TICK};
use crate::config::Config;
use crate::engine::Step;
use crate::store::SharedData;
use crate::util::Random;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use std::cell::Cell;
use std::rc::Rc;

pub(super) struct Root {
    pub(super) shared: Rc<Shared>,
    pub(super) ticks: u64,
    pub(super) sweep_at: u32,
    /// The VM's linear memory at the last look, KiB (it only grows).
    pub(super) memory_kib: usize,
}

thread_local! {
    /// Root contexts of this VM whose configuration was accepted and that have not ended. A root
    /// context ends (`on_done`) when Envoy shuts the VM down, and also when a new configuration
    /// of the same plugin replaces it (a live update reuses the VM, measured on Envoy 1.40: the
    /// new root context is configured first, the old one ends once its listener has drained);
    /// the operator API's plugin is another root context of the same VM. Only the last one
    /// going is a shutdown.
    static LIVE_ROOTS: Cell<u32> = const { Cell::new(0) };
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

    /// Envoy is shutting the VM down. With `store.revoke_on_shutdown` (embedded store), the
    /// sessions this Envoy holds end and their refresh tokens are revoked at the provider
    /// before the VM goes (paced like a revoke-all; bounded by `SHUTDOWN_BOUND_MS` after the
    /// revocation timeout); each VM takes the sessions it manages to delete first.
    fn on_done(&mut self) -> bool {
        let shared = &self.shared;
        let Some(cfg) = shared.config() else {
            return true;
        };
        let others = LIVE_ROOTS.with(|n| {
            n.set(n.get().saturating_sub(1));
            n.get()
        });
        if others > 0 {
            // A configuration replaced (or the first of several going at a shutdown): the
            // sessions stay in shared data; the last root context decides.
            log(
                LogLevel::Info,
                &format!(
                    "a configuration ended, {others} still live in this VM: sessions are kept"
                ),
            );
            return true;
        }
        if !cfg.revoke_on_shutdown || cfg.etcd.is_some() || shared.shutdown.get().is_some() {
            return true;
        }
        let counts = super::with_engine(shared, &cfg, |e| e.revoke_all_sessions("shutdown"));
        let queued = shared.background.borrow().len() + shared.bg_calls.borrow().len();
        log(
            LogLevel::Info,
            &format!(
                "shutdown: {} sessions ended, {queued} refresh tokens to revoke",
                counts.ended
            ),
        );
        if queued == 0 {
            return true;
        }
        shared.shutdown.set(Some((now_ms(), queued)));
        pump_background_up_to(shared, &cfg, usize::MAX);
        false
    }
}

/// How long past `provider.revocation_timeout_ms` a shutdown waits for its revocations.
const SHUTDOWN_BOUND_MS: u64 = 2000;

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
                crate::store::open(&c, HostData, now_ms(), HostRandom).init_slots();
                for name in crate::audit::all_counters() {
                    self.shared.metric(MetricType::Counter, &name);
                }
                self.shared
                    .metric(MetricType::Counter, "bffgate_fast_path_taken");
                for why in crate::engine::FastPathMiss::ALL {
                    self.shared.metric(MetricType::Counter, why.metric());
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
                if self.shared.config.borrow().is_none() {
                    LIVE_ROOTS.with(|n| n.set(n.get().saturating_add(1)));
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
                // Envoy keeps serving the previous configuration (a listener update is rejected).
                self.shared.count("bffgate_config_refused");
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
        shared.flush_hot_counters();
        if self.ticks % 5 == 0 {
            super::check_epoch_reset();
        }
        // A safety net: anything queued whose notification went missing.
        if !shared.outgoing.borrow().is_empty() {
            dispatch_outgoing(shared, &cfg, true);
        }
        if !shared.background.borrow().is_empty() {
            pump_background(shared, &cfg);
        }
        if cfg.etcd.is_some() && shared.ring_checked.get() && now_ms() >= shared.ring_next_ms.get()
        {
            ring_head(shared, &cfg);
            dispatch_outgoing(shared, &cfg, true);
        }
        if let Some((since, _)) = shared.shutdown.get() {
            if now_ms().saturating_sub(since)
                > cfg.provider.revocation_timeout_ms + SHUTDOWN_BOUND_MS
            {
                let (revoked, _) = shared.bg_counts.get();
                shared.finish_shutdown(revoked, true);
            }
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
            let mut store = crate::store::SharedStore::new(HostData, cfg.store);
            let (next, events) =
                crate::engine::sweep(&mut store, self.sweep_at, SWEEP_BATCH, now_secs());
            self.sweep_at = next;
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

/// Shared-data key: the first key ids of the cookie key rings this Envoy's sessions were made
/// under, oldest first, space-separated (embedded store; at most [`RING_HISTORY`]).
const RING_HEAD: &str = "bffgate:ring_head";
/// Fleet mode: how often a serving VM checks the fleet's key ring list again.
const RING_RECHECK_MS: u64 = 60_000;
/// First key ids remembered: a configuration still draining with an earlier key never counts as
/// a change (nor does a rollback to one of them).
const RING_HISTORY: usize = 16;

/// Checks the key ring's first key, at the first request of a configuration on a worker: a key
/// id never seen under this Envoy (a new configuration with a rotated ring reached it) is
/// recorded, and with `cookie.revoke_on_key_change` every session ends and their refresh tokens
/// are queued for revocation, once per Envoy (the VM whose compare-and-swap of the list wins
/// does it; the others find the id listed).
pub(super) fn ring_head(shared: &Shared, cfg: &Config) {
    if cfg.etcd.is_some() {
        // The fleet's list lives in etcd: a chain of callouts of the root's own (checked
        // again every minute, which also retries one that failed).
        shared
            .ring_next_ms
            .set(now_ms().saturating_add(RING_RECHECK_MS));
        if let Some(Step::Call { request, then }) =
            super::with_engine(shared, cfg, |e| e.fleet_ring_head())
        {
            shared.outgoing.borrow_mut().push_back(super::Outgoing {
                ctx: shared.root_id,
                request,
                then: *then,
            });
        }
        return;
    }
    let kid = cfg.cookie.keys.current_kid();
    let (old, cas) = HostData.get(RING_HEAD);
    let old = old.map(|v| String::from_utf8_lossy(&v).into_owned());
    let seen: Vec<&str> = old.as_deref().unwrap_or("").split_whitespace().collect();
    if seen.contains(&kid) {
        return;
    }
    let mut next: Vec<&str> = seen.clone();
    next.push(kid);
    let from = next.len().saturating_sub(RING_HISTORY);
    let list = next.get(from..).unwrap_or(&[]).join(" ");
    if HostData.set(RING_HEAD, list.as_bytes(), cas).is_err() {
        return; // another VM recorded a change first, and acts on it
    }
    let Some(&previous) = seen.last() else {
        return; // the first configuration this Envoy ran
    };
    if !cfg.cookie.revoke_on_key_change {
        log(
            LogLevel::Info,
            &format!("cookie key ring: first key `{previous}` -> `{kid}`; sessions kept (cookie.revoke_on_key_change is off)"),
        );
        return;
    }
    let counts = super::with_engine(shared, cfg, |e| e.revoke_all_sessions("key_change"));
    log(
        LogLevel::Warn,
        &format!(
            "cookie key ring: first key `{previous}` -> `{kid}`: ended {} sessions, {} refresh tokens queued for revocation (cookie.revoke_on_key_change)",
            counts.ended, counts.queued
        ),
    );
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
