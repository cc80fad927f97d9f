//! File sharing end to end: real `burrow` processes on 127.0.0.1, driven through
//! the CLI, asserting on what a person or script sees and on the bytes on disk.
#![cfg(target_os = "linux")] // Unix modes, users and file calls

mod common;

use std::path::{Path, PathBuf};

use common::data::{same_bytes, write_random};
use common::proc::*;
use serde_json::Value;

fn server(home: &Path) -> (Proc, String) {
    loopback_server(home, &[])
}

fn up(home: &Path, url: &str, name: &str) -> Proc {
    loopback_up(home, url, name)
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
    let _alice = up(&ah, &url, "alice");
    let _bob = up(&bh, &url, "bob");
    let _carol = up(&ch, &url, "carol");

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

/// Overwrites the first byte of every 2 MiB piece of `path` and puts its
/// modification time back: a provider with this copy passes its own checks and
/// sends wrong bytes, as a broken or malicious one would.
fn corrupt_keeping_mtime(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let meta = f.metadata().unwrap();
    let mtime = meta.modified().unwrap();
    let mut at = 0;
    while at < meta.len() {
        f.write_all_at(b"\xff", at).unwrap();
        at += 2 * 1024 * 1024;
    }
    f.set_modified(mtime).unwrap();
}

#[test]
fn three_providers_share_the_work_and_a_liar_is_caught_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_srv, url) = server(&d.join("srv"));
    let names = ["alice", "bob", "carol"];
    let homes: Vec<PathBuf> = names.iter().map(|n| d.join(n)).collect();
    let _providers: Vec<Proc> = names
        .iter()
        .zip(&homes)
        .map(|(n, h)| up(h, &url, n))
        .collect();
    let dh = d.join("dave");
    let _dave = up(&dh, &url, "dave");

    // Each provider has its own copy of the same two files.
    let size = 64 * 1024 * 1024;
    for (i, h) in homes.iter().enumerate() {
        std::fs::create_dir_all(h.join("mine")).unwrap();
        write_random(&h.join("mine/honest.bin"), size, 7);
        write_random(&h.join("mine/tampered.bin"), size, 8);
        share(h, &h.join("mine/honest.bin"), None);
        share(h, &h.join("mine/tampered.bin"), None);
        if i == 2 {
            corrupt_keeping_mtime(&h.join("mine/tampered.bin"));
        }
    }
    for (n, h) in names.iter().zip(&homes) {
        link((&dh, "dave"), (h, n));
    }
    wait_json(&dh, &["search", ".bin"], "three providers of each", |v| {
        ["honest.bin", "tampered.bin"]
            .iter()
            .all(|f| entry(v, f).is_some_and(|e| e["providers"].as_array().unwrap().len() == 3))
    });

    // All three send part of it.
    let out = d.join("dl");
    let (ok, got, err) = get(&dh, "honest.bin", &out, &[]);
    assert!(ok, "{err}");
    let mut used: Vec<&str> = got["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    used.sort();
    assert_eq!(used, names, "every provider sent verified data");
    assert!(same_bytes(
        &homes[0].join("mine/honest.bin"),
        &out.join("honest.bin")
    ));

    // carol's copy is wrong in every piece: her first piece gives her away, by
    // name, and the others finish the file.
    let (ok, got, err) = get(&dh, "tampered.bin", &out, &[]);
    assert!(ok, "{err}");
    assert!(
        err.lines().any(|l| l.contains("carol (")
            && l.contains("does not match")
            && l.contains("dropped")),
        "the liar is named: {err}"
    );
    assert!(
        !got["providers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "carol"),
        "nothing of carol's was kept: {got}"
    );
    assert!(same_bytes(
        &homes[0].join("mine/tampered.bin"),
        &out.join("tampered.bin")
    ));
}

/// Starts `burrow get` for a person (plain progress lines) and waits until it
/// has verified part of the file.
fn get_until_progress(home: &Path, file: &str, out: &Path) -> Proc {
    let mut p = Proc::spawn(&[
        "--home",
        home.to_str().unwrap(),
        "get",
        file,
        "-o",
        out.to_str().unwrap(),
    ]);
    let line = p.expect_line("%), ");
    assert!(!line.starts_with("0 B"), "{line}");
    p
}

#[test]
fn a_large_download_resumes_after_the_downloader_or_the_provider_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_srv, url) = server(&d.join("srv"));
    let (ah, bh) = (d.join("alice"), d.join("bob"));
    let mut alice = up(&ah, &url, "alice");
    let mut bob = up(&bh, &url, "bob");
    let original = d.join("big.bin");
    let size: u64 = 400 * 1024 * 1024;
    write_random(&original, size, 42);
    let hash = share(&ah, &original, None)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    link((&bh, "bob"), (&ah, "alice"));
    let out = d.join("dl");

    // Kill the downloader's node mid-transfer (SIGKILL: no goodbye, no flush).
    let mut getter = get_until_progress(&bh, &hash, &out);
    unsafe_kill(bob.child.id(), "KILL");
    assert!(!getter.child.wait().unwrap().success());
    drop(bob);
    assert!(
        !out.join("big.bin").exists(),
        "nothing unverified appears under its name"
    );
    bob = up(&bh, &url, "bob");
    link((&bh, "bob"), (&ah, "alice"));

    // Kill the provider mid-transfer: the download stops, says so, and keeps
    // what it verified.
    let mut getter = get_until_progress(&bh, &hash, &out);
    unsafe_kill(alice.child.id(), "KILL");
    let status = getter.child.wait().unwrap();
    assert!(!status.success());
    drop(alice);
    let (ok, _, err) = get(&bh, &hash, &out, &[]);
    assert!(
        !ok && err.contains("nobody who has") && err.contains("1 providers offline"),
        "{err}"
    );
    alice = up(&ah, &url, "alice");
    link((&bh, "bob"), (&ah, "alice"));
    let (ok, got, err) = get(&bh, &hash, &out, &[]);
    assert!(ok, "{err}");
    let resumed = got["resumed_bytes"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < size, "resumed from {resumed}");
    assert!(err.contains("resuming:"), "{err}");
    assert!(same_bytes(&original, &out.join("big.bin")));
    drop((alice, bob));
}

#[test]
fn names_from_peers_never_choose_a_path_and_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_srv, url) = server(&d.join("srv"));
    let (ah, bh) = (d.join("alice"), d.join("bob"));
    let mut alice = up(&ah, &url, "alice");
    let _bob = up(&bh, &url, "bob");
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    link((&bh, "bob"), (&ah, "alice"));
    let out = d.join("dl");

    // Hostile names land as plain files inside the target directory.
    for (i, (name, saved)) in [
        ("../../etc/passwd", "__.._etc_passwd"),
        ("/tmp/abs", "_tmp_abs"),
        ("..", "download"),
        ("CON", "_CON"),
        ("a/b\\c", "a_b_c"),
        // Displays as "photoexe.jpg"; and a name Windows would shorten.
        ("photo\u{202E}gpj.exe", "photo_gpj.exe"),
        ("notes. . ", "notes"),
    ]
    .iter()
    .enumerate()
    {
        let f = src.join(format!("f{i}"));
        write_random(&f, 1000 + i as u64, i as u64);
        let hash = share(&ah, &f, Some(name))["hash"]
            .as_str()
            .unwrap()
            .to_string();
        let (ok, got, err) = get(&bh, &hash, &out, &[]);
        assert!(ok, "{name}: {err}");
        assert_eq!(got["path"], out.join(saved).to_str().unwrap(), "{name}");
        assert!(same_bytes(&f, &out.join(saved)));
    }
    let entries: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(
        entries.len(),
        7,
        "everything stayed in the target directory"
    );

    // Names with control characters are refused at the door.
    let f = src.join("ctl");
    write_random(&f, 10, 9);
    let (ok, _, err) = run(&ah, &["share", f.to_str().unwrap(), "--name", "a\nb"]);
    assert!(!ok && err.contains("control characters"), "{err}");

    // An empty file.
    let empty = src.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let hash = share(&ah, &empty, None)["hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(hash, blake3_hex(b""));
    let (ok, got, err) = get(&bh, "empty", &out, &[]);
    assert!(ok, "{err}");
    assert_eq!(got["size"], 0);
    assert_eq!(std::fs::metadata(out.join("empty")).unwrap().len(), 0);

    // Unknown names and hashes.
    let (ok, _, err) = run(&bh, &["get", "nothing-like-it"]);
    assert!(
        !ok && err.contains("knows no file") && err.contains("hint: burrow search"),
        "{err}"
    );
    let (ok, _, err) = run(&bh, &["get", &"ab".repeat(32)]);
    assert!(!ok && err.contains("knows no file"), "{err}");

    // A file its provider changed since sharing: not served under the old hash.
    let f = src.join("changing");
    write_random(&f, 100_000, 10);
    share(&ah, &f, None);
    write_random(&f, 100_001, 11);
    let (ok, _, err) = run(&bh, &["get", "changing", "-o", out.to_str().unwrap()]);
    assert!(
        !ok && err.contains("changed on disk") && err.contains("run the same get again"),
        "{err}"
    );
    alice.expect_line("no longer sharing \"changing\"");

    // A provider that deleted its file.
    let f = src.join("deleted");
    write_random(&f, 5000, 12);
    share(&ah, &f, None);
    std::fs::remove_file(&f).unwrap();
    let (ok, _, err) = run(&bh, &["get", "deleted", "-o", out.to_str().unwrap()]);
    assert!(!ok && err.contains("alice ("), "{err}");
}

fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// A tmpfs mounted at a directory for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "6m") at `at` for `test`; `None` (with
    /// the reason printed) where mounting needs a root this test doesn't
    /// have, unless `BURROW_LAB=required`.
    fn mount(at: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            // mode=700: a home others can open is refused (tmpfs's own is 1777).
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("mount runs");
        if out.status.success() {
            return Some(Tmpfs(at.to_path_buf()));
        }
        let why = String::from_utf8_lossy(&out.stderr);
        burrow_lab::skip(
            test,
            &format!("mounting a small file system failed (root needed): {why}"),
        );
        None
    }

    fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount runs")
            .success();
        assert!(ok, "remounting the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_disk_too_small_is_reported_before_the_download_and_more_space_lets_it_finish() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // bob's home on a small file system: room for the node, not for the file.
    // (Declared first: unmounted after bob's node stops.)
    let test = "a_disk_too_small_is_reported_before_the_download_and_more_space_lets_it_finish";
    let Some(small) = Tmpfs::mount(&d.join("bob"), "6m", test) else {
        return;
    };
    let nodes = alice_and_bob(d);
    let (ah, bh) = (nodes.ah.clone(), nodes.bh.clone());
    let f = d.join("big.bin");
    write_random(&f, 16 << 20, 21);
    share(&ah, &f, None);
    let out = d.join("dl");

    let (ok, _, err) = get(&bh, "big.bin", &out, &[]);
    assert!(
        !ok && err.contains("not enough free space") && err.contains("16777216 bytes"),
        "{err}"
    );
    assert!(
        !out.join("big.bin").exists(),
        "nothing appears under the name"
    );

    // With room, the same command fetches and verifies the whole file.
    small.resize("64m");
    let (ok, got, err) = get(&bh, "big.bin", &out, &[]);
    assert!(ok, "{err}");
    assert_eq!(got["size"], 16 << 20);
    assert!(same_bytes(&f, &out.join("big.bin")));
}

#[test]
fn a_download_placed_on_another_file_system_follows_no_planted_link_and_leaves_nothing_half_written(
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The target directory is on a file system of its own: placing copies.
    let out = d.join("usb");
    let test = "a_download_placed_on_another_file_system_follows_no_planted_link_and_leaves_nothing_half_written";
    let Some(small) = Tmpfs::mount(&out, "2m", test) else {
        return;
    };
    let nodes = alice_and_bob(d);
    let (ah, bh) = (nodes.ah.clone(), nodes.bh.clone());
    let f = d.join("photos.tar");
    write_random(&f, 3 << 20, 31);
    let hash = share(&ah, &f, None)["hash"].as_str().unwrap().to_string();

    // Too little room there: the copy fails, and neither the name nor a
    // temporary file is left behind; the verified download is kept.
    let (ok, _, err) = get(&bh, &hash, &out, &[]);
    assert!(!ok && err.contains("No space left"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "a failed copy leaves nothing: {left:?}");

    // Someone who can write to the directory plants links at every name the
    // old code would have copied through, and an older file stands at the
    // target: --force replaces that file and writes through no link.
    small.resize("16m");
    let victim = d.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    for name in [
        format!(".{}.burrow-part", &hash[..8]),
        ".burrow-part".into(),
    ] {
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    std::fs::write(out.join("photos.tar"), b"an older copy").unwrap();
    let (ok, got, err) = get(&bh, &hash, &out, &["--force"]);
    assert!(ok, "{err}");
    assert_eq!(
        got["resumed_bytes"],
        3 << 20,
        "nothing fetched again: {got}"
    );
    assert!(same_bytes(&f, &out.join("photos.tar")));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let extra: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "photos.tar" && !n.ends_with(".burrow-part"))
        .collect();
    assert!(extra.is_empty(), "no temporary file left: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lie_about_a_files_size_neither_blocks_its_download_nor_costs_the_honest_provider() {
    use burrow_proto::files::{BlobHash, FileEntry};
    use burrow_proto::rendezvous::ClientMsg;
    use common::raw::RawClient;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (ah, bh) = (d.join("alice"), d.join("bob"));
    let (srv, url, alice, bob) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || {
            let (srv, url) = server(&d.join("srv"));
            let alice = up(&d.join("alice"), &url, "alice");
            let bob = up(&d.join("bob"), &url, "bob");
            link((&d.join("bob"), "bob"), (&d.join("alice"), "alice"));
            (srv, url, alice, bob)
        }
    })
    .await
    .unwrap();
    let original = d.join("photo.jpg");
    write_random(&original, 1024 * 1024 + 7, 9);
    let hash: BlobHash = blake3::hash(&std::fs::read(&original).unwrap())
        .to_hex()
        .parse()
        .unwrap();

    // mallory claims alice's file first, under other sizes and a lure of a
    // name: one near 2^60 (which would abort a node that allocated for it)
    // and one of a terabyte (which no disk here has room for).
    let lie = |size: u64| FileEntry {
        hash,
        name: "free money".parse().unwrap(),
        size,
    };
    let mut mallory =
        RawClient::register("127.0.0.1:0", &url.parse().unwrap(), "mallory", vec![]).await;
    mallory
        .send(ClientMsg::Offer {
            replace: true,
            files: vec![lie((1 << 60) - 1), lie(1 << 40)],
        })
        .await;

    let (hash_text, found) = tokio::task::spawn_blocking({
        let (ah, bh, original) = (ah.clone(), bh.clone(), original.clone());
        move || {
            let shared = share(&ah, &original, None);
            let hash = shared["hash"].as_str().unwrap().to_string();
            (hash, json(&bh, &["search", "money"]))
        }
    })
    .await
    .unwrap();
    assert_eq!(hash_text, hash.to_string());
    // The tracker lists the claim mallory can't back as its own entry, and
    // not the size past what burrow handles.
    let sizes: Vec<u64> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1 << 40], "{found}");

    // Three gets, by hash: each comes from alice, verified, and alice is
    // never counted as a liar (three strikes would cut her off).
    tokio::task::spawn_blocking(move || {
        for n in 0..3 {
            let out = d.join(format!("out{n}"));
            let (ok, got, err) = get(&bh, &hash_text, &out, &[]);
            assert!(ok, "get {n}: {got} {err}");
            assert_eq!(got["size"], 1024 * 1024 + 7, "{got}");
            assert_eq!(got["name"], "photo.jpg", "{got}");
            assert_eq!(got["providers"], serde_json::json!(["alice"]), "{got}");
            assert!(same_bytes(
                &original,
                Path::new(got["path"].as_str().unwrap())
            ));
            // Not kept as a share, so the next get downloads again.
            let (ok, _, err) = run(&bh, &["unshare", &hash_text]);
            assert!(ok, "{err}");
        }
        let peers = json(&bh, &["peers"]);
        let a = peer(&peers, "alice").unwrap();
        assert!(
            a["connection"] == "direct" || a["connection"] == "relayed",
            "alice is still linked: {peers}"
        );
        drop((srv, alice, bob));
    })
    .await
    .unwrap();
    let _ = ah;
}
