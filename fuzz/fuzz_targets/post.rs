//! Forum posts as stored and gossiped: decoded, then verified.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::post(data));
