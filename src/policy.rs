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
    /// Step-up (RFC 9470): the session's sign-in must have one of these `acr` values (in order
    /// of preference; the list is sent to the provider as `acr_values`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acr_values: Vec<String>,
    /// Step-up (RFC 9470): the sign-in (`auth_time`) must be at most this many seconds old; 0
    /// means a sign-in made for this very request (`prompt=login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
    /// `enforce` (default) or `report`: the checks on top of the session (scopes, claims,
    /// sign-in level) are only logged and counted when they fail, not enforced (shadow mode).
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}

/// Whether a route's checks on top of the session are enforced or only reported.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A failed check refuses the request.
    #[default]
    Enforce,
    /// Shadow mode: a failed scope, claim or sign-in-level check is logged (`policy_report`)
    /// and counted (`bffgate_policy_report_<code>`), and the request goes on with the
    /// session's token as if it had passed. The session, audience, token swap and CSRF are
    /// enforced as usual.
    Report,
}

impl Mode {
    /// The default (for serialization).
    pub fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }
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
    /// Accepted `acr` values of the sign-in (empty: any).
    pub acr_values: Vec<String>,
    /// Maximum age of the sign-in in seconds (`None`: any).
    pub max_age_s: Option<u64>,
    /// Whether scopes, claims and sign-in level are enforced or only reported.
    pub mode: Mode,
}

/// What a route asks of the sign-in that the session does not have (RFC 9470): the answer
/// names it so a new sign-in can be asked for with exactly these parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepUp {
    /// `acr_values` to ask for (space-separated), if the route requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr_values: Option<String>,
    /// `max_age` to ask for, if the route requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
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

impl StepUp {
    /// Whether anything is asked.
    pub fn is_empty(&self) -> bool {
        self.acr_values.is_none() && self.max_age.is_none()
    }

    /// Parses `acr_values` and `max_age` as a browser or an upstream's challenge sends them:
    /// `acr_values` space-separated tokens (at most 16, each at most 128 characters, no quotes),
    /// `max_age` decimal seconds up to a year. Anything else is refused (`Err` names the
    /// parameter).
    pub fn parse(acr_values: Option<&str>, max_age: Option<&str>) -> Result<Self, &'static str> {
        let acr_values = match acr_values.map(str::trim) {
            None | Some("") => None,
            Some(v) => {
                let parts: Vec<&str> = v.split(' ').filter(|p| !p.is_empty()).collect();
                let ok = parts.len() <= 16
                    && parts.iter().all(|p| {
                        p.len() <= 128
                            && p.bytes()
                                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
                    });
                if !ok {
                    return Err("acr_values");
                }
                Some(parts.join(" "))
            }
        };
        let max_age = match max_age.map(str::trim) {
            None | Some("") => None,
            Some(v) => {
                if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("max_age");
                }
                let n: u64 = v.parse().map_err(|_| "max_age")?;
                if n > 366 * 86_400 {
                    return Err("max_age");
                }
                Some(n)
            }
        };
        Ok(StepUp {
            acr_values,
            max_age,
        })
    }
}

/// The auth-params of the `Bearer` challenge(s) in `WWW-Authenticate` values (RFC 9110 11.6.1):
/// `name=token` or `name="quoted \\"string\\""`, names lowercased; at most 16 params of at most
/// 1024 bytes each, values longer than that skipped. Anything unparsable ends the challenge.
fn bearer_params(value: &str) -> Vec<(String, String)> {
    let b = value.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let is_tchar = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_bearer = false;
    while i < b.len() && out.len() < 16 {
        while at(i).is_some_and(|c| matches!(c, b' ' | b'\t' | b',')) {
            i += 1;
        }
        let start = i;
        while at(i).is_some_and(is_tchar) {
            i += 1;
        }
        if i == start {
            break;
        }
        let name = value.get(start..i).unwrap_or_default();
        let mut j = i;
        while at(j) == Some(b' ') {
            j += 1;
        }
        if at(j) != Some(b'=') {
            // A new challenge: its scheme.
            in_bearer = name.eq_ignore_ascii_case("bearer");
            i = j;
            continue;
        }
        // An auth-param.
        j += 1;
        while at(j) == Some(b' ') {
            j += 1;
        }
        let mut v = String::new();
        if at(j) == Some(b'"') {
            j += 1;
            let mut closed = false;
            while let Some(c) = at(j) {
                match c {
                    b'"' => {
                        closed = true;
                        j += 1;
                        break;
                    }
                    b'\\' => {
                        if let Some(n) = at(j + 1) {
                            v.push(char::from(n));
                        }
                        j += 2;
                    }
                    c => {
                        v.push(char::from(c));
                        j += 1;
                    }
                }
            }
            if !closed {
                break;
            }
        } else {
            let vs = j;
            while at(j).is_some_and(is_tchar) {
                j += 1;
            }
            v.push_str(value.get(vs..j).unwrap_or_default());
        }
        if in_bearer && v.len() <= 1024 {
            out.push((name.to_ascii_lowercase(), v));
        }
        i = j;
    }
    out
}

impl StepUp {
    /// An upstream's step-up challenge (RFC 9470): a `Bearer` challenge with
    /// `error="insufficient_user_authentication"` among `values` (the response's
    /// `WWW-Authenticate` headers). Its `acr_values` and `max_age` are kept only when valid
    /// (`StepUp::parse`); a garbage parameter is dropped, never echoed. `None` when no such
    /// challenge is there.
    pub fn from_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<StepUp> {
        for v in values {
            if v.len() > 8192 {
                continue;
            }
            let params = bearer_params(v);
            let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
            if get("error") != Some("insufficient_user_authentication") {
                continue;
            }
            let acr = StepUp::parse(get("acr_values"), None)
                .ok()
                .and_then(|s| s.acr_values);
            let max_age = StepUp::parse(None, get("max_age"))
                .ok()
                .and_then(|s| s.max_age);
            return Some(StepUp {
                acr_values: acr,
                max_age,
            });
        }
        None
    }
}

impl Policy {
    /// Claims check against the session's stored claims.
    pub fn claims_ok(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.claims
            .iter()
            .all(|(name, accepted)| claim_matches(accepted, claims.get(name)))
    }

    /// Whether the route asks anything of the sign-in (`acr_values` or `max_age_s`).
    pub fn wants_step_up(&self) -> bool {
        !self.acr_values.is_empty() || self.max_age_s.is_some()
    }

    /// The step-up check (RFC 9470) against the session's sign-in: its `acr` must be one of
    /// the route's `acr_values`, and its `auth_time` at most `max_age_s` old at `now`, with
    /// `skew` seconds of clock difference allowed either way. A missing `acr` or `auth_time`
    /// (or an `auth_time` in the future) never satisfies a route that asks for it.
    pub fn step_up(
        &self,
        acr: Option<&str>,
        auth_time: Option<u64>,
        now: u64,
        skew: u64,
    ) -> Result<(), StepUp> {
        let acr_ok = self.acr_values.is_empty()
            || acr.is_some_and(|a| self.acr_values.iter().any(|v| v == a));
        let age_ok = match self.max_age_s {
            None => true,
            Some(max) => auth_time.is_some_and(|t| {
                t <= now.saturating_add(skew) && now <= t.saturating_add(max).saturating_add(skew)
            }),
        };
        if acr_ok && age_ok {
            return Ok(());
        }
        Err(StepUp {
            acr_values: (!self.acr_values.is_empty()).then(|| self.acr_values.join(" ")),
            max_age: self.max_age_s,
        })
    }

    /// Scopes check against the space-separated scopes of the audience token.
    pub fn scopes_ok(&self, token_scopes: &str) -> bool {
        self.scopes.iter().all(|need| has_scope(token_scopes, need))
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

/// Whether a claim's value (`None`: the session has no such claim) is one of the accepted
/// values; a list matches if any of its elements does.
pub fn claim_matches(accepted: &[serde_json::Value], have: Option<&serde_json::Value>) -> bool {
    match have {
        Some(serde_json::Value::Array(have)) => have.iter().any(|v| accepted.contains(v)),
        Some(v) => accepted.contains(v),
        None => false,
    }
}

/// Whether the space-separated `token_scopes` hold `need` as a whole word.
pub fn has_scope(token_scopes: &str, need: &str) -> bool {
    token_scopes.split(' ').any(|have| have == need)
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
            acr_values: vec![],
            max_age_s: None,
            mode: Mode::Enforce,
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
