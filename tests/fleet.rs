//! The fleet store (`src/fleet.rs`) specified with two "Envoys" (two engines with their own
//! shared data as cache) in front of one etcd played in memory. The fake etcd speaks the JSON
//! gateway's shapes as measured on etcd 3.4 (docs/fleet-notes.md): standard base64 keys and
//! values, int64 fields as strings, a failed compare still 200 without `succeeded`, leases that
//! delete their keys when they run out. The real thing is exercised by
//! `tests/integration/fleet.test.mjs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use bffgate::store::EtcdStore;
use common::*;
use std::collections::{BTreeMap, HashMap};

const STORE_KEYS: &str = "s1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY";
const ETCD: &str = "bffgate_etcd";
const CACHE_TTL_MS: u64 = 1000;

#[derive(Clone)]
struct Kv {
    value: Vec<u8>,
    create: u64,
    modrev: u64,
    lease: u64,
}

/// etcd v3's JSON gateway, in memory.
#[derive(Default)]
struct FakeEtcd {
    kv: BTreeMap<Vec<u8>, Kv>,
    rev: u64,
    leases: HashMap<u64, (u64, u64)>,
    next_lease: u64,
    /// Seconds.
    now: u64,
    down: bool,
    calls: Vec<String>,
}

fn unb64(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("base64 fields are strings");
    STANDARD.decode(s).expect("standard base64 with padding")
}

fn num(v: &Value) -> u64 {
    // The gateway takes int64 fields as strings; bffgate always sends strings.
    v.as_str()
        .expect("int64 fields are sent as strings")
        .parse()
        .unwrap()
}

impl FakeEtcd {
    fn expire(&mut self) {
        let now = self.now;
        let dead: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, (exp, _))| *exp <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.leases.remove(&id);
            self.kv.retain(|_, kv| kv.lease != id);
        }
    }

    fn header(&self) -> Value {
        json!({"cluster_id": "1", "member_id": "2", "revision": self.rev.to_string(), "raft_term": "2"})
    }

    fn kv_json(k: &[u8], kv: &Kv, keys_only: bool) -> Value {
        let mut o = json!({"key": STANDARD.encode(k), "create_revision": kv.create.to_string(),
                           "mod_revision": kv.modrev.to_string(), "version": "1"});
        if !keys_only && !kv.value.is_empty() {
            o["value"] = json!(STANDARD.encode(&kv.value));
        }
        if kv.lease != 0 {
            o["lease"] = json!(kv.lease.to_string());
        }
        o
    }

    fn keys_in(&self, body: &Value) -> Vec<Vec<u8>> {
        let key = unb64(&body["key"]);
        match body.get("range_end") {
            Some(end) => {
                let end = unb64(end);
                self.kv.range(key..end).map(|(k, _)| k.clone()).collect()
            }
            None => self
                .kv
                .contains_key(&key)
                .then_some(key)
                .into_iter()
                .collect(),
        }
    }

    fn range(&self, body: &Value) -> Value {
        let keys_only = body.get("keys_only") == Some(&json!(true));
        let keys = self.keys_in(body);
        // As etcd: at most `limit` keys, `more` when some were left out, `count` of them all.
        let limit = body.get("limit").map_or(usize::MAX, |l| num(l) as usize);
        let kvs: Vec<Value> = keys
            .iter()
            .take(limit)
            .map(|k| Self::kv_json(k, &self.kv[k], keys_only))
            .collect();
        let mut o = json!({"header": self.header()});
        if !kvs.is_empty() {
            o["count"] = json!(keys.len().to_string());
            o["kvs"] = json!(kvs);
        }
        if keys.len() > kvs.len() {
            o["more"] = json!(true);
        }
        o
    }

    /// A put at revision `self.rev + 1` (a transaction's writes all share one revision: the
    /// caller bumps `self.rev` once after them).
    fn put(&mut self, body: &Value) -> Result<Value, ()> {
        let key = unb64(&body["key"]);
        let value = body.get("value").map(unb64).unwrap_or_default();
        let lease = body.get("lease").map(num).unwrap_or(0);
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(());
        }
        let rev = self.rev + 1;
        let create = self.kv.get(&key).map_or(rev, |kv| kv.create);
        self.kv.insert(
            key,
            Kv {
                value,
                create,
                modrev: rev,
                lease,
            },
        );
        Ok(json!({"header": {"revision": rev.to_string()}}))
    }

    fn delete(&mut self, body: &Value) -> Value {
        let keys = self.keys_in(body);
        let mut prev = Vec::new();
        for k in &keys {
            if let Some(kv) = self.kv.remove(k) {
                prev.push(Self::kv_json(k, &kv, false));
            }
        }
        let mut o = json!({"header": self.header()});
        if !keys.is_empty() {
            o["deleted"] = json!(keys.len().to_string());
        }
        if body.get("prev_kv") == Some(&json!(true)) && !prev.is_empty() {
            o["prev_kvs"] = json!(prev);
        }
        o
    }

    fn compare(&self, c: &Value) -> bool {
        let key = unb64(&c["key"]);
        assert_eq!(c["result"], "EQUAL");
        let kv = self.kv.get(&key);
        match c["target"].as_str().unwrap() {
            "MOD" => kv.map_or(0, |kv| kv.modrev) == num(&c["mod_revision"]),
            "CREATE" => kv.map_or(0, |kv| kv.create) == num(&c["create_revision"]),
            t => panic!("compare target {t}"),
        }
    }

    fn handle(&mut self, req: &Callout) -> CallResult {
        assert_eq!(req.cluster.as_deref(), Some(ETCD));
        assert_eq!(req.method, "POST");
        assert!(req.timeout_ms > 0 && req.timeout_ms <= 10_000);
        self.calls.push(req.path.clone());
        if self.down {
            return CallResult::Failed;
        }
        self.expire();
        let body: Value = serde_json::from_str(req.body.expose()).expect("JSON body");
        let out = match req.path.as_str() {
            "/v3/lease/grant" => {
                let ttl = num(&body["TTL"]);
                self.next_lease += 1;
                let id = 0x5000_0000_0000_0000 + self.next_lease;
                self.leases.insert(id, (self.now + ttl, ttl));
                json!({"header": self.header(), "ID": id.to_string(), "TTL": ttl.to_string()})
            }
            "/v3/kv/range" => self.range(&body),
            "/v3/kv/put" => match self.put(&body) {
                Ok(v) => {
                    self.rev += 1;
                    v
                }
                Err(()) => {
                    return answer_json(
                        404,
                        &json!({"error": "etcdserver: requested lease not found", "code": 5}),
                    )
                }
            },
            "/v3/kv/deleterange" => {
                let v = self.delete(&body);
                if v.get("deleted").is_some() {
                    self.rev += 1;
                }
                json!({"header": self.header(), "deleted": v.get("deleted"),
                       "prev_kvs": v.get("prev_kvs")})
            }
            "/v3/kv/txn" => {
                let ok = body
                    .get("compare")
                    .and_then(Value::as_array)
                    .is_none_or(|cs| cs.iter().all(|c| self.compare(c)));
                let ops = body
                    .get(if ok { "success" } else { "failure" })
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut responses = Vec::new();
                let writes = ops.iter().any(|op| {
                    op.get("request_put").is_some() || op.get("request_delete_range").is_some()
                });
                for op in ops {
                    if let Some(p) = op.get("request_put") {
                        self.put(p).expect("txn put with a live lease");
                        responses.push(json!({"response_put": {"header": self.header()}}));
                    } else if let Some(r) = op.get("request_range") {
                        responses.push(json!({"response_range": self.range(r)}));
                    } else if let Some(d) = op.get("request_delete_range") {
                        responses.push(json!({"response_delete_range": self.delete(d)}));
                    } else {
                        panic!("txn op {op}");
                    }
                }
                if writes {
                    // One revision for the whole transaction.
                    self.rev += 1;
                }
                let mut o = json!({"header": self.header()});
                if ok {
                    o["succeeded"] = json!(true);
                }
                if !responses.is_empty() {
                    o["responses"] = json!(responses);
                }
                o
            }
            p => panic!("unexpected etcd path {p}"),
        };
        answer_json(200, &out)
    }

    /// Every value stored, for the at-rest checks.
    fn dump(&self) -> Vec<(String, Vec<u8>)> {
        self.kv
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.value.clone()))
            .collect()
    }

    fn lease_ttl_of(&self, key_prefix: &str) -> Option<u64> {
        self.kv
            .iter()
            .find(|(k, _)| k.starts_with(key_prefix.as_bytes()))
            .and_then(|(_, kv)| self.leases.get(&kv.lease))
            .map(|(_, ttl)| *ttl)
    }
}

fn fleet_config(mode: &str) -> Config {
    fleet_config_ttl(mode, CACHE_TTL_MS)
}

fn fleet_config_ttl(mode: &str, cache_ttl_ms: u64) -> Config {
    let mut raw = demo_config();
    raw["store"] = json!({
        "backend": "etcd",
        "max_sessions": 64,
        "etcd": {"cluster": ETCD, "timeout_ms": 300, "cache_ttl_ms": cache_ttl_ms,
                 "when_unavailable": mode, "serve_cached_max_ms": cache_ttl_ms.max(10_000)}
    });
    let secrets = |name: &str| match name {
        "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
        "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
        "BFFGATE_STORE_KEYS" => Some(STORE_KEYS.to_string()),
        _ => None,
    };
    Config::from_json(raw.to_string().as_bytes(), &secrets).expect("fleet config compiles")
}

/// One Envoy: its configuration and its shared data (the cache).
struct Envoy {
    cfg: Config,
    data: MemoryData,
    seed: u64,
}

/// Two Envoys, one etcd, one clock, the provider played by hand.
struct Fleet {
    envoys: [Envoy; 2],
    etcd: FakeEtcd,
    now_ms: u64,
    serial: u32,
}

const A: usize = 0;
const B: usize = 1;

impl Fleet {
    fn new(mode: &str) -> Fleet {
        Fleet::with_ttl(mode, CACHE_TTL_MS)
    }

    fn with_ttl(mode: &str, cache_ttl_ms: u64) -> Fleet {
        let mk = |seed| Envoy {
            cfg: fleet_config_ttl(mode, cache_ttl_ms),
            data: MemoryData::default(),
            seed,
        };
        let mut f = Fleet {
            envoys: [mk(1), mk(2)],
            etcd: FakeEtcd {
                now: T0,
                ..FakeEtcd::default()
            },
            now_ms: T0 * 1000,
            serial: 0,
        };
        for i in [A, B] {
            f.with_engine(i, |_| None::<Step>);
        }
        f
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now_ms += ms;
        self.etcd.now = self.now_ms / 1000;
    }

    /// Runs `f` on a fresh engine of Envoy `i` over a fresh fleet store (as the shell does
    /// for every callback).
    fn with_engine<T>(&mut self, i: usize, f: impl FnOnce(&mut Engine<'_>) -> T) -> T {
        let now_ms = self.now_ms;
        let env = &mut self.envoys[i];
        env.seed += 1;
        let etcd_cfg = env.cfg.etcd.clone().expect("fleet mode");
        let mut store = EtcdStore::new(
            &mut env.data,
            &env.cfg,
            &etcd_cfg,
            now_ms,
            TestRandom(env.seed * 7919),
        );
        if env.seed == 2 || env.seed == 3 {
            store.init_slots();
        }
        let mut rng = TestRandom(env.seed * 104_729);
        let mut e = Engine::new(&env.cfg, now_ms / 1000, &mut rng, &mut store);
        f(&mut e)
    }

    /// Answers etcd callouts until the request needs the provider, waits, or is decided.
    fn settle(&mut self, i: usize, mut step: Step) -> Step {
        for _ in 0..32 {
            match step {
                Step::Call { request, then } if request.cluster.as_deref() == Some(ETCD) => {
                    let result = self.etcd.handle(&request);
                    step = self.with_engine(i, |e| e.on_callout(*then, result));
                }
                other => return other,
            }
        }
        panic!("more than 32 etcd callouts for one request");
    }

    fn request(&mut self, i: usize, req: &Request) -> Step {
        let step = self.with_engine(i, |e| e.on_request(req));
        self.settle(i, step)
    }

    fn resume(&mut self, i: usize, then: AfterCall, result: CallResult) -> Step {
        let step = self.with_engine(i, |e| e.on_callout(then, result));
        self.settle(i, step)
    }

    fn wake(&mut self, i: usize, then: &AwaitToken) -> Option<Step> {
        let step = self.with_engine(i, |e| e.on_wake(then))?;
        Some(self.settle(i, step))
    }

    fn mint(&mut self, kind: &str) -> String {
        self.serial += 1;
        format!("{kind}-{}-Qz{:x}", self.serial, self.serial * 7_777_777)
    }

    /// Login started on `start`, callback delivered to `finish`.
    fn sign_in(&mut self, b: &mut Browser, start: usize, finish: usize) -> (String, String) {
        let mut req = get("/auth/login?return_to=%2F");
        req.sec_fetch_mode = Some("navigate".into());
        let r = reply(self.request(start, &req));
        assert_eq!(r.status, 302, "{r:?}");
        b.accept(&r);
        let location = header(&r, "location").unwrap().to_string();
        let q = location.split_once('?').unwrap().1;
        let (state, nonce) = (param(q, "state").unwrap(), param(q, "nonce").unwrap());
        let code = self.mint("code");
        let mut cb = get(&format!(
            "/auth/callback?{}",
            qs(&[("code", &code), ("state", &state)])
        ));
        cb.cookie = b.cookie_header();
        cb.sec_fetch_mode = Some("navigate".into());
        let (request, then) = call(self.request(finish, &cb));
        assert!(
            request.cluster.is_none(),
            "the code exchange goes to the provider"
        );
        let access = self.mint("at-orders");
        let refresh = self.mint("rt");
        let id_token = unsigned_jwt(&json!({
            "iss": ISSUER, "aud": "bffgate", "nonce": nonce, "iat": self.now_ms / 1000,
            "exp": self.now_ms / 1000 + 300, "sub": "sub-alice", "name": "Alice",
            "sid": "idp-sid-1"}));
        let body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                          "scope": "openid offline_access orders:read orders:write",
                          "refresh_token": refresh, "id_token": id_token});
        let r = reply(self.resume(finish, then, answer_json(200, &body)));
        assert_eq!(r.status, 302, "{r:?}");
        b.accept(&r);
        assert!(b.get(SESSION).is_some());
        (access, refresh)
    }

    fn etcd_calls_since(&self, n: usize) -> Vec<String> {
        self.etcd.calls[n..].to_vec()
    }
}

fn bearer(step: Step) -> String {
    let (auth, _) = forward(step);
    auth.expect("a bearer token")
}

#[test]
fn a_session_made_on_one_envoy_works_on_the_other_and_is_cached_there() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    let (access, _) = f.sign_in(&mut b, A, A);
    // A's cache answers A at once: no etcd call.
    let n = f.etcd.calls.len();
    assert_eq!(bearer(f.request(A, &orders(&b))), access);
    assert!(f.etcd_calls_since(n).is_empty());
    // B has never seen it: one range, then forwarded with the same token.
    let n = f.etcd.calls.len();
    assert_eq!(bearer(f.request(B, &orders(&b))), access);
    assert_eq!(f.etcd_calls_since(n), vec!["/v3/kv/range"]);
    // Within the staleness bound, B answers from its cache.
    let n = f.etcd.calls.len();
    f.advance_ms(CACHE_TTL_MS / 2);
    assert_eq!(bearer(f.request(B, &orders(&b))), access);
    assert!(f.etcd_calls_since(n).is_empty());
    // Past it, B reads again.
    f.advance_ms(CACHE_TTL_MS);
    let n = f.etcd.calls.len();
    assert_eq!(bearer(f.request(B, &orders(&b))), access);
    assert_eq!(f.etcd_calls_since(n), vec!["/v3/kv/range"]);
}

#[test]
fn nothing_in_etcd_reveals_a_token_or_the_subject_and_records_have_leases() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    let (access, refresh) = f.sign_in(&mut b, A, B);
    let dump = f.etcd.dump();
    assert!(dump.iter().any(|(k, _)| k.starts_with("bffgate/s/")));
    for (k, v) in &dump {
        let text = String::from_utf8_lossy(v);
        for needle in [
            access.as_str(),
            refresh.as_str(),
            "eyJ",
            "sub-alice",
            "Alice",
            "idp-sid-1",
        ] {
            assert!(!text.contains(needle), "{needle} in clear at {k}");
            assert!(!k.contains(needle), "{needle} in key {k}");
        }
        if k.starts_with("bffgate/s/") && !k.ends_with("/a") {
            assert!(v.starts_with(b"V2"), "an AEAD envelope at {k}");
        }
    }
    // The session's lease is its absolute lifetime.
    assert_eq!(f.etcd.lease_ttl_of("bffgate/s/"), Some(ABSOLUTE));
    // The pending login was taken (deleted) by the callback.
    assert!(!dump.iter().any(|(k, _)| k.starts_with("bffgate/p/")));
    // The lease ends the session by itself.
    f.advance_ms(ABSOLUTE * 1000 + 1000);
    f.etcd.expire();
    assert!(!f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/s/")));
}

#[test]
fn a_tampered_or_moved_record_is_refused_not_trusted() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    let mut c = Browser::default();
    f.sign_in(&mut c, A, A);
    let keys: Vec<Vec<u8>> = f
        .etcd
        .kv
        .keys()
        .filter(|k| k.starts_with(b"bffgate/s/") && !k.ends_with(b"/a"))
        .cloned()
        .collect();
    assert_eq!(keys.len(), 2);
    // Swap the two records: each now sits under the other's key.
    let (x, y) = (f.etcd.kv[&keys[0]].clone(), f.etcd.kv[&keys[1]].clone());
    f.etcd.kv.insert(keys[0].clone(), y);
    f.etcd.kv.insert(keys[1].clone(), x);
    let r = reply(f.request(B, &orders(&b)));
    assert_error(&r, 401, "unauthenticated");
    // A flipped byte is refused too.
    let mut z = f.etcd.kv[&keys[0]].clone();
    let last = z.value.len() - 1;
    z.value[last] ^= 1;
    f.etcd.kv.insert(keys[0].clone(), z.clone());
    f.etcd.kv.insert(keys[1].clone(), z);
    let r = reply(f.request(B, &orders(&c)));
    assert_error(&r, 401, "unauthenticated");
}

#[test]
fn logout_on_one_envoy_is_honoured_by_the_other_within_the_bound() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    assert!(forward(f.request(B, &orders(&b))).0.is_some());
    // Log out on A (revocation callouts answered 200).
    let mut step = f.request(A, &logout(&b));
    while let Step::Call { request, then } = step {
        assert!(request.cluster.is_none());
        step = f.resume(A, *then, answer(200, ""));
    }
    assert_eq!(reply(step).status, 200);
    assert!(!f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/s/")));
    assert!(!f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/u/")));
    // A refuses at once.
    assert_error(&reply(f.request(A, &orders(&b))), 401, "unauthenticated");
    // B may still serve its cached copy, but never past the bound.
    f.advance_ms(CACHE_TTL_MS + 1);
    assert_error(&reply(f.request(B, &orders(&b))), 401, "unauthenticated");
}

/// Past the tokens' expiry (not only within the renewal skew, where a still-valid token
/// would be used while another request renews).
fn expire_tokens(f: &mut Fleet) {
    f.advance_ms(301 * 1000);
}

fn refresh_body(f: &mut Fleet, rotate: bool) -> (String, Value) {
    let access = f.mint("at2");
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                          "scope": "orders:read orders:write"});
    if rotate {
        body["refresh_token"] = json!(f.mint("rt2"));
    }
    (access, body)
}

#[test]
fn a_refresh_on_one_envoy_serves_the_other_without_another_grant() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    let (_, refresh) = f.sign_in(&mut b, A, A);
    expire_tokens(&mut f);
    // B renews: lease for the lock, lock + record in one compare, then the provider.
    let n = f.etcd.calls.len();
    let (request, then) = call(f.request(B, &orders(&b)));
    assert!(request.cluster.is_none());
    assert!(request.body.expose().contains(&refresh));
    assert_eq!(
        f.etcd_calls_since(n),
        vec!["/v3/kv/range", "/v3/lease/grant", "/v3/kv/txn"]
    );
    assert!(f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/l/")));
    let (new_access, body) = refresh_body(&mut f, true);
    assert_eq!(
        bearer(f.resume(B, then, answer_json(200, &body))),
        new_access
    );
    // The lock is gone with the write.
    assert!(!f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/l/")));
    // A, once its cache is past the bound, uses B's token: no provider call.
    f.advance_ms(CACHE_TTL_MS + 1);
    assert_eq!(bearer(f.request(A, &orders(&b))), new_access);
}

#[test]
fn one_refresh_for_the_fleet_when_two_envoys_need_it_at_once() {
    one_refresh_for_the_fleet(CACHE_TTL_MS);
}

#[test]
fn waiters_read_etcd_again_soon_whatever_the_cache_bound() {
    // A long staleness bound must not keep a waiter from seeing another Envoy's renewal.
    one_refresh_for_the_fleet(30_000);
}

fn one_refresh_for_the_fleet(cache_ttl_ms: u64) {
    let mut f = Fleet::with_ttl("fail_closed", cache_ttl_ms);
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    // B reads the session first so both caches hold the pre-renewal record.
    f.request(B, &orders(&b));
    expire_tokens(&mut f);
    // A takes the lock and calls the provider (still in flight).
    let (_, a_then) = call(f.request(A, &orders(&b)));
    // B wants a renewal too: its lock compare fails, so it waits instead of a second grant.
    let waiting = match f.request(B, &orders(&b)) {
        Step::Wait { then } => then,
        other => panic!("B should wait for A's renewal, got {other:?}"),
    };
    // A finishes.
    let (new_access, body) = refresh_body(&mut f, true);
    assert_eq!(
        bearer(f.resume(A, a_then, answer_json(200, &body))),
        new_access
    );
    // B's next wake-ups re-read etcd (past the bound) and forward with A's token.
    let mut got = None;
    for ticks in 1..=40 {
        f.advance_ms(20);
        if let Some(step) = f.wake(B, &waiting) {
            got = Some((step, ticks * 20));
            break;
        }
    }
    let (step, after_ms) = got.expect("B woke up before its deadline");
    assert_eq!(bearer(step), new_access);
    assert!(
        after_ms <= 400,
        "B saw the renewal only after {after_ms} ms"
    );
}

#[test]
fn a_login_started_on_one_envoy_completes_on_the_other_once() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, B);
    assert!(forward(f.request(A, &orders(&b))).0.is_some());
    // A replay of a callback (same state) on the other Envoy is refused: taken once fleet-wide.
    let mut req = get("/auth/login?return_to=%2F");
    req.sec_fetch_mode = Some("navigate".into());
    let mut c = Browser::default();
    let r = reply(f.request(A, &req));
    c.accept(&r);
    let q = header(&r, "location")
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_string();
    let state = param(&q, "state").unwrap();
    let mut cb = get(&format!(
        "/auth/callback?{}",
        qs(&[("code", "c1"), ("state", &state)])
    ));
    cb.cookie = c.cookie_header();
    let first = f.request(B, &cb);
    assert!(matches!(first, Step::Call { .. }), "{first:?}");
    let again = reply(f.request(A, &cb));
    assert_error(&again, 400, "login_failed");
}

#[test]
fn etcd_down_fails_closed_never_open() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    f.etcd.down = true;
    // A fresh cache entry still decides (etcd was read within the bound).
    assert!(forward(f.request(A, &orders(&b))).0.is_some());
    // Past the bound: 503 store_unavailable, on A and on B (which never saw it).
    f.advance_ms(CACHE_TTL_MS + 1);
    assert_error(&reply(f.request(A, &orders(&b))), 503, "store_unavailable");
    assert_error(&reply(f.request(B, &orders(&b))), 503, "store_unavailable");
    // A login cannot complete without the store either.
    let mut req = get("/auth/login");
    req.sec_fetch_mode = Some("navigate".into());
    assert_error(&reply(f.request(A, &req)), 503, "store_unavailable");
    // Logout is not confirmed (the cookie stays so it can be tried again).
    let r = reply(f.request(A, &logout(&b)));
    assert_error(&r, 503, "store_unavailable");
    assert!(set_cookies(&r).is_empty(), "{r:?}");
    // etcd back: the session was never lost.
    f.etcd.down = false;
    f.advance_ms(300);
    assert!(forward(f.request(A, &orders(&b))).0.is_some());
    assert!(forward(f.request(B, &orders(&b))).0.is_some());
}

#[test]
fn serve_cached_serves_a_known_session_for_a_bounded_time_only() {
    let mut f = Fleet::new("serve_cached");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    f.etcd.down = true;
    f.advance_ms(CACHE_TTL_MS + 1);
    // Known here: served from the cache.
    assert!(forward(f.request(A, &orders(&b))).0.is_some());
    // Never seen on B: nothing to serve, fail closed.
    assert_error(&reply(f.request(B, &orders(&b))), 503, "store_unavailable");
    // Past serve_cached_max_ms: fail closed on A too.
    f.advance_ms(10_000);
    assert_error(&reply(f.request(A, &orders(&b))), 503, "store_unavailable");
}

#[test]
fn backchannel_and_operator_revocation_reach_sessions_this_envoy_never_saw() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, B, B);
    assert!(f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/u/")));
    // The operator API of Envoy A (its own filter instance: `admin: true`).
    let mut admin_cfg = f.envoys[A].cfg.clone();
    admin_cfg.admin = true;
    admin_cfg.admin_token = Some(bffgate::secret::Secret::new(bffgate::testkit::ADMIN_TOKEN));
    f.envoys[A].cfg = admin_cfg;
    let mut req = get("/sessions/revoke?sub=sub-alice");
    req.method = "POST".into();
    req.csrf = Some("1".into());
    req.authority = Some("127.0.0.1:9912".into());
    req.authorization = Some(bffgate::secret::Secret::new(format!(
        "Bearer {}",
        bffgate::testkit::ADMIN_TOKEN
    )));
    let r = reply(f.request(A, &req));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/s/")));
    f.envoys[A].cfg = fleet_config("fail_closed");
    f.advance_ms(CACHE_TTL_MS + 1);
    assert_error(&reply(f.request(B, &orders(&b))), 401, "unauthenticated");
}

#[test]
fn sessions_from_both_envoys_live_side_by_side() {
    // Two logins on two Envoys: distinct cookies, distinct etcd records, each usable anywhere.
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    let mut c = Browser::default();
    f.sign_in(&mut b, A, A);
    f.sign_in(&mut c, B, B);
    assert_ne!(b.get(SESSION), c.get(SESSION));
    let sessions = f
        .etcd
        .dump()
        .into_iter()
        .filter(|(k, _)| k.starts_with("bffgate/s/") && !k.ends_with("/a"))
        .count();
    assert_eq!(sessions, 2);
    assert!(forward(f.request(B, &orders(&b))).0.is_some());
    assert!(forward(f.request(A, &orders(&c))).0.is_some());
}

#[test]
fn a_last_use_write_touches_only_the_last_use_key_never_the_record() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    let record = |f: &Fleet| {
        f.etcd
            .kv
            .iter()
            .find(|(k, _)| k.starts_with(b"bffgate/s/") && !k.ends_with(b"/a"))
            .map(|(_, kv)| (kv.modrev, kv.value.clone()))
            .expect("the record")
    };
    let before = record(&f);
    // Past the touch interval (60 s), tokens still fresh: the request writes its last use.
    f.advance_ms(61_000);
    let n = f.etcd.calls.len();
    assert!(forward(f.request(A, &orders(&b))).0.is_some());
    assert_eq!(f.etcd_calls_since(n), vec!["/v3/kv/range", "/v3/kv/put"]);
    assert_eq!(record(&f), before, "the sealed record is not rewritten");
    let last_use = f
        .etcd
        .kv
        .iter()
        .find(|(k, _)| k.ends_with(b"/a"))
        .map(|(_, kv)| String::from_utf8(kv.value.clone()).unwrap())
        .expect("a last-use key");
    assert_eq!(last_use, (f.now_ms / 1000).to_string());
    // And B, reading the session, sees that last use.
    f.advance_ms(CACHE_TTL_MS + 1);
    assert!(forward(f.request(B, &orders(&b))).0.is_some());
}

#[test]
fn a_logged_out_cookie_costs_one_etcd_read_per_cache_bound_not_one_per_request() {
    let mut f = Fleet::new("fail_closed");
    let mut b = Browser::default();
    f.sign_in(&mut b, A, A);
    // Logged out on B; A learns it at its next read of etcd.
    let mut step = f.request(B, &logout(&b));
    while let Step::Call { request, then } = step {
        step = f.resume(B, *then, answer(200, &request.path));
    }
    f.advance_ms(CACHE_TTL_MS + 1);
    let n = f.etcd.calls.len();
    for _ in 0..50 {
        assert_error(&reply(f.request(A, &orders(&b))), 401, "unauthenticated");
    }
    assert_eq!(
        f.etcd_calls_since(n),
        vec!["/v3/kv/range"],
        "the known absence is cached within cache_ttl_ms"
    );
    // Past the bound it is read again, once.
    f.advance_ms(CACHE_TTL_MS + 1);
    let n = f.etcd.calls.len();
    for _ in 0..10 {
        assert_error(&reply(f.request(A, &orders(&b))), 401, "unauthenticated");
    }
    assert_eq!(f.etcd_calls_since(n), vec!["/v3/kv/range"]);
}

/// `GET /auth/login` on Envoy `i`: the reply after its etcd writes.
fn start_login(f: &mut Fleet, i: usize) -> Reply {
    let mut req = get("/auth/login?return_to=%2F");
    req.sec_fetch_mode = Some("navigate".into());
    reply(f.request(i, &req))
}

#[test]
fn pending_logins_in_etcd_are_bounded_per_envoy() {
    // max_pending_logins 5 with the default 600 s login timeout: a budget of 5, refilled at
    // one login per 120 s.
    let cfg = {
        let mut raw = demo_config();
        raw["store"] = json!({
            "backend": "etcd",
            "max_sessions": 64,
            "max_pending_logins": 5,
            "etcd": {"cluster": ETCD, "timeout_ms": 300, "cache_ttl_ms": CACHE_TTL_MS}
        });
        let secrets = |name: &str| match name {
            "BFFGATE_CLIENT_SECRET" => Some(CLIENT_SECRET.to_string()),
            "BFFGATE_COOKIE_KEYS" => Some(K1.to_string()),
            "BFFGATE_STORE_KEYS" => Some(STORE_KEYS.to_string()),
            _ => None,
        };
        Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap()
    };
    let mut f = Fleet::new("fail_closed");
    f.envoys[A].cfg = cfg.clone();
    f.envoys[B].cfg = cfg;
    let pending = |f: &Fleet| {
        f.etcd
            .dump()
            .iter()
            .filter(|(k, _)| k.starts_with("bffgate/p/"))
            .count()
    };
    for _ in 0..5 {
        assert_eq!(start_login(&mut f, A).status, 302);
    }
    assert_eq!(pending(&f), 5);
    // Spent: refused before any etcd call, with the reason in the audit log.
    let n = f.etcd.calls.len();
    for _ in 0..100 {
        assert_error(&start_login(&mut f, A), 503, "login_failed");
    }
    assert!(f.etcd_calls_since(n).is_empty());
    assert_eq!(pending(&f), 5);
    // The other Envoy has its own budget.
    assert_eq!(start_login(&mut f, B).status, 302);
    // It refills with time.
    f.advance_ms(121_000);
    assert_eq!(start_login(&mut f, A).status, 302);
    assert_error(&start_login(&mut f, A), 503, "login_failed");
}

#[test]
fn revoke_on_shutdown_is_refused_in_fleet_mode() {
    let mut raw = demo_config();
    raw["store"] = json!({
        "backend": "etcd", "revoke_on_shutdown": true,
        "etcd": {"cluster": ETCD, "timeout_ms": 300}
    });
    let secrets = |name: &str| match name {
        "BFFGATE_STORE_KEYS" => Some(STORE_KEYS.to_string()),
        other => secrets_with(K1)(other),
    };
    let e = Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap_err();
    assert!(e.to_string().contains("store.revoke_on_shutdown"), "{e}");
    raw["store"]["revoke_on_shutdown"] = json!(false);
    assert!(Config::from_json(raw.to_string().as_bytes(), &secrets).is_ok());
}

#[test]
fn an_operator_revoke_all_on_one_envoy_ends_the_whole_fleet_page_by_page() {
    let mut f = Fleet::new("fail_closed");
    let mut browsers = Vec::new();
    let mut refresh = Vec::new();
    for i in 0..40 {
        let mut b = Browser::default();
        let at = if i % 2 == 0 { A } else { B };
        let (_, rt) = f.sign_in(&mut b, at, at);
        // Half of them used on the other Envoy too (a last-use key and a cache entry there).
        if i % 4 == 0 {
            f.advance_ms(1_100);
            assert!(forward(f.request(B, &orders(&b))).0.is_some());
        }
        refresh.push(rt);
        browsers.push(b);
    }
    let mut admin_cfg = f.envoys[A].cfg.clone();
    admin_cfg.admin = true;
    admin_cfg.admin_token = Some(bffgate::secret::Secret::new(bffgate::testkit::ADMIN_TOKEN));
    f.envoys[A].cfg = admin_cfg;
    let req = operator_request("POST", "/sessions/revoke-all");
    let n = f.etcd.calls.len();
    // The operator's request through its callouts, keeping what each run queued.
    let mut queued: Vec<String> = Vec::new();
    let mut grab = |e: &mut Engine<'_>, step: Step| {
        queued.extend(e.background.drain(..).map(|(t, _)| t.expose().to_string()));
        step
    };
    let mut step = f.with_engine(A, |e| {
        let s = e.on_request(&req);
        grab(e, s)
    });
    let r = loop {
        match step {
            Step::Call { request, then } => {
                assert_eq!(request.cluster.as_deref(), Some(ETCD));
                let result = f.etcd.handle(&request);
                step = f.with_engine(A, |e| {
                    let s = e.on_callout(*then, result);
                    grab(e, s)
                });
            }
            other => break reply(other),
        }
    };
    assert_eq!(r.status, 202, "{r:?}");
    let body = json_body(&r);
    assert_eq!(body["sessions_ended"], json!(40));
    assert_eq!(body["revocations_queued"], json!(40));
    assert_eq!(body["revocations_not_sent"], json!(0));
    queued.sort();
    refresh.sort();
    assert_eq!(queued, refresh, "every grant of the fleet, once");
    let calls = f.etcd_calls_since(n);
    assert!(
        calls.iter().filter(|c| *c == "/v3/kv/range").count() >= 2,
        "several pages: {calls:?}"
    );
    // Nothing of any session is left in etcd: records, last use, locks, indexes.
    let left: Vec<String> = f
        .etcd
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            ["bffgate/s/", "bffgate/u/", "bffgate/i/", "bffgate/l/"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    f.envoys[A].cfg = fleet_config("fail_closed");
    // A refuses at once (its cache was marked); B once its cache entry is older than the bound.
    assert_error(
        &reply(f.request(A, &orders(&browsers[0]))),
        401,
        "unauthenticated",
    );
    f.advance_ms(CACHE_TTL_MS + 1);
    for b in &browsers {
        assert_error(&reply(f.request(B, &orders(b))), 401, "unauthenticated");
    }
}

/// Runs `start` on Envoy `i` and answers its etcd callouts until it ends; the refresh tokens the
/// runs queued for revocation, and the last step.
fn drive(
    f: &mut Fleet,
    i: usize,
    start: impl FnOnce(&mut Engine<'_>) -> Option<Step>,
) -> (Vec<String>, Option<Step>) {
    let mut queued = Vec::new();
    let mut step = f.with_engine(i, |e| {
        let s = start(e);
        queued.extend(e.background.drain(..).map(|(t, _)| t.expose().to_string()));
        s
    });
    loop {
        match step {
            Some(Step::Call { request, then }) => {
                assert_eq!(request.cluster.as_deref(), Some(ETCD));
                let result = f.etcd.handle(&request);
                step = Some(f.with_engine(i, |e| {
                    let s = e.on_callout(*then, result);
                    queued.extend(e.background.drain(..).map(|(t, _)| t.expose().to_string()));
                    s
                }));
            }
            other => return (queued, other),
        }
    }
}

#[test]
fn a_new_first_cookie_key_ends_the_fleets_sessions_once_with_revoke_on_key_change() {
    let mut f = Fleet::new("fail_closed");
    let mut browsers = Vec::new();
    let mut refresh = Vec::new();
    for at in [A, B, A] {
        let mut b = Browser::default();
        let (_, rt) = f.sign_in(&mut b, at, at);
        refresh.push(rt);
        browsers.push(b);
    }
    // Both Envoys note the key the sessions were made under: the first writes the list.
    for i in [A, B] {
        let (queued, _) = drive(&mut f, i, |e| e.fleet_ring_head());
        assert!(queued.is_empty());
    }
    let list = |f: &Fleet| {
        f.etcd
            .dump()
            .into_iter()
            .find(|(k, _)| k == "bffgate/ring_head")
            .map(|(_, v)| String::from_utf8(v).unwrap())
    };
    assert_eq!(list(&f).as_deref(), Some("k1"));
    // A release: a new first key (the old one still verifying), revoke_on_key_change on.
    let rotated = |revoke: bool| {
        let mut raw = demo_config();
        raw["store"] = json!({"backend": "etcd", "max_sessions": 64,
                              "etcd": {"cluster": ETCD, "timeout_ms": 300, "cache_ttl_ms": CACHE_TTL_MS}});
        raw["cookie"]["revoke_on_key_change"] = json!(revoke);
        let secrets = |name: &str| match name {
            "BFFGATE_COOKIE_KEYS" => Some(format!(
                "k9:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY,{K1}"
            )),
            "BFFGATE_STORE_KEYS" => Some(STORE_KEYS.to_string()),
            other => secrets_with(K1)(other),
        };
        Config::from_json(raw.to_string().as_bytes(), &secrets).unwrap()
    };
    for i in [A, B] {
        f.envoys[i].cfg = rotated(true);
    }
    let (mut queued, last) = drive(&mut f, B, |e| e.fleet_ring_head());
    assert_eq!(
        reply(last.unwrap()).status,
        202,
        "the revoke-all ran to its end"
    );
    assert_eq!(list(&f).as_deref(), Some("k1 k9"));
    queued.sort();
    refresh.sort();
    assert_eq!(queued, refresh, "every grant of the fleet");
    assert!(!f
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/s/")));
    // The other Envoy finds the key listed: nothing more (once).
    let (again, _) = drive(&mut f, A, |e| e.fleet_ring_head());
    assert!(again.is_empty());
    f.advance_ms(CACHE_TTL_MS + 1);
    for (i, b) in browsers.iter().enumerate() {
        assert_error(&reply(f.request(i % 2, &orders(b))), 401, "unauthenticated");
    }
    // Without the setting a new key is only noted.
    let mut g = Fleet::new("fail_closed");
    let mut b = Browser::default();
    g.sign_in(&mut b, A, A);
    drive(&mut g, A, |e| e.fleet_ring_head());
    g.envoys[A].cfg = rotated(false);
    let (queued, _) = drive(&mut g, A, |e| e.fleet_ring_head());
    assert!(queued.is_empty());
    assert!(g
        .etcd
        .dump()
        .iter()
        .any(|(k, _)| k.starts_with("bffgate/s/")));
    assert!(
        forward(g.request(A, &orders(&b))).0.is_some(),
        "the session lives on"
    );
}
