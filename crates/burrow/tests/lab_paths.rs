//! Links through the lab's kernel NATs when the network misbehaves: peers on one
//! LAN, double NAT, packet loss, NAT mappings expiring, a cut uplink, the server
//! restarting, and ICMP errors from a peer that is gone. Real `burrow` processes,
//! driven through the CLI, as a person would see them.
//!
//! Runs as root with iproute2, nftables and conntrack; skips with a printed reason
//! elsewhere, except under `BURROW_LAB=required` (CI), where it fails.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

/// Long enough for a punch (10 s deadline) or a re-punch after a path died.
const RECOVER: Duration = Duration::from_secs(20);

#[test]
fn two_peers_behind_one_nat_meet_on_their_lan() {
    let Some(mut lab) = require_or_skip("two_peers_behind_one_nat_meet_on_their_lan") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, router) = lab.add_peer("ann", NatKind::PortRestricted).unwrap();
    let h2 = lab
        .add_peer_behind(router.as_ref().unwrap(), "ben")
        .unwrap();
    let mut ann = LabNode::up(&h1, dir.path(), &url, "ann");
    let mut ben = LabNode::up(&h2, dir.path(), &url, "ben");
    ann.link(&mut ben);
    let c = ann
        .wait_path("ben", "direct", RECOVER)
        .expect("peers on one LAN go direct");
    // The router doesn't hairpin: only the LAN address works.
    assert!(
        c["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", h2.addr)),
        "{c}"
    );
    ann.say(&mut ben, "same room");
    ben.say(&mut ann, "hello neighbour");
    assert!(server.terminate().success());
}

#[test]
fn peers_behind_double_nat_go_direct() {
    double_nat_goes_direct("peers_behind_double_nat_go_direct", true);
}

/// The harder double NAT: neither the home routers nor the carrier NATs drop
/// unsolicited packets, so an opening probe must pass both of ours (TTL 3,
/// from the measured depth) and die before theirs.
#[test]
fn peers_behind_double_nat_without_router_firewalls_go_direct() {
    double_nat_goes_direct("peers_behind_double_nat_without_router_firewalls", false);
}

/// Two peers, each behind a home router behind a carrier NAT (all
/// endpoint-independent), link, chat both ways and go direct.
fn double_nat_goes_direct(test: &str, firewall: bool) {
    let Some(mut lab) = require_or_skip(test) else {
        return;
    };
    lab.set_router_firewall(firewall);
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, _, _) = lab
        .add_double_nat_peer("cat", NatKind::PortRestricted)
        .unwrap();
    let (h2, _, _) = lab
        .add_double_nat_peer("dan", NatKind::PortRestricted)
        .unwrap();
    let mut cat = LabNode::up(&h1, dir.path(), &url, "cat");
    let mut dan = LabNode::up(&h2, dir.path(), &url, "dan");
    // `burrow nat` counts both NATs (the opening probes' TTL is one more).
    let r = json(&cat.home, &["nat"]);
    assert_eq!(r["nat_hops"], 2, "{r}");
    cat.link(&mut dan);
    cat.say(&mut dan, "through two NATs");
    dan.say(&mut cat, "and back");
    assert!(
        cat.wait_path("dan", "direct", RECOVER).is_some(),
        "home router behind a carrier NAT, both endpoint-independent (firewall {firewall}): direct"
    );
    assert!(server.terminate().success());
}

/// `--relay-only`: the link runs through the relay, and the peer's router
/// never sees a packet from our address (the server gave the peer none of
/// them, and nobody punched). `--direct-only` between two symmetric NATs,
/// where only the relay could carry the link: it fails, and says why.
#[test]
fn relay_only_hides_our_address_and_direct_only_never_relays() {
    let Some(mut lab) =
        require_or_skip("relay_only_hides_our_address_and_direct_only_never_relays")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, r1) = lab.add_peer("ivy", NatKind::PortRestricted).unwrap();
    let (h2, r2) = lab.add_peer("jon", NatKind::PortRestricted).unwrap();
    let (ivy_wan, jon_router) = (r1.unwrap().wan(), r2.unwrap());
    let mut ivy = LabNode::up_with(&h1, dir.path(), &url, "ivy", &["--relay-only"]);
    let mut jon = LabNode::up(&h2, dir.path(), &url, "jon");
    jon.link(&mut ivy);
    jon.say(&mut ivy, "through the relay");
    ivy.say(&mut jon, "only the server knows where I am");
    // Past a punch's deadline: still relayed, on both sides.
    assert!(jon.wait_path("ivy", "direct", RECOVER).is_none());
    assert!(ivy
        .wait_path("jon", "relayed", Duration::from_secs(1))
        .is_some());
    let flows = jon_router
        .host
        .command("conntrack")
        .args(["-L", "-p", "udp"])
        .output()
        .unwrap();
    let flows = String::from_utf8_lossy(&flows.stdout);
    assert!(
        !flows.contains(&ivy_wan.to_string()),
        "jon's router saw ivy's address {ivy_wan}:\n{flows}"
    );

    let (h3, _) = lab.add_peer("kit", NatKind::Symmetric).unwrap();
    let (h4, _) = lab.add_peer("lee", NatKind::Symmetric).unwrap();
    let mut kit = LabNode::up_with(&h3, dir.path(), &url, "kit", &["--direct-only"]);
    let mut lee = LabNode::up(&h4, dir.path(), &url, "lee");
    wait_json(&kit.home, &["peers"], "lee online", |v| {
        peer(v, "lee").is_some_and(|p| p["online"] == true)
    });
    assert!(run(&kit.home, &["connect", "lee"]).0);
    lee.proc.expect_line("asks to connect");
    assert!(run(&lee.home, &["accept", "kit"]).0);
    let line = kit.proc.expect_any(
        &["connected to lee", "could not connect to lee"],
        Duration::from_secs(30),
    );
    assert!(
        line.contains("could not connect") && line.contains("--direct-only"),
        "{line}"
    );
    assert!(server.terminate().success());
}

#[test]
fn five_percent_loss_loses_no_message() {
    let Some(mut lab) = require_or_skip("five_percent_loss_loses_no_message") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, r1) = lab.add_peer("eve", NatKind::PortRestricted).unwrap();
    let (h2, r2) = lab.add_peer("fay", NatKind::PortRestricted).unwrap();
    lab.set_loss(r1.as_ref().unwrap(), 5).unwrap();
    lab.set_loss(r2.as_ref().unwrap(), 5).unwrap();
    let mut eve = LabNode::up(&h1, dir.path(), &url, "eve");
    let mut fay = LabNode::up(&h2, dir.path(), &url, "fay");
    eve.link(&mut fay);
    for i in 0..20 {
        eve.say(&mut fay, &format!("ping {i}"));
        fay.say(&mut eve, &format!("pong {i}"));
    }
    assert!(eve.wait_path("fay", "direct", RECOVER).is_some());
    assert!(server.terminate().success());
}

#[test]
fn flushed_nat_mappings_mid_conversation_recover_by_themselves() {
    let Some(mut lab) = require_or_skip("flushed_nat_mappings_recover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, r1) = lab.add_peer("gus", NatKind::PortRestricted).unwrap();
    let (h2, r2) = lab.add_peer("hal", NatKind::PortRestricted).unwrap();
    let mut gus = LabNode::up(&h1, dir.path(), &url, "gus");
    let mut hal = LabNode::up(&h2, dir.path(), &url, "hal");
    gus.link(&mut hal);
    assert!(gus.wait_path("hal", "direct", RECOVER).is_some());
    gus.say(&mut hal, "before");
    for round in 0..3 {
        lab.flush_mappings(r1.as_ref().unwrap()).unwrap();
        lab.flush_mappings(r2.as_ref().unwrap()).unwrap();
        gus.say_eventually(&mut hal, &format!("after flush {round}"), RECOVER);
        hal.say_eventually(&mut gus, &format!("still here {round}"), RECOVER);
    }
    assert!(
        gus.wait_path("hal", "direct", RECOVER).is_some(),
        "back on a direct path"
    );
    assert!(server.terminate().success());
}

#[test]
fn a_cut_uplink_restored_brings_the_link_back() {
    let Some(mut lab) = require_or_skip("a_cut_uplink_restored_brings_the_link_back") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, r1) = lab.add_peer("ida", NatKind::PortRestricted).unwrap();
    let (h2, _) = lab.add_peer("jon", NatKind::FullCone).unwrap();
    let mut ida = LabNode::up(&h1, dir.path(), &url, "ida");
    let mut jon = LabNode::up(&h2, dir.path(), &url, "jon");
    ida.link(&mut jon);
    ida.say(&mut jon, "before the cut");
    assert!(
        ida.wait_path("jon", "direct", RECOVER).is_some(),
        "direct before the cut"
    );
    let r1 = r1.unwrap();
    lab.set_uplink(&r1, false).unwrap();
    // Silent for a while (under the 30 s idle timeout): the path is lost,
    // and ida says so.
    assert!(
        ida.wait_path("jon", "relayed", Duration::from_secs(15))
            .is_some(),
        "ida notices the direct path is gone"
    );
    lab.set_uplink(&r1, true).unwrap();
    jon.say_eventually(&mut ida, "you're back", RECOVER);
    ida.say_eventually(&mut jon, "I am", RECOVER);
    assert!(ida.wait_path("jon", "direct", RECOVER).is_some());
    assert!(server.terminate().success());
}

#[test]
fn a_server_restart_keeps_direct_links_and_remakes_relayed_ones() {
    let Some(mut lab) = require_or_skip("server_restart_in_the_lab") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let srv_home = dir.path().join("srv");
    let (mut server, url) = lab_server(&lab, &srv_home, &[]);
    // kim and lou go direct; kim and max (symmetric against port-restricted)
    // are relayed.
    let (h1, _) = lab.add_peer("kim", NatKind::PortRestricted).unwrap();
    let (h2, _) = lab.add_peer("lou", NatKind::PortRestricted).unwrap();
    let (h3, _) = lab.add_peer("max", NatKind::Symmetric).unwrap();
    let mut kim = LabNode::up(&h1, dir.path(), &url, "kim");
    let mut lou = LabNode::up(&h2, dir.path(), &url, "lou");
    let mut max = LabNode::up(&h3, dir.path(), &url, "max");
    kim.link(&mut lou);
    max.link(&mut kim);
    assert!(kim.wait_path("lou", "direct", RECOVER).is_some());
    assert!(kim.wait_path("max", "relayed", RECOVER).is_some());
    max.say(&mut kim, "relayed hello");

    assert!(server.terminate().success());
    kim.say(&mut lou, "the server is down, we're not");
    let (mut server, _) = lab_server(&lab, &srv_home, &[]);
    for n in [&mut kim, &mut lou, &mut max] {
        n.proc.expect_line("registered with");
    }
    lou.say(&mut kim, "still direct");
    // The relayed link was made again (both asked) on a fresh channel.
    max.say_eventually(&mut kim, "relayed again", RECOVER);
    kim.say(&mut max, "welcome back");
    assert!(kim.wait_path("lou", "direct", RECOVER).is_some());
    assert!(server.terminate().success());
}

#[test]
fn icmp_errors_from_a_peer_that_is_gone_stop_nothing() {
    let Some(mut lab) = require_or_skip("icmp_errors_stop_nothing") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    // On the public segment, with no NAT to swallow them, packets to a closed
    // port come back as ICMP "port unreachable" to the node and the server.
    let (h1, _) = lab.add_peer("ned", NatKind::None).unwrap();
    let (h2, _) = lab.add_peer("oli", NatKind::None).unwrap();
    let (h3, _) = lab.add_peer("pat", NatKind::None).unwrap();
    let mut ned = LabNode::up(&h1, dir.path(), &url, "ned");
    let mut oli = LabNode::up(&h2, dir.path(), &url, "oli");
    let mut pat = LabNode::up(&h3, dir.path(), &url, "pat");
    ned.link(&mut oli);
    ned.say(&mut oli, "hi");
    oli.proc.child.kill().unwrap();
    // ned keeps sending to oli's closed port: each answer is an ICMP error.
    let (ok, _, _) = run(&ned.home, &["send", "oli", "are you there?"]);
    assert!(!ok, "oli is gone");
    ned.link(&mut pat);
    ned.say(&mut pat, "the socket still works");
    pat.say(&mut ned, "and the server too");
    assert!(json(&ned.home, &["status"])["server_connected"] == true);
    assert!(server.terminate().success());
}
