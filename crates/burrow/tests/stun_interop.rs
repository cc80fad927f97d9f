//! The server's STUN answers, checked by a STUN client burrow didn't write:
//! coturn's `turnutils_stunclient` (Debian package `coturn`).
//!
//! Where the tool is missing this test says so and passes, unless
//! `BURROW_LAB=required` (as in CI, which installs it), where it fails.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_stun_client_gets_its_reflexive_address() {
    let has_tool = Command::new("turnutils_stunclient")
        .arg("-h")
        .output()
        .is_ok();
    if !has_tool {
        let required = std::env::var("BURROW_LAB").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "turnutils_stunclient is missing and BURROW_LAB=required: apt-get install coturn"
        );
        eprintln!("SKIPPED: turnutils_stunclient not installed (apt-get install coturn)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let port = server.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["10", "turnutils_stunclient", "-p", &port, "127.0.0.1"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "turnutils_stunclient failed: {text}");
    let addr = text
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .unwrap_or_else(|| panic!("no reflexive address in: {text}"));
    let addr: std::net::SocketAddr = addr.trim().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    assert_ne!(
        addr.port(),
        server.addr.port(),
        "the client's port, not the server's"
    );
    server.stop().await;
}
