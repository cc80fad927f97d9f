//! Forum posts as stored and gossiped: decoded, then verified.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = postcard::from_bytes::<burrow_proto::forum::Post>(data) {
        let _ = p.verify(1_800_000_000_000);
    }
});
