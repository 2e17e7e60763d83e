//! Signed cookie values: HMAC-SHA256 with key ids, so keys can rotate.
//!
//! Value format: `<kid>.<base64url(payload)>.<base64url(mac)>` where
//! `mac = HMAC-SHA256(key[kid], lp("bffgate-v1") || lp(cookie name) || lp(kid) || lp(payload))`
//! and `lp(x)` is `x` prefixed with its length as a big-endian u32. Length prefixes make the
//! fields impossible to re-split (Envoy CVE-2023-35941); binding the cookie name stops a value
//! signed for one cookie from being accepted as another. Verification is constant-time
//! (`Mac::verify_slice`).

use crate::util::{b64url, b64url_decode_into};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"bffgate-v1";
/// Longest cookie value we even try to verify.
pub const MAX_VALUE_LEN: usize = 512;

/// Why a sealed value was refused. The caller treats every variant the same way (no session);
/// the variants exist for metrics and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// Not three dot-separated fields, too long, or not base64url.
    Malformed,
    /// The key id is not (or no longer) in the key ring.
    UnknownKey,
    /// The MAC does not match.
    BadMac,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::Malformed => "not a sealed value",
            SealError::UnknownKey => "the key id is not in the key ring",
            SealError::BadMac => "the MAC does not match",
        })
    }
}

impl std::error::Error for SealError {}

/// A key ring: the first key signs; every key verifies.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, HmacSha256)>,
    /// SHA-256 of every key id and key, in order: tells key rings apart (for memos of what a
    /// ring verified) without keeping or showing the keys.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "KeyRing{{kids: {kids:?}, keys: [redacted]}}")
    }
}

impl KeyRing {
    /// Parses `kid:base64url-key[,kid:base64url-key...]`; the first entry is the signing key.
    /// Keys must be at least 32 bytes. Errors never contain key material.
    pub fn parse(spec: &str) -> Result<KeyRing, crate::keyspec::KeySpecError> {
        let mut keys: Vec<(String, HmacSha256)> = Vec::new();
        let mut material: Vec<u8> = Vec::new();
        for (kid, key) in crate::keyspec::parse(spec, 32)? {
            let mac = HmacSha256::new_from_slice(&key)
                .map_err(|_| crate::keyspec::KeySpecError::Unusable(kid.clone()))?;
            for field in [kid.as_bytes(), &key] {
                material.extend_from_slice(&(field.len() as u32).to_be_bytes());
                material.extend_from_slice(field);
            }
            keys.push((kid, mac));
        }
        let fingerprint = crate::util::sha256(&material);
        material.fill(0);
        Ok(KeyRing { keys, fingerprint })
    }

    /// Identifies this ring's keys (equal rings, equal fingerprints): what a memo of verified
    /// values is bound to. A hash of the keys: never log it.
    pub(crate) fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// The key id new values are signed with.
    pub fn current_kid(&self) -> &str {
        self.keys.first().map_or("", |(k, _)| k.as_str())
    }

    fn mac_for(base: &HmacSha256, name: &str, kid: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = base.clone();
        for field in [DOMAIN, name.as_bytes(), kid.as_bytes(), payload] {
            mac.update(&(field.len() as u32).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// A key derived from the key `kid` for `label` (an HMAC of the label under it): for keyed
    /// hashes that must not be the cookie MAC itself. `None` if `kid` is not in the ring.
    pub fn derive(&self, kid: &str, label: &str) -> Option<[u8; 32]> {
        let (_, base) = self.keys.iter().find(|(k, _)| k == kid)?;
        let tag = Self::mac_for(base, "bffgate-derived-key", kid, label.as_bytes())
            .finalize()
            .into_bytes();
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag);
        Some(out)
    }

    /// Signs `payload` for the cookie `name` with the current key.
    pub fn seal(&self, name: &str, payload: &[u8]) -> String {
        let Some((kid, base)) = self.keys.first() else {
            return String::new();
        };
        let tag = Self::mac_for(base, name, kid, payload)
            .finalize()
            .into_bytes();
        let mut out = String::with_capacity(kid.len() + 2 + payload.len() * 2 + 44);
        out.push_str(kid);
        out.push('.');
        out.push_str(&b64url(payload));
        out.push('.');
        out.push_str(&b64url(&tag));
        out
    }

    /// Verifies a value produced by [`KeyRing::seal`] for the cookie `name`; returns the payload.
    pub fn open(&self, name: &str, value: &str) -> Result<Vec<u8>, SealError> {
        self.open_with(name, value, <[u8]>::to_vec)
    }

    /// [`KeyRing::open`] without allocating: the payload and the MAC are decoded on the stack,
    /// and `f` sees the verified payload (the session cookie is checked on every request).
    pub fn open_with<T>(
        &self,
        name: &str,
        value: &str,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, SealError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(SealError::Malformed);
        }
        let mut parts = value.split('.');
        let (Some(kid), Some(p64), Some(t64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        if !crate::keyspec::valid_kid(kid) {
            return Err(SealError::Malformed);
        }
        // MAX_VALUE_LEN base64url characters decode to fewer bytes than this.
        let mut payload = [0u8; MAX_VALUE_LEN];
        let n = b64url_decode_into(p64, &mut payload).ok_or(SealError::Malformed)?;
        let payload = payload.get(..n).ok_or(SealError::Malformed)?;
        let mut tag = [0u8; MAX_VALUE_LEN];
        let n = b64url_decode_into(t64, &mut tag).ok_or(SealError::Malformed)?;
        let tag = tag.get(..n).ok_or(SealError::Malformed)?;
        let (_, base) = self
            .keys
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(SealError::UnknownKey)?;
        Self::mac_for(base, name, kid, payload)
            .verify_slice(tag)
            .map_err(|_| SealError::BadMac)?;
        Ok(f(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> KeyRing {
        KeyRing::parse(spec).unwrap()
    }
    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const K0: &str = "k0:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A";

    #[test]
    fn round_trip() {
        let r = ring(K1);
        let v = r.seal("__Host-bff-session", b"0123456789abcdef");
        assert!(v.starts_with("k1."));
        assert_eq!(
            r.open("__Host-bff-session", &v).unwrap(),
            b"0123456789abcdef"
        );
    }

    #[test]
    fn cookie_name_is_bound_into_the_mac() {
        let r = ring(K1);
        let v = r.seal("__Host-bff-session", b"id");
        assert_eq!(r.open("__Host-bff-other", &v), Err(SealError::BadMac));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let r = ring(K1);
        let v = r.seal("c", b"0123456789abcdef");
        let bytes = v.as_bytes().to_vec();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.clone();
                m[i] ^= 1 << bit;
                let Ok(s) = String::from_utf8(m) else {
                    continue;
                };
                if s == v {
                    continue;
                }
                // Non-canonical base64url (spare trailing bits) is refused too, so no other
                // string than the one we issued verifies.
                assert!(r.open("c", &s).is_err(), "flip at {i}/{bit} accepted: {s}");
            }
        }
    }

    #[test]
    fn fields_cannot_be_resplit() {
        // Moving bytes between kid and payload must not keep the MAC valid.
        let r = ring("ab:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
        let v = r.seal("c", b"xyz");
        let parts: Vec<&str> = v.split('.').collect();
        let forged = format!("a.{}.{}", b64url(b"bxyz"), parts[2]);
        assert!(r.open("c", &forged).is_err());
    }

    #[test]
    fn rotation_old_keys_verify_new_key_signs() {
        let old = ring(K0);
        let v_old = old.seal("c", b"id");
        let rotated = ring(&format!("{K1},{K0}"));
        assert_eq!(rotated.open("c", &v_old).unwrap(), b"id");
        assert!(rotated.seal("c", b"id").starts_with("k1."));
        let removed = ring(K1);
        assert_eq!(removed.open("c", &v_old), Err(SealError::UnknownKey));
        // Rings differ by fingerprint exactly when their keys or key ids do.
        assert_eq!(ring(K1).fingerprint(), removed.fingerprint());
        assert_ne!(rotated.fingerprint(), removed.fingerprint());
        assert_ne!(old.fingerprint(), removed.fingerprint());
        let renamed = ring("k9:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
        assert_ne!(renamed.fingerprint(), removed.fingerprint());
    }

    #[test]
    fn open_with_sees_exactly_what_open_returns() {
        let r = ring(K1);
        let v = r.seal("c", b"0123456789abcdef0123");
        assert_eq!(r.open_with("c", &v, <[u8]>::to_vec), r.open("c", &v));
        assert_eq!(r.open_with("c", &v, |p| p.len()), Ok(20));
        let mut forged = v.clone();
        forged.pop();
        forged.push(if v.ends_with('A') { 'B' } else { 'A' });
        assert!(r.open_with("c", &forged, |_| ()).is_err());
        // The longest value fits the stack buffers and is refused by its MAC, not by a panic.
        let longest = format!("k1.{}.AA", "A".repeat(MAX_VALUE_LEN - 6));
        assert_eq!(longest.len(), MAX_VALUE_LEN);
        assert_eq!(r.open_with("c", &longest, |_| ()), Err(SealError::BadMac));
    }

    #[test]
    fn malformed_values_are_refused() {
        let r = ring(K1);
        for bad in [
            "",
            ".",
            "..",
            "k1..",
            "k1.a.b.c",
            "k1.!!!.abc",
            "k1.YQ.***",
            "toolongkeyid12345.YQ.YQ",
            &"a".repeat(600),
        ] {
            assert!(r.open("c", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_ring_config_errors_name_the_entry_and_hide_the_key() {
        assert!(KeyRing::parse("").is_err());
        let e = KeyRing::parse("k1:c2hvcnQ").unwrap_err().to_string();
        assert!(
            e.contains("at least 32 bytes") && !e.contains("c2hvcnQ"),
            "{e}"
        );
        assert!(KeyRing::parse(&format!("{K1},{K1}"))
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        assert!(KeyRing::parse("bad kid:AAAA").is_err());
        assert_eq!(ring(&format!("{K1},{K0}")).current_kid(), "k1");
        assert!(!format!("{:?}", ring(K1)).contains("AAEC"));
    }
}
