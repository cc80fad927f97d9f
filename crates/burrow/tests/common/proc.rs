//! `burrow` processes for tests: spawn, read their output, drive the CLI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_burrow");

/// A `burrow` process whose stdout lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::spawn_command(cmd)
    }

    /// Starts `cmd` (e.g. `burrow` inside a lab namespace).
    pub fn spawn_command(cmd: Command) -> Proc {
        Proc::start(cmd, Stdio::inherit())
    }

    /// Like [`Proc::spawn`], with standard error written to `stderr` (for
    /// tests of what a command says there).
    pub fn spawn_with_stderr(args: &[&str], stderr: std::fs::File) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args);
        Proc::start(cmd, stderr.into())
    }

    fn start(mut cmd: Command, stderr: Stdio) -> Proc {
        let mut child = cmd
            .env_remove("BURROW_HOME")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("burrow starts");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + super::WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits until `n` lines contain `needle`; returns them.
    pub fn expect_lines(&mut self, needle: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + super::WAIT;
        loop {
            let found: Vec<String> = self
                .seen
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "fewer than {n} lines containing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits up to `limit` for a line containing any of `needles`; returns it.
    pub fn expect_any(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .seen
                .iter()
                .find(|l| needles.iter().any(|n| l.contains(n)))
            {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line containing any of {needles:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Asks the process to stop (SIGTERM) and waits for it. Windows has no
    /// such signal for a process started this way: there it is ended, and
    /// the tests that check a clean exit run on Unix.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        #[cfg(unix)]
        unsafe_kill(self.child.id(), "TERM");
        #[cfg(windows)]
        let _ = self.child.kill();
        let deadline = Instant::now() + super::WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
pub fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Runs a client command; returns (success, stdout, stderr).
pub fn run(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BURROW_HOME")
        .output()
        .expect("burrow runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub fn json(home: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = run(home, &all);
    assert!(ok, "burrow {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

pub fn wait_json(home: &Path, args: &[&str], what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + super::WAIT;
    loop {
        let v = json(home, args);
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `burrow <args> --json` every 20 ms until `check` holds (`Some(value)`)
/// or `limit` passes (`None`): for outcomes a test reports rather than requires.
pub fn poll_json(
    home: &Path,
    args: &[&str],
    limit: Duration,
    check: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let v = json(home, args);
        if check(&v) {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn peer<'a>(peers: &'a Value, name: &str) -> Option<&'a Value> {
    peers.as_array()?.iter().find(|p| p["name"] == name)
}

/// Starts `burrow server` on a free loopback port with fast timeouts (an idle
/// timeout of 1.5 s unless `extra` gives one) and `extra` arguments; returns
/// the process and its join URL.
pub fn loopback_server(home: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "--home",
        home.to_str().expect("a UTF-8 temp path"),
        "server",
        "--listen",
        "127.0.0.1:0",
    ];
    if !extra.contains(&"--idle-timeout") {
        args.extend(["--idle-timeout", "1500ms"]);
    }
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    let line = p.expect_line("join URL:");
    let url = line.split_whitespace().last().expect("a URL").to_string();
    (p, url)
}

/// The arguments of `burrow up` as `name` on loopback with fast keepalives
/// (`--home` not included).
pub fn loopback_up_args<'a>(url: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "up",
        "--server",
        url,
        "--name",
        name,
        "--bind",
        "127.0.0.1:0",
        "--keepalive",
        "300ms",
        "--idle-timeout",
        "1500ms",
    ]
}

/// Starts `burrow up` as `name` on loopback with fast keepalives; waits until
/// it is up.
pub fn loopback_up(home: &Path, url: &str, name: &str) -> Proc {
    let mut args = vec!["--home", home.to_str().expect("a UTF-8 temp path")];
    args.extend(loopback_up_args(url, name));
    let mut p = Proc::spawn(&args);
    p.expect_line("is up");
    p
}

/// `from` asks `to` for a connection and `to` accepts; waits until linked.
pub fn link(from: (&Path, &str), to: (&Path, &str)) {
    // Online, and any connection to an earlier run of it gone.
    wait_json(from.0, &["peers"], "peer online, not linked", |v| {
        peer(v, to.1).is_some_and(|p| p["online"] == true && p["connection"] == "none")
    });
    let (ok, _, err) = run(from.0, &["connect", to.1]);
    assert!(ok, "{err}");
    wait_json(to.0, &["peers"], "request", |v| {
        peer(v, from.1).is_some_and(|p| p["connection"] == "pending_in")
    });
    let (ok, _, err) = run(to.0, &["accept", from.1]);
    assert!(ok, "{err}");
    wait_json(from.0, &["peers"], "connected", |v| {
        peer(v, to.1).is_some_and(|p| p["connection"] == "direct" || p["connection"] == "relayed")
    });
}

/// A server on loopback with alice and bob up, bob linked to alice. Fields
/// drop in order: the nodes stop before the server.
pub struct AliceAndBob {
    pub alice: Proc,
    pub bob: Proc,
    pub server: Proc,
    pub url: String,
    /// alice's home.
    pub ah: PathBuf,
    /// bob's home.
    pub bh: PathBuf,
}

/// [`AliceAndBob`] in `dir` (homes `dir/alice`, `dir/bob`, `dir/srv`).
pub fn alice_and_bob(dir: &Path) -> AliceAndBob {
    let (ah, bh) = (dir.join("alice"), dir.join("bob"));
    let (server, url) = loopback_server(&dir.join("srv"), &[]);
    let alice = loopback_up(&ah, &url, "alice");
    let bob = loopback_up(&bh, &url, "bob");
    link((&bh, "bob"), (&ah, "alice"));
    AliceAndBob {
        alice,
        bob,
        server,
        url,
        ah,
        bh,
    }
}

/// Starts a serverless `burrow up` as `name` on loopback (joining from
/// `ticket`, if given) with fast keepalives and `extra` arguments; waits until
/// it is up.
pub fn serverless_up(home: &Path, name: &str, ticket: Option<&str>, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(serverless_args(home, name, ticket))
        .args(["--bind", "127.0.0.1:0"])
        .args(extra);
    let mut p = Proc::spawn_command(cmd);
    p.expect_line("is up");
    p
}

/// The node's ticket.
pub fn ticket(home: &Path) -> String {
    let (ok, out, err) = run(home, &["ticket"]);
    assert!(ok, "ticket: {err}");
    out.trim().to_string()
}

/// The node's forum (a topic, default `forum`) as `forum --json` lists it.
pub fn forum(home: &Path) -> Vec<Value> {
    json(home, &["forum"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `home`'s forum has a post with this id.
pub fn wait_post(home: &Path, id: &str) -> Value {
    let v = wait_json(home, &["forum"], &format!("post {}", &id[..8]), |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p["id"] == id))
    });
    v.as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == id).cloned())
        .expect("found above")
}

/// Posts `text` (as a reply to `parent`, if given); returns the post's id.
pub fn post(home: &Path, text: &str, parent: Option<&str>) -> String {
    let mut args = vec!["post"];
    if let Some(p) = parent {
        args.extend(["--reply-to", &p[..8]]);
    }
    args.push(text);
    let (ok, out, err) = run(home, &args);
    assert!(ok, "post: {err}");
    let id = out.trim().to_string();
    assert_eq!(id.len(), 64, "post prints the id: {out}");
    id
}

/// `burrow up`'s arguments for a serverless node on loopback.
pub(crate) fn serverless_args(home: &Path, name: &str, ticket: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--home",
        home.to_str().expect("a UTF-8 temp path"),
        "up",
        "--name",
        name,
        "--keepalive",
        "300ms",
        "--idle-timeout",
        "1500ms",
    ]
    .map(String::from)
    .to_vec();
    if let Some(t) = ticket {
        args.extend(["--join".to_string(), t.to_string()]);
    }
    args
}

#[cfg(target_os = "linux")]
#[allow(unused_imports)]
pub use super::lab::*;
