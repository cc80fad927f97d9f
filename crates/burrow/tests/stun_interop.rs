//! The server's STUN answers, checked by a STUN client burrow didn't write:
//! coturn's `turnutils_stunclient` (Debian package `coturn`), in its plain mode
//! and in its RFC 5780 mode (CHANGE-REQUEST, RESPONSE-PORT, PADDING).
//!
//! A stranger's plain request gets the reflexive address alone; the RFC 5780
//! answers go in full to addresses with a registered node (as `burrow nat`
//! runs) and to requests padded to the answer's size (see
//! `burrow_server::stun_grid::Caller`), so the RFC 5780 run registers a node from its
//! address first.
//!
//! Where the tool is missing this test says so and passes, unless
//! `BURROW_LAB=required` (as in CI, which installs it), where it fails.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::process::Command;

/// Whether coturn's client is here; where it isn't, says so (and fails under
/// `BURROW_LAB=required`, as in CI, which installs it).
fn stun_client_available() -> bool {
    if Command::new("turnutils_stunclient")
        .arg("-h")
        .output()
        .is_ok()
    {
        return true;
    }
    burrow_lab::skip(
        "stun_interop",
        "turnutils_stunclient is not installed (apt-get install coturn)",
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_stun_client_gets_its_reflexive_address() {
    if !stun_client_available() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_rfc5780_tests_complete_against_a_two_address_server() {
    if !stun_client_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 127.0.0.2 is the server's second address; the alternates need port + 1 free.
    let mut server = None;
    for _ in 0..10 {
        let home = dir.path().join("srv");
        let mut config = common::fast_server_config(&home, "127.0.0.1:0".parse().unwrap());
        config.alt_ip = Some("127.0.0.2".parse().unwrap());
        if let Ok(s) = burrow_server::Server::bind(&common::server_key(&home), config) {
            server = Some(s);
            break;
        }
    }
    let server = server.expect("a free pair of ports");
    let port = server.local_addr().port();
    let url = burrow_proto::ServerAddr {
        key: Some(server.id()),
        host: "127.0.0.1".into(),
        port,
        https: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let _member = common::raw::RawClient::register("127.0.0.1:0", &url, "member", vec![]).await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args([
                "10",
                "turnutils_stunclient",
                "-p",
                &port.to_string(),
                "127.0.0.1",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "coturn's RFC 5780 tests did not complete: {text}"
    );
    for n in 1..=3 {
        assert!(
            text.contains(&format!("RFC 5780 response {n}")),
            "no response {n}: {text}"
        );
    }
    assert!(
        text.contains(&format!("Other addr: : 127.0.0.2:{}", port + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("Response origin: : 127.0.0.2:{}", port + 1)),
        "the changed answer: {text}"
    );
    stop.cancel();
    let _ = task.await;
}
