//! Secrets as newtypes: `Debug` prints `[redacted]`, bytes are reached through `expose()` only,
//! so every place a secret leaves its box is greppable.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (token, client secret, code verifier).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The one way to read the secret value.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `prefix` followed by the secret (e.g. `Bearer <token>`), built in the secret's own buffer
    /// (no second allocation when it has room, as a token taken out of a record has).
    pub fn prefixed(mut self, prefix: &str) -> Secret {
        self.0.insert_str(0, prefix);
        self
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
        let b = s.prefixed("Bearer ");
        assert_eq!(b.expose(), "Bearer hunter2");
        assert_eq!(format!("{b:?}"), "[redacted]");
    }
}
