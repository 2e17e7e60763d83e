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

/// Randomness, injected. The wasm shell draws from the host CSPRNG; tests use a fixed sequence.
pub trait Random {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// `n` random bytes, base64url encoded.
pub fn random_token(rng: &mut dyn Random, n: usize) -> String {
    let mut buf = vec![0u8; n];
    rng.fill(&mut buf);
    b64url(&buf)
}

/// A deterministic generator for tests (xorshift; NOT cryptographic).
#[derive(Debug, Clone)]
pub struct TestRandom(pub u64);

impl Random for TestRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn test_random_is_deterministic_and_not_constant() {
        let mut a = TestRandom(7);
        let mut b = TestRandom(7);
        assert_eq!(random_token(&mut a, 16), random_token(&mut b, 16));
        let x = random_token(&mut a, 16);
        let y = random_token(&mut a, 16);
        assert_ne!(x, y);
    }
}
