//! Sealed cookie values: `seal::KeyRing::open` on arbitrary values and cookie names.
//! Invariants: no panic; anything accepted is exactly what the ring would have issued for that
//! payload (so no second encoding of a value verifies: no re-split fields, no padding, no
//! non-canonical base64); a value sealed for one name never opens under another.
#![no_main]

use bffgate::seal::KeyRing;
use bffgate::util::b64url_decode;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rings() -> &'static (KeyRing, KeyRing) {
    static R: OnceLock<(KeyRing, KeyRing)> = OnceLock::new();
    R.get_or_init(|| {
        let k1 = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
        let k0 = "k0:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A";
        let Ok(a) = KeyRing::parse(k1) else {
            panic!("ring")
        };
        let Ok(b) = KeyRing::parse(&format!("{k1},{k0}")) else {
            panic!("ring")
        };
        (a, b)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (one, both) = rings();
    // `name\nvalue`, or the whole input as a value for the session cookie.
    let (name, value) = s.split_once('\n').unwrap_or(("__Host-bff-session", s));
    for ring in [one, both] {
        if let Ok(payload) = ring.open(name, value) {
            let kid = value.split('.').next().unwrap_or_default();
            // Re-seal under the key that verified it: must give back the very same string.
            let again = if kid == "k1" {
                one.seal(name, &payload)
            } else {
                let Ok(k0) = KeyRing::parse("k0:ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A")
                else {
                    panic!("ring")
                };
                k0.seal(name, &payload)
            };
            assert_eq!(again, value, "a second encoding of a sealed value verifies");
            assert!(ring.open(&format!("{name}x"), value).is_err());
        }
    }
    // Whatever we seal opens, with either ring, and only under its name.
    let payload = b64url_decode(value).unwrap_or_else(|| data.to_vec());
    let sealed = one.seal(name, &payload);
    if sealed.len() <= bffgate::seal::MAX_VALUE_LEN {
        assert_eq!(both.open(name, &sealed).ok(), Some(payload.clone()));
        assert!(both.open("__Host-bff-other", &sealed).is_err() || name == "__Host-bff-other");
    }
    // Key ring specs from the environment variable are parsed without panicking either.
    if let Ok(r) = KeyRing::parse(s) {
        assert!(bffgate::keyspec::valid_kid(r.current_kid()));
        let shown = format!("{r:?}");
        let kids: Vec<&str> = s
            .split(',')
            .filter_map(|e| e.trim().split_once(':'))
            .map(|(k, _)| k)
            .collect();
        for (_, key) in s.split(',').filter_map(|e| e.trim().split_once(':')) {
            if key.len() >= 8 && !kids.iter().any(|k| k.contains(key)) {
                assert!(!shown.contains(key), "key material in Debug: {shown}");
            }
        }
    }
});
