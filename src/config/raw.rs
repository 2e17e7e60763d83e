//! The configuration as written: what Envoy YAML carries as JSON (the filter's plugin
//! configuration) and what the config tool reads from the settings and policy files. Every
//! struct refuses unknown fields; defaults are the safe ones.

use crate::policy::RawPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::WhenFull;

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
    /// `POST /sessions/revoke-all` (operator API): most refresh-token revocations in flight at
    /// once per worker (1 to 64; default 4), so the provider is not flooded.
    #[serde(default = "d_admin_revoke_concurrency")]
    pub admin_revoke_concurrency: u32,
    /// Set the filter-state values `wasm.bffgate_decision` and `wasm.bffgate_subject` on every
    /// request, for an access log that prints them (`%FILTER_STATE(wasm.bffgate_decision:PLAIN)%`).
    /// Off by default: two host calls per request that nothing reads unless a log asks for
    /// them (`make check` warns when the Envoy config's access log asks and this is off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access_log_state: bool,
}

fn d_admin_revoke_concurrency() -> u32 {
    4
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
    /// Read the provider's OpenID Connect discovery document
    /// (`<issuer>/.well-known/openid-configuration`, through `cluster`) for the endpoints not
    /// set here, the client authentication methods and the ID token algorithms. Default: on
    /// unless both `authorization_endpoint` and `token_endpoint` are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<bool>,
    /// The discovery document is read again when it is older than this (at the first request
    /// that needs it).
    #[serde(default = "d_discovery_max_age_s")]
    pub discovery_max_age_s: u64,
    /// Authorization endpoint URL the browser is sent to; default: from discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// Token endpoint URL (called through `cluster`); default: from discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// RFC 7009 revocation endpoint URL (called through `cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// RP-initiated logout endpoint URL (returned to the browser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    /// JWKS URL (called through `cluster`): verifies ID-token and logout-token signatures;
    /// default: from discovery. Without it and without discovery, ID tokens are checked by
    /// claims only and back-channel logout is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Envoy cluster that reaches the provider's back channel.
    pub cluster: String,
    /// `:authority` of every callout to the provider (for a cluster that needs a fixed one);
    /// default: the host of the endpoint called.
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
    /// Fetch the provider's userinfo endpoint at login and keep its claims (under the ID
    /// token's `sub`): for providers that put profile claims only there.
    #[serde(default)]
    pub userinfo: bool,
    /// The userinfo endpoint URL (called through `cluster`); default: from discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_endpoint: Option<String>,
    /// Serve OIDC Front-Channel Logout 1.0 at `<auth_prefix>/frontchannel-logout`: the
    /// provider's logout page loads it in an iframe with `iss` and `sid`, and the sessions of
    /// that provider session end. Off by default: the request is not authenticated (anyone who
    /// knows a `sid` can end that session); back-channel logout is the stronger choice where the
    /// provider offers it.
    #[serde(default)]
    pub frontchannel_logout: bool,
    /// Seconds of clock difference with the provider tolerated when a sign-in's `auth_time` is
    /// checked against a route's `max_age_s` (and refused when it lies in the future).
    #[serde(default = "d_clock_skew_s")]
    pub clock_skew_s: u64,
    /// Pins the ID-token (and logout-token) signature algorithms accepted, e.g. `[ES256]`:
    /// of those the provider's discovery document lists, only these. Default: every one the
    /// provider lists that bffgate verifies (RS256/384/512, PS256/384/512, ES256, ES384, and
    /// HS256/384/512 with the client secret); without discovery, the RS, PS and ES ones (HMAC
    /// only when listed here). HMAC needs a client secret (not with `private_key_jwt`).
    #[serde(default)]
    pub id_token_signing_algs: Option<Vec<String>>,
}

fn d_true() -> bool {
    true
}

fn d_discovery_max_age_s() -> u64 {
    3600
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
    /// A JWT signed with the client's private key (RFC 7523, OIDC Core section 9): no shared
    /// secret; the key is in `private_key_env`.
    PrivateKeyJwt,
}

/// The `aud` of a `private_key_jwt` client assertion.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssertionAudience {
    /// `provider.token_endpoint` (default; RFC 7523 section 3).
    #[default]
    TokenEndpoint,
    /// `provider.issuer`, for providers that ask for it.
    Issuer,
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
    /// Client authentication method. Default: `client_secret_basic`, or `client_secret_post`
    /// when the provider's discovery document lists only that one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<AuthMethod>,
    /// With `private_key_jwt`: name of the environment variable holding the client's private
    /// key, a PEM or a private JWK (never the key itself).
    #[serde(default = "d_private_key_env")]
    pub private_key_env: String,
    /// With `private_key_jwt`: the `kid` of assertions, when the key itself (a JWK) has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_kid: Option<String>,
    /// With `private_key_jwt`: the assertions' `aud`.
    #[serde(default)]
    pub assertion_audience: AssertionAudience,
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
    /// When the key ring's first (signing) key changes under a running Envoy (a release that
    /// rotates keys), end every session and revoke their refresh tokens at the provider, as
    /// the operator API's revoke-all does (embedded store). Default false: a rotation keeps the
    /// sessions the ring still verifies.
    #[serde(default)]
    pub revoke_on_key_change: bool,
}

impl Default for RawCookie {
    fn default() -> Self {
        RawCookie {
            name: d_cookie_name(),
            flow_prefix: d_flow_prefix(),
            same_site: d_same_site(),
            keys_env: d_keys_env(),
            revoke_on_key_change: false,
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
    /// How session anomalies are detected (docs/security.md).
    #[serde(default)]
    pub anomaly: RawAnomaly,
    /// What each kind of anomaly does: `log`, `step_up` or `revoke`.
    #[serde(default)]
    pub on_anomaly: RawOnAnomaly,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            idle_timeout_s: d_idle(),
            absolute_timeout_s: d_absolute(),
            touch_interval_s: d_touch(),
            login_timeout_s: d_login_timeout(),
            refresh_skew_s: d_skew(),
            anomaly: RawAnomaly::default(),
            on_anomaly: RawOnAnomaly::default(),
        }
    }
}

/// Session anomaly detection (`session.anomaly`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    /// The sliding window of the rate and refusal counts, seconds.
    #[serde(default = "d_anomaly_window")]
    pub window_s: u64,
    /// Requests per second per session, averaged over the window, above which `rate` is
    /// signalled (counted per filter VM, i.e. per Envoy worker); 0 turns it off.
    #[serde(default = "d_anomaly_rps")]
    pub max_requests_per_s: u64,
    /// Refusals of one code (`csrf`, `insufficient_scope`, `forbidden`,
    /// `insufficient_user_authentication`) per window above which `refusals` is signalled; 0
    /// turns it off.
    #[serde(default = "d_anomaly_refusals")]
    pub max_refusals: u64,
    /// Bind sessions to (a keyed hash of) the `User-Agent` at sign-in.
    #[serde(default = "d_true")]
    pub bind_user_agent: bool,
    /// Bind sessions to (a keyed hash of) the client's network at sign-in: the /24 of an IPv4
    /// address, the /48 of an IPv6 one, taken from `client_address_header`.
    #[serde(default = "d_true")]
    pub bind_network: bool,
    /// The header holding the client address as Envoy resolved it: `x-forwarded-for`, to which
    /// Envoy appends the peer address when the connection manager has `use_remote_address:
    /// true`.
    #[serde(default = "d_xff")]
    pub client_address_header: String,
    /// Proxies in front of Envoy that each append their peer to `client_address_header`: the
    /// client address is the entry this many from the right.
    #[serde(default)]
    pub trusted_hops: u32,
}

impl Default for RawAnomaly {
    fn default() -> Self {
        RawAnomaly {
            window_s: d_anomaly_window(),
            max_requests_per_s: d_anomaly_rps(),
            max_refusals: d_anomaly_refusals(),
            bind_user_agent: true,
            bind_network: true,
            client_address_header: d_xff(),
            trusted_hops: 0,
        }
    }
}

/// What each kind of anomaly does (`session.on_anomaly`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOnAnomaly {
    /// Too many refusals of one code.
    #[serde(default)]
    pub refusals: crate::anomaly::Action,
    /// Too many requests.
    #[serde(default)]
    pub rate: crate::anomaly::Action,
    /// Another User-Agent than at sign-in.
    #[serde(default)]
    pub user_agent: crate::anomaly::Action,
    /// Another network than at sign-in.
    #[serde(default)]
    pub network: crate::anomaly::Action,
}

impl RawOnAnomaly {
    /// The action for `kind`.
    pub fn action(&self, kind: crate::anomaly::Kind) -> crate::anomaly::Action {
        use crate::anomaly::Kind;
        match kind {
            Kind::Refusals => self.refusals,
            Kind::Rate => self.rate,
            Kind::UserAgent => self.user_agent,
            Kind::Network => self.network,
        }
    }
}

fn d_anomaly_window() -> u64 {
    60
}
fn d_anomaly_rps() -> u64 {
    50
}
fn d_anomaly_refusals() -> u64 {
    10
}
fn d_xff() -> String {
    "x-forwarded-for".into()
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
    pub when_full: WhenFull,
    /// Where sessions live: `shared_data` (this Envoy's memory, the default) or `etcd` (shared
    /// by a fleet of Envoys; shared data becomes a read cache of `max_sessions` slots).
    #[serde(default)]
    pub backend: Backend,
    /// The etcd backend's settings (required with `backend: etcd`, refused without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<RawEtcd>,
    /// Embedded store: when Envoy shuts the VM down, revoke the refresh tokens of the sessions
    /// it holds at the provider (they would outlive the process there), bounded in time.
    #[serde(default)]
    pub revoke_on_shutdown: bool,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            max_sessions: d_max_sessions(),
            max_pending_logins: d_max_pending(),
            when_full: WhenFull::default(),
            backend: Backend::default(),
            etcd: None,
            revoke_on_shutdown: false,
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
    /// How the provider is asked for a token for this audience.
    #[serde(default)]
    pub indicator: Indicator,
    /// Scopes asked for when renewing or exchanging (down-scoping); default: whatever the
    /// provider grants for the resource. With `indicator: scope`, the provider's resource
    /// scopes that name this audience (e.g. `api://orders/.default`): required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The `aud` a JWT access token for this audience must carry (default: the audience's
    /// id): for providers whose tokens name the API by another identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_audience: Option<String>,
}

/// How a token for an audience is asked for, on the authorization request, the code exchange,
/// refresh-token grants and token exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    /// RFC 8707 `resource=<id>` (oidc-provider, Keycloak with resource indicators, Curity,
    /// Ping).
    #[default]
    Resource,
    /// `audience=<id>` (Auth0; Keycloak's standard token exchange).
    Audience,
    /// Only scopes: the audience's `scopes` name the provider's resource scopes
    /// (Microsoft Entra ID: `api://orders/.default` or `api://orders/Orders.Read`).
    Scope,
}

fn d_auth_prefix() -> String {
    "/auth".into()
}
fn d_clock_skew_s() -> u64 {
    60
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
fn d_private_key_env() -> String {
    "BFFGATE_CLIENT_KEY".into()
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
