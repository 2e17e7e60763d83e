//! Route policies: what a request to an Envoy route needs, and the decision for one request.
//!
//! A policy is looked up by the name of the route Envoy matched (never by a second path matcher
//! of our own), so what is checked is exactly what Envoy will forward to.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Policy as written in a policy file (YAML) or in the filter's JSON configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// `public` (anyone; no token forwarded) or `session` (a valid bffgate session).
    pub access: Access,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The audience of the token forwarded upstream (`session` only). Must be a configured audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Scopes the forwarded token must carry, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// ID-token claims the session must have: claim name -> accepted value or list of values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, ClaimRule>,
    /// When the CSRF header is required.
    #[serde(default)]
    pub csrf: CsrfMode,
    /// What an unauthenticated request gets.
    #[serde(default)]
    pub unauthenticated: UnauthMode,
    /// Origins besides the public origin allowed to make unsafe requests (`https://host[:port]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone. Client `Authorization` is still removed; no token is forwarded.
    Public,
    /// A valid session holding the audience and scopes.
    Session,
}

/// Accepted value(s) of a claim.
///
/// `untagged` tries the variants in order, and `One(Value)` accepts any JSON, arrays included:
/// `AnyOf` must come first or a list would become a single array value that never matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ClaimRule {
    /// Any of these values.
    AnyOf(Vec<serde_json::Value>),
    /// Exactly this value (string, number or boolean compared as JSON).
    One(serde_json::Value),
}

/// When the CSRF header is required.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CsrfMode {
    /// On every method except GET, HEAD and OPTIONS (default).
    #[default]
    UnsafeMethods,
    /// On every method.
    AllMethods,
}

/// What an unauthenticated request to a `session` route gets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UnauthMode {
    /// Navigations get a 302 to login, other requests a 401 (decided from Fetch Metadata, then Accept).
    #[default]
    Auto,
    /// Always 302 to login (GET/HEAD), 401 otherwise.
    Redirect,
    /// Always 401 JSON.
    Deny,
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Route name.
    pub route: String,
    /// Who may call.
    pub access: Access,
    /// Audience of the forwarded token (`Some` for `session`).
    pub audience: Option<String>,
    /// Scopes required on that token.
    pub scopes: Vec<String>,
    /// Claims required of the session.
    pub claims: Vec<(String, Vec<serde_json::Value>)>,
    /// CSRF header requirement.
    pub csrf: CsrfMode,
    /// Unauthenticated behaviour.
    pub unauthenticated: UnauthMode,
    /// Extra origins allowed for unsafe methods.
    pub allowed_origins: Vec<String>,
}

/// Why a request was refused by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The token for the audience lacks a required scope.
    InsufficientScope,
    /// A required claim is missing or has another value.
    Forbidden,
}

impl Policy {
    /// Claims check against the session's stored claims.
    pub fn claims_ok(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.claims
            .iter()
            .all(|(name, accepted)| match claims.get(name) {
                Some(serde_json::Value::Array(have)) => have.iter().any(|v| accepted.contains(v)),
                Some(v) => accepted.contains(v),
                None => false,
            })
    }

    /// Scopes check against the space-separated scopes of the audience token.
    pub fn scopes_ok(&self, token_scopes: &str) -> bool {
        self.scopes
            .iter()
            .all(|need| token_scopes.split(' ').any(|have| have == need))
    }

    /// The whole authorization decision for a session that holds `token_scopes` for
    /// `self.audience` and has `claims`. Authentication, CSRF and token freshness are decided
    /// before this by the engine.
    pub fn decide(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        token_scopes: &str,
    ) -> Result<(), Denial> {
        if !self.claims_ok(claims) {
            return Err(Denial::Forbidden);
        }
        if !self.scopes_ok(token_scopes) {
            return Err(Denial::InsufficientScope);
        }
        Ok(())
    }
}

/// A request method that never needs the CSRF header under `unsafe-methods`.
pub fn is_safe_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(scopes: &[&str], claims: Vec<(&str, Vec<serde_json::Value>)>) -> Policy {
        Policy {
            route: "r".into(),
            access: Access::Session,
            audience: Some("https://orders.api.local".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            claims: claims
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            csrf: CsrfMode::UnsafeMethods,
            unauthenticated: UnauthMode::Auto,
            allowed_origins: vec![],
        }
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn all_required_scopes_must_be_present_as_whole_words() {
        let p = policy(&["orders:write"], vec![]);
        assert_eq!(
            p.decide(&claims(json!({})), "orders:read orders:write"),
            Ok(())
        );
        assert_eq!(
            p.decide(&claims(json!({})), "orders:read"),
            Err(Denial::InsufficientScope)
        );
        assert_eq!(
            p.decide(&claims(json!({})), "orders:writer orders:writ"),
            Err(Denial::InsufficientScope)
        );
        assert_eq!(
            p.decide(&claims(json!({})), ""),
            Err(Denial::InsufficientScope)
        );
        let none = policy(&[], vec![]);
        assert_eq!(none.decide(&claims(json!({})), ""), Ok(()));
    }

    #[test]
    fn claims_match_values_and_arrays() {
        let p = policy(
            &[],
            vec![
                ("groups", vec![json!("admins")]),
                ("email_verified", vec![json!(true)]),
            ],
        );
        assert_eq!(
            p.decide(
                &claims(json!({"groups": ["users", "admins"], "email_verified": true})),
                ""
            ),
            Ok(())
        );
        assert_eq!(
            p.decide(
                &claims(json!({"groups": ["users"], "email_verified": true})),
                ""
            ),
            Err(Denial::Forbidden)
        );
        assert_eq!(
            p.decide(&claims(json!({"groups": "admins"})), ""),
            Err(Denial::Forbidden),
            "a missing claim is a denial"
        );
        assert_eq!(
            p.decide(
                &claims(json!({"groups": "admins", "email_verified": "true"})),
                ""
            ),
            Err(Denial::Forbidden),
            "types are compared exactly"
        );
    }

    #[test]
    fn raw_policy_parses_and_rejects_unknown_fields() {
        let p: RawPolicy = serde_json::from_value(json!({
            "access": "session", "audience": "a", "scopes": ["x"], "csrf": "all-methods",
            "claims": {"role": ["admin", "owner"], "tier": "gold"}
        }))
        .unwrap();
        assert_eq!(p.csrf, CsrfMode::AllMethods);
        // A list is "any of", not one array value (untagged variant order).
        assert_eq!(
            p.claims["role"],
            ClaimRule::AnyOf(vec![json!("admin"), json!("owner")])
        );
        assert_eq!(p.claims["tier"], ClaimRule::One(json!("gold")));
        assert!(
            serde_json::from_value::<RawPolicy>(json!({"access": "session", "scope": ["x"]}))
                .is_err()
        );
        assert!(serde_json::from_value::<RawPolicy>(json!({"access": "sometimes"})).is_err());
    }

    #[test]
    fn safe_methods() {
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert!(is_safe_method(m));
        }
        for m in ["POST", "PUT", "PATCH", "DELETE", "get", "CONNECT", "TRACE"] {
            assert!(!is_safe_method(m));
        }
    }
}
