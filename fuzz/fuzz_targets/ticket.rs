//! Serverless tickets and server addresses, as people paste them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<burrow_proto::mesh::Ticket>();
        let _ = s.parse::<burrow_proto::ServerAddr>();
        let _ = s.parse::<burrow_proto::NodeId>();
        let _ = s.parse::<burrow_proto::Name>();
    }
});
