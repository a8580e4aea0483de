//! Calls `hermes::fuzz::fuzz_group`; an `Err` is a broken invariant (see its doc).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = hermes::fuzz::fuzz_group(data) {
        panic!("invariant broken: {e}");
    }
});
