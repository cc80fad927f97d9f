//! File sharing end to end: real `burrow` processes on 127.0.0.1, driven through
//! the CLI, asserting on what a person or script sees and on the bytes on disk.

mod common;

use std::path::{Path, PathBuf};

use common::data::{same_bytes, write_random};
use common::proc::*;
use serde_json::Value;

fn server(home: &Path) -> (Proc, String) {
    let mut p = Proc::spawn(&[
        "--home",
        home.to_str().unwrap(),
        "server",
        "--listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "1500ms",
    ]);
    let line = p.expect_line("join URL:");
    (p, line.split_whitespace().last().unwrap().to_string())
}

fn up(home: &Path, url: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--home",
        home.to_str().unwrap(),
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
    ];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(&args);
    p.expect_line("is up");
    p
}

/// `from` asks `to` for a connection and `to` accepts; waits until linked.
fn link(from: (&Path, &str), to: (&Path, &str)) {
    wait_json(from.0, &["peers"], "peer online", |v| {
        peer(v, to.1).is_some_and(|p| p["online"] == true)
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

fn share(home: &Path, file: &Path, name: Option<&str>) -> Value {
    let mut args = vec!["share", file.to_str().unwrap()];
    if let Some(n) = name {
        args.extend_from_slice(&["--name", n]);
    }
    json(home, &args)
}

/// `get --json`: (success, the result or error text, stderr).
fn get(home: &Path, file: &str, out: &Path, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["get", file, "-o", out.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run(home, &args);
    let v = if ok {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    } else {
        Value::String(stderr.clone())
    };
    (ok, v, stderr)
}

fn entry<'a>(found: &'a Value, name: &str) -> Option<&'a Value> {
    found.as_array()?.iter().find(|e| e["name"] == name)
}

#[test]
fn share_search_and_get_by_name_and_by_hash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ah, bh, ch) = (d.join("alice"), d.join("bob"), d.join("carol"));
    let (_srv, url) = server(&d.join("srv"));
    let _alice = up(&ah, &url, "alice", &[]);
    let _bob = up(&bh, &url, "bob", &[]);
    let _carol = up(&ch, &url, "carol", &[]);

    let original = d.join("holiday.mkv");
    write_random(&original, 3 * 1024 * 1024 + 12_345, 1);
    let shared = share(&ah, &original, None);
    let hash = shared["hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 64);
    assert_eq!(shared["name"], "holiday.mkv");
    let (ok, out, _) = run(&ah, &["shares"]);
    assert!(
        ok && out.contains("holiday.mkv") && out.contains(&hash[..16]),
        "{out}"
    );

    // The tracker finds it by part of its name, with alice as provider.
    let found = wait_json(&bh, &["search", "HOLIDAY"], "the tracker lists it", |v| {
        entry(v, "holiday.mkv").is_some()
    });
    let e = entry(&found, "holiday.mkv").unwrap();
    assert_eq!(e["hash"], hash.as_str());
    assert_eq!(e["size"], 3 * 1024 * 1024 + 12_345);
    assert_eq!(e["providers"][0]["name"], "alice");

    // Before a link, alice's files are not bob's to list.
    let (ok, _, err) = run(&bh, &["files", "alice"]);
    assert!(!ok && err.contains("not connected to alice"), "{err}");
    link((&bh, "bob"), (&ah, "alice"));
    let listed = json(&bh, &["files", "alice"]);
    assert_eq!(listed[0]["hash"], hash.as_str());

    // By name: verified, saved under its name, offered by bob from then on.
    let downloads = d.join("bob-downloads");
    let (ok, got, err) = get(&bh, "holiday.mkv", &downloads, &[]);
    assert!(ok, "{err}");
    for field in ["hash", "name", "size", "path", "providers", "elapsed_ms"] {
        assert!(got.get(field).is_some(), "get --json lacks {field}: {got}");
    }
    assert_eq!(got["providers"], serde_json::json!(["alice"]));
    let saved = PathBuf::from(got["path"].as_str().unwrap());
    assert_eq!(saved, downloads.join("holiday.mkv"));
    assert!(same_bytes(&original, &saved));
    let bob_shares = json(&bh, &["shares"]);
    assert_eq!(bob_shares[0]["downloaded"], true);
    // Nothing is left behind in the partial directory.
    assert_eq!(
        std::fs::read_dir(bh.join("files/partial")).unwrap().count(),
        0
    );

    // By hash, from both providers at once.
    wait_json(&ch, &["search", "holiday"], "two providers", |v| {
        entry(v, "holiday.mkv").is_some_and(|e| e["providers"].as_array().unwrap().len() == 2)
    });
    link((&ch, "carol"), (&ah, "alice"));
    link((&ch, "carol"), (&bh, "bob"));
    let carol_dl = d.join("carol-downloads");
    std::fs::create_dir_all(&carol_dl).unwrap();
    std::fs::write(carol_dl.join("holiday.mkv"), b"mine").unwrap();
    // An existing file is never replaced without --force.
    let (ok, _, err) = get(&ch, &hash, &carol_dl, &[]);
    assert!(
        !ok && err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(carol_dl.join("holiday.mkv")).unwrap(),
        b"mine"
    );
    let (ok, got, err) = get(&ch, &hash, &carol_dl, &["--force"]);
    assert!(ok, "{err}");
    assert!(same_bytes(&original, &carol_dl.join("holiday.mkv")));
    assert!(!got["providers"].as_array().unwrap().is_empty());
    // Once it is here, getting it again says where it is.
    let (ok, _, err) = get(&ch, &hash, &carol_dl, &[]);
    assert!(!ok && err.contains("you already have this file"), "{err}");

    // Unsharing takes alice out of the tracker.
    let (ok, _, err) = run(&ah, &["unshare", "holiday.mkv"]);
    assert!(ok, "{err}");
    let found = wait_json(&ch, &["search", "holiday"], "alice gone", |v| {
        entry(v, "holiday.mkv").is_some_and(|e| {
            e["providers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["name"] != "alice")
        })
    });
    assert_eq!(
        entry(&found, "holiday.mkv").unwrap()["providers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
