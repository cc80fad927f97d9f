//! Mesh frames (gossip, reconciliation, clock probes, introductions), with the
//! limits check a node applies to each.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::mesh(data));
