//! Configuration: the raw serde form (what Envoy YAML carries as JSON, and what the config tool
//! reads from YAML files) and the validated, compiled [`Config`] the filter runs on.
//!
//! Every error names the field (`routes.orders-read.audience`), never a secret's value, and a
//! bad config is refused as a whole: `on_configure` returns false and Envoy does not start.

use crate::cookie::{Attributes, SameSite};
use crate::policy::{Access, ClaimRule, Policy, RawPolicy};
use crate::seal::KeyRing;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

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

/// The filter configuration as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The origin browsers use, `https://host[:port]`; redirects and Origin checks use it.
    pub public_origin: String,
    /// Path prefix of the filter's own endpoints.
    #[serde(default = "d_auth_prefix")]
    pub auth_prefix: String,
    /// The identity provider.
    pub provider: RawProvider,
    /// This OAuth client.
    pub client: RawClient,
    /// Session and flow cookies.
    #[serde(default)]
    pub cookie: RawCookie,
    /// Session lifetimes.
    #[serde(default)]
    pub session: RawSession,
    /// CSRF header.
    #[serde(default)]
    pub csrf: RawCsrf,
    /// The embedded session store.
    #[serde(default)]
    pub store: RawStore,
    /// Audiences (resource indicators) and how their tokens are obtained.
    pub audiences: BTreeMap<String, RawAudience>,
    /// Policies by Envoy route name.
    pub routes: BTreeMap<String, RawPolicy>,
    /// Serve the operator API instead of the browser-facing filter. Only for a filter instance
    /// on a separate, loopback-only listener (the shipped config's `admin` listener).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Name of the environment variable holding the operator API's bearer token (at least 32
    /// characters; required when `admin` is true).
    #[serde(default = "d_admin_token_env")]
    pub admin_token_env: String,
}

fn d_admin_token_env() -> String {
    "BFFGATE_ADMIN_TOKEN".into()
}

/// The shortest operator token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Identity provider settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Issuer identifier; the ID token's `iss` must equal it.
    pub issuer: String,
    /// Authorization endpoint URL the browser is sent to.
    pub authorization_endpoint: String,
    /// Token endpoint URL (called through `cluster`).
    pub token_endpoint: String,
    /// RFC 7009 revocation endpoint URL (called through `cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// RP-initiated logout endpoint URL (returned to the browser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    /// JWKS URL (called through `cluster`): verifies ID-token and logout-token signatures.
    /// Without it, ID tokens are checked by claims only and back-channel logout is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Envoy cluster that reaches the provider's back channel.
    pub cluster: String,
    /// `:authority` for callouts; defaults to the token endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Callout timeout in milliseconds.
    #[serde(default = "d_timeout_ms")]
    pub timeout_ms: u64,
    /// Timeout of each revocation callout at logout: the user never waits longer than this per
    /// token on a slow provider (the session is already gone locally).
    #[serde(default = "d_revocation_timeout_ms")]
    pub revocation_timeout_ms: u64,
    /// Revoke the session's live access tokens at logout too (the refresh token always is).
    /// Turn off for providers that cannot revoke structured (JWT) access tokens.
    #[serde(default = "d_true")]
    pub revoke_access_tokens: bool,
}

fn d_true() -> bool {
    true
}

/// Client authentication at the token endpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with client id and secret (default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// OAuth client settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// Client id.
    pub client_id: String,
    /// Name of the environment variable holding the client secret (never the secret itself).
    #[serde(default = "d_client_secret_env")]
    pub client_secret_env: String,
    /// Client authentication method.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Redirect URI registered at the provider: `<public_origin><auth_prefix>/callback`.
    pub redirect_uri: String,
    /// Scopes requested at login; must include `openid`.
    pub scopes: Vec<String>,
    /// Extra authorization request parameters (e.g. `prompt: consent`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_authorize_params: BTreeMap<String, String>,
    /// Where the provider sends the browser after RP-initiated logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_logout_redirect_uri: Option<String>,
    /// Put the ID token into `end_session_url` as `id_token_hint`. Off by default: it hands
    /// the ID token to the browser, which bffgate otherwise never does; `client_id` identifies
    /// the client to the provider instead (OIDC RP-Initiated Logout 1.0, section 2).
    #[serde(default)]
    pub logout_id_token_hint: bool,
}

/// Cookie settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCookie {
    /// Session cookie name; must start with `__Host-`.
    #[serde(default = "d_cookie_name")]
    pub name: String,
    /// Prefix of the per-login flow cookies; must start with `__Host-`.
    #[serde(default = "d_flow_prefix")]
    pub flow_prefix: String,
    /// `Lax` (default) or `Strict`.
    #[serde(default = "d_same_site")]
    pub same_site: String,
    /// Name of the environment variable holding the key ring `kid:base64url[,kid:base64url]`.
    #[serde(default = "d_keys_env")]
    pub keys_env: String,
}

impl Default for RawCookie {
    fn default() -> Self {
        RawCookie {
            name: d_cookie_name(),
            flow_prefix: d_flow_prefix(),
            same_site: d_same_site(),
            keys_env: d_keys_env(),
        }
    }
}

/// Session lifetimes, in seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    /// A session unused this long ends.
    #[serde(default = "d_idle")]
    pub idle_timeout_s: u64,
    /// A session ends this long after login, used or not.
    #[serde(default = "d_absolute")]
    pub absolute_timeout_s: u64,
    /// Last-use time is written back at most this often (bounds shared-data writes).
    #[serde(default = "d_touch")]
    pub touch_interval_s: u64,
    /// A login must finish within this.
    #[serde(default = "d_login_timeout")]
    pub login_timeout_s: u64,
    /// Tokens are renewed this long before they expire.
    #[serde(default = "d_skew")]
    pub refresh_skew_s: u64,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            idle_timeout_s: d_idle(),
            absolute_timeout_s: d_absolute(),
            touch_interval_s: d_touch(),
            login_timeout_s: d_login_timeout(),
            refresh_skew_s: d_skew(),
        }
    }
}

/// Session store settings (the embedded shared-data store).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Session slots: the most sessions held at once (memory is bounded by it).
    #[serde(default = "d_max_sessions")]
    pub max_sessions: u32,
    /// Pending-login slots: the most logins in progress at once.
    #[serde(default = "d_max_pending")]
    pub max_pending_logins: u32,
    /// When every sampled slot holds a live session: `evict_least_recently_used` or `refuse`.
    #[serde(default)]
    pub when_full: crate::store::WhenFull,
    /// Where sessions live: `shared_data` (this Envoy's memory, the default) or `etcd` (shared
    /// by a fleet of Envoys; shared data becomes a read cache of `max_sessions` slots).
    #[serde(default)]
    pub backend: Backend,
    /// The etcd backend's settings (required with `backend: etcd`, refused without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<RawEtcd>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            max_sessions: d_max_sessions(),
            max_pending_logins: d_max_pending(),
            when_full: crate::store::WhenFull::default(),
            backend: Backend::default(),
            etcd: None,
        }
    }
}

/// Session store backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// proxy-wasm shared data of this Envoy process.
    #[default]
    SharedData,
    /// etcd v3 through its JSON gateway, shared by every Envoy of a fleet.
    Etcd,
}

/// What a request whose session cannot be read from etcd gets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenUnavailable {
    /// `503 store_unavailable` (never the request without a verified session).
    #[default]
    FailClosed,
    /// Serve a cached session no older than `serve_cached_max_ms`, else fail closed.
    ServeCached,
}

/// etcd backend settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    /// Envoy cluster of the etcd members' client URLs (HTTP/1.1: etcd sends h2 to gRPC).
    pub cluster: String,
    /// `:authority` of the callouts.
    #[serde(default = "d_etcd_authority")]
    pub authority: String,
    /// Prefix of every key bffgate writes (an etcd role can be limited to it).
    #[serde(default = "d_etcd_prefix")]
    pub prefix: String,
    /// Every etcd callout gives up after this.
    #[serde(default = "d_etcd_timeout")]
    pub timeout_ms: u64,
    /// Staleness bound of the per-Envoy cache: a logout or revocation on another Envoy is
    /// honoured here within this.
    #[serde(default = "d_cache_ttl")]
    pub cache_ttl_ms: u64,
    /// When etcd cannot be reached.
    #[serde(default)]
    pub when_unavailable: WhenUnavailable,
    /// `serve_cached`: the oldest cache entry ever served.
    #[serde(default = "d_serve_cached_max")]
    pub serve_cached_max_ms: u64,
    /// Name of the environment variable holding the key ring that encrypts records at rest.
    #[serde(default = "d_store_keys_env")]
    pub keys_env: String,
}

fn d_etcd_authority() -> String {
    "etcd".into()
}
fn d_etcd_prefix() -> String {
    "bffgate/".into()
}
fn d_etcd_timeout() -> u64 {
    500
}
fn d_cache_ttl() -> u64 {
    1000
}
fn d_serve_cached_max() -> u64 {
    30_000
}
fn d_store_keys_env() -> String {
    "BFFGATE_STORE_KEYS".into()
}

/// The etcd backend, compiled.
#[derive(Debug, Clone)]
pub struct Etcd {
    /// Cluster.
    pub cluster: String,
    /// Authority.
    pub authority: String,
    /// Key prefix.
    pub prefix: String,
    /// Callout timeout.
    pub timeout_ms: u64,
    /// Cache staleness bound.
    pub cache_ttl_ms: u64,
    /// Failure mode.
    pub when_unavailable: WhenUnavailable,
    /// Oldest entry served in `serve_cached` mode.
    pub serve_cached_max_ms: u64,
    /// Record encryption keys.
    pub keys: crate::vault::Vault,
}

fn d_max_sessions() -> u32 {
    10_000
}
fn d_max_pending() -> u32 {
    1_000
}

/// CSRF header settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCsrf {
    /// Header name (case-insensitive).
    #[serde(default = "d_csrf_header")]
    pub header: String,
    /// Required value.
    #[serde(default = "d_csrf_value")]
    pub value: String,
}

impl Default for RawCsrf {
    fn default() -> Self {
        RawCsrf {
            header: d_csrf_header(),
            value: d_csrf_value(),
        }
    }
}

/// How the token for an audience is obtained.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Acquire {
    /// The login's own code exchange (exactly one audience).
    Login,
    /// A refresh-token grant with `resource` (RFC 8707).
    Refresh,
    /// An RFC 8693 token exchange of the login audience's access token for this audience.
    Exchange,
}

/// An audience.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAudience {
    /// How its token is obtained.
    pub acquire: Acquire,
    /// Scopes asked for when renewing or exchanging (down-scoping); default: whatever the
    /// provider grants for the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

fn d_auth_prefix() -> String {
    "/auth".into()
}
fn d_timeout_ms() -> u64 {
    5000
}
fn d_revocation_timeout_ms() -> u64 {
    1000
}
fn d_client_secret_env() -> String {
    "BFFGATE_CLIENT_SECRET".into()
}
fn d_cookie_name() -> String {
    "__Host-bff-session".into()
}
fn d_flow_prefix() -> String {
    "__Host-bff-flow-".into()
}
fn d_same_site() -> String {
    "Lax".into()
}
fn d_keys_env() -> String {
    "BFFGATE_COOKIE_KEYS".into()
}
fn d_idle() -> u64 {
    1800
}
fn d_absolute() -> u64 {
    8 * 3600
}
fn d_touch() -> u64 {
    60
}
fn d_login_timeout() -> u64 {
    600
}
fn d_skew() -> u64 {
    30
}
fn d_csrf_header() -> String {
    "x-csrf".into()
}
fn d_csrf_value() -> String {
    "1".into()
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
    /// Authorization endpoint URL.
    pub authorization_endpoint: String,
    /// Token endpoint path for callouts.
    pub token_path: String,
    /// Revocation endpoint path for callouts.
    pub revocation_path: Option<String>,
    /// End-session URL for the browser.
    pub end_session_endpoint: Option<String>,
    /// JWKS path for callouts.
    pub jwks_path: Option<String>,
    /// Envoy cluster.
    pub cluster: String,
    /// `:authority` for callouts.
    pub authority: String,
    /// Callout timeout.
    pub timeout_ms: u64,
    /// Revocation callout timeout.
    pub revocation_timeout_ms: u64,
    /// Revoke access tokens at logout.
    pub revoke_access_tokens: bool,
}

/// OAuth client, compiled.
#[derive(Debug, Clone)]
pub struct Client {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub secret: Secret,
    /// Authentication method.
    pub auth_method: AuthMethod,
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
}

/// An audience, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// Resource indicator.
    pub id: String,
    /// How its token is obtained.
    pub acquire: Acquire,
    /// Space-joined `scope` parameter for renewals and exchanges, if configured.
    pub scope: Option<String>,
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
    pub store: crate::store::Limits,
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

fn url_field(field: &str, value: &str) -> Result<(String, String), ConfigError> {
    let (_, authority, path) = split_url(value)
        .ok_or_else(|| err(field, "must be an absolute http(s) URL with a host"))?;
    if value.contains('#') {
        return Err(err(field, "must not contain a fragment"));
    }
    Ok((authority.to_string(), path.to_string()))
}

/// RFC 6749 3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
fn scope_token_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn token_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks and compiles the etcd backend settings (`None` for the embedded store).
fn compile_etcd(st: &RawStore, secrets: &dyn Secrets) -> Result<Option<Etcd>, ConfigError> {
    let e = match (st.backend, &st.etcd) {
        (Backend::SharedData, None) => return Ok(None),
        (Backend::SharedData, Some(_)) => {
            return Err(err(
                "store.etcd",
                "set only with `store.backend: etcd` (the embedded store does not use it)",
            ))
        }
        (Backend::Etcd, None) => {
            return Err(err(
                "store.etcd",
                "required with `store.backend: etcd` (at least `cluster`)",
            ))
        }
        (Backend::Etcd, Some(e)) => e,
    };
    if e.cluster.is_empty() || !e.cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("store.etcd.cluster", "must be an Envoy cluster name"));
    }
    if e.authority.is_empty() || !e.authority.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err("store.etcd.authority", "must be a host name"));
    }
    let prefix_ok = !e.prefix.is_empty()
        && e.prefix.len() <= 64
        && e.prefix.ends_with('/')
        && e.prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if !prefix_ok {
        return Err(err(
            "store.etcd.prefix",
            "must be 1-64 characters of [A-Za-z0-9/_.-] ending with `/`",
        ));
    }
    if !(50..=10_000).contains(&e.timeout_ms) {
        return Err(err("store.etcd.timeout_ms", "must be between 50 and 10000"));
    }
    if e.cache_ttl_ms > 60_000 {
        return Err(err(
            "store.etcd.cache_ttl_ms",
            "must be at most 60000 (it bounds how long a logout elsewhere is not seen here)",
        ));
    }
    if e.serve_cached_max_ms < e.cache_ttl_ms || e.serve_cached_max_ms > 3_600_000 {
        return Err(err(
            "store.etcd.serve_cached_max_ms",
            "must be between store.etcd.cache_ttl_ms and 3600000",
        ));
    }
    let spec = secrets
        .get(&e.keys_env)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            err(
                "store.etcd.keys_env",
                format!("environment variable `{}` is not set in the VM", e.keys_env),
            )
        })?;
    let keys = crate::vault::Vault::parse(&spec).map_err(|m| {
        err(
            "store.etcd.keys_env",
            format!("environment variable `{}`: {m}", e.keys_env),
        )
    })?;
    Ok(Some(Etcd {
        cluster: e.cluster.clone(),
        authority: e.authority.clone(),
        prefix: e.prefix.clone(),
        timeout_ms: e.timeout_ms,
        cache_ttl_ms: e.cache_ttl_ms,
        when_unavailable: e.when_unavailable,
        serve_cached_max_ms: e.serve_cached_max_ms,
        keys,
    }))
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
        // Origin.
        let origin = raw.public_origin.as_str();
        match split_url(origin) {
            Some(("https", _, "/")) if !origin.ends_with('/') => {}
            Some(("http", _, _)) => {
                return Err(err(
                    "public_origin",
                    "must be https: the session cookie is Secure and `__Host-`",
                ))
            }
            _ => {
                return Err(err(
                    "public_origin",
                    "must be `https://host[:port]` with no path or trailing slash",
                ))
            }
        }
        let p = raw.auth_prefix.as_str();
        if !p.starts_with('/')
            || p.len() < 2
            || p.ends_with('/')
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_".contains(&b))
        {
            return Err(err(
                "auth_prefix",
                "must look like `/auth`: leading slash, no trailing slash, [A-Za-z0-9/_-]",
            ));
        }

        // Provider.
        let pr = &raw.provider;
        if pr.issuer.is_empty() {
            return Err(err("provider.issuer", "must not be empty"));
        }
        url_field("provider.issuer", &pr.issuer)?;
        url_field(
            "provider.authorization_endpoint",
            &pr.authorization_endpoint,
        )?;
        if pr.authorization_endpoint.contains('?') {
            return Err(err(
                "provider.authorization_endpoint",
                "must not carry a query; use client.extra_authorize_params",
            ));
        }
        let (token_authority, token_path) =
            url_field("provider.token_endpoint", &pr.token_endpoint)?;
        let revocation_path = match &pr.revocation_endpoint {
            Some(u) => Some(url_field("provider.revocation_endpoint", u)?.1),
            None => None,
        };
        if let Some(u) = &pr.end_session_endpoint {
            url_field("provider.end_session_endpoint", u)?;
        }
        let jwks_path = match &pr.jwks_uri {
            Some(u) => Some(url_field("provider.jwks_uri", u)?.1),
            None => None,
        };
        if pr.cluster.is_empty() {
            return Err(err(
                "provider.cluster",
                "must name the Envoy cluster of the provider",
            ));
        }
        if pr.timeout_ms == 0 || pr.timeout_ms > 60_000 {
            return Err(err("provider.timeout_ms", "must be between 1 and 60000"));
        }
        if pr.revocation_timeout_ms == 0 || pr.revocation_timeout_ms > pr.timeout_ms {
            return Err(err(
                "provider.revocation_timeout_ms",
                "must be between 1 and provider.timeout_ms",
            ));
        }
        let authority = pr.authority.clone().unwrap_or(token_authority);
        if authority.is_empty() {
            return Err(err("provider.authority", "must not be empty"));
        }

        // Client.
        let c = &raw.client;
        if c.client_id.is_empty() {
            return Err(err("client.client_id", "must not be empty"));
        }
        let secret = secrets
            .get(&c.client_secret_env)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err(
                    "client.client_secret_env",
                    format!(
                        "environment variable `{}` is not set in the VM (vm_config.environment_variables)",
                        c.client_secret_env
                    ),
                )
            })?;
        // The operator API's credential: only the admin instance needs (and reads) it.
        let admin_token = if raw.admin {
            let t = secrets
                .get(&raw.admin_token_env)
                .filter(|t| t.len() >= MIN_ADMIN_TOKEN_LEN)
                .ok_or_else(|| {
                    err(
                        "admin_token_env",
                        format!(
                            "environment variable `{}` must hold the operator API's bearer token, at least {MIN_ADMIN_TOKEN_LEN} characters (vm_config.environment_variables)",
                            raw.admin_token_env
                        ),
                    )
                })?;
            Some(Secret::new(t))
        } else {
            None
        };
        let expected_redirect = format!("{origin}{p}/callback");
        if c.redirect_uri != expected_redirect {
            return Err(err(
                "client.redirect_uri",
                format!("must be `{expected_redirect}` (public_origin + auth_prefix + /callback)"),
            ));
        }
        if !c.scopes.iter().any(|s| s == "openid") {
            return Err(err("client.scopes", "must include `openid`"));
        }
        for (i, s) in c.scopes.iter().enumerate() {
            if s.is_empty()
                || s.bytes()
                    .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
            {
                return Err(err(
                    format!("client.scopes[{i}]"),
                    "not a valid scope token",
                ));
            }
        }
        const RESERVED: &[&str] = &[
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "resource",
        ];
        for k in c.extra_authorize_params.keys() {
            if RESERVED.contains(&k.as_str()) {
                return Err(err(
                    format!("client.extra_authorize_params.{k}"),
                    "is set by bffgate itself",
                ));
            }
        }
        if let Some(u) = &c.post_logout_redirect_uri {
            url_field("client.post_logout_redirect_uri", u)?;
        }

        // Cookies.
        let ck = &raw.cookie;
        if !ck.name.starts_with("__Host-") || !token_chars(&ck.name) {
            return Err(err(
                "cookie.name",
                "must be a cookie token starting with `__Host-` (Secure, Path=/, no Domain)",
            ));
        }
        if !ck.flow_prefix.starts_with("__Host-") || !token_chars(&ck.flow_prefix) {
            return Err(err(
                "cookie.flow_prefix",
                "must be a cookie token starting with `__Host-`",
            ));
        }
        if ck.name.starts_with(&ck.flow_prefix) {
            return Err(err(
                "cookie.flow_prefix",
                "must not be a prefix of cookie.name",
            ));
        }
        let same_site = match ck.same_site.as_str() {
            "Lax" | "lax" => SameSite::Lax,
            "Strict" | "strict" => SameSite::Strict,
            "None" | "none" => return Err(err(
                "cookie.same_site",
                "`None` would send the session cookie on cross-site requests; use Lax or Strict",
            )),
            _ => return Err(err("cookie.same_site", "must be `Lax` or `Strict`")),
        };
        let key_spec = secrets
            .get(&ck.keys_env)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                err(
                    "cookie.keys_env",
                    format!(
                        "environment variable `{}` is not set in the VM",
                        ck.keys_env
                    ),
                )
            })?;
        let keys = KeyRing::parse(&key_spec).map_err(|m| {
            err(
                "cookie.keys_env",
                format!("environment variable `{}`: {m}", ck.keys_env),
            )
        })?;

        // Session.
        let s = &raw.session;
        if s.idle_timeout_s == 0 {
            return Err(err("session.idle_timeout_s", "must be > 0"));
        }
        if s.absolute_timeout_s < s.idle_timeout_s {
            return Err(err(
                "session.absolute_timeout_s",
                "must be >= session.idle_timeout_s",
            ));
        }
        if s.touch_interval_s >= s.idle_timeout_s {
            return Err(err(
                "session.touch_interval_s",
                "must be < session.idle_timeout_s",
            ));
        }
        if s.login_timeout_s == 0 || s.login_timeout_s > 3600 {
            return Err(err("session.login_timeout_s", "must be between 1 and 3600"));
        }

        // Store.
        if raw.store.max_sessions == 0 || raw.store.max_sessions > 1_000_000 {
            return Err(err("store.max_sessions", "must be between 1 and 1000000"));
        }
        if raw.store.max_pending_logins == 0 || raw.store.max_pending_logins > 100_000 {
            return Err(err(
                "store.max_pending_logins",
                "must be between 1 and 100000",
            ));
        }
        let etcd = compile_etcd(&raw.store, secrets)?;

        // CSRF.
        if !token_chars(&raw.csrf.header) {
            return Err(err("csrf.header", "must be a header name"));
        }
        if raw.csrf.value.is_empty() {
            return Err(err("csrf.value", "must not be empty"));
        }

        // Audiences.
        if raw.audiences.is_empty() {
            return Err(err("audiences", "at least one audience is needed"));
        }
        let mut audiences = Vec::new();
        let mut login_audience = None;
        for (id, a) in &raw.audiences {
            if id.is_empty() || id.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                return Err(err(
                    format!("audiences.{id}"),
                    "not a valid resource indicator",
                ));
            }
            if a.acquire == Acquire::Login {
                if login_audience.is_some() {
                    return Err(err(
                        format!("audiences.{id}.acquire"),
                        "only one audience can be acquired at login",
                    ));
                }
                login_audience = Some(id.clone());
            }
            let scope = match &a.scopes {
                None => None,
                Some(v) => {
                    for (i, sc) in v.iter().enumerate() {
                        if !scope_token_ok(sc) {
                            return Err(err(
                                format!("audiences.{id}.scopes[{i}]"),
                                "not a scope token",
                            ));
                        }
                    }
                    Some(v.join(" "))
                }
            };
            audiences.push(Audience {
                id: id.clone(),
                acquire: a.acquire,
                scope,
            });
        }
        let login_audience = login_audience
            .ok_or_else(|| err("audiences", "exactly one audience needs `acquire: login`"))?;

        // Routes.
        if raw.routes.is_empty() {
            return Err(err(
                "routes",
                "no route policies: every request would be refused",
            ));
        }
        let mut routes = Routes::default();
        let mut keep_claims: Vec<String> = DISPLAY_CLAIMS.iter().map(|s| s.to_string()).collect();
        for (name, rp) in &raw.routes {
            let f = |sub: &str| format!("routes.{name}.{sub}");
            if name.is_empty() {
                return Err(err("routes", "route names must not be empty"));
            }
            match rp.access {
                Access::Public => {
                    if rp.audience.is_some() || !rp.scopes.is_empty() || !rp.claims.is_empty() {
                        return Err(err(
                            f("access"),
                            "a public route cannot require an audience, scopes or claims",
                        ));
                    }
                }
                Access::Session => {
                    let aud = rp.audience.as_deref().ok_or_else(|| {
                        err(
                            f("audience"),
                            "a session route must name the audience to forward",
                        )
                    })?;
                    if !audiences.iter().any(|a| a.id == aud) {
                        return Err(err(f("audience"), format!("`{aud}` is not in `audiences`")));
                    }
                }
            }
            for (i, sc) in rp.scopes.iter().enumerate() {
                if !scope_token_ok(sc) {
                    return Err(err(
                        format!("routes.{name}.scopes[{i}]"),
                        "not a scope token",
                    ));
                }
            }
            for (i, o) in rp.allowed_origins.iter().enumerate() {
                match split_url(o) {
                    // https only: a page served over http can be rewritten by anyone on the path.
                    Some(("https", _, "/")) if !o.ends_with('/') => {}
                    Some(("http", _, "/")) => {
                        return Err(err(
                            format!("routes.{name}.allowed_origins[{i}]"),
                            "must be an https origin (an http page can be rewritten in transit)",
                        ))
                    }
                    _ => {
                        return Err(err(
                            format!("routes.{name}.allowed_origins[{i}]"),
                            "must be an origin `https://host[:port]`",
                        ))
                    }
                }
            }
            let mut claims = Vec::new();
            for (cname, rule) in &rp.claims {
                let accepted = match rule {
                    ClaimRule::One(v) => vec![v.clone()],
                    ClaimRule::AnyOf(vs) => vs.clone(),
                };
                if accepted.is_empty() {
                    return Err(err(
                        f(&format!("claims.{cname}")),
                        "needs at least one value",
                    ));
                }
                if !keep_claims.contains(cname) {
                    keep_claims.push(cname.clone());
                }
                claims.push((cname.clone(), accepted));
            }
            routes.insert(
                name.clone(),
                Policy {
                    route: name.clone(),
                    access: rp.access,
                    audience: rp.audience.clone(),
                    scopes: rp.scopes.clone(),
                    claims,
                    csrf: rp.csrf,
                    unauthenticated: rp.unauthenticated,
                    allowed_origins: rp.allowed_origins.clone(),
                },
            );
        }

        let mut extra: Vec<(String, String)> = c
            .extra_authorize_params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        extra.sort();

        Ok(Config {
            public_origin: origin.to_string(),
            auth_prefix: p.to_string(),
            provider: Provider {
                issuer: pr.issuer.clone(),
                authorization_endpoint: pr.authorization_endpoint.clone(),
                token_path,
                revocation_path,
                end_session_endpoint: pr.end_session_endpoint.clone(),
                jwks_path,
                cluster: pr.cluster.clone(),
                authority,
                timeout_ms: pr.timeout_ms,
                revocation_timeout_ms: pr.revocation_timeout_ms,
                revoke_access_tokens: pr.revoke_access_tokens,
            },
            client: Client {
                client_id: c.client_id.clone(),
                secret: Secret::new(secret),
                auth_method: c.auth_method,
                redirect_uri: c.redirect_uri.clone(),
                scope: c.scopes.join(" "),
                extra_authorize_params: extra,
                post_logout_redirect_uri: c.post_logout_redirect_uri.clone(),
                logout_id_token_hint: c.logout_id_token_hint,
            },
            cookie: CookieConfig {
                name: ck.name.clone(),
                flow_prefix: ck.flow_prefix.clone(),
                attrs: Attributes {
                    secure: true,
                    http_only: true,
                    same_site,
                    path: "/".into(),
                    domain: None,
                },
                keys,
            },
            session: s.clone(),
            store: crate::store::Limits {
                max_sessions: raw.store.max_sessions,
                max_pending: raw.store.max_pending_logins,
                idle_s: s.idle_timeout_s,
                when_full: raw.store.when_full,
            },
            etcd,
            csrf_header: raw.csrf.header.to_ascii_lowercase(),
            csrf_value: raw.csrf.value.clone(),
            audiences,
            login_audience,
            routes,
            keep_claims,
            admin: raw.admin,
            admin_token,
        })
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
        assert_eq!(c.provider.token_path, "/token");
        assert_eq!(c.provider.authority, "localhost:9000");
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
