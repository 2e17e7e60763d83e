//! Records at rest in a shared store (etcd): XChaCha20-Poly1305 with key ids, so keys can rotate
//! and a backup or a read-only store user reveals no token.
//!
//! Envelope: `"V2" || len(handle) as u8 || handle || len(kid) as u8 || kid || nonce (24 bytes,
//! random) || ciphertext+tag`; `"V1"` envelopes (without the handle) are still read. The handle
//! (the session's audit handle, as in the logs; not a secret) is written in the clear so that an
//! operator's scan of the store can open a record without its cookie (`POST
//! /sessions/revoke-all` in fleet mode); it is in the associated data either way.
//! Associated data: `lp("bffgate-store-v1") || lp(store key) || lp(kid) || lp(session handle)`
//! (`lp` = big-endian u32 length prefix, as in `seal`): a record copied to another key, or
//! presented for another session, does not open. The first key of the ring seals; every key
//! opens (rotation: add a key in front, later drop the old one).

use crate::util::Random;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const MAGIC: &[u8] = b"V2";
const MAGIC_V1: &[u8] = b"V1";
const DOMAIN: &[u8] = b"bffgate-store-v1";
const NONCE_LEN: usize = 24;

/// Why an envelope did not open. Callers treat all alike (the record is unusable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultError {
    /// Not an envelope.
    Malformed,
    /// Sealed with a key id no longer in the ring.
    UnknownKey,
    /// Tag mismatch: tampered, moved to another key or session, or the wrong key.
    Tampered,
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VaultError::Malformed => "not a sealed record",
            VaultError::UnknownKey => "sealed with a key id no longer in the ring",
            VaultError::Tampered => "the record does not open (tampered, moved, or another key)",
        })
    }
}

impl std::error::Error for VaultError {}

/// An AEAD key ring.
#[derive(Clone)]
pub struct Vault {
    keys: Vec<(String, XChaCha20Poly1305)>,
    /// Per key: an HMAC key for index names (so a store reader cannot test who is signed in).
    index: Vec<hmac::Hmac<sha2::Sha256>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "Vault{{kids: {kids:?}, keys: [redacted]}}")
    }
}

fn lp(out: &mut Vec<u8>, field: &[u8]) {
    let n = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(field);
}

fn aad(key: &str, kid: &str, handle: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(DOMAIN.len() + key.len() + kid.len() + handle.len() + 16);
    for f in [DOMAIN, key.as_bytes(), kid.as_bytes(), handle.as_bytes()] {
        lp(&mut a, f);
    }
    a
}

impl Vault {
    /// Parses `kid:base64url(32 bytes)[,...]`.
    pub fn parse(spec: &str) -> Result<Vault, crate::keyspec::KeySpecError> {
        let mut keys = Vec::new();
        let mut index = Vec::new();
        for (kid, key) in crate::keyspec::parse(spec, 32)? {
            if key.len() != 32 {
                return Err(crate::keyspec::KeySpecError::WrongLength {
                    got: key.len(),
                    kid,
                    need: 32,
                });
            }
            let cipher = XChaCha20Poly1305::new_from_slice(&key)
                .map_err(|_| crate::keyspec::KeySpecError::Unusable(kid.clone()))?;
            // A separate key for index names, derived so the AEAD key is used for one thing.
            let derived = crate::util::sha256(&[b"bffgate-index-key:".as_slice(), &key].concat());
            let mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&derived)
                .map_err(|_| crate::keyspec::KeySpecError::Unusable(kid.clone()))?;
            keys.push((kid, cipher));
            index.push(mac);
        }
        Ok(Vault { keys, index })
    }

    /// Keyed names for an index entry (`tag` says which index, `value` is the subject or the
    /// provider session id), one per key of the ring, the current key's first: new entries use
    /// the first, a revocation looks under all of them (entries made before a rotation).
    pub fn index_names(&self, tag: &str, value: &str) -> Vec<String> {
        use hmac::Mac;
        self.index
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let mut buf = Vec::with_capacity(tag.len() + value.len() + 8);
                lp(&mut buf, tag.as_bytes());
                lp(&mut buf, value.as_bytes());
                m.update(&buf);
                let out = m.finalize().into_bytes();
                crate::util::hex(out.get(..16).unwrap_or(&[]))
            })
            .collect()
    }

    /// The key id new envelopes are sealed with.
    pub fn current_kid(&self) -> &str {
        self.keys.first().map_or("", |(k, _)| k.as_str())
    }

    /// Seals `plain` for `key` (the store key) and `handle` (the session's audit handle).
    pub fn seal(&self, key: &str, handle: &str, plain: &[u8], rng: &mut dyn Random) -> Vec<u8> {
        let Some((kid, cipher)) = self.keys.first() else {
            return Vec::new();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce);
        let a = aad(key, kid, handle);
        let Ok(ct) = cipher.encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &a,
            },
        ) else {
            return Vec::new();
        };
        let mut out =
            Vec::with_capacity(MAGIC.len() + 2 + handle.len() + kid.len() + NONCE_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::try_from(handle.len()).unwrap_or(0));
        out.extend_from_slice(handle.as_bytes());
        out.push(u8::try_from(kid.len()).unwrap_or(0));
        out.extend_from_slice(kid.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens an envelope sealed for `key` and `handle`.
    pub fn open(&self, key: &str, handle: &str, env: &[u8]) -> Result<Vec<u8>, VaultError> {
        if let Some(rest) = env.strip_prefix(MAGIC_V1) {
            return self.open_body(key, handle, rest);
        }
        let (written, rest) = split_handle(env)?;
        if written != handle.as_bytes() {
            return Err(VaultError::Tampered);
        }
        self.open_body(key, handle, rest)
    }

    /// Opens an envelope sealed for `key`, for whichever session its handle names (an
    /// operator's scan of the store); the handle and the record. `V1` envelopes carry no handle
    /// and do not open this way.
    pub fn open_any(&self, key: &str, env: &[u8]) -> Result<(String, Vec<u8>), VaultError> {
        let (handle, rest) = split_handle(env)?;
        let handle = std::str::from_utf8(handle).map_err(|_| VaultError::Malformed)?;
        Ok((handle.to_string(), self.open_body(key, handle, rest)?))
    }

    /// `len(kid) || kid || nonce || ciphertext+tag`, opened.
    fn open_body(&self, key: &str, handle: &str, rest: &[u8]) -> Result<Vec<u8>, VaultError> {
        let (&n, rest) = rest.split_first().ok_or(VaultError::Malformed)?;
        let n = usize::from(n);
        let kid = rest.get(..n).ok_or(VaultError::Malformed)?;
        let nonce = rest.get(n..n + NONCE_LEN).ok_or(VaultError::Malformed)?;
        let ct = rest.get(n + NONCE_LEN..).ok_or(VaultError::Malformed)?;
        let kid = std::str::from_utf8(kid).map_err(|_| VaultError::Malformed)?;
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(VaultError::UnknownKey)?;
        let a = aad(key, kid, handle);
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &a })
            .map_err(|_| VaultError::Tampered)
    }
}

/// A `V2` envelope's handle and the rest.
fn split_handle(env: &[u8]) -> Result<(&[u8], &[u8]), VaultError> {
    let rest = env.strip_prefix(MAGIC).ok_or(VaultError::Malformed)?;
    let (&n, rest) = rest.split_first().ok_or(VaultError::Malformed)?;
    let n = usize::from(n);
    Ok((
        rest.get(..n).ok_or(VaultError::Malformed)?,
        rest.get(n..).ok_or(VaultError::Malformed)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestRandom;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const K2: &str = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";

    #[test]
    fn the_handle_is_written_so_a_scan_opens_it_and_v1_envelopes_still_read() {
        let v = Vault::parse(K1).unwrap();
        let mut rng = TestRandom(9);
        let env = v.seal("bffgate/s/ab", "h1a2", b"tokens", &mut rng);
        assert_eq!(
            v.open_any("bffgate/s/ab", &env).unwrap(),
            ("h1a2".to_string(), b"tokens".to_vec())
        );
        assert_eq!(v.open_any("bffgate/s/cd", &env), Err(VaultError::Tampered));
        // The handle cannot be swapped: it is in the associated data too.
        let mut other = env.clone();
        other[3] = b'x';
        assert_eq!(
            v.open_any("bffgate/s/ab", &other),
            Err(VaultError::Tampered)
        );
        // A V1 envelope (the same without the handle) still opens for its session.
        let mut v1 = b"V1".to_vec();
        v1.extend_from_slice(&env[3 + 4..]);
        assert_eq!(v.open("bffgate/s/ab", "h1a2", &v1).unwrap(), b"tokens");
        assert_eq!(
            v.open("bffgate/s/ab", "h1a3", &v1),
            Err(VaultError::Tampered)
        );
        assert_eq!(v.open_any("bffgate/s/ab", &v1), Err(VaultError::Malformed));
    }

    #[test]
    fn round_trip_and_binding() {
        let v = Vault::parse(K1).unwrap();
        let mut rng = TestRandom(7);
        let env = v.seal("bffgate/s/ab", "h1", b"secret tokens", &mut rng);
        assert!(!env.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            v.open("bffgate/s/ab", "h1", &env).unwrap(),
            b"secret tokens"
        );
        // Moved to another key or presented for another session: refused.
        assert_eq!(
            v.open("bffgate/s/cd", "h1", &env),
            Err(VaultError::Tampered)
        );
        assert_eq!(
            v.open("bffgate/s/ab", "h2", &env),
            Err(VaultError::Tampered)
        );
        // Any flipped byte is refused, never a panic.
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 1;
            assert!(v.open("bffgate/s/ab", "h1", &bad).is_err(), "byte {i}");
        }
        for n in 0..env.len() {
            assert!(v.open("bffgate/s/ab", "h1", &env[..n]).is_err());
        }
        // Two seals of the same record differ (random nonce).
        assert_ne!(
            env,
            v.seal("bffgate/s/ab", "h1", b"secret tokens", &mut rng)
        );
    }

    #[test]
    fn index_names_are_keyed_and_follow_rotation() {
        let old = Vault::parse(K1).unwrap();
        let both = Vault::parse(&format!("{K2},{K1}")).unwrap();
        let a = old.index_names("sub", "alice");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].len(), 32);
        // Without the key, the name is not the plain hash of the subject.
        assert_ne!(a[0], crate::util::hex(&crate::util::sha256(b"alice")[..16]));
        assert_ne!(a, old.index_names("sid", "alice"));
        let b = both.index_names("sub", "alice");
        assert_eq!(b.len(), 2);
        assert_eq!(b[1], a[0], "entries made under the old key are still found");
        assert_ne!(b[0], a[0]);
    }

    #[test]
    fn rotation() {
        let old = Vault::parse(K1).unwrap();
        let both = Vault::parse(&format!("{K2},{K1}")).unwrap();
        let only_new = Vault::parse(K2).unwrap();
        let mut rng = TestRandom(1);
        let env = old.seal("k", "h", b"x", &mut rng);
        assert_eq!(both.open("k", "h", &env).unwrap(), b"x");
        assert_eq!(only_new.open("k", "h", &env), Err(VaultError::UnknownKey));
        assert_eq!(both.current_kid(), "k2");
    }

    #[test]
    fn key_spec_errors_name_no_key_material() {
        assert!(Vault::parse("").is_err());
        let e = Vault::parse("k1:c2hvcnQ").unwrap_err().to_string();
        assert!(e.contains("32 bytes") && !e.contains("c2hvcnQ"), "{e}");
        assert!(Vault::parse(&format!("{K1},{K1}")).is_err());
        assert!(Vault::parse("bad kid:AAAA").is_err());
    }
}
