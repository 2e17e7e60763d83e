//! Sessions: the id, the server-side record, and lifetime rules on an injected `now`.

use crate::secret::Secret;
use crate::util::{hex, Random};
use serde::{Deserialize, Serialize};

/// Session id length in bytes (128 bits from the host CSPRNG).
pub const ID_LEN: usize = 16;

/// An opaque session id. Its `Debug` is redacted; the store key is derived from it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId([u8; ID_LEN]);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    /// A fresh random id.
    pub fn generate(rng: &mut dyn Random) -> SessionId {
        let mut b = [0u8; ID_LEN];
        rng.fill(&mut b);
        SessionId(b)
    }
    /// From the payload of a verified cookie.
    pub fn from_bytes(b: &[u8]) -> Option<SessionId> {
        <[u8; ID_LEN]>::try_from(b).ok().map(SessionId)
    }
    /// Raw bytes (the cookie payload).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Hex form, used only to build store keys.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
    /// A non-reversible handle for logs and audit: the first 12 hex digits of SHA-256(id).
    pub fn handle(&self) -> String {
        let h = crate::util::sha256(&self.0);
        hex(h.get(..6).unwrap_or(&[]))
    }
}

/// A token held for one audience.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AudienceToken {
    /// The audience (resource indicator).
    pub aud: String,
    /// The access token.
    pub token: Secret,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Space-separated granted scopes.
    pub scope: String,
}

/// The server-side session record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Subject.
    pub sub: String,
    /// Kept ID-token claims (display claims and those policies use).
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Created, unix seconds.
    pub created: u64,
    /// Last use (written at most every `touch_interval_s`).
    pub last_seen: u64,
    /// Absolute expiry.
    pub expires: u64,
    /// Refresh token, if the provider issued one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    /// ID token (for RP-initiated logout's `id_token_hint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<Secret>,
    /// Access tokens per audience.
    #[serde(default)]
    pub tokens: Vec<AudienceToken>,
    /// Refresh lock: while `now` is before this, one request (on some worker) is renewing a
    /// token for this session and others wait for its result. Taken and released with CAS; a
    /// holder that died simply lets it expire.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refreshing_until: u64,
    /// When the last renewal failed for a transient reason (provider down); requests that were
    /// waiting on it then fail fast instead of queueing more renewals.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refresh_failed_at: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Whether a session is still usable at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Usable.
    Live,
    /// Past the idle timeout.
    Idle,
    /// Past the absolute lifetime.
    Expired,
}

impl Session {
    /// Liveness at `now` for an idle timeout of `idle_s`.
    pub fn liveness(&self, now: u64, idle_s: u64) -> Liveness {
        if now >= self.expires {
            Liveness::Expired
        } else if now >= self.last_seen.saturating_add(idle_s) {
            Liveness::Idle
        } else {
            Liveness::Live
        }
    }

    /// When the session ends if unused from now on.
    pub fn ends_at(&self, idle_s: u64) -> u64 {
        self.expires.min(self.last_seen.saturating_add(idle_s))
    }

    /// Whether `last_seen` is stale enough to be written back.
    pub fn needs_touch(&self, now: u64, touch_s: u64) -> bool {
        now >= self.last_seen.saturating_add(touch_s)
    }

    /// The token for `aud` that is still valid `skew` seconds from `now`.
    pub fn token_for(&self, aud: &str, now: u64, skew: u64) -> Option<&AudienceToken> {
        self.tokens
            .iter()
            .find(|t| t.aud == aud && t.exp > now.saturating_add(skew))
    }

    /// Whether another request holds the refresh lock at `now`.
    pub fn refresh_locked(&self, now: u64) -> bool {
        self.refreshing_until > now
    }

    /// Stores (or replaces) the token for its audience.
    pub fn put_token(&mut self, t: AudienceToken) {
        self.tokens.retain(|x| x.aud != t.aud);
        self.tokens.push(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::TestRandom;

    fn s() -> Session {
        Session {
            sub: "alice".into(),
            claims: Default::default(),
            created: 1000,
            last_seen: 1000,
            expires: 1000 + 3600,
            refresh_token: Some(Secret::new("rt")),
            id_token: None,
            tokens: vec![],
            refreshing_until: 0,
            refresh_failed_at: 0,
        }
    }

    #[test]
    fn ids_are_random_and_redacted() {
        let mut r = TestRandom(1);
        let a = SessionId::generate(&mut r);
        let b = SessionId::generate(&mut r);
        assert_ne!(a, b);
        assert_eq!(a.to_hex().len(), 32);
        assert_eq!(format!("{a:?}"), "SessionId([redacted])");
        assert_eq!(a.handle().len(), 12);
        assert!(!a.to_hex().starts_with(&a.handle()));
        assert_eq!(SessionId::from_bytes(a.as_bytes()), Some(a));
        assert_eq!(SessionId::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let mut x = s();
        assert_eq!(x.liveness(1000, 600), Liveness::Live);
        assert_eq!(x.liveness(1599, 600), Liveness::Live);
        assert_eq!(x.liveness(1600, 600), Liveness::Idle);
        x.last_seen = 4500;
        assert_eq!(x.liveness(4599, 600), Liveness::Live);
        assert_eq!(x.liveness(4600, 600), Liveness::Expired);
        assert_eq!(x.ends_at(600), 4600);
    }

    #[test]
    fn tokens_expire_with_skew_and_replace_per_audience() {
        let mut x = s();
        x.put_token(AudienceToken {
            aud: "a".into(),
            token: Secret::new("t1"),
            exp: 2000,
            scope: "s".into(),
        });
        assert!(x.token_for("a", 1900, 30).is_some());
        assert!(x.token_for("a", 1970, 30).is_none());
        assert!(x.token_for("b", 1000, 0).is_none());
        x.put_token(AudienceToken {
            aud: "a".into(),
            token: Secret::new("t2"),
            exp: 3000,
            scope: "s".into(),
        });
        assert_eq!(x.tokens.len(), 1);
        assert_eq!(x.token_for("a", 1000, 0).unwrap().token.expose(), "t2");
    }
}
