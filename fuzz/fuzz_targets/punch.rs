//! Punch probes fed to a live punch session, from any address.
#![no_main]
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_proto::punch::{PunchConfig, PunchSession, PunchTicket, Role};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let ticket = PunchTicket {
        session: [7; 16],
        secret: [9; 32],
    };
    let peer: SocketAddr = "203.0.113.7:4000".parse().unwrap();
    let mut s = PunchSession::new(
        now,
        Role::Acceptor,
        ticket,
        &[peer],
        PunchConfig::default(),
        1,
    );
    let _ = burrow_proto::punch::session_of(data);
    for (i, chunk) in data.chunks(64).enumerate() {
        let from: SocketAddr = if i % 2 == 0 {
            peer
        } else {
            "198.51.100.1:9".parse().unwrap()
        };
        let t = now + Duration::from_millis(i as u64);
        s.handle_datagram(t, from, chunk);
        while s.poll_transmit(t).is_some() {}
        while s.poll_event().is_some() {}
    }
});
