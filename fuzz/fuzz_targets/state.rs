//! The login `state`: `Store::take_pending` on arbitrary strings, over the in-memory store with
//! logins pending. Invariants: no panic; only an issued state with its own flow cookie's hash
//! finds its login, exactly once; a miss, or the right state with another flow cookie, consumes
//! nothing.
#![no_main]

use bffgate::config::{Limits, WhenFull};
use bffgate::secret::Secret;
use bffgate::store::{PendingLogin, Store};
use bffgate::testkit::memory_store;
use bffgate::testkit::TestRandom;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let attempt = String::from_utf8_lossy(data);
    let mut st = memory_store(Limits {
        max_sessions: 2,
        max_pending: 4,
        idle_s: 100,
        when_full: WhenFull::Refuse,
    });
    let mut rng = TestRandom(0x57a7e);
    let mut states = Vec::new();
    for i in 0..3u64 {
        let p = PendingLogin {
            verifier: Secret::new(format!("verifier-{i}")),
            nonce: format!("n{i}"),
            return_to: "/".into(),
            flow_hash: format!("h{i}"),
            expires: 1000,
            state_hash: String::new(),
            step_up: Default::default(),
            binding: None,
        };
        match st.create_pending(&p, &mut rng, 1) {
            Ok(s) => states.push(s),
            Err(e) => panic!("create_pending: {e:?}"),
        }
    }
    // The attempt, and the attempt with an issued state's slot glued in front.
    let glued = format!(
        "{}{attempt}",
        states
            .first()
            .map_or("", |s| s.split('.').next().unwrap_or(""))
    );
    for a in [attempt.as_ref(), glued.as_str()] {
        let issued = states.iter().position(|s| s == a);
        // With another browser's flow cookie first: nothing is found and nothing consumed.
        assert!(
            st.take_pending(a, "not-the-flow-cookie").is_none(),
            "a login was taken without its flow cookie: {a:?}"
        );
        let flow = format!("h{}", issued.unwrap_or(0));
        match (st.take_pending(a, &flow), issued) {
            (Some(p), Some(i)) => {
                assert_eq!(p.nonce, format!("n{i}"));
                assert!(
                    st.take_pending(a, &flow).is_none(),
                    "a state was taken twice"
                );
            }
            (Some(_), None) => panic!("a state that was never issued found a login: {a:?}"),
            (None, Some(_)) => panic!("an issued state did not find its login: {a:?}"),
            (None, None) => {}
        }
    }
    // Misses consumed nothing: every state not presented still works, once.
    for (i, s) in states.iter().enumerate() {
        if s.as_str() != attempt.as_ref() && s.as_str() != glued.as_str() {
            assert!(
                st.take_pending(s, &format!("h{i}")).is_some(),
                "a failed attempt consumed another login"
            );
        }
    }
});
