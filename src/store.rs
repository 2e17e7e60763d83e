//! The session store interface and its implementation over proxy-wasm shared data.
//!
//! Shared data is per Envoy process and visible to every worker's VM. It offers get and
//! set-with-CAS only (no delete, no TTL): a deleted entry is an empty value, and every
//! read-modify-write goes through CAS so two workers never lose each other's update.

use crate::secret::Secret;
use crate::session::{Session, SessionId};
use crate::util::{hex, sha256};
use serde::{Deserialize, Serialize};

/// A CAS token from a read.
pub type Cas = u32;

/// Errors from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The entry changed since it was read.
    CasMismatch,
    /// The host refused the operation.
    Unavailable,
}

/// The key-value surface of proxy-wasm shared data (implemented by the wasm shell, and in memory
/// for tests).
pub trait SharedData {
    /// Value and CAS token; `(None, cas)` or an empty value when absent.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>);
    /// Sets `key`; with `cas`, only if unchanged since that read.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError>;
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
}

/// Session and pending-login storage, as the flow engine sees it.
pub trait Store {
    /// Loads a session with its CAS token.
    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)>;
    /// Writes a session; with `cas`, only if unchanged.
    fn put_session(
        &mut self,
        id: &SessionId,
        s: &Session,
        cas: Option<Cas>,
    ) -> Result<(), StoreError>;
    /// Deletes a session.
    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError>;
    /// Saves a pending login under its state.
    fn put_pending(&mut self, state: &str, p: &PendingLogin) -> Result<(), StoreError>;
    /// Takes (reads and deletes, atomically) a pending login: a second take of the same state
    /// gets `None`, so a callback cannot be replayed.
    fn take_pending(&mut self, state: &str) -> Option<PendingLogin>;
}

/// The embedded store: JSON records in shared data.
pub struct SharedStore<D> {
    /// The host surface.
    pub data: D,
}

fn session_key(id: &SessionId) -> String {
    let mut k = String::with_capacity(43);
    k.push_str("bffgate:s:");
    k.push_str(&id.to_hex());
    k
}

fn pending_key(state: &str) -> String {
    let h = sha256(state.as_bytes());
    format!("bffgate:p:{}", hex(h.get(..16).unwrap_or(&[])))
}

impl<D: SharedData> Store for SharedStore<D> {
    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)> {
        let (v, cas) = self.data.get(&session_key(id));
        let v = v.filter(|v| !v.is_empty())?;
        let s = serde_json::from_slice(&v).ok()?;
        Some((s, cas.unwrap_or(0)))
    }

    fn put_session(
        &mut self,
        id: &SessionId,
        s: &Session,
        cas: Option<Cas>,
    ) -> Result<(), StoreError> {
        let v = serde_json::to_vec(s).map_err(|_| StoreError::Unavailable)?;
        self.data.set(&session_key(id), &v, cas)
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.data.set(&session_key(id), b"", None)
    }

    fn put_pending(&mut self, state: &str, p: &PendingLogin) -> Result<(), StoreError> {
        let v = serde_json::to_vec(p).map_err(|_| StoreError::Unavailable)?;
        self.data.set(&pending_key(state), &v, None)
    }

    fn take_pending(&mut self, state: &str) -> Option<PendingLogin> {
        let key = pending_key(state);
        let (v, cas) = self.data.get(&key);
        let v = v.filter(|v| !v.is_empty())?;
        // Consume first, with CAS: of two concurrent callbacks only one wins.
        self.data.set(&key, b"", cas).ok()?;
        serde_json::from_slice(&v).ok()
    }
}

/// In-memory shared data with CAS semantics like Envoy's, for tests and the native tools.
#[derive(Debug, Default, Clone)]
pub struct MemoryData {
    map: std::collections::HashMap<String, (Vec<u8>, Cas)>,
    next_cas: Cas,
}

impl MemoryData {
    /// Number of non-empty entries.
    pub fn live_entries(&self) -> usize {
        self.map.values().filter(|(v, _)| !v.is_empty()).count()
    }
    /// All values (to search them for secrets in tests).
    pub fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.map.values().map(|(v, _)| v.as_slice())
    }
}

impl SharedData for MemoryData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        match self.map.get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        // As Envoy does: a CAS of 0 means "no check", and a CAS is only compared against an
        // existing entry (an absent key is always inserted: there is no insert-if-absent).
        if let (Some(want), Some((_, current))) = (cas, self.map.get(key)) {
            if want != 0 && want != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.map
            .insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::TestRandom;

    fn session() -> Session {
        Session {
            sub: "alice".into(),
            claims: Default::default(),
            created: 1,
            last_seen: 1,
            expires: 100,
            refresh_token: None,
            id_token: None,
            tokens: vec![],
            refreshing_until: 0,
            refresh_failed_at: 0,
        }
    }

    #[test]
    fn session_round_trip_and_delete() {
        let mut st = SharedStore {
            data: MemoryData::default(),
        };
        let id = SessionId::generate(&mut TestRandom(3));
        assert!(st.get_session(&id).is_none());
        st.put_session(&id, &session(), None).unwrap();
        let (s, _) = st.get_session(&id).unwrap();
        assert_eq!(s, session());
        st.delete_session(&id).unwrap();
        assert!(st.get_session(&id).is_none());
    }

    #[test]
    fn concurrent_updates_are_detected() {
        let mut st = SharedStore {
            data: MemoryData::default(),
        };
        let id = SessionId::generate(&mut TestRandom(3));
        st.put_session(&id, &session(), None).unwrap();
        let (_, cas_a) = st.get_session(&id).unwrap();
        let (_, cas_b) = st.get_session(&id).unwrap();
        st.put_session(&id, &session(), Some(cas_a)).unwrap();
        assert_eq!(
            st.put_session(&id, &session(), Some(cas_b)),
            Err(StoreError::CasMismatch)
        );
    }

    #[test]
    fn pending_login_is_taken_once() {
        let mut st = SharedStore {
            data: MemoryData::default(),
        };
        let p = PendingLogin {
            verifier: Secret::new("v"),
            nonce: "n".into(),
            return_to: "/".into(),
            flow_hash: "h".into(),
            expires: 10,
        };
        st.put_pending("state1", &p).unwrap();
        assert_eq!(st.take_pending("state2"), None);
        assert_eq!(st.take_pending("state1"), Some(p));
        assert_eq!(st.take_pending("state1"), None);
    }
}
