//! Persistence across restarts, server keys (pinned and trust-on-first-use), and
//! a server restart under live connections.

mod common;

use burrow_node::api::ConnectionState;
use burrow_node::{Node, NodeEvent, StartError};
use burrow_proto::{SecretKey, ServerAddr};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_history_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let (ah, bh) = (dir.path().join("alice"), dir.path().join("bob"));
    let alice = start_node(&ah, "alice", &server.url).await;
    let bob = start_node(&bh, "bob", &server.url).await;
    connect_pair(&bob, &alice).await;
    bob.send("alice", "remember me").await.unwrap();
    alice.send("bob", "I will").await.unwrap();
    alice.shutdown().await;
    bob.shutdown().await;
    drop((alice, bob));

    let alice = start_node(&ah, "alice", &server.url).await;
    let history: Vec<(String, String)> = alice
        .messages(10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.from_name, m.text))
        .collect();
    assert_eq!(
        history,
        [
            ("bob".to_string(), "remember me".to_string()),
            ("alice".into(), "I will".into())
        ]
    );
    assert_eq!(alice.status().id, alice.id().to_string());
    alice.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_server_key_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let impostor = SecretKey::generate(&mut rand::rngs::OsRng).public();
    let wrong = ServerAddr {
        key: Some(impostor),
        ..server.url.clone()
    };
    match Node::start(node_config(&dir.path().join("alice"), "alice", &wrong)).await {
        Err(StartError::Server(e)) => {
            let text = e.to_string();
            assert!(
                text.contains(&server.url.key.unwrap().to_string())
                    && text.contains(&impostor.to_string()),
                "{text}"
            );
            assert!(e.hint().is_some());
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to a server with the wrong key"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpinned_server_is_trusted_on_first_use_and_a_changed_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_on_fixed_port(&dir.path().join("srv")).await;
    let bare = ServerAddr {
        key: None,
        ..server.url.clone()
    };
    let home = dir.path().join("alice");
    let alice = start_node(&home, "alice", &bare).await;
    let recorded = std::fs::read_to_string(home.join("known_servers")).unwrap();
    assert!(recorded.contains(&server.url.key.unwrap().to_string()));
    alice.shutdown().await;
    drop(alice);
    let addr = server.addr;
    server.stop().await;

    // A different server (new key) on the same address.
    let other = dir.path().join("other-srv");
    let server = start_server_with(&other, fast_server_config(&other, addr)).await;
    match Node::start(node_config(&home, "alice", &bare)).await {
        Err(StartError::Server(e)) => {
            assert!(
                e.to_string()
                    .starts_with("server key changed since last time"),
                "{e}"
            );
            assert!(e.hint().unwrap().contains("known_servers"));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("accepted a changed server key"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_links_survive_a_server_restart_and_nodes_reregister() {
    let dir = tempfile::tempdir().unwrap();
    let srv_home = dir.path().join("srv");
    let server = start_server_on_fixed_port(&srv_home).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    connect_pair(&bob, &alice).await;
    let mut bob_events = bob.subscribe();
    let addr = server.addr;
    server.stop().await;

    wait_event(&mut bob_events, "bob to notice", |e| {
        matches!(e, NodeEvent::ServerLost { .. }).then_some(())
    })
    .await;
    assert!(!bob.status().server_connected);
    // The direct link does not need the server.
    bob.send("alice", "still here").await.unwrap();
    assert_eq!(link(&bob, "alice"), Some(ConnectionState::Direct));

    let server = start_server_with(&srv_home, fast_server_config(&srv_home, addr)).await;
    wait_until("both re-registered", || {
        bob.status().server_connected && alice.status().server_connected
    })
    .await;
    wait_until("presence restored", || {
        online(&bob, "alice") && online(&alice, "bob")
    })
    .await;
    alice.send("bob", "and back").await.unwrap();
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}
