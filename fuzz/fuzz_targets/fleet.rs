//! The fleet store's parsing of etcd answers (`src/store/etcd.rs`) and the at-rest envelope
//! (`src/vault.rs`). etcd is a network peer: whatever it (or something in its place) answers,
//! the store must not panic, must not loop, and must not accept a session or a pending login
//! whose envelope it did not seal. The first byte picks what is fed the rest of the input.
#![no_main]

use bffgate::callout::CallResult;
use bffgate::config::Config;
use bffgate::session::{Session, SessionId};
use bffgate::store::Store;
use bffgate::store::{EtcdStore, Flush, RemoteSync};
use bffgate::testkit::MemoryData;
use bffgate::testkit::TestRandom;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::sync::OnceLock;

const T0_MS: u64 = 1_750_000_000_000;

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        let mut raw = bffgate::testkit::demo_json();
        raw["store"] = json!({"backend": "etcd", "max_sessions": 8,
                              "etcd": {"cluster": "bffgate_etcd"}});
        let secrets = |n: &str| match n {
            "BFFGATE_CLIENT_SECRET" => Some("fuzz-secret".to_string()),
            "BFFGATE_COOKIE_KEYS" => Some(bffgate_fuzz::KEYS.to_string()),
            "BFFGATE_STORE_KEYS" => {
                Some("s1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY".to_string())
            }
            _ => None,
        };
        Config::from_json(raw.to_string().as_bytes(), &secrets).expect("fleet config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let cfg = config();
    let etcd = cfg.etcd.as_ref().expect("etcd");
    let mut shm = MemoryData::default();
    let mut store = EtcdStore::new(&mut shm, cfg, etcd, T0_MS, TestRandom(1));
    store.init_slots();
    let id = SessionId::generate(&mut TestRandom(2), 3);
    let answer = CallResult::Response {
        status: 200,
        body: rest.to_vec(),
    };
    match pick % 5 {
        0 => {
            // A session read: nothing the fuzzer writes opens under our key.
            store.absorb(&id, &answer);
            let _ = store.state_of(&id);
            let _ = store.stale_for_wait(&id);
            assert!(
                store.get_session(&id).is_none(),
                "a forged record was accepted"
            );
            assert!(store.get_session_raw(&id).is_none());
        }
        1 => {
            store.absorb_pending("f.state", "flow", &answer);
            assert!(
                store.take_pending("f.state", "flow").is_none(),
                "a forged login was accepted"
            );
        }
        2 => {
            // Flush a login and an update, every etcd answer being the fuzz input.
            let s = Session {
                sub: "sub".into(),
                expires: T0_MS / 1000 + 3600,
                last_seen: T0_MS / 1000,
                ..Session::default()
            };
            let Ok((sid, _)) = store.create_session(&s, &mut TestRandom(3), T0_MS / 1000) else {
                return;
            };
            if let Some((mut got, cas)) = store.get_session(&sid) {
                got.refreshing_until = T0_MS / 1000 + 5;
                let _ = store.put_session(&sid, &got, cas);
            }
            let _ = store.delete_session(&sid);
            store.revoke_everywhere(Some("sub"), Some("sid"));
            let Some(mut ob) = store.take_outbox() else {
                return;
            };
            let mut flush = store.advance(&mut ob, None);
            let mut n = 0;
            while let Flush::Call(_) = flush {
                n += 1;
                assert!(n < 64, "a flush that does not end");
                flush = store.advance(&mut ob, Some(&answer));
            }
        }
        3 => {
            // A page of an operator's revoke-all: whatever etcd answers, no session the store
            // did not seal comes out, and a next page only ever starts after a key it named.
            let _ = store.start_revoke_all();
            if let Ok(page) = store.revoke_page(&answer) {
                assert!(page.sessions.is_empty(), "a forged record was opened");
                if let Some(after) = &page.next {
                    let _ = store.next_revoke_page(after);
                }
            }
        }
        _ => {
            assert!(
                etcd.keys.open("bffgate/s/x", "h", rest).is_err(),
                "a forged envelope opened"
            );
            assert!(
                etcd.keys.open_any("bffgate/s/x", rest).is_err(),
                "a forged envelope opened for its own handle"
            );
        }
    }
});
