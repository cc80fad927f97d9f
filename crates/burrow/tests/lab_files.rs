//! Downloads through the lab's kernel NATs: direct across two different NAT
//! kinds, and through the server's relay when no direct path exists. Real
//! `burrow` processes in network namespaces, driven through the CLI.
//!
//! Runs as root with iproute2, nftables and conntrack; skips with a printed reason
//! elsewhere, except under `BURROW_LAB=required` (CI), where it fails.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

#[test]
fn a_download_crosses_two_different_nats_directly() {
    let Some(mut lab) = require_or_skip("a_download_crosses_two_different_nats_directly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, _) = lab.add_peer("fay", NatKind::FullCone).unwrap();
    let (h2, _) = lab.add_peer("gus", NatKind::PortRestricted).unwrap();
    let mut fay = LabNode::up(&h1, dir.path(), &url, "fay");
    let mut gus = LabNode::up(&h2, dir.path(), &url, "gus");
    gus.link(&mut fay);
    assert!(
        gus.wait_path("fay", "direct", Duration::from_secs(20))
            .is_some(),
        "full cone and port-restricted go direct"
    );
    share_and_get(dir.path(), &fay, &gus, 24 * 1024 * 1024 + 3);
    assert!(gus.wait_path("fay", "direct", Duration::ZERO).is_some());
    assert!(server.terminate().success());
}

#[test]
fn a_download_goes_through_the_relay_when_no_direct_path_exists() {
    let Some(mut lab) =
        require_or_skip("a_download_goes_through_the_relay_when_no_direct_path_exists")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, _) = lab.add_peer("hal", NatKind::Symmetric).unwrap();
    let (h2, _) = lab.add_peer("ivy", NatKind::Symmetric).unwrap();
    let mut hal = LabNode::up(&h1, dir.path(), &url, "hal");
    let mut ivy = LabNode::up(&h2, dir.path(), &url, "ivy");
    ivy.link(&mut hal);
    assert!(ivy.wait_path("hal", "relayed", Duration::ZERO).is_some());
    // 6 MiB through the relay (alone, the whole of the server's fair share).
    share_and_get(dir.path(), &hal, &ivy, 6 * 1024 * 1024 + 5);
    assert!(
        ivy.wait_path("hal", "relayed", Duration::ZERO).is_some(),
        "two symmetric NATs: the whole file came through the relay"
    );
    assert!(server.terminate().success());
}
