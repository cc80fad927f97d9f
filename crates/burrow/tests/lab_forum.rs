//! A serverless network behind the lab's kernel NATs: six nodes, each given
//! only the previous one's ticket, become one mesh and a post from the last
//! reaches the first.
//!
//! Runs as root with iproute2, nftables and conntrack; skips with a printed reason
//! elsewhere, except under `BURROW_LAB=required` (CI), where it fails.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

/// The first node is on the public segment (someone has to be reachable from a
/// ticket alone); the next four sit behind full-cone NATs, whose tickets carry
/// the public address their first peer saw; the last is behind a
/// port-restricted NAT, reachable only by punching, which introductions do.
#[test]
fn a_chain_of_tickets_behind_nats_becomes_one_mesh() {
    let Some(mut lab) = require_or_skip("a_chain_of_tickets_behind_nats_becomes_one_mesh") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kinds = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::FullCone,
        NatKind::FullCone,
        NatKind::FullCone,
        NatKind::PortRestricted,
    ];
    let mut procs = Vec::new();
    let mut homes: Vec<std::path::PathBuf> = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let name = format!("m{}", i + 1);
        let (host, _) = lab.add_peer(&name, kind).unwrap();
        let home = dir.path().join(&name);
        let t = (i > 0).then(|| ticket(&homes[i - 1]));
        procs.push(lab_serverless_up(&host, &home, &name, t.as_deref()));
        if i > 0 {
            let prev = format!("m{i}");
            wait_json(&home, &["peers"], "linked to the previous node", |v| {
                peer(v, &prev).is_some_and(|p| p["connection"] == "direct")
            });
            // Its ticket now carries the public address its peer saw.
            wait_json(&home, &["status"], "a public address", |v| {
                v["connections"].as_array().is_some_and(|c| !c.is_empty())
            });
        }
        homes.push(home);
    }

    let last = post(&homes[5], "hello from behind a port-restricted NAT", None);
    let got = wait_post(&homes[0], &last);
    assert_eq!(got["author_name"], "m6");
    let first = post(&homes[0], "and hello back from the public one", None);
    wait_post(&homes[5], &first);

    // m6 is linked beyond the node whose ticket it had: an introduction punched
    // through its port-restricted NAT.
    wait_json(&homes[5], &["peers"], "m6 links beyond m5", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["connection"] == "direct" && p["name"] != "m5")
        })
    });
}
