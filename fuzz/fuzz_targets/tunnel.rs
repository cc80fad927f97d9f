//! Tunnel frames and datagrams, as a node reads them from a peer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::tunnel(data));
