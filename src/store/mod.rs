//! Session storage: the interface the engine uses, and its two backends.
//!
//! - [`shared_data`]: the embedded store, a bounded table of slots in proxy-wasm shared data
//!   (every worker of one Envoy sees it; it dies with the process).
//! - [`etcd`]: the fleet store, sessions in etcd v3 (reached with callouts) shared by many
//!   Envoys, with shared data as a read cache.
//!
//! Both implement [`Store`]; the fleet store also implements [`RemoteSync`], the part of a store
//! whose source of truth is elsewhere (fetch before deciding, flush writes before answering),
//! which the engine reaches through [`Store::remote`]. [`open`] builds the one a configuration
//! asks for, so the shell never chooses.

pub mod etcd;
#[cfg(not(target_arch = "wasm32"))]
pub mod memory;
pub mod shared_data;

pub use etcd::EtcdStore;
pub use shared_data::SharedStore;

use crate::callout::{CallResult, Callout};
use crate::config::Config;
use crate::secret::Secret;
use crate::session::{Session, SessionId};
use crate::util::Random;
use serde::{Deserialize, Serialize};

/// A CAS token from a read.
pub type Cas = u32;

/// Errors from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The entry changed since it was read.
    CasMismatch,
    /// Every sampled slot is in use and the policy is to refuse.
    Full,
    /// The entry does not exist (or belongs to another session).
    NotFound,
    /// The host refused the operation.
    Unavailable,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreError::CasMismatch => "the entry changed since it was read",
            StoreError::Full => "the store is full",
            StoreError::NotFound => "no such entry",
            StoreError::Unavailable => "the store is unavailable",
        })
    }
}

impl std::error::Error for StoreError {}

/// The key-value surface of proxy-wasm shared data (implemented by the wasm shell, and in memory
/// for tests).
pub trait SharedData {
    /// Value and CAS token; `(None, None)` when the key was never set.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>);
    /// Sets `key`; with `cas`, only if unchanged since that read.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError>;
    /// The write count of shard `shard` (of [`EPOCH_SHARDS`]) of the embedded store's session
    /// table, as every VM of the process sees it at once (the shell: an Envoy counter, read
    /// without copying anything into the VM). It only grows: a count is never seen again for
    /// another state of the shard. `None`: the host has no such counter, and
    /// [`SharedData::records`] is not used.
    fn epoch(&self, _shard: u32) -> Option<u64> {
        None
    }
    /// Moves shard `shard`'s write count on. The store calls it after every write of a
    /// session slot of that shard, so a record cached under the previous count is never used
    /// again, by any VM.
    fn bump(&mut self, _shard: u32) {}
    /// This VM's cache of session records, valid under [`SharedData::epoch`].
    fn records(&self) -> Option<&RecordCache> {
        None
    }
}

impl<T: SharedData + ?Sized> SharedData for &mut T {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        (**self).get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        (**self).set(key, value, cas)
    }
    fn epoch(&self, shard: u32) -> Option<u64> {
        (**self).epoch(shard)
    }
    fn bump(&mut self, shard: u32) {
        (**self).bump(shard);
    }
    fn records(&self) -> Option<&RecordCache> {
        (**self).records()
    }
}

/// Shards of the session table for [`SharedData::epoch`]: a write of slot `s` moves the count
/// of shard `s % EPOCH_SHARDS`, and invalidates the cached records of that shard only.
pub const EPOCH_SHARDS: u32 = 64;

/// Records cached by one VM.
pub const RECORD_CACHE_ENTRIES: usize = 1024;

/// One VM's copies of session records, so that a request on the fast path reads a counter
/// instead of the record (a shared-data read copies the record into the VM: the costliest host
/// call of the fast path). An entry is used only while its shard's write count
/// ([`SharedData::epoch`]) is the one it was read under; every write of a session slot moves
/// that count on ([`SharedData::bump`]) after the write, and a reader reads the count before
/// the record. So a record changed or emptied by any VM (logout, revocation, eviction, renewal,
/// a new session in the slot) is never served from a copy once the write is done: what the
/// store promised before (logout on every worker at once) still holds. Direct-mapped by slot
/// and bounded ([`RECORD_CACHE_ENTRIES`]): a miss reads the record as before.
///
/// Behind a `Mutex` only so that a store value can sit in a `static` (the fuzz targets' worlds):
/// in a VM there is one thread, and the lock is never contended.
#[derive(Default)]
pub struct RecordCache {
    entries: std::sync::Mutex<Vec<Option<CachedRecord>>>,
}

struct CachedRecord {
    slot: u32,
    epoch: u64,
    cas: Cas,
    value: Vec<u8>,
}

impl Clone for RecordCache {
    /// An empty cache: a copy of a VM's state starts cold.
    fn clone(&self) -> Self {
        RecordCache::default()
    }
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordCache([redacted])")
    }
}

impl RecordCache {
    fn index(slot: u32) -> usize {
        slot as usize % RECORD_CACHE_ENTRIES
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Option<CachedRecord>>> {
        // A panic while holding it (tests only: the wasm build aborts) leaves plain data.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record of `slot` if it was cached under `epoch`.
    pub fn get(&self, slot: u32, epoch: u64) -> Option<(Vec<u8>, Cas)> {
        let entries = self.entries();
        let e = entries.get(Self::index(slot))?.as_ref()?;
        (e.slot == slot && e.epoch == epoch).then(|| (e.value.clone(), e.cas))
    }

    /// Keeps `value` (read with `cas` after the shard's count was `epoch`) for `slot`.
    pub fn put(&self, slot: u32, epoch: u64, value: &[u8], cas: Cas) {
        let mut entries = self.entries();
        if entries.is_empty() {
            entries.resize_with(RECORD_CACHE_ENTRIES, || None);
        }
        if let Some(e) = entries.get_mut(Self::index(slot)) {
            match e {
                Some(c) => {
                    c.slot = slot;
                    c.epoch = epoch;
                    c.cas = cas;
                    c.value.clear();
                    c.value.extend_from_slice(value);
                }
                None => {
                    *e = Some(CachedRecord {
                        slot,
                        epoch,
                        cas,
                        value: value.to_vec(),
                    })
                }
            }
        }
    }

    /// Forgets every copy.
    pub fn clear(&self) {
        self.entries().iter_mut().for_each(|e| *e = None);
    }

    /// Records cached (for tests).
    pub fn len(&self) -> usize {
        self.entries().iter().flatten().count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A login in progress, kept server-side between `/auth/login` and `/auth/callback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingLogin {
    /// PKCE verifier.
    pub verifier: Secret,
    /// OIDC nonce.
    pub nonce: String,
    /// Validated local return path.
    pub return_to: String,
    /// Hex SHA-256 of the flow cookie's value: binds the login to the browser that started it.
    pub flow_hash: String,
    /// Unix seconds after which the callback is refused.
    pub expires: u64,
    /// Hex SHA-256 of the state (set by the store): the slot must match the state presented.
    #[serde(default)]
    pub state_hash: String,
    /// A step-up login (RFC 9470): the sign-in level asked of the provider, checked against
    /// the ID token at the callback.
    #[serde(default, skip_serializing_if = "crate::policy::StepUp::is_empty")]
    pub step_up: crate::policy::StepUp,
    /// The browser's client binding at the start of the login (keyed hashes), given to the
    /// session it makes (session anomaly signals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<crate::anomaly::Binding>,
}

/// How many slots a claim looks at before applying the full-table policy (the least recently
/// used of these is evicted).
pub const SAMPLE: u32 = 64;

/// How many slots a login looks at for a free one before it evicts or refuses: a login into a
/// full table costs this many reads of a binary record head, never a scan of the whole table.
pub const FREE_SEARCH: u32 = 4 * SAMPLE;

/// A session whose slot a new session took, for audit and metrics: a live one evicted to make
/// room, or a dead one (idle or expired) that the sweeper had not reclaimed yet. Either way its
/// end is recorded once, so every session created is accounted for.
#[derive(Debug, Clone, PartialEq)]
pub struct Evicted {
    /// Audit handle of the session.
    pub handle: String,
    /// Its subject.
    pub sub: String,
    /// Why it was no longer there.
    pub why: Replaced,
}

/// Why a session's slot could be taken by a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// It was live, and the least recently used of those looked at (`when_full: evict`).
    Evicted,
    /// It had been idle longer than `session.idle_timeout_s`.
    Idle,
    /// It was past its absolute lifetime.
    Expired,
}

/// How far a store's local view of a session can be trusted ([`Store::remote_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// Decide on it (present or known absent).
    Current,
    /// Too old, or never read: fetch it first.
    Stale,
    /// The remote store did not answer and the configured failure mode allows nothing cached.
    Unavailable,
}

/// A uniformly random `u32`.
pub(crate) fn random_u32(rng: &mut dyn Random) -> u32 {
    let mut b = [0u8; 4];
    rng.fill(&mut b);
    u32::from_le_bytes(b)
}

/// Who asks for a whole-store scan (each has its own budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKind {
    /// The operator API.
    Operator,
    /// OIDC Front-Channel Logout.
    FrontChannel,
}

/// The provider documents cached for every worker of an Envoy (never in a remote store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    /// The JWKS.
    Jwks,
    /// What bffgate keeps of the discovery document ([`crate::discovery::Meta`], JSON).
    Discovery,
    /// The last discovery fetch that failed (`F`) or that renews a stale document (`R`): its
    /// time keeps failures from being retried at once and a renewal from being started twice.
    DiscoveryAttempt,
}

/// Session and pending-login storage, as the engine sees it.
pub trait Store {
    /// Loads a session with its CAS token (`None` if absent or the slot holds another session).
    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)>;
    /// The stored bytes of a session's slot, unparsed and unchecked (the fast path reads a
    /// borrowed view of them and checks the owner itself). `None` if empty or out of range.
    fn get_session_raw(&self, id: &SessionId) -> Option<(Vec<u8>, Cas)>;
    /// Writes a session read with `cas`; fails if the slot changed since.
    fn put_session(&mut self, id: &SessionId, s: &Session, cas: Cas) -> Result<(), StoreError>;
    /// Creates a session in a free slot; returns its id and, if one had to go, the evicted one.
    fn create_session(
        &mut self,
        s: &Session,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<(SessionId, Option<Evicted>), StoreError>;
    /// Deletes a session (only if the slot still holds it).
    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError>;
    /// Saves a pending login; returns the `state` that finds it again.
    fn create_pending(
        &mut self,
        p: &PendingLogin,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<String, StoreError>;
    /// Takes (reads and deletes, atomically) the pending login of `state` if its flow cookie's
    /// hash is `flow_hash`: a second take of the same state gets `None`, so a callback cannot be
    /// replayed, and a take with another flow cookie consumes nothing.
    fn take_pending(&mut self, state: &str, flow_hash: &str) -> Option<PendingLogin>;
    /// Deletes every session for which `pred` is true; returns those deleted.
    fn delete_where(&mut self, pred: &dyn Fn(&Session) -> bool) -> Vec<Session>;
    /// Counts `sub`'s live sessions at `now` (the operator API).
    fn count_live_of(&self, sub: &str, now: u64) -> usize;
    /// Whether a whole-store scan for `kind` may run now: at most one per second per Envoy and
    /// kind (shared by its workers), so neither the operator API nor an unauthenticated
    /// front-channel logout can be made to burn CPU, or starve the other.
    fn take_scan_budget(&mut self, kind: ScanKind, now: u64) -> bool;
    /// A cached provider document and when it was stored.
    fn doc(&self, kind: Doc) -> Option<(Vec<u8>, u64)>;
    /// Caches a provider document.
    fn set_doc(&mut self, kind: Doc, doc: &[u8], now: u64);
    /// Records a logout-token `jti` until `exp`; false if it was already seen (a replay).
    fn remember_jti(&mut self, jti: &str, exp: u64, now: u64) -> bool;
    /// Remembers why the session with audit handle `handle` was ended by bffgate itself (an
    /// anomaly's `revoke`), until `until`, so that its cookie can be told why (bounded; per
    /// Envoy).
    fn note_ended(&mut self, _handle: &str, _reason: &str, _until: u64, _now: u64) {}
    /// Why the session with `handle` was ended, if [`Store::note_ended`] still remembers it.
    fn ended_reason(&self, _handle: &str, _now: u64) -> Option<String> {
        None
    }
    /// How far this store's local view of a session can be trusted: always current for a store
    /// that is its own source of truth ([`RemoteSync::state_of`] otherwise).
    fn state_of(&self, _id: &SessionId) -> RemoteState {
        RemoteState::Current
    }
    /// The remote half of a store whose source of truth is elsewhere; `None` for the embedded
    /// store.
    fn remote(&mut self) -> Option<&mut dyn RemoteSync> {
        None
    }
}

/// What a store whose source of truth is remote (etcd) adds: the engine pauses a request on a
/// callout to fetch what the local view lacks, and holds its answer until the writes it made
/// are flushed.
pub trait RemoteSync {
    /// Whether a request waiting for another's renewal should read the session again (a
    /// renewal on another Envoy shows only there): much sooner than the cache's bound.
    fn stale_for_wait(&self, id: &SessionId) -> bool;
    /// The callout that fetches a session; its answer goes to [`RemoteSync::absorb`], and the
    /// request is decided again.
    fn fetch_session(&mut self, id: &SessionId) -> Callout;
    /// Takes the answer of a [`RemoteSync::fetch_session`] callout into the local view.
    fn absorb(&mut self, id: &SessionId, result: &CallResult);
    /// The callout that takes a pending login missing from the local view (a login started on
    /// another Envoy); its answer goes to [`RemoteSync::absorb_pending`].
    fn fetch_pending(&mut self, state: &str, flow_hash: &str) -> Callout;
    /// Takes the answer of a [`RemoteSync::fetch_pending`] callout.
    fn absorb_pending(&mut self, state: &str, flow_hash: &str, result: &CallResult);
    /// Ends, in the remote store, every session of a subject (or of a provider session id):
    /// sessions that this Envoy has never seen too.
    fn revoke_everywhere(&mut self, sub: Option<&str>, sid: Option<&str>);
    /// Starts an operator's revoke-all of the whole fleet: marks every session this Envoy has
    /// cached as gone (refused here at once), and returns the callout that reads the first page
    /// of session records; its answer goes to [`RemoteSync::revoke_page`].
    fn start_revoke_all(&mut self) -> Callout;
    /// The callout that reads the page of session records after the key `after`.
    fn next_revoke_page(&mut self, after: &str) -> Callout;
    /// Takes a page read by [`RemoteSync::start_revoke_all`] or
    /// [`RemoteSync::next_revoke_page`]: the sessions it holds (opened with the store key), the
    /// callout that deletes them, and where the next page starts. `Err`: etcd did not answer.
    fn revoke_page(&mut self, result: &CallResult) -> Result<RevokePage, StoreError>;
    /// The callout that reads the fleet's list of cookie-key-ring first key ids (the key ids
    /// the fleet's sessions were made under); its answer goes to [`RemoteSync::ring_head_of`].
    fn read_ring_head(&mut self) -> Callout;
    /// The list read, and its revision (0: absent). `Err`: etcd did not answer.
    fn ring_head_of(&mut self, result: &CallResult) -> Result<(Vec<String>, u64), StoreError>;
    /// The transaction that writes `list` if the list is still at revision `rev` (0: absent);
    /// its answer goes to [`RemoteSync::claimed`].
    fn claim_ring_head(&mut self, list: &[String], rev: u64) -> Callout;
    /// Whether a [`RemoteSync::claim_ring_head`] won. `Err`: etcd did not answer.
    fn claimed(&mut self, result: &CallResult) -> Result<bool, StoreError>;
    /// Writes queued during this run, to be flushed (with [`RemoteSync::advance`]) before the
    /// request goes on.
    fn take_outbox(&mut self) -> Option<Outbox>;
    /// Takes the answer of the last flush callout (`None` at the start) and says what comes next.
    fn advance(&mut self, ob: &mut Outbox, result: Option<&CallResult>) -> Flush;
}

/// One page of a fleet-wide revoke-all.
#[derive(Debug, Clone, PartialEq)]
pub struct RevokePage {
    /// The sessions found (with their handles), their refresh tokens to revoke.
    pub sessions: Vec<Session>,
    /// Records found that do not open (sealed before envelopes carried their handle, or with a
    /// key no longer in the ring): deleted all the same, their grants not revoked.
    pub unopened: usize,
    /// The transaction that deletes every record of the page (`None`: the page was empty).
    pub delete: Option<Callout>,
    /// The last key of the page when there are more (the next page starts after it).
    pub next: Option<String>,
}

/// How a flush ended, worst outcome first in importance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Every operation applied.
    Ok,
    /// A compare failed: another Envoy changed the record (the cache now holds its version).
    Conflict,
    /// etcd could not be reached or refused.
    Unavailable,
}

/// What the engine does next with an outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Flush {
    /// Make this callout and hand its result back.
    Call(Callout),
    /// Nothing left to send.
    Done(Outcome),
}

/// Operations queued by one engine run, carried by the paused request until flushed.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbox {
    ops: Vec<etcd::Op>,
    next: usize,
    /// Second call of a two-call operation: the lease granted (or the keys found) by the first.
    phase: Option<etcd::Phase>,
    outcome: Outcome,
    /// Whether the request's answer depends on the flush.
    pub critical: bool,
}

/// The store a configuration asks for: the embedded one, or the fleet store when
/// `store.backend` is `etcd`.
pub enum Backend<'c, D, R> {
    /// Shared data only.
    Embedded(SharedStore<D>),
    /// etcd, with shared data as a cache.
    Etcd(EtcdStore<'c, D, R>),
}

/// Opens the store `cfg` asks for over the host's shared data, at `now_ms` (milliseconds).
/// Cheap: built for every engine run, as the shell runs one per callback.
pub fn open<D: SharedData, R: Random>(
    cfg: &Config,
    data: D,
    now_ms: u64,
    rng: R,
) -> Backend<'_, D, R> {
    match &cfg.etcd {
        None => Backend::Embedded(SharedStore::new(data, cfg.store)),
        Some(etcd) => Backend::Etcd(EtcdStore::new(data, cfg, etcd, now_ms, rng)),
    }
}

impl<D: SharedData, R: Random> Backend<'_, D, R> {
    /// Creates the slots that do not exist yet (once, at configuration time, before traffic).
    pub fn init_slots(&mut self) {
        match self {
            Backend::Embedded(s) => s.init_slots(),
            Backend::Etcd(s) => s.init_slots(),
        }
    }

    /// Compare-and-swap conflicts met during this run (for the metric).
    pub fn cas_conflicts(&self) -> u32 {
        match self {
            Backend::Embedded(s) => s.cas_conflicts.get(),
            Backend::Etcd(s) => s.local.cas_conflicts.get(),
        }
    }

    /// Fast-path session reads the VM's record cache missed during this run (embedded store).
    pub fn cache_misses(&self) -> u32 {
        match self {
            Backend::Embedded(s) => s.cache_misses.get(),
            Backend::Etcd(_) => 0,
        }
    }

    fn inner(&self) -> &dyn Store {
        match self {
            Backend::Embedded(s) => s,
            Backend::Etcd(s) => s,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Store {
        match self {
            Backend::Embedded(s) => s,
            Backend::Etcd(s) => s,
        }
    }
}

impl<D: SharedData, R: Random> Store for Backend<'_, D, R> {
    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)> {
        self.inner().get_session(id)
    }
    fn get_session_raw(&self, id: &SessionId) -> Option<(Vec<u8>, Cas)> {
        self.inner().get_session_raw(id)
    }
    fn put_session(&mut self, id: &SessionId, s: &Session, cas: Cas) -> Result<(), StoreError> {
        self.inner_mut().put_session(id, s, cas)
    }
    fn create_session(
        &mut self,
        s: &Session,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<(SessionId, Option<Evicted>), StoreError> {
        self.inner_mut().create_session(s, rng, now)
    }
    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.inner_mut().delete_session(id)
    }
    fn create_pending(
        &mut self,
        p: &PendingLogin,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<String, StoreError> {
        self.inner_mut().create_pending(p, rng, now)
    }
    fn take_pending(&mut self, state: &str, flow_hash: &str) -> Option<PendingLogin> {
        self.inner_mut().take_pending(state, flow_hash)
    }
    fn delete_where(&mut self, pred: &dyn Fn(&Session) -> bool) -> Vec<Session> {
        self.inner_mut().delete_where(pred)
    }
    fn count_live_of(&self, sub: &str, now: u64) -> usize {
        self.inner().count_live_of(sub, now)
    }
    fn take_scan_budget(&mut self, kind: ScanKind, now: u64) -> bool {
        self.inner_mut().take_scan_budget(kind, now)
    }
    fn doc(&self, kind: Doc) -> Option<(Vec<u8>, u64)> {
        self.inner().doc(kind)
    }
    fn set_doc(&mut self, kind: Doc, doc: &[u8], now: u64) {
        self.inner_mut().set_doc(kind, doc, now)
    }
    fn remember_jti(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        self.inner_mut().remember_jti(jti, exp, now)
    }
    fn note_ended(&mut self, handle: &str, reason: &str, until: u64, now: u64) {
        self.inner_mut().note_ended(handle, reason, until, now)
    }
    fn ended_reason(&self, handle: &str, now: u64) -> Option<String> {
        self.inner().ended_reason(handle, now)
    }
    fn state_of(&self, id: &SessionId) -> RemoteState {
        self.inner().state_of(id)
    }
    fn remote(&mut self) -> Option<&mut dyn RemoteSync> {
        self.inner_mut().remote()
    }
}
