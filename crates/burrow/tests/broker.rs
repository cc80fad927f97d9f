//! End-to-end tests of registration, presence and the connect broker, with a real
//! server and real nodes on 127.0.0.1 in this process.

mod common;

use burrow_node::api::ConnectionState;
use burrow_node::{NodeEvent, PeerError, RequestError, SendError};
use burrow_proto::rendezvous::{CloseReason, Direction, Refusal};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_live_presence() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let mut events = alice.subscribe();
    let st = alice.status();
    assert_eq!(st.name, "alice");
    assert!(st.server_connected);
    assert_eq!(
        st.public_addr.as_deref(),
        Some(st.local_addr.as_str()),
        "on loopback the public address is the socket's"
    );

    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    wait_event(&mut events, "bob online", |e| {
        matches!(e, NodeEvent::PeerOnline { name } if name == "bob").then_some(())
    })
    .await;
    assert!(online(&alice, "bob"));
    assert!(
        online(&bob, "alice"),
        "a node joining sees who was already online"
    );

    bob.shutdown().await;
    wait_event(&mut events, "bob offline", |e| {
        matches!(e, NodeEvent::PeerOffline { name } if name == "bob").then_some(())
    })
    .await;
    assert!(!online(&alice, "bob"));
    alice.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_accept_and_chat_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    wait_until("presence", || online(&bob, "alice")).await;

    let mut alice_events = alice.subscribe();
    bob.connect("alice").await.unwrap();
    assert_eq!(link(&bob, "alice"), Some(ConnectionState::PendingOut));
    wait_event(&mut alice_events, "request", |e| {
        matches!(e, NodeEvent::IncomingRequest { name } if name == "bob").then_some(())
    })
    .await;
    assert_eq!(link(&alice, "bob"), Some(ConnectionState::PendingIn));
    // bob can't send before the connection exists, and says why.
    assert!(matches!(
        bob.send("alice", "too early").await,
        Err(SendError::NotConnected(_))
    ));

    alice.accept("bob").await.unwrap();
    wait_until("direct on both sides", || {
        link(&bob, "alice") == Some(ConnectionState::Direct)
            && link(&alice, "bob") == Some(ConnectionState::Direct)
    })
    .await;
    let rtt = bob
        .peers()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("alice"))
        .unwrap()
        .rtt_ms;
    assert!(rtt.is_some_and(|r| r > 0.0 && r < 1000.0), "rtt {rtt:?}");

    let mut bob_events = bob.subscribe();
    let sent = bob.send("alice", "hello alice").await.unwrap();
    let got = wait_event(&mut alice_events, "bob's message", |e| match e {
        NodeEvent::Message(m) if m.from_name == "bob" => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (got.id.as_str(), got.text.as_str(), got.to.as_str()),
        (
            sent.id.as_str(),
            "hello alice",
            alice.id().to_string().as_str()
        )
    );
    // By id prefix, the other way.
    let prefix = &bob.id().to_string()[..10];
    alice.send(prefix, "hi bob").await.unwrap();
    wait_event(&mut bob_events, "alice's message", |e| {
        matches!(e, NodeEvent::Message(m) if m.text == "hi bob" && m.from_name == "alice")
            .then_some(())
    })
    .await;

    let texts =
        |v: Vec<burrow_node::api::MessageView>| v.into_iter().map(|m| m.text).collect::<Vec<_>>();
    assert_eq!(
        texts(alice.messages(10).await.unwrap()),
        ["hello alice", "hi bob"]
    );
    assert_eq!(
        texts(bob.messages(10).await.unwrap()),
        ["hello alice", "hi bob"]
    );
    let status = bob.status();
    assert_eq!(status.connections.len(), 1);
    assert_eq!(status.connections[0].name.as_deref(), Some("alice"));

    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_cancel_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await; // requests expire after 2 s
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    wait_until("presence", || online(&bob, "alice")).await;
    let mut bob_events = bob.subscribe();
    let mut alice_events = alice.subscribe();
    let closed = |who: &'static str, dir: Direction, why: CloseReason| {
        move |e: &NodeEvent| {
            matches!(e, NodeEvent::RequestClosed { name, direction, reason } if name == who && *direction == dir && *reason == why).then_some(())
        }
    };

    // Reject.
    bob.connect("alice").await.unwrap();
    wait_event(&mut alice_events, "request", |e| {
        matches!(e, NodeEvent::IncomingRequest { .. }).then_some(())
    })
    .await;
    alice.reject("bob").await.unwrap();
    wait_event(
        &mut bob_events,
        "rejection",
        closed("alice", Direction::Outgoing, CloseReason::Rejected),
    )
    .await;
    assert_eq!(link(&bob, "alice"), Some(ConnectionState::None));
    assert_eq!(link(&alice, "bob"), Some(ConnectionState::None));
    assert!(
        matches!(alice.accept("bob").await, Err(RequestError::NoRequest(_))),
        "a rejected request can't be accepted after"
    );

    // Cancel.
    bob.connect("alice").await.unwrap();
    wait_event(&mut alice_events, "request", |e| {
        matches!(e, NodeEvent::IncomingRequest { .. }).then_some(())
    })
    .await;
    bob.cancel("alice").await.unwrap();
    wait_event(
        &mut alice_events,
        "cancellation",
        closed("bob", Direction::Incoming, CloseReason::Cancelled),
    )
    .await;
    assert_eq!(link(&alice, "bob"), Some(ConnectionState::None));
    assert!(matches!(
        bob.cancel("alice").await,
        Err(RequestError::NoRequest(_))
    ));

    // Expiry: nobody answers.
    bob.connect("alice").await.unwrap();
    wait_event(
        &mut bob_events,
        "expiry",
        closed("alice", Direction::Outgoing, CloseReason::Expired),
    )
    .await;
    wait_event(
        &mut alice_events,
        "expiry",
        closed("bob", Direction::Incoming, CloseReason::Expired),
    )
    .await;
    assert_eq!(link(&bob, "alice"), Some(ConnectionState::None));

    // A peer nobody has heard of.
    assert!(matches!(
        bob.connect("carol").await,
        Err(RequestError::Peer(PeerError::Unknown(_)))
    ));
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_peer_that_left_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    wait_until("presence", || online(&bob, "alice")).await;
    let alice_id = alice.id().to_string();
    alice.shutdown().await;
    wait_until("alice gone", || !online(&bob, "alice")).await;
    // By full id the node can still ask; the server says she is offline.
    match bob.connect(&alice_id).await {
        Err(RequestError::Refused {
            reason: Refusal::PeerOffline,
            ..
        }) => {}
        other => panic!("expected PeerOffline, got {other:?}"),
    }
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_belong_to_the_first_key_even_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv_home = dir.path().join("srv");
    let server = start_server_on_fixed_port(&srv_home).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    match burrow_node::Node::start(node_config(
        &dir.path().join("mallory"),
        "alice",
        &server.url,
    ))
    .await
    {
        Err(burrow_node::StartError::Server(e)) => {
            assert!(
                e.to_string()
                    .contains("that name is registered to another key"),
                "{e}"
            );
            assert!(e.hint().unwrap().contains("--name"));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second key got the name alice"),
    }
    alice.shutdown().await;
    let addr = server.addr;
    server.stop().await;

    // Same home, same port: the binding was persisted.
    let server = start_server_with(&srv_home, fast_server_config(&srv_home, addr)).await;
    assert!(burrow_node::Node::start(node_config(
        &dir.path().join("mallory"),
        "alice",
        &server.url
    ))
    .await
    .is_err());
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    alice.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_diagnosis_against_a_one_address_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let r = alice.nat().await.unwrap();
    use burrow_node::nat::Behaviour;
    assert!(!r.behind_nat, "loopback has no NAT: {r:?}");
    assert_eq!(r.public_addr.to_string(), alice.status().local_addr);
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
    // One server address: the client can't tell endpoint-independent filtering
    // from address-dependent, and says so.
    assert_eq!(r.filtering, Behaviour::AtMostAddressDependent);
    assert_eq!(
        r.server_other,
        Some(std::net::SocketAddr::new(
            server.addr.ip(),
            server.addr.port() + 1
        ))
    );
    alice.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_presence_announces_only_contacts_and_links_and_finds_others_by_name() {
    use burrow_proto::rendezvous::PresenceScope;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("srv");
    let mut config = fast_server_config(&home, "127.0.0.1:0".parse().unwrap());
    config.broker.presence = PresenceScope::Watched;
    let server = start_server_with(&home, config).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    assert_eq!(alice.status().presence, "watched");
    // dave is alice's contact: she hears him come back, after bob and carol
    // came. Joins reach a node in the order the server noted them (or
    // together), so once dave's has come, bob's and carol's would have too.
    let dave_home = dir.path().join("dave");
    let dave = start_node(&dave_home, "dave", &server.url).await;
    alice
        .contacts(Some("dave"), None)
        .await
        .expect("dave found");
    let mut events = alice.subscribe();
    dave.shutdown().await;
    wait_event(&mut events, "dave leaving", |e| {
        matches!(e, NodeEvent::PeerOffline { name } if name == "dave").then_some(())
    })
    .await;
    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    let carol = start_node(&dir.path().join("carol"), "carol", &server.url).await;
    let dave = start_node(&dave_home, "dave", &server.url).await;
    wait_event(&mut events, "dave back", |e| {
        matches!(e, NodeEvent::PeerOnline { name } if name == "dave").then_some(())
    })
    .await;
    // Nobody else hears about anybody.
    let heard: Vec<String> = alice.peers().into_iter().filter_map(|p| p.name).collect();
    assert_eq!(heard, ["dave"], "alice hears only of her contact");
    assert!(
        bob.peers().is_empty() && carol.peers().is_empty(),
        "bob and carol hear of nobody: {:?} {:?}",
        bob.peers(),
        carol.peers()
    );

    // alice names bob: the server finds him, and the request goes through.
    let mut bob_events = bob.subscribe();
    alice.connect("bob").await.expect("bob found by name");
    wait_event(&mut bob_events, "alice's request", |e| {
        matches!(e, NodeEvent::IncomingRequest { name } if name == "alice").then_some(())
    })
    .await;
    bob.accept("alice").await.unwrap();
    wait_until("linked", || {
        link(&alice, "bob") == Some(ConnectionState::Direct)
    })
    .await;
    assert!(
        !online(&alice, "carol"),
        "carol is nobody's business of alice's"
    );

    // A contact is announced as it comes and goes.
    alice
        .contacts(Some("carol"), None)
        .await
        .expect("carol found by name");
    wait_until("carol online for alice", || online(&alice, "carol")).await;
    let mut events = alice.subscribe();
    carol.shutdown().await;
    wait_event(&mut events, "carol leaving", |e| {
        matches!(e, NodeEvent::PeerOffline { name } if name == "carol").then_some(())
    })
    .await;
    // A name nobody holds is still an unknown peer.
    assert!(matches!(
        alice.connect("nobody").await,
        Err(RequestError::Peer(PeerError::Unknown(_)))
    ));
    bob.shutdown().await;
    dave.shutdown().await;
    alice.shutdown().await;
    server.stop().await;
}
