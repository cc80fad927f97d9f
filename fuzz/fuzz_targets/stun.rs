//! STUN datagrams, as the server (requests) and a node (responses) read them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if burrow_proto::stun::looks_like_stun(data) {
        let _ = burrow_proto::stun::parse_request(data);
        let _ = burrow_proto::stun::parse_response(data);
    }
});
