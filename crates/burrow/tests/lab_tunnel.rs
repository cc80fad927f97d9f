//! Tunnels through the lab's kernel NATs, with real clients and servers at
//! both ends: OpenSSH through `burrow pipe` as a ProxyCommand, curl fetching
//! from Python's HTTP server through a forward (relayed and direct), and a
//! TCP connection that outlives its link's move from the relay to a direct
//! path. Real `burrow` processes in network namespaces, driven by the CLI.
//!
//! Runs as root with iproute2, nftables, conntrack, OpenSSH, curl and
//! Python; skips with a printed reason elsewhere, except under
//! `BURROW_LAB=required` (CI), where it fails.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burrow_lab::{require_or_skip, Host, NatKind};
use common::proc::*;
use common::tunnel::*;

/// Long enough for a punch (10 s deadline) or a re-punch after a path died.
const RECOVER: Duration = Duration::from_secs(20);
/// The file curl fetches.
const FILE_SIZE: u64 = 64 << 20;

/// A helper program (sshd, an HTTP server), killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `port` on `host`'s loopback.
fn wait_listening(host: &Host, port: u16) {
    let deadline = Instant::now() + common::WAIT;
    while host
        .within(move || TcpStream::connect(("127.0.0.1", port)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free port on `host`'s loopback.
fn free_port_on(host: &Host) -> u16 {
    let l = host.within(|| TcpListener::bind("127.0.0.1:0")).unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `ssh-keygen` for a new ed25519 key at `path`.
fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn ssh_reaches_sshd_through_burrow_pipe_across_two_nats_directly() {
    let Some(mut lab) =
        require_or_skip("ssh_reaches_sshd_through_burrow_pipe_across_two_nats_directly")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, _) = lab.add_peer("amy", NatKind::PortRestricted).unwrap();
    let (h2, _) = lab.add_peer("ben", NatKind::FullCone).unwrap();
    let mut amy = LabNode::up(&h1, dir.path(), &url, "amy");
    let mut ben = LabNode::up(&h2, dir.path(), &url, "ben");
    ben.link(&mut amy);
    assert!(ben.wait_path("amy", "direct", RECOVER).is_some());

    // A real sshd on amy's loopback, with a key ben's ssh holds.
    let keys = dir.path().join("ssh");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("host"));
    keygen(&keys.join("id"));
    std::fs::copy(keys.join("id.pub"), keys.join("authorized_keys")).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port_on(&h1);
    let config = keys.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {k}/host\nAuthorizedKeysFile {k}/authorized_keys\n\
             PidFile {k}/sshd.pid\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nUsePAM no\n",
            k = keys.display()
        ),
    )
    .unwrap();
    let mut sshd = h1.command("/usr/sbin/sshd");
    sshd.arg("-D").arg("-e").arg("-f").arg(&config);
    let _sshd = Daemon(sshd.stderr(Stdio::null()).spawn().unwrap());
    wait_listening(&h1, port);
    let e = json(
        &amy.home,
        &[
            "expose",
            "ssh",
            &format!("127.0.0.1:{port}"),
            "--allow",
            "ben",
        ],
    );
    assert_eq!(e["name"], "ssh");

    let proxy = format!("{BIN} --home {} pipe amy/ssh", ben.home.display());
    let out = h2
        .command("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(keys.join("id"))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=15",
            "-o",
        ])
        .arg(format!("ProxyCommand={proxy}"))
        .args(["root@amy", "echo", "hello through burrow"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through burrow\n"
    );
    assert!(
        ben.wait_path("amy", "direct", Duration::ZERO).is_some(),
        "carried direct"
    );
    assert!(server.terminate().success());
}

/// Serves `dir` over HTTP on `host`'s loopback (Python's http.server).
fn http_server(host: &Host, dir: &Path) -> (Daemon, u16) {
    let port = free_port_on(host);
    let mut cmd = host.command("python3");
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
        "--directory",
    ])
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let d = Daemon(cmd.spawn().unwrap());
    wait_listening(host, port);
    (d, port)
}

/// `from` exposes its HTTP server (serving `file`) to `to`, `to` forwards a
/// port to it, and curl fetches the file through it, byte for byte.
fn curl_through(dir: &Path, from: (&Host, &LabNode), to: (&Host, &mut LabNode), file: &Path) {
    let served = file.parent().unwrap();
    let (_http, port) = http_server(from.0, served);
    json(
        &from.1.home,
        &[
            "expose",
            "web",
            &format!("127.0.0.1:{port}"),
            "--allow",
            &to.1.name,
        ],
    );
    let local = free_port_on(to.0);
    let target = format!("{}/web", from.1.name);
    let (ok, _, err) = run(&to.1.home, &["forward", &target, &local.to_string()]);
    assert!(ok, "{err}");
    let got = dir.join(format!("{}-got.bin", to.1.name));
    let name = file.file_name().unwrap().to_str().unwrap();
    let out =
        to.0.command("curl")
            .args(["-sS", "--max-time", "120", "-o"])
            .arg(&got)
            .arg(format!("http://127.0.0.1:{local}/{name}"))
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::data::same_bytes(file, &got),
        "64 MiB, byte for byte"
    );
    to.1.proc
        .expect_line(&format!("127.0.0.1:{local} → {target}: carried"));
}

#[test]
fn curl_fetches_64_mib_through_forwards_relayed_and_direct() {
    let Some(mut lab) = require_or_skip("curl_fetches_64_mib_through_forwards_relayed_and_direct")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("www");
    std::fs::create_dir_all(&files).unwrap();
    let file = files.join("big.bin");
    common::data::write_random(&file, FILE_SIZE, 64);
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    // Two symmetric NATs: relayed.
    let (h1, _) = lab.add_peer("cat", NatKind::Symmetric).unwrap();
    let (h2, _) = lab.add_peer("dan", NatKind::Symmetric).unwrap();
    // Two port-restricted ones: direct.
    let (h3, _) = lab.add_peer("eve", NatKind::PortRestricted).unwrap();
    let (h4, _) = lab.add_peer("fox", NatKind::PortRestricted).unwrap();
    let mut cat = LabNode::up(&h1, dir.path(), &url, "cat");
    let mut dan = LabNode::up(&h2, dir.path(), &url, "dan");
    let mut eve = LabNode::up(&h3, dir.path(), &url, "eve");
    let mut fox = LabNode::up(&h4, dir.path(), &url, "fox");
    dan.link(&mut cat);
    fox.link(&mut eve);
    assert!(dan.wait_path("cat", "relayed", Duration::ZERO).is_some());
    assert!(fox.wait_path("eve", "direct", RECOVER).is_some());

    curl_through(dir.path(), (&h1, &cat), (&h2, &mut dan), &file);
    assert!(
        dan.wait_path("cat", "relayed", Duration::ZERO).is_some(),
        "two symmetric NATs: the whole file came through the relay"
    );
    curl_through(dir.path(), (&h3, &eve), (&h4, &mut fox), &file);
    assert!(fox.wait_path("eve", "direct", Duration::ZERO).is_some());
    assert!(server.terminate().success());
}

#[test]
fn a_tcp_connection_opened_while_relayed_keeps_working_after_the_link_goes_direct() {
    let Some(mut lab) = require_or_skip(
        "a_tcp_connection_opened_while_relayed_keeps_working_after_the_link_goes_direct",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &[]);
    let (h1, r1) = lab.add_peer("gus", NatKind::PortRestricted).unwrap();
    let (h2, r2) = lab.add_peer("hal", NatKind::PortRestricted).unwrap();
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    // The two sites can't reach each other: only the relay carries the link.
    lab.set_blocked(&r1, r2.wan(), true).unwrap();
    let mut gus = LabNode::up(&h1, dir.path(), &url, "gus");
    let mut hal = LabNode::up(&h2, dir.path(), &url, "hal");
    hal.link(&mut gus);
    assert!(
        hal.wait_path("gus", "direct", Duration::from_secs(3))
            .is_none(),
        "blocked sites find no direct path"
    );
    assert!(hal.wait_path("gus", "relayed", Duration::ZERO).is_some());

    let echo = h1.within(|| TcpListener::bind("127.0.0.1:0")).unwrap();
    let target = echo_on(echo, 1);
    json(
        &gus.home,
        &["expose", "echo", &target.to_string(), "--allow", "hal"],
    );
    let local = free_port_on(&h2);
    assert!(run(&hal.home, &["forward", "gus/echo", &local.to_string()]).0);
    let mut conn = timed(
        h2.within(move || TcpStream::connect(("127.0.0.1", local)))
            .unwrap(),
    );
    let mut exchange = |text: &[u8]| {
        conn.write_all(text).unwrap();
        let mut back = vec![0u8; text.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, text);
    };
    exchange(b"while relayed");
    hal.proc.expect_line("gus/echo: carried relayed");

    // The sites can reach each other again: the next re-punch goes direct,
    // and the same TCP connection carries on over the new path.
    lab.set_blocked(&r1, r2.wan(), false).unwrap();
    assert!(
        hal.wait_path("gus", "direct", Duration::from_secs(45))
            .is_some(),
        "direct once the sites see each other"
    );
    exchange(b"now direct");
    let f = json(&hal.home, &["forward"]);
    assert_eq!(f[0]["open"], 1, "the one connection, still open: {f}");
    assert_eq!(f[0]["total"], 1);
    assert!(server.terminate().success());
}
