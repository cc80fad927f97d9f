//! Relay datagrams, as the server and a node read them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = burrow_proto::relay::parse(data);
});
