//! The bodies of burrow's fuzz targets: one function per target, each
//! feeding arbitrary bytes to a decoder that reads network input.
//!
//! The targets in `fuzz_targets/` are one line each that call these, and
//! burrow-proto's `tests/fuzz_bodies.rs` compiles this file into the
//! workspace (by `#[path]`) and runs every body on random inputs. So an API
//! change that breaks a target fails `cargo clippy` and `cargo test` on
//! stable, though the fuzzer itself needs nightly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_proto::frame::decode;

/// Node ↔ server control frames, as the server and a node read them.
pub fn rendezvous(data: &[u8]) {
    use burrow_proto::rendezvous::{ClientMsg, ServerMsg, MAX_CLIENT_FRAME, MAX_FRAME, VERSION};
    let _ = decode::<ClientMsg>(VERSION, data, MAX_CLIENT_FRAME);
    let _ = decode::<ServerMsg>(VERSION, data, MAX_FRAME);
}

/// STUN datagrams, as the server (requests) and a node (responses) read them.
pub fn stun(data: &[u8]) {
    if burrow_proto::stun::looks_like_stun(data) {
        let _ = burrow_proto::stun::parse_request(data);
        let _ = burrow_proto::stun::parse_response(data);
    }
}

/// Punch probes fed to a live punch session, from the peer's address and a
/// stranger's, on the main socket and a birthday socket.
pub fn punch(data: &[u8]) {
    use burrow_proto::punch::{Local, PunchConfig, PunchSession, PunchTicket, Role};
    let now = Instant::now();
    let ticket = PunchTicket {
        session: [7; 16],
        secret: [9; 32],
    };
    let peer: SocketAddr = SocketAddr::from(([203, 0, 113, 7], 4000));
    let stranger: SocketAddr = SocketAddr::from(([198, 51, 100, 1], 9));
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
        let from = if i % 2 == 0 { peer } else { stranger };
        let local = if i % 3 == 0 { Local::MAIN } else { Local(1) };
        let t = now + Duration::from_millis(i as u64);
        s.handle_datagram(t, local, from, chunk);
        while s.poll_transmit(t).is_some() {}
        while s.poll_event().is_some() {}
    }
}

/// Relay datagrams, as the server and a node read them.
pub fn relay(data: &[u8]) {
    let _ = burrow_proto::relay::parse(data);
}

/// Serverless tickets and server addresses, ids and names, as people paste
/// them.
pub fn ticket(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<burrow_proto::mesh::Ticket>();
        let _ = s.parse::<burrow_proto::ServerAddr>();
        let _ = s.parse::<burrow_proto::NodeId>();
        let _ = s.parse::<burrow_proto::Name>();
    }
}

/// Chat frames, as a node reads them from a peer.
pub fn chat(data: &[u8]) {
    use burrow_proto::chat::{ChatFrame, MAX_FRAME, VERSION};
    let _ = decode::<ChatFrame>(VERSION, data, MAX_FRAME);
}

/// Tunnel frames, as either end reads them from a stream, and datagrams as
/// they come in (a flow id, then the payload).
pub fn tunnel(data: &[u8]) {
    use burrow_proto::tunnel::{decode_datagram, TunnelFrame, MAX_FRAME, VERSION};
    let _ = decode::<TunnelFrame>(VERSION, data, MAX_FRAME);
    if let Some((flow, payload)) = decode_datagram(data) {
        assert!(flow <= burrow_proto::tunnel::MAX_FLOW);
        assert!(payload.len() < data.len());
    }
}

/// Files protocol messages, as a provider (requests) and a downloader
/// (responses) read them, with the range checks a provider applies, and
/// names as the downloader turns them into file names.
pub fn files(data: &[u8]) {
    use burrow_proto::files::{FilesRequest, FilesResponse, MAX_FRAME, VERSION};
    if let Ok(FilesRequest::Get { ranges, .. }) = decode::<FilesRequest>(VERSION, data, MAX_FRAME) {
        let _ = burrow_proto::files::ranges_valid(&ranges);
    }
    let _ = decode::<FilesResponse>(VERSION, data, MAX_FRAME);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = burrow_proto::files::safe_file_name(s);
        let _ = s.parse::<burrow_proto::ShareName>();
    }
}

/// Mesh frames (gossip, reconciliation, clock probes, introductions), with
/// the limits check a node applies to each.
pub fn mesh(data: &[u8]) {
    use burrow_proto::mesh::{MeshFrame, MAX_FRAME, VERSION};
    if let Ok(f) = decode::<MeshFrame>(VERSION, data, MAX_FRAME) {
        let _ = f.check();
    }
}

/// Forum posts as stored and gossiped: decoded, then verified.
pub fn post(data: &[u8]) {
    if let Ok(p) = postcard::from_bytes::<burrow_proto::forum::Post>(data) {
        let _ = p.verify(1_800_000_000_000);
    }
}

/// Reconciliation messages from a peer, answered by a node holding a few
/// posts.
pub fn reconcile(data: &[u8]) {
    use burrow_proto::forum::{Hlc, PostId};
    use burrow_proto::reconcile::Reconciler;
    let items = (0..16u64).map(|i| (Hlc(i << 16), PostId([i as u8; 32])));
    if let Ok(mut r) = Reconciler::new(items) {
        let _ = r.respond(data);
    }
}
