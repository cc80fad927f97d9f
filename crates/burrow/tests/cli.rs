//! The `burrow` binary as people and scripts use it: real processes on 127.0.0.1,
//! driven through the CLI, asserting on what it prints.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::proc::*;

/// A server on loopback whose requests expire in 5 s.
fn server(home: &Path) -> (Proc, String) {
    loopback_server(home, &["--request-ttl", "5s"])
}

fn up(home: &Path, url: &str, name: &str) -> Proc {
    loopback_up(home, url, name)
}

#[test]
fn the_walkthrough_works_and_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (ah, bh) = (dir.path().join("alice"), dir.path().join("bob"));
    let (_srv, url) = server(&dir.path().join("srv"));
    let mut alice = up(&ah, &url, "alice");
    let mut bob = up(&bh, &url, "bob");

    let peers = wait_json(&bh, &["peers"], "alice online", |v| {
        peer(v, "alice").is_some_and(|p| p["online"] == true)
    });
    let a = peer(&peers, "alice").unwrap();
    for field in ["id", "name", "online", "connection", "rtt_ms"] {
        assert!(a.get(field).is_some(), "peers --json lacks {field}: {a}");
    }
    assert_eq!(a["connection"], "none");

    let (ok, out, _) = run(&bh, &["connect", "alice"]);
    assert!(ok && out.contains("asked alice"), "{out}");
    alice.expect_line("bob asks to connect: burrow accept bob");
    assert_eq!(
        peer(&json(&ah, &["peers"]), "bob").unwrap()["connection"],
        "pending_in"
    );
    assert_eq!(
        peer(&json(&bh, &["peers"]), "alice").unwrap()["connection"],
        "pending_out"
    );
    let (ok, _, _) = run(&ah, &["accept", "bob"]);
    assert!(ok);
    // The connection starts on whichever path is ready first (relay or punched);
    // on loopback the punch always succeeds, so it ends direct.
    let line = bob.expect_line("connected to alice, ");
    assert!(line.contains("rtt") && line.contains("ms"), "{line}");
    let peers = wait_json(&bh, &["peers"], "direct", |v| {
        peer(v, "alice").is_some_and(|p| p["connection"] == "direct")
    });
    assert!(peer(&peers, "alice").unwrap()["rtt_ms"].as_f64().unwrap() > 0.0);

    let (ok, out, err) = run(&bh, &["send", "alice", "hello", "from", "bob"]);
    assert!(ok, "{err}");
    assert!(out.contains("delivered to alice"), "{out}");
    alice.expect_line("bob: hello from bob");
    let msgs = json(&ah, &["messages"]);
    let m = &msgs.as_array().unwrap()[0];
    for field in [
        "id",
        "from",
        "from_name",
        "to",
        "text",
        "sent_at",
        "received_at",
    ] {
        assert!(m.get(field).is_some(), "messages --json lacks {field}: {m}");
    }
    assert_eq!(
        (m["from_name"].as_str(), m["text"].as_str()),
        (Some("bob"), Some("hello from bob"))
    );
    assert!(
        m["sent_at"].as_str().unwrap().ends_with('Z')
            && m["sent_at"].as_str().unwrap().contains('T'),
        "RFC 3339: {m}"
    );

    let status = json(&ah, &["status"]);
    for field in ["id", "name", "server", "public_addr", "connections"] {
        assert!(
            status.get(field).is_some(),
            "status --json lacks {field}: {status}"
        );
    }
    assert_eq!(status["name"], "alice");
    assert_eq!(status["connections"].as_array().unwrap().len(), 1);

    // A second node on the same home is refused, with a hint.
    let (ok, _, err) = run(&ah, &["up", "--server", &url, "--name", "alice"]);
    assert!(!ok);
    assert!(
        err.contains("a node is already running in") && err.contains("hint:"),
        "{err}"
    );

    // Errors a person can act on.
    let (ok, _, err) = run(&bh, &["send", "carol", "hi"]);
    assert!(
        !ok && err.contains("no peer called \"carol\"") && err.contains("hint: burrow peers"),
        "{err}"
    );
    let (ok, _, err) = run(&dir.path().join("nobody"), &["peers"]);
    assert!(
        !ok && err.contains("no node is running") && err.contains("burrow up"),
        "{err}"
    );

    // Ctrl-C / SIGTERM: a clean exit, and the peer hears the goodbye at once.
    let status = bob.terminate();
    assert!(status.success(), "{status:?}");
    bob.expect_line("stopped");
    alice.expect_line("bob went offline");
    let (ok, _, _) = run(&bh, &["peers"]);
    assert!(!ok, "the control socket is gone after shutdown");
}

#[test]
fn a_node_killed_without_goodbye_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let (ah, bh) = (dir.path().join("alice"), dir.path().join("bob"));
    let (_srv, url) = server(&dir.path().join("srv"));
    let mut alice = up(&ah, &url, "alice");
    let mut bob = up(&bh, &url, "bob");
    alice.expect_line("bob is online");
    let killed = Instant::now();
    bob.child.kill().unwrap(); // SIGKILL: no goodbye
    bob.child.wait().unwrap();
    alice.expect_line("bob went offline");
    // The server's idle timeout is 1.5 s: it must be that, not an instant goodbye,
    // and well under the test's patience.
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let peers = json(&ah, &["peers"]);
    assert!(
        peer(&peers, "bob").is_none_or(|p| p["online"] == false),
        "{peers}"
    );

    // bob comes back with the same key and name.
    let _bob = up(&bh, &url, "bob");
    alice.expect_line("bob is online");
}

#[test]
fn nodes_killed_together_leave_presence_within_the_idle_timeout() {
    // QUIC restarts its idle timer when the server sends to a node, and each
    // dead node's departure is news to the others: without the server's own
    // watch they were listed for up to twice the timeout (57 s against 30 s).
    const IDLE: Duration = Duration::from_secs(4);
    const KEEPALIVE: Duration = Duration::from_millis(500);
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let (_srv, url) = loopback_server(&srv, &["--idle-timeout", "4s", "--conn-rate", "100"]);
    let mut alice = up(&dir.path().join("alice"), &url, "alice");
    let mut doomed: Vec<Proc> = (0..5)
        .map(|i| {
            let home = dir.path().join(format!("n{i}"));
            let name = format!("doomed{i}");
            let mut p = Proc::spawn(&[
                "--home",
                home.to_str().unwrap(),
                "up",
                "--server",
                &url,
                "--name",
                &name,
                "--bind",
                "127.0.0.1:0",
                "--keepalive",
                "500ms",
                "--idle-timeout",
                "4s",
            ]);
            p.expect_line("is up");
            p
        })
        .collect();
    for i in 0..5 {
        alice.expect_line(&format!("doomed{i} is online"));
    }
    assert_eq!(json(&srv, &["admin", "status"])["online"], 6);
    // Some keepalives go back and forth first, as they would.
    std::thread::sleep(2 * KEEPALIVE);
    for p in &mut doomed {
        p.child.kill().unwrap(); // SIGKILL: no goodbye
    }
    let killed = Instant::now();
    for p in &mut doomed {
        p.child.wait().unwrap();
    }
    let status = poll_json(&srv, &["admin", "status"], 3 * IDLE, |v| v["online"] == 1);
    let took = killed.elapsed();
    assert!(
        status.is_some(),
        "still listed {took:?} after they were killed"
    );
    // The last keepalive came at most KEEPALIVE before the kill, and the
    // server reads what it heard every tenth of the timeout.
    assert!(
        took >= IDLE - KEEPALIVE - Duration::from_millis(200)
            && took <= IDLE + IDLE / 10 + Duration::from_millis(600),
        "the server dropped them {took:?} after they were killed (idle timeout {IDLE:?})"
    );
    for i in 0..5 {
        alice.expect_line(&format!("doomed{i} went offline"));
    }
}

#[test]
fn a_node_restarted_at_once_takes_over_its_old_session() {
    let dir = tempfile::tempdir().unwrap();
    let (ah, bh) = (dir.path().join("alice"), dir.path().join("bob"));
    let (_srv, url) = server(&dir.path().join("srv"));
    let mut alice = up(&ah, &url, "alice");
    let mut bob = up(&bh, &url, "bob");
    alice.expect_line("bob is online");
    bob.child.kill().unwrap(); // no goodbye: the server still has bob's session
    bob.child.wait().unwrap();
    // The new session replaces the old one: bob is up at once (its first
    // message from the server is the Welcome), and for alice bob never left.
    let _bob = up(&bh, &url, "bob");
    alice.expect_line("bob is online");
    let peers = json(&ah, &["peers"]);
    assert_eq!(peer(&peers, "bob").unwrap()["online"], true, "{peers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_does_not_stop_the_server() {
    use burrow_net::{Endpoint, EndpointConfig};
    use burrow_proto::rendezvous;
    use rand::RngCore;

    let dir = tempfile::tempdir().unwrap();
    let (mut srv, url) = server(&dir.path().join("srv"));
    let server_addr: burrow_proto::ServerAddr = url.parse().unwrap();
    let addr: std::net::SocketAddr = server_addr.host_port().parse().unwrap();

    // 1. Random datagrams, some dressed up as STUN (from an address of their
    //    own, as an attacker's would be).
    let junk = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut rng = rand::thread_rng();
    for i in 0..2000usize {
        let mut d = vec![0u8; 1 + (i * 13) % 1400];
        rng.fill_bytes(&mut d);
        if i % 4 == 0 && d.len() >= 20 {
            d[0] &= 0x3f;
            d[4..8].copy_from_slice(&burrow_proto::stun::MAGIC_COOKIE);
        }
        let _ = junk.send_to(&d, addr);
    }

    // 2. Real QUIC connections sending bad frames: each is closed, nothing else.
    let key = burrow_proto::SecretKey::generate(&mut rand::rngs::OsRng);
    let ep = Endpoint::bind(
        &key,
        EndpointConfig {
            bind: "127.0.0.2:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let oversize = ((rendezvous::MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    let mut unknown_version = rendezvous::encode_client(&rendezvous::ClientMsg::Bye).unwrap();
    unknown_version[4] = 99;
    let garbage = {
        let mut g = vec![0, 0, 0, 40];
        g.extend((0..40).map(|i| (i * 37) as u8));
        g
    };
    let truncated = vec![0, 0, 0, 50, rendezvous::VERSION, 1, 2];
    for bad in [oversize, unknown_version, garbage, truncated] {
        let (conn, _) = ep
            .connect(addr, rendezvous::ALPN, server_addr.key)
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        send.finish().unwrap();
        // Well before the server's 10 s Hello timeout: it is the frame that did it.
        let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
        assert!(
            closed.is_ok(),
            "server kept a connection that sent a bad frame"
        );
    }
    // 3. A connection that never says Hello is dropped too (after the hello timeout)
    //    but doesn't block anyone; an honest node registers right away.
    let _silent = ep
        .connect(addr, rendezvous::ALPN, server_addr.key)
        .await
        .unwrap();
    let home = dir.path().join("alice");
    let alice = tokio::task::spawn_blocking(move || {
        let mut p = up(&home, &url, "alice");
        p.expect_line("public address");
        p
    })
    .await
    .unwrap();
    assert!(
        srv.child.try_wait().unwrap().is_none(),
        "server process died"
    );
    drop(alice);
    let status = srv.terminate();
    // A clean exit on SIGTERM (Windows has none to send: there it is ended).
    assert!(status.success() || cfg!(windows));
}

#[test]
fn the_demo_connects_chats_shares_a_file_and_posts() {
    let out = std::process::Command::new(BIN)
        .arg("demo")
        .env_remove("BURROW_HOME")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "bob     connected to alice",
        "delivered, stored by alice",
        "$ burrow share holiday.bin",
        "holiday.bin  128 MiB  from alice",
        "every 16 KiB checked against the hash, saved in",
        "Gbit/s",
        "gossiped to bob in",
        "alice (",
        "↳ ",
        "bob (",
        "yes, 9pm",
        "alice sees: bob went offline",
    ] {
        assert!(text.contains(step), "the demo lacks {step:?}:\n{text}");
    }
}
