//! The lab's NATs behave as their names say: measured with real UDP through the
//! kernel, RFC 4787 terms (mapping and filtering behaviour).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use burrow_lab::{require_or_skip, Host, NatKind, SERVER_ADDRS};

/// Sends a datagram from `from` to `to` and returns the source address `to` saw.
fn observed(from: &UdpSocket, to: &UdpSocket) -> SocketAddr {
    from.send_to(b"probe", to.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 64];
    to.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (_, seen) = to.recv_from(&mut buf).expect("the outbound probe arrives");
    seen
}

/// Whether a datagram from `from` to `mapped` reaches `client`.
fn reaches(from: &UdpSocket, mapped: SocketAddr, client: &UdpSocket) -> bool {
    from.send_to(b"inbound", mapped).unwrap();
    let mut buf = [0u8; 64];
    client
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    matches!(client.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"inbound")
}

struct Behaviour {
    translated: bool,
    endpoint_independent_mapping: bool,
    /// The second mapping's port minus the first's.
    port_step: i32,
    /// A host the client never contacted can reach the mapping.
    open_to_strangers: bool,
    /// The contacted address, from another port, can reach the mapping.
    open_to_other_ports: bool,
    /// The contacted address and port can answer.
    replies_arrive: bool,
}

fn measure(server: &Host, client_host: &Host) -> Behaviour {
    let s1 = server.udp(3478).unwrap();
    let s1b = server.udp(3479).unwrap();
    let s2 = burrow_lab::socket_in(&server.ns, SocketAddr::from((SERVER_ADDRS[1], 3478))).unwrap();
    let stranger =
        burrow_lab::socket_in(&server.ns, SocketAddr::from((SERVER_ADDRS[1], 4000))).unwrap();
    let client = client_host.udp(0).unwrap();
    let o1 = observed(&client, &s1);
    let o2 = observed(&client, &s2);
    Behaviour {
        translated: o1 != client.local_addr().unwrap(),
        endpoint_independent_mapping: o1 == o2,
        port_step: i32::from(o2.port()) - i32::from(o1.port()),
        open_to_strangers: reaches(&stranger, o1, &client),
        open_to_other_ports: reaches(&s1b, o1, &client),
        replies_arrive: reaches(&s1, o1, &client),
    }
}

#[test]
fn each_nat_kind_maps_and_filters_as_named() {
    let Some(mut lab) = require_or_skip("each_nat_kind_maps_and_filters_as_named") else {
        return;
    };
    println!(
        "{:<15} {:>10} {:>8} {:>10} {:>11} {:>8}",
        "kind", "translated", "EIM", "strangers", "other port", "replies"
    );
    for kind in NatKind::ALL {
        let (peer, router) = lab
            .add_peer(&format!("{kind:?}").to_lowercase(), kind)
            .unwrap();
        let b = measure(lab.server(), &peer);
        println!(
            "{:<15} {:>10} {:>8} {:>10} {:>11} {:>8}",
            format!("{kind:?}"),
            b.translated,
            b.endpoint_independent_mapping,
            b.open_to_strangers,
            b.open_to_other_ports,
            b.replies_arrive
        );
        assert!(
            b.replies_arrive,
            "{kind:?}: replies must always get through"
        );
        assert_eq!(b.translated, kind != NatKind::None, "{kind:?}");
        if let Some(r) = &router {
            assert_eq!(r.kind(), kind);
        }
        match kind {
            NatKind::None | NatKind::FullCone => {
                assert!(
                    b.endpoint_independent_mapping && b.open_to_strangers && b.open_to_other_ports,
                    "{kind:?}"
                )
            }
            NatKind::PortRestricted => {
                assert!(
                    b.endpoint_independent_mapping,
                    "port-restricted keeps one mapping"
                );
                assert!(
                    !b.open_to_strangers && !b.open_to_other_ports,
                    "port-restricted filters by address and port"
                );
            }
            NatKind::Symmetric => {
                assert!(
                    !b.endpoint_independent_mapping,
                    "symmetric maps per destination"
                );
                assert_ne!(b.port_step, 1, "random ports, not sequential ones");
                assert!(!b.open_to_strangers && !b.open_to_other_ports);
            }
            NatKind::Sequential => {
                assert_eq!(b.port_step, 1, "sequential maps per destination, +1 each");
                assert!(!b.open_to_strangers && !b.open_to_other_ports);
            }
            NatKind::UdpBlocked | NatKind::HttpsOnly | NatKind::ProxyOnly => {
                unreachable!("not in NatKind::ALL")
            }
        }
    }
}

#[test]
fn double_nat_and_shared_nat_reach_the_server() {
    let Some(mut lab) = require_or_skip("double_nat_and_shared_nat_reach_the_server") else {
        return;
    };
    let s1 = lab.server().udp(3478).unwrap();
    let (deep, home, carrier) = lab
        .add_double_nat_peer("deep", NatKind::PortRestricted)
        .unwrap();
    let c = deep.udp(0).unwrap();
    let seen = observed(&c, &s1);
    assert_eq!(
        seen.ip(),
        std::net::IpAddr::V4(carrier.wan()),
        "the server sees the carrier's address"
    );
    assert_ne!(home.wan(), carrier.wan());

    let (a, router) = lab.add_peer("a", NatKind::PortRestricted).unwrap();
    let router = router.unwrap();
    let b = lab.add_peer_behind(&router, "b").unwrap();
    assert_ne!(a.addr, b.addr);
    let (ca, cb) = (a.udp(0).unwrap(), b.udp(0).unwrap());
    assert_eq!(
        observed(&ca, &s1).ip(),
        observed(&cb, &s1).ip(),
        "one NAT, one public address"
    );
    // On their LAN they reach each other directly.
    assert_eq!(observed(&ca, &cb).ip(), std::net::IpAddr::V4(a.addr));
}

#[test]
fn loss_and_a_cut_uplink_take_effect_and_undo() {
    let Some(mut lab) = require_or_skip("loss_and_a_cut_uplink_take_effect_and_undo") else {
        return;
    };
    let s1 = lab.server().udp(3478).unwrap();
    s1.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let (p, router) = lab.add_peer("p", NatKind::PortRestricted).unwrap();
    let router = router.unwrap();
    let c = p.udp(0).unwrap();
    let count_arrived = |n: usize| {
        for _ in 0..n {
            c.send_to(b"x", s1.local_addr().unwrap()).unwrap();
        }
        let mut buf = [0u8; 8];
        let mut got = 0;
        while s1.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    };
    assert_eq!(count_arrived(200), 200);
    lab.set_loss(&router, 50).unwrap();
    let got = count_arrived(400);
    assert!(
        (120..=280).contains(&got),
        "about half of 400 should arrive with 50% loss, got {got}"
    );
    lab.set_loss(&router, 0).unwrap();
    assert_eq!(count_arrived(100), 100);

    lab.set_uplink(&router, false).unwrap();
    assert_eq!(count_arrived(20), 0);
    lab.set_uplink(&router, true).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count_arrived(20), 20);
}

#[test]
fn namespaces_are_removed_when_the_lab_is_dropped() {
    let Some(mut lab) = require_or_skip("namespaces_are_removed_when_the_lab_is_dropped") else {
        return;
    };
    let (p, _) = lab.add_peer("p", NatKind::Symmetric).unwrap();
    let list = || {
        String::from_utf8(
            std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert!(list().contains(&p.ns));
    drop(lab);
    assert!(!list().contains(&p.ns), "namespace {} left behind", p.ns);
}

#[test]
fn flushing_a_router_forgets_its_mappings() {
    let Some(mut lab) = require_or_skip("flushing_a_router_forgets_its_mappings") else {
        return;
    };
    let s1 = lab.server().udp(3478).unwrap();
    let (p, router) = lab.add_peer("p", NatKind::PortRestricted).unwrap();
    let router = router.unwrap();
    let c = p.udp(0).unwrap();
    let mapped = observed(&c, &s1);
    assert!(
        reaches(&s1, mapped, &c),
        "the server can answer through the mapping"
    );
    lab.flush_mappings(&router).unwrap();
    assert!(
        !reaches(&s1, mapped, &c),
        "after a flush the old mapping is gone"
    );
    // Sending again makes a new mapping, and answers flow again.
    let again = observed(&c, &s1);
    assert!(reaches(&s1, again, &c));
}

#[test]
fn a_delayed_uplink_holds_each_packet_for_its_delay() {
    let Some(mut lab) = require_or_skip("a_delayed_uplink_holds_each_packet_for_its_delay") else {
        return;
    };
    lab.set_uplink_delay(Duration::from_millis(10));
    let (a, _) = lab.add_peer("a", NatKind::None).unwrap();
    let (b, _) = lab.add_peer("b", NatKind::PortRestricted).unwrap();
    let (sa, sb) = (a.udp(5000).unwrap(), b.udp(5000).unwrap());
    let server = lab.server().udp(5000).unwrap();
    sa.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sb.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..12 {
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                return;
            };
            server.send_to(&buf[..n], from).unwrap();
        }
    });
    // To the server and back crosses the node's delayed uplink twice.
    let mut rtts = Vec::new();
    for (sock, hops) in [(&sa, 2u32), (&sb, 2)] {
        // The first exchange also resolves addresses (ARP crosses the link too).
        for i in 0..6 {
            let t = std::time::Instant::now();
            sock.send_to(b"ping", SocketAddr::from((SERVER_ADDRS[0], 5000)))
                .unwrap();
            let mut buf = [0u8; 64];
            sock.recv_from(&mut buf).expect("the echo comes back");
            if i > 0 {
                rtts.push((t.elapsed(), hops));
            }
        }
    }
    echo.join().unwrap();
    // Every packet is held at least its delay; how much longer one takes is
    // up to the scheduler of a busy machine, so the median (not each sample)
    // must be close to it.
    let floor = Duration::from_millis(10) * 2;
    for (rtt, hops) in &rtts {
        assert!(
            *rtt >= Duration::from_millis(10) * *hops,
            "round trip {rtt:?} for {hops} delayed hops of 10 ms"
        );
    }
    let mut sorted: Vec<Duration> = rtts.iter().map(|(rtt, _)| *rtt).collect();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < floor + Duration::from_millis(15),
        "median round trip {median:?} for 2 delayed hops of 10 ms: {sorted:?}"
    );
}
