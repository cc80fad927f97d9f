//! Tunnels on loopback, with real `burrow` processes driven through the CLI:
//! expose, forward, pipe, refusals in words, UDP, restarts, a port in use,
//! and forwards between serverless nodes.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::proc::*;
use common::tunnel::*;

fn expose(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["expose"];
    all.extend_from_slice(args);
    json(home, &all)
}

#[test]
fn a_forward_reaches_an_exposed_service_and_carries_half_closes_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut ab = alice_and_bob(dir.path());
    let target = echo_server(8);
    let e = expose(&ab.ah, &["web", &target.to_string(), "--allow", "bob"]);
    assert_eq!(e["allow"], serde_json::json!(["bob"]));
    let (ok, out, err) = run(&ab.bh, &["services", "alice"]);
    assert!(ok, "{err}");
    assert!(out.contains("alice/web (tcp)"), "{out}");

    let port = free_port();
    let (ok, out, err) = run(&ab.bh, &["forward", "alice/web", &port.to_string()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("forwarding 127.0.0.1:{port} to alice/web")),
        "{out}"
    );
    let data = random(3 << 20, 1);
    assert!(
        round_trip(connect(port), &data) == data,
        "3 MiB back, byte for byte"
    );
    ab.bob
        .expect_line(&format!("127.0.0.1:{port} → alice/web: carried direct"));

    // Several at once.
    let threads: Vec<_> = (0..4u8)
        .map(|i| {
            std::thread::spawn(move || {
                let d = random(100_000, i);
                assert!(round_trip(connect(port), &d) == d);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let f = wait_json(&ab.bh, &["forward"], "the connections closed", |v| {
        v[0]["open"] == 0
    });
    assert_eq!(f[0]["total"], 5);
    assert_eq!(f[0]["bytes_out"], 3 * 1024 * 1024 + 400_000);
    assert_eq!(f[0]["bytes_back"], f[0]["bytes_out"]);
    let (_, out, _) = run(&ab.bh, &["forward"]);
    assert!(out.contains("0 connections open, 5 in all"), "{out}");
}

#[test]
fn a_peer_not_allowed_is_refused_in_words_and_allow_changes_keep_allowed_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut ab = alice_and_bob(dir.path());
    let ch = dir.path().join("carol");
    let mut carol = loopback_up(&ch, &ab.url, "carol");
    link((&ch, "carol"), (&ab.ah, "alice"));
    let target = echo_server(8);
    expose(&ab.ah, &["web", &target.to_string(), "--allow", "bob"]);

    // carol is told, not left hanging: by forward, services and pipe alike.
    let (ok, _, err) = run(&ch, &["forward", "alice/web", &free_port().to_string()]);
    assert!(!ok);
    assert!(
        err.contains("alice does not expose \"web\" to you"),
        "{err}"
    );
    let (ok, out, _) = run(&ch, &["services", "alice"]);
    assert!(ok && out.contains("alice exposes nothing to you"), "{out}");
    let (ok, _, err) = run(&ch, &["pipe", "alice/web"]);
    assert!(!ok);
    assert!(
        err.contains("alice does not expose \"web\" to you"),
        "{err}"
    );
    assert!(err.contains("hint: burrow services"), "{err}");
    ab.alice
        .expect_line("refused carol's connection to \"web\"");

    // bob holds a connection open while alice changes who may connect.
    let port = free_port();
    assert!(run(&ab.bh, &["forward", "alice/web", &port.to_string()]).0);
    let mut held = connect(port);
    held.write_all(b"one").unwrap();
    let mut buf = [0u8; 3];
    held.read_exact(&mut buf).unwrap();
    wait_json(&ab.ah, &["expose"], "bob's connection counted", |v| {
        v[0]["connections"] == 1
    });
    expose(
        &ab.ah,
        &[
            "web",
            &target.to_string(),
            "--allow",
            "bob",
            "--allow",
            "carol",
        ],
    );
    held.write_all(b"two").unwrap();
    held.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two", "bob's connection survived the change");
    assert!(
        run(&ch, &["forward", "alice/web", &free_port().to_string()]).0,
        "carol may now"
    );

    // Taking bob off ends his connection (a reset, not a silent hang).
    expose(&ab.ah, &["web", &target.to_string(), "--allow", "carol"]);
    let mut rest = Vec::new();
    let r = held.read_to_end(&mut rest);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "reset: {r:?}"
    );
    assert!(carol.terminate().success());
}

#[test]
fn nothing_listening_resets_the_connection_with_a_line_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let mut ab = alice_and_bob(dir.path());
    let absent = free_port();
    // Allowed: the service may start later.
    expose(&ab.ah, &["web", &absent.to_string(), "--allow", "bob"]);
    let port = free_port();
    assert!(run(&ab.bh, &["forward", "alice/web", &port.to_string()]).0);
    let mut s = connect(port);
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "reset, not closed: {r:?}"
    );
    ab.alice.expect_line(&format!(
        "bob's connection to \"web\" reset: nothing answers at 127.0.0.1:{absent}"
    ));
    ab.bob.expect_line("nothing answers at alice's \"web\"");

    // Once it listens, the same forward works.
    let l = TcpListener::bind(("127.0.0.1", absent)).unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
    });
    let mut s = connect(port);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
}

#[test]
fn pipe_carries_stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let ab = alice_and_bob(dir.path());
    let target = echo_server(1);
    expose(&ab.ah, &["echo", &target.to_string(), "--allow", "bob"]);
    let mut pipe = Command::new(BIN)
        .arg("--home")
        .arg(&ab.bh)
        .args(["pipe", "alice/echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data = random(1 << 20, 7);
    let mut stdin = pipe.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent).unwrap());
    let mut out = Vec::new();
    pipe.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(pipe.wait().unwrap().success());
    assert!(out == data, "1 MiB through the pipe and back");
}

#[test]
fn udp_flows_carry_small_and_large_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let ab = alice_and_bob(dir.path());
    let target = udp_echo();
    expose(
        &ab.ah,
        &["game", &target.to_string(), "--udp", "--allow", "bob"],
    );
    let (_, out, _) = run(&ab.bh, &["services", "alice"]);
    assert!(out.contains("alice/game (udp)"), "{out}");
    let port = free_port();
    let f = json(&ab.bh, &["forward", "alice/game", &port.to_string()]);
    assert_eq!(
        f["transport"], "udp",
        "the forward takes the service's transport"
    );

    // Two clients, each its own flow; a datagram too large for QUIC's
    // datagrams goes on the flow's stream.
    for (i, size) in [(0u8, 100usize), (1, 1200), (2, 20_000)] {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let d = random(size, i);
        let mut back = vec![0u8; 65536];
        // UDP: the first datagrams may come before the flow is open.
        let got = (0..20).find_map(|_| {
            c.send_to(&d, ("127.0.0.1", port)).unwrap();
            c.recv(&mut back).ok()
        });
        assert_eq!(got, Some(size), "{size} bytes echoed");
        assert!(back[..size] == d[..]);
    }
    let f = json(&ab.bh, &["forward"]);
    assert!(f[0]["total"].as_u64().unwrap() >= 3, "{f}");
}

#[test]
fn exposes_and_forwards_survive_a_restart_and_a_forward_asks_for_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut ab = alice_and_bob(dir.path());
    let target = echo_server(2);
    expose(&ab.ah, &["web", &target.to_string(), "--allow", "bob"]);
    let port = free_port();
    assert!(run(&ab.bh, &["forward", "alice/web", &port.to_string()]).0);
    assert!(ab.bob.terminate().success());
    assert!(ab.alice.terminate().success());

    let mut alice = loopback_up(&ab.ah, &ab.url, "alice");
    alice.expect_line("exposing web (tcp 127.0.0.1:");
    let mut bob = loopback_up(&ab.bh, &ab.url, "bob");
    bob.expect_line(&format!("forwarding 127.0.0.1:{port} to alice/web (tcp)"));
    wait_json(&ab.bh, &["peers"], "alice online", |v| {
        peer(v, "alice").is_some_and(|p| p["online"] == true)
    });
    // No link yet: the first connection asks alice, who accepts.
    let first = std::thread::spawn(move || round_trip(connect(port), b"after a restart"));
    alice.expect_line("bob asks to connect");
    assert!(run(&ab.ah, &["accept", "bob"]).0);
    assert_eq!(first.join().unwrap(), b"after a restart");
}

#[test]
fn a_forward_on_a_port_in_use_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let ab = alice_and_bob(dir.path());
    let target = echo_server(1);
    expose(&ab.ah, &["web", &target.to_string(), "--allow", "bob"]);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, _, err) = run(&ab.bh, &["forward", "alice/web", &port]);
    assert!(!ok);
    assert!(
        err.contains(&format!("127.0.0.1:{port} is in use by")),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("hint: pick another local port"), "{err}");
    let (ok, _, err) = run(&ab.bh, &["forward", "alice/nope", &free_port().to_string()]);
    assert!(
        !ok && err.contains("alice does not expose \"nope\" to you"),
        "{err}"
    );
    let (ok, _, err) = run(&ab.ah, &["expose", "web", "127.0.0.1:1"]);
    assert!(!ok && err.contains("--allow"), "{err}");
}

#[test]
fn forwards_work_between_serverless_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (ch, dh) = (dir.path().join("carol"), dir.path().join("dave"));
    let _carol = serverless_up(&ch, "carol", None, &[]);
    let t = ticket(&ch);
    let _dave = serverless_up(&dh, "dave", Some(&t), &[]);
    wait_json(&ch, &["peers"], "dave linked", |v| {
        peer(v, "dave").is_some_and(|p| p["connection"] == "direct")
    });
    let target = echo_server(1);
    expose(&ch, &["web", &target.to_string(), "--allow", "dave"]);
    let port = free_port();
    let (ok, _, err) = run(&dh, &["forward", "carol/web", &port.to_string()]);
    assert!(ok, "{err}");
    assert_eq!(
        round_trip(connect(port), b"no server at all"),
        b"no server at all"
    );
}

#[test]
fn a_flood_of_refused_streams_is_struck_and_ends_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let ab = alice_and_bob(dir.path());
    let ch = dir.path().join("carol");
    let _carol = loopback_up(&ch, &ab.url, "carol");
    link((&ch, "carol"), (&ab.ah, "alice"));
    let target = echo_server(1);
    expose(&ab.ah, &["web", &target.to_string(), "--allow", "bob"]);
    // A person retrying a wrong name a few times is only told no; a scanner
    // is cut off after 30 in a minute (and three strikes).
    let mut refused = 0;
    for _ in 0..60 {
        let (ok, _, err) = run(&ch, &["pipe", "alice/web"]);
        assert!(!ok);
        if !err.contains("does not expose") {
            break;
        }
        refused += 1;
    }
    assert!(
        (31..=40).contains(&refused),
        "{refused} refusals before the link went"
    );
    wait_json(&ch, &["peers"], "the link cut", |v| {
        peer(v, "alice").is_some_and(|p| p["connection"] == "none")
    });
    // bob, allowed and well-behaved, is untouched.
    let port = free_port();
    assert!(run(&ab.bh, &["forward", "alice/web", &port.to_string()]).0);
    assert_eq!(round_trip(connect(port), b"still fine"), b"still fine");
}

#[test]
fn a_forward_whose_service_went_stops_asking_and_is_not_taken_for_a_scanner() {
    let dir = tempfile::tempdir().unwrap();
    let mut ab = alice_and_bob(dir.path());
    let target = echo_server(1);
    expose(&ab.ah, &["web", &target.to_string(), "--allow", "bob"]);
    let port = free_port();
    assert!(run(&ab.bh, &["forward", "alice/web", &port.to_string()]).0);
    assert!(run(&ab.ah, &["unexpose", "web"]).0);
    // A client retrying in a loop: every connection is reset, and after the
    // first refusal bob's node stops asking alice for a while.
    for i in 0..60 {
        // (Only reading: a write that met the reset would take its error.)
        let mut s = connect(port);
        let mut buf = Vec::new();
        let r = s.read_to_end(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "connection {i}: {r:?}"
        );
    }
    ab.bob.expect_line("alice does not expose \"web\" to you");
    ab.alice.expect_line("refused bob's connection to \"web\"");
    let peers = json(&ab.bh, &["peers"]);
    assert_eq!(
        peer(&peers, "alice").unwrap()["connection"],
        "direct",
        "bob was not struck: {peers}"
    );
}
