//! Small helpers shared by the core: base64url, hex, randomness and the clock as injected values.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` on any malformed input.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()
}

/// Decodes base64url without padding into `out`; the decoded length, or `None` on malformed
/// input or if `out` is too small. Accepts exactly what [`b64url_decode`] accepts.
pub fn b64url_decode_into(s: &str, out: &mut [u8]) -> Option<usize> {
    URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), out).ok()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    fn digit(n: u8) -> char {
        char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0f));
    }
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes at a time, then the rest; every byte is looked at, whatever differs.
    let mut diff = 0u64;
    let (mut wa, mut wb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut wa).zip(&mut wb) {
        let x = <[u8; 8]>::try_from(x).map_or(0, u64::from_ne_bytes);
        let y = <[u8; 8]>::try_from(y).map_or(0, u64::from_ne_bytes);
        diff |= x ^ y;
    }
    for (x, y) in wa.remainder().iter().zip(wb.remainder()) {
        diff |= u64::from(x ^ y);
    }
    // `black_box` keeps the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// A hasher for maps whose keys are not attacker input: ids the host hands out (context ids,
/// callout tokens) and names from the configuration (route names, which Envoy's route table
/// picks, never the client). One multiplication per word instead of SipHash, on the map
/// operations every request makes. Not for keys a client chooses (no flooding resistance).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            if let Some(dst) = w.get_mut(..rest.len()) {
                dst.copy_from_slice(rest);
            }
            // The length keeps "a" and "a\0" apart.
            w[7] ^= rest.len() as u8;
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Randomness, injected. The wasm shell draws from the host CSPRNG; tests use a fixed sequence.
pub trait Random {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// Whether `s` is an RFC 9110 token (a method or header name).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `n` random bytes, base64url encoded.
pub fn random_token(rng: &mut dyn Random, n: usize) -> String {
    let mut buf = vec![0u8; n];
    rng.fill(&mut buf);
    b64url(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestRandom;

    #[test]
    fn hex_and_b64url_round_trip() {
        assert_eq!(hex(&[0x00, 0xff, 0x1a]), "00ff1a");
        let b = b64url(b"\xff\xfe hello");
        assert!(!b.contains('='));
        assert_eq!(b64url_decode(&b).as_deref(), Some(&b"\xff\xfe hello"[..]));
        assert_eq!(b64url_decode("***"), None);
        let mut buf = [0u8; 16];
        let n = b64url_decode_into(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"\xff\xfe hello");
        assert_eq!(b64url_decode_into("***", &mut buf), None);
        assert_eq!(
            b64url_decode_into(&b64url(&[7u8; 17]), &mut buf),
            None,
            "too small"
        );
    }

    #[test]
    fn ct_eq_compares_contents_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        // Every length across the word boundary, a difference at every position.
        for len in 0..40 {
            let a: Vec<u8> = (0..len as u8).collect();
            assert!(ct_eq(&a, &a.clone()));
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 0x80;
                assert!(!ct_eq(&a, &b), "len {len}, byte {i}");
            }
        }
    }

    #[test]
    fn id_hasher_keeps_maps_right_and_spreads_counters() {
        use std::collections::{HashMap, HashSet};
        use std::hash::{BuildHasher, BuildHasherDefault};
        let b = BuildHasherDefault::<IdHasher>::default();
        let mut m: HashMap<u32, u32, _> =
            HashMap::with_hasher(BuildHasherDefault::<IdHasher>::default());
        for i in 0..10_000u32 {
            m.insert(i * 3, i);
        }
        for i in 0..10_000u32 {
            assert_eq!(m.remove(&(i * 3)), Some(i));
            assert_eq!(m.get(&(i * 3 + 1)), None);
        }
        assert!(m.is_empty());
        // Consecutive ids land in distinct buckets (top bits differ too, for hashbrown's tags).
        let low: HashSet<u64> = (0..256u32).map(|i| b.hash_one(i) & 0xff).collect();
        let top: HashSet<u64> = (0..256u32).map(|i| b.hash_one(i) >> 57).collect();
        assert!(
            low.len() > 128 && top.len() > 64,
            "{} {}",
            low.len(),
            top.len()
        );
        assert_ne!(b.hash_one("ab"), b.hash_one("ba"));
    }

    #[test]
    fn test_random_is_deterministic_and_not_constant() {
        let mut a = TestRandom(7);
        let mut b = TestRandom(7);
        assert_eq!(random_token(&mut a, 16), random_token(&mut b, 16));
        let x = random_token(&mut a, 16);
        let y = random_token(&mut a, 16);
        assert_ne!(x, y);
    }
}
