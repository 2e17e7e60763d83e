//! The request context: builds the engine's [`Request`] from the headers (only the `_bytes`
//! accessors: nothing panics on a non-UTF-8 value), feeds it the body when asked, cleans up in
//! `on_done`, and edits the response (CORS for allowed origins; no bffgate cookie set by an
//! upstream).

use super::apply::{apply, fail_closed, on_call_done, record_decision, respond};
use super::{log, run, Shared};
use crate::config::Config;
use crate::engine::{Request, Step};
use crate::secret::Secret;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use std::rc::Rc;

pub(super) struct Http {
    pub(super) id: u32,
    pub(super) shared: Rc<Shared>,
}

/// Feeds a requested body (or `None` if too large) to the engine.
fn body_done(shared: &Shared, ctx: u32, body: Option<&[u8]>) -> Action {
    let Some(pending) = shared.body_waiters.borrow_mut().remove(&ctx) else {
        return Action::Pause;
    };
    let Some(cfg) = shared.config() else {
        return fail_closed(shared, ctx, "bffgate is not configured");
    };
    let ran = run(shared, &cfg, |e| e.on_body(pending, body));
    record_decision(shared, &cfg, &ran.step, ran.subject.as_deref());
    apply(shared, &cfg, ctx, ran.step, false)
}

/// Appends a further value of a repeated header to what came before, with `sep`.
fn join(into: &mut Option<String>, v: String, sep: &str) {
    *into = Some(match into.take() {
        None => v,
        Some(mut all) => {
            all.push_str(sep);
            all.push_str(&v);
            all
        }
    });
}

/// A header value as text: moved, not copied, when it is UTF-8 (nearly always).
fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Http {
    fn request(&self, cfg: &Config) -> Request {
        let mut req = Request::default();
        let mut cookie: Option<String> = None;
        let (mut auths, mut cookies) = (0, 0);
        for (name, value) in self.get_http_request_headers_bytes() {
            match name.as_str() {
                "authorization" => {
                    auths += 1;
                    // Only the operator API reads it (its credential); never kept otherwise.
                    if cfg.admin && req.authorization.is_none() {
                        req.authorization = Some(Secret::new(text(value)));
                    }
                }
                ":authority" if cfg.admin => req.authority = Some(text(value)),
                ":method" => req.method = text(value),
                ":path" => req.path = text(value),
                "cookie" => {
                    // Every `cookie` header, joined with `; ` (HTTP/2 sends one per cookie).
                    cookies += 1;
                    join(&mut cookie, text(value), "; ");
                }
                "origin" => req.origin = Some(text(value)),
                "sec-fetch-site" => req.sec_fetch_site = Some(text(value)),
                "sec-fetch-mode" => req.sec_fetch_mode = Some(text(value)),
                "sec-fetch-dest" => req.sec_fetch_dest = Some(text(value)),
                "accept" => req.accept = Some(text(value)),
                "user-agent" => req.user_agent = Some(text(value)),
                "access-control-request-method" => req.cors_method = Some(text(value)),
                "access-control-request-headers" => req.cors_headers = Some(text(value)),
                n if n == cfg.csrf_header => req.csrf = Some(text(value)),
                // Every value, in order (a proxy may add its own header line).
                n if n == cfg.session.anomaly.client_address_header => {
                    join(&mut req.client_address, text(value), ", ")
                }
                _ => {}
            }
        }
        self.shared
            .header_counts
            .borrow_mut()
            .insert(self.id, (auths, cookies));
        req.cookie = cookie;
        req.route = self
            .get_property(vec!["xds", "route_name"])
            .map(text)
            .filter(|s| !s.is_empty());
        req
    }

    /// An upstream's `401` with a step-up challenge (`Bearer
    /// error="insufficient_user_authentication"`) becomes bffgate's own answer: the JSON with a
    /// `login_url` that comes back to the request's path. The upstream's challenge and body are
    /// not passed on, and nothing is retried.
    fn upstream_step_up(&self, map: &[(String, Vec<u8>)], path: &str) -> Option<Action> {
        let status = map.iter().find(|(k, _)| k == ":status")?;
        if status.1 != b"401" {
            return None;
        }
        let step = crate::policy::StepUp::from_challenge(
            map.iter()
                .filter(|(k, _)| k == "www-authenticate")
                .filter_map(|(_, v)| std::str::from_utf8(v).ok()),
        )?;
        let cfg = self.shared.config()?;
        let r = crate::engine::upstream_step_up_reply(&cfg, path, &step);
        log(
            LogLevel::Info,
            "an upstream asked for a step-up (insufficient_user_authentication); answered for it",
        );
        self.shared.count("bffgate_upstream_step_up");
        Some(respond(
            &self.shared,
            self.id,
            r.status,
            &r.headers,
            &r.body,
        ))
    }

    fn paused(&self) -> bool {
        self.shared.stopped.borrow().contains(&self.id)
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
        on_call_done(&self.shared, token, body_size);
    }

    fn on_done(&mut self) -> bool {
        // Everything kept for this request. Its callouts (queued or in flight) stay: their
        // answers still update the session; their entries go when the answers arrive.
        let s = &self.shared;
        s.alive.borrow_mut().remove(&self.id);
        s.waiters.borrow_mut().remove(&self.id);
        s.body_waiters.borrow_mut().remove(&self.id);
        s.stopped.borrow_mut().remove(&self.id);
        s.header_counts.borrow_mut().remove(&self.id);
        s.bearer.borrow_mut().remove(&self.id);
        s.cors.borrow_mut().remove(&self.id);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(cfg) = self.shared.config() else {
            return fail_closed(&self.shared, self.id, "bffgate is not configured");
        };
        if !self.shared.ring_checked.get() {
            // The first request of this configuration on this worker (never the main thread's
            // VM, which validates configurations but serves no request).
            self.shared.ring_checked.set(true);
            super::root::ring_head(&self.shared, &cfg);
            // A fleet check's first callout goes out at the next turn (the root's tick or
            // this request's own queue notification).
        }
        let req = self.request(&cfg);
        let mut ran = run(&self.shared, &cfg, |e| e.on_request(&req));
        if let Some(origin) = ran.cors.take() {
            self.shared.cors.borrow_mut().insert(self.id, origin);
        }
        if matches!(
            &ran.step,
            Step::Forward {
                authorization: Some(_),
                ..
            } | Step::Call { .. }
                | Step::Wait { .. }
        ) {
            self.shared.bearer.borrow_mut().insert(self.id, req.path);
        }
        record_decision(&self.shared, &cfg, &ran.step, ran.subject.as_deref());
        let action = apply(&self.shared, &cfg, self.id, ran.step, false);
        if end_of_stream && self.shared.body_waiters.borrow().contains_key(&self.id) {
            return body_done(&self.shared, self.id, Some(b""));
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.shared.body_waiters.borrow().contains_key(&self.id) {
            if body_size > crate::engine::MAX_REQUEST_BODY {
                return body_done(&self.shared, self.id, None);
            }
            if !end_of_stream {
                return Action::Pause;
            }
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            return body_done(&self.shared, self.id, Some(&body));
        }
        // While a callout or a wait is in progress (or after a local reply), the body must not
        // continue the request: Continue here would forward the headers without our decision.
        if self.paused() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.paused() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A reply of our own (it carries our own `set-cookie` and CORS headers already).
        if self.paused() {
            return Action::Continue;
        }
        const H: MapType = MapType::HttpResponseHeaders;
        // An upstream called with a bearer token may ask for a step-up (RFC 9470): one look
        // for a challenge (nearly always absent: the cheapest host call), and the whole map
        // (status, every challenge, the cookies) only when there is one.
        let path = self.shared.bearer.borrow_mut().remove(&self.id);
        let map = match path {
            Some(path)
                if matches!(
                    hostcalls::get_map_value_bytes(H, "www-authenticate"),
                    Ok(Some(_))
                ) =>
            {
                let map = hostcalls::get_map_bytes(H).unwrap_or_default();
                if let Some(action) = self.upstream_step_up(&map, &path) {
                    return action;
                }
                Some(map)
            }
            _ => None,
        };
        if let Some(origin) = self.shared.cors.borrow_mut().remove(&self.id) {
            for (k, v) in crate::reply::cors_headers(origin) {
                let _ = hostcalls::set_map_value(H, &k, Some(&v));
            }
        }
        // An upstream must not set bffgate's cookies (it would swap the browser into another
        // session, or plant a flow cookie): one host call when it sets no cookie at all.
        let sets_cookie = match &map {
            Some(m) => m.iter().any(|(k, _)| k == "set-cookie"),
            None => matches!(hostcalls::get_map_value_bytes(H, "set-cookie"), Ok(Some(_))),
        };
        if !sets_cookie {
            return Action::Continue;
        }
        let Some(cfg) = self.shared.config() else {
            return Action::Continue;
        };
        let all: Vec<Vec<u8>> = map
            .unwrap_or_else(|| hostcalls::get_map_bytes(H).unwrap_or_default())
            .into_iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v)
            .collect();
        let ours = |v: &[u8]| {
            let name = v.split(|b| *b == b'=').next().unwrap_or(v);
            std::str::from_utf8(name).is_ok_and(|n| crate::engine::is_bff_cookie(&cfg, n.trim()))
        };
        if all.iter().any(|v| ours(v)) {
            let _ = hostcalls::set_map_value(H, "set-cookie", None);
            for v in all.iter().filter(|v| !ours(v)) {
                let _ = hostcalls::add_map_value_bytes(H, "set-cookie", v);
            }
            log(
                LogLevel::Warn,
                "an upstream tried to set a bffgate cookie; removed",
            );
            self.shared.count("bffgate_upstream_cookies_removed");
        }
        Action::Continue
    }
}
