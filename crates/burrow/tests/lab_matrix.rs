//! The traversal matrix: for every ordered pair of NAT kinds, a requester behind
//! the first and an acceptor behind the second connect through a `burrow server`
//! on the lab's public segment, then chat both ways. All real processes, real
//! kernel NATs; driven through the CLI.
//!
//! Every cell must connect and chat (through the relay where nothing else
//! works). Every cell with at least one side whose mapping is
//! endpoint-independent (None, FullCone, PortRestricted) must end direct:
//! ordinary hole punching between two of them, port prediction against a
//! Sequential NAT, birthday probing against a Symmetric one. Two Sequential
//! NATs go direct by paired prediction; a Symmetric NAT facing another
//! endpoint-dependent one may stay relayed. A network that drops UDP (UdpBlocked) reaches the server and the
//! relay over TCP, and goes direct by TCP simultaneous open with every kind
//! that keeps TCP ports (all but Symmetric). The table printed says per cell
//! which method found the path.
//!
//! The matrix runs twice: with routers that drop unsolicited packets to
//! themselves (as most home routers do) and with routers that don't (plain
//! masquerade), where every cell must go direct alike. A third run gives
//! every peer IPv6 beside its IPv4 (no NAT, a stateful firewall on each
//! router): there every cell with UDP on both sides goes direct, those IPv4
//! alone can't do over IPv6.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::{Duration, Instant};

use burrow_lab::{require_or_skip, Family, NatKind};
use common::proc::*;

fn must_go_direct(req: NatKind, acc: NatKind) -> bool {
    use NatKind::*;
    if req == UdpBlocked || acc == UdpBlocked {
        // Over TCP, which every lab router but the Symmetric one maps
        // keeping the port (its masquerade randomizes TCP too).
        return req != Symmetric && acc != Symmetric;
    }
    let independent = |k| matches!(k, None | FullCone | PortRestricted);
    independent(req) || independent(acc) || (req == Sequential && acc == Sequential)
}

/// With dual-stack peers, every cell where both sides have UDP goes direct
/// (over IPv6 where IPv4 can't; a side that drops UDP goes direct only where
/// [`must_go_direct`] says, over IPv4): its IPv6 address
/// is learnt over UDP (STUN), so a network that drops UDP goes unseen in IPv6
/// too, and TCP over IPv4 can't cross the symmetric NAT's random ports.
fn must_go_direct_dual(req: NatKind, acc: NatKind, dual: bool) -> bool {
    dual && req != NatKind::UdpBlocked && acc != NatKind::UdpBlocked
}

/// The method the cell must report, where only one can work: prediction
/// against a sequential NAT, birthday probing against a symmetric one, when the
/// other side filters by port.
fn expected_method(req: NatKind, acc: NatKind) -> Option<&'static str> {
    use NatKind::*;
    match (req, acc) {
        (UdpBlocked, _) | (_, UdpBlocked) => Some("tcp"),
        (PortRestricted, Sequential) | (Sequential, PortRestricted) => Some("predicted"),
        (Sequential, Sequential) => Some("predicted"),
        (PortRestricted, Symmetric) | (Symmetric, PortRestricted) => Some("birthday"),
        _ => Option::None,
    }
}

/// How long a cell waits for the direct path: past the punch's 10 s deadline.
const DIRECT_WAIT: Duration = Duration::from_secs(12);
/// With a UDP-less side: TCP simultaneous open at once (up to 8 s).
const TCP_WAIT: Duration = Duration::from_secs(10);

/// The UDP kinds, and a network that drops UDP.
const KINDS: [NatKind; 6] = [
    NatKind::None,
    NatKind::FullCone,
    NatKind::PortRestricted,
    NatKind::Symmetric,
    NatKind::Sequential,
    NatKind::UdpBlocked,
];

#[test]
fn every_pair_of_nat_kinds() {
    matrix("every_pair_of_nat_kinds", true, Family::V4);
}

/// The matrix with dual-stack peers: IPv6 through the routers' firewalls
/// wherever the IPv4 NATs leave a cell relayed.
#[test]
fn every_pair_of_nat_kinds_dual_stack() {
    matrix(
        "every_pair_of_nat_kinds_dual_stack",
        true,
        Family::DualStack,
    );
}

/// The same matrix with routers that accept unsolicited packets to themselves
/// (plain masquerade, no input firewall): a probe that arrives before the far
/// side's own has left would otherwise make that side's NAT pick another port.
#[test]
fn every_pair_of_nat_kinds_without_router_firewalls() {
    matrix(
        "every_pair_of_nat_kinds_without_router_firewalls",
        false,
        Family::V4,
    );
}

fn matrix(test: &str, firewall: bool, family: Family) {
    let Some(mut lab) = require_or_skip(test) else {
        return;
    };
    lab.set_router_firewall(firewall);
    lab.set_family(family).unwrap();
    let dual = family == Family::DualStack;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = if dual {
        lab_server_on(&lab, &dir.path().join("srv"), "[::]:7700", &[])
    } else {
        lab_server(&lab, &dir.path().join("srv"), &[])
    };

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (i, req_kind) in KINDS.into_iter().enumerate() {
        for (j, acc_kind) in KINDS.into_iter().enumerate() {
            // To debug one cell: BURROW_MATRIX_ONLY=None,PortRestricted (and RUST_LOG).
            if let Ok(only) = std::env::var("BURROW_MATRIX_ONLY") {
                if only != format!("{req_kind:?},{acc_kind:?}") {
                    continue;
                }
            }
            let (q, a) = (format!("q{i}{j}"), format!("a{i}{j}"));
            let (q_host, _) = lab.add_peer(&q, req_kind).unwrap();
            let (a_host, _) = lab.add_peer(&a, acc_kind).unwrap();
            let (mut qp, q_home) = lab_up(&q_host, dir.path(), &url, &q);
            let (mut ap, a_home) = lab_up(&a_host, dir.path(), &url, &a);
            wait_json(&q_home, &["peers"], "the acceptor online", |v| {
                peer(v, &a).is_some_and(|p| p["online"] == true)
            });

            let cell = format!("{req_kind:?} x {acc_kind:?}");
            let asked = Instant::now();
            assert!(run(&q_home, &["connect", &a]).0);
            ap.expect_line("asks to connect");
            assert!(run(&a_home, &["accept", &q]).0);
            let outcome = qp.expect_any(
                &[
                    &format!("connected to {a}"),
                    &format!("could not connect to {a}"),
                ],
                Duration::from_secs(20),
            );
            assert!(
                !outcome.contains("could not"),
                "{cell}: no connection: {outcome}"
            );
            let (ok1, _, e1) = run(&q_home, &["send", &a, "hello from", &q]);
            let first_message = asked.elapsed();
            let (ok2, _, e2) = run(&a_home, &["send", &q, "hello back from", &a]);
            assert!(ok1 && ok2, "{cell}: chat failed: {e1} {e2}");
            ap.expect_line(&format!("{q}: hello from {q}"));
            qp.expect_line(&format!("{a}: hello back from {a}"));

            let wait = if req_kind == NatKind::UdpBlocked || acc_kind == NatKind::UdpBlocked {
                TCP_WAIT
            } else {
                DIRECT_WAIT
            };
            let direct = poll_json(&q_home, &["peers"], wait, |v| {
                peer(v, &a).is_some_and(|p| p["connection"] == "direct")
            });
            let to_direct = direct.as_ref().map(|_| asked.elapsed());
            let path = if direct.is_some() {
                "direct"
            } else {
                "relayed"
            };
            // Each side knows what found its end of the path; one side may
            // see only its ordinary probe answered (the other's trick opened
            // the way), so the cell reports the more specific of the two.
            let carried = direct
                .as_ref()
                .and_then(|v| peer(v, &a))
                .and_then(|p| p["family"].as_str())
                .unwrap_or("-")
                .to_string();
            let method = if direct.is_some() {
                let q_method = direct
                    .as_ref()
                    .and_then(|v| peer(v, &a))
                    .map(|p| p["method"].clone());
                let a_method = poll_json(&a_home, &["peers"], Duration::from_secs(3), |v| {
                    peer(v, &q).is_some_and(|p| p["connection"] == "direct")
                })
                .and_then(|v| peer(&v, &q).map(|p| p["method"].clone()));
                let seen: Vec<String> = [q_method, a_method]
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(String::from))
                    .collect();
                seen.iter()
                    .find(|m| *m != "probe")
                    .or(seen.first())
                    .cloned()
                    .unwrap_or_else(|| "?".into())
            } else {
                "relay".into()
            };
            if direct.is_none() {
                // Relayed for good: chat still works both ways.
                let (ok1, _, e1) = run(&q_home, &["send", &a, "still there?"]);
                let (ok2, _, e2) = run(&a_home, &["send", &q, "still here"]);
                assert!(ok1 && ok2, "{cell}: relayed chat failed: {e1} {e2}");
            }
            table.push(format!(
                "{:<15} {:<15} {:<8} {:<6} {:<10} {:>9} ms {:>9}",
                format!("{req_kind:?}"),
                format!("{acc_kind:?}"),
                path,
                carried,
                method,
                first_message.as_millis(),
                to_direct
                    .map(|d| format!("{} ms", d.as_millis()))
                    .unwrap_or_else(|| "-".into()),
            ));
            if (must_go_direct_dual(req_kind, acc_kind, dual) || must_go_direct(req_kind, acc_kind))
                && direct.is_none()
            {
                failures.push(format!("{cell}: expected direct, stayed relayed"));
            }
            if dual && !must_go_direct(req_kind, acc_kind) && direct.is_some() && carried != "ipv6"
            {
                failures.push(format!(
                    "{cell}: direct over {carried}, where only IPv6 can be"
                ));
            }
            // With IPv6 beside it, an ordinary probe over IPv6 may find the
            // path before IPv4's trick does.
            if let Some(want) = expected_method(req_kind, acc_kind).filter(|_| !dual) {
                if direct.is_some() && method != want {
                    failures.push(format!("{cell}: direct by {method}, expected {want}"));
                }
            }
            qp.terminate();
            ap.terminate();
        }
    }
    println!(
        "routers {} an input firewall, {}",
        if firewall { "with" } else { "without" },
        if dual { "dual-stack peers" } else { "IPv4" }
    );
    println!(
        "{:<15} {:<15} {:<8} {:<6} {:<10} {:>12} {:>12}",
        "requester", "acceptor", "path", "family", "method", "1st message", "to direct"
    );
    for row in &table {
        println!("{row}");
    }
    assert!(
        failures.is_empty(),
        "cells that must go direct did not:\n{}",
        failures.join("\n")
    );
    assert!(server.terminate().success());
}
