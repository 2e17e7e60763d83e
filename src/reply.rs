//! Local replies of the filter: the JSON error of the contract, redirects, and the headers
//! every reply carries. A reply knows what it is ([`ReplyKind`]), so the access log and the
//! metrics read its decision without parsing its body.

use serde_json::{json, Value};

/// What a reply amounts to, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// An answer of a bffgate endpoint (login redirect to the provider, `/auth/user`, logout,
    /// a preflight, the operator API).
    Endpoint,
    /// A redirect to bffgate's login for a navigation without a session.
    LoginRedirect,
    /// A refusal with the contract's error code.
    Error(ErrorCode),
}

/// A local reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers (several `set-cookie` allowed).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// What it is.
    pub kind: ReplyKind,
}

/// Error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No valid session.
    Unauthenticated,
    /// The route's token lacks a scope.
    InsufficientScope,
    /// Policy refused (claims, no policy for the route).
    Forbidden,
    /// CSRF defence refused.
    Csrf,
    /// Malformed request to a bffgate endpoint.
    InvalidRequest,
    /// The login could not be completed.
    LoginFailed,
    /// The provider could not be reached or misbehaved.
    IdpUnavailable,
    /// The session store (etcd, in fleet mode) could not be reached.
    StoreUnavailable,
    /// The route (or its upstream) needs a newer or stronger sign-in (RFC 9470 step-up).
    InsufficientUserAuthentication,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Unauthenticated,
        ErrorCode::InsufficientScope,
        ErrorCode::Forbidden,
        ErrorCode::Csrf,
        ErrorCode::InvalidRequest,
        ErrorCode::LoginFailed,
        ErrorCode::IdpUnavailable,
        ErrorCode::StoreUnavailable,
        ErrorCode::InsufficientUserAuthentication,
    ];

    /// The wire code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Csrf => "csrf",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::LoginFailed => "login_failed",
            ErrorCode::IdpUnavailable => "idp_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::InsufficientUserAuthentication => "insufficient_user_authentication",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Headers on every reply bffgate generates.
pub fn base_headers() -> Vec<(String, String)> {
    vec![
        ("cache-control".into(), "no-store".into()),
        ("x-content-type-options".into(), "nosniff".into()),
    ]
}

/// A JSON error reply.
pub fn error_reply(status: u16, code: ErrorCode, description: &str) -> Reply {
    let mut headers = base_headers();
    headers.push(("content-type".into(), "application/json".into()));
    if status == 401 {
        headers.push(("www-authenticate".into(), "Cookie realm=\"bffgate\"".into()));
    }
    Reply {
        status,
        headers,
        body: json!({"error": code.as_str(), "error_description": description}).to_string(),
        kind: ReplyKind::Error(code),
    }
}

/// `401 insufficient_user_authentication` (RFC 9470): what sign-in the request needs, where to
/// get it (`login_url`, a step-up login that comes back to `return_to`), and the challenge in
/// the RFC's form. Only validated values reach here (`StepUp::parse` or the route's policy).
pub fn step_up_reply(step: &crate::policy::StepUp, login_url: &str) -> Reply {
    let mut r = error_reply(
        401,
        ErrorCode::InsufficientUserAuthentication,
        "a newer or stronger sign-in is required",
    );
    let mut challenge = String::from(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication level is required\"",
    );
    let mut body = serde_json::Map::new();
    body.insert("error".into(), json!("insufficient_user_authentication"));
    body.insert(
        "error_description".into(),
        json!("a newer or stronger sign-in is required"),
    );
    body.insert("login_url".into(), json!(login_url));
    if let Some(a) = &step.acr_values {
        challenge.push_str(&format!(", acr_values=\"{a}\""));
        body.insert("acr_values".into(), json!(a));
    }
    if let Some(m) = step.max_age {
        challenge.push_str(&format!(", max_age=\"{m}\""));
        body.insert("max_age".into(), json!(m));
    }
    r.headers.retain(|(k, _)| k != "www-authenticate");
    r.headers.push(("www-authenticate".into(), challenge));
    r.body = Value::Object(body).to_string();
    r
}

/// `503 store_unavailable`: the session store could not confirm the session or a write.
pub fn store_unavailable() -> Reply {
    error_reply(
        503,
        ErrorCode::StoreUnavailable,
        "the session store is unavailable; try again",
    )
}

pub fn json_reply(status: u16, body: Value) -> Reply {
    let mut headers = base_headers();
    headers.push(("content-type".into(), "application/json".into()));
    Reply {
        status,
        headers,
        body: body.to_string(),
        kind: ReplyKind::Endpoint,
    }
}

pub fn redirect(location: &str) -> Reply {
    let mut headers = base_headers();
    headers.push(("location".into(), location.to_string()));
    Reply {
        status: 302,
        headers,
        body: String::new(),
        kind: ReplyKind::Endpoint,
    }
}

pub fn with_cookie(mut r: Reply, set_cookie: String) -> Reply {
    r.headers.push(("set-cookie".into(), set_cookie));
    r
}

/// The response headers that let an allowed `origin` read an answer, with credentials.
pub fn cors_headers(origin: String) -> [(String, String); 3] {
    [
        ("access-control-allow-origin".into(), origin),
        ("access-control-allow-credentials".into(), "true".into()),
        ("vary".into(), "origin".into()),
    ]
}
