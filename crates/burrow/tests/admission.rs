//! Who may use a server, as its operator and its users see it: real `burrow
//! server` and `burrow up` processes on loopback, driven through the CLI
//! (`admin ...`, `up --password-stdin | --invite`, `contacts`, `settings`).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::proc::*;
use serde_json::Value;

/// `burrow --home <home> <args>` with `input` on standard input.
fn run_stdin(home: &Path, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BURROW_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("burrow runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The arguments of `burrow up` on loopback, plus `extra`.
fn up_args<'a>(url: &'a str, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = loopback_up_args(url, name);
    args.extend_from_slice(extra);
    args
}

/// `burrow up` that the server is expected to refuse: runs it to its end
/// (bounded) and returns (exit success, stderr).
fn up_refused(home: &Path, url: &str, name: &str, extra: &[&str], input: &str) -> (bool, String) {
    let started = Instant::now();
    let (ok, _, err) = run_stdin(home, &up_args(url, name, extra), input);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a refused registration took {:?}",
        started.elapsed()
    );
    (ok, err)
}

/// `burrow up` that should register, fed `input` on standard input.
fn up_with(home: &Path, url: &str, name: &str, extra: &[&str], input: &str) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--home")
        .arg(home)
        .args(up_args(url, name, extra))
        .stdin(Stdio::piped());
    let mut p = Proc::spawn_command(cmd);
    if let Some(mut stdin) = p.child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    p.expect_line("is up");
    p
}

fn log_has(srv: &Path, action: &str, subject: &str) -> bool {
    let log = json(srv, &["admin", "log", "--limit", "500"]);
    log.as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == action && e["subject"].as_str().unwrap().contains(subject))
}

#[test]
fn accounts_need_a_password_or_an_invite_and_guessing_gets_the_guesser_banned() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let (_server, url) = loopback_server(&srv, &["--policy", "accounts"]);
    let (ok, out, err) = run_stdin(
        &srv,
        &["admin", "add-user", "alice", "--password-stdin"],
        "correct horse\n",
    );
    assert!(ok && out.contains("account alice made"), "{out}{err}");

    // Without credentials a name with no account is refused, with a hint.
    let (ok, err) = up_refused(&dir.path().join("nobody"), &url, "bob", &[], "");
    assert!(!ok);
    assert!(err.contains("needs its password or an invite"), "{err}");
    assert!(err.contains("hint: give the account's password"), "{err}");

    // A password goes only to a server whose key is pinned (or known): not
    // to whatever answers at a bare address the first time.
    let bare = url.rsplit('@').next().unwrap().to_string();
    let (ok, err) = up_refused(
        &dir.path().join("tofu"),
        &bare,
        "alice",
        &["--password-stdin"],
        "correct horse\n",
    );
    assert!(
        !ok && err.contains("not sending a password") && err.contains("burrow://"),
        "{err}"
    );

    // alice logs in with her password; later starts need only her key.
    let ah = dir.path().join("alice");
    let mut alice = up_with(&ah, &url, "alice", &["--password-stdin"], "correct horse\n");
    alice.terminate();
    let mut alice = up_with(&ah, &url, "alice", &[], "");

    // An invite makes bob's account once; a used-up or expired one is refused.
    let invite = json(&srv, &["admin", "invite", "--uses", "1"]);
    let code = invite["code"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 26);
    let bh = dir.path().join("bob");
    let _bob = up_with(&bh, &url, "bob", &["--invite", &code], "");
    let (ok, err) = up_refused(
        &dir.path().join("carol"),
        &url,
        "carol",
        &["--invite", &code],
        "",
    );
    assert!(
        !ok && err.contains("invite is unknown, used up or expired"),
        "{err}"
    );
    let short = json(&srv, &["admin", "invite", "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, err) = up_refused(
        &dir.path().join("carol"),
        &url,
        "carol",
        &["--invite", short["code"].as_str().unwrap()],
        "",
    );
    assert!(
        !ok && err.contains("invite is unknown, used up or expired"),
        "{err}"
    );

    // A guesser on another address (a fresh key each try, as a script would
    // use) gets five wrong answers, then its address is banned.
    let guess = |n: usize| {
        let home = dir.path().join(format!("guesser{n}"));
        let mut args = up_args(&url, "alice", &["--password-stdin"]);
        args[6] = "127.0.0.2:0";
        run_stdin(&home, &args, &format!("guess {n}\n"))
    };
    for n in 0..5 {
        let (ok, _, err) = guess(n);
        assert!(
            !ok && err.contains("wrong password for that name"),
            "try {n}: {err}"
        );
    }
    let (ok, _, err) = guess(5);
    assert!(!ok && !err.contains("wrong password"), "{err}");
    let bans = json(&srv, &["admin", "bans"]);
    assert!(
        bans.as_array()
            .unwrap()
            .iter()
            .any(|b| b["target"] == "ip:127.0.0.2" && b["until"].is_string()),
        "{bans}"
    );
    assert!(log_has(&srv, "login-failed", "alice"));
    assert!(log_has(&srv, "ban", "ip:127.0.0.2"));
    // One address guessing is throttled as that address: the name isn't.
    assert!(!log_has(&srv, "slow-logins", "alice"));

    // Meanwhile the honest alice, on her own address and key, comes and goes
    // as usual: the block is on password guesses, not on her key.
    alice.terminate();
    let started = Instant::now();
    let _alice = up_with(&ah, &url, "alice", &[], "");
    assert!(started.elapsed() < Duration::from_secs(5));

    // alice on a new machine (a new key, so she needs her password; the
    // name moves to that key) on another address, seconds after the
    // guessing: in at once.
    let started = Instant::now();
    let mut args = up_args(&url, "alice", &["--password-stdin"]);
    args[6] = "127.0.0.3:0";
    let new_machine = dir.path().join("alice-laptop");
    let mut cmd = Command::new(BIN);
    cmd.arg("--home")
        .arg(&new_machine)
        .args(&args)
        .stdin(Stdio::piped());
    let mut laptop = Proc::spawn_command(cmd);
    laptop
        .child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    laptop.expect_line("is up");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the owner's password login took {:?}",
        started.elapsed()
    );
    laptop.terminate();
    // The guesser stays banned: its connections are refused outright.
    let (ok, _, err) = guess(6);
    assert!(!ok && err.contains("refused to accept"), "{err}");
    // The password is nowhere in the server's store, in clear.
    let db = std::fs::read(srv.join("server.db")).unwrap();
    let wal = std::fs::read(srv.join("server.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(13).any(|w| w == b"correct horse"));
        assert!(!bytes.windows(7).any(|w| w == b"guess 1"));
    }
}

#[test]
fn an_allowlist_server_admits_only_the_nodes_its_operator_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let (_server, url) = loopback_server(&srv, &["--policy", "allowlist"]);
    let ch = dir.path().join("carol");
    let (ok, err) = up_refused(&ch, &url, "carol", &[], "");
    assert!(
        !ok && err.contains("admits only nodes its operator allowed"),
        "{err}"
    );
    // The hint tells carol what to ask the operator for.
    let allow = err
        .lines()
        .find_map(|l| {
            l.split('`')
                .nth(1)
                .filter(|c| c.starts_with("burrow admin allow "))
        })
        .unwrap_or_else(|| panic!("no allow command in: {err}"))
        .to_string();
    let id = allow.rsplit(' ').next().unwrap();
    let (ok, out, err) = run(&srv, &["admin", "allow", id]);
    assert!(ok && out.contains("may register"), "{out}{err}");
    let mut carol = up_with(&ch, &url, "carol", &[], "");
    let (ok, err) = up_refused(&dir.path().join("dave"), &url, "dave", &[], "");
    assert!(!ok && err.contains("admits only nodes"), "{err}");
    let users = json(&srv, &["admin", "users"]);
    let c = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "carol")
        .unwrap();
    assert_eq!(c["allowed"], true);
    assert_eq!(c["online"], true);

    // Taken off the list, carol is disconnected and her node says why.
    let (ok, _, err) = run(&srv, &["admin", "deny", "carol"]);
    assert!(ok, "{err}");
    carol.expect_line("admits only nodes its operator allowed");
    let status = wait_exit(&mut carol);
    assert!(!status.success());
}

fn wait_exit(p: &mut Proc) -> std::process::ExitStatus {
    let deadline = Instant::now() + common::WAIT;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn messages(home: &Path) -> Vec<Value> {
    json(home, &["messages"]).as_array().unwrap().clone()
}

#[test]
fn the_operator_says_tells_kicks_and_bans_and_bans_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let (mut server, url) = loopback_server(&srv, &[]);
    let (ah, bh) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut alice = loopback_up(&ah, &url, "alice");
    let mut bob = loopback_up(&bh, &url, "bob");
    alice.expect_line("bob is online");

    let (ok, out, _) = run(&srv, &["admin", "say", "maintenance", "at", "22:00"]);
    assert!(ok && out.contains("sent to 2 nodes"), "{out}");
    alice.expect_line("notice from the server to everyone: maintenance at 22:00");
    bob.expect_line("notice from the server to everyone: maintenance at 22:00");
    let (ok, _, err) = run(&srv, &["admin", "tell", "alice", "your quota is used up"]);
    assert!(ok, "{err}");
    alice.expect_line("notice from the server to you: your quota is used up");
    let notices: Vec<Value> = messages(&ah)
        .into_iter()
        .filter(|m| m["from_server"] == true)
        .collect();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert_eq!(notices[0]["everyone"], true);
    assert_eq!(notices[1]["everyone"], false);
    assert_eq!(notices[1]["text"], "your quota is used up");
    assert!(messages(&bh)
        .iter()
        .all(|m| m["text"] != "your quota is used up"));

    // A kick disconnects bob's node, which stops and says why; bob may come back.
    let (ok, _, err) = run(&srv, &["admin", "kick", "bob"]);
    assert!(ok, "{err}");
    bob.expect_line("disconnected by the server's operator");
    assert!(!wait_exit(&mut bob).success());
    alice.expect_line("bob went offline");
    let mut bob = loopback_up(&bh, &url, "bob");

    // A ban does the same, and keeps him out.
    let (ok, out, err) = run(&srv, &["admin", "ban", "bob", "--for", "1h"]);
    assert!(ok && out.contains("banned name:bob until"), "{out}{err}");
    bob.expect_line("banned from this server");
    assert!(!wait_exit(&mut bob).success());
    let (ok, err) = up_refused(&bh, &url, "bob", &[], "");
    assert!(
        !ok && err.contains("banned") && err.contains("hint: the ban ends at"),
        "{err}"
    );
    // Not even under another name: the ban covers his key.
    let (ok, err) = up_refused(&bh, &url, "robert", &[], "");
    assert!(!ok && err.contains("banned"), "{err}");

    // After a restart the ban is still there.
    drop(alice);
    assert!(server.terminate().success());
    let (_server, url) = loopback_server(&srv, &[]);
    let (ok, err) = up_refused(&bh, &url, "bob", &[], "");
    assert!(!ok && err.contains("banned"), "{err}");
    let bans = json(&srv, &["admin", "bans"]);
    let targets: Vec<&str> = bans
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"name:bob"), "{bans}");
    assert!(targets.iter().any(|t| t.starts_with("node:")), "{bans}");
    for action in ["say", "tell", "kick", "ban"] {
        assert!(log_has(&srv, action, ""), "no {action} in the log");
    }

    // Lifted, bob is back.
    let (ok, out, err) = run(&srv, &["admin", "unban", "bob"]);
    assert!(ok && out.contains("lifted the ban"), "{out}{err}");
    let _bob = loopback_up(&bh, &url, "bob");
    let users = json(&srv, &["admin", "users"]);
    let b = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .unwrap();
    assert_eq!(b["online"], true, "{users}");
    assert!(
        b["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{users}"
    );
}

#[test]
fn contacts_connect_without_asking_and_strangers_are_refused_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (_srv, url) = loopback_server(&dir.path().join("srv"), &["--request-ttl", "5s"]);
    let (ah, bh, ch) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    let mut alice = loopback_up(&ah, &url, "alice");
    let mut bob = loopback_up(&bh, &url, "bob");
    let _carol = loopback_up(&ch, &url, "carol");
    alice.expect_line("carol is online");

    let (ok, out, _) = run(&ah, &["settings", "incoming", "contacts-only"]);
    assert!(ok && out.contains("incoming contacts-only"), "{out}");
    let (ok, out, err) = run(&ah, &["contacts", "add", "carol"]);
    assert!(ok && out.contains("carol"), "{out}{err}");
    let contacts = json(&ah, &["contacts"]);
    assert_eq!(contacts[0]["name"], "carol");
    assert_eq!(contacts[0]["online"], true);

    // bob, a stranger, is refused without alice having to answer.
    let (ok, _, err) = run(&bh, &["connect", "alice"]);
    assert!(ok, "{err}");
    bob.expect_line("alice rejected your request");
    alice.expect_line("bob asked to connect: refused (not a contact)");
    // carol, a contact, is let in at once.
    let (ok, _, err) = run(&ch, &["connect", "alice"]);
    assert!(ok, "{err}");
    alice.expect_line("carol asked to connect: accepted (a contact)");
    wait_json(&ch, &["peers"], "carol linked to alice", |v| {
        peer(v, "alice").is_some_and(|p| p["connection"] == "direct")
    });

    // The setting is kept across a restart; `anyone` lets bob in.
    alice.terminate();
    let mut alice = loopback_up(&ah, &url, "alice");
    assert!(json(&ah, &["settings"])["incoming"] == "contacts-only");
    let (ok, _, _) = run(&ah, &["settings", "incoming", "anyone"]);
    assert!(ok);
    wait_json(&bh, &["peers"], "alice back online", |v| {
        peer(v, "alice").is_some_and(|p| p["online"] == true && p["connection"] == "none")
    });
    let (ok, _, err) = run(&bh, &["connect", "alice"]);
    assert!(ok, "{err}");
    alice.expect_line("bob asked to connect: accepted (anyone may connect)");
    let (ok, _, err) = run(&ah, &["contacts", "remove", "carol"]);
    assert!(ok, "{err}");
    assert_eq!(json(&ah, &["contacts"]), serde_json::json!([]));
    let (ok, _, err) = run(&ah, &["settings", "incoming", "sometimes"]);
    assert!(!ok && err.contains("possible values"), "{err}");
}

#[test]
fn the_console_takes_the_admin_commands_and_a_log_follower_sees_them_live() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let (_server, _url) = loopback_server(&srv, &[]);
    let (ok, _, err) = run(&srv, &["admin", "say", "hello"]);
    assert!(ok, "{err}");
    let mut follower = Proc::spawn(&[
        "--home",
        srv.to_str().unwrap(),
        "admin",
        "log",
        "--follow",
        "--json",
    ]);
    // The history comes first, then each entry as it is stored: a JSON line each.
    follower.expect_line("\"action\":\"say\"");
    let (ok, out, err) = run_stdin(
        &srv,
        &["console"],
        "help\nstatus\nsay \"back in five\"\nban 203.0.113.9 --for 10min --reason 'port scan'\nbans\nfrobnicate\nkick nobody\nexit\n",
    );
    assert!(ok, "{out}{err}");
    for line in [
        "burrow console: server in",
        "kick <who>",
        "policy open, 0 nodes online, 0 bans in force",
        "sent to 0 nodes",
        "banned ip:203.0.113.9 until",
        "port scan",
        "error: unknown command \"frobnicate\" (type help)",
        "error: no node named \"nobody\"",
    ] {
        assert!(out.contains(line), "the console lacks {line:?}:\n{out}");
    }
    let entry = follower.expect_line("\"action\":\"ban\"");
    let v: Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(v["subject"], "ip:203.0.113.9");
    assert_eq!(v["actor"], "operator");
    follower.expect_line("back in five");
}
