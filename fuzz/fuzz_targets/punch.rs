//! Punch probes fed to a live punch session, from any address.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::punch(data));
