//! Reconciliation messages from a peer, answered by a node holding a few posts.
#![no_main]
use burrow_proto::forum::{Hlc, PostId};
use burrow_proto::reconcile::Reconciler;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let items = (0..16u64).map(|i| (Hlc(i << 16), PostId([i as u8; 32])));
    if let Ok(mut r) = Reconciler::new(items) {
        let _ = r.respond(data);
    }
});
