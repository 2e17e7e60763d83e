//! OAuth 2.0 messages as values: PKCE, the authorization URL, token-endpoint requests and the
//! parsing of their responses into typed results.

use crate::callout::Callout;
use crate::config::{
    AssertionAudience, Audience, AuthMethod, Config, Endpoints, Indicator, Target,
};
use crate::secret::Secret;
use crate::util::Random;
use crate::util::{b64url, sha256};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;

/// PKCE S256 challenge for a verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(&sha256(verifier.as_bytes()))
}

/// The audience `id` of `cfg`.
fn audience<'c>(cfg: &'c Config, id: &str) -> Option<&'c Audience> {
    cfg.audiences.iter().find(|a| a.id == id)
}

/// The scopes asked for at login: the client's, plus the login audience's resource scopes
/// when it is asked for by scope.
pub fn login_scope(cfg: &Config) -> String {
    match audience(cfg, &cfg.login_audience) {
        Some(Audience {
            indicator: Indicator::Scope,
            scope: Some(sc),
            ..
        }) => format!("{} {sc}", cfg.client.scope),
        _ => cfg.client.scope.clone(),
    }
}

/// The authorization request URL. RFC 8707 `resource` names every resource-indicated audience
/// (the refresh token then covers them all); an `audience` parameter or resource scopes name
/// only the login audience (what Auth0 and Entra ID take on one request).
pub fn authorize_url(
    cfg: &Config,
    ep: &Endpoints,
    state: &str,
    nonce: &str,
    challenge: &str,
    step_up: &crate::policy::StepUp,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::with_capacity(512));
    q.append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client.client_id)
        .append_pair("redirect_uri", &cfg.client.redirect_uri)
        .append_pair("scope", &login_scope(cfg))
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    for a in &cfg.audiences {
        if a.indicator == Indicator::Resource {
            q.append_pair("resource", &a.id);
        }
    }
    if let Some(a) = audience(cfg, &cfg.login_audience) {
        if a.indicator == Indicator::Audience {
            q.append_pair("audience", &a.id);
        }
    }
    // A step-up (RFC 9470) asks for a sign-in level: its parameters win over the configured
    // extras of the same name, and `max_age` 0 means a sign-in now (`prompt=login`).
    let stepped = |k: &str| match k {
        "acr_values" => step_up.acr_values.is_some(),
        "max_age" => step_up.max_age.is_some(),
        "prompt" => step_up.max_age == Some(0),
        _ => false,
    };
    for (k, v) in &cfg.client.extra_authorize_params {
        if !stepped(k) {
            q.append_pair(k, v);
        }
    }
    if let Some(a) = &step_up.acr_values {
        q.append_pair("acr_values", a);
    }
    if let Some(m) = step_up.max_age {
        q.append_pair("max_age", &m.to_string());
        if m == 0 {
            q.append_pair("prompt", "login");
        }
    }
    format!("{}?{}", ep.authorization, q.finish())
}

/// What every request to the provider's back channel needs: the configuration, the endpoints
/// in effect, and (for `private_key_jwt`, whose assertions are signed per request with a fresh
/// `jti`) the clock and randomness.
pub struct Provider<'a> {
    /// Configuration.
    pub cfg: &'a Config,
    /// Endpoints in effect.
    pub ep: &'a Endpoints,
    /// Now, unix seconds.
    pub now: u64,
    /// Randomness.
    pub rng: &'a mut dyn Random,
}

/// A callout to `target` (its own `:authority` unless `provider.authority` is set).
pub fn callout(cfg: &Config, target: &Target, method: &'static str, body: String) -> Callout {
    Callout {
        cluster: None,
        authority: cfg
            .provider
            .authority
            .clone()
            .unwrap_or_else(|| target.authority.clone()),
        method,
        path: target.path.clone(),
        headers: Vec::new(),
        body: Secret::new(body),
        timeout_ms: cfg.provider.timeout_ms,
    }
}

impl Provider<'_> {
    /// A form POST to `target` with the client's authentication.
    fn client_request(
        &mut self,
        target: &Target,
        mut form: form_urlencoded::Serializer<String>,
    ) -> Callout {
        let cfg = self.cfg;
        let mut headers = Vec::new();
        match self.ep.auth_method {
            AuthMethod::ClientSecretBasic => {
                // RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let raw = format!(
                    "{}:{}",
                    enc(&cfg.client.client_id),
                    enc(cfg.client.secret.expose())
                );
                headers.push((
                    "authorization".to_string(),
                    Secret::new(format!("Basic {}", STANDARD.encode(raw))),
                ));
            }
            AuthMethod::ClientSecretPost => {
                form.append_pair("client_id", &cfg.client.client_id);
                form.append_pair("client_secret", cfg.client.secret.expose());
            }
            AuthMethod::PrivateKeyJwt => {
                form.append_pair("client_id", &cfg.client.client_id);
                // Compiled with its key (config refuses `private_key_jwt` without one).
                if let Some(key) = &cfg.client.key {
                    let aud = match cfg.client.assertion_audience {
                        AssertionAudience::TokenEndpoint => self.ep.token.url.as_str(),
                        AssertionAudience::Issuer => cfg.provider.issuer.as_str(),
                    };
                    let jws = crate::assertion::client_assertion(
                        key,
                        &cfg.client.client_id,
                        aud,
                        self.now,
                        self.rng,
                    );
                    form.append_pair("client_assertion_type", crate::assertion::ASSERTION_TYPE);
                    form.append_pair("client_assertion", &jws);
                }
            }
        }
        let mut c = callout(cfg, target, "POST", form.finish());
        c.headers = headers;
        c
    }

    /// The authorization-code exchange (with PKCE verifier and the login audience).
    pub fn code_request(&mut self, code: &str, verifier: &str) -> Callout {
        let cfg = self.cfg;
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &cfg.client.redirect_uri)
            .append_pair("code_verifier", verifier);
        match audience(cfg, &cfg.login_audience).map(|a| a.indicator) {
            // The code was issued for the login audience's scopes already.
            Some(Indicator::Scope) => {}
            Some(Indicator::Audience) => {
                f.append_pair("audience", &cfg.login_audience);
            }
            _ => {
                f.append_pair("resource", &cfg.login_audience);
            }
        }
        let token = self.ep.token.clone();
        self.client_request(&token, f)
    }

    /// A refresh-token grant for one audience, named as its `indicator` says, down-scoped to
    /// the audience's configured scopes if any.
    pub fn refresh_request(&mut self, refresh_token: &str, audience: &str) -> Callout {
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh_token);
        indicate(self.cfg, &mut f, audience);
        let token = self.ep.token.clone();
        self.client_request(&token, f)
    }

    /// An RFC 8693 token exchange: the session's login-audience access token for a token
    /// whose audience is `audience`.
    pub fn exchange_request(&mut self, subject_token: &str, audience: &str) -> Callout {
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("grant_type", TOKEN_EXCHANGE)
            .append_pair("subject_token", subject_token)
            .append_pair("subject_token_type", ACCESS_TOKEN_TYPE)
            .append_pair("requested_token_type", ACCESS_TOKEN_TYPE);
        indicate(self.cfg, &mut f, audience);
        let token = self.ep.token.clone();
        self.client_request(&token, f)
    }

    /// An RFC 7009 revocation request; `None` if the provider has no revocation endpoint.
    pub fn revoke_request(&mut self, token: &str, hint: &str) -> Option<Callout> {
        let target = self.ep.revocation.clone()?;
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("token", token)
            .append_pair("token_type_hint", hint);
        Some(self.client_request(&target, f))
    }
}

/// Names `id` on a token request the way its audience is configured to be asked for:
/// `resource` (RFC 8707) or `audience`, each with the configured down-scoping `scope`; or only
/// `scope`, the audience's resource scopes.
fn indicate(cfg: &Config, f: &mut form_urlencoded::Serializer<String>, id: &str) {
    let a = audience(cfg, id);
    match a.map_or(Indicator::Resource, |a| a.indicator) {
        Indicator::Resource => {
            f.append_pair("resource", id);
        }
        Indicator::Audience => {
            f.append_pair("audience", id);
        }
        Indicator::Scope => {}
    }
    if let Some(sc) = a.and_then(|a| a.scope.as_deref()) {
        f.append_pair("scope", sc);
    }
}

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type of an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A GET of one of the provider's documents (JWKS, discovery).
pub fn get_request(cfg: &Config, target: &Target) -> Callout {
    callout(cfg, target, "GET", String::new())
}

/// A userinfo request with the access token.
pub fn userinfo_request(cfg: &Config, target: &Target, access_token: &Secret) -> Callout {
    let mut c = callout(cfg, target, "GET", String::new());
    c.headers.push((
        "authorization".to_string(),
        access_token.clone().prefixed("Bearer "),
    ));
    c
}

/// A successful token response.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSet {
    /// Access token.
    pub access_token: Secret,
    /// Lifetime in seconds (from `expires_in`, else the JWT `exp`, else a short default).
    pub expires_in: u64,
    /// Granted scopes (space-separated) as the response said; `None` when it did not say.
    pub scope: Option<String>,
    /// Refresh token, if issued (rotation).
    pub refresh_token: Option<Secret>,
    /// ID token, if issued.
    pub id_token: Option<Secret>,
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// `invalid_grant`: the code or refresh token is dead. Terminal for a session.
    InvalidGrant,
    /// Another OAuth error code from a 4xx (terminal: configuration or client problem).
    OAuth(String),
    /// 5xx, 429 or other status: the provider is unwell; transient.
    Unavailable(u16),
    /// 2xx without a usable token, or not JSON: the provider misbehaves; transient.
    Malformed(&'static str),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::InvalidGrant => f.write_str("invalid_grant"),
            TokenError::OAuth(code) => write!(f, "OAuth error `{code}`"),
            TokenError::Unavailable(status) => write!(f, "the provider answered {status}"),
            TokenError::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TokenError {}

impl TokenError {
    /// Whether the session's grant is dead (as opposed to the provider being unwell).
    pub fn is_terminal(&self) -> bool {
        matches!(self, TokenError::InvalidGrant | TokenError::OAuth(_))
    }
}

/// Lifetime assumed when a response gives no usable `expires_in` and the token is opaque.
pub const DEFAULT_EXPIRES_IN: u64 = 60;
/// Longest token response body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Parses a token-endpoint response.
pub fn parse_token_response(status: u16, body: &[u8], now: u64) -> Result<TokenSet, TokenError> {
    if body.len() > MAX_BODY {
        return Err(TokenError::Malformed("response too large"));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        if (400..500).contains(&status) && status != 429 {
            let code = json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("");
            // A 400 or 401 with no body at all is the token endpoint refusing without saying
            // why (Glewlwyd answers a revoked refresh token or a wrong secret so): a refusal,
            // not an outage. Any other 4xx without an error code (an HTML 404 of a misrouted
            // cluster) is the provider being unreachable as configured.
            let empty = body.iter().all(u8::is_ascii_whitespace);
            return Err(match code {
                "invalid_grant" => TokenError::InvalidGrant,
                "" if empty && (status == 400 || status == 401) => {
                    TokenError::OAuth(format!("http_{status}_without_error"))
                }
                "" => TokenError::Unavailable(status),
                other => TokenError::OAuth(other.chars().take(64).collect()),
            });
        }
        return Err(TokenError::Unavailable(status));
    }
    let Some(Value::Object(j)) = json else {
        return Err(TokenError::Malformed("token response is not a JSON object"));
    };
    let access_token = match j.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 16 * 1024 => Secret::new(s.clone()),
        _ => return Err(TokenError::Malformed("no access_token")),
    };
    match j.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        _ => return Err(TokenError::Malformed("token_type is not Bearer")),
    }
    let from_jwt = || {
        crate::jwt::decode_payload(access_token.expose())
            .and_then(|c| c.get("exp").and_then(Value::as_u64))
            .map(|exp| exp.saturating_sub(now))
    };
    let expires_in = match j.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        // Some providers send a numeric string; accept it, but nothing else.
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .or_else(from_jwt)
    .unwrap_or(DEFAULT_EXPIRES_IN)
    .min(365 * 86400);
    let opt_str = |k: &str| match j.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    Ok(TokenSet {
        access_token,
        expires_in,
        // Present but empty is "no scopes"; absent is "as requested" (RFC 6749 section 5.1):
        // the engine tells them apart.
        scope: match j.get("scope") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
        refresh_token: opt_str("refresh_token").map(Secret::new),
        id_token: opt_str("id_token").map(Secret::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::testkit::{test_raw, test_secrets};

    fn cfg() -> Config {
        Config::compile(&test_raw(), &test_secrets).unwrap()
    }

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn authorize_url_carries_pkce_state_nonce_and_resources() {
        let c = cfg();
        let ep = c.provider.fixed(&c.client).unwrap();
        let u = authorize_url(&c, &ep, "st", "no", "ch", &crate::policy::StepUp::default());
        assert!(u.starts_with("http://localhost:9000/auth?response_type=code&client_id=bffgate"));
        for part in [
            "state=st",
            "nonce=no",
            "code_challenge=ch",
            "code_challenge_method=S256",
            "redirect_uri=https%3A%2F%2Flocalhost%3A8443%2Fauth%2Fcallback",
            "resource=https%3A%2F%2Forders.api.local",
            "resource=https%3A%2F%2Fprofile.api.local",
            "scope=openid+profile+offline_access+orders%3Aread+orders%3Awrite",
            "prompt=consent",
        ] {
            assert!(u.contains(part), "{part} in {u}");
        }
    }

    #[test]
    fn code_request_uses_basic_auth_and_the_login_audience() {
        let c = cfg();
        let ep = c.provider.fixed(&c.client).unwrap();
        let mut rng = crate::testkit::TestRandom(1);
        let r = Provider {
            cfg: &c,
            ep: &ep,
            now: 1,
            rng: &mut rng,
        }
        .code_request("c0de", "v3r");
        assert_eq!(r.path, "/token");
        assert_eq!(r.authority, "localhost:9000");
        let body = r.body.expose();
        assert!(body.contains("grant_type=authorization_code"));
        assert!(body.contains("code_verifier=v3r"));
        assert!(body.contains("resource=https%3A%2F%2Forders.api.local"));
        assert!(!body.contains("client_secret"));
        let (_, auth) = &r.headers[0];
        assert_eq!(
            auth.expose(),
            format!("Basic {}", STANDARD.encode("bffgate:test-client-secret"))
        );
        assert_eq!(format!("{r:?}").matches("[redacted]").count(), 2);
    }

    #[test]
    fn parses_a_good_response() {
        let b = br#"{"access_token":"at","token_type":"Bearer","expires_in":300,"scope":"a b","refresh_token":"rt","id_token":"it"}"#;
        let t = parse_token_response(200, b, 0).unwrap();
        assert_eq!(t.access_token.expose(), "at");
        assert_eq!(t.expires_in, 300);
        assert_eq!(t.scope.as_deref(), Some("a b"));
        assert_eq!(t.refresh_token.unwrap().expose(), "rt");
    }

    #[test]
    fn expires_in_fallbacks() {
        let s = parse_token_response(
            200,
            br#"{"access_token":"at","token_type":"bearer","expires_in":"120"}"#,
            0,
        )
        .unwrap();
        assert_eq!(s.expires_in, 120);
        let s = parse_token_response(
            200,
            br#"{"access_token":"at","token_type":"bearer","expires_in":"soon"}"#,
            0,
        )
        .unwrap();
        assert_eq!(s.expires_in, DEFAULT_EXPIRES_IN);
        let jwt = crate::jwt::make_jwt(&serde_json::json!({"exp": 1500}));
        let body = format!(r#"{{"access_token":"{jwt}","token_type":"Bearer"}}"#);
        assert_eq!(
            parse_token_response(200, body.as_bytes(), 1000)
                .unwrap()
                .expires_in,
            500
        );
        let s = parse_token_response(
            200,
            br#"{"access_token":"at","token_type":"Bearer","expires_in":-5}"#,
            0,
        )
        .unwrap();
        assert_eq!(s.expires_in, DEFAULT_EXPIRES_IN);
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(
            parse_token_response(400, br#"{"error":"invalid_grant"}"#, 0),
            Err(TokenError::InvalidGrant)
        );
        assert_eq!(
            parse_token_response(401, br#"{"error":"invalid_client"}"#, 0),
            Err(TokenError::OAuth("invalid_client".into()))
        );
        assert_eq!(
            parse_token_response(500, b"oops", 0),
            Err(TokenError::Unavailable(500))
        );
        assert_eq!(
            parse_token_response(429, br#"{"error":"slow_down"}"#, 0),
            Err(TokenError::Unavailable(429))
        );
        assert_eq!(
            parse_token_response(404, b"<html>", 0),
            Err(TokenError::Unavailable(404))
        );
        // A refusal without a body (Glewlwyd): terminal, named by its status.
        for (status, body) in [(400, &b""[..]), (401, b"\r\n")] {
            let e = parse_token_response(status, body, 0).unwrap_err();
            assert_eq!(e, TokenError::OAuth(format!("http_{status}_without_error")));
            assert!(e.is_terminal());
        }
        assert_eq!(
            parse_token_response(403, b"", 0),
            Err(TokenError::Unavailable(403))
        );
        assert_eq!(
            parse_token_response(400, b"<html>bad request</html>", 0),
            Err(TokenError::Unavailable(400))
        );
        for (b, why) in [
            (&b"not json"[..], "token response is not a JSON object"),
            (b"[]", "token response is not a JSON object"),
            (br#"{"token_type":"Bearer"}"#, "no access_token"),
            (
                br#"{"access_token":5,"token_type":"Bearer"}"#,
                "no access_token",
            ),
            (
                br#"{"access_token":"x","token_type":"mac"}"#,
                "token_type is not Bearer",
            ),
            (br#"{"access_token":"x"}"#, "token_type is not Bearer"),
        ] {
            assert_eq!(
                parse_token_response(200, b, 0),
                Err(TokenError::Malformed(why))
            );
        }
        assert!(TokenError::InvalidGrant.is_terminal());
        assert!(!TokenError::Unavailable(503).is_terminal());
    }
}
