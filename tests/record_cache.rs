//! The per-VM session record cache of the embedded store (`store::RecordCache`): two VMs over
//! one shared data, as two Envoy workers are. A VM serves a session from its copy only while the
//! session table shard's write count is the one it read the copy under; any write by any VM
//! (logout, revocation, eviction, renewal, a new session in the slot, the sweep) moves it on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bffgate::config::{Limits, WhenFull};
use bffgate::session::{Session, SessionId};
use bffgate::store::memory::MemoryData;
use bffgate::store::{Cas, RecordCache, SharedData, SharedStore, Store, StoreError, EPOCH_SHARDS};
use bffgate::testkit::TestRandom;
use std::cell::{Cell, RefCell};

const T0: u64 = 1_700_000_000;

/// One VM: the process's shared data and write counts, and a cache of its own.
struct Vm<'a> {
    shared: &'a RefCell<MemoryData>,
    cache: RecordCache,
    /// Reads that reached shared data.
    reads: Cell<u32>,
}

impl SharedData for Vm<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<Cas>) {
        self.reads.set(self.reads.get() + 1);
        self.shared.borrow().get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.shared.borrow_mut().set(key, value, cas)
    }
    fn epoch(&self, shard: u32) -> Option<u64> {
        self.shared.borrow().epoch(shard)
    }
    fn bump(&mut self, shard: u32) {
        self.shared.borrow_mut().bump(shard);
    }
    fn records(&self) -> Option<&RecordCache> {
        Some(&self.cache)
    }
}

fn vm(shared: &RefCell<MemoryData>) -> Vm<'_> {
    Vm {
        shared,
        cache: RecordCache::default(),
        reads: Cell::new(0),
    }
}

const LIMITS: Limits = Limits {
    max_sessions: 8,
    max_pending: 1,
    idle_s: 1800,
    when_full: WhenFull::EvictLeastRecentlyUsed,
};

fn session(sub: &str) -> Session {
    Session {
        sub: sub.to_string(),
        created: T0,
        last_seen: T0,
        expires: T0 + 3600,
        ..Session::default()
    }
}

/// The session `id` as the fast path sees it: its record, if it is still `id`'s.
fn fast_read(st: &SharedStore<&mut Vm<'_>>, id: &SessionId) -> Option<String> {
    let (raw, _) = st.get_session_raw(id)?;
    let head = bffgate::record::Head::parse(&raw)?;
    bffgate::util::ct_eq(head.owner, &id.verifier_bytes()).then(|| head.sub.to_string())
}

/// A write of the session's record by `vm` (a renewal, say): its expiry set to `exp`.
fn set_expiry(vm: &mut Vm<'_>, id: &SessionId, exp: u64) {
    let mut st = SharedStore::new(vm, LIMITS);
    let (mut s, cas) = st.get_session(id).unwrap();
    s.expires = exp;
    st.put_session(id, &s, cas).unwrap();
}

/// The expiry the fast path of `vm` reads for the session.
fn expiry_seen(vm: &mut Vm<'_>, id: &SessionId) -> u64 {
    let (raw, _) = SharedStore::new(vm, LIMITS).get_session_raw(id).unwrap();
    bffgate::record::Head::parse(&raw).unwrap().expires
}

/// A login through `vm`: a new session for `sub`.
fn login(vm: &mut Vm<'_>, sub: &str, rng: &mut TestRandom) -> SessionId {
    SharedStore::new(vm, LIMITS)
        .create_session(&session(sub), rng, T0)
        .unwrap()
        .0
}

fn setup() -> RefCell<MemoryData> {
    let shared = RefCell::new(MemoryData::default());
    let mut init = vm(&shared);
    SharedStore::new(&mut init, LIMITS).init_slots();
    shared
}

#[test]
fn a_repeated_read_is_served_from_the_copy_and_any_write_of_the_slot_ends_it() {
    let shared = setup();
    let (mut a, mut b) = (vm(&shared), vm(&shared));
    let mut rng = TestRandom(7);
    let id = login(&mut b, "alice", &mut rng);
    {
        let st = SharedStore::new(&mut a, LIMITS);
        assert_eq!(fast_read(&st, &id).as_deref(), Some("alice"));
    }
    let reads = a.reads.get();
    {
        let st = SharedStore::new(&mut a, LIMITS);
        for _ in 0..5 {
            assert_eq!(fast_read(&st, &id).as_deref(), Some("alice"));
        }
    }
    assert_eq!(a.reads.get(), reads, "repeats are served from A's copy");
    assert_eq!(a.cache.len(), 1);

    // B logs the session out: A's next read sees it gone, at once.
    SharedStore::new(&mut b, LIMITS)
        .delete_session(&id)
        .unwrap();
    assert_eq!(fast_read(&SharedStore::new(&mut a, LIMITS), &id), None);
    assert!(a.reads.get() > reads, "A read the record again");
}

#[test]
fn a_new_session_in_the_same_slot_is_never_served_under_the_old_id() {
    let shared = setup();
    let (mut a, mut b) = (vm(&shared), vm(&shared));
    let mut rng = TestRandom(11);
    let one = Limits {
        max_sessions: 1,
        ..LIMITS
    };
    let mut init = vm(&shared);
    SharedStore::new(&mut init, one).init_slots();
    let (old, _) = SharedStore::new(&mut b, one)
        .create_session(&session("alice"), &mut rng, T0)
        .unwrap();
    assert_eq!(
        fast_read(&SharedStore::new(&mut a, one), &old).as_deref(),
        Some("alice")
    );
    // The table is full: a new login evicts alice and takes her slot.
    let (new, evicted) = SharedStore::new(&mut b, one)
        .create_session(&session("mallory"), &mut rng, T0 + 5)
        .unwrap();
    assert!(evicted.is_some());
    assert_eq!(old.slot(), new.slot());
    let st = SharedStore::new(&mut a, one);
    assert_eq!(fast_read(&st, &old), None, "the old id owns nothing now");
    assert_eq!(fast_read(&st, &new).as_deref(), Some("mallory"));
}

#[test]
fn an_update_by_another_vm_is_read_again_and_its_own_writes_too() {
    let shared = setup();
    let (mut a, mut b) = (vm(&shared), vm(&shared));
    let mut rng = TestRandom(3);
    let id = login(&mut a, "alice", &mut rng);
    assert!(fast_read(&SharedStore::new(&mut a, LIMITS), &id).is_some());
    // B renews (any put): A reads the new record.
    set_expiry(&mut b, &id, T0 + 10);
    assert_eq!(expiry_seen(&mut a, &id), T0 + 10);
    // A's own write: its copy is not used either.
    set_expiry(&mut a, &id, T0 + 20);
    assert_eq!(expiry_seen(&mut a, &id), T0 + 20);
}

#[test]
fn the_sweep_and_a_revoke_all_end_copies_too() {
    let shared = setup();
    let (mut a, mut b) = (vm(&shared), vm(&shared));
    let mut rng = TestRandom(5);
    let mut ids = Vec::new();
    for n in 0..4 {
        let mut s = session(&format!("user-{n}"));
        if n == 0 {
            s.expires = T0 + 1;
        }
        ids.push(
            SharedStore::new(&mut b, LIMITS)
                .create_session(&s, &mut rng, T0)
                .unwrap()
                .0,
        );
    }
    for id in &ids {
        assert!(fast_read(&SharedStore::new(&mut a, LIMITS), id).is_some());
    }
    // The sweep on B empties the expired one.
    let (_, reclaimed) = SharedStore::new(&mut b, LIMITS).sweep(0, LIMITS.max_sessions, T0 + 2);
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(fast_read(&SharedStore::new(&mut a, LIMITS), &ids[0]), None);
    // Everything else ended at once (an operator's revoke-all).
    let ended = SharedStore::new(&mut b, LIMITS).delete_where(&|_| true);
    assert_eq!(ended.len(), 3);
    for id in &ids {
        assert_eq!(fast_read(&SharedStore::new(&mut a, LIMITS), id), None);
    }
}

#[test]
fn a_write_moves_only_its_own_shard() {
    let shared = setup();
    let mut b = vm(&shared);
    let mut rng = TestRandom(9);
    let before: Vec<u64> = (0..EPOCH_SHARDS).map(|s| b.epoch(s).unwrap()).collect();
    let id = login(&mut b, "alice", &mut rng);
    for s in 0..EPOCH_SHARDS {
        let moved = b.epoch(s).unwrap() > before[s as usize];
        assert_eq!(moved, s == id.slot() % EPOCH_SHARDS, "shard {s}");
    }
}

#[test]
fn without_write_counts_nothing_is_cached() {
    let shared = setup();
    shared.borrow_mut().no_epochs = true;
    let (mut a, mut b) = (vm(&shared), vm(&shared));
    let mut rng = TestRandom(13);
    let id = login(&mut b, "alice", &mut rng);
    for _ in 0..3 {
        assert!(fast_read(&SharedStore::new(&mut a, LIMITS), &id).is_some());
    }
    assert_eq!(a.reads.get(), 3, "every read reached shared data");
    assert!(a.cache.is_empty());
}
