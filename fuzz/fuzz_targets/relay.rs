//! Relay datagrams, as the server and a node read them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::relay(data));
