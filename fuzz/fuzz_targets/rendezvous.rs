//! Node ↔ server control frames, as the server and a node read them.
#![no_main]
use burrow_proto::frame::decode;
use burrow_proto::rendezvous::{ClientMsg, ServerMsg, MAX_CLIENT_FRAME, MAX_FRAME, VERSION};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = decode::<ClientMsg>(VERSION, data, MAX_CLIENT_FRAME);
    let _ = decode::<ServerMsg>(VERSION, data, MAX_FRAME);
});
