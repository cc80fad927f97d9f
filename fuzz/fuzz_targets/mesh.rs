//! Mesh frames (gossip, reconciliation, clock probes, introductions), with the
//! limits check a node applies to each.
#![no_main]
use burrow_proto::mesh::{MeshFrame, MAX_FRAME, VERSION};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(f) = burrow_proto::frame::decode::<MeshFrame>(VERSION, data, MAX_FRAME) {
        let _ = f.check();
    }
});
