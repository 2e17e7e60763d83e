//! # bffgate
//!
//! A Backend-for-Frontend gateway that runs inside Envoy as a proxy-wasm filter.
//!
//! The browser holds one opaque, signed, HttpOnly session cookie. bffgate runs the OAuth 2.0
//! authorization-code flow with PKCE against the identity provider, keeps every token
//! server-side, and on each request swaps the cookie for a bearer token minted for the audience
//! of the Envoy route being called, after checking that route's policy.
//!
//! ## Trust boundaries
//! - **Browser → filter**: everything is hostile. Cookies, query strings and headers are parsed by
//!   total functions that return errors, never panic; client-sent `Authorization` and bffgate
//!   cookies never reach an upstream.
//! - **Filter → identity provider**: reached only through an Envoy cluster named in the config
//!   (`dispatch_http_call`); its answers are parsed defensively (status, JSON shape, types).
//! - **Filter → upstream**: receives only what the policy of the route Envoy matched allows.
//! - **Shared data**: trusted (same Envoy process), but always read through CAS-aware code.
//!
//! ## Shape
//! A functional core (every module below) that takes the clock, randomness and the store as
//! values and runs natively under `cargo test`, and a thin shell in `wasm` that is the only code
//! touching `proxy_wasm`.

pub mod anomaly;
pub mod assertion;
pub mod audit;
pub mod callout;
pub mod config;
pub mod cookie;
pub mod discovery;
pub mod engine;
#[cfg(feature = "cli")]
pub mod explain;
pub mod jose;
pub mod jwt;
pub mod keyspec;
pub mod oauth;
pub mod policy;
pub mod record;
pub mod redirect;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;
pub mod reply;
pub mod seal;
pub mod secret;
pub mod session;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod util;
pub mod vault;
pub mod verified;

#[cfg(target_arch = "wasm32")]
mod wasm;
