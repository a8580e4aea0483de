//! Calls `hermes::mailbox::fuzz_segment_recovery`; an `Err` is a broken invariant (see its doc).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = hermes::mailbox::fuzz_segment_recovery(data) {
        panic!("invariant broken: {e}");
    }
});
