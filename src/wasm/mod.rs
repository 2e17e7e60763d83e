//! The proxy-wasm shell: the only code that touches the host.
//!
//! It turns host callbacks into [`Request`]s and callout results, runs the core [`Engine`], and
//! applies the resulting [`Step`]. It reads the clock and draws randomness for the core, and
//! adapts shared data to the core's [`SharedData`] trait.
//!
//! Only the `_bytes` header accessors are used on downstream input: the SDK's `String` variants
//! panic on non-UTF-8 header values, and nothing may panic on input.

use crate::config::Config;
use crate::flow::{CallResult, CookieEdit, Engine, Pending, Request, Step};
use crate::store::{Cas, SharedData, SharedStore, StoreError};
use crate::util::Random;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Secrets from the VM's environment (Envoy `vm_config.environment_variables`).
fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The host CSPRNG (WASI `random_get`, served by Envoy). If it fails there is no safe fallback:
/// abort, which traps the VM; FAIL_RELOAD replaces it and the request fails closed.
struct HostRandom;

impl Random for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        if getrandom::fill(buf).is_err() {
            log(
                LogLevel::Critical,
                "bffgate: host random source failed; aborting the VM",
            );
            std::process::abort();
        }
    }
}

/// Shared data through host calls.
struct HostData;

impl SharedData for HostData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Unavailable),
        }
    }
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log(
                LogLevel::Critical,
                "bffgate: configuration refused: field `.`: no plugin configuration (a StringValue holding JSON)",
            );
            return false;
        };
        match Config::from_json(&bytes, &env_secret) {
            Ok(c) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "bffgate: configured: {} route policies, {} audiences, cookie key `{}`",
                        c.routes.len(),
                        c.audiences.len(),
                        c.cookie.keys.current_kid()
                    ),
                );
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("bffgate: configuration refused: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Always return a context (None makes the SDK panic); without a config it fails closed.
        Some(Box::new(Http {
            config: self.config.clone(),
            pending: None,
            stopped: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    config: Option<Rc<Config>>,
    /// The callout in flight and what to do with its result.
    pending: Option<(u32, Pending)>,
    /// The request is paused or was answered locally: nothing may continue it but us.
    stopped: bool,
}

fn now(ctx: &dyn Context) -> u64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Http {
    fn request(&self, cfg: &Config) -> Request {
        let mut req = Request::default();
        let mut cookies: Vec<String> = Vec::new();
        for (name, value) in self.get_http_request_headers_bytes() {
            match name.as_str() {
                ":method" => req.method = text(&value),
                ":path" => req.path = text(&value),
                "cookie" => cookies.push(text(&value)),
                "origin" => req.origin = Some(text(&value)),
                "sec-fetch-site" => req.sec_fetch_site = Some(text(&value)),
                "sec-fetch-mode" => req.sec_fetch_mode = Some(text(&value)),
                "accept" => req.accept = Some(text(&value)),
                n if n == cfg.csrf_header => req.csrf = Some(text(&value)),
                _ => {}
            }
        }
        if !cookies.is_empty() {
            req.cookie = Some(cookies.join("; "));
        }
        req.route = self
            .get_property(vec!["xds", "route_name"])
            .map(|b| text(&b))
            .filter(|s| !s.is_empty());
        req
    }

    fn respond(&mut self, status: u16, headers: &[(String, String)], body: &str) -> Action {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = if body.is_empty() {
            None
        } else {
            Some(body.as_bytes())
        };
        self.stopped = true;
        self.send_http_response(u32::from(status), h, body);
        Action::Pause
    }

    fn apply(&mut self, cfg: &Config, step: Step, resumed: bool) -> Action {
        match step {
            Step::Forward {
                authorization,
                cookie,
            } => {
                // Never forward an Authorization header the client sent.
                self.set_http_request_header("authorization", None);
                if let Some(t) = authorization {
                    let v = format!("Bearer {}", t.expose());
                    self.add_http_request_header("authorization", &v);
                }
                match cookie {
                    CookieEdit::Keep => {}
                    CookieEdit::Remove => self.set_http_request_header("cookie", None),
                    CookieEdit::Set(v) => {
                        self.set_http_request_header("cookie", None);
                        self.add_http_request_header("cookie", &v);
                    }
                }
                self.stopped = false;
                if resumed {
                    self.resume_http_request();
                }
                Action::Continue
            }
            Step::Respond(r) => self.respond(r.status, &r.headers, &r.body),
            Step::Call { request, then } => {
                let mut headers: Vec<(&str, &str)> = vec![
                    (":method", "POST"),
                    (":path", request.path.as_str()),
                    (":authority", cfg.provider.authority.as_str()),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("accept", "application/json"),
                ];
                for (k, v) in &request.headers {
                    headers.push((k.as_str(), v.expose()));
                }
                let timeout = Duration::from_millis(cfg.provider.timeout_ms);
                match self.dispatch_http_call(
                    &cfg.provider.cluster,
                    headers,
                    Some(request.body.expose().as_bytes()),
                    vec![],
                    timeout,
                ) {
                    Ok(token) => {
                        self.pending = Some((token, *then));
                        self.stopped = true;
                        Action::Pause
                    }
                    Err(_) => {
                        log(
                            LogLevel::Warn,
                            &format!(
                                "bffgate: callout to cluster `{}` could not be dispatched",
                                cfg.provider.cluster
                            ),
                        );
                        let r = crate::flow::error_reply(
                            503,
                            crate::flow::ErrorCode::IdpUnavailable,
                            "the identity provider is unreachable",
                        );
                        self.respond(r.status, &r.headers, &r.body)
                    }
                }
            }
        }
    }

    fn run<F>(&mut self, f: F) -> Option<(Rc<Config>, Step)>
    where
        F: FnOnce(&mut Engine<'_>) -> Step,
    {
        let cfg = self.config.clone()?;
        let mut rng = HostRandom;
        let mut store = SharedStore { data: HostData };
        let t = now(self);
        let mut engine = Engine::new(&cfg, t, &mut rng, &mut store);
        let step = f(&mut engine);
        for n in &engine.notes {
            log(LogLevel::Info, &format!("bffgate: {n}"));
        }
        drop(engine);
        Some((cfg, step))
    }

    fn unconfigured(&mut self) -> Action {
        let r = crate::flow::error_reply(
            503,
            crate::flow::ErrorCode::IdpUnavailable,
            "bffgate is not configured",
        );
        self.respond(r.status, &r.headers, &r.body)
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _t: usize,
    ) {
        let Some((expected, pending)) = self.pending.take() else {
            return;
        };
        if expected != token_id {
            self.pending = Some((expected, pending));
            return;
        }
        let status = self
            .get_http_call_response_headers_bytes()
            .into_iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
            });
        let result = match status {
            Some(status) => CallResult::Response {
                status,
                body: self
                    .get_http_call_response_body(0, body_size.min(crate::oauth::MAX_BODY + 1))
                    .unwrap_or_default(),
            },
            None => CallResult::Failed,
        };
        match self.run(|e| e.on_callout(pending, result)) {
            Some((cfg, step)) => {
                self.apply(&cfg, step, true);
            }
            None => {
                self.unconfigured();
            }
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(cfg) = self.config.clone() else {
            return self.unconfigured();
        };
        let req = self.request(&cfg);
        match self.run(|e| e.on_request(&req)) {
            Some((cfg, step)) => self.apply(&cfg, step, false),
            None => self.unconfigured(),
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // While a callout is in flight (or after a local reply), the body must not continue the
        // request: Continue here would forward the headers without our decision.
        if self.stopped {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.stopped {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}
