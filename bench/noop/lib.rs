//! A proxy-wasm HTTP filter for the benchmark's floor and host-call probes.
//!
//! With an empty plugin configuration it does nothing: every request continues untouched
//! (case f of `make bench`, the floor of any filter built with the same SDK and runtime as
//! bffgate). `node scripts/bench.mjs --probe` gives it a comma-separated list of host operations
//! to perform on every request, to price each of them:
//! `headers` (read every request header), `header` (read `cookie`), `route` (property
//! `xds.route_name`), `shared_get` (a 2.4 KB shared-data value), `add_header` (a ~700-byte
//! `authorization`), `remove_header` (`cookie`), `set_property` (filter state), `metric`
//! (a counter increment), `local_reply` (a 401 JSON reply instead of forwarding).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { ops: Rc::new(Vec::new()), metric: 0 })
    });
}}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Headers,
    Header,
    Route,
    SharedGet,
    AddHeader,
    RemoveHeader,
    SetProperty,
    Metric,
    LocalReply,
}

struct Root {
    ops: Rc<Vec<Op>>,
    metric: u32,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut ops = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            ops.push(match name {
                "headers" => Op::Headers,
                "header" => Op::Header,
                "route" => Op::Route,
                "shared_get" => Op::SharedGet,
                "add_header" => Op::AddHeader,
                "remove_header" => Op::RemoveHeader,
                "set_property" => Op::SetProperty,
                "metric" => Op::Metric,
                "local_reply" => Op::LocalReply,
                _ => return false,
            });
        }
        if ops.contains(&Op::SharedGet) {
            let _ = hostcalls::set_shared_data("bench:record", Some(&[b'x'; 2400]), None);
        }
        if ops.contains(&Op::Metric) {
            self.metric = hostcalls::define_metric(MetricType::Counter, "bench_probe_total").unwrap_or(0);
        }
        self.ops = Rc::new(ops);
        true
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { ops: self.ops.clone(), metric: self.metric }))
    }
}

struct Filter {
    ops: Rc<Vec<Op>>,
    metric: u32,
}

impl Context for Filter {}
impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for op in self.ops.iter() {
            match op {
                Op::Headers => {
                    std::hint::black_box(self.get_http_request_headers_bytes());
                }
                Op::Header => {
                    std::hint::black_box(self.get_http_request_header_bytes("cookie"));
                }
                Op::Route => {
                    std::hint::black_box(self.get_property(vec!["xds", "route_name"]));
                }
                Op::SharedGet => {
                    std::hint::black_box(self.get_shared_data("bench:record"));
                }
                Op::AddHeader => {
                    let v = format!("Bearer {}", "t".repeat(700));
                    self.add_http_request_header("authorization", &v);
                }
                Op::RemoveHeader => self.set_http_request_header("cookie", None),
                Op::SetProperty => self.set_property(vec!["bench_decision"], Some(b"allow")),
                Op::Metric => {
                    let _ = hostcalls::increment_metric(self.metric, 1);
                }
                Op::LocalReply => {
                    self.send_http_response(
                        401,
                        vec![("content-type", "application/json"), ("cache-control", "no-store")],
                        Some(br#"{"error":"unauthenticated","error_description":"sign in first"}"#),
                    );
                    return Action::Pause;
                }
            }
        }
        Action::Continue
    }
}
