//! Chat frames, as a node reads them from a peer.
#![no_main]
use burrow_proto::chat::{ChatFrame, MAX_FRAME, VERSION};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = burrow_proto::frame::decode::<ChatFrame>(VERSION, data, MAX_FRAME);
});
