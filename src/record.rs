//! The stored form of a session: a small binary head with exactly what the fast path reads
//! (owner check, lifetimes, subject, and each audience's token with its expiry and scopes),
//! followed by JSON for everything else. The fast path walks the head in place, without JSON
//! and without allocating; the full path decodes both.
//!
//! Layout: `b"B2"`, then `owner` (u8 length + bytes), `sub` (u16 + bytes), `expires` and
//! `last_seen` (u64 big-endian), a token count (u8) and per token `aud`, `scope`, `token`
//! (u16 + bytes each), `exp` and `obtained` (u64); then the JSON of the session without its
//! tokens. `B3` adds, after `last_seen`, a flags byte (bit 0: a fresh sign-in is required) and
//! the client binding (key id: u8 length + bytes; a presence byte, bit 0 User-Agent hash, bit 1
//! network hash; then those 8-byte hashes). `B2` records (no flags, no binding) and `B1` records
//! (written before tokens carried `obtained`, read with `obtained` 0) are still read.

use crate::session::{renew_at, AudienceToken, Session};

const MAGIC: &[u8; 2] = b"B3";
/// The layout before flags and the client binding.
const MAGIC_V2: &[u8; 2] = b"B2";
/// The layout before that: no `obtained` per token.
const MAGIC_V1: &[u8; 2] = b"B1";

/// Head flag: the session's next request to a `session` route needs a fresh sign-in (an
/// anomaly's `step_up` action).
pub const FLAG_REAUTH: u8 = 1;

/// A cursor over the head; every read is bounds-checked.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u16(&mut self) -> Option<usize> {
        let s = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([*s.first()?, *s.get(1)?])))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(<[u8; 8]>::try_from(self.take(8)?).ok()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
    fn str16(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes16()?).ok()
    }
}

fn put_u16_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    let n = u16::try_from(s.len()).ok()?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// Encodes a session; `None` only if a field is beyond the format's limits (a 64 KiB token).
pub fn encode(s: &Session) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(
        512 + s
            .tokens
            .iter()
            .map(|t| t.token.expose().len())
            .sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.push(u8::try_from(s.owner.len()).ok()?);
    out.extend_from_slice(s.owner.as_bytes());
    put_u16_str(&mut out, &s.sub)?;
    out.extend_from_slice(&s.expires.to_be_bytes());
    out.extend_from_slice(&s.last_seen.to_be_bytes());
    out.push(if s.reauth { FLAG_REAUTH } else { 0 });
    out.push(u8::try_from(s.binding.kid.len()).ok()?);
    out.extend_from_slice(s.binding.kid.as_bytes());
    out.push(u8::from(s.binding.ua.is_some()) | (u8::from(s.binding.net.is_some()) << 1));
    for h in [&s.binding.ua, &s.binding.net].into_iter().flatten() {
        out.extend_from_slice(h);
    }
    out.push(u8::try_from(s.tokens.len()).ok()?);
    for t in &s.tokens {
        put_u16_str(&mut out, &t.aud)?;
        put_u16_str(&mut out, &t.scope)?;
        put_u16_str(&mut out, t.token.expose())?;
        out.extend_from_slice(&t.exp.to_be_bytes());
        out.extend_from_slice(&t.obtained.to_be_bytes());
    }
    let mut rest = s.clone();
    rest.tokens = Vec::new();
    serde_json::to_writer(&mut out, &rest).ok()?;
    Some(out)
}

/// What the fast path reads, borrowed from the stored bytes.
pub struct Head<'a> {
    /// [`crate::session::SessionId::verifier`] of the owner.
    pub owner: &'a [u8],
    /// Subject.
    pub sub: &'a str,
    /// Absolute expiry.
    pub expires: u64,
    /// Last use.
    pub last_seen: u64,
    /// Flags ([`FLAG_REAUTH`]).
    pub flags: u8,
    /// Key id of the client binding's hashes (empty: no binding).
    pub bind_kid: &'a str,
    /// Keyed hash of the User-Agent the session was bound to.
    pub bind_ua: Option<[u8; 8]>,
    /// Keyed hash of the network the session was bound to.
    pub bind_net: Option<[u8; 8]>,
    tokens: Cur<'a>,
    count: u8,
    /// Whether tokens carry `obtained` (layout `B2`).
    v2: bool,
}

impl<'a> Head<'a> {
    /// Parses the head (not the tokens yet).
    pub fn parse(b: &'a [u8]) -> Option<Head<'a>> {
        let mut c = Cur { b, at: 0 };
        let (v2, v3) = match c.take(2)? {
            m if m == MAGIC => (true, true),
            m if m == MAGIC_V2 => (true, false),
            m if m == MAGIC_V1 => (false, false),
            _ => return None,
        };
        let n = usize::from(c.u8()?);
        let owner = c.take(n)?;
        let sub = c.str16()?;
        let expires = c.u64()?;
        let last_seen = c.u64()?;
        let (mut flags, mut bind_kid, mut bind_ua, mut bind_net) = (0, "", None, None);
        if v3 {
            flags = c.u8()?;
            let n = usize::from(c.u8()?);
            bind_kid = std::str::from_utf8(c.take(n)?).ok()?;
            let present = c.u8()?;
            let mut hash = |bit: u8| -> Option<Option<[u8; 8]>> {
                if present & bit == 0 {
                    return Some(None);
                }
                Some(Some(<[u8; 8]>::try_from(c.take(8)?).ok()?))
            };
            bind_ua = hash(1)?;
            bind_net = hash(2)?;
        }
        let count = c.u8()?;
        Some(Head {
            owner,
            sub,
            expires,
            last_seen,
            flags,
            bind_kid,
            bind_ua,
            bind_net,
            tokens: c,
            count,
            v2,
        })
    }

    /// The first token for `aud` that is not due for renewal at `now` under a refresh skew of
    /// `skew` seconds ([`renew_at`]): `(token, scope)`.
    pub fn token(&self, aud: &str, now: u64, skew: u64) -> Option<(&'a str, &'a str)> {
        let (span, scope) = self.token_span(aud, now, skew)?;
        Some((std::str::from_utf8(self.tokens.b.get(span)?).ok()?, scope))
    }

    /// [`Head::token`] with the token as a byte range of the record, so that the caller can
    /// take it out of the buffer in place; the token's bytes are not checked for UTF-8 here.
    /// Only the matching entry is read; the others are skipped over.
    pub fn token_span(
        &self,
        aud: &str,
        now: u64,
        skew: u64,
    ) -> Option<(std::ops::Range<usize>, &'a str)> {
        let mut c = Cur {
            b: self.tokens.b,
            at: self.tokens.at,
        };
        for _ in 0..self.count {
            let a = c.bytes16()?;
            let scope = c.bytes16()?;
            let n = c.u16()?;
            let start = c.at;
            c.take(n)?;
            let exp = c.u64()?;
            let obtained = if self.v2 { c.u64()? } else { 0 };
            if a == aud.as_bytes() && now < renew_at(exp, obtained, skew) {
                return Some((start..start + n, std::str::from_utf8(scope).ok()?));
            }
        }
        None
    }
}

/// Decodes a whole session.
pub fn decode(b: &[u8]) -> Option<Session> {
    let head = Head::parse(b)?;
    let mut c = Cur {
        b: head.tokens.b,
        at: head.tokens.at,
    };
    let mut tokens = Vec::with_capacity(usize::from(head.count));
    for _ in 0..head.count {
        let aud = c.str16()?.to_string();
        let scope = c.str16()?.to_string();
        let token = crate::secret::Secret::new(c.str16()?);
        let exp = c.u64()?;
        let obtained = if head.v2 { c.u64()? } else { 0 };
        tokens.push(AudienceToken {
            aud,
            token,
            exp,
            obtained,
            scope,
        });
    }
    let mut s: Session = serde_json::from_slice(b.get(c.at..)?).ok()?;
    s.tokens = tokens;
    s.owner = std::str::from_utf8(head.owner).ok()?.to_string();
    s.sub = head.sub.to_string();
    s.expires = head.expires;
    s.last_seen = head.last_seen;
    s.reauth = head.flags & FLAG_REAUTH != 0;
    s.binding = crate::anomaly::Binding {
        kid: head.bind_kid.to_string(),
        ua: head.bind_ua,
        net: head.bind_net,
    };
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn s() -> Session {
        Session {
            owner: "ab".repeat(32),
            sub: "alice ü".into(),
            created: 1,
            last_seen: 5,
            expires: 99,
            refresh_token: Some(Secret::new("rt")),
            tokens: vec![
                AudienceToken {
                    aud: "https://a".into(),
                    token: Secret::new("t-a"),
                    exp: 50,
                    obtained: 10,
                    scope: "x y".into(),
                },
                AudienceToken {
                    aud: "https://b".into(),
                    token: Secret::new("t-b"),
                    exp: 70,
                    obtained: 0,
                    scope: "".into(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_the_head_finds_tokens_in_place() {
        let b = encode(&s()).unwrap();
        assert_eq!(decode(&b).unwrap(), s());
        let h = Head::parse(&b).unwrap();
        assert_eq!((h.sub, h.expires, h.last_seen), ("alice ü", 99, 5));
        assert_eq!(h.owner, "ab".repeat(32).as_bytes());
        assert_eq!(h.token("https://b", 60, 0), Some(("t-b", "")));
        assert_eq!(h.token("https://b", 70, 0), None, "expired at `now`");
        assert_eq!(
            h.token("https://b", 60, 10),
            None,
            "due for renewal 10 s before"
        );
        assert_eq!(h.token("https://c", 0, 0), None);
        // A 40 s token (10..50) under a 30 s skew is renewed at half its life, not at once.
        assert!(h.token("https://a", 29, 30).is_some());
        assert!(h.token("https://a", 30, 30).is_none());
        let (span, scope) = h.token_span("https://a", 0, 0).unwrap();
        assert_eq!((&b[span], scope), (&b"t-a"[..], "x y"));
    }

    #[test]
    fn version_1_records_are_still_read() {
        // B1: the same layout without `obtained`.
        let mut b = b"B1".to_vec();
        b.push(2);
        b.extend_from_slice(b"ab");
        b.extend_from_slice(&[0, 1, b'x']);
        b.extend_from_slice(&99u64.to_be_bytes());
        b.extend_from_slice(&5u64.to_be_bytes());
        b.push(1);
        for f in ["https://a", "s", "tok"] {
            b.extend_from_slice(&(f.len() as u16).to_be_bytes());
            b.extend_from_slice(f.as_bytes());
        }
        b.extend_from_slice(&50u64.to_be_bytes());
        b.extend_from_slice(br#"{"sub":"x","claims":{},"created":1,"last_seen":5,"expires":99}"#);
        let s = decode(&b).unwrap();
        assert_eq!((s.tokens[0].exp, s.tokens[0].obtained), (50, 0));
        assert_eq!(
            Head::parse(&b).unwrap().token("https://a", 10, 30),
            Some(("tok", "s"))
        );
    }

    #[test]
    fn every_truncation_and_garbage_is_refused_without_panic() {
        let b = encode(&s()).unwrap();
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_none(), "truncated at {n}");
            if let Some(h) = Head::parse(&b[..n]) {
                let _ = h.token("https://b", 0, 0);
            }
        }
        for g in [&b""[..], b"B1", b"{\"sub\":\"x\"}", b"B1\xff\xff\xff"] {
            assert!(decode(g).is_none());
        }
    }
}
