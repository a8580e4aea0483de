//! Frame splitting and decoding (and the commits frames carry): no panic,
//! and a decoded frame or commit re-encodes to the same bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hermes::wire::fuzz_decode(data);
    assert!(hermes::membership::fuzz_decode_commit(data), "commit not canonical");
});
