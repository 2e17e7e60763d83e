//! The fixture `tests/integration/wasm-fast-path.test.mjs` hands to the built `.wasm`
//! (`scripts/wasm-profile.mjs`): the native core bench's signed-in session
//! (`bffgate::testkit::fast_path`). Checked here natively first, so that a request the module
//! does not forward on its fast path is the module's fault, not the fixture's. With
//! `BFFGATE_WASM_FIXTURE=<file>` the test also writes it there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bffgate::engine::{CookieEdit, Engine, Step};
use bffgate::testkit::fast_path::{config, wasm_fixture, COOKIE, NOW};
use bffgate::testkit::TestRandom;

#[test]
fn the_fixture_request_takes_the_fast_path_and_is_written_on_request() {
    let (fixture, mut store, req) = wasm_fixture();
    let cfg = config();
    let mut rng = TestRandom(1);
    let mut e = Engine::new(&cfg, NOW + 1, &mut rng, &mut store);
    let step = e.on_request(&req);
    assert_eq!(e.fast_path.map(|r| r.is_ok()), Some(true), "fast path");
    match step {
        Step::Forward {
            authorization: Some(t),
            cookie: CookieEdit::Set(rest),
        } => {
            assert_eq!(t.expose(), fixture["token"].as_str().unwrap());
            assert_eq!(rest, "theme=dark", "only bffgate's cookie is stripped");
            assert!(!rest.contains(COOKIE));
        }
        other => panic!("expected a forward with a token and the site cookie kept, got {other:?}"),
    }
    // The headers the module will see carry this request's cookie and path.
    let headers = fixture["headers"].as_array().unwrap();
    let get = |n: &str| {
        headers
            .iter()
            .find(|h| h[0] == n)
            .and_then(|h| h[1].as_str())
            .unwrap()
            .to_string()
    };
    assert_eq!(Some(get("cookie")), req.cookie);
    assert_eq!(get(":path"), req.path);
    assert!(fixture["shared_data"].as_object().unwrap().len() > 1);
    if let Some(file) = std::env::var_os("BFFGATE_WASM_FIXTURE") {
        std::fs::write(&file, serde_json::to_vec(&fixture).unwrap()).unwrap();
    }
}
