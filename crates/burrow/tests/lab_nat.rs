//! `burrow nat` behind each of the lab's real kernel NATs: a `burrow server`
//! with two addresses on the lab's public segment, one `burrow up` per NAT kind,
//! each in its own namespace, and the diagnosis read through the CLI.
//!
//! Runs as root with iproute2, nftables and conntrack; skips with a printed reason
//! elsewhere, except under `BURROW_LAB=required` (CI), where it fails.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use burrow_lab::{require_or_skip, require_or_skip_with, Lab, NatKind, SERVER_ADDRS};
use common::proc::*;

#[test]
fn burrow_nat_names_each_kind_of_nat() {
    let Some(mut lab) = require_or_skip("burrow_nat_names_each_kind_of_nat") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let srv_home = dir.path().join("srv");
    let (mut server, url) = lab_server(
        &lab,
        &srv_home,
        &["--alt-addr", &SERVER_ADDRS[1].to_string()],
    );

    println!(
        "{:<15} {:<24} {:<28} {:<28} {:<20}",
        "NAT", "public address", "mapping", "filtering", "ports"
    );
    let mut nodes = Vec::new();
    for kind in NatKind::ALL {
        let name = format!("{kind:?}").to_lowercase();
        let (host, router) = lab.add_peer(&name, kind).unwrap();
        let home = dir.path().join(&name);
        let mut cmd = host.command(BIN);
        cmd.arg("--home")
            .arg(&home)
            .args(["up", "--server", &url, "--name", &name]);
        let mut node = Proc::spawn_command(cmd);
        node.expect_line("is up");
        let r = json(&home, &["nat"]);
        println!(
            "{:<15} {:<24} {:<28} {:<28} {:<20}",
            format!("{kind:?}"),
            r["public_addr"].as_str().unwrap(),
            r["mapping"].as_str().unwrap(),
            r["filtering"].as_str().unwrap(),
            r["ports"].as_str().unwrap_or("?")
        );
        let public_ip = r["public_addr"]
            .as_str()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .0
            .to_string();
        let expected_ip = router
            .as_ref()
            .map(|r| r.wan())
            .unwrap_or(host.addr)
            .to_string();
        assert_eq!(
            public_ip, expected_ip,
            "{kind:?}: the public address is the router's"
        );
        assert_eq!(r["behind_nat"], kind != NatKind::None, "{kind:?}: {r}");
        // One router between us and the public segment (none for None).
        let hops = if kind == NatKind::None {
            serde_json::Value::Null
        } else {
            1.into()
        };
        assert_eq!(r["nat_hops"], hops, "{kind:?}: {r}");
        let (mapping, filtering, ports) = match kind {
            NatKind::None | NatKind::FullCone => {
                ("endpoint_independent", "endpoint_independent", "preserved")
            }
            NatKind::PortRestricted => (
                "endpoint_independent",
                "address_and_port_dependent",
                "preserved",
            ),
            NatKind::Symmetric => (
                "address_and_port_dependent",
                "address_and_port_dependent",
                "random",
            ),
            NatKind::Sequential => (
                "address_and_port_dependent",
                "address_and_port_dependent",
                "sequential (step 1)",
            ),
            NatKind::UdpBlocked | NatKind::HttpsOnly | NatKind::ProxyOnly => {
                unreachable!("not in NatKind::ALL: see lab_tcp.rs")
            }
        };
        assert_eq!(r["mapping"], mapping, "{kind:?}: {r}");
        assert_eq!(r["filtering"], filtering, "{kind:?}: {r}");
        assert_eq!(r["ports"], ports, "{kind:?}: {r}");
        assert!(!r["summary"].as_str().unwrap().is_empty());
        nodes.push(node);
    }
    drop(nodes);
    assert!(server.terminate().success());
}

/// A server listening on every address of a host whose public addresses are not
/// its interface's own (here: both on its loopback, routed through a transit
/// address on `eth0`) answers STUN from the address each request reached, on
/// every port: behind a NAT that lets in only answers from where the request
/// went, `burrow nat` learns the mapping and the port allocation through
/// either address. Before, the kernel sent the answers from the transit
/// address, the NAT dropped them, and `burrow nat` failed.
#[test]
fn stun_answers_leave_from_the_address_asked_on_a_host_with_routed_addresses() {
    let test = "stun_answers_leave_from_the_address_asked_on_a_host_with_routed_addresses";
    let Some(mut lab) = require_or_skip_with(test, Lab::with_routed_server) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server_on(&lab, &dir.path().join("srv"), "0.0.0.0:7700", &[]);
    // The URL names the server's key; the host part is whichever address we ask.
    let (key_part, _) = url.rsplit_once('@').expect("a URL with a key");
    let mut nodes = Vec::new();
    for (i, addr) in SERVER_ADDRS.iter().enumerate() {
        let name = format!("n{i}");
        let (host, _router) = lab.add_peer(&name, NatKind::PortRestricted).unwrap();
        let home = dir.path().join(&name);
        let via = format!("{key_part}@{addr}:7700");
        let mut cmd = host.command(BIN);
        cmd.arg("--home")
            .arg(&home)
            .args(["up", "--server", &via, "--name", &name]);
        let mut node = Proc::spawn_command(cmd);
        node.expect_line("is up");
        let (ok, out, err) = run(&home, &["nat", "--json"]);
        assert!(ok, "burrow nat through {addr} failed: {err}");
        let r: serde_json::Value = serde_json::from_str(&out).expect("nat --json");
        println!("through {addr}: {r}");
        assert_eq!(r["behind_nat"], true, "{r}");
        assert_eq!(r["mapping"], "endpoint_independent", "through {addr}: {r}");
        assert_eq!(r["ports"], "preserved", "through {addr}: {r}");
        nodes.push(node);
    }
    drop(nodes);
    assert!(server.terminate().success());
}
