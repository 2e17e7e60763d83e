//! Session anomaly signals: a session used in a way its owner would not use it.
//!
//! - **Client-binding drift** (`user_agent`, `network`): at login the session is bound to keyed
//!   hashes of the browser's `User-Agent` and of its network (the /24 of an IPv4 address, the
//!   /48 of an IPv6 one, as Envoy resolved the client); a request from another one is a signal.
//!   Only the hashes are kept (8 bytes each, keyed with a key derived from the cookie key that
//!   bound them): no address or User-Agent is stored or logged.
//! - **Request rate** (`rate`) and **refusals** (`refusals`: `csrf`, `insufficient_scope`,
//!   `forbidden`, `insufficient_user_authentication`) per session in a sliding window, counted
//!   per filter VM (each Envoy worker counts the requests it serves) in bounded memory.
//!
//! Each kind is reported at most once per window per session (per VM), and answered as
//! `session.on_anomaly` says: `log`, `step_up` (the next request needs a fresh sign-in) or
//! `revoke` (the session ends and its refresh token is revoked at the provider).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The tables' hasher: their keys are already uniform (8 bytes of a session verifier's hash, an
/// FNV slot), so they are folded, not hashed again (SipHash per request on the fast path). The
/// memo is bounded (256 entries), so colliding keys an attacker might craft only cost probes.
#[derive(Default)]
struct Fold(u64);

impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_usize(&mut self, _: usize) {}
}

type FoldMap<K, V> = HashMap<K, V, BuildHasherDefault<Fold>>;

/// A kind of signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Too many refusals of one code in the window.
    Refusals,
    /// Too many requests in the window.
    Rate,
    /// The `User-Agent` is not the one the session was bound to.
    UserAgent,
    /// The client's network (/24, /48) is not the one the session was bound to.
    Network,
}

impl Kind {
    /// Every kind (counters are defined for each).
    pub const ALL: [Kind; 4] = [Kind::Refusals, Kind::Rate, Kind::UserAgent, Kind::Network];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Refusals => "refusals",
            Kind::Rate => "rate",
            Kind::UserAgent => "user_agent",
            Kind::Network => "network",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Kind::Refusals => 1,
            Kind::Rate => 2,
            Kind::UserAgent => 4,
            Kind::Network => 8,
        }
    }
}

/// What a signal does to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An audit event and a counter; nothing else.
    #[default]
    Log,
    /// As `log`, and the session's next request to a `session` route needs a fresh sign-in
    /// (`max_age=0`); a sign-in by the same user clears it.
    StepUp,
    /// As `log`, and the session ends at once; its refresh token is revoked at the provider.
    Revoke,
}

impl Action {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::StepUp => "step_up",
            Action::Revoke => "revoke",
        }
    }

    /// How strong (revoke > step_up > log).
    pub fn rank(self) -> u8 {
        match self {
            Action::Log => 0,
            Action::StepUp => 1,
            Action::Revoke => 2,
        }
    }
}

/// The session's binding to its client, as stored in the record's head: which cookie key the
/// hashes were made with, and the hashes (absent when the login request had no such header).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Binding {
    /// Id of the cookie key the hashes are keyed with.
    pub kid: String,
    /// Keyed hash of the `User-Agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ua: Option<[u8; 8]>,
    /// Keyed hash of the client's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<[u8; 8]>,
}

/// Keyed 64-bit hash of `value` in `domain` (the first 8 bytes of an HMAC-SHA256): equal inputs
/// give equal hashes under one key, and nothing about the input can be learnt without it.
pub fn keyed(key: &[u8], domain: &str, value: &[u8]) -> [u8; 8] {
    let mut msg = Vec::with_capacity(domain.len() + 1 + value.len());
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(value);
    let mut out = [0u8; 8];
    if let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) {
        mac.update(&msg);
        let tag = mac.finalize().into_bytes();
        out.copy_from_slice(tag.get(..8).unwrap_or(&[0; 8]));
    }
    out
}

/// The client address from an `X-Forwarded-For` value: the entry `trusted_hops` from the right
/// (Envoy appends the peer it accepted the connection from when `use_remote_address` is on, so
/// the rightmost entry is its own view; trusted proxies in front each add one more).
pub fn client_address(xff: &str, trusted_hops: u32) -> Option<&str> {
    xff.rsplit(',')
        .nth(usize::try_from(trusted_hops).ok()?)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The network of an address, as bytes: the /24 of an IPv4 address, the /48 of an IPv6 one (an
/// IPv4-mapped IPv6 address counts as IPv4). Accepts `a.b.c.d`, `a.b.c.d:port`, an IPv6
/// address, `[v6]` and `[v6]:port`; `None` for anything else.
pub fn network_of(addr: &str) -> Option<Vec<u8>> {
    use std::net::{IpAddr, SocketAddr};
    let a = addr.trim();
    let ip: IpAddr = a
        .parse::<IpAddr>()
        .ok()
        .or_else(|| a.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            a.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse().ok())
        })?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            vec![4, o[0], o[1], o[2]]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut v = vec![6];
            v.extend_from_slice(o.get(..6).unwrap_or(&[]));
            v
        }
    })
}

/// The signals of one request for a session, found by [`Tracker`] and the binding check.
pub type Signals = Vec<(Kind, Option<&'static str>)>;

/// Per-session counters of one window (two windows are kept: the sliding estimate weighs the
/// previous one by how much of it still overlaps).
#[derive(Debug, Clone, Default)]
struct Track {
    window: u64,
    requests: [u32; 2],
    refusals: [[u16; 4]; 2],
    reported: u8,
}

/// The refusal codes that count, in [`Track::refusals`] order.
pub const REFUSAL_CODES: [&str; 4] = [
    "csrf",
    "insufficient_scope",
    "forbidden",
    "insufficient_user_authentication",
];

/// Most sessions a VM tracks at once (about 40 bytes each plus the map's overhead).
pub const MAX_TRACKED: usize = 4096;

/// A memoized hash: the key id, domain and value it was made of (compared in full on a hit),
/// and the hash.
type MemoEntry = (String, &'static str, Vec<u8>, [u8; 8]);

/// Most memoized hashes (User-Agent and network values seen lately).
const MAX_MEMO: usize = 256;

/// FNV-1a over the memo's inputs: where to look, not what to trust (a hit is compared in full).
fn slot_of(kid: &str, domain: &str, value: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [kid.as_bytes(), b"\0", domain.as_bytes(), b"\0", value] {
        for b in part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A VM's sliding-window counters per session, and a memo of keyed hashes (so the fast path
/// does not compute an HMAC per request). Bounded: [`MAX_TRACKED`] sessions, [`MAX_MEMO`] hashes.
#[derive(Debug, Default)]
pub struct Tracker {
    tracks: RefCell<FoldMap<[u8; 8], Track>>,
    memo: RefCell<FoldMap<u64, MemoEntry>>,
}

impl Tracker {
    /// [`keyed`] with the key `key` gives (derived only on a memo miss), memoized per (key id,
    /// domain and value). `None` when the key is not there. A hit allocates nothing.
    pub fn hash(
        &self,
        kid: &str,
        key: impl FnOnce() -> Option<[u8; 32]>,
        domain: &'static str,
        value: &[u8],
    ) -> Option<[u8; 8]> {
        self.hash_of(kid, domain, value, || Some(keyed(&key()?, domain, value)))
    }

    /// The memo of [`Tracker::hash`] for a hash computed by `make` from `raw` (e.g. the hash of
    /// the network of the address `raw`: a hit skips the parsing too).
    pub fn hash_of(
        &self,
        kid: &str,
        domain: &'static str,
        raw: &[u8],
        make: impl FnOnce() -> Option<[u8; 8]>,
    ) -> Option<[u8; 8]> {
        let (value, slot) = (raw, slot_of(kid, domain, raw));
        if let Some((k, d, v, h)) = self.memo.borrow().get(&slot) {
            if k == kid && *d == domain && v.as_slice() == value {
                return Some(*h);
            }
        }
        let h = make()?;
        let mut memo = self.memo.borrow_mut();
        if memo.len() >= MAX_MEMO {
            memo.clear();
        }
        memo.insert(slot, (kid.to_string(), domain, value.to_vec(), h));
        Some(h)
    }

    fn with<R>(
        &self,
        session: [u8; 8],
        now: u64,
        window_s: u64,
        f: impl FnOnce(&mut Track) -> R,
    ) -> R {
        let mut tracks = self.tracks.borrow_mut();
        let w = now / window_s.max(1);
        if !tracks.contains_key(&session) && tracks.len() >= MAX_TRACKED {
            // Forget the sessions not seen in the last two windows; if all are recent, the
            // table starts over (a flood of sessions cannot grow it).
            tracks.retain(|_, t| t.window + 1 >= w);
            if tracks.len() >= MAX_TRACKED {
                tracks.clear();
            }
        }
        let t = tracks.entry(session).or_default();
        if t.window != w {
            if t.window + 1 == w {
                t.requests = [t.requests[1], 0];
                t.refusals = [t.refusals[1], [0; 4]];
            } else {
                t.requests = [0, 0];
                t.refusals = [[0; 4]; 2];
            }
            t.window = w;
            t.reported = 0;
        }
        f(t)
    }

    /// The sliding-window estimate of a pair of counts at `now`.
    fn estimate(prev: u64, cur: u64, now: u64, window_s: u64) -> u64 {
        let w = window_s.max(1);
        let into = now % w;
        prev * (w - into) / w + cur
    }

    /// Counts a request of `session`; `Some(Rate)` when the session goes over `max` requests in
    /// the sliding window (once per window).
    pub fn request(&self, session: [u8; 8], now: u64, window_s: u64, max: u64) -> Option<Kind> {
        if max == 0 {
            return None;
        }
        self.with(session, now, window_s, |t| {
            t.requests[1] = t.requests[1].saturating_add(1);
            let est = Self::estimate(
                u64::from(t.requests[0]),
                u64::from(t.requests[1]),
                now,
                window_s,
            );
            (est > max && t.reported & Kind::Rate.bit() == 0).then(|| {
                t.reported |= Kind::Rate.bit();
                Kind::Rate
            })
        })
    }

    /// Counts a refusal with `code`; `Some(code)` when the session goes over `max` refusals of
    /// one code in the sliding window (once per window).
    pub fn refusal(
        &self,
        session: [u8; 8],
        code: &str,
        now: u64,
        window_s: u64,
        max: u64,
    ) -> Option<&'static str> {
        let i = REFUSAL_CODES.iter().position(|c| *c == code)?;
        if max == 0 {
            return None;
        }
        self.with(session, now, window_s, |t| {
            let cur = t.refusals[1].get_mut(i)?;
            *cur = cur.saturating_add(1);
            let cur = u64::from(*cur);
            let prev = u64::from(*t.refusals[0].get(i)?);
            let est = Self::estimate(prev, cur, now, window_s);
            (est > max && t.reported & Kind::Refusals.bit() == 0).then(|| {
                t.reported |= Kind::Refusals.bit();
                REFUSAL_CODES.get(i).copied()
            })?
        })
    }

    /// Whether a binding signal of `kind` for `session` is still to be reported in this window
    /// (and marks it reported).
    pub fn first_in_window(&self, session: [u8; 8], kind: Kind, now: u64, window_s: u64) -> bool {
        self.with(session, now, window_s, |t| {
            let first = t.reported & kind.bit() == 0;
            t.reported |= kind.bit();
            first
        })
    }

    /// How many sessions are tracked (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.tracks.borrow().len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_counts_trusted_hops_from_the_right() {
        assert_eq!(client_address("1.2.3.4", 0), Some("1.2.3.4"));
        assert_eq!(client_address("9.9.9.9, 1.2.3.4", 0), Some("1.2.3.4"));
        assert_eq!(client_address("9.9.9.9, 1.2.3.4", 1), Some("9.9.9.9"));
        assert_eq!(client_address("1.2.3.4", 1), None);
        assert_eq!(client_address("", 0), None);
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(network_of("10.1.2.3"), network_of("10.1.2.200"));
        assert_ne!(network_of("10.1.2.3"), network_of("10.1.3.3"));
        assert_eq!(network_of("10.1.2.3:443"), network_of("10.1.2.9"));
        assert_eq!(network_of("::ffff:10.1.2.3"), network_of("10.1.2.4"));
        assert_eq!(
            network_of("2001:db8:1::1"),
            network_of("[2001:db8:1:ffff::2]:80")
        );
        assert_ne!(network_of("2001:db8:1::1"), network_of("2001:db8:2::1"));
        assert_eq!(network_of("not an address"), None);
        assert_eq!(network_of(""), None);
    }

    #[test]
    fn keyed_hashes_depend_on_key_domain_and_value() {
        let a = keyed(b"k1", "ua", b"Mozilla");
        assert_eq!(a, keyed(b"k1", "ua", b"Mozilla"));
        assert_ne!(a, keyed(b"k2", "ua", b"Mozilla"));
        assert_ne!(a, keyed(b"k1", "net", b"Mozilla"));
        assert_ne!(a, keyed(b"k1", "ua", b"Mozilla2"));
    }

    #[test]
    fn rate_is_reported_once_per_window_and_slides() {
        let t = Tracker::default();
        let s = [1; 8];
        let mut hits = 0;
        for _ in 0..100 {
            if t.request(s, 1000, 60, 50).is_some() {
                hits += 1;
            }
        }
        assert_eq!(hits, 1, "once per window");
        // Next window, at its start: the previous one still weighs fully.
        assert_eq!(t.request(s, 1020, 60, 50), Some(Kind::Rate));
        // Two windows later, nothing is left.
        assert_eq!(t.request(s, 1200, 60, 50), None);
        assert_eq!(t.request(s, 1200, 60, 0), None, "0 turns it off");
    }

    #[test]
    fn refusals_count_per_code() {
        let t = Tracker::default();
        let s = [2; 8];
        for _ in 0..3 {
            assert_eq!(t.refusal(s, "csrf", 1000, 60, 3), None);
        }
        assert_eq!(t.refusal(s, "forbidden", 1000, 60, 3), None);
        assert_eq!(t.refusal(s, "csrf", 1000, 60, 3), Some("csrf"));
        assert_eq!(t.refusal(s, "csrf", 1000, 60, 3), None, "reported already");
        assert_eq!(
            t.refusal(s, "unauthenticated", 1000, 60, 0),
            None,
            "not a counted code"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let t = Tracker::default();
        for i in 0..(MAX_TRACKED as u64 * 3) {
            let _ = t.request(i.to_be_bytes(), 1000, 60, 10);
        }
        assert!(t.len() <= MAX_TRACKED);
        for i in 0..(MAX_MEMO * 3) {
            let _ = t.hash("k", || Some([7; 32]), "ua", format!("agent {i}").as_bytes());
        }
        assert!(t.memo.borrow().len() <= MAX_MEMO);
    }
}
