//! The traversal matrix: for every ordered pair of NAT kinds, a requester behind
//! the first and an acceptor behind the second connect through a `burrow server`
//! on the lab's public segment, then chat both ways. All real processes, real
//! kernel NATs; driven through the CLI.
//!
//! Every cell where one side is None or FullCone, and PortRestricted with
//! PortRestricted, must end direct. Cells with a Symmetric NAT against a
//! restricted one need the relay (not built yet): they are run and reported, not
//! asserted.

mod common;

use std::time::{Duration, Instant};

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

fn must_go_direct(req: NatKind, acc: NatKind) -> bool {
    use NatKind::*;
    matches!(req, None | FullCone)
        || matches!(acc, None | FullCone)
        || (req == PortRestricted && acc == PortRestricted)
}

#[test]
fn every_pair_of_nat_kinds() {
    let Some(mut lab) = require_or_skip("every_pair_of_nat_kinds") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (i, req_kind) in NatKind::ALL.into_iter().enumerate() {
        for (j, acc_kind) in NatKind::ALL.into_iter().enumerate() {
            let (q, a) = (format!("q{i}{j}"), format!("a{i}{j}"));
            let (q_host, _) = lab.add_peer(&q, req_kind).unwrap();
            let (a_host, _) = lab.add_peer(&a, acc_kind).unwrap();
            let (q_home, a_home) = (dir.path().join(&q), dir.path().join(&a));
            let up = |host: &burrow_lab::Host, home: &std::path::Path, name: &str| {
                let mut cmd = host.command(BIN);
                cmd.arg("--home")
                    .arg(home)
                    .args(["up", "--server", &url, "--name", name]);
                let mut p = Proc::spawn_command(cmd);
                p.expect_line("is up");
                p
            };
            let mut qp = up(&q_host, &q_home, &q);
            let mut ap = up(&a_host, &a_home, &a);
            wait_json(&q_home, &["peers"], "the acceptor online", |v| {
                peer(v, &a).is_some_and(|p| p["online"] == true)
            });

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
            let took = asked.elapsed();
            let connected = outcome.contains("connected to") && !outcome.contains("could not");
            let mut path = "none".to_string();
            if connected {
                let v = wait_json(&q_home, &["peers"], "the link", |v| {
                    peer(v, &a).is_some_and(|p| p["connection"] != "pending_out")
                });
                path = peer(&v, &a).unwrap()["connection"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let (ok1, _, e1) = run(&q_home, &["send", &a, "hello from", &q]);
                let (ok2, _, e2) = run(&a_home, &["send", &q, "hello back from", &a]);
                assert!(
                    ok1 && ok2,
                    "{req_kind:?} x {acc_kind:?}: chat failed: {e1} {e2}"
                );
                ap.expect_line(&format!("{q}: hello from {q}"));
                qp.expect_line(&format!("{a}: hello back from {a}"));
            }
            table.push(format!(
                "{:<15} {:<15} {:<8} {:>8} ms",
                format!("{req_kind:?}"),
                format!("{acc_kind:?}"),
                path,
                took.as_millis()
            ));
            if must_go_direct(req_kind, acc_kind) && path != "direct" {
                failures.push(format!(
                    "{req_kind:?} x {acc_kind:?}: expected direct, got {path} ({outcome})"
                ));
            }
        }
    }
    println!(
        "{:<15} {:<15} {:<8} {:>11}",
        "requester", "acceptor", "path", "to connect"
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
