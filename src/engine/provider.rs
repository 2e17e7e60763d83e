//! The provider's metadata and keys: the endpoints in effect (the configuration's, over those
//! of the discovery document, which is read through the provider's cluster and cached in
//! shared data for every worker), and the JWKS that verifies ID and logout tokens.
//!
//! Discovery is read at the first request that needs an endpoint (a login, a callback, a
//! renewal, a logout, a back-channel logout) and again when it is older than
//! `provider.discovery_max_age_s`. A request that needs it waits for the callout and is then
//! decided again. While no document could be read, those requests answer
//! `503 idp_unavailable` (a failed read is retried at most every [`DISCOVERY_RETRY`] seconds);
//! a stale document that cannot be renewed stays in use; sessions that need no provider call
//! are untouched either way.

use super::{AfterCall, Engine, Request, Resume, Step};
use crate::audit::Event;
use crate::callout::{CallResult, Callout};
use crate::config::Endpoints;
use crate::discovery::{self, Meta};
use crate::oauth;
use crate::reply::{error_reply, ErrorCode, Reply};
use crate::store::Doc;
use serde_json::Value;

/// A cached JWKS older than this is refetched before use.
const JWKS_MAX_AGE: u64 = 3600;
/// An unknown `kid` refetches the JWKS at most this often.
const JWKS_MIN_REFETCH: u64 = 10;
/// A failed discovery read is not retried sooner than this (seconds); nor is a stale
/// document's renewal started twice within it.
pub const DISCOVERY_RETRY: u64 = 5;

/// What a request paused for the discovery document resumes.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterDiscovery {
    /// A login, callback or logout: decided again.
    Request(Box<Request>),
    /// A protected request's token: obtained again.
    Obtain(Box<Resume>),
    /// A back-channel logout token (a JWT; not a credential for anything).
    Backchannel {
        /// The logout token.
        token: String,
    },
    /// A fleet-wide revoke-all whose refresh tokens wait for the revocation endpoint (and
    /// whether etcd failed part way).
    RevokeAll(Box<(super::admin::FleetRevokeAll, bool)>),
}

/// Outcome of a JWS check against the cached key set.
pub(super) enum JwsCheck {
    /// Verified; the payload.
    Verified(serde_json::Map<String, Value>),
    /// The key set must be (re)fetched first.
    Fetch(Callout),
    /// Refused.
    Refused(crate::jose::JoseError),
}

/// The `503 idp_unavailable` of a request that needs the provider's metadata and has none.
fn unavailable() -> Reply {
    error_reply(
        503,
        ErrorCode::IdpUnavailable,
        "the identity provider's metadata cannot be read; try again later",
    )
}

impl Engine<'_> {
    /// The cached discovery document of this issuer and when it was read.
    fn cached_meta(&self) -> Option<(Meta, u64)> {
        let (doc, at) = self.store.doc(Doc::Discovery)?;
        let meta: Meta = serde_json::from_slice(&doc).ok()?;
        (meta.issuer == self.cfg.provider.issuer).then_some((meta, at))
    }

    /// The endpoints in effect, for a request about to call the provider or send the browser
    /// there; `Err` is the step to take instead: read the discovery document first (and then
    /// `resume`), or answer 503.
    pub(super) fn endpoints(
        &mut self,
        resume: impl FnOnce() -> AfterDiscovery,
    ) -> Result<Endpoints, Box<Step>> {
        if let Some(e) = &self.endpoints {
            return Ok(e.clone());
        }
        let cfg = self.cfg;
        let Some(d) = &cfg.provider.discovery else {
            return cfg
                .provider
                .fixed(&cfg.client)
                .ok_or_else(|| Box::new(Step::Respond(unavailable())));
        };
        let cached = self.cached_meta();
        let attempt = self.store.doc(Doc::DiscoveryAttempt);
        let recent = |mark: u8| {
            attempt.as_ref().is_some_and(|(m, at)| {
                m.first() == Some(&mark) && self.now.saturating_sub(*at) < DISCOVERY_RETRY
            })
        };
        let stale = match &cached {
            Some((_, at)) => self.now.saturating_sub(*at) >= d.max_age_s,
            None => true,
        };
        if let Some((meta, _)) = &cached {
            // Fresh; or stale with a renewal under way or failed just now: in use.
            if !stale || self.discovery_failed || recent(b'R') || recent(b'F') {
                return self.use_meta(meta);
            }
            // Stale: this request renews it; others use it meanwhile.
            self.store.set_doc(Doc::DiscoveryAttempt, b"R", self.now);
        } else if self.discovery_failed || recent(b'F') {
            return Err(Box::new(Step::Respond(unavailable())));
        }
        Err(Box::new(Step::Call {
            request: oauth::get_request(cfg, &d.target),
            then: Box::new(AfterCall::Discovery(resume())),
        }))
    }

    /// The endpoints of a document, memoised for this run.
    fn use_meta(&mut self, meta: &Meta) -> Result<Endpoints, Box<Step>> {
        match self.cfg.provider.resolve(meta, &self.cfg.client) {
            Some(e) => {
                self.endpoints = Some(e.clone());
                Ok(e)
            }
            None => Err(Box::new(Step::Respond(unavailable()))),
        }
    }

    /// The endpoints for a step that continues a flow already under way (after a callout):
    /// the cached document whatever its age, never a new read.
    pub(super) fn known_endpoints(&mut self) -> Option<Endpoints> {
        if let Some(e) = &self.endpoints {
            return Some(e.clone());
        }
        match &self.cfg.provider.discovery {
            None => self.cfg.provider.fixed(&self.cfg.client),
            Some(_) => {
                let (meta, _) = self.cached_meta()?;
                self.use_meta(&meta).ok()
            }
        }
    }

    /// A request to the provider's back channel, with the endpoints in effect.
    pub(super) fn provider<'e>(&'e mut self, ep: &'e Endpoints) -> oauth::Provider<'e> {
        oauth::Provider {
            cfg: self.cfg,
            ep,
            now: self.now,
            rng: &mut *self.rng,
        }
    }

    /// The discovery document's answer: cached when good (one log line when it is refused),
    /// then the paused request goes on.
    pub(super) fn after_discovery(&mut self, then: AfterDiscovery, result: &CallResult) -> Step {
        let Some(d) = &self.cfg.provider.discovery else {
            return Step::Respond(unavailable());
        };
        let why = match result {
            CallResult::Response { status: 200, body } => {
                match discovery::parse(body, &self.cfg.provider.issuer) {
                    Ok(doc) => {
                        let meta = Meta::from(&doc);
                        if let Ok(json) = serde_json::to_vec(&meta) {
                            self.store.set_doc(Doc::Discovery, &json, self.now);
                        }
                        self.note_discovered(&meta);
                        if let Err(step) = self.use_meta(&meta) {
                            return *step;
                        }
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
            CallResult::Response { status, .. } => Some(format!("answered HTTP {status}")),
            CallResult::Failed => Some("no answer (unreachable or timed out)".to_string()),
        };
        if let Some(why) = why {
            self.discovery_failed = true;
            self.store.set_doc(Doc::DiscoveryAttempt, b"F", self.now);
            self.event(Event::DiscoveryFailed {
                url: d.url.clone(),
                reason: discovery::shown(&why),
            });
        }
        match then {
            AfterDiscovery::Request(req) => self.decide(&req),
            AfterDiscovery::Obtain(r) => self.obtain(*r, None),
            AfterDiscovery::Backchannel { token } => self.backchannel_known(token),
            AfterDiscovery::RevokeAll(b) => {
                let (run, failed) = *b;
                self.fleet_revoke_all_done(run, failed)
            }
        }
    }

    /// One log line for a document read: what it set, what the configuration overrides, and
    /// what does not fit the configuration.
    fn note_discovered(&mut self, meta: &Meta) {
        let cfg = self.cfg;
        let mut line = format!(
            "discovery: read {} (token endpoint {}, keys {}, revocation {}, end session {})",
            cfg.provider
                .discovery
                .as_ref()
                .map_or("", |d| d.url.as_str()),
            meta.token_endpoint,
            meta.jwks_uri,
            meta.revocation_endpoint.as_deref().unwrap_or("none"),
            meta.end_session_endpoint.as_deref().unwrap_or("none"),
        );
        let by_hand = cfg.provider.by_hand.fields();
        if !by_hand.is_empty() {
            line.push_str(&format!("; set by hand: {}", by_hand.join(", ")));
        }
        if let Some(m) = cfg.client.auth_method {
            let name = match m {
                crate::config::AuthMethod::ClientSecretBasic => "client_secret_basic",
                crate::config::AuthMethod::ClientSecretPost => "client_secret_post",
                crate::config::AuthMethod::PrivateKeyJwt => "private_key_jwt",
            };
            if !meta.auth_methods.iter().any(|x| x == name) {
                line.push_str(&format!(
                    "; client.auth_method {name} is not among the provider's ({})",
                    meta.auth_methods.join(", ")
                ));
            }
        }
        if cfg.provider.revoke_access_tokens && meta.revocation_endpoint.is_none() {
            line.push_str("; no revocation endpoint: logout cannot revoke tokens at the provider");
        }
        if let Some(pinned) = &cfg.provider.id_token_algs {
            if !meta.id_token_algs.iter().any(|a| pinned.contains(a)) {
                line.push_str(&format!(
                    "; none of provider.id_token_signing_algs ({}) is among the provider's ({}): every ID token will be refused",
                    pinned.join(", "),
                    meta.id_token_algs.join(", ")
                ));
            }
        }
        self.notes.push(line);
    }

    /// Verifies a JWS with the algorithms in effect (the provider's advertised ones, or those
    /// pinned by `provider.id_token_signing_algs`): an HMAC one with the client secret and no
    /// key set; the others with the cached JWKS, asking for a fetch if the cache is missing,
    /// stale, or lacks the token's key (at most one refetch every 10 s, so forged `kid`s cannot
    /// make bffgate hammer the provider).
    pub(super) fn verify_jws(&mut self, jwt: &str, may_fetch: bool) -> JwsCheck {
        use crate::jose::{self, JoseError, KeySet, Policy};
        let algs = self
            .known_endpoints()
            .map(|e| e.id_token_algs)
            .unwrap_or_default();
        let secret = self.cfg.client.secret.expose().as_bytes();
        let policy = Policy {
            algs: &algs,
            hmac_secret: (!secret.is_empty()).then_some(secret),
        };
        if jose::header_alg(jwt).is_some_and(|a| jose::is_hmac(&a)) {
            return match jose::verify_with(jwt, &KeySet::default(), policy) {
                Ok(claims) => JwsCheck::Verified(claims),
                Err(e) => JwsCheck::Refused(e),
            };
        }
        let cached = self.store.doc(Doc::Jwks);
        let fresh = cached
            .as_ref()
            .is_some_and(|(_, at)| self.now.saturating_sub(*at) < JWKS_MAX_AGE);
        let recently = cached
            .as_ref()
            .is_some_and(|(_, at)| self.now.saturating_sub(*at) < JWKS_MIN_REFETCH);
        if let (Some((doc, _)), true) = (&cached, fresh) {
            let set = jose::parse_jwks(doc).unwrap_or_default();
            match jose::verify_with(jwt, &set, policy) {
                Ok(claims) => return JwsCheck::Verified(claims),
                Err(JoseError::UnknownKey) if may_fetch && !recently => {}
                Err(e) => return JwsCheck::Refused(e),
            }
        } else if !may_fetch {
            return JwsCheck::Refused(JoseError::UnknownKey);
        } else if let Some(alg) = jose::header_alg(jwt) {
            // Refuse an algorithm out of policy before fetching anything for it.
            if !algs.contains(&alg) {
                return JwsCheck::Refused(JoseError::Algorithm);
            }
        }
        match self.known_endpoints().and_then(|e| e.jwks) {
            Some(t) => JwsCheck::Fetch(oauth::get_request(self.cfg, &t)),
            None => JwsCheck::Refused(JoseError::UnknownKey),
        }
    }

    /// Stores a fetched JWKS; the reply to answer with if the fetch failed.
    pub(super) fn store_jwks(&mut self, result: &CallResult) -> Result<(), Reply> {
        match result {
            CallResult::Response { status: 200, body }
                if crate::jose::parse_jwks(body).is_ok_and(|s| !s.keys.is_empty()) =>
            {
                self.store.set_doc(Doc::Jwks, body, self.now);
                Ok(())
            }
            other => {
                let why = match other {
                    CallResult::Response { status: 200, .. } => {
                        "not a key set with a usable key".to_string()
                    }
                    CallResult::Response { status, .. } => format!("answered HTTP {status}"),
                    CallResult::Failed => "no answer (unreachable or timed out)".to_string(),
                };
                self.notes.push(format!("jwks: refused: {why}"));
                Err(error_reply(
                    503,
                    ErrorCode::IdpUnavailable,
                    "cannot fetch the identity provider's keys",
                ))
            }
        }
    }
}
