//! Sessions: the id, the server-side record, and lifetime rules on an injected `now`.

use crate::secret::Secret;
use crate::util::{hex, Random};
use serde::{Deserialize, Serialize};

/// Length of the random part of a session id (128 bits from the host CSPRNG).
pub const ID_LEN: usize = 16;
/// Length of a session id in a cookie: slot (u32, big-endian) and the random part.
pub const COOKIE_LEN: usize = 4 + ID_LEN;

/// A session id: the slot of the store that holds the session, and 128 random bits that the
/// slot's record must match. Its `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId {
    slot: u32,
    secret: [u8; ID_LEN],
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    /// A fresh random id for `slot`.
    pub fn generate(rng: &mut dyn Random, slot: u32) -> SessionId {
        let mut secret = [0u8; ID_LEN];
        rng.fill(&mut secret);
        SessionId { slot, secret }
    }
    /// From the payload of a verified cookie.
    pub fn from_bytes(b: &[u8]) -> Option<SessionId> {
        let slot = u32::from_be_bytes(<[u8; 4]>::try_from(b.get(..4)?).ok()?);
        let secret = <[u8; ID_LEN]>::try_from(b.get(4..)?).ok()?;
        Some(SessionId { slot, secret })
    }
    /// The cookie payload.
    pub fn to_bytes(&self) -> [u8; COOKIE_LEN] {
        let mut out = [0u8; COOKIE_LEN];
        for (o, b) in out
            .iter_mut()
            .zip(self.slot.to_be_bytes().iter().chain(self.secret.iter()))
        {
            *o = *b;
        }
        out
    }
    /// The store slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
    /// Hex of SHA-256 of the random part: what the slot's record holds to be matched (the id
    /// itself is never stored, so a dump of shared data cannot be turned into cookies).
    pub fn verifier(&self) -> String {
        hex(&crate::util::sha256(&self.secret))
    }
    /// [`SessionId::verifier`] as bytes, without allocating (for the per-request owner check).
    pub fn verifier_bytes(&self) -> [u8; 64] {
        let h = crate::util::sha256(&self.secret);
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(h.iter()) {
            for (o, n) in pair.iter_mut().zip([b >> 4, b & 0x0f]) {
                *o = if n < 10 { b'0' + n } else { b'a' + n - 10 };
            }
        }
        out
    }

    /// A non-reversible handle for logs and audit: 12 hex digits of SHA-256 of a domain tag
    /// and the id (unrelated to [`SessionId::verifier`]).
    pub fn handle(&self) -> String {
        let mut buf = Vec::with_capacity(ID_LEN + 16);
        buf.extend_from_slice(b"bffgate-handle:");
        buf.extend_from_slice(&self.secret);
        let h = crate::util::sha256(&buf);
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
    /// When bffgate obtained it, unix seconds (0 if unknown: a record from an older version).
    #[serde(default)]
    pub obtained: u64,
    /// Space-separated granted scopes.
    pub scope: String,
}

/// A token younger than this many seconds is never due for renewal: it has just arrived,
/// possibly from another request's renewal that this request was waiting for.
pub const MIN_RENEW_AGE: u64 = 1;

/// When a token obtained at `obtained` and expiring at `exp` is due for renewal under a
/// refresh skew of `skew` seconds: `skew` before it expires, but never earlier than half way
/// through its life, and never within [`MIN_RENEW_AGE`] of obtaining it. So a token that lives
/// shorter than the skew (a 5 s token under the default 30 s skew) is renewed once per
/// lifetime, not on every request; `skew` 0 means "while it has not expired". Never after
/// `exp`.
pub fn renew_at(exp: u64, obtained: u64, skew: u64) -> u64 {
    let life = exp.saturating_sub(obtained);
    exp.saturating_sub(skew.min(life / 2))
        .max(obtained.saturating_add(MIN_RENEW_AGE))
        .min(exp)
}

/// The server-side session record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Session {
    /// [`SessionId::verifier`] of the session that owns this record (set by the store).
    #[serde(default)]
    pub owner: String,
    /// Non-reversible audit handle ([`SessionId::handle`], set by the store).
    #[serde(default)]
    pub handle: String,
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
    /// The ID token's `acr` at the last sign-in (step-up, RFC 9470).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// The ID token's `auth_time` at the last sign-in (step-up `max_age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// The next request to a `session` route needs a fresh sign-in (an anomaly's `step_up`).
    /// Kept in the record's head.
    #[serde(skip)]
    pub reauth: bool,
    /// The client binding made at sign-in (keyed hashes only). Kept in the record's head.
    #[serde(skip)]
    pub binding: crate::anomaly::Binding,
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

    /// The token for `aud` that is not due for renewal at `now` under a refresh skew of `skew`
    /// seconds ([`renew_at`]); with `skew` 0, any token that has not expired.
    pub fn token_for(&self, aud: &str, now: u64, skew: u64) -> Option<&AudienceToken> {
        self.tokens
            .iter()
            .find(|t| t.aud == aud && now < renew_at(t.exp, t.obtained, skew))
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
    use crate::testkit::TestRandom;

    fn s() -> Session {
        Session {
            owner: String::new(),
            handle: String::new(),
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
            acr: None,
            auth_time: None,
            reauth: false,
            binding: Default::default(),
        }
    }

    #[test]
    fn ids_are_random_and_redacted() {
        let mut r = TestRandom(1);
        let a = SessionId::generate(&mut r, 7);
        let b = SessionId::generate(&mut r, 7);
        assert_ne!(a, b);
        assert_eq!(a.slot(), 7);
        assert_eq!(a.verifier().len(), 64);
        assert_eq!(a.verifier().as_bytes(), &a.verifier_bytes()[..]);
        assert_eq!(format!("{a:?}"), "SessionId([redacted])");
        assert_eq!(a.handle().len(), 12);
        assert!(!a.verifier().starts_with(&a.handle()));
        assert_eq!(SessionId::from_bytes(&a.to_bytes()), Some(a.clone()));
        assert_eq!(a.to_bytes().len(), COOKIE_LEN);
        assert_eq!(SessionId::from_bytes(&[1, 2, 3]), None);
        assert_eq!(SessionId::from_bytes(&[0; COOKIE_LEN + 1]), None);
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
            obtained: 1000,
            scope: "s".into(),
        });
        assert!(x.token_for("a", 1900, 30).is_some());
        assert!(x.token_for("a", 1970, 30).is_none());
        assert!(x.token_for("b", 1000, 0).is_none());
        x.put_token(AudienceToken {
            aud: "a".into(),
            token: Secret::new("t2"),
            exp: 3000,
            obtained: 1000,
            scope: "s".into(),
        });
        assert_eq!(x.tokens.len(), 1);
        assert_eq!(x.token_for("a", 1000, 0).unwrap().token.expose(), "t2");
    }

    #[test]
    fn a_token_shorter_than_the_skew_is_renewed_once_per_lifetime() {
        // Under a 30 s skew: a 1 h token 30 s before expiry; a 40 s token at 20 s (half its
        // life); an 8 s token at 4 s; a 2 s token at 1 s; never before it is 1 s old.
        for (life, skew, due) in [
            (3600, 30, 3570),
            (40, 30, 20),
            (8, 30, 4),
            (2, 30, 1),
            (1, 30, 1),
            (60, 0, 60),
            (60, 10, 50),
        ] {
            assert_eq!(
                renew_at(1000 + life, 1000, skew),
                1000 + due,
                "{life} s, skew {skew}"
            );
        }
        // A token from an older record (obtained unknown) keeps the plain skew.
        assert_eq!(renew_at(2000, 0, 30), 1970);
        // Never after expiry, whatever the numbers.
        assert_eq!(renew_at(1000, 1000, 30), 1000);
        assert_eq!(renew_at(5, u64::MAX, 30), 5);
    }
}
