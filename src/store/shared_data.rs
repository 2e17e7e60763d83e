//! The embedded store: a bounded table of sessions over proxy-wasm shared data.
//!
//! Shared data is per Envoy process and visible to every worker's VM. It offers get and
//! set-with-CAS only: no delete, no TTL, no key listing, and a CAS is only checked against an
//! existing key (there is no insert-if-absent). So the store is a **fixed table of slots**
//! (`bffgate:s:<i>` for `i < max_sessions`, `bffgate:p:<i>` for pending logins), created empty
//! once at configuration time. A session id carries its slot; the slot's record carries a hash
//! of the id's random part, compared in constant time. Claiming a slot, updating it and
//! emptying it are all CAS writes on an existing key, so two workers never hand out the same
//! slot and never lose each other's update. Memory is bounded by the number of slots: expired,
//! idle, logged-out and revoked sessions leave an empty or reclaimable slot behind.
//!
//! When no slot is free among those sampled, the configured policy decides: evict the least
//! recently used of the sampled sessions (default), or refuse the login.

use super::{
    random_u32, Cas, Doc, Evicted, PendingLogin, Replaced, ScanKind, SharedData, Store, StoreError,
    EPOCH_SHARDS, FREE_SEARCH, SAMPLE,
};
use crate::config::{Limits, WhenFull};
use crate::session::{Liveness, Session, SessionId};
use crate::util::{ct_eq, hex, random_token, sha256, Random};

/// Keys of the cached provider documents.
fn doc_key(kind: Doc) -> &'static str {
    match kind {
        Doc::Jwks => "bffgate:jwks",
        Doc::Discovery => "bffgate:discovery",
        Doc::DiscoveryAttempt => "bffgate:discovery:attempt",
    }
}
/// Number of occupied session slots (kept with CAS; recounted now and then).
const SESSIONS_KEY: &str = "bffgate:n:sessions";
/// Number of occupied pending-login slots.
const PENDING_KEY: &str = "bffgate:n:pending";
const JTI_KEY: &str = "bffgate:jti";
/// Why sessions were ended by bffgate itself: `[(handle, reason, until)]`, bounded.
const ENDED_KEY: &str = "bffgate:ended";
/// Most remembered ended sessions.
pub const MAX_ENDED: usize = 256;
/// When the operator API last scanned the store (unix seconds).
const SCAN_KEY: &str = "bffgate:admin:scan";
/// When a front-channel logout last scanned the store (unix seconds).
const FRONTCHANNEL_SCAN_KEY: &str = "bffgate:fcl:scan";
/// Most logout-token ids remembered at once (oldest expire first).
pub const MAX_JTI: usize = 512;

/// The embedded store: a slot table in shared data.
pub struct SharedStore<D> {
    /// The host surface.
    pub data: D,
    /// Sizes and policies.
    pub limits: Limits,
    /// CAS conflicts met (each one a retry or a lost race), for metrics.
    pub cas_conflicts: std::cell::Cell<u32>,
    /// Fast-path reads the VM's record cache could not answer (read from shared data), for
    /// metrics.
    pub cache_misses: std::cell::Cell<u32>,
}

impl<D> SharedStore<D> {
    /// A store over `data`.
    pub fn new(data: D, limits: Limits) -> Self {
        SharedStore {
            data,
            limits,
            cas_conflicts: std::cell::Cell::new(0),
            cache_misses: std::cell::Cell::new(0),
        }
    }
}

/// Keys of session slots: this, then the slot number.
const SESSION_PREFIX: &str = "bffgate:s:";

fn session_key(slot: u32) -> String {
    format!("{SESSION_PREFIX}{slot}")
}

/// The slot of a session slot's key.
fn slot_of_key(key: &str) -> Option<u32> {
    key.strip_prefix(SESSION_PREFIX)?.parse().ok()
}

/// [`session_key`] written into `buf` (no allocation: the per-request read).
fn session_key_in(slot: u32, buf: &mut [u8; 24]) -> &str {
    const PREFIX: &[u8] = SESSION_PREFIX.as_bytes();
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut n = slot;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = digits.get(start..).unwrap_or(&[]);
    let len = PREFIX.len() + digits.len();
    for (dst, src) in buf.iter_mut().zip(PREFIX.iter().chain(digits)) {
        *dst = *src;
    }
    std::str::from_utf8(buf.get(..len).unwrap_or(&[])).unwrap_or("")
}

fn pending_key(slot: u32) -> String {
    format!("bffgate:p:{slot}")
}

/// Bounded CAS retries.
const RETRIES: usize = 4;

impl<D: SharedData> SharedStore<D> {
    /// `data.set`, counting CAS conflicts.
    fn cas_set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        let r = self.data.set(key, value, cas);
        match r {
            Err(StoreError::CasMismatch) => self
                .cas_conflicts
                .set(self.cas_conflicts.get().saturating_add(1)),
            // After the write: a reader that still sees the old count may use its copy, which
            // was true until this write (the request raced it); any later reader reads again.
            Ok(()) => {
                if let Some(slot) = slot_of_key(key) {
                    self.data.bump(slot % EPOCH_SHARDS);
                }
            }
            Err(_) => {}
        }
        r
    }

    /// Writes a new session into `slot` (read with `cas`) under a fresh id for that slot.
    fn claim(
        &mut self,
        slot: u32,
        cas: Cas,
        s: &Session,
        rng: &mut dyn Random,
    ) -> Result<SessionId, StoreError> {
        let id = SessionId::generate(rng, slot);
        let mut rec = s.clone();
        rec.owner = id.verifier();
        rec.handle = id.handle();
        let v = crate::record::encode(&rec).ok_or(StoreError::Unavailable)?;
        self.cas_set(&session_key(slot), &v, Some(cas))?;
        Ok(id)
    }

    /// Creates every slot (empty) that does not exist yet. Run once at configuration time,
    /// before traffic: afterwards every claim is a CAS on an existing key.
    pub fn init_slots(&mut self) {
        for i in 0..self.limits.max_sessions {
            let k = session_key(i);
            if self.data.get(&k).1.is_none() {
                let _ = self.cas_set(&k, b"", None);
            }
        }
        for i in 0..self.limits.max_pending {
            let k = pending_key(i);
            if self.data.get(&k).1.is_none() {
                let _ = self.cas_set(&k, b"", None);
            }
        }
        if self.data.get(JTI_KEY).1.is_none() {
            let _ = self.cas_set(JTI_KEY, b"[]", None);
        }
        for k in [SESSIONS_KEY, PENDING_KEY] {
            if self.data.get(k).1.is_none() {
                let _ = self.data.set(k, b"0", None);
            }
        }
    }

    fn read_counter(&self, key: &str) -> (u64, Option<Cas>) {
        let (v, cas) = self.data.get(key);
        let n = v
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        (n, cas)
    }

    /// Adds `delta` to an occupancy counter (CAS, bounded retries, never below zero).
    fn adjust(&mut self, key: &str, delta: i64) {
        for _ in 0..RETRIES {
            let (n, cas) = self.read_counter(key);
            let next = n.saturating_add_signed(delta);
            if self.cas_set(key, next.to_string().as_bytes(), cas).is_ok() {
                return;
            }
        }
    }

    /// Occupied session and pending-login slots, from the counters (one read each): the
    /// gauges. Dead sessions count until the sweep empties their slot.
    pub fn occupancy(&self) -> (u64, u64) {
        (
            self.read_counter(SESSIONS_KEY).0,
            self.read_counter(PENDING_KEY).0,
        )
    }

    /// Recounts occupied slots with a full scan and resets the counters (corrects drift from a
    /// VM that died between a slot write and its counter update).
    pub fn recount(&mut self) -> (u64, u64) {
        let sessions = (0..self.limits.max_sessions)
            .filter(|i| {
                self.data
                    .get(&session_key(*i))
                    .0
                    .is_some_and(|v| !v.is_empty())
            })
            .count() as u64;
        let pending = (0..self.limits.max_pending)
            .filter(|i| {
                self.data
                    .get(&pending_key(*i))
                    .0
                    .is_some_and(|v| !v.is_empty())
            })
            .count() as u64;
        let _ = self
            .data
            .set(SESSIONS_KEY, sessions.to_string().as_bytes(), None);
        let _ = self
            .data
            .set(PENDING_KEY, pending.to_string().as_bytes(), None);
        (sessions, pending)
    }

    fn read_session(&self, slot: u32) -> (Option<Session>, Option<Cas>) {
        let (v, cas) = self.data.get(&session_key(slot));
        let s = v
            .filter(|v| !v.is_empty())
            .and_then(|v| crate::record::decode(&v));
        (s, cas)
    }

    fn dead(&self, s: &Session, now: u64) -> bool {
        s.liveness(now, self.limits.idle_s) != Liveness::Live
    }

    /// Empties up to `count` slots of dead sessions and expired pending logins from `from`;
    /// returns the next position and how many sessions were reclaimed.
    pub fn sweep(&mut self, from: u32, count: u32, now: u64) -> (u32, Vec<Session>) {
        let n = self.limits.max_sessions.max(1);
        let mut reclaimed = Vec::new();
        for k in 0..count.min(n) {
            let i = from.wrapping_add(k) % n;
            let (s, cas) = self.read_session(i);
            if let (Some(s), Some(cas)) = (s, cas) {
                if self.dead(&s, now) && self.cas_set(&session_key(i), b"", Some(cas)).is_ok() {
                    self.adjust(SESSIONS_KEY, -1);
                    reclaimed.push(s);
                }
            }
            if i < self.limits.max_pending {
                let (v, cas) = self.data.get(&pending_key(i));
                let expired = v
                    .filter(|v| !v.is_empty())
                    .and_then(|v| serde_json::from_slice::<PendingLogin>(&v).ok())
                    .is_some_and(|p| p.expires <= now);
                if let (true, Some(cas)) = (expired, cas) {
                    if self.cas_set(&pending_key(i), b"", Some(cas)).is_ok() {
                        self.adjust(PENDING_KEY, -1);
                    }
                }
            }
        }
        (from.wrapping_add(count.min(n)) % n, reclaimed)
    }

    /// Counts the sessions for which `pred` is true (a full scan with JSON decodes: tests).
    pub fn count_where(&self, pred: &dyn Fn(&Session) -> bool) -> usize {
        (0..self.limits.max_sessions)
            .filter(|i| self.read_session(*i).0.is_some_and(|s| pred(&s)))
            .count()
    }

    /// Live sessions and pending logins (a full scan: for gauges and the soak test).
    pub fn count(&self, now: u64) -> (u32, u32) {
        let mut live = 0;
        for i in 0..self.limits.max_sessions {
            if let (Some(s), _) = self.read_session(i) {
                if !self.dead(&s, now) {
                    live += 1;
                }
            }
        }
        let mut pending = 0;
        for i in 0..self.limits.max_pending {
            let (v, _) = self.data.get(&pending_key(i));
            let live_p = v
                .filter(|v| !v.is_empty())
                .and_then(|v| serde_json::from_slice::<PendingLogin>(&v).ok())
                .is_some_and(|p| p.expires > now);
            if live_p {
                pending += 1;
            }
        }
        (live, pending)
    }
}

impl<D: SharedData> Store for SharedStore<D> {
    fn get_session_raw(&self, id: &SessionId) -> Option<(Vec<u8>, Cas)> {
        if id.slot() >= self.limits.max_sessions {
            return None;
        }
        let slot = id.slot();
        let mut buf = [0u8; 24];
        let key = session_key_in(slot, &mut buf);
        // The shard's count first, then the record: a copy is never newer than its count.
        let cached = self
            .data
            .records()
            .zip(self.data.epoch(slot % EPOCH_SHARDS));
        if let Some((cache, epoch)) = cached {
            if let Some(hit) = cache.get(slot, epoch) {
                return Some(hit);
            }
            self.cache_misses
                .set(self.cache_misses.get().saturating_add(1));
        }
        let (v, cas) = self.data.get(key);
        let (v, cas) = (v.filter(|v| !v.is_empty())?, cas?);
        if let Some((cache, epoch)) = cached {
            cache.put(slot, epoch, &v, cas);
        }
        Some((v, cas))
    }

    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)> {
        if id.slot() >= self.limits.max_sessions {
            return None;
        }
        let (s, cas) = self.read_session(id.slot());
        let s = s?;
        if !ct_eq(s.owner.as_bytes(), id.verifier().as_bytes()) {
            return None;
        }
        Some((s, cas?))
    }

    fn put_session(&mut self, id: &SessionId, s: &Session, cas: Cas) -> Result<(), StoreError> {
        if id.slot() >= self.limits.max_sessions {
            return Err(StoreError::NotFound);
        }
        let mut rec = s.clone();
        rec.owner = id.verifier();
        let v = crate::record::encode(&rec).ok_or(StoreError::Unavailable)?;
        self.cas_set(&session_key(id.slot()), &v, Some(cas))
    }

    fn create_session(
        &mut self,
        s: &Session,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<(SessionId, Option<Evicted>), StoreError> {
        let n = self.limits.max_sessions;
        if n == 0 {
            return Err(StoreError::Full);
        }
        for _ in 0..RETRIES {
            let start = random_u32(rng) % n;
            // Least recently used live session among the first SAMPLE looked at: (slot, CAS,
            // last use).
            let mut lru: Option<(u32, Cas, u64)> = None;
            // A free (empty or dead) slot wins. The look is bounded (FREE_SEARCH slots) and
            // reads only each record's binary head: a full table costs a login a few hundred
            // short reads, never a scan and JSON decode of every slot.
            for k in 0..n.min(FREE_SEARCH) {
                let slot = (start + k) % n;
                let (v, cas) = self.data.get(&session_key(slot));
                let Some(cas) = cas else { continue };
                let head = v
                    .as_deref()
                    .filter(|v| !v.is_empty())
                    .and_then(crate::record::Head::parse)
                    .map(|h| (h.last_seen, h.expires));
                let live = head.filter(|&(last_seen, expires)| {
                    now < expires && now < last_seen.saturating_add(self.limits.idle_s)
                });
                let Some((last_seen, _)) = live else {
                    match self.claim(slot, cas, s, rng) {
                        Ok(id) => {
                            // A dead session not swept yet: its end is recorded now (decoded
                            // only here, for its audit line).
                            let dead = v
                                .as_deref()
                                .filter(|v| !v.is_empty())
                                .and_then(crate::record::decode)
                                .map(|d| Evicted {
                                    why: if now >= d.expires {
                                        Replaced::Expired
                                    } else {
                                        Replaced::Idle
                                    },
                                    handle: d.handle,
                                    sub: d.sub,
                                });
                            if v.as_deref().is_none_or(<[u8]>::is_empty) {
                                self.adjust(SESSIONS_KEY, 1);
                            }
                            return Ok((id, dead));
                        }
                        Err(StoreError::CasMismatch) => continue,
                        Err(e) => return Err(e),
                    }
                };
                if k < SAMPLE && lru.is_none_or(|(_, _, l)| last_seen < l) {
                    lru = Some((slot, cas, last_seen));
                }
            }
            if self.limits.when_full == WhenFull::Refuse {
                return Err(StoreError::Full);
            }
            if let Some((slot, cas, _)) = lru {
                // Only the victim's record is decoded, for its audit line.
                let victim = self.read_session(slot).0;
                match self.claim(slot, cas, s, rng) {
                    Ok(id) => {
                        let evicted = victim.map(|v| Evicted {
                            handle: v.handle,
                            sub: v.sub,
                            why: Replaced::Evicted,
                        });
                        return Ok((id, evicted));
                    }
                    Err(StoreError::CasMismatch) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Err(StoreError::Full)
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        for _ in 0..RETRIES {
            let Some((_, cas)) = self.get_session(id) else {
                return Err(StoreError::NotFound);
            };
            match self.cas_set(&session_key(id.slot()), b"", Some(cas)) {
                Err(StoreError::CasMismatch) => continue,
                Ok(()) => {
                    self.adjust(SESSIONS_KEY, -1);
                    return Ok(());
                }
                r => return r,
            }
        }
        Err(StoreError::CasMismatch)
    }

    fn create_pending(
        &mut self,
        p: &PendingLogin,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<String, StoreError> {
        let n = self.limits.max_pending;
        if n == 0 {
            return Err(StoreError::Full);
        }
        for _ in 0..RETRIES {
            let start = random_u32(rng) % n;
            let mut oldest: Option<(u32, Cas, u64)> = None;
            let mut target = None;
            let mut was_empty = false;
            for k in 0..SAMPLE.min(n) {
                let slot = (start + k) % n;
                let (v, cas) = self.data.get(&pending_key(slot));
                let Some(cas) = cas else { continue };
                let cur = v
                    .filter(|v| !v.is_empty())
                    .and_then(|v| serde_json::from_slice::<PendingLogin>(&v).ok());
                match cur {
                    Some(c) if c.expires > now => {
                        if oldest.is_none_or(|(_, _, e)| c.expires < e) {
                            oldest = Some((slot, cas, c.expires));
                        }
                    }
                    other => {
                        was_empty = other.is_none();
                        target = Some((slot, cas));
                        break;
                    }
                }
            }
            // A full table of unexpired logins: the oldest one gives way (an abandoned login
            // is far likelier than a 10-minute-old one about to complete).
            let Some((slot, cas)) = target.or(oldest.map(|(s, c, _)| (s, c))) else {
                return Err(StoreError::Full);
            };
            let state = format!("{slot}.{}", random_token(rng, 32));
            let mut rec = p.clone();
            rec.state_hash = hex(&sha256(state.as_bytes()));
            let v = serde_json::to_vec(&rec).map_err(|_| StoreError::Unavailable)?;
            match self.cas_set(&pending_key(slot), &v, Some(cas)) {
                Ok(()) => {
                    if was_empty {
                        self.adjust(PENDING_KEY, 1);
                    }
                    return Ok(state);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::CasMismatch)
    }

    fn take_pending(&mut self, state: &str, flow_hash: &str) -> Option<PendingLogin> {
        let slot: u32 = state.split_once('.')?.0.parse().ok()?;
        if slot >= self.limits.max_pending {
            return None;
        }
        let key = pending_key(slot);
        let (v, cas) = self.data.get(&key);
        let p: PendingLogin = serde_json::from_slice(&v.filter(|v| !v.is_empty())?).ok()?;
        if !ct_eq(
            p.state_hash.as_bytes(),
            hex(&sha256(state.as_bytes())).as_bytes(),
        ) {
            return None;
        }
        // Another browser's flow cookie: leave the login where it is.
        if !ct_eq(p.flow_hash.as_bytes(), flow_hash.as_bytes()) {
            return None;
        }
        // Consume first, with CAS: of two concurrent callbacks only one wins.
        self.cas_set(&key, b"", Some(cas?)).ok()?;
        self.adjust(PENDING_KEY, -1);
        Some(p)
    }

    fn count_live_of(&self, sub: &str, now: u64) -> usize {
        // From each record's binary head: no JSON decode per slot.
        (0..self.limits.max_sessions)
            .filter(|i| {
                let v = self.data.get(&session_key(*i)).0;
                v.as_deref()
                    .and_then(crate::record::Head::parse)
                    .is_some_and(|h| {
                        h.sub == sub
                            && now < h.expires
                            && now < h.last_seen.saturating_add(self.limits.idle_s)
                    })
            })
            .count()
    }

    fn take_scan_budget(&mut self, kind: ScanKind, now: u64) -> bool {
        let key = match kind {
            ScanKind::Operator => SCAN_KEY,
            ScanKind::FrontChannel => FRONTCHANNEL_SCAN_KEY,
        };
        let (v, cas) = self.data.get(key);
        let last = v
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        now > last && self.cas_set(key, now.to_string().as_bytes(), cas).is_ok()
    }

    fn doc(&self, kind: Doc) -> Option<(Vec<u8>, u64)> {
        let (v, _) = self.data.get(doc_key(kind));
        let v = v?;
        let (ts, doc) = (v.get(..8)?, v.get(8..)?);
        let fetched = u64::from_be_bytes(<[u8; 8]>::try_from(ts).ok()?);
        Some((doc.to_vec(), fetched))
    }

    fn set_doc(&mut self, kind: Doc, doc: &[u8], now: u64) {
        let mut v = now.to_be_bytes().to_vec();
        v.extend_from_slice(doc);
        let _ = self.cas_set(doc_key(kind), &v, None);
    }

    fn remember_jti(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        let h = hex(sha256(jti.as_bytes()).get(..16).unwrap_or(&[]));
        for _ in 0..RETRIES {
            let (v, cas) = self.data.get(JTI_KEY);
            let mut list: Vec<(String, u64)> = v
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            if list.iter().any(|(x, e)| *x == h && *e > now) {
                return false;
            }
            list.retain(|(_, e)| *e > now);
            list.push((h.clone(), exp));
            if list.len() > MAX_JTI {
                list.sort_by_key(|(_, e)| *e);
                let excess = list.len() - MAX_JTI;
                list.drain(..excess);
            }
            let Ok(bytes) = serde_json::to_vec(&list) else {
                return false;
            };
            match self.cas_set(JTI_KEY, &bytes, cas) {
                Ok(()) => return true,
                Err(StoreError::CasMismatch) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    fn note_ended(&mut self, handle: &str, reason: &str, until: u64, now: u64) {
        for _ in 0..RETRIES {
            let (v, cas) = self.data.get(ENDED_KEY);
            let mut list: Vec<(String, String, u64)> = v
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            list.retain(|(h, _, u)| *u > now && h != handle);
            list.push((handle.to_string(), reason.to_string(), until));
            if list.len() > MAX_ENDED {
                list.sort_by_key(|(_, _, u)| *u);
                let excess = list.len() - MAX_ENDED;
                list.drain(..excess);
            }
            let Ok(bytes) = serde_json::to_vec(&list) else {
                return;
            };
            match self.cas_set(ENDED_KEY, &bytes, cas) {
                Err(StoreError::CasMismatch) => continue,
                _ => return,
            }
        }
    }

    fn ended_reason(&self, handle: &str, now: u64) -> Option<String> {
        let (v, _) = self.data.get(ENDED_KEY);
        let list: Vec<(String, String, u64)> = serde_json::from_slice(&v?).ok()?;
        list.into_iter()
            .find(|(h, _, u)| h == handle && *u > now)
            .map(|(_, r, _)| r)
    }

    fn delete_where(&mut self, pred: &dyn Fn(&Session) -> bool) -> Vec<Session> {
        let mut out = Vec::new();
        for i in 0..self.limits.max_sessions {
            for _ in 0..RETRIES {
                let (s, cas) = self.read_session(i);
                let (Some(s), Some(cas)) = (s, cas) else {
                    break;
                };
                if !pred(&s) {
                    break;
                }
                match self.cas_set(&session_key(i), b"", Some(cas)) {
                    Ok(()) => {
                        self.adjust(SESSIONS_KEY, -1);
                        out.push(s);
                        break;
                    }
                    Err(StoreError::CasMismatch) => continue,
                    Err(_) => break,
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod key_tests {
    #[test]
    fn the_stack_key_is_the_formatted_key() {
        for slot in [0, 1, 9, 10, 99, 12345, u32::MAX] {
            let mut buf = [0u8; 24];
            assert_eq!(
                super::session_key_in(slot, &mut buf),
                super::session_key(slot)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::testkit::{memory_store, TestRandom};

    fn limits(n: u32, when_full: WhenFull) -> Limits {
        Limits {
            max_sessions: n,
            max_pending: n,
            idle_s: 100,
            when_full,
        }
    }

    fn session(sub: &str, last_seen: u64) -> Session {
        Session {
            sub: sub.into(),
            created: last_seen,
            last_seen,
            expires: last_seen + 1000,
            ..Default::default()
        }
    }

    #[test]
    fn session_round_trip_and_delete() {
        let mut st = memory_store(limits(8, WhenFull::Refuse));
        let mut rng = TestRandom(3);
        let (id, ev) = st.create_session(&session("a", 1), &mut rng, 1).unwrap();
        assert!(ev.is_none());
        let (s, _) = st.get_session(&id).unwrap();
        assert_eq!(s.sub, "a");
        assert_eq!(s.owner, id.verifier());
        assert_eq!(s.handle, id.handle());
        st.delete_session(&id).unwrap();
        assert!(st.get_session(&id).is_none());
        assert_eq!(st.delete_session(&id), Err(StoreError::NotFound));
    }

    #[test]
    fn an_id_for_the_right_slot_but_another_secret_finds_nothing() {
        let mut st = memory_store(limits(1, WhenFull::Refuse));
        let mut rng = TestRandom(3);
        let (id, _) = st.create_session(&session("a", 1), &mut rng, 1).unwrap();
        let forged = SessionId::generate(&mut rng, id.slot());
        assert!(st.get_session(&forged).is_none());
        assert_eq!(st.delete_session(&forged), Err(StoreError::NotFound));
        assert!(st.get_session(&id).is_some());
        let out_of_range = SessionId::generate(&mut rng, 5);
        assert!(st.get_session(&out_of_range).is_none());
    }

    #[test]
    fn concurrent_updates_are_detected() {
        let mut st = memory_store(limits(4, WhenFull::Refuse));
        let mut rng = TestRandom(3);
        let (id, _) = st.create_session(&session("a", 1), &mut rng, 1).unwrap();
        let (_, cas_a) = st.get_session(&id).unwrap();
        let (_, cas_b) = st.get_session(&id).unwrap();
        st.put_session(&id, &session("a", 2), cas_a).unwrap();
        assert_eq!(
            st.put_session(&id, &session("a", 3), cas_b),
            Err(StoreError::CasMismatch)
        );
    }

    #[test]
    fn the_table_never_grows_and_full_refuses_or_evicts_lru() {
        let mut st = memory_store(limits(4, WhenFull::Refuse));
        let keys = st.data.keys();
        let mut rng = TestRandom(9);
        for i in 0..4 {
            st.create_session(&session("u", 10 + i), &mut rng, 20)
                .unwrap();
        }
        assert_eq!(
            st.create_session(&session("x", 20), &mut rng, 20)
                .map(|_| ()),
            Err(StoreError::Full)
        );
        st.limits.when_full = WhenFull::EvictLeastRecentlyUsed;
        let (_, ev) = st.create_session(&session("x", 20), &mut rng, 20).unwrap();
        let ev = ev.unwrap();
        assert_eq!((ev.sub.as_str(), ev.why), ("u", Replaced::Evicted));
        assert_eq!(st.data.keys(), keys, "no key is ever added after init");
        // Dead sessions free their slot without eviction, and their end is reported (the
        // sweeper would have reported it; a login got there first).
        let (_, ev) = st
            .create_session(&session("y", 500), &mut rng, 500)
            .unwrap();
        assert_eq!(ev.map(|e| e.why), Some(Replaced::Idle), "idle, not evicted");
        assert_eq!(st.data.keys(), keys);
        let before = st.occupancy().0;
        let mut past_expiry = session("z", 5000);
        past_expiry.expires = 6000;
        let mut st1 = memory_store(limits(1, WhenFull::Refuse));
        st1.init_slots();
        st1.create_session(&past_expiry, &mut rng, 5000).unwrap();
        let (_, ev) = st1
            .create_session(&session("w", 6001), &mut rng, 6001)
            .unwrap();
        let ev = ev.expect("the expired session's end is reported");
        assert_eq!((ev.sub.as_str(), ev.why), ("z", Replaced::Expired));
        assert_eq!(st1.occupancy().0, 1, "one replaced by one");
        assert_eq!(st.occupancy().0, before);
    }

    #[test]
    fn churn_keeps_memory_flat() {
        let mut st = memory_store(limits(16, WhenFull::EvictLeastRecentlyUsed));
        let mut rng = TestRandom(5);
        let keys = st.data.keys();
        for round in 0..1000u64 {
            let (id, _) = st
                .create_session(&session("u", round), &mut rng, round)
                .unwrap();
            if round % 3 == 0 {
                st.delete_session(&id).unwrap();
            }
        }
        assert_eq!(st.data.keys(), keys);
        let (occupied, _) = st.occupancy();
        assert_eq!(
            (occupied, 0),
            st.recount(),
            "the counter tracks the slots exactly"
        );
        assert!(occupied <= 16);
    }

    #[test]
    fn pending_login_is_taken_once_and_only_with_its_state() {
        let mut st = memory_store(limits(4, WhenFull::Refuse));
        let mut rng = TestRandom(3);
        let p = PendingLogin {
            verifier: Secret::new("v"),
            nonce: "n".into(),
            return_to: "/".into(),
            flow_hash: "h".into(),
            expires: 10,
            state_hash: String::new(),
            step_up: Default::default(),
            binding: None,
        };
        let state = st.create_pending(&p, &mut rng, 1).unwrap();
        let slot = state.split_once('.').unwrap().0;
        assert_eq!(st.take_pending(&format!("{slot}.forged"), "h"), None);
        assert_eq!(st.take_pending("nonsense", "h"), None);
        assert_eq!(st.take_pending("99.x", "h"), None);
        // The right state with another browser's flow cookie: refused, and nothing consumed.
        assert_eq!(st.take_pending(&state, "another-browser"), None);
        let got = st.take_pending(&state, "h").unwrap();
        assert_eq!(got.verifier, p.verifier);
        assert_eq!(st.take_pending(&state, "h"), None);
    }

    #[test]
    fn pending_logins_are_bounded_and_the_oldest_gives_way() {
        let mut st = memory_store(limits(2, WhenFull::Refuse));
        let mut rng = TestRandom(3);
        let keys = st.data.keys();
        let mk = |e| PendingLogin {
            verifier: Secret::new("v"),
            nonce: "n".into(),
            return_to: "/".into(),
            flow_hash: "h".into(),
            expires: e,
            state_hash: String::new(),
            step_up: Default::default(),
            binding: None,
        };
        let a = st.create_pending(&mk(100), &mut rng, 1).unwrap();
        let b = st.create_pending(&mk(200), &mut rng, 1).unwrap();
        let c = st.create_pending(&mk(300), &mut rng, 1).unwrap();
        assert_eq!(st.take_pending(&a, "h"), None, "the oldest was replaced");
        assert!(st.take_pending(&b, "h").is_some());
        assert!(st.take_pending(&c, "h").is_some());
        assert_eq!(st.data.keys(), keys);
    }

    #[test]
    fn jti_replay_is_detected_and_the_list_is_bounded() {
        let mut st = memory_store(limits(1, WhenFull::Refuse));
        assert!(st.remember_jti("a", 100, 10));
        assert!(!st.remember_jti("a", 100, 20), "replay");
        assert!(
            st.remember_jti("a", 200, 150),
            "expired entries are forgotten"
        );
        for i in 0..(MAX_JTI + 50) {
            assert!(st.remember_jti(&format!("j{i}"), 1000 + i as u64, 160));
        }
        let (v, _) = st.data.get(JTI_KEY);
        let list: Vec<(String, u64)> = serde_json::from_slice(&v.unwrap()).unwrap();
        assert_eq!(list.len(), MAX_JTI);
    }

    #[test]
    fn jwks_cache_round_trip() {
        let mut st = memory_store(limits(1, WhenFull::Refuse));
        assert!(st.doc(Doc::Jwks).is_none());
        st.set_doc(Doc::Jwks, b"{\"keys\":[]}", 42);
        assert_eq!(st.doc(Doc::Jwks), Some((b"{\"keys\":[]}".to_vec(), 42)));
        assert!(
            st.doc(Doc::Discovery).is_none(),
            "each document has its own key"
        );
    }

    #[test]
    fn sweep_and_delete_where() {
        let mut st = memory_store(limits(8, WhenFull::Refuse));
        let mut rng = TestRandom(3);
        st.create_session(&session("a", 1), &mut rng, 1).unwrap();
        st.create_session(&session("b", 1), &mut rng, 1).unwrap();
        st.create_session(&session("b", 90), &mut rng, 90).unwrap();
        assert_eq!(st.count(95), (3, 0));
        assert_eq!(st.occupancy(), (3, 0));
        let (_, reclaimed) = st.sweep(0, 8, 150);
        assert_eq!(reclaimed.len(), 2, "two idle sessions reclaimed");
        assert_eq!(st.count(150), (1, 0));
        assert_eq!(st.occupancy(), (1, 0));
        let gone = st.delete_where(&|s| s.sub == "b");
        assert_eq!(gone.len(), 1);
        assert_eq!(st.count(150), (0, 0));
        assert_eq!(st.occupancy(), (0, 0));
        assert_eq!(st.recount(), (0, 0));
    }
}
