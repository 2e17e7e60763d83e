//! Compiling the configuration as written ([`RawConfig`]) into the one the filter runs on
//! ([`Config`]), one function per section; each refusal names its field.

use super::*;
use crate::assertion::{self, AssertionError};
use crate::cookie::{Attributes, SameSite};
use crate::policy::{Access, ClaimRule, Mode, Policy};
use crate::seal::KeyRing;
use crate::secret::Secret;

/// Validates and compiles a raw configuration.
pub(super) fn compile(raw: &RawConfig, secrets: &dyn Secrets) -> Result<Config, ConfigError> {
    let (origin, prefix) = origin(raw)?;
    let provider = provider(&raw.provider)?;
    let client = client(&raw.client, secrets, &origin, &prefix)?;
    if client.auth_method == Some(AuthMethod::PrivateKeyJwt)
        && provider
            .id_token_algs
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| crate::jose::is_hmac(a)))
    {
        return Err(err(
            "provider.id_token_signing_algs",
            "HS256/HS384/HS512 are verified with the client secret, which private_key_jwt has not",
        ));
    }
    let admin_token = admin_token(raw, secrets)?;
    if !(1..=64).contains(&raw.admin_revoke_concurrency) {
        return Err(err("admin_revoke_concurrency", "must be 1 to 64"));
    }
    let cookie = cookies(&raw.cookie, secrets)?;
    session(&raw.session)?;
    let (store, etcd) = store(raw, secrets)?;
    if raw.store.revoke_on_shutdown && etcd.is_some() {
        return Err(err(
            "store.revoke_on_shutdown",
            "applies to the embedded store only (fleet sessions outlive an Envoy: revoking them would sign users out of the other Envoys)",
        ));
    }
    csrf(&raw.csrf)?;
    let (audiences, login_audience) = audiences(raw)?;
    let (routes, keep_claims) = routes(raw, &audiences)?;
    Ok(Config {
        public_origin: origin,
        auth_prefix: prefix,
        provider,
        client,
        cookie,
        session: raw.session.clone(),
        store,
        etcd,
        csrf_header: raw.csrf.header.to_ascii_lowercase(),
        csrf_value: raw.csrf.value.clone(),
        audiences,
        login_audience,
        routes,
        keep_claims,
        admin: raw.admin,
        access_log_state: raw.access_log_state,
        admin_token,
        admin_revoke_concurrency: raw.admin_revoke_concurrency,
        revoke_on_shutdown: raw.store.revoke_on_shutdown,
    })
}

/// `public_origin` and `auth_prefix`.
fn origin(raw: &RawConfig) -> Result<(String, String), ConfigError> {
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

    Ok((origin.to_string(), p.to_string()))
}

/// `provider.*`.
fn provider(pr: &RawProvider) -> Result<Provider, ConfigError> {
    if pr.issuer.is_empty() {
        return Err(err("provider.issuer", "must not be empty"));
    }
    url_field("provider.issuer", &pr.issuer)?;
    let target = |field: &str, u: &Option<String>| -> Result<Option<Target>, ConfigError> {
        match u {
            Some(u) => {
                url_field(field, u)?;
                Ok(Target::of(u))
            }
            None => Ok(None),
        }
    };
    if let Some(u) = &pr.authorization_endpoint {
        url_field("provider.authorization_endpoint", u)?;
        if u.contains('?') {
            return Err(err(
                "provider.authorization_endpoint",
                "must not carry a query; use client.extra_authorize_params",
            ));
        }
    }
    if let Some(u) = &pr.end_session_endpoint {
        url_field("provider.end_session_endpoint", u)?;
    }
    let by_hand = HandSet {
        authorization: pr.authorization_endpoint.clone(),
        token: target("provider.token_endpoint", &pr.token_endpoint)?,
        revocation: target("provider.revocation_endpoint", &pr.revocation_endpoint)?,
        end_session: pr.end_session_endpoint.clone(),
        jwks: target("provider.jwks_uri", &pr.jwks_uri)?,
        userinfo: target("provider.userinfo_endpoint", &pr.userinfo_endpoint)?,
    };
    let complete = by_hand.authorization.is_some() && by_hand.token.is_some();
    let discovery = match pr.discovery {
        Some(false) if !complete => {
            let missing = if by_hand.authorization.is_none() {
                "provider.authorization_endpoint"
            } else {
                "provider.token_endpoint"
            };
            return Err(err(missing, "must be set when provider.discovery is false"));
        }
        Some(false) => None,
        None if complete => None,
        _ => {
            if !(60..=7 * 86_400).contains(&pr.discovery_max_age_s) {
                return Err(err(
                    "provider.discovery_max_age_s",
                    "must be between 60 and 604800",
                ));
            }
            let Some((authority, path)) = crate::discovery::well_known_path(&pr.issuer) else {
                return Err(err(
                    "provider.issuer",
                    "must be a URL with no query or fragment to read its discovery document",
                ));
            };
            Some(Discovery {
                url: crate::discovery::well_known_url(&pr.issuer).unwrap_or_default(),
                target: Target {
                    url: crate::discovery::well_known_url(&pr.issuer).unwrap_or_default(),
                    authority: authority.to_string(),
                    path,
                },
                max_age_s: pr.discovery_max_age_s,
            })
        }
    };
    if pr.cluster.is_empty() {
        return Err(err(
            "provider.cluster",
            "must name the Envoy cluster of the provider",
        ));
    }
    if pr.clock_skew_s > 600 {
        return Err(err("provider.clock_skew_s", "must be at most 600"));
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
    if let Some(a) = &pr.authority {
        if a.is_empty()
            || a.bytes()
                .any(|b| b <= b' ' || b >= 0x7f || b == b'/' || b == b'@')
        {
            return Err(err("provider.authority", "must be a host[:port]"));
        }
    }
    if pr.userinfo && discovery.is_none() && by_hand.userinfo.is_none() {
        return Err(err(
            "provider.userinfo_endpoint",
            "must be set when provider.userinfo is true and discovery is off",
        ));
    }

    let id_token_algs = match &pr.id_token_signing_algs {
        None => None,
        Some(algs) => {
            if algs.is_empty() {
                return Err(err(
                    "provider.id_token_signing_algs",
                    "must list at least one algorithm (or be left out)",
                ));
            }
            for (i, a) in algs.iter().enumerate() {
                if !crate::jose::ALGS.contains(&a.as_str()) {
                    return Err(err(
                        format!("provider.id_token_signing_algs[{i}]"),
                        format!(
                            "{a:?} is not an algorithm bffgate verifies (one of {})",
                            crate::jose::ALGS.join(", ")
                        ),
                    ));
                }
            }
            Some(algs.clone())
        }
    };

    Ok(Provider {
        issuer: pr.issuer.clone(),
        discovery,
        by_hand,
        cluster: pr.cluster.clone(),
        authority: pr.authority.clone(),
        timeout_ms: pr.timeout_ms,
        revocation_timeout_ms: pr.revocation_timeout_ms,
        revoke_access_tokens: pr.revoke_access_tokens,
        userinfo: pr.userinfo,
        frontchannel_logout: pr.frontchannel_logout,
        clock_skew_s: pr.clock_skew_s,
        id_token_algs,
    })
}

/// `client.*` (the secret, or the `private_key_jwt` key, from the VM's environment).
fn client(
    c: &RawClient,
    secrets: &dyn Secrets,
    origin: &str,
    p: &str,
) -> Result<Client, ConfigError> {
    if c.client_id.is_empty() {
        return Err(err("client.client_id", "must not be empty"));
    }
    let (secret, key) = if c.auth_method == Some(AuthMethod::PrivateKeyJwt) {
        (String::new(), Some(client_key(c, secrets)?))
    } else {
        if c.private_key_kid.is_some() || c.assertion_audience != AssertionAudience::TokenEndpoint {
            return Err(err(
                "client.auth_method",
                "must be `private_key_jwt` when client.private_key_kid or client.assertion_audience is set",
            ));
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
        (secret, None)
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

    let mut extra: Vec<(String, String)> = c
        .extra_authorize_params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    extra.sort();
    Ok(Client {
        client_id: c.client_id.clone(),
        secret: Secret::new(secret),
        auth_method: c.auth_method,
        key,
        assertion_audience: c.assertion_audience,
        redirect_uri: c.redirect_uri.clone(),
        scope: c.scopes.join(" "),
        extra_authorize_params: extra,
        post_logout_redirect_uri: c.post_logout_redirect_uri.clone(),
        logout_id_token_hint: c.logout_id_token_hint,
    })
}

/// `client.private_key_env` and `client.private_key_kid`: the `private_key_jwt` signing key,
/// from the VM's environment.
fn client_key(c: &RawClient, secrets: &dyn Secrets) -> Result<ClientKey, ConfigError> {
    let env = &c.private_key_env;
    if let Some(kid) = &c.private_key_kid {
        assertion::valid_kid(kid).map_err(|e| err("client.private_key_kid", e.to_string()))?;
    }
    let spec = secrets
        .get(env)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            err(
                "client.private_key_env",
                format!(
                    "environment variable `{env}` is not set in the VM (vm_config.environment_variables)"
                ),
            )
        })?;
    ClientKey::parse(&spec, c.private_key_kid.as_deref()).map_err(|e| match e {
        AssertionError::KidMismatch => err("client.private_key_kid", e.to_string()),
        _ => err(
            "client.private_key_env",
            format!("environment variable `{env}`: {e}"),
        ),
    })
}

/// `admin_token_env`: the operator API's credential, needed (and read) only by the instance
/// with `admin: true`.
fn admin_token(raw: &RawConfig, secrets: &dyn Secrets) -> Result<Option<Secret>, ConfigError> {
    Ok(if raw.admin {
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
    })
}

/// `cookie.*` (the MAC key ring from the VM's environment).
fn cookies(ck: &RawCookie, secrets: &dyn Secrets) -> Result<CookieConfig, ConfigError> {
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
    let same_site =
        match ck.same_site.as_str() {
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

    Ok(CookieConfig {
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
        revoke_on_key_change: ck.revoke_on_key_change,
    })
}

/// `session.*`.
fn session(s: &RawSession) -> Result<(), ConfigError> {
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
    let a = &s.anomaly;
    if !(1..=3600).contains(&a.window_s) {
        return Err(err(
            "session.anomaly.window_s",
            "must be between 1 and 3600",
        ));
    }
    if a.max_requests_per_s > 100_000 {
        return Err(err(
            "session.anomaly.max_requests_per_s",
            "must be at most 100000 (0 turns the rate signal off)",
        ));
    }
    if a.max_refusals > 60_000 {
        return Err(err(
            "session.anomaly.max_refusals",
            "must be at most 60000 (0 turns the refusal signal off)",
        ));
    }
    let h = &a.client_address_header;
    if h.is_empty()
        || h.starts_with(':')
        || !h
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err(
            "session.anomaly.client_address_header",
            "must be a lower-case header name (e.g. x-forwarded-for)",
        ));
    }
    if a.trusted_hops > 16 {
        return Err(err("session.anomaly.trusted_hops", "must be at most 16"));
    }

    Ok(())
}

/// `store.*`: the embedded store's limits, and the etcd backend if chosen.
fn store(raw: &RawConfig, secrets: &dyn Secrets) -> Result<(Limits, Option<Etcd>), ConfigError> {
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

    Ok((
        Limits {
            max_sessions: raw.store.max_sessions,
            max_pending: raw.store.max_pending_logins,
            idle_s: raw.session.idle_timeout_s,
            when_full: raw.store.when_full,
        },
        etcd,
    ))
}

/// `csrf.*`.
fn csrf(c: &RawCsrf) -> Result<(), ConfigError> {
    if !token_chars(&c.header) {
        return Err(err("csrf.header", "must be a header name"));
    }
    if c.value.is_empty() {
        return Err(err("csrf.value", "must not be empty"));
    }

    Ok(())
}

/// `audiences.*`: in configuration order, and the one obtained at login.
fn audiences(raw: &RawConfig) -> Result<(Vec<Audience>, String), ConfigError> {
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
        if a.indicator == Indicator::Scope && scope.as_deref().is_none_or(str::is_empty) {
            return Err(err(
                format!("audiences.{id}.scopes"),
                "`indicator: scope` asks for the audience by its scopes: name the provider's resource scopes (e.g. `api://orders/.default`)",
            ));
        }
        let token_audience = match &a.token_audience {
            Some(t) if t.is_empty() || t.bytes().any(|b| b <= b' ' || b >= 0x7f) => {
                return Err(err(
                    format!("audiences.{id}.token_audience"),
                    "not a valid audience value",
                ))
            }
            Some(t) => t.clone(),
            None => id.clone(),
        };
        audiences.push(Audience {
            id: id.clone(),
            acquire: a.acquire,
            indicator: a.indicator,
            scope,
            token_audience,
        });
    }
    let login_audience = login_audience
        .ok_or_else(|| err("audiences", "exactly one audience needs `acquire: login`"))?;
    // What one authorization request can carry: RFC 8707 lets it name every resource (the
    // refresh token then covers them all); an `audience` or the resource scopes of a
    // scope-indicated audience can name only the login audience (Auth0 takes one `audience`,
    // Entra ID refuses scopes of two resources). The others are asked for later, at refresh
    // or exchange, with their own indicator.
    for a in &audiences {
        if a.acquire != Acquire::Login && a.indicator == Indicator::Scope {
            let login = audiences.iter().find(|l| l.id == login_audience);
            if login.is_some_and(|l| l.indicator == Indicator::Resource) {
                return Err(err(
                    format!("audiences.{}.indicator", a.id),
                    "`scope` needs the login audience to be asked for by scope too (a provider that takes resource scopes does not take `resource`)",
                ));
            }
        }
    }

    Ok((audiences, login_audience))
}

/// `routes.*` (from the policy files): the policies by route name, and the ID-token claims to
/// keep in a session (the display claims and those the policies check).
fn routes(raw: &RawConfig, audiences: &[Audience]) -> Result<(Routes, Vec<String>), ConfigError> {
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
        if rp.access == Access::Public && (!rp.acr_values.is_empty() || rp.max_age_s.is_some()) {
            return Err(err(
                f("access"),
                "a public route cannot require a sign-in level (acr_values, max_age_s)",
            ));
        }
        for (i, a) in rp.acr_values.iter().enumerate() {
            // Sent to the provider space-separated and echoed in a quoted challenge parameter.
            if !scope_token_ok(a) || a.contains('"') || a.contains('\\') || a.len() > 128 {
                return Err(err(
                    format!("routes.{name}.acr_values[{i}]"),
                    "must be a non-empty token of at most 128 characters without spaces or quotes",
                ));
            }
        }
        if rp.access == Access::Public && rp.mode == Mode::Report {
            return Err(err(
                f("mode"),
                "`report` applies to session routes (a public route checks nothing to report)",
            ));
        }
        if rp.acr_values.len() > 16 {
            return Err(err(f("acr_values"), "at most 16 values"));
        }
        if rp.max_age_s.is_some_and(|m| m > 366 * 86_400) {
            return Err(err(f("max_age_s"), "must be at most 31622400 (a year)"));
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
                acr_values: rp.acr_values.clone(),
                max_age_s: rp.max_age_s,
                mode: rp.mode,
            },
        );
    }
    Ok((routes, keep_claims))
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
