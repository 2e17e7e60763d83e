//! `cargo bench --bench core` (part of `make bench`): what bffgate's core costs per request,
//! natively, next to the floor of one HMAC-SHA256 of the session cookie.
//!
//! Measured, each on a realistic input:
//! - `hmac_sha256_cookie`: one HMAC-SHA256 (pre-keyed, like the key ring) over the cookie value;
//!   the floor: no cookie check can cost less.
//! - `cookie_verify`: `KeyRing::open` of a real session cookie (split, base64url, HMAC, compare).
//! - `session_decode`: `bffgate::record::decode` (full decode) of a ~3 KB record holding two JWT
//!   access tokens, the ID token and a refresh token (what shared data holds per session).
//! - `store_get_session`: the store read of that record (shared-data get, decode, owner check).
//! - `policy_decide`: `Policy::decide` for the `orders-read` route.
//! - `engine_fast_path`: the whole `Engine::on_request` for `GET /api/orders` with a live session
//!   whose token for the route's audience is cached (in-memory store): the decision per request,
//!   run as the wasm shell runs it, with the VM's memo of verified cookies (`verified`), which
//!   holds the cookie after its first request.
//! - `engine_fast_path_first_seen`: the same without the memo (a cookie the VM sees for the first
//!   time): the full cookie verify (HMAC) and the verifier hash.
//! - `engine_second_audience`: the same for `/api/profile` (the second, cached audience).
//! - `engine_forged_cookie`: a well-formed cookie with a wrong MAC (answered 401).
//!
//! Also counts the shared-data operations of one fast-path request (performance target: at most one get of
//! the session record) through a counting wrapper around the in-memory shared data.
//!
//! Prints the ratio engine fast path / HMAC (performance target: at most 2x) and, when `BENCH_CORE_OUT`
//! names a file, writes the estimates and sizes there as JSON (scripts/bench.mjs reads it).
//! Short measurement times keep the whole run well under a minute.

// Bench code: a failed expectation is a broken benchmark, not a runtime error to handle.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bffgate::engine::{Engine, Step};
use bffgate::store::{Cas, SharedData, SharedStore, Store, StoreError};
use bffgate::testkit::fast_path::{api_request, config, session, COOKIE, COOKIE_KEYS, NOW};
use bffgate::testkit::MemoryData;
use bffgate::testkit::TestRandom;
use bffgate::verified::VerifiedCookies;
use criterion::Criterion;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::cell::Cell;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

const GROUP: &str = "core";

/// In-memory shared data that counts what the store does with it.
#[derive(Default)]
struct Counting {
    inner: MemoryData,
    gets: Cell<u32>,
    get_bytes: Cell<usize>,
    sets: Cell<u32>,
}

impl Counting {
    fn reset(&self) {
        self.gets.set(0);
        self.get_bytes.set(0);
        self.sets.set(0);
    }
}

impl SharedData for Counting {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        let r = self.inner.get(key);
        self.gets.set(self.gets.get() + 1);
        self.get_bytes
            .set(self.get_bytes.get() + r.0.as_ref().map_or(0, Vec::len));
        r
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.sets.set(self.sets.get() + 1);
        self.inner.set(key, value, cas)
    }
    // The write counts and the record cache, as the wasm shell has them: a repeated request
    // reads its session from the VM's copy (`store::RecordCache`), not from shared data.
    fn epoch(&self, shard: u32) -> Option<u64> {
        self.inner.epoch(shard)
    }
    fn bump(&mut self, shard: u32) {
        self.inner.bump(shard);
    }
    fn records(&self) -> Option<&bffgate::store::RecordCache> {
        self.inner.records()
    }
}

fn forwards_with_token(step: &Step) -> bool {
    matches!(
        step,
        Step::Forward {
            authorization: Some(_),
            ..
        }
    )
}

/// Criterion's estimate (slope if linear sampling produced one, else the mean) in ns.
fn estimate_ns(dir: &std::path::Path, name: &str) -> Option<f64> {
    let text =
        std::fs::read_to_string(dir.join(GROUP).join(name).join("new/estimates.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("slope")
        .and_then(|s| s.get("point_estimate"))
        .and_then(Value::as_f64)
        .or_else(|| v.pointer("/mean/point_estimate").and_then(Value::as_f64))
}

/// Where criterion writes its results: $CRITERION_HOME, $CARGO_TARGET_DIR/criterion, or
/// `<target>/criterion` next to this executable (`target/release/deps/core-*`).
fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|t| t.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

fn main() {
    let cfg = config();
    let record = session();

    // The store holds the record exactly as the filter writes it (slot table, owner, handle).
    let mut store = SharedStore::new(Counting::default(), cfg.store);
    store.init_slots();
    let mut rng = TestRandom(7);
    let (id, _) = store
        .create_session(&record, &mut rng, NOW)
        .expect("a free slot");
    let sealed = cfg.cookie.keys.seal(COOKIE, &id.to_bytes());
    let (stored, _) = store.get_session(&id).expect("the session reads back");
    let record_bytes = bffgate::record::encode(&stored).expect("encodes");

    // A well-formed but wrongly signed cookie: same kid and payload, another MAC.
    let mut parts: Vec<&str> = sealed.split('.').collect();
    let forged_mac = URL_SAFE_NO_PAD.encode([0x5au8; 32]);
    parts[2] = &forged_mac;
    let forged = parts.join(".");

    let orders_req = api_request("/api/orders?page=1", "orders-read", &sealed);
    let profile_req = api_request("/api/profile", "profile", &sealed);
    let forged_req = api_request("/api/orders?page=1", "orders-read", &forged);
    let policy = cfg.routes.get("orders-read").expect("policy").clone();

    // Sanity: the cases decide what the benchmark says they decide.
    let now = NOW + 1; // within the touch interval: no write-back (as almost every request)
    {
        let mut r = TestRandom(1);
        let mut e = Engine::new(&cfg, now, &mut r, &mut store);
        assert!(
            forwards_with_token(&e.on_request(&orders_req)),
            "fast path forwards"
        );
        let mut e = Engine::new(&cfg, now, &mut r, &mut store);
        assert!(
            forwards_with_token(&e.on_request(&profile_req)),
            "second audience forwards"
        );
        let verified = VerifiedCookies::default();
        for _ in 0..2 {
            let mut e = Engine::new(&cfg, now, &mut r, &mut store).with_verified(&verified);
            assert!(
                forwards_with_token(&e.on_request(&orders_req)),
                "fast path forwards with the memo (first and repeated cookie)"
            );
        }
        let mut e = Engine::new(&cfg, now, &mut r, &mut store).with_verified(&verified);
        match e.on_request(&forged_req) {
            Step::Respond(reply) => assert_eq!(reply.status, 401, "forged cookie -> 401"),
            other => panic!("forged cookie: expected a 401 reply, got {other:?}"),
        }
    }
    assert!(policy
        .decide(&stored.claims, "orders:read orders:write")
        .is_ok());

    // Shared-data traffic of one fast-path request.
    store.data.reset();
    {
        let mut r = TestRandom(3);
        let mut e = Engine::new(&cfg, now, &mut r, &mut store);
        assert!(forwards_with_token(&e.on_request(&orders_req)));
    }
    let traffic = (
        store.data.gets.get(),
        store.data.get_bytes.get(),
        store.data.sets.get(),
    );

    // The floor: the key ring keeps a pre-keyed HMAC state; one MAC over the cookie value.
    let key = URL_SAFE_NO_PAD
        .decode(COOKIE_KEYS.split_once(':').expect("kid:key").1)
        .expect("base64url key");
    let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");

    // `BENCH_CORE_LOOP=<name>:<count>`: run one case `count` times and exit, without criterion
    // (for callgrind: the instructions of one request are the difference of two counts).
    if let Ok(spec) = std::env::var("BENCH_CORE_LOOP") {
        let (name, count) = spec
            .split_once(':')
            .expect("BENCH_CORE_LOOP=<name>:<count>");
        let count: u64 = count.parse().expect("a count");
        let req = match name {
            "engine_fast_path" => &orders_req,
            "engine_second_audience" => &profile_req,
            "engine_forged_cookie" => &forged_req,
            other => panic!("BENCH_CORE_LOOP: unknown case {other}"),
        };
        let verified = VerifiedCookies::default();
        let cold = std::env::var_os("BENCH_CORE_COLD").is_some();
        let mut r = TestRandom(2);
        for _ in 0..count {
            let e = Engine::new(&cfg, now, &mut r, &mut store);
            let mut e = if cold { e } else { e.with_verified(&verified) };
            black_box(e.on_request(black_box(req)));
        }
        return;
    }

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();
    {
        let mut g = c.benchmark_group(GROUP);
        g.bench_function("hmac_sha256_cookie", |b| {
            b.iter(|| {
                let mut m = keyed.clone();
                m.update(black_box(sealed.as_bytes()));
                black_box(m.finalize().into_bytes())
            })
        });
        g.bench_function("cookie_verify", |b| {
            b.iter(|| {
                cfg.cookie
                    .keys
                    .open(COOKIE, black_box(&sealed))
                    .expect("valid")
            })
        });
        g.bench_function("session_decode", |b| {
            b.iter(|| bffgate::record::decode(black_box(&record_bytes)).expect("decodes"))
        });
        g.bench_function("store_get_session", |b| {
            b.iter(|| store.get_session(black_box(&id)).expect("present"))
        });
        g.bench_function("policy_decide", |b| {
            b.iter(|| {
                policy
                    .decide(
                        black_box(&stored.claims),
                        black_box("orders:read orders:write"),
                    )
                    .expect("allowed")
            })
        });
        // As the wasm shell runs it: with the VM's memo of verified session cookies, which
        // holds the cookie after the first request (a browser repeats it on every request).
        let verified = VerifiedCookies::default();
        let mut r = TestRandom(2);
        for (name, req) in [
            ("engine_fast_path", &orders_req),
            ("engine_second_audience", &profile_req),
            ("engine_forged_cookie", &forged_req),
        ] {
            g.bench_function(name, |b| {
                b.iter(|| {
                    let mut e = Engine::new(&cfg, now, &mut r, &mut store).with_verified(&verified);
                    black_box(e.on_request(black_box(req)))
                })
            });
        }
        // A cookie this VM has not verified yet (its first request): HMAC and verifier hash.
        g.bench_function("engine_fast_path_first_seen", |b| {
            b.iter(|| {
                let mut e = Engine::new(&cfg, now, &mut r, &mut store);
                black_box(e.on_request(black_box(&orders_req)))
            })
        });
        g.finish();
    }
    c.final_summary();

    // Summary and machine-readable output.
    let dir = criterion_dir();
    let names = [
        "hmac_sha256_cookie",
        "cookie_verify",
        "session_decode",
        "store_get_session",
        "policy_decide",
        "engine_fast_path",
        "engine_second_audience",
        "engine_forged_cookie",
        "engine_fast_path_first_seen",
    ];
    let est: Vec<(&str, Option<f64>)> = names.iter().map(|n| (*n, estimate_ns(&dir, n))).collect();
    let hmac_ns = est[0].1;
    println!("\ncore per request (ns; ratio to one HMAC-SHA256 of the cookie):");
    for (n, v) in &est {
        match (v, hmac_ns) {
            (Some(v), Some(h)) if h > 0.0 => println!("  {n:<24} {v:>10.1} ns  {:>6.2}x", v / h),
            (Some(v), _) => println!("  {n:<24} {v:>10.1} ns"),
            (None, _) => println!("  {n:<24} (no estimate: filtered out or not run)"),
        }
    }
    let ratio = match (est[5].1, hmac_ns) {
        (Some(e), Some(h)) if h > 0.0 => Some(e / h),
        _ => None,
    };
    if let Some(r) = ratio {
        println!(
            "core decision / HMAC = {r:.2}x (target <= 2x: {})",
            if r <= 2.0 { "met" } else { "NOT met" }
        );
    }
    println!(
        "session record: {} bytes (JSON in shared data), cookie value: {} bytes",
        record_bytes.len(),
        sealed.len()
    );
    println!(
        "shared data per fast-path request: {} get(s) ({} bytes read), {} set(s)",
        traffic.0, traffic.1, traffic.2
    );
    if let Some(out) = std::env::var_os("BENCH_CORE_OUT") {
        let doc = json!({
            "estimates_ns": est.iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "decision_over_hmac": ratio,
            "session_record_bytes": record_bytes.len(),
            "cookie_value_bytes": sealed.len(),
            "fast_path_shared_data": {"gets": traffic.0, "bytes_read": traffic.1, "sets": traffic.2},
        });
        std::fs::write(&out, format!("{doc:#}\n")).expect("BENCH_CORE_OUT is writable");
    }
}
