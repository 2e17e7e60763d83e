//! Step-up input from outside (RFC 9470): an upstream's `WWW-Authenticate` values
//! (`policy::StepUp::from_challenge`, one value per input line), the `acr_values` / `max_age`
//! of `/auth/login` (`StepUp::parse`), and the answer built from them
//! (`engine::upstream_step_up_reply`). Invariants: no panic; whatever is kept is valid as
//! `StepUp::parse` defines it (tokens without spaces or quotes, a bounded `max_age`), so nothing
//! unvalidated is ever echoed; the answer is the contract's `401
//! insufficient_user_authentication` JSON with a local `login_url`, and its challenge header
//! has balanced quotes.
#![no_main]

use bffgate::policy::StepUp;
use bffgate_fuzz::demo_world;
use libfuzzer_sys::fuzz_target;

fn assert_valid(s: &StepUp) {
    if let Some(a) = &s.acr_values {
        assert!(!a.is_empty() && a.split(' ').count() <= 16, "{a:?}");
        for v in a.split(' ') {
            assert!(!v.is_empty() && v.len() <= 128, "{a:?}");
            assert!(v.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\'), "{a:?}");
        }
    }
    if let Some(m) = s.max_age {
        assert!(m <= 366 * 86_400, "{m}");
    }
    assert_eq!(StepUp::parse(s.acr_values.as_deref(), s.max_age.map(|m| m.to_string()).as_deref()).as_ref(), Ok(s));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    if let Some(s) = StepUp::from_challenge(lines.iter().copied()) {
        assert_valid(&s);
        let cfg = &demo_world().cfg;
        let path = lines.first().copied().unwrap_or("/");
        let r = bffgate::engine::upstream_step_up_reply(cfg, path, &s);
        assert_eq!(r.status, 401);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(body["error"], "insufficient_user_authentication");
        let url = body["login_url"].as_str().expect("login_url");
        assert!(url.starts_with("/auth/login?return_to="), "{url}");
        let challenge = r
            .headers
            .iter()
            .find(|(k, _)| k == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .expect("a challenge");
        assert_eq!(challenge.matches('"').count() % 2, 0, "{challenge}");
        assert!(challenge.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{challenge}");
    }
    // The same text as the login's parameters.
    let (a, m) = text.split_once('&').unwrap_or((text, ""));
    if let Ok(s) = StepUp::parse(Some(a), Some(m)) {
        assert_valid(&s);
    }
});
