//! Port mapping through a real router daemon: `miniupnpd` on the lab's
//! routers, burrow's node asking it over PCP/NAT-PMP or UPnP, real processes.
//!
//! Two symmetric NATs with random ports are the case nothing else gets
//! through (birthday probing needs one side to keep its port). With a port
//! mapped on one side, the other side's probes reach it, and the link goes
//! direct. The lab's public segment is on a non-reserved range
//! (`burrow_lab::ROUTABLE_NET`), because miniupnpd refuses to map onto a
//! reserved WAN address; the lab has no link to the host's network, so those
//! addresses never leave it.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip_with, Lab, NatKind, ROUTABLE_NET};
use common::proc::*;

/// Mapping takes a moment after `up` (it runs in the background).
const MAP_WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_mapped_port_takes_two_symmetric_nats_direct_and_goes_away_on_exit() {
    let Some(mut lab) = require_or_skip_with(
        "a_mapped_port_takes_two_symmetric_nats_direct_and_goes_away_on_exit",
        || {
            Lab::check_miniupnpd()?;
            Lab::with_public_net(ROUTABLE_NET)
        },
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    // alice's router speaks UPnP only; carol's also PCP and NAT-PMP; bob's
    // nothing (a plain symmetric NAT).
    let (ah, ar) = lab.add_peer("alice", NatKind::Symmetric).unwrap();
    let (ch, cr) = lab.add_peer("carol", NatKind::Symmetric).unwrap();
    let (bh, _) = lab.add_peer("bob", NatKind::Symmetric).unwrap();
    let (ar, cr) = (ar.unwrap(), cr.unwrap());
    lab.run_miniupnpd(&ar, false).unwrap();
    lab.run_miniupnpd(&cr, true).unwrap();

    let mut alice = LabNode::up(&ah, dir.path(), &url, "alice");
    let mut carol = LabNode::up(&ch, dir.path(), &url, "carol");
    let mut bob = LabNode::up(&bh, dir.path(), &url, "bob");

    let mapped = |node: &LabNode, want: &str, router: &burrow_lab::Router| {
        let v = poll_json(&node.home, &["nat"], MAP_WAIT, |v| {
            v["port_mapping"].is_string()
        })
        .unwrap_or_else(|| panic!("{}: no port mapping within {MAP_WAIT:?}", node.name));
        println!("{}: {}", node.name, v["summary"]);
        assert_eq!(v["port_mapping"], want, "{}: {v}", node.name);
        let addr = v["mapped_addr"].as_str().unwrap().to_string();
        assert!(
            addr.starts_with(&format!("{}:", router.wan())),
            "{}: mapped on the router's WAN address: {addr}",
            node.name
        );
        addr
    };
    let alice_mapped = mapped(&alice, "upnp", &ar);
    let carol_mapped = mapped(&carol, "pcp", &cr);
    let (ok, out, _) = run(&bob.home, &["nat"]);
    assert!(ok && out.contains("port mapping    none"), "{out}");

    for (other, addr) in [(&mut alice, &alice_mapped), (&mut carol, &carol_mapped)] {
        bob.link(other);
        let c = bob
            .wait_path(&other.name, "direct", Duration::from_secs(12))
            .unwrap_or_else(|| panic!("bob and {} stayed relayed", other.name));
        assert_eq!(c["remote_addr"], addr.as_str(), "through the mapped port");
        let peers = json(&bob.home, &["peers"]);
        assert_eq!(
            peer(&peers, &other.name).unwrap()["method"],
            "port_mapping",
            "{peers}"
        );
        bob.say(other, "through your router's mapped port");
    }

    // On exit the node deletes its mapping: the router forwards nothing more.
    let rules = |r: &burrow_lab::Router| {
        let out = r
            .host
            .command("nft")
            .args(["list", "chain", "inet", "filter", "prerouting_miniupnpd"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).matches("dnat").count()
    };
    assert_eq!(rules(&cr), 1, "carol's mapping is on her router");
    assert!(carol.proc.terminate().success());
    assert_eq!(rules(&cr), 0, "carol's mapping is gone after she left");
    alice.proc.terminate();
    bob.proc.terminate();
    assert!(server.terminate().success());
}
