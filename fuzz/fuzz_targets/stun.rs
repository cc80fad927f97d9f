//! STUN datagrams, as the server (requests) and a node (responses) read them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::stun(data));
