//! Files protocol messages, as a provider (requests) and a downloader
//! (responses) read them, with the range checks a provider applies.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::files(data));
