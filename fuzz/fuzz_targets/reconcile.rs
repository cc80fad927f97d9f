//! Reconciliation messages from a peer, answered by a node holding a few posts.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| burrow_fuzz::reconcile(data));
