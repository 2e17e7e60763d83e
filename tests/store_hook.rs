//! The store interface allows asynchronous lookups: a store whose source of truth is remote (a
//! fleet store) answers "not here, fetch it" and the engine pauses the request on a callout,
//! absorbs the answer and decides the request again. Shown with a remote store played in
//! memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use bffgate::session::{Session, SessionId};
use bffgate::store::{
    Cas, Doc, Evicted, Flush, Outbox, Outcome, PendingLogin, RemoteSync, Store, StoreError,
};
use bffgate::util::Random;
use common::*;

/// A local view (the embedded store) in front of a "remote" copy of every session.
struct Remote {
    local: SharedStore<MemoryData>,
    remote: std::collections::HashMap<u32, (Session, SessionId)>,
    fetches: usize,
}

impl Store for Remote {
    fn get_session(&self, id: &SessionId) -> Option<(Session, Cas)> {
        self.local.get_session(id)
    }
    fn get_session_raw(&self, id: &SessionId) -> Option<(Vec<u8>, Cas)> {
        self.local.get_session_raw(id)
    }
    fn put_session(&mut self, id: &SessionId, s: &Session, cas: Cas) -> Result<(), StoreError> {
        self.local.put_session(id, s, cas)
    }
    fn create_session(
        &mut self,
        s: &Session,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<(SessionId, Option<Evicted>), StoreError> {
        self.local.create_session(s, rng, now)
    }
    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.remote.remove(&id.slot());
        self.local.delete_session(id)
    }
    fn create_pending(
        &mut self,
        p: &PendingLogin,
        rng: &mut dyn Random,
        now: u64,
    ) -> Result<String, StoreError> {
        self.local.create_pending(p, rng, now)
    }
    fn take_pending(&mut self, state: &str, flow_hash: &str) -> Option<PendingLogin> {
        self.local.take_pending(state, flow_hash)
    }
    fn delete_where(&mut self, pred: &dyn Fn(&Session) -> bool) -> Vec<Session> {
        self.local.delete_where(pred)
    }
    fn doc(&self, _kind: Doc) -> Option<(Vec<u8>, u64)> {
        None
    }
    fn set_doc(&mut self, _kind: Doc, _doc: &[u8], _now: u64) {}
    fn remember_jti(&mut self, _jti: &str, _exp: u64, _now: u64) -> bool {
        true
    }
    fn count_live_of(&self, sub: &str, now: u64) -> usize {
        self.local.count_live_of(sub, now)
    }
    fn take_scan_budget(&mut self, kind: bffgate::store::ScanKind, now: u64) -> bool {
        self.local.take_scan_budget(kind, now)
    }
    fn state_of(&self, id: &SessionId) -> bffgate::store::RemoteState {
        // Missing from the local view but held remotely: fetch it first.
        if self.local.get_session(id).is_none() && self.remote.contains_key(&id.slot()) {
            bffgate::store::RemoteState::Stale
        } else {
            bffgate::store::RemoteState::Current
        }
    }
    fn remote(&mut self) -> Option<&mut dyn RemoteSync> {
        Some(self)
    }
}

impl RemoteSync for Remote {
    fn stale_for_wait(&self, _id: &SessionId) -> bool {
        false
    }
    fn fetch_session(&mut self, _id: &SessionId) -> Callout {
        Callout {
            cluster: Some("etcd".into()),
            authority: "etcd".into(),
            method: "POST",
            path: "/v3/kv/range".into(),
            headers: vec![],
            body: bffgate::secret::Secret::new("{}"),
            timeout_ms: 500,
        }
    }
    fn absorb(&mut self, id: &SessionId, result: &CallResult) {
        self.fetches += 1;
        if let (CallResult::Response { status: 200, .. }, Some((s, owner))) =
            (result, self.remote.get(&id.slot()))
        {
            // Put the fetched record into the local view, in the slot it belongs to.
            assert!(self.local.get_session(owner).is_none());
            let (_, c) = self.local.data.get(&format!("bffgate:s:{}", id.slot()));
            let mut rec = s.clone();
            rec.owner = owner.verifier();
            let v = bffgate::record::encode(&rec).unwrap();
            use bffgate::store::SharedData;
            self.local
                .data
                .set(&format!("bffgate:s:{}", id.slot()), &v, c)
                .unwrap();
        }
    }
    fn fetch_pending(&mut self, _state: &str, _flow_hash: &str) -> Callout {
        self.fetch_session(&SessionId::generate(&mut TestRandom(0), 0))
    }
    fn absorb_pending(&mut self, _state: &str, _flow_hash: &str, _result: &CallResult) {}
    fn revoke_everywhere(&mut self, _sub: Option<&str>, _sid: Option<&str>) {}
    fn start_revoke_all(&mut self) -> Callout {
        self.fetch_session(&SessionId::generate(&mut TestRandom(0), 0))
    }
    fn next_revoke_page(&mut self, _after: &str) -> Callout {
        self.start_revoke_all()
    }
    fn revoke_page(
        &mut self,
        _result: &CallResult,
    ) -> Result<bffgate::store::RevokePage, bffgate::store::StoreError> {
        Err(bffgate::store::StoreError::Unavailable)
    }
    fn read_ring_head(&mut self) -> Callout {
        self.start_revoke_all()
    }
    fn ring_head_of(
        &mut self,
        _result: &CallResult,
    ) -> Result<(Vec<String>, u64), bffgate::store::StoreError> {
        Err(bffgate::store::StoreError::Unavailable)
    }
    fn claim_ring_head(&mut self, _list: &[String], _rev: u64) -> Callout {
        self.start_revoke_all()
    }
    fn claimed(&mut self, _result: &CallResult) -> Result<bool, bffgate::store::StoreError> {
        Err(bffgate::store::StoreError::Unavailable)
    }
    fn take_outbox(&mut self) -> Option<Outbox> {
        None
    }
    fn advance(&mut self, _ob: &mut Outbox, _result: Option<&CallResult>) -> Flush {
        Flush::Done(Outcome::Ok)
    }
}

#[test]
fn a_session_missing_locally_is_fetched_from_the_remote_store_and_the_request_resumes() {
    let cfg = config(K1);
    let mut store = Remote {
        local: bffgate::testkit::memory_store(cfg.store),
        remote: Default::default(),
        fetches: 0,
    };
    let mut rng = TestRandom(7);
    let session = Session {
        sub: "alice".into(),
        created: T0,
        last_seen: T0,
        expires: T0 + 3600,
        tokens: vec![bffgate::session::AudienceToken {
            aud: ORDERS.into(),
            token: bffgate::secret::Secret::new("at-orders"),
            exp: T0 + 300,
            obtained: T0,
            scope: "orders:read".into(),
        }],
        ..Default::default()
    };
    let (id, _) = store.local.create_session(&session, &mut rng, T0).unwrap();
    // Another Envoy created it: this one's local view has lost it, the remote store has it.
    store.remote.insert(id.slot(), (session, id.clone()));
    use bffgate::store::SharedData;
    store
        .local
        .data
        .set(&format!("bffgate:s:{}", id.slot()), b"", None)
        .unwrap();

    let cookie = format!(
        "{}={}",
        SESSION,
        cfg.cookie.keys.seal(SESSION, &id.to_bytes())
    );
    let mut b = Browser::default();
    b.set(SESSION, cookie.split_once('=').unwrap().1);
    let req = orders(&b);

    let step = Engine::new(&cfg, T0 + 5, &mut rng, &mut store).on_request(&req);
    let (request, then) = call(step);
    assert_eq!(request.cluster.as_deref(), Some("etcd"));
    assert!(
        format!("{then:?}").contains("[redacted]"),
        "the paused request hides its cookie"
    );
    assert!(!format!("{then:?}").contains(&cookie));

    let step = Engine::new(&cfg, T0 + 5, &mut rng, &mut store).on_callout(then, answer(200, "{}"));
    let (auth, _) = forward(step);
    assert_eq!(auth.as_deref(), Some("at-orders"));
    assert_eq!(store.fetches, 1);
}

#[test]
fn a_session_the_remote_store_does_not_have_is_refused_after_one_fetch() {
    let cfg = config(K1);
    let mut store = Remote {
        local: bffgate::testkit::memory_store(cfg.store),
        remote: Default::default(),
        fetches: 0,
    };
    let mut rng = TestRandom(9);
    let id = SessionId::generate(&mut rng, 3);
    // The remote store claims to know slot 3, but the fetch answers nothing usable.
    store.remote.insert(
        3,
        (
            Session::default(),
            SessionId::generate(&mut rng, 3), // another session's id: the owner will not match
        ),
    );
    let mut b = Browser::default();
    b.set(SESSION, &cfg.cookie.keys.seal(SESSION, &id.to_bytes()));
    let (_, then) = call(Engine::new(&cfg, T0, &mut rng, &mut store).on_request(&orders(&b)));
    let step = Engine::new(&cfg, T0, &mut rng, &mut store).on_callout(then, answer(200, "{}"));
    assert_rejected_and_cleared(step);
    assert_eq!(store.fetches, 1, "no fetch loop");
}
