//! The lab's helpers: `burrow` processes in its network namespaces (Linux).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proc::*;

/// Starts a serverless `burrow up` as `name` on lab `host` (joining from
/// `ticket`, if given); waits until it is up.
pub fn lab_serverless_up(
    host: &burrow_lab::Host,
    home: &Path,
    name: &str,
    ticket: Option<&str>,
) -> Proc {
    let mut cmd = host.command(BIN);
    cmd.args(serverless_args(home, name, ticket));
    let mut p = Proc::spawn_command(cmd);
    p.expect_line("is up");
    p
}

/// Starts `burrow server` in the lab's server namespace on its first address,
/// port 7700, with `extra` arguments; returns the process and its join URL.
pub fn lab_server(lab: &burrow_lab::Lab, home: &Path, extra: &[&str]) -> (Proc, String) {
    lab_server_on(lab, home, &format!("{}:7700", lab.server().addr), extra)
}

/// Like [`lab_server`], listening on `listen` (e.g. every address).
pub fn lab_server_on(
    lab: &burrow_lab::Lab,
    home: &Path,
    listen: &str,
    extra: &[&str],
) -> (Proc, String) {
    let mut cmd = lab.server().command(BIN);
    cmd.arg("--home")
        .arg(home)
        .args(["server", "--listen", listen])
        .args(extra);
    let mut server = Proc::spawn_command(cmd);
    let url = server
        .expect_line("join URL:")
        .split_whitespace()
        .last()
        .expect("a URL")
        .to_string();
    (server, url)
}

/// Starts `burrow up` as `name` on lab `host`, home `dir/name`; waits until it is up.
pub fn lab_up(
    host: &burrow_lab::Host,
    dir: &Path,
    url: &str,
    name: &str,
) -> (Proc, std::path::PathBuf) {
    lab_up_with(host, dir, url, name, &[])
}

/// Like [`lab_up`], with more flags for `burrow up`.
pub fn lab_up_with(
    host: &burrow_lab::Host,
    dir: &Path,
    url: &str,
    name: &str,
    extra: &[&str],
) -> (Proc, std::path::PathBuf) {
    let home = dir.join(name);
    let mut cmd = host.command(BIN);
    cmd.arg("--home")
        .arg(&home)
        .args(["up", "--server", url, "--name", name])
        .args(extra);
    let mut p = Proc::spawn_command(cmd);
    p.expect_line("is up");
    (p, home)
}

/// A running node in a test: its process, home and name.
pub struct LabNode {
    pub proc: Proc,
    pub home: std::path::PathBuf,
    pub name: String,
}

impl LabNode {
    pub fn up(host: &burrow_lab::Host, dir: &Path, url: &str, name: &str) -> LabNode {
        Self::up_with(host, dir, url, name, &[])
    }

    /// Like [`LabNode::up`], with more flags for `burrow up`.
    pub fn up_with(
        host: &burrow_lab::Host,
        dir: &Path,
        url: &str,
        name: &str,
        extra: &[&str],
    ) -> LabNode {
        let (proc, home) = lab_up_with(host, dir, url, name, extra);
        LabNode {
            proc,
            home,
            name: name.to_string(),
        }
    }

    /// Asks `other` for a connection, has it accept, and waits until it is up.
    pub fn link(&mut self, other: &mut LabNode) {
        wait_json(&self.home, &["peers"], "the peer online", |v| {
            peer(v, &other.name).is_some_and(|p| p["online"] == true)
        });
        assert!(run(&self.home, &["connect", &other.name]).0);
        other.proc.expect_line("asks to connect");
        assert!(run(&other.home, &["accept", &self.name]).0);
        let line = self.proc.expect_any(
            &[
                &format!("connected to {}", other.name),
                &format!("could not connect to {}", other.name),
            ],
            super::WAIT,
        );
        assert!(!line.contains("could not"), "{line}");
    }

    /// Sends `text` to `other` and waits until `other` prints it.
    pub fn say(&mut self, other: &mut LabNode, text: &str) {
        let (ok, _, err) = run(&self.home, &["send", &other.name, text]);
        assert!(ok, "{} -> {}: {err}", self.name, other.name);
        other.proc.expect_line(&format!("{}: {text}", self.name));
    }

    /// Sends `text` to `other`, retrying for up to `limit` while the link recovers.
    pub fn say_eventually(&mut self, other: &mut LabNode, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (ok, _, err) = run(&self.home, &["send", &other.name, text]);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} -> {} not delivered within {limit:?}: {err}",
                self.name,
                other.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        other.proc.expect_line(&format!("{}: {text}", self.name));
    }

    /// Our connection with `other` as `status --json` shows it, once its path is
    /// `path` (within `limit`), or `None`.
    pub fn wait_path(&self, other: &str, path: &str, limit: Duration) -> Option<Value> {
        let v = poll_json(&self.home, &["status"], limit, |v| {
            v["connections"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == other && c["path"] == path))
        })?;
        v["connections"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == other)
            .cloned()
    }
}

/// Shares `size` random bytes from `from`, has `to` get them, and checks them.
/// Returns the `get --json` result.
pub fn share_and_get(dir: &Path, from: &LabNode, to: &LabNode, size: u64) -> serde_json::Value {
    let file = dir.join(format!("{}-to-{}.bin", from.name, to.name));
    super::data::write_random(&file, size, size);
    let shared = json(&from.home, &["share", file.to_str().unwrap()]);
    let hash = shared["hash"].as_str().unwrap();
    let out = dir.join(format!("{}-downloads", to.name));
    let got = json(&to.home, &["get", hash, "-o", out.to_str().unwrap()]);
    assert!(super::data::same_bytes(
        &file,
        &out.join(file.file_name().unwrap())
    ));
    assert_eq!(got["providers"], serde_json::json!([from.name]));
    got
}
