//! A callout: a request the filter makes from inside Envoy (`dispatch_http_call`) to the
//! identity provider or to etcd, as a value, and the outcome the shell feeds back.

use crate::secret::Secret;

/// A request to the provider's back channel or to a store, as a value the shell turns into a
/// callout.
#[derive(Debug, Clone, PartialEq)]
pub struct Callout {
    /// Envoy cluster to call; `None` for the provider's (`provider.cluster`).
    pub cluster: Option<String>,
    /// `:authority`: the endpoint's host, or `provider.authority` when set.
    pub authority: String,
    /// `POST` (token endpoint, revocation, etcd) or `GET` (JWKS, discovery).
    pub method: &'static str,
    /// Path on the cluster.
    pub path: String,
    /// Extra headers (`authorization` for Basic client auth).
    pub headers: Vec<(String, Secret)>,
    /// The body (a form or JSON; may contain secrets: never log it).
    pub body: Secret,
    /// Callout timeout in milliseconds.
    pub timeout_ms: u64,
}

/// Outcome of a callout, as the shell saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult {
    /// A response arrived.
    Response {
        /// Status.
        status: u16,
        /// Body.
        body: Vec<u8>,
    },
    /// No response: timeout, reset, no healthy upstream, or dispatch failure.
    Failed,
}
