//! `redirect::sanitize_return_to`: the output is `/` or a local path (starts with `/`, not `//`
//! or `/\`), printable ASCII, still local after one more percent-decoding, with no dot segment
//! and none that resolves off-site or above the root in its decoded forms, and either `/`, the
//! input unchanged, or (only for an input with dot segments) the input with them resolved. The same holds through `/auth/login?return_to=...` (the stored target of a
//! login, as the callback would redirect to it).
#![no_main]

use bffgate::redirect::sanitize_return_to;
use bffgate_fuzz::{assert_return_to_local, has_dot_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let out = sanitize_return_to(Some(s));
    assert_return_to_local(&out);
    assert!(
        out == "/" || out == s || has_dot_segment(s),
        "the input was rewritten, not kept or replaced: {s:?} -> {out:?}"
    );
    // Idempotent.
    assert_eq!(sanitize_return_to(Some(&out)), out);
    // What the login endpoint gets after the query is decoded (form decoding: `+` is a space).
    let q = format!("return_to={s}");
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        if k == "return_to" {
            assert_return_to_local(&sanitize_return_to(Some(&v)));
        }
    }
});
