//! OpenID Connect Discovery 1.0 and RFC 8414: the provider's metadata document
//! (`<issuer>/.well-known/openid-configuration`) as a checked value.
//!
//! Pure: the engine fetches the document through the provider's Envoy cluster and hands the
//! body to [`parse`]; nothing here touches the host. The document is untrusted input (it comes
//! over the network, possibly from a misconfigured or hostile server), so [`parse`] is total,
//! bounded ([`MAX_BODY`]) and every error quotes at most [`SHOWN`] characters of the document,
//! with control and bidirectional-formatting characters removed.
//!
//! What is checked, and why:
//! - **`issuer`** must equal the configured issuer byte for byte (OIDC Discovery §4.3, RFC 8414
//!   §3.3): no trailing-slash or case normalisation, since the ID token's `iss` is compared
//!   the same way. The error names both values.
//! - **Required** (the REQUIRED members of OIDC Discovery §3 that bffgate relies on):
//!   `authorization_endpoint`, `token_endpoint`, `jwks_uri`, `response_types_supported` (must
//!   list `code`) and `id_token_signing_alg_values_supported` (must list one of the
//!   algorithms `jose` verifies: RS*, PS*, ES256, ES384, HS*; OIDC Discovery makes RS256
//!   mandatory to list). A document
//!   without the latter is OAuth-only metadata (RFC 8414), not an OpenID provider's, and is
//!   refused. `subject_types_supported` is REQUIRED too but unused, so its absence is not
//!   refused.
//! - **Endpoint URLs** (required and optional ones): absolute `https://` or `http://` with a
//!   host, no user info, no fragment, printable ASCII only, at most [`MAX_URL`] bytes; `http://`
//!   only when the issuer itself is `http://` (a local or test provider: an https issuer's
//!   endpoints are never downgraded). `authorization_endpoint` must carry no query, like
//!   `provider.authorization_endpoint` in the configuration (bffgate appends its own).
//! - **Lists** must be arrays of strings and **flags** booleans; a wrong type is refused with the
//!   field named. A member set to `null` counts as absent. Members bffgate does not model are
//!   ignored (both specs allow extensions, e.g. Entra's `cloud_instance_name`).
//! - **Defaults** when absent, per the specs: `token_endpoint_auth_methods_supported`
//!   `["client_secret_basic"]`, `grant_types_supported` `["authorization_code", "implicit"]`,
//!   every flag `false`; the other lists are empty (not stated).
//! - **PKCE**: bffgate always sends `code_challenge_method=S256`. If
//!   `code_challenge_methods_supported` is present without `S256`, the document is refused. If it
//!   is absent, it is accepted (RFC 8414 reads absence as "no PKCE", but providers that enforce
//!   PKCE, Entra ID and Auth0 among them, leave it out): `code_challenge_methods_supported` is
//!   then empty.
//! - `grant_types_supported`, when present, must list `authorization_code`.
//!
//! A leading UTF-8 byte order mark is skipped (RFC 8259 §8.1 allows ignoring it).

use serde_json::{Map, Value};

/// Longest discovery document accepted, in bytes. Real ones are 1.5 to 7 KB.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest endpoint URL accepted, in bytes.
pub const MAX_URL: usize = 2048;
/// At most this many characters of the document are quoted in one error.
pub const SHOWN: usize = 200;
/// What OpenID Connect Discovery §4 appends to the issuer.
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// The algorithms bffgate verifies ID tokens with (`jose`).
pub const VERIFIED_ALGS: &[&str] = crate::jose::ALGS;

/// A provider's metadata, checked (see the module documentation for the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Equal to the configured issuer.
    pub issuer: String,
    /// Where the browser is sent to log in (no query).
    pub authorization_endpoint: String,
    /// Code exchange, refresh and token exchange.
    pub token_endpoint: String,
    /// The provider's signing keys.
    pub jwks_uri: String,
    /// RFC 7009 revocation.
    pub revocation_endpoint: Option<String>,
    /// RP-initiated logout (the browser is sent there).
    pub end_session_endpoint: Option<String>,
    /// OIDC Core §5.3.
    pub userinfo_endpoint: Option<String>,
    /// RFC 7662 introspection.
    pub introspection_endpoint: Option<String>,
    /// RFC 9126 pushed authorization requests.
    pub pushed_authorization_request_endpoint: Option<String>,
    /// OIDC Back-Channel Logout §2.1 (default `false`).
    pub backchannel_logout_supported: bool,
    /// The back-channel logout token carries `sid` (default `false`).
    pub backchannel_logout_session_supported: bool,
    /// OIDC Front-Channel Logout §3 (default `false`).
    pub frontchannel_logout_supported: bool,
    /// Front-channel logout carries `iss` and `sid` (default `false`).
    pub frontchannel_logout_session_supported: bool,
    /// RFC 9207: the authorization response carries `iss` (default `false`).
    pub authorization_response_iss_parameter_supported: bool,
    /// RFC 9126 §5: the provider accepts only pushed authorization requests (default `false`).
    pub require_pushed_authorization_requests: bool,
    /// Default `["client_secret_basic"]`.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Lists one of the algorithms `jose` verifies (required).
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// Empty when absent; lists `S256` when present.
    pub code_challenge_methods_supported: Vec<String>,
    /// Empty when absent.
    pub scopes_supported: Vec<String>,
    /// Default `["authorization_code", "implicit"]`; lists `authorization_code`.
    pub grant_types_supported: Vec<String>,
    /// Lists `code` (required).
    pub response_types_supported: Vec<String>,
}

impl Discovered {
    /// Whether the token endpoint accepts this client authentication method
    /// (`client_secret_basic`, `client_secret_post`, ...).
    pub fn supports_auth_method(&self, method: &str) -> bool {
        self.token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == method)
    }

    /// The endpoints bffgate itself calls (through the provider's Envoy cluster), as
    /// `(field, URL)`: the token endpoint, the JWKS and those of the optional ones present.
    /// Their hosts may differ from the issuer's (Google: `accounts.google.com` issues,
    /// `oauth2.googleapis.com` exchanges codes, `www.googleapis.com` serves the keys).
    pub fn callout_endpoints(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![
            ("token_endpoint", self.token_endpoint.as_str()),
            ("jwks_uri", self.jwks_uri.as_str()),
        ];
        for (field, url) in [
            ("revocation_endpoint", &self.revocation_endpoint),
            ("userinfo_endpoint", &self.userinfo_endpoint),
            ("introspection_endpoint", &self.introspection_endpoint),
            (
                "pushed_authorization_request_endpoint",
                &self.pushed_authorization_request_endpoint,
            ),
        ] {
            if let Some(u) = url {
                v.push((field, u.as_str()));
            }
        }
        v
    }
}

/// What bffgate keeps of a discovery document (in shared data, for every worker): the
/// endpoints and capabilities it uses, and the issuer they belong to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The issuer (a cached document of another issuer is not used).
    pub issuer: String,
    /// `authorization_endpoint`.
    pub authorization_endpoint: String,
    /// `token_endpoint`.
    pub token_endpoint: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
    /// `revocation_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// `end_session_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    /// `userinfo_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_endpoint: Option<String>,
    /// `token_endpoint_auth_methods_supported`.
    pub auth_methods: Vec<String>,
    /// `id_token_signing_alg_values_supported`, only those bffgate verifies.
    pub id_token_algs: Vec<String>,
    /// `backchannel_logout_supported`.
    #[serde(default)]
    pub backchannel_logout_supported: bool,
}

impl From<&Discovered> for Meta {
    fn from(d: &Discovered) -> Meta {
        Meta {
            issuer: d.issuer.clone(),
            authorization_endpoint: d.authorization_endpoint.clone(),
            token_endpoint: d.token_endpoint.clone(),
            jwks_uri: d.jwks_uri.clone(),
            revocation_endpoint: d.revocation_endpoint.clone(),
            end_session_endpoint: d.end_session_endpoint.clone(),
            userinfo_endpoint: d.userinfo_endpoint.clone(),
            auth_methods: d.token_endpoint_auth_methods_supported.clone(),
            id_token_algs: d
                .id_token_signing_alg_values_supported
                .iter()
                .filter(|a| VERIFIED_ALGS.contains(&a.as_str()))
                .cloned()
                .collect(),
            backchannel_logout_supported: d.backchannel_logout_supported,
        }
    }
}

/// Why a discovery document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The body is longer than [`MAX_BODY`].
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The body is not JSON (the parser's message).
    NotJson(String),
    /// The body is JSON but not an object.
    NotObject,
    /// `issuer` is not the configured issuer.
    IssuerMismatch {
        /// The document's value (shortened, control characters removed).
        found: String,
        /// The configured value (shortened likewise).
        expected: String,
    },
    /// A required member is absent (or `null`).
    Missing(&'static str),
    /// An endpoint member is not an acceptable URL.
    BadUrl {
        /// The member.
        field: &'static str,
        /// Its value (shortened, control characters removed).
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A member has the wrong JSON type.
    WrongType {
        /// The member.
        field: &'static str,
        /// What it must be ("a string", "an array of strings", "a boolean").
        expected: &'static str,
    },
    /// `code_challenge_methods_supported` is present without `S256`.
    S256Unsupported {
        /// The methods it lists (joined, shortened).
        offered: String,
    },
    /// A list lacks a value the code flow as bffgate runs it needs.
    Unsupported {
        /// The member.
        field: &'static str,
        /// What it must list.
        needs: &'static str,
    },
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryError::TooLarge { len } => write!(
                f,
                "the discovery document is {len} bytes, more than the {MAX_BODY} accepted"
            ),
            DiscoveryError::NotJson(e) => write!(f, "the discovery document is not JSON: {e}"),
            DiscoveryError::NotObject => f.write_str("the discovery document is not a JSON object"),
            DiscoveryError::IssuerMismatch { found, expected } => {
                write!(
                    f,
                    "the discovery document names issuer \"{found}\" but provider.issuer is \
                     \"{expected}\""
                )?;
                if found.trim_end_matches('/') == expected.trim_end_matches('/') {
                    f.write_str(
                        " (they differ only by a trailing `/`, and the issuer must match exactly: \
                         set provider.issuer to the document's value)",
                    )?;
                }
                Ok(())
            }
            DiscoveryError::Missing(field) => {
                write!(f, "the discovery document has no `{field}` (required)")
            }
            DiscoveryError::BadUrl { field, value, why } => {
                write!(f, "`{field}` in the discovery document {why}: \"{value}\"")
            }
            DiscoveryError::WrongType { field, expected } => {
                write!(f, "`{field}` in the discovery document must be {expected}")
            }
            DiscoveryError::S256Unsupported { offered } => write!(
                f,
                "the provider's code_challenge_methods_supported [{offered}] lacks S256, and \
                 bffgate always uses PKCE with S256"
            ),
            DiscoveryError::Unsupported { field, needs } => write!(
                f,
                "`{field}` in the discovery document does not list {needs}, which bffgate needs"
            ),
        }
    }
}

impl std::error::Error for DiscoveryError {}

/// Untrusted text for an error message: at most [`SHOWN`] characters, without control
/// characters or the invisible ones that reorder or hide text (bidi controls, zero-width).
pub fn shown(s: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(
                c,
                '\u{200b}'..='\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2060}'..='\u{2069}'
                    | '\u{feff}'
            )
    };
    let mut out = String::new();
    for (n, c) in s.chars().filter(|c| !invisible(*c)).enumerate() {
        if n == SHOWN {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// Splits an endpoint URL into `(authority, path_and_query)` for a callout, with the checks
/// [`parse`] applies to every endpoint: `http`/`https`, a host name (`[A-Za-z0-9._-]`) or an IP
/// literal in brackets, an optional port of digits, no user info, no fragment, printable ASCII, at most [`MAX_URL`] bytes. The path is `/`
/// when the URL has none. `None` for anything else.
pub fn split_endpoint(url: &str) -> Option<(&str, &str)> {
    check_url(url)
        .ok()
        .map(|(_, authority, path)| (authority, path))
}

/// The `(authority, path)` of the issuer's discovery document (OIDC Discovery §4.1: the
/// issuer with any trailing `/` removed, then [`WELL_KNOWN`]): `https://idp.example/realms/x`
/// gives `("idp.example", "/realms/x/.well-known/openid-configuration")`, and
/// `https://tenant.auth0.com/` gives `("tenant.auth0.com", "/.well-known/openid-configuration")`.
/// `None` if the issuer is not an `http(s)` URL with a host, or has a query or a fragment
/// (which an issuer must not have).
pub fn well_known_path(issuer: &str) -> Option<(&str, String)> {
    let (_, authority, path) = check_url(issuer).ok()?;
    if path.contains('?') {
        return None;
    }
    Some((
        authority,
        format!("{}{WELL_KNOWN}", path.trim_end_matches('/')),
    ))
}

/// The full URL of the issuer's discovery document (for messages), if [`well_known_path`]
/// accepts the issuer.
pub fn well_known_url(issuer: &str) -> Option<String> {
    let (scheme, _, _) = check_url(issuer).ok()?;
    let (authority, path) = well_known_path(issuer)?;
    Some(format!("{scheme}://{authority}{path}"))
}

/// `(scheme, authority, path_and_query)` of an acceptable endpoint URL, or what is wrong.
fn check_url(url: &str) -> Result<(&str, &str, &str), &'static str> {
    if url.len() > MAX_URL {
        return Err("is longer than 2048 bytes");
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has spaces, control or non-ASCII characters");
    }
    if url.contains('#') {
        return Err("has a fragment");
    }
    let not_absolute = "is not an absolute http(s) URL with a host";
    let (scheme, rest) = url.split_once("://").ok_or(not_absolute)?;
    if scheme != "https" && scheme != "http" {
        return Err(not_absolute);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at_checked(end).ok_or(not_absolute)?;
    if authority.contains('@') {
        return Err("has user info");
    }
    let host = match authority.rsplit_once(':') {
        // A port (and not the inside of an IP literal): digits, at most 65535.
        Some((h, port)) if !port.contains(']') => {
            if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
                return Err(not_absolute);
            }
            h
        }
        _ => authority,
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // An IP literal (RFC 3986 3.2.2), loosely: hex digits, `:` and `.`.
        Some(ip) => {
            !ip.is_empty()
                && ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        }
    };
    if !host_ok {
        return Err(not_absolute);
    }
    let path = match path {
        "" => "/",
        p if p.starts_with('?') => return Err("has a query but no path"),
        p => p,
    };
    Ok((scheme, authority, path))
}

/// Parses and checks a discovery document for the configured issuer.
pub fn parse(body: &[u8], expected_issuer: &str) -> Result<Discovered, DiscoveryError> {
    if body.len() > MAX_BODY {
        return Err(DiscoveryError::TooLarge { len: body.len() });
    }
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::NotJson(shown(&e.to_string())))?;
    let Value::Object(doc) = doc else {
        return Err(DiscoveryError::NotObject);
    };

    let issuer = string(&doc, "issuer")?.ok_or(DiscoveryError::Missing("issuer"))?;
    if issuer != expected_issuer {
        return Err(DiscoveryError::IssuerMismatch {
            found: shown(issuer),
            expected: shown(expected_issuer),
        });
    }
    let https_only = issuer.starts_with("https://");
    let required = |field| url(&doc, field, https_only)?.ok_or(DiscoveryError::Missing(field));
    let optional = |field| url(&doc, field, https_only);

    let authorization_endpoint = required("authorization_endpoint")?;
    if authorization_endpoint.contains('?') {
        return Err(DiscoveryError::BadUrl {
            field: "authorization_endpoint",
            value: shown(&authorization_endpoint),
            why: "has a query, which bffgate cannot extend (set provider.authorization_endpoint \
                  and client.extra_authorize_params instead)",
        });
    }
    let token_endpoint = required("token_endpoint")?;
    let jwks_uri = required("jwks_uri")?;

    let response_types_supported = strings(&doc, "response_types_supported")?
        .ok_or(DiscoveryError::Missing("response_types_supported"))?;
    if !response_types_supported.iter().any(|t| t == "code") {
        return Err(DiscoveryError::Unsupported {
            field: "response_types_supported",
            needs: "`code` (the authorization code flow)",
        });
    }
    let id_token_signing_alg_values_supported =
        strings(&doc, "id_token_signing_alg_values_supported")?.ok_or(DiscoveryError::Missing(
            "id_token_signing_alg_values_supported",
        ))?;
    if !id_token_signing_alg_values_supported
        .iter()
        .any(|a| VERIFIED_ALGS.contains(&a.as_str()))
    {
        return Err(DiscoveryError::Unsupported {
            field: "id_token_signing_alg_values_supported",
            needs: "one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, HS256, HS384, HS512 (the ID token signatures bffgate verifies)",
        });
    }
    let code_challenge_methods_supported = match strings(&doc, "code_challenge_methods_supported")?
    {
        None => Vec::new(),
        Some(m) if m.iter().any(|x| x == "S256") => m,
        Some(m) => {
            return Err(DiscoveryError::S256Unsupported {
                offered: shown(&m.join(", ")),
            })
        }
    };
    let grant_types_supported = strings(&doc, "grant_types_supported")?
        .unwrap_or_else(|| vec!["authorization_code".into(), "implicit".into()]);
    if !grant_types_supported
        .iter()
        .any(|g| g == "authorization_code")
    {
        return Err(DiscoveryError::Unsupported {
            field: "grant_types_supported",
            needs: "`authorization_code`",
        });
    }

    Ok(Discovered {
        issuer: issuer.to_string(),
        authorization_endpoint,
        token_endpoint,
        jwks_uri,
        revocation_endpoint: optional("revocation_endpoint")?,
        end_session_endpoint: optional("end_session_endpoint")?,
        userinfo_endpoint: optional("userinfo_endpoint")?,
        introspection_endpoint: optional("introspection_endpoint")?,
        pushed_authorization_request_endpoint: optional("pushed_authorization_request_endpoint")?,
        backchannel_logout_supported: flag(&doc, "backchannel_logout_supported")?,
        backchannel_logout_session_supported: flag(&doc, "backchannel_logout_session_supported")?,
        frontchannel_logout_supported: flag(&doc, "frontchannel_logout_supported")?,
        frontchannel_logout_session_supported: flag(&doc, "frontchannel_logout_session_supported")?,
        authorization_response_iss_parameter_supported: flag(
            &doc,
            "authorization_response_iss_parameter_supported",
        )?,
        require_pushed_authorization_requests: flag(&doc, "require_pushed_authorization_requests")?,
        token_endpoint_auth_methods_supported: strings(
            &doc,
            "token_endpoint_auth_methods_supported",
        )?
        .unwrap_or_else(|| vec!["client_secret_basic".into()]),
        id_token_signing_alg_values_supported,
        code_challenge_methods_supported,
        scopes_supported: strings(&doc, "scopes_supported")?.unwrap_or_default(),
        grant_types_supported,
        response_types_supported,
    })
}

/// A string member; `None` when absent or `null`.
fn string<'a>(
    doc: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, DiscoveryError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DiscoveryError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// An endpoint URL member, checked; `None` when absent or `null`.
fn url(
    doc: &Map<String, Value>,
    field: &'static str,
    https_only: bool,
) -> Result<Option<String>, DiscoveryError> {
    let Some(u) = string(doc, field)? else {
        return Ok(None);
    };
    let bad = |why| DiscoveryError::BadUrl {
        field,
        value: shown(u),
        why,
    };
    let (scheme, _, _) = check_url(u).map_err(bad)?;
    if https_only && scheme != "https" {
        return Err(bad("is not https while the issuer is"));
    }
    Ok(Some(u.to_string()))
}

/// An array-of-strings member; `None` when absent or `null`.
fn strings(
    doc: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Vec<String>>, DiscoveryError> {
    let wrong = DiscoveryError::WrongType {
        field,
        expected: "an array of strings",
    };
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(wrong.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong),
    }
}

/// A boolean member; `false` when absent or `null`.
fn flag(doc: &Map<String, Value>, field: &'static str) -> Result<bool, DiscoveryError> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(DiscoveryError::WrongType {
            field,
            expected: "a boolean",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_strips_invisible_characters_and_bounds_the_length() {
        assert_eq!(
            shown("a\u{0}b\r\n\u{1b}c\u{202e}d\u{200b}e\u{feff}f\u{85}"),
            "abcdef"
        );
        let long = "é".repeat(SHOWN + 5);
        let s = shown(&long);
        assert_eq!(s.chars().count(), SHOWN + 1);
        assert!(s.ends_with('…'));
        assert_eq!(shown(&"x".repeat(SHOWN)), "x".repeat(SHOWN));
    }

    #[test]
    fn check_url_says_what_is_wrong() {
        assert_eq!(check_url("https://a/b#c"), Err("has a fragment"));
        assert_eq!(check_url("https://u@a/b"), Err("has user info"));
        assert_eq!(check_url("https://a?b"), Err("has a query but no path"));
        assert_eq!(check_url("https://a:1/b"), Ok(("https", "a:1", "/b")));
    }
}
