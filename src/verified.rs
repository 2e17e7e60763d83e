//! A per-VM memo of session cookie values whose MAC has already been verified.
//!
//! A browser sends the same session cookie on every request, so each worker sees the same few
//! values over and over; verifying one costs an HMAC-SHA256 (three SHA-256 blocks) and the
//! owner check a SHA-256 of the id, which in wasm (no SHA instructions) are most of the fast
//! path's own compute. A value is remembered only after its MAC verified, with the id it carries
//! and that id's verifier, so a repeat of exactly that value skips both.
//!
//! Why this is as safe as verifying every time:
//! - Validity of a value under one key ring is a pure function of the value: a value equal to
//!   one that verified is valid. Equality is checked with [`ct_eq`] over the whole value, so a
//!   lookup with a guessed value tells nothing about a remembered one but "not this value".
//! - Only MAC validity is remembered. Whether the session is alive (logout, expiry, eviction,
//!   another worker ending it) is still read from the store on every request.
//! - The memo is bound to one key ring (by [`KeyRing`]'s fingerprint): asked with another ring
//!   (a key added, removed or replaced) it knows nothing and starts over, so a key taken out of
//!   the ring stops verifying at once, whatever configuration the shell runs next.
//! - It lives in the VM's private memory only (never in shared data, never logged), like the
//!   cookie value of the request being handled; it is bounded and direct-mapped: a value that
//!   lands on a taken entry replaces it, so a flood of cookies only costs the flooder misses.

use crate::seal::KeyRing;
use crate::session::SessionId;
use crate::util::ct_eq;
use std::cell::RefCell;

/// Entries kept (a power of two).
pub const ENTRIES: usize = 512;
const _: () = assert!(ENTRIES.is_power_of_two() && ENTRIES > 1);

struct Entry {
    value: Box<str>,
    id: SessionId,
    verifier: [u8; 64],
}

/// Verified session cookie values, for one configuration of one VM.
pub struct VerifiedCookies {
    entries: RefCell<Vec<Option<Entry>>>,
    /// Fingerprint of the key ring the entries were verified with.
    ring: RefCell<[u8; 32]>,
}

impl Default for VerifiedCookies {
    fn default() -> Self {
        let mut v = Vec::with_capacity(ENTRIES);
        v.resize_with(ENTRIES, || None);
        VerifiedCookies {
            entries: RefCell::new(v),
            ring: RefCell::new([0; 32]),
        }
    }
}

impl std::fmt::Debug for VerifiedCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifiedCookies([redacted])")
    }
}

/// The entry a value maps to: its last 8 bytes, which for a value we issued are MAC (uniform),
/// times a 64-bit odd constant, top bits. Anyone can make values collide, which only costs them
/// misses (module docs).
fn index(value: &str) -> usize {
    let b = value.as_bytes();
    let mut tail = [0u8; 8];
    let n = b.len().min(8);
    if let (Some(dst), Some(src)) = (tail.get_mut(8 - n..), b.get(b.len() - n..)) {
        dst.copy_from_slice(src);
    }
    let h = u64::from_le_bytes(tail).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - ENTRIES.trailing_zeros())) as usize
}

impl VerifiedCookies {
    /// The id and verifier of `value` if exactly this value verified before with `ring`.
    pub fn get(&self, ring: &KeyRing, value: &str) -> Option<(SessionId, [u8; 64])> {
        if *self.ring.borrow() != *ring.fingerprint() {
            return None;
        }
        let entries = self.entries.borrow();
        let e = entries.get(index(value))?.as_ref()?;
        if ct_eq(e.value.as_bytes(), value.as_bytes()) {
            Some((e.id.clone(), e.verifier))
        } else {
            None
        }
    }

    /// Remembers a value whose MAC verified with `ring`, with its id and the id's verifier.
    /// With another ring than the entries were verified with, every entry is forgotten first.
    pub fn insert(&self, ring: &KeyRing, value: &str, id: &SessionId, verifier: [u8; 64]) {
        let mut entries = self.entries.borrow_mut();
        if *self.ring.borrow() != *ring.fingerprint() {
            entries.iter_mut().for_each(|e| *e = None);
            *self.ring.borrow_mut() = *ring.fingerprint();
        }
        if let Some(slot) = entries.get_mut(index(value)) {
            *slot = Some(Entry {
                value: value.into(),
                id: id.clone(),
                verifier,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestRandom;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const K0: &str = "k0:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A";

    fn ring(spec: &str) -> KeyRing {
        KeyRing::parse(spec).unwrap()
    }

    #[test]
    fn only_the_exact_value_is_found() {
        let c = VerifiedCookies::default();
        let r = ring(K1);
        let id = SessionId::generate(&mut TestRandom(1), 3);
        let v = "k1.AAAA.BBBB";
        assert!(c.get(&r, v).is_none());
        c.insert(&r, v, &id, id.verifier_bytes());
        let (got, verifier) = c.get(&r, v).unwrap();
        assert_eq!(got, id);
        assert_eq!(verifier, id.verifier_bytes());
        for other in ["k1.AAAA.BBBC", "k1.AAAA.BBB", "k1.AAAA.BBBBB", ""] {
            assert!(c.get(&r, other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn another_key_ring_finds_nothing_and_replaces_everything() {
        let c = VerifiedCookies::default();
        let id = SessionId::generate(&mut TestRandom(2), 5);
        let (both, only_new) = (ring(&format!("{K1},{K0}")), ring(K1));
        c.insert(&both, "k0.old.value", &id, id.verifier_bytes());
        assert!(c.get(&both, "k0.old.value").is_some());
        // K0 was taken out of the ring: the value must be verified (and refused) again.
        assert!(c.get(&only_new, "k0.old.value").is_none());
        c.insert(&only_new, "k1.new.value", &id, id.verifier_bytes());
        assert!(
            c.get(&both, "k0.old.value").is_none(),
            "forgotten, not just hidden"
        );
        assert!(c.get(&only_new, "k1.new.value").is_some());
        assert!(c.get(&ring(K1), "k1.new.value").is_some(), "an equal ring");
    }

    #[test]
    fn a_colliding_value_replaces_the_entry() {
        let c = VerifiedCookies::default();
        let r = ring(K1);
        let mut rng = TestRandom(9);
        let a = SessionId::generate(&mut rng, 1);
        let b = SessionId::generate(&mut rng, 2);
        let va = "k1.first.value".to_string();
        let vb = (0..)
            .map(|i| format!("k1.other.{i:08}"))
            .find(|v| index(v) == index(&va))
            .unwrap();
        c.insert(&r, &va, &a, a.verifier_bytes());
        c.insert(&r, &vb, &b, b.verifier_bytes());
        assert!(c.get(&r, &va).is_none());
        assert_eq!(c.get(&r, &vb).unwrap().0, b);
        assert!(!format!("{c:?}").contains("first"));
    }

    #[test]
    fn values_spread_over_the_entries() {
        let r = ring(K1);
        let mut rng = TestRandom(11);
        let used: std::collections::HashSet<usize> = (0..ENTRIES)
            .map(|_| {
                let id = SessionId::generate(&mut rng, 1);
                index(&r.seal("c", &id.to_bytes()))
            })
            .collect();
        // Uniform placement fills about 1 - 1/e of the entries with as many values.
        assert!(used.len() > ENTRIES / 2, "{}", used.len());
        assert!(index("") < ENTRIES && index("x") < ENTRIES);
    }
}
