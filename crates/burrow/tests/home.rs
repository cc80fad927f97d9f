//! The home directory and what lies in it, as another user on the machine
//! would meet them: a node refuses a home others can open, keeps its key,
//! stores and control socket owner-only, and its control socket talks only to
//! its own user, even when someone loosened the modes by hand.
#![cfg(target_os = "linux")] // Unix modes, users and file calls

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::proc::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_home_open_to_other_users_is_refused_with_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("shared");
    std::fs::create_dir(&home).unwrap();
    chmod(&home, 0o755);
    let out = Command::new(BIN)
        .arg("--home")
        .arg(&home)
        .args(["up", "--name", "alice", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started in a home open to others");
    assert!(
        err.contains("open to other users") && err.contains("chmod 700"),
        "{err}"
    );
    assert!(!home.join("key").exists(), "no key was written there");
}

#[test]
fn a_nodes_files_are_private_and_its_socket_answers_only_its_own_user() {
    if unsafe { libc::geteuid() } != 0 {
        burrow_lab::skip(
            "a_nodes_files_are_private_and_its_socket_answers_only_its_own_user",
            "needs root (to run a client as another user)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (srv, node) = (dir.path().join("srv"), dir.path().join("alice"));
    let (_server, url) = loopback_server(&srv, &[]);
    let log = dir.path().join("alice.log");
    // Without the key in the URL, the node trusts the server's key on first
    // use and writes it to known_servers.
    let (scheme, rest) = url.split_once("://").unwrap();
    let unpinned = format!("{scheme}://{}", rest.split_once('@').unwrap().1);
    let args = loopback_up_args(&unpinned, "alice");
    let mut all = vec!["--home", node.to_str().unwrap()];
    all.extend(args);
    let mut alice = Proc::spawn_with_stderr(&all, std::fs::File::create(&log).unwrap());
    alice.expect_line("is up");

    assert_eq!(mode(&node), 0o700);
    for f in ["key", "node.db", "known_servers", "control.sock"] {
        assert_eq!(mode(&node.join(f)), 0o600, "{f}");
    }
    for f in ["node.db-wal", "node.db-shm"] {
        if node.join(f).exists() {
            assert_eq!(mode(&node.join(f)), 0o600, "{f}");
        }
    }
    for f in ["key", "server.db", "control.sock"] {
        assert_eq!(mode(&srv.join(f)), 0o600, "server's {f}");
    }

    // Someone loosens the modes by hand; another user still gets nothing.
    chmod(dir.path(), 0o755);
    chmod(&node, 0o711);
    chmod(&node.join("control.sock"), 0o666);
    let out = Command::new(BIN)
        .arg("--home")
        .arg(&node)
        .args(["status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "another user drove the node: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (ok, _, err) = run(&node, &["status"]);
    assert!(ok, "the owner still can: {err}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("refused a control connection from another user"),
        "{logged}"
    );
}
