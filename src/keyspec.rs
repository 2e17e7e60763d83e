//! Key ring specifications, `kid:base64url-key[,kid:base64url-key...]` (first entry first),
//! shared by the cookie MAC ring (`seal`) and the store's AEAD ring (`vault`). The first entry is the one new values use; every entry verifies or opens,
//! which is how keys rotate. Errors name the entry, never key material.

use crate::util::b64url_decode;

/// Longest key id.
pub const MAX_KID_LEN: usize = 16;

/// True for key ids made of `[A-Za-z0-9_-]`, 1 to 16 characters.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a key ring spec was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpecError {
    /// Entry `i` is not `kid:base64url-key`.
    Shape(usize),
    /// Entry `i` has a key id outside `[A-Za-z0-9_-]{1,16}`.
    BadKid(usize),
    /// Entry `i` repeats the key id of an earlier one.
    DuplicateKid(usize, String),
    /// Entry `i`'s key is not base64url.
    NotBase64(usize, String),
    /// Entry `i`'s key is shorter than needed (`need` bytes, `got` bytes).
    TooShort {
        /// Entry index.
        entry: usize,
        /// Its key id.
        kid: String,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// A key of the wrong length for a cipher that takes exactly `need` bytes.
    WrongLength {
        /// Its key id.
        kid: String,
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The key could not be used by the cipher or MAC.
    Unusable(String),
    /// No entry at all.
    Empty,
}

impl std::fmt::Display for KeySpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpecError::Shape(i) => write!(f, "entry {i}: expected `kid:base64url-key`"),
            KeySpecError::BadKid(i) => write!(f, "entry {i}: key id must be 1-16 of [A-Za-z0-9_-]"),
            KeySpecError::DuplicateKid(i, kid) => write!(f, "entry {i}: duplicate key id `{kid}`"),
            KeySpecError::NotBase64(i, kid) => {
                write!(f, "entry {i} (`{kid}`): key is not base64url")
            }
            KeySpecError::TooShort {
                entry,
                kid,
                need,
                got,
            } => write!(
                f,
                "entry {entry} (`{kid}`): key must be at least {need} bytes, got {got}"
            ),
            KeySpecError::WrongLength { kid, need, got } => {
                write!(f, "`{kid}`: key must be exactly {need} bytes, got {got}")
            }
            KeySpecError::Unusable(kid) => write!(f, "`{kid}`: unusable key"),
            KeySpecError::Empty => write!(f, "no keys"),
        }
    }
}

impl std::error::Error for KeySpecError {}

/// Parses a key ring spec into key ids and raw keys of at least `min_len` bytes.
pub fn parse(spec: &str, min_len: usize) -> Result<Vec<(String, Vec<u8>)>, KeySpecError> {
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, entry) in spec.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let (kid, b64) = entry.split_once(':').ok_or(KeySpecError::Shape(i))?;
        if !valid_kid(kid) {
            return Err(KeySpecError::BadKid(i));
        }
        if keys.iter().any(|(k, _)| k == kid) {
            return Err(KeySpecError::DuplicateKid(i, kid.to_string()));
        }
        let key = b64url_decode(b64.trim_end_matches('='))
            .ok_or_else(|| KeySpecError::NotBase64(i, kid.to_string()))?;
        if key.len() < min_len {
            return Err(KeySpecError::TooShort {
                entry: i,
                kid: kid.to_string(),
                need: min_len,
                got: key.len(),
            });
        }
        keys.push((kid.to_string(), key));
    }
    if keys.is_empty() {
        return Err(KeySpecError::Empty);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_parsed_in_order_and_errors_name_the_entry_not_the_key() {
        let k = crate::util::b64url(&[7u8; 32]);
        let got = parse(&format!("a:{k}, b:{k}"), 32).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("a", "b"));
        for (spec, want) in [
            (String::new(), "no keys"),
            ("nokid".to_string(), "entry 0: expected"),
            (format!("bad kid!:{k}"), "entry 0: key id"),
            (format!("a:{k},a:{k}"), "entry 1: duplicate"),
            ("a:***".to_string(), "not base64url"),
            ("a:AAAA".to_string(), "at least 32 bytes, got 3"),
        ] {
            let e = parse(&spec, 32).unwrap_err().to_string();
            assert!(e.contains(want), "{spec:?}: {e}");
            assert!(!e.contains(&k), "{e}");
        }
        assert!(valid_kid("k1") && !valid_kid("") && !valid_kid(&"x".repeat(17)));
    }
}
