//! Networks that drop UDP: the node reaches the server over TCP (QUIC over a
//! framed TCP link), registers, and talks to a peer through the relay, which
//! forwards between its TCP link and the peer's UDP; then the two go direct
//! by TCP simultaneous open. Real processes, a real kernel firewall dropping
//! every UDP datagram from the LAN.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

#[test]
fn nodes_behind_udp_blocking_firewalls_register_relay_and_go_direct_over_tcp() {
    let Some(mut lab) = require_or_skip(
        "nodes_behind_udp_blocking_firewalls_register_relay_and_go_direct_over_tcp",
    ) else {
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

    // Once UDP punching has given up (10 s), both sides open TCP to each
    // other at once: bob's NAT filters TCP like UDP, and the SYNs cross.
    let c = alice
        .wait_path("bob", "direct", Duration::from_secs(25))
        .expect("alice and bob went direct over TCP");
    let peers = json(&alice.home, &["peers"]);
    assert_eq!(peer(&peers, "bob").unwrap()["method"], "tcp", "{peers}");
    assert!(
        c["remote_addr"].as_str().unwrap().ends_with(" over TCP"),
        "the path shows the real address, over TCP: {c}"
    );
    bob.say(&mut alice, "now straight over TCP");
    alice.say(&mut bob, "and back");

    // Two networks that both drop UDP: the same, across two NATs.
    let (dh, _) = lab.add_peer("dave", NatKind::UdpBlocked).unwrap();
    let mut dave = LabNode::up(&dh, dir.path(), &url, "dave");
    dave.link(&mut alice);
    dave.say(&mut alice, "hello from another UDP-less network");
    dave.wait_path("alice", "direct", Duration::from_secs(25))
        .expect("dave and alice went direct over TCP");
    alice.say(&mut dave, "direct over TCP, both behind firewalls");
    for n in [&mut alice, &mut bob, &mut dave] {
        n.proc.terminate();
    }
    assert!(server.terminate().success());
}
