//! A network that drops UDP: the node reaches the server over TCP (QUIC over a
//! framed TCP link), registers, and talks to a peer through the relay, which
//! forwards between its TCP link and the peer's UDP. Real processes, a real
//! kernel firewall dropping every UDP datagram from alice's LAN.

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

#[test]
fn a_node_behind_a_udp_blocking_firewall_registers_and_chats_over_tcp() {
    let Some(mut lab) =
        require_or_skip("a_node_behind_a_udp_blocking_firewall_registers_and_chats_over_tcp")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (ah, ar) = lab.add_peer("alice", NatKind::UdpBlocked).unwrap();
    let wan = ar.unwrap().wan().to_string();
    let (bh, _) = lab.add_peer("bob", NatKind::PortRestricted).unwrap();

    let mut alice = LabNode::up(&ah, dir.path(), &url, "alice");
    alice.proc.expect_line("reaching the server over TCP");
    let mut bob = LabNode::up(&bh, dir.path(), &url, "bob");
    let status = json(&alice.home, &["status"]);
    assert_eq!(status["server_connected"], true, "{status}");
    assert_eq!(
        status["public_addr"].as_str().unwrap().split(':').next(),
        Some(wan.as_str()),
        "the server tells alice her real public address, not the link's: {status}"
    );

    // Both ways: alice asks bob, then bob writes back.
    alice.link(&mut bob);
    alice.say(&mut bob, "hello from behind a firewall that drops UDP");
    bob.say(&mut alice, "got it, through the relay");
    let peers = json(&alice.home, &["peers"]);
    assert_eq!(
        peer(&peers, "bob").unwrap()["connection"],
        "relayed",
        "{peers}"
    );

    // burrow nat explains instead of testing what can't be tested.
    let (ok, _, err) = run(&alice.home, &["nat"]);
    assert!(!ok && err.contains("drop UDP"), "{err}");

    // The link stays up: a message a few seconds later still arrives.
    std::thread::sleep(Duration::from_secs(3));
    bob.say(&mut alice, "still there?");
    alice.proc.terminate();
    bob.proc.terminate();
    assert!(server.terminate().success());
}
