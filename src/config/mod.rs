//! Configuration: the raw serde form (`raw`: what Envoy YAML carries as JSON, and what the
//! config tool reads from YAML files) and the validated, compiled [`Config`] the filter runs on
//! (`compile`, one function per section).
//!
//! Every error names the field (`routes.orders-read.audience`), never a secret's value, and a
//! bad config is refused as a whole: `on_configure` returns false and Envoy does not start.

mod compile;
mod raw;

pub use raw::*;

use crate::assertion::ClientKey;
use crate::cookie::{Attributes, SameSite};
use crate::policy::Policy;
use crate::seal::KeyRing;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field (`provider.token_endpoint`), or `.` for the document.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// What to do when every sampled session slot is taken by a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// End the least recently used of the sampled sessions (it is logged out).
    #[default]
    EvictLeastRecentlyUsed,
    /// Refuse the new login with `503 login_failed`.
    Refuse,
}

/// Sizes and policies of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Session slots.
    pub max_sessions: u32,
    /// Pending-login slots.
    pub max_pending: u32,
    /// Idle timeout (a session idle this long is reclaimable).
    pub idle_s: u64,
    /// Full-table policy.
    pub when_full: WhenFull,
}

/// Where secrets come from (environment variables in Envoy's VM; placeholders in `make check`).
pub trait Secrets {
    /// The value of the environment variable `name`.
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Secrets for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Identity provider, compiled.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Issuer.
    pub issuer: String,
    /// Where the discovery document is read, when discovery is on.
    pub discovery: Option<Discovery>,
    /// Endpoints set in the configuration; each overrides the discovered one.
    pub by_hand: HandSet,
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority` for every callout, when set in the configuration.
    pub authority: Option<String>,
    /// Callout timeout.
    pub timeout_ms: u64,
    /// Revocation callout timeout.
    pub revocation_timeout_ms: u64,
    /// Revoke access tokens at logout.
    pub revoke_access_tokens: bool,
    /// Fetch userinfo at login.
    pub userinfo: bool,
    /// Serve front-channel logout.
    pub frontchannel_logout: bool,
    /// Clock difference tolerated on `auth_time` (seconds).
    pub clock_skew_s: u64,
    /// ID-token signature algorithms pinned by the configuration (else the provider's).
    pub id_token_algs: Option<Vec<String>>,
}

/// Where the provider's discovery document is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The document's URL (for log lines).
    pub url: String,
    /// The callout to it.
    pub target: Target,
    /// Read again when older than this (seconds).
    pub max_age_s: u64,
}

/// An endpoint bffgate calls through the provider's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as written (a client assertion's audience is the token endpoint's).
    pub url: String,
    /// Its `:authority`.
    pub authority: String,
    /// Its `:path`.
    pub path: String,
}

impl Target {
    /// The target of `url`, if it is an absolute http(s) URL.
    pub fn of(url: &str) -> Option<Target> {
        let (_, authority, path) = split_url(url)?;
        Some(Target {
            url: url.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// The provider endpoints set in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandSet {
    /// `provider.authorization_endpoint`.
    pub authorization: Option<String>,
    /// `provider.token_endpoint`.
    pub token: Option<Target>,
    /// `provider.revocation_endpoint`.
    pub revocation: Option<Target>,
    /// `provider.end_session_endpoint`.
    pub end_session: Option<String>,
    /// `provider.jwks_uri`.
    pub jwks: Option<Target>,
    /// `provider.userinfo_endpoint`.
    pub userinfo: Option<Target>,
}

impl HandSet {
    /// The fields set, by their configuration names (what `make check` reports).
    pub fn fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let set = [
            (
                "provider.authorization_endpoint",
                self.authorization.is_some(),
            ),
            ("provider.token_endpoint", self.token.is_some()),
            ("provider.revocation_endpoint", self.revocation.is_some()),
            ("provider.end_session_endpoint", self.end_session.is_some()),
            ("provider.jwks_uri", self.jwks.is_some()),
            ("provider.userinfo_endpoint", self.userinfo.is_some()),
        ];
        for (name, on) in set {
            if on {
                v.push(name);
            }
        }
        v
    }
}

/// The provider's endpoints and capabilities in effect: the configuration's, over the
/// discovered ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Where the browser is sent to log in (no query).
    pub authorization: String,
    /// Code exchange, refresh, token exchange.
    pub token: Target,
    /// RFC 7009 revocation.
    pub revocation: Option<Target>,
    /// RP-initiated logout (for the browser).
    pub end_session: Option<String>,
    /// The provider's keys.
    pub jwks: Option<Target>,
    /// OIDC userinfo.
    pub userinfo: Option<Target>,
    /// How the client authenticates at the token and revocation endpoints.
    pub auth_method: AuthMethod,
    /// ID token signature algorithms accepted (the provider's, as far as bffgate verifies
    /// them).
    pub id_token_algs: Vec<String>,
}

impl Provider {
    /// The endpoints without discovery: `None` when discovery is on (they come with the
    /// document, [`Provider::resolve`]).
    pub fn fixed(&self, client: &Client) -> Option<Endpoints> {
        if self.discovery.is_some() {
            return None;
        }
        let h = &self.by_hand;
        Some(Endpoints {
            authorization: h.authorization.clone()?,
            token: h.token.clone()?,
            revocation: h.revocation.clone(),
            end_session: h.end_session.clone(),
            jwks: h.jwks.clone(),
            userinfo: h.userinfo.clone(),
            auth_method: client.auth_method.unwrap_or_default(),
            id_token_algs: self.id_token_algs.clone().unwrap_or_else(|| {
                crate::jose::ASYMMETRIC_ALGS
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            }),
        })
    }

    /// The endpoints from a discovery document, those set by hand taking precedence; the
    /// client's authentication method, if not configured, is `client_secret_basic` unless the
    /// provider lists `client_secret_post` and not it.
    pub fn resolve(&self, meta: &crate::discovery::Meta, client: &Client) -> Option<Endpoints> {
        let h = &self.by_hand;
        let or = |set: &Option<Target>, found: &Option<String>| {
            set.clone()
                .or_else(|| found.as_deref().and_then(Target::of))
        };
        let lists = |m: &str| meta.auth_methods.iter().any(|x| x == m);
        let auth_method = client.auth_method.unwrap_or(
            if !lists("client_secret_basic") && lists("client_secret_post") {
                AuthMethod::ClientSecretPost
            } else {
                AuthMethod::ClientSecretBasic
            },
        );
        Some(Endpoints {
            authorization: h
                .authorization
                .clone()
                .unwrap_or_else(|| meta.authorization_endpoint.clone()),
            token: or(&h.token, &Some(meta.token_endpoint.clone()))?,
            revocation: or(&h.revocation, &meta.revocation_endpoint),
            end_session: h
                .end_session
                .clone()
                .or_else(|| meta.end_session_endpoint.clone()),
            jwks: or(&h.jwks, &Some(meta.jwks_uri.clone())),
            userinfo: or(&h.userinfo, &meta.userinfo_endpoint),
            auth_method,
            id_token_algs: match &self.id_token_algs {
                Some(pinned) => meta
                    .id_token_algs
                    .iter()
                    .filter(|a| pinned.contains(a))
                    .cloned()
                    .collect(),
                None => meta.id_token_algs.clone(),
            },
        })
    }

    /// Whether ID-token and logout-token signatures can be verified (a JWKS by hand or from
    /// discovery): back-channel logout is served only then.
    pub fn verifies_signatures(&self) -> bool {
        self.discovery.is_some() || self.by_hand.jwks.is_some()
    }
}

/// OAuth client, compiled.
#[derive(Debug, Clone)]
pub struct Client {
    /// Client id.
    pub client_id: String,
    /// Client secret (empty with `private_key_jwt`).
    pub secret: Secret,
    /// Authentication method, when configured (else chosen with the discovery document:
    /// [`Provider::resolve`]).
    pub auth_method: Option<AuthMethod>,
    /// The signing key of `private_key_jwt` client assertions (that method only).
    pub key: Option<ClientKey>,
    /// The `aud` of client assertions: the token endpoint URL or the issuer.
    pub assertion_audience: AssertionAudience,
    /// Redirect URI.
    pub redirect_uri: String,
    /// Space-joined scopes.
    pub scope: String,
    /// Extra authorization parameters.
    pub extra_authorize_params: Vec<(String, String)>,
    /// Post-logout redirect.
    pub post_logout_redirect_uri: Option<String>,
    /// Whether `end_session_url` carries `id_token_hint`.
    pub logout_id_token_hint: bool,
}

/// Cookies, compiled.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Session cookie name.
    pub name: String,
    /// Flow cookie prefix.
    pub flow_prefix: String,
    /// Attributes for both.
    pub attrs: Attributes,
    /// MAC keys.
    pub keys: KeyRing,
    /// End every session (and revoke their grants) when the ring's first key changes.
    pub revoke_on_key_change: bool,
}

/// An audience, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// Resource indicator.
    pub id: String,
    /// How its token is obtained.
    pub acquire: Acquire,
    /// How the provider is asked for it.
    pub indicator: Indicator,
    /// Space-joined `scope` parameter for renewals and exchanges, if configured.
    pub scope: Option<String>,
    /// The `aud` a JWT access token for it must carry.
    pub token_audience: String,
}

/// Policies by route name. Looked up on every request; route names come from Envoy's route
/// table (never from the client), so a plain multiplicative hasher does (see `IdHasher`).
pub type Routes = HashMap<String, Policy, std::hash::BuildHasherDefault<crate::util::IdHasher>>;

/// The validated configuration the filter runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public origin.
    pub public_origin: String,
    /// `/auth`.
    pub auth_prefix: String,
    /// Provider.
    pub provider: Provider,
    /// Client.
    pub client: Client,
    /// Cookies.
    pub cookie: CookieConfig,
    /// Lifetimes.
    pub session: RawSession,
    /// Store sizes and policies.
    pub store: Limits,
    /// The etcd backend, when sessions are shared by a fleet (`store.backend: etcd`).
    pub etcd: Option<Etcd>,
    /// CSRF header name, lower-case.
    pub csrf_header: String,
    /// CSRF header value.
    pub csrf_value: String,
    /// Audiences in configuration order.
    pub audiences: Vec<Audience>,
    /// The audience obtained by the code exchange.
    pub login_audience: String,
    /// Policies by route name.
    pub routes: Routes,
    /// ID-token claims kept in the session (those policies use, plus display claims).
    pub keep_claims: Vec<String>,
    /// This instance serves the operator API only.
    pub admin: bool,
    /// The operator API's bearer token (`Some` exactly when `admin`).
    pub admin_token: Option<Secret>,
    /// Most revocations of a revoke-all in flight at once per worker.
    pub admin_revoke_concurrency: u32,
    /// Revoke the held refresh tokens when Envoy shuts the VM down (embedded store).
    pub revoke_on_shutdown: bool,
    /// Set the access log's filter-state values on every request.
    pub access_log_state: bool,
}

impl Config {
    /// How long a refresh lock (and a wait for it) lasts, in seconds: the provider callout's
    /// timeout, rounded up, plus a margin for the store write.
    pub fn lock_ttl(&self) -> u64 {
        self.provider.timeout_ms.div_ceil(1000).saturating_add(2)
    }
}

impl CookieConfig {
    /// Flow cookies: like the session cookie, but always `SameSite=Lax`: the callback is a
    /// top-level navigation from the provider's site, which `Strict` would strip.
    pub fn attrs_for_flow(&self) -> Attributes {
        let mut a = self.attrs.clone();
        a.same_site = SameSite::Lax;
        a
    }
}

/// Splits `scheme://authority/path?query` into its parts; `None` unless http(s) with a host.
pub fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    if authority.is_empty()
        || authority.contains('@')
        || authority
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return None;
    }
    Some((scheme, authority, path))
}

/// Claims always kept in the session for `/auth/user`.
pub const DISPLAY_CLAIMS: &[&str] = &["sub", "name", "email", "preferred_username", "sid"];

impl Config {
    /// Parses the JSON the filter receives from Envoy and compiles it.
    pub fn from_json(json: &[u8], secrets: &dyn Secrets) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            err(path, e.inner().to_string())
        })?;
        // One document only: anything after it (a second object, stray text) is refused, as
        // `serde_json::from_slice` would (found by fuzz/fuzz_targets/config.rs).
        de.end()
            .map_err(|e| err(".", format!("trailing data after the document: {e}")))?;
        Config::compile(&raw, secrets)
    }

    /// Validates and compiles a raw configuration.
    pub fn compile(raw: &RawConfig, secrets: &dyn Secrets) -> Result<Config, ConfigError> {
        compile::compile(raw, secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{test_raw, test_secrets};
    use serde_json::json;

    fn compile_with(patch: impl FnOnce(&mut serde_json::Value)) -> Result<Config, ConfigError> {
        let mut v = serde_json::to_value(test_raw()).unwrap();
        patch(&mut v);
        Config::from_json(v.to_string().as_bytes(), &test_secrets)
    }

    #[test]
    fn the_demo_config_compiles() {
        let c = compile_with(|_| {}).unwrap();
        let ep = c
            .provider
            .fixed(&c.client)
            .expect("every endpoint set by hand");
        assert_eq!(ep.token.path, "/token");
        assert_eq!(ep.token.authority, "localhost:9000");
        assert_eq!(ep.auth_method, AuthMethod::ClientSecretBasic);
        assert!(
            c.provider.discovery.is_none(),
            "endpoints set by hand: no discovery"
        );
        assert_eq!(c.provider.authority, None);
        assert_eq!(c.login_audience, "https://orders.api.local");
        assert_eq!(c.routes.len(), 5);
        assert!(c.keep_claims.contains(&"preferred_username".to_string()));
        assert_eq!(c.cookie.name, "__Host-bff-session");
        assert!(!format!("{c:?}").contains("test-client-secret"));
    }

    fn field_of(patch: impl FnOnce(&mut serde_json::Value)) -> String {
        compile_with(patch).unwrap_err().field
    }

    #[test]
    fn the_etcd_backend_is_checked_field_by_field() {
        let etcd = |v: &mut serde_json::Value| {
            v["store"]["backend"] = json!("etcd");
            v["store"]["etcd"] = json!({"cluster": "bffgate_etcd"});
        };
        let c = compile_with(etcd).unwrap();
        let e = c.etcd.as_ref().unwrap();
        assert_eq!(
            (e.prefix.as_str(), e.timeout_ms, e.cache_ttl_ms),
            ("bffgate/", 500, 1000)
        );
        assert_eq!(e.when_unavailable, WhenUnavailable::FailClosed);
        assert!(!format!("{c:?}").contains("QUJDREVG"));
        let field = |patch: &dyn Fn(&mut serde_json::Value)| {
            compile_with(|v| {
                etcd(v);
                patch(v)
            })
            .unwrap_err()
            .field
        };
        assert_eq!(field(&|v| v["store"]["etcd"] = json!(null)), "store.etcd");
        assert_eq!(
            field(&|v| v["store"]["etcd"]["prefix"] = json!("bffgate")),
            "store.etcd.prefix"
        );
        assert_eq!(
            field(&|v| v["store"]["etcd"]["timeout_ms"] = json!(0)),
            "store.etcd.timeout_ms"
        );
        assert_eq!(
            field(&|v| v["store"]["etcd"]["cache_ttl_ms"] = json!(600_000)),
            "store.etcd.cache_ttl_ms"
        );
        assert_eq!(
            field(&|v| v["store"]["etcd"]["serve_cached_max_ms"] = json!(10)),
            "store.etcd.serve_cached_max_ms"
        );
        assert_eq!(
            field(&|v| v["store"]["etcd"]["keys_env"] = json!("NOPE")),
            "store.etcd.keys_env"
        );
        assert_eq!(
            field(&|v| v["store"]["etcd"]["when_unavailable"] = json!("fail_open")),
            "store.etcd.when_unavailable"
        );
        assert_eq!(
            field(&|v| v["store"]["etcd"]["clustr"] = json!("x")),
            "store.etcd.clustr"
        );
        // The embedded store refuses etcd settings it would ignore.
        assert_eq!(
            field(&|v| v["store"]["backend"] = json!("shared_data")),
            "store.etcd"
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(|v| v["client"]["scope"] = json!("x")),
            "client.scope"
        );
        assert_eq!(
            field_of(|v| v["routes"]["orders-read"]["scopes"] = json!([1])),
            "routes.orders-read.scopes[0]"
        );
        assert_eq!(
            field_of(|v| v["routes"]["orders-read"]["audience"] = json!("https://nope")),
            "routes.orders-read.audience"
        );
        assert_eq!(
            field_of(|v| v["public_origin"] = json!("http://localhost:8443")),
            "public_origin"
        );
        assert_eq!(
            field_of(|v| v["public_origin"] = json!("https://localhost:8443/")),
            "public_origin"
        );
        assert_eq!(
            field_of(|v| v["cookie"] = json!({"name": "bff-session"})),
            "cookie.name"
        );
        assert_eq!(
            field_of(|v| v["cookie"] = json!({"same_site": "None"})),
            "cookie.same_site"
        );
        assert_eq!(
            field_of(|v| v["provider"]["token_endpoint"] = json!("ftp://x/token")),
            "provider.token_endpoint"
        );
        assert_eq!(
            field_of(|v| v["provider"]["timeout_ms"] = json!(0)),
            "provider.timeout_ms"
        );
        assert_eq!(
            field_of(|v| v["client"]["redirect_uri"] = json!("https://evil/cb")),
            "client.redirect_uri"
        );
        assert_eq!(
            field_of(|v| v["client"]["scopes"] = json!(["profile"])),
            "client.scopes"
        );
        assert_eq!(
            field_of(|v| v["client"]["extra_authorize_params"] = json!({"state": "x"})),
            "client.extra_authorize_params.state"
        );
        assert_eq!(
            field_of(|v| v["session"] = json!({"idle_timeout_s": 100, "absolute_timeout_s": 50})),
            "session.absolute_timeout_s"
        );
        assert_eq!(
            field_of(|v| v["routes"]["static"]["scopes"] = json!(["x"])),
            "routes.static.access"
        );
        assert_eq!(
            field_of(|v| v["routes"]["profile"]
                .as_object_mut()
                .unwrap()
                .remove("audience")
                .map(|_| ())
                .unwrap()),
            "routes.profile.audience"
        );
        assert_eq!(
            field_of(|v| v["audiences"]["https://profile.api.local"]["acquire"] = json!("login")),
            "audiences.https://profile.api.local.acquire"
        );
        assert_eq!(field_of(|v| v["routes"] = json!({})), "routes");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_place() {
        let e = compile_with(|v| v["provider"]["isuer"] = json!("x")).unwrap_err();
        assert_eq!(e.field, "provider.isuer");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn missing_secrets_are_named_by_their_variable_not_their_value() {
        let raw = serde_json::to_vec(&test_raw()).unwrap();
        let e = Config::from_json(&raw, &|_: &str| None).unwrap_err();
        assert_eq!(e.field, "client.client_secret_env");
        assert!(e.message.contains("BFFGATE_CLIENT_SECRET"));
        let short = |n: &str| match n {
            "BFFGATE_CLIENT_SECRET" => Some("s".to_string()),
            _ => Some("k1:c2hvcnQ".to_string()),
        };
        let e = Config::from_json(&raw, &short).unwrap_err();
        assert_eq!(e.field, "cookie.keys_env");
        assert!(!e.message.contains("c2hvcnQ"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for g in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe",
            b"{\"public_origin\": 5}",
        ] {
            assert!(Config::from_json(g, &test_secrets).is_err());
        }
    }

    #[test]
    fn trailing_data_after_the_document_is_refused() {
        // Fuzzing found that a valid document followed by anything still compiled.
        let good = serde_json::to_vec(&test_raw()).unwrap();
        assert!(Config::from_json(&good, &test_secrets).is_ok());
        for tail in [&b"\n#ceys new:AAEC"[..], b"{}", b" x", b"]"] {
            let mut doc = good.clone();
            doc.extend_from_slice(tail);
            let e = Config::from_json(&doc, &test_secrets).unwrap_err();
            assert_eq!(e.field, ".", "{e}");
            assert!(e.message.contains("trailing"), "{e}");
        }
        let mut spaced = good.clone();
        spaced.extend_from_slice(b" \n\t");
        assert!(
            Config::from_json(&spaced, &test_secrets).is_ok(),
            "trailing whitespace is fine"
        );
    }

    #[test]
    fn split_url_cases() {
        assert_eq!(
            split_url("http://localhost:9000/token"),
            Some(("http", "localhost:9000", "/token"))
        );
        assert_eq!(split_url("https://a.b"), Some(("https", "a.b", "/")));
        assert_eq!(split_url("https://u@a.b/"), None);
        assert_eq!(split_url("javascript://x/"), None);
        assert_eq!(split_url("https:///x"), None);
    }
}
