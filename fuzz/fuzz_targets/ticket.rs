//! Serverless tickets and server addresses, as people paste them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::ticket(data));
