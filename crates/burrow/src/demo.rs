//! `burrow demo`: a server and two nodes on loopback, in this process, doing what
//! people do with burrow, with a transcript of each step.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use burrow_node::api::ConnectionState;
use burrow_node::{Node, NodeConfig, NodeEvent};
use burrow_proto::{SecretKey, ServerAddr};
use burrow_server::{Server, ServerConfig};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::CliError;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the first event `pick` accepts.
async fn wait_for<T>(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    mut pick: impl FnMut(&NodeEvent) -> Option<T>,
) -> Result<T, CliError> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) => {
                if let Some(v) = pick(&e) {
                    return Ok(v);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => return Err(CliError::new(format!("demo: {what}: {e}"), None)),
            Err(_) => {
                return Err(CliError::new(
                    format!("demo: timed out waiting for {what}"),
                    None,
                ))
            }
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Size of the demo's shared file.
const DEMO_FILE: u64 = 128 << 20;

/// Writes `size` bytes of BLAKE3's extendable output to `path`: stands in for a
/// video, and is made fast.
fn write_demo_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut xof = blake3::Hasher::new().update(b"burrow demo").finalize_xof();
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        xof.fill(&mut block[..n]);
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()
}

/// alice shares a file; bob finds it in the tracker and downloads it, verified.
async fn share_a_file(dir: &Path, alice: &Node, bob: &Node) -> Result<(), CliError> {
    let file = dir.join("holiday.bin");
    write_demo_file(&file, DEMO_FILE)?;
    let hashed = Instant::now();
    let share = alice
        .share(file.to_str().expect("a UTF-8 temp path"), None)
        .await
        .map_err(node_err)?;
    println!(
        "
  alice   $ burrow share holiday.bin"
    );
    println!(
        "          {} MiB hashed in {} (BLAKE3): {}",
        DEMO_FILE >> 20,
        ms(hashed.elapsed()),
        &share.hash[..16]
    );
    let found = bob.search("holiday").await.map_err(node_err)?;
    println!("  bob     $ burrow search holiday");
    for f in &found {
        let who: Vec<&str> = f.providers.iter().map(|p| p.name.as_str()).collect();
        println!(
            "          {}  {} MiB  from {}",
            f.name,
            f.size >> 20,
            who.join(", ")
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let out = dir.join("bob-downloads");
    let got = bob
        .get(
            "holiday.bin",
            out.to_str().expect("a UTF-8 temp path"),
            false,
            tx,
        )
        .await
        .map_err(node_err)?;
    let secs = (got.elapsed_ms as f64 / 1000.0).max(0.001);
    println!("  bob     $ burrow get holiday.bin");
    println!(
        "          every 16 KiB checked against the hash, saved in {:.2} s: {:.0} MiB/s ({:.2} Gbit/s)",
        secs,
        (got.size >> 20) as f64 / secs,
        got.size as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// alice posts to the forum, bob replies; the thread as alice reads it.
async fn forum_thread(
    alice: &Node,
    alice_events: &mut broadcast::Receiver<NodeEvent>,
    bob: &Node,
    bob_events: &mut broadcast::Receiver<NodeEvent>,
) -> Result<(), CliError> {
    let posted = Instant::now();
    let first = alice
        .post("Anyone up for a game tonight?", None, None)
        .await
        .map_err(node_err)?;
    println!("\n  alice   $ burrow post \"Anyone up for a game tonight?\"");
    println!("          {}", first.id);
    wait_for(bob_events, "alice's post", |e| {
        matches!(e, NodeEvent::Post(p) if p.id == first.id).then_some(())
    })
    .await?;
    println!(
        "          signed by alice, gossiped to bob in {}",
        ms(posted.elapsed())
    );
    let reply = bob
        .post("yes, 9pm", Some(&first.id[..8]), None)
        .await
        .map_err(node_err)?;
    println!(
        "  bob     $ burrow post --reply-to {} \"yes, 9pm\"",
        &first.id[..8]
    );
    wait_for(alice_events, "bob's reply", |e| {
        matches!(e, NodeEvent::Post(p) if p.id == reply.id).then_some(())
    })
    .await?;
    println!("  alice   $ burrow forum");
    for line in crate::forum::tree_lines(alice.forum(None, None).await.map_err(node_err)?, None) {
        println!("          {line}");
    }
    Ok(())
}

pub async fn run() -> Result<(), CliError> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("burrow-demo-").tempdir()?;
    println!("burrow demo: a rendezvous server and two nodes, alice and bob, on this machine\n");

    let server_key = SecretKey::generate(&mut rand::rngs::OsRng);
    let mut server_config = ServerConfig::new(dir.path().join("server"));
    server_config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = Server::bind(&server_key, server_config)?;
    let server_url = ServerAddr {
        key: Some(server.id()),
        host: "127.0.0.1".into(),
        port: server.local_addr().port(),
        https: None,
    };
    println!(
        "  server  listening on {} (QUIC + STUN), id {}",
        server.local_addr(),
        server.id().short()
    );
    let stop_server = CancellationToken::new();
    let server_task = tokio::spawn(server.run(stop_server.clone()));

    let start_node = |name: &str| {
        let mut config = NodeConfig::new(
            dir.path().join(name),
            SecretKey::generate(&mut rand::rngs::OsRng),
            Some(server_url.clone()),
            name.parse().expect("demo names are valid"),
        );
        config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        Node::start(config)
    };
    let alice = start_node("alice")
        .await
        .map_err(|e| CliError::new(e, None))?;
    let mut alice_events = alice.subscribe();
    let st = alice.status();
    println!(
        "  alice   up: id {}, public address {}",
        &st.id[..8],
        st.public_addr.unwrap_or_default()
    );
    let bob = start_node("bob")
        .await
        .map_err(|e| CliError::new(e, None))?;
    let mut bob_events = bob.subscribe();
    let st = bob.status();
    println!(
        "  bob     up: id {}, public address {}",
        &st.id[..8],
        st.public_addr.unwrap_or_default()
    );
    wait_for(&mut alice_events, "bob to come online", |e| {
        matches!(e, NodeEvent::PeerOnline { name } if name == "bob").then_some(())
    })
    .await?;
    println!("  alice   sees: bob is online");

    let asked = Instant::now();
    bob.connect("alice")
        .await
        .map_err(|e| CliError::new(e, None))?;
    println!("  bob     $ burrow connect alice");
    wait_for(&mut alice_events, "bob's request", |e| {
        matches!(e, NodeEvent::IncomingRequest { name } if name == "bob").then_some(())
    })
    .await?;
    println!("  alice   sees: bob asks to connect");
    alice
        .accept("bob")
        .await
        .map_err(|e| CliError::new(e, None))?;
    println!("  alice   $ burrow accept bob");
    let (path, remote, rtt) = wait_for(&mut bob_events, "the connection", |e| match e {
        NodeEvent::Connected {
            name,
            path,
            remote,
            rtt_ms,
        } if name == "alice" => Some((*path, remote.clone(), *rtt_ms)),
        _ => None,
    })
    .await?;
    println!(
        "  bob     connected to alice: {path} QUIC ({remote}), TLS 1.3 with raw Ed25519 keys, rtt {rtt:.2} ms ({} after asking)",
        ms(asked.elapsed())
    );
    if path != ConnectionState::Direct {
        // It started on the relay; the punch moves it.
        let remote = wait_for(&mut bob_events, "the direct path", |e| match e {
            NodeEvent::PathChanged {
                name,
                path: ConnectionState::Direct,
                remote,
                ..
            } if name == "alice" => Some(remote.clone()),
            _ => None,
        })
        .await?;
        println!(
            "          moved to a direct path ({remote}) {} after asking",
            ms(asked.elapsed())
        );
    }

    let sent = Instant::now();
    bob.send("alice", "hi alice, it's bob. end-to-end encrypted!")
        .await
        .map_err(|e| CliError::new(e, None))?;
    println!("  bob     $ burrow send alice \"hi alice, it's bob. end-to-end encrypted!\"");
    println!(
        "          delivered, stored by alice and acknowledged in {}",
        ms(sent.elapsed())
    );
    let sent = Instant::now();
    alice
        .send("bob", "hello bob, got it!")
        .await
        .map_err(|e| CliError::new(e, None))?;
    println!("  alice   $ burrow send bob \"hello bob, got it!\"");
    println!(
        "          delivered, stored by bob and acknowledged in {}",
        ms(sent.elapsed())
    );

    println!("\n  alice   $ burrow messages");
    for m in alice
        .messages(10)
        .await
        .map_err(|e| CliError::new(e, None))?
    {
        println!("          {}", crate::client::message_line(&m));
    }

    share_a_file(dir.path(), &alice, &bob).await?;
    forum_thread(&alice, &mut alice_events, &bob, &mut bob_events).await?;

    bob.shutdown().await;
    wait_for(&mut alice_events, "bob to leave", |e| {
        matches!(e, NodeEvent::PeerOffline { name } if name == "bob").then_some(())
    })
    .await?;
    println!("\n  bob     stops; alice sees: bob went offline");
    alice.shutdown().await;
    stop_server.cancel();
    let _ = server_task.await;
    println!(
        "\ndone in {:.2} s. To run it across machines, see the README's walkthrough.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A node operation's error as the CLI shows it, with its hint.
fn node_err(e: impl burrow_node::Hinted) -> CliError {
    let hint = e.hint();
    CliError::new(e, hint)
}
