//! The fleet store: sessions shared by many Envoys through etcd v3 (its JSON gateway, reached
//! with callouts), with this Envoy's shared data as a read cache.
//!
//! Source of truth is etcd. Keys, all under the configured prefix (`bffgate/`):
//! - `s/<verifier>`: the session record (`record::encode`), sealed with [`crate::vault`]
//!   (associated data: the key and the session's handle), on a lease of the session's
//!   remaining absolute lifetime, so etcd deletes it by itself;
//! - `s/<verifier>/a`: last use (decimal seconds), written without CAS so a request that only
//!   refreshes `last_seen` never conflicts with a token renewal elsewhere;
//! - `l/<verifier>`: the fleet-wide refresh lock, on a lease of the lock's lifetime (a holder
//!   that dies lets it expire);
//! - `u/<hash(sub)>/<verifier>` and `i/<hash(sid)>/<verifier>`: indexes that let a back-channel
//!   or operator revocation find a subject's sessions on every Envoy (hashes, not names);
//! - `p/<hash(state)>`: pending logins (sealed, lease = login timeout), taken atomically with
//!   `deleterange prev_kv`, so a callback works on any Envoy and only once in the fleet.
//!
//! The `verifier` is the hex SHA-256 of the session id's random part: nothing in etcd turns
//! into a cookie. Every update of a record is a transaction compared on the `mod_revision` that
//! was read (CAS); a lost race returns the current record in the same round trip.
//!
//! Cache: slot `bffgate:c:<i>` of shared data holds one entry (direct-mapped by the cookie's
//! slot number, chosen at random at login): the record as the engine reads it, its
//! `mod_revision` and lease, and when it was fetched. An entry older than `cache_ttl_ms` is
//! fetched again before a request is decided; a logout elsewhere is therefore honoured here
//! within that bound, and at once on the Envoy that did it.
//!
//! Writes: the engine writes into the cache synchronously (so the requests of this Envoy see
//! them at once and CAS among themselves) and the store queues the etcd operations in an
//! [`Outbox`]. The engine flushes it before the request goes on: a response
//! that depends on a write (a new session's cookie, a logout, a renewed token, a refresh lock)
//! only leaves once etcd has it.

use super::{
    random_u32, Cas, Doc, Evicted, Flush, Outbox, Outcome, PendingLogin, RemoteState, RemoteSync,
    RevokePage, ScanKind, SharedData, SharedStore, Store, StoreError,
};
use crate::callout::{CallResult, Callout};
use crate::config::{Config, Etcd, Limits, WhenUnavailable};
use crate::secret::Secret;
use crate::session::{Session, SessionId};
use crate::util::{ct_eq, hex, random_token, sha256, Random};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

/// One queued etcd operation.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    /// A new session: grant its lease, then create-if-absent with its index keys.
    Create {
        sid: SessionId,
        env: Vec<u8>,
        ttl: u64,
        index: Vec<String>,
    },
    /// An update compared on the revision read.
    Put {
        sid: SessionId,
        env: Vec<u8>,
        rev: u64,
        lease: u64,
    },
    /// An update that takes the fleet-wide refresh lock: grant the lock's lease, then the
    /// update compared on the revision read and on the lock key being absent.
    Lock {
        sid: SessionId,
        env: Vec<u8>,
        rev: u64,
        lease: u64,
        ttl: u64,
    },
    /// An update that releases the lock.
    Unlock {
        sid: SessionId,
        env: Vec<u8>,
        rev: u64,
        lease: u64,
    },
    /// Last use (no compare; losing it is harmless).
    Touch {
        sid: SessionId,
        last_seen: u64,
        lease: u64,
    },
    /// End a session (by verifier): its record, last use, lock and index keys.
    Delete {
        verifier: String,
        index: Vec<String>,
    },
    /// End every session found under an index prefix (back-channel or operator revocation).
    Revoke { index_prefix: String },
    /// A pending login: grant its lease, then put.
    Pending { key: String, env: Vec<u8>, ttl: u64 },
}

impl Op {
    /// Whether the request's answer depends on this operation reaching etcd.
    fn critical(&self) -> bool {
        !matches!(self, Op::Touch { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    Lease(u64),
    Found(Vec<String>),
}

/// Standard base64 (the gateway's encoding of keys and values).
fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// A put's fields with its lease (none for 0: a record whose lease is not known yet).
fn with_lease(mut put: Value, lease: u64) -> Value {
    if let (Some(o), true) = (put.as_object_mut(), lease != 0) {
        o.insert("lease".into(), Value::from(lease.to_string()));
    }
    put
}

/// The end of the range of keys starting with `key` (last byte + 1; keys here are ASCII).
fn prefix_end(key: &str) -> Vec<u8> {
    let mut e = key.as_bytes().to_vec();
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return e;
        }
    }
    vec![0]
}

/// An int64 field as the gateway writes it (a JSON string), or a number.
fn int(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// The `kvs` list at `pointer` of an answer (absent = no keys: proto3 JSON leaves it out).
fn kvs_at(v: &Value, pointer: &str) -> Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn revision(v: &Value) -> u64 {
    v.get("header")
        .and_then(|h| h.get("revision"))
        .and_then(int)
        .unwrap_or(0)
}

/// The JSON of a 200 answer; anything else is "unavailable".
fn answer(result: &CallResult) -> Option<Value> {
    match result {
        CallResult::Response { status: 200, body } => serde_json::from_slice(body).ok(),
        _ => None,
    }
}

fn short_hash(tag: &str, v: &str) -> String {
    let mut buf = Vec::with_capacity(tag.len() + v.len());
    buf.extend_from_slice(tag.as_bytes());
    buf.extend_from_slice(v.as_bytes());
    hex(sha256(&buf).get(..16).unwrap_or(&[]))
}

/// A cache entry in shared data.
#[derive(Debug, Clone, PartialEq, Default)]
struct Entry {
    /// 1: a record; 2: known absent; 0: unknown (a fetch failed before any succeeded).
    state: u8,
    rev: u64,
    lease: u64,
    fetched_ms: u64,
    failed_ms: u64,
    owner: Vec<u8>,
    record: Vec<u8>,
}

const ENTRY_MAGIC: &[u8] = b"C1";

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.owner.len() + self.record.len());
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(self.state);
        for n in [self.rev, self.lease, self.fetched_ms, self.failed_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.push(u8::try_from(self.owner.len()).unwrap_or(0));
        out.extend_from_slice(&self.owner);
        out.extend_from_slice(&self.record);
        out
    }

    fn decode(b: &[u8]) -> Option<Entry> {
        let (mut e, at) = Entry::head(b)?;
        e.record = b.get(at..)?.to_vec();
        Some(e)
    }

    /// Everything but the record, and where the record starts (so the per-request read can
    /// take it out of the buffer in place).
    fn head(b: &[u8]) -> Option<(Entry, usize)> {
        let rest = b.strip_prefix(ENTRY_MAGIC)?;
        let (&state, rest) = rest.split_first()?;
        let mut nums = [0u64; 4];
        for (i, n) in nums.iter_mut().enumerate() {
            let s = rest.get(i * 8..i * 8 + 8)?;
            *n = u64::from_be_bytes(<[u8; 8]>::try_from(s).ok()?);
        }
        let rest = rest.get(32..)?;
        let (&olen, rest) = rest.split_first()?;
        let owner = rest.get(..usize::from(olen))?.to_vec();
        let [rev, lease, fetched_ms, failed_ms] = nums;
        let at = ENTRY_MAGIC.len() + 1 + 32 + 1 + usize::from(olen);
        let e = Entry {
            state,
            rev,
            lease,
            fetched_ms,
            failed_ms,
            owner,
            record: Vec::new(),
        };
        Some((e, at))
    }
}

/// A failed fetch is not retried for this long (each request would otherwise wait for its own
/// timeout while etcd is down).
const RETRY_AFTER_FAILURE_MS: u64 = 250;
/// A request waiting for another Envoy's renewal reads the session again this often.
const WAIT_REREAD_MS: u64 = 200;
/// Bounded CAS retries on a cache slot.
const RETRIES: usize = 4;
/// Keys read per page of a fleet-wide revoke-all: at most 32 sessions, whose deletes (record and
/// last use, lock, two index entries: 4 operations each) fit in one etcd transaction (at most 128
/// operations by default).
const REVOKE_PAGE: usize = 32;
/// First key ids of the cookie key ring remembered in `ring_head` (a configuration still
/// rolling out with an earlier key never counts as a change).
pub const RING_HISTORY: usize = 16;

fn cache_key(slot: u32) -> String {
    format!("bffgate:c:{slot}")
}

/// The fleet store. Cheap to build per engine run, like [`SharedStore`].
pub struct EtcdStore<'c, D, R> {
    /// Pending logins' local fallbacks, JWKS cache and logout-token ids (this Envoy).
    pub local: SharedStore<D>,
    cfg: &'c Etcd,
    slots: u32,
    now_ms: u64,
    rng: R,
    outbox: Vec<Op>,
    /// Pending logins taken from etcd during this run.
    taken: Vec<(String, PendingLogin)>,
    lock_ttl: u64,
    login_ttl: u64,
    /// `store.max_pending_logins`: how many logins this Envoy may have pending in etcd.
    login_cap: u32,
}

/// Shared-data key of this Envoy's budget of pending logins (see [`EtcdStore::take_login_slot`]).
const LOGIN_BUDGET_KEY: &str = "bffgate:fleet:logins";

impl<'c, D: SharedData, R: Random> EtcdStore<'c, D, R> {
    /// A store over `data` (the cache) and etcd as `cfg` (whose `store.etcd` is `etcd`) says:
    /// `store.max_sessions` is the number of cache slots, `store.max_pending_logins` this
    /// Envoy's budget of pending logins.
    pub fn new(data: D, cfg: &Config, etcd: &'c Etcd, now_ms: u64, rng: R) -> Self {
        let limits = cfg.store;
        let slots = limits.max_sessions.max(1);
        // The local store keeps no sessions and no pending logins (etcd does): only the JWKS
        // cache and the logout-token ids.
        let local = SharedStore::new(
            data,
            Limits {
                max_sessions: 0,
                max_pending: 0,
                ..limits
            },
        );
        EtcdStore {
            local,
            cfg: etcd,
            slots,
            now_ms,
            rng,
            outbox: Vec::new(),
            taken: Vec::new(),
            lock_ttl: cfg.lock_ttl(),
            login_ttl: cfg.session.login_timeout_s,
            login_cap: limits.max_pending,
        }
    }

    /// Counts the cached sessions for which `pred` is true.
    fn count_where(&self, pred: &dyn Fn(&Session) -> bool) -> usize {
        (0..self.slots)
            .filter_map(|i| self.local.data.get(&cache_key(i)).0)
            .filter_map(|v| Entry::decode(&v))
            .filter(|e| e.state == 1)
            .filter_map(|e| crate::record::decode(&e.record))
            .filter(|s| pred(s))
            .count()
    }

    /// Takes one pending login from this Envoy's budget (every worker shares it): a bucket of
    /// `max_pending_logins` that refills at `max_pending_logins` per login timeout, so the keys
    /// and leases this Envoy can make etcd hold for unauthenticated `GET /auth/login`s stay
    /// about `max_pending_logins` whatever the traffic. `false`: the budget is spent.
    fn take_login_slot(&mut self) -> bool {
        let cap = u64::from(self.login_cap) * 1000;
        if cap == 0 {
            return false;
        }
        let refill_ms = self.login_ttl.max(1).saturating_mul(1000);
        for _ in 0..RETRIES {
            let (v, cas) = self.local.data.get(LOGIN_BUDGET_KEY);
            let (mut level, at) = v
                .as_deref()
                .and_then(|b| {
                    let level = u64::from_be_bytes(<[u8; 8]>::try_from(b.get(..8)?).ok()?);
                    let at = u64::from_be_bytes(<[u8; 8]>::try_from(b.get(8..16)?).ok()?);
                    Some((level, at))
                })
                .unwrap_or((cap, self.now_ms));
            let elapsed = self.now_ms.saturating_sub(at);
            level = level
                .saturating_add(elapsed.saturating_mul(cap) / refill_ms)
                .min(cap);
            if level < 1000 {
                return false;
            }
            level -= 1000;
            let mut next = level.to_be_bytes().to_vec();
            next.extend_from_slice(&self.now_ms.max(at).to_be_bytes());
            match self.local.data.set(LOGIN_BUDGET_KEY, &next, cas) {
                Ok(()) => return true,
                Err(StoreError::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    /// Creates the cache slots (empty) that do not exist yet, and the local store's keys.
    pub fn init_slots(&mut self) {
        for i in 0..self.slots {
            let k = cache_key(i);
            if self.local.data.get(&k).1.is_none() {
                let _ = self.local.data.set(&k, b"", None);
            }
        }
        self.local.init_slots();
    }

    fn now_s(&self) -> u64 {
        self.now_ms / 1000
    }

    fn slot(&self, id: &SessionId) -> u32 {
        id.slot() % self.slots
    }

    fn s_key(&self, v: &str) -> String {
        format!("{}s/{v}", self.cfg.prefix)
    }

    /// The index entries of a session (names keyed with the current store key: a reader of
    /// etcd without the key cannot test whether someone is signed in).
    fn index_keys(&self, s: &Session, v: &str) -> Vec<String> {
        let name = |tag: &str, value: &str| {
            self.cfg
                .keys
                .index_names(tag, value)
                .into_iter()
                .next()
                .unwrap_or_default()
        };
        let mut keys = vec![format!("{}u/{}/{v}", self.cfg.prefix, name("sub", &s.sub))];
        if let Some(sid) = s.claims.get("sid").and_then(Value::as_str) {
            keys.push(format!("{}i/{}/{v}", self.cfg.prefix, name("sid", sid)));
        }
        keys
    }

    fn call(&self, path: &str, body: Value) -> Callout {
        Callout {
            cluster: Some(self.cfg.cluster.clone()),
            authority: self.cfg.authority.clone(),
            method: "POST",
            path: path.to_string(),
            headers: vec![],
            body: Secret::new(body.to_string()),
            timeout_ms: self.cfg.timeout_ms,
        }
    }

    /// The cache entry of `id`'s slot if it belongs to `id`, with its CAS.
    fn entry(&self, id: &SessionId) -> Option<(Entry, Cas)> {
        let (v, cas) = self.local.data.get(&cache_key(self.slot(id)));
        let e = Entry::decode(&v?)?;
        if !ct_eq(&e.owner, &id.verifier_bytes()) {
            return None;
        }
        Some((e, cas?))
    }

    /// Rewrites `id`'s cache entry with `f` (taking the slot over if another session holds it).
    fn update_entry(&mut self, id: &SessionId, f: &dyn Fn(&mut Entry)) {
        let key = cache_key(self.slot(id));
        let owner = id.verifier_bytes();
        for _ in 0..RETRIES {
            let (v, cas) = self.local.data.get(&key);
            let mut e = v
                .and_then(|v| Entry::decode(&v))
                .filter(|e| ct_eq(&e.owner, &owner))
                .unwrap_or_else(|| Entry {
                    owner: owner.to_vec(),
                    ..Entry::default()
                });
            f(&mut e);
            if self.local.data.set(&key, &e.encode(), cas).is_ok() {
                return;
            }
        }
    }

    fn fresh(&self, e: &Entry) -> bool {
        e.state != 0 && self.now_ms.saturating_sub(e.fetched_ms) <= self.cfg.cache_ttl_ms
    }

    /// Seals an encoded record for `id`'s key.
    fn seal_record(&mut self, id: &SessionId, plain: &[u8]) -> Vec<u8> {
        let key = self.s_key(&id.verifier());
        self.cfg.keys.seal(&key, &id.handle(), plain, &mut self.rng)
    }

    /// Takes the `kvs` of a range over `s/<verifier>` (record and last use) into the cache.
    fn absorb_kvs(&mut self, id: &SessionId, kvs: &[Value]) {
        let v = id.verifier();
        let key = self.s_key(&v);
        let activity = format!("{key}/a");
        let mut record: Option<(Session, u64, u64)> = None;
        let mut last_use = 0u64;
        for kv in kvs {
            let k = kv
                .get("key")
                .and_then(Value::as_str)
                .and_then(|k| STANDARD.decode(k).ok());
            let val = kv
                .get("value")
                .and_then(Value::as_str)
                .and_then(|x| STANDARD.decode(x).ok())
                .unwrap_or_default();
            match k {
                Some(k) if k == key.as_bytes() => {
                    let opened = self.cfg.keys.open(&key, &id.handle(), &val).ok();
                    let s = opened
                        .and_then(|p| crate::record::decode(&p))
                        .filter(|s| ct_eq(s.owner.as_bytes(), v.as_bytes()));
                    if let Some(s) = s {
                        let rev = kv.get("mod_revision").and_then(int).unwrap_or(0);
                        let lease = kv.get("lease").and_then(int).unwrap_or(0);
                        record = Some((s, rev, lease));
                    }
                }
                Some(k) if k == activity.as_bytes() => {
                    last_use = std::str::from_utf8(&val)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
        let now = self.now_ms;
        match record {
            Some((mut s, rev, lease)) => {
                s.last_seen = s.last_seen.max(last_use);
                let Some(bytes) = crate::record::encode(&s) else {
                    return;
                };
                self.update_entry(id, &|e| {
                    e.state = 1;
                    e.rev = rev;
                    e.lease = lease;
                    e.fetched_ms = now;
                    e.failed_ms = 0;
                    e.record = bytes.clone();
                });
            }
            None => self.update_entry(id, &|e| {
                *e = Entry {
                    state: 2,
                    fetched_ms: now,
                    owner: std::mem::take(&mut e.owner),
                    ..Entry::default()
                };
            }),
        }
    }

    fn mark_failed(&mut self, id: &SessionId) {
        let now = self.now_ms;
        self.update_entry(id, &|e| e.failed_ms = now);
    }

    /// The request for the current call of `op` (`phase` = what the first call returned).
    fn request(&self, op: &Op, phase: Option<&Phase>) -> Callout {
        let grant = |ttl: u64| self.call("/v3/lease/grant", json!({"TTL": ttl.max(1).to_string()}));
        match (op, phase) {
            (Op::Create { ttl, .. }, None)
            | (Op::Lock { ttl, .. }, None)
            | (Op::Pending { ttl, .. }, None) => grant(*ttl),
            (
                Op::Create {
                    sid, env, index, ..
                },
                Some(Phase::Lease(lease)),
            ) => {
                let key = self.s_key(&sid.verifier());
                let mut success = vec![json!({"request_put": {
                    "key": b64(key.as_bytes()), "value": b64(env), "lease": lease.to_string()}})];
                for k in index {
                    success.push(json!({"request_put": {
                        "key": b64(k.as_bytes()), "value": "", "lease": lease.to_string()}}));
                }
                self.call(
                    "/v3/kv/txn",
                    json!({
                        "compare": [{"target": "CREATE", "result": "EQUAL",
                                     "key": b64(key.as_bytes()), "create_revision": "0"}],
                        "success": success,
                    }),
                )
            }
            (
                Op::Put {
                    sid,
                    env,
                    rev,
                    lease,
                },
                _,
            ) => self.update_txn(sid, env, *rev, *lease, None),
            (
                Op::Lock {
                    sid,
                    env,
                    rev,
                    lease,
                    ..
                },
                Some(Phase::Lease(lock_lease)),
            ) => self.update_txn(sid, env, *rev, *lease, Some((true, *lock_lease))),
            (
                Op::Unlock {
                    sid,
                    env,
                    rev,
                    lease,
                },
                _,
            ) => self.update_txn(sid, env, *rev, *lease, Some((false, 0))),
            (
                Op::Touch {
                    sid,
                    last_seen,
                    lease,
                },
                _,
            ) => {
                let key = format!("{}/a", self.s_key(&sid.verifier()));
                let body = json!({"key": b64(key.as_bytes()),
                                  "value": b64(last_seen.to_string().as_bytes())});
                self.call("/v3/kv/put", with_lease(body, *lease))
            }
            (Op::Delete { verifier, index }, _) => {
                self.deletes_txn(&[(verifier.clone(), index.clone())])
            }
            (Op::Revoke { index_prefix }, None) => self.call(
                "/v3/kv/range",
                json!({"key": b64(index_prefix.as_bytes()),
                       "range_end": b64(&prefix_end(index_prefix)),
                       "keys_only": true, "limit": "1000"}),
            ),
            (Op::Revoke { index_prefix }, Some(Phase::Found(keys))) => {
                let doomed: Vec<(String, Vec<String>)> = keys
                    .iter()
                    .filter_map(|k| {
                        let v = k.strip_prefix(index_prefix.as_str())?;
                        Some((v.to_string(), vec![k.clone()]))
                    })
                    .collect();
                self.deletes_txn(&doomed)
            }
            (Op::Pending { key, env, .. }, Some(Phase::Lease(lease))) => self.call(
                "/v3/kv/put",
                json!({"key": b64(key.as_bytes()), "value": b64(env), "lease": lease.to_string()}),
            ),
            // Unreachable combinations (a phase that an op never has): a harmless read.
            (_, _) => self.call("/v3/maintenance/status", json!({})),
        }
    }

    /// The callout that reads up to [`REVOKE_PAGE`] session records from `from` to the end of
    /// the session keys.
    fn revoke_page_call(&self, from: &str) -> Callout {
        self.call(
            "/v3/kv/range",
            json!({"key": b64(from.as_bytes()),
                   "range_end": b64(&prefix_end(&self.s_key(""))),
                   "limit": REVOKE_PAGE.to_string()}),
        )
    }

    /// A transaction that writes a session compared on `rev`; with `lock`, also takes
    /// (`true`, on the given lease) or releases (`false`) the refresh lock. On a failed compare
    /// it returns the current record and last use.
    fn update_txn(
        &self,
        sid: &SessionId,
        env: &[u8],
        rev: u64,
        lease: u64,
        lock: Option<(bool, u64)>,
    ) -> Callout {
        let v = sid.verifier();
        let key = self.s_key(&v);
        let lkey = format!("{}l/{v}", self.cfg.prefix);
        let put = with_lease(
            json!({"key": b64(key.as_bytes()), "value": b64(env)}),
            lease,
        );
        let mut compare = vec![json!({"target": "MOD", "result": "EQUAL",
                                      "key": b64(key.as_bytes()), "mod_revision": rev.to_string()})];
        let mut success = vec![json!({ "request_put": put })];
        match lock {
            Some((true, lock_lease)) => {
                compare.push(json!({"target": "CREATE", "result": "EQUAL",
                                    "key": b64(lkey.as_bytes()), "create_revision": "0"}));
                success.push(
                    json!({"request_put": {"key": b64(lkey.as_bytes()), "value": "",
                                                    "lease": lock_lease.to_string()}}),
                );
            }
            Some((false, _)) => {
                success.push(json!({"request_delete_range": {"key": b64(lkey.as_bytes())}}));
            }
            None => {}
        }
        self.call(
            "/v3/kv/txn",
            json!({
                "compare": compare,
                "success": success,
                "failure": [{"request_range": {"key": b64(key.as_bytes()),
                                               "range_end": b64(&prefix_end(&key))}}],
            }),
        )
    }

    /// One transaction deleting sessions (record, last use, lock) and the given extra keys.
    fn deletes_txn(&self, doomed: &[(String, Vec<String>)]) -> Callout {
        let mut ops = Vec::new();
        for (v, extra) in doomed {
            let key = self.s_key(v);
            ops.push(json!({"request_delete_range": {"key": b64(key.as_bytes()),
                                                     "range_end": b64(&prefix_end(&key))}}));
            let lkey = format!("{}l/{v}", self.cfg.prefix);
            ops.push(json!({"request_delete_range": {"key": b64(lkey.as_bytes())}}));
            for k in extra {
                ops.push(json!({"request_delete_range": {"key": b64(k.as_bytes())}}));
            }
        }
        self.call("/v3/kv/txn", json!({"success": ops}))
    }

    /// Takes the answer of the current call; returns the op's outcome if it is complete.
    fn take_answer(&mut self, op: &Op, phase: Option<Phase>, result: &CallResult) -> Step2 {
        let Some(v) = answer(result) else {
            return Step2::Done(Outcome::Unavailable);
        };
        let now = self.now_ms;
        match (op, phase) {
            (Op::Create { .. } | Op::Lock { .. } | Op::Pending { .. }, None) => {
                match v.get("ID").and_then(int) {
                    Some(id) if id != 0 && v.get("TTL").is_some() => Step2::Next(Phase::Lease(id)),
                    _ => Step2::Done(Outcome::Unavailable),
                }
            }
            (Op::Create { sid, .. }, Some(Phase::Lease(lease))) => {
                if v.get("succeeded") != Some(&Value::Bool(true)) {
                    // A 128-bit random id already taken: refuse rather than share.
                    return Step2::Done(Outcome::Conflict);
                }
                let rev = revision(&v);
                self.update_entry(sid, &|e| {
                    e.rev = rev;
                    e.lease = lease;
                    e.fetched_ms = now;
                });
                Step2::Done(Outcome::Ok)
            }
            (Op::Put { sid, .. } | Op::Lock { sid, .. } | Op::Unlock { sid, .. }, _) => {
                if v.get("succeeded") == Some(&Value::Bool(true)) {
                    let rev = revision(&v);
                    self.update_entry(sid, &|e| {
                        e.rev = rev;
                        e.fetched_ms = now;
                    });
                    return Step2::Done(Outcome::Ok);
                }
                self.absorb_kvs(sid, &kvs_at(&v, "/responses/0/response_range/kvs"));
                Step2::Done(Outcome::Conflict)
            }
            (Op::Revoke { .. }, None) => {
                let keys: Vec<String> = v
                    .get("kvs")
                    .and_then(Value::as_array)
                    .map(|kvs| {
                        kvs.iter()
                            .filter_map(|kv| kv.get("key").and_then(Value::as_str))
                            .filter_map(|k| STANDARD.decode(k).ok())
                            .filter_map(|k| String::from_utf8(k).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if keys.is_empty() {
                    Step2::Done(Outcome::Ok)
                } else {
                    Step2::Next(Phase::Found(keys))
                }
            }
            _ => Step2::Done(Outcome::Ok),
        }
    }

    fn queue(&mut self, op: Op) {
        self.outbox.push(op);
    }

    /// The etcd key of a pending login: a hash of its `state` and of its flow cookie's hash,
    /// so that only the browser holding the flow cookie can name (and take) it.
    fn pending_key(&self, state: &str, flow_hash: &str) -> String {
        let mut both = String::with_capacity(state.len() + 1 + flow_hash.len());
        both.push_str(state);
        both.push('\n');
        both.push_str(flow_hash);
        format!(
            "{}p/{}",
            self.cfg.prefix,
            short_hash("bffgate-state:", &both)
        )
    }
}

enum Step2 {
    Next(Phase),
    Done(Outcome),
}

impl<D: SharedData, R: Random> Store for EtcdStore<'_, D, R> {
    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)> {
        let (e, cas) = self.entry(id)?;
        if e.state != 1 {
            return None;
        }
        let s = crate::record::decode(&e.record)?;
        Some((s, cas))
    }

    fn get_session_raw(&self, id: &SessionId) -> Option<(Vec<u8>, Cas)> {
        // Only fresh entries: a stale one takes the full path, which fetches it again.
        let (v, cas) = self.local.data.get(&cache_key(self.slot(id)));
        let mut v = v?;
        let (e, at) = Entry::head(&v)?;
        if e.state != 1 || !self.fresh(&e) || !ct_eq(&e.owner, &id.verifier_bytes()) {
            return None;
        }
        v.drain(..at);
        Some((v, cas?))
    }

    fn put_session(&mut self, id: &SessionId, s: &Session, cas: Cas) -> Result<(), StoreError> {
        let (mut e, _) = self.entry(id).ok_or(StoreError::NotFound)?;
        let old = crate::record::decode(&e.record).ok_or(StoreError::NotFound)?;
        let mut rec = s.clone();
        rec.owner = id.verifier();
        let bytes = crate::record::encode(&rec).ok_or(StoreError::Unavailable)?;
        let mut same_but_touch = rec.clone();
        same_but_touch.last_seen = old.last_seen;
        // Only a last-use change: no record write to etcd, so nothing to seal.
        let env = (same_but_touch != old).then(|| self.seal_record(id, &bytes));
        e.record = bytes;
        self.local
            .data
            .set(&cache_key(self.slot(id)), &e.encode(), Some(cas))?;
        let now = self.now_s();
        let Some(env) = env else {
            self.queue(Op::Touch {
                sid: id.clone(),
                last_seen: rec.last_seen,
                lease: e.lease,
            });
            return Ok(());
        };
        let held = old.refreshing_until > now;
        let op = if rec.refreshing_until > now && rec.refreshing_until != old.refreshing_until {
            if held {
                // The holder extends its own lock (renewal then exchange).
                Op::Put {
                    sid: id.clone(),
                    env,
                    rev: e.rev,
                    lease: e.lease,
                }
            } else {
                Op::Lock {
                    sid: id.clone(),
                    env,
                    rev: e.rev,
                    lease: e.lease,
                    ttl: self.lock_ttl,
                }
            }
        } else if old.refreshing_until != 0 && rec.refreshing_until == 0 {
            Op::Unlock {
                sid: id.clone(),
                env,
                rev: e.rev,
                lease: e.lease,
            }
        } else {
            Op::Put {
                sid: id.clone(),
                env,
                rev: e.rev,
                lease: e.lease,
            }
        };
        self.queue(op);
        Ok(())
    }

    fn create_session(
        &mut self,
        s: &Session,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<(SessionId, Option<Evicted>), StoreError> {
        let slot = random_u32(rng) % self.slots;
        let id = SessionId::generate(rng, slot);
        let mut rec = s.clone();
        rec.owner = id.verifier();
        rec.handle = id.handle();
        let bytes = crate::record::encode(&rec).ok_or(StoreError::Unavailable)?;
        let env = self.seal_record(&id, &bytes);
        let index = self.index_keys(&rec, &rec.owner);
        let now_ms = self.now_ms;
        // The cache slot is taken over: whoever held it is only a cache miss away.
        self.update_entry(&id, &|e| {
            *e = Entry {
                state: 1,
                fetched_ms: now_ms,
                owner: std::mem::take(&mut e.owner),
                record: bytes.clone(),
                ..Entry::default()
            };
        });
        self.queue(Op::Create {
            sid: id.clone(),
            env,
            ttl: rec.expires.saturating_sub(now).max(1),
            index,
        });
        Ok((id, None))
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        let index = self
            .get_session(id)
            .map(|(s, _)| self.index_keys(&s, &id.verifier()))
            .unwrap_or_default();
        let now = self.now_ms;
        self.update_entry(id, &|e| {
            *e = Entry {
                state: 2,
                fetched_ms: now,
                owner: std::mem::take(&mut e.owner),
                ..Entry::default()
            };
        });
        self.queue(Op::Delete {
            verifier: id.verifier(),
            index,
        });
        Ok(())
    }

    fn create_pending(
        &mut self,
        p: &PendingLogin,
        rng: &mut dyn Random,
        _now: u64,
    ) -> Result<String, StoreError> {
        if !self.take_login_slot() {
            return Err(StoreError::Full);
        }
        let state = format!("f.{}", random_token(rng, 32));
        let mut rec = p.clone();
        rec.state_hash = hex(&sha256(state.as_bytes()));
        let plain = serde_json::to_vec(&rec).map_err(|_| StoreError::Unavailable)?;
        let key = self.pending_key(&state, &rec.flow_hash);
        let env = self
            .cfg
            .keys
            .seal(&key, &rec.state_hash, &plain, &mut self.rng);
        self.queue(Op::Pending {
            key,
            env,
            ttl: self.login_ttl,
        });
        Ok(state)
    }

    fn take_pending(&mut self, state: &str, flow_hash: &str) -> Option<PendingLogin> {
        let i = self
            .taken
            .iter()
            .position(|(s, p)| s == state && ct_eq(p.flow_hash.as_bytes(), flow_hash.as_bytes()))?;
        let (_, p) = self.taken.swap_remove(i);
        Some(p)
    }

    fn delete_where(&mut self, pred: &dyn Fn(&Session) -> bool) -> Vec<Session> {
        let mut ended = Vec::new();
        let now = self.now_ms;
        for i in 0..self.slots {
            let key = cache_key(i);
            let (v, cas) = self.local.data.get(&key);
            let Some(e) = v.and_then(|v| Entry::decode(&v)) else {
                continue;
            };
            let Some(s) = (e.state == 1)
                .then(|| crate::record::decode(&e.record))
                .flatten()
            else {
                continue;
            };
            if !pred(&s) {
                continue;
            }
            let tomb = Entry {
                state: 2,
                fetched_ms: now,
                owner: e.owner.clone(),
                ..Entry::default()
            };
            if self.local.data.set(&key, &tomb.encode(), cas).is_ok() {
                let index = self.index_keys(&s, &s.owner);
                self.outbox.push(Op::Delete {
                    verifier: s.owner.clone(),
                    index,
                });
                ended.push(s);
            }
        }
        ended
    }

    fn count_live_of(&self, sub: &str, now: u64) -> usize {
        self.count_where(&|s: &Session| {
            s.sub == sub
                && s.liveness(now, self.local.limits.idle_s) == crate::session::Liveness::Live
        })
    }

    fn take_scan_budget(&mut self, kind: ScanKind, now: u64) -> bool {
        self.local.take_scan_budget(kind, now)
    }

    fn doc(&self, kind: Doc) -> Option<(Vec<u8>, u64)> {
        self.local.doc(kind)
    }

    fn set_doc(&mut self, kind: Doc, doc: &[u8], now: u64) {
        self.local.set_doc(kind, doc, now);
    }

    fn remember_jti(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        self.local.remember_jti(jti, exp, now)
    }

    fn note_ended(&mut self, handle: &str, reason: &str, until: u64, now: u64) {
        self.local.note_ended(handle, reason, until, now)
    }

    fn ended_reason(&self, handle: &str, now: u64) -> Option<String> {
        self.local.ended_reason(handle, now)
    }

    fn state_of(&self, id: &SessionId) -> RemoteState {
        let Some((e, _)) = self.entry(id) else {
            return RemoteState::Stale;
        };
        if self.fresh(&e) {
            return RemoteState::Current;
        }
        let last_failed = e.failed_ms != 0 && e.failed_ms >= e.fetched_ms;
        if !last_failed || self.now_ms.saturating_sub(e.failed_ms) > RETRY_AFTER_FAILURE_MS {
            // Read it again (also after a failure long enough ago: etcd may be back).
            return RemoteState::Stale;
        }
        // etcd just failed. Serve what is cached only if so configured and young enough.
        let serve = self.cfg.when_unavailable == WhenUnavailable::ServeCached
            && e.state == 1
            && self.now_ms.saturating_sub(e.fetched_ms) <= self.cfg.serve_cached_max_ms;
        if serve {
            RemoteState::Current
        } else {
            RemoteState::Unavailable
        }
    }

    fn remote(&mut self) -> Option<&mut dyn RemoteSync> {
        Some(self)
    }
}

impl<D: SharedData, R: Random> RemoteSync for EtcdStore<'_, D, R> {
    fn stale_for_wait(&self, id: &SessionId) -> bool {
        match self.entry(id) {
            None => true,
            Some((e, _)) => {
                self.now_ms.saturating_sub(e.fetched_ms) > WAIT_REREAD_MS
                    && self.now_ms.saturating_sub(e.failed_ms) > RETRY_AFTER_FAILURE_MS
            }
        }
    }

    fn fetch_session(&mut self, id: &SessionId) -> Callout {
        let key = self.s_key(&id.verifier());
        self.call(
            "/v3/kv/range",
            json!({"key": b64(key.as_bytes()), "range_end": b64(&prefix_end(&key))}),
        )
    }

    fn absorb(&mut self, id: &SessionId, result: &CallResult) {
        match answer(result) {
            Some(v) => self.absorb_kvs(id, &kvs_at(&v, "/kvs")),
            None => self.mark_failed(id),
        }
    }

    fn fetch_pending(&mut self, state: &str, flow_hash: &str) -> Callout {
        // The key needs the flow cookie too: a take with only the `state` deletes nothing.
        let key = self.pending_key(state, flow_hash);
        self.call(
            "/v3/kv/deleterange",
            json!({"key": b64(key.as_bytes()), "prev_kv": true}),
        )
    }

    fn absorb_pending(&mut self, state: &str, flow_hash: &str, result: &CallResult) {
        let key = self.pending_key(state, flow_hash);
        let hash = hex(&sha256(state.as_bytes()));
        let value = answer(result)
            .and_then(|v| v.pointer("/prev_kvs/0/value").cloned())
            .and_then(|v| v.as_str().and_then(|x| STANDARD.decode(x).ok()));
        let p = value
            .and_then(|env| self.cfg.keys.open(&key, &hash, &env).ok())
            .and_then(|plain| serde_json::from_slice::<PendingLogin>(&plain).ok())
            .filter(|p| ct_eq(p.state_hash.as_bytes(), hash.as_bytes()));
        if let Some(p) = p {
            self.taken.push((state.to_string(), p));
        }
    }

    fn start_revoke_all(&mut self) -> Callout {
        let now = self.now_ms;
        for i in 0..self.slots {
            let key = cache_key(i);
            for _ in 0..RETRIES {
                let (v, cas) = self.local.data.get(&key);
                let Some(e) = v.and_then(|v| Entry::decode(&v)).filter(|e| e.state == 1) else {
                    break;
                };
                let tomb = Entry {
                    state: 2,
                    fetched_ms: now,
                    owner: e.owner,
                    ..Entry::default()
                };
                if self.local.data.set(&key, &tomb.encode(), cas).is_ok() {
                    break;
                }
            }
        }
        self.revoke_page_call(&self.s_key(""))
    }

    fn next_revoke_page(&mut self, after: &str) -> Callout {
        // The smallest key after `after`.
        self.revoke_page_call(&format!("{after}\0"))
    }

    fn revoke_page(&mut self, result: &CallResult) -> Result<RevokePage, StoreError> {
        let v = answer(result).ok_or(StoreError::Unavailable)?;
        let base = self.s_key("");
        let mut sessions = Vec::new();
        let mut doomed = Vec::new();
        let mut unopened = 0;
        let mut last = None;
        for kv in kvs_at(&v, "/kvs") {
            let Some(key) = kv
                .get("key")
                .and_then(Value::as_str)
                .and_then(|k| STANDARD.decode(k).ok())
                .and_then(|k| String::from_utf8(k).ok())
            else {
                continue;
            };
            last = Some(key.clone());
            // `s/<verifier>` only (not its `s/<verifier>/a` last use).
            let Some(verifier) = key.strip_prefix(&base).filter(|v| !v.contains('/')) else {
                continue;
            };
            let val = kv
                .get("value")
                .and_then(Value::as_str)
                .and_then(|x| STANDARD.decode(x).ok())
                .unwrap_or_default();
            let opened = self.cfg.keys.open_any(&key, &val).ok().and_then(|(h, p)| {
                let mut s = crate::record::decode(&p)?;
                s.handle = h;
                Some(s).filter(|s| ct_eq(s.owner.as_bytes(), verifier.as_bytes()))
            });
            match opened {
                Some(s) => {
                    doomed.push((verifier.to_string(), self.index_keys(&s, verifier)));
                    sessions.push(s);
                }
                None => {
                    unopened += 1;
                    doomed.push((verifier.to_string(), Vec::new()));
                }
            }
        }
        let more = v.get("more") == Some(&Value::Bool(true));
        Ok(RevokePage {
            sessions,
            unopened,
            delete: (!doomed.is_empty()).then(|| self.deletes_txn(&doomed)),
            next: if more { last } else { None },
        })
    }

    fn read_ring_head(&mut self) -> Callout {
        let key = format!("{}ring_head", self.cfg.prefix);
        self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))
    }

    fn ring_head_of(&mut self, result: &CallResult) -> Result<(Vec<String>, u64), StoreError> {
        let v = answer(result).ok_or(StoreError::Unavailable)?;
        let Some(kv) = kvs_at(&v, "/kvs").into_iter().next() else {
            return Ok((Vec::new(), 0));
        };
        let value = kv
            .get("value")
            .and_then(Value::as_str)
            .and_then(|x| STANDARD.decode(x).ok())
            .unwrap_or_default();
        let list = String::from_utf8_lossy(&value)
            .split_whitespace()
            .take(RING_HISTORY)
            .map(str::to_string)
            .collect();
        Ok((list, kv.get("mod_revision").and_then(int).unwrap_or(0)))
    }

    fn claim_ring_head(&mut self, list: &[String], rev: u64) -> Callout {
        let key = format!("{}ring_head", self.cfg.prefix);
        let compare = if rev == 0 {
            json!({"target": "CREATE", "result": "EQUAL", "key": b64(key.as_bytes()),
                   "create_revision": "0"})
        } else {
            json!({"target": "MOD", "result": "EQUAL", "key": b64(key.as_bytes()),
                   "mod_revision": rev.to_string()})
        };
        let from = list.len().saturating_sub(RING_HISTORY);
        let value = list.get(from..).unwrap_or(&[]).join(" ");
        self.call(
            "/v3/kv/txn",
            json!({"compare": [compare],
                   "success": [{"request_put": {"key": b64(key.as_bytes()),
                                                "value": b64(value.as_bytes())}}]}),
        )
    }

    fn claimed(&mut self, result: &CallResult) -> Result<bool, StoreError> {
        let v = answer(result).ok_or(StoreError::Unavailable)?;
        Ok(v.get("succeeded") == Some(&Value::Bool(true)))
    }

    fn revoke_everywhere(&mut self, sub: Option<&str>, sid: Option<&str>) {
        // The index of the narrower claim: `sid` names one login session at the provider.
        // Under every key of the ring: entries made before a key rotation are found too.
        let (kind, tag, value) = match (sid, sub) {
            (Some(sid), _) => ("i", "sid", sid),
            (None, Some(sub)) => ("u", "sub", sub),
            (None, None) => return,
        };
        for name in self.cfg.keys.index_names(tag, value) {
            let prefix = format!("{}{kind}/{name}/", self.cfg.prefix);
            if !self
                .outbox
                .iter()
                .any(|o| matches!(o, Op::Revoke { index_prefix } if *index_prefix == prefix))
            {
                self.outbox.push(Op::Revoke {
                    index_prefix: prefix,
                });
            }
        }
    }

    fn take_outbox(&mut self) -> Option<Outbox> {
        if self.outbox.is_empty() {
            return None;
        }
        let ops = std::mem::take(&mut self.outbox);
        let critical = ops.iter().any(Op::critical);
        Some(Outbox {
            ops,
            next: 0,
            phase: None,
            outcome: Outcome::Ok,
            critical,
        })
    }

    fn advance(&mut self, ob: &mut Outbox, result: Option<&CallResult>) -> Flush {
        if let Some(result) = result {
            let Some(op) = ob.ops.get(ob.next).cloned() else {
                return Flush::Done(ob.outcome);
            };
            match self.take_answer(&op, ob.phase.take(), result) {
                Step2::Next(p) => ob.phase = Some(p),
                Step2::Done(o) => {
                    if op.critical() {
                        ob.outcome = ob.outcome.max(o);
                    }
                    ob.next += 1;
                    if o == Outcome::Unavailable && op.critical() {
                        // etcd is down: do not queue the rest behind more timeouts.
                        return Flush::Done(ob.outcome);
                    }
                }
            }
        }
        match ob.ops.get(ob.next) {
            Some(op) => Flush::Call(self.request(op, ob.phase.as_ref())),
            None => Flush::Done(ob.outcome),
        }
    }
}
