//! IPv6 in the lab: home routers with no IPv6 NAT but a stateful firewall,
//! dual-stack nodes, an IPv6-only one, and a server on `[::]` for both.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip, Family, Lab, NatKind};
use common::proc::*;

/// How long a punched path may take to appear.
const DIRECT: Duration = Duration::from_secs(20);

/// The lab's IPv6 routers drop what their LAN did not ask for, as home
/// routers do: a datagram from the public segment to a peer's IPv6 address
/// is lost until the peer has sent to that address, then answers get in.
/// (What makes "direct over IPv6" below a punch through a firewall, not a
/// path that was open anyway.)
#[test]
fn ipv6_home_routers_let_in_only_what_their_lan_asked_for() {
    let Some(mut lab) = require_or_skip("ipv6_home_routers_let_in_only_what_their_lan_asked_for")
    else {
        return;
    };
    lab.set_family(Family::DualStack).unwrap();
    let (peer, _) = lab.add_peer("pia", NatKind::PortRestricted).unwrap();
    let peer6 = peer.addr6.expect("a dual-stack peer has IPv6");
    let server6 = Lab::server_addrs6()[0];
    let inside = burrow_lab::socket_in(&peer.ns, (peer6, 4000).into()).unwrap();
    let outside = burrow_lab::socket_in(&lab.server().ns, (server6, 5000).into()).unwrap();
    inside
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    outside
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    outside.send_to(b"unasked", (peer6, 4000)).unwrap();
    assert!(
        inside.recv_from(&mut buf).is_err(),
        "the router let in a datagram nobody inside asked for"
    );
    inside.send_to(b"hello", (server6, 5000)).unwrap();
    let (n, from) = outside.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hello"[..], (peer6, 4000).into()));
    outside.send_to(b"answer", from).unwrap();
    let (n, _) = inside
        .recv_from(&mut buf)
        .expect("the answer to our own datagram gets in");
    assert_eq!(&buf[..n], b"answer");
}

/// Two dual-stack peers whose IPv4 is behind symmetric NATs (where IPv4 alone
/// needs a birthday punch or the relay) go direct over IPv6 through their
/// routers' firewalls; `nat` and `peers` say so per family.
#[test]
fn dual_stack_peers_go_direct_over_ipv6_while_ipv4_is_symmetric() {
    let Some(mut lab) =
        require_or_skip("dual_stack_peers_go_direct_over_ipv6_while_ipv4_is_symmetric")
    else {
        return;
    };
    lab.set_family(Family::DualStack).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server_on(&lab, &dir.path().join("srv"), "[::]:7700", &[]);
    let (h1, _) = lab.add_peer("amy", NatKind::Symmetric).unwrap();
    let (h2, _) = lab.add_peer("ben", NatKind::Symmetric).unwrap();
    let mut amy = LabNode::up(&h1, dir.path(), &url, "amy");
    let mut ben = LabNode::up(&h2, dir.path(), &url, "ben");
    let amy6 = h1.addr6.unwrap().to_string();

    // Each learned its IPv6 address from the server, beside its IPv4 one.
    let status = wait_json(&amy.home, &["status"], "amy's IPv6 address", |v| {
        v["public_other"].is_string()
    });
    let other = status["public_other"].as_str().unwrap();
    assert!(other.contains(&amy6), "{status}");
    let nat = json(&amy.home, &["nat"]);
    assert_eq!(nat["behind_nat"], true, "{nat}");
    assert_eq!(nat["other_family"]["family"], "ipv6", "{nat}");
    assert_eq!(nat["other_family"]["behind_nat"], false, "{nat}");
    let (ok, text, _) = run(&amy.home, &["nat"]);
    assert!(
        ok && text.contains("IPv4") && text.contains("IPv6"),
        "{text}"
    );
    assert!(text.contains(&amy6) && text.contains("no NAT"), "{text}");

    ben.link(&mut amy);
    let conn = ben
        .wait_path("amy", "direct", DIRECT)
        .expect("ben goes direct to amy");
    assert_eq!(conn["family"], "ipv6", "{conn}");
    assert!(
        conn["remote_addr"].as_str().unwrap().contains(&amy6),
        "{conn}"
    );
    ben.say(&mut amy, "over IPv6, through both firewalls");
    amy.say(&mut ben, "and back");
    let (ok, text, _) = run(&ben.home, &["peers"]);
    assert!(ok && text.contains("direct (IPv6)"), "{text}");
    let peers = json(&ben.home, &["peers"]);
    let amy_seen = peer(&peers, "amy").unwrap();
    assert_eq!(amy_seen["method"], "probe", "{amy_seen}");
    assert_eq!(amy_seen["family"], "ipv6", "{amy_seen}");
    assert!(server.terminate().success());
}

/// An IPv6-only peer reaches the server over IPv6 (its second join URL), a
/// peer with IPv4 alone through the relay (the server carries the link
/// between families), and a dual-stack peer directly over IPv6.
#[test]
fn an_ipv6_only_peer_relays_to_ipv4_only_and_goes_direct_to_dual_stack() {
    let Some(mut lab) =
        require_or_skip("an_ipv6_only_peer_relays_to_ipv4_only_and_goes_direct_to_dual_stack")
    else {
        return;
    };
    lab.set_family(Family::DualStack).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server_on(&lab, &dir.path().join("srv"), "[::]:7700", &[]);
    let url6 = server
        .expect_line("over IPv6:")
        .split_whitespace()
        .nth(2)
        .expect("an IPv6 URL")
        .to_string();
    assert!(url6.contains("[2001:db8::"), "{url6}");
    let (h_both, _) = lab.add_peer("dee", NatKind::PortRestricted).unwrap();
    lab.set_family(Family::V6Only).unwrap();
    let (h_six, _) = lab.add_peer("six", NatKind::PortRestricted).unwrap();
    assert!(h_six.addr.is_unspecified());
    lab.set_family(Family::V4).unwrap();
    let (h_four, _) = lab.add_peer("fou", NatKind::PortRestricted).unwrap();
    assert!(h_four.addr6.is_none());

    let mut six = LabNode::up(&h_six, dir.path(), &url6, "six");
    let mut fou = LabNode::up(&h_four, dir.path(), &url, "fou");
    let mut dee = LabNode::up(&h_both, dir.path(), &url, "dee");
    // Against a server on [::], an IPv4 NAT that keeps ports still reads as
    // one (the STUN alternates answer IPv4 callers in IPv4).
    let nat = json(&dee.home, &["nat"]);
    assert_eq!(nat["mapping"], "endpoint_independent", "{nat}");
    assert_eq!(nat["ports"], "preserved", "{nat}");
    let status = json(&six.home, &["status"]);
    assert!(
        status["public_addr"]
            .as_str()
            .unwrap()
            .contains(&h_six.addr6.unwrap().to_string()),
        "{status}"
    );

    six.link(&mut fou);
    six.say(&mut fou, "from IPv6 to IPv4, through the server");
    fou.say(&mut six, "and back");
    // No family in common: the relay carries it, past a punch's deadline.
    assert!(six.wait_path("fou", "direct", DIRECT).is_none());
    let conn = fou
        .wait_path("six", "relayed", Duration::from_secs(1))
        .expect("relayed");
    assert_eq!(conn["family"], "ipv4", "{conn}");
    let conn = six
        .wait_path("fou", "relayed", Duration::from_secs(1))
        .expect("relayed");
    assert_eq!(conn["family"], "ipv6", "{conn}");

    six.link(&mut dee);
    let conn = six
        .wait_path("dee", "direct", DIRECT)
        .expect("six goes direct to dee over IPv6");
    assert_eq!(conn["family"], "ipv6", "{conn}");
    six.say(&mut dee, "direct over IPv6");
    assert!(server.terminate().success());
}
