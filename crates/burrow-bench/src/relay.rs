//! `relay`: what one `burrow server` relays. On loopback, the release binary
//! as the server and pairs of `up` processes, one side of each pair
//! `--relay-only` so the link goes through the server's relay; every pair
//! downloads its share of the bytes at once (`get`: verified, written, synced).
//! Beside it, in the same run, the same pairs linked directly. Printed per
//! case: the pairs' combined throughput and the server's CPU, as CPU-seconds
//! and as cores per Gbit/s relayed.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::transfer::{burrow_binary, cli, gbit, peer_is, wait_for, Proc};

/// The pairs of one case, with the server they are linked through.
struct Case {
    // Dropped (killed) in this order: the nodes, then the server.
    nodes: Vec<(Proc, Proc)>,
    server: Proc,
    /// What each pair's receiver gets (each sender shares its own file).
    hashes: Vec<String>,
}

/// Starts the server and `pairs` linked pairs, each sender sharing a file of
/// `size` bytes of its own (seeded apart, so each receiver has one provider).
fn start(bin: &Path, dir: &Path, size: u64, pairs: usize, relayed: bool) -> Case {
    let server = Proc::spawn({
        let mut c = std::process::Command::new(bin);
        c.arg("--home").arg(dir.join("srv")).args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--relay-quota-mib",
            "1000000",
        ]);
        c
    });
    let url = server
        .expect("join URL:")
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let up = |name: &str, relay_only: bool| {
        let mut c = std::process::Command::new(bin);
        c.arg("--home")
            .arg(dir.join(name))
            .args(["up", "--server", &url, "--name", name])
            .args(["--bind", "127.0.0.1:0"]);
        if relay_only {
            c.arg("--relay-only");
        }
        let p = Proc::spawn(c);
        p.expect("is up");
        p
    };
    let mut nodes = Vec::new();
    let mut hashes = Vec::new();
    for i in 0..pairs {
        let (a, b) = (format!("tx{i}"), format!("rx{i}"));
        let (ap, bp) = (up(&a, relayed), up(&b, false));
        let (ah, bh) = (dir.join(&a), dir.join(&b));
        let file = dir.join(format!("data{i}.bin"));
        burrow_lab::data::write_random(&file, size, i as u64 + 1).expect("test data written");
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .expect("test data synced");
        let shared = cli(bin, &ah, &["share", file.to_str().unwrap()]);
        hashes.push(shared["hash"].as_str().unwrap().to_string());
        wait_for(bin, &bh, "the sharer online", |v| peer_is(v, &a, &["none"]));
        cli(bin, &bh, &["connect", &a]);
        wait_for(bin, &ah, "the request", |v| peer_is(v, &b, &["pending_in"]));
        cli(bin, &ah, &["accept", &b]);
        let path = if relayed { "relayed" } else { "direct" };
        wait_for(bin, &bh, "the link", |v| peer_is(v, &a, &[path]));
        nodes.push((ap, bp));
    }
    Case {
        nodes,
        server,
        hashes,
    }
}

/// Every pair's `get` at once; the time until the last one finished, and
/// the server's CPU-seconds meanwhile.
fn run_case(bin: &Path, dir: &Path, case: &Case, size: u64) -> (Duration, f64) {
    let cpu0 = case.server.cpu();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for i in 0..case.nodes.len() {
            let (hash, out) = (&case.hashes[i], dir.join(format!("got{i}")));
            let home = dir.join(format!("rx{i}"));
            s.spawn(move || {
                cli(bin, &home, &["get", hash, "-o", out.to_str().unwrap()]);
                let got: u64 = std::fs::read_dir(&out)
                    .unwrap()
                    .map(|e| e.unwrap().metadata().unwrap().len())
                    .sum();
                assert_eq!(got, size, "pair {i} got the whole file");
                std::fs::remove_dir_all(&out).unwrap();
            });
        }
    });
    (t0.elapsed(), case.server.cpu() - cpu0)
}

pub fn run(size_mib: u64) {
    let bin = burrow_binary();
    println!(
        "relay: {size_mib} MiB in all per case, split among the pairs; loopback, one server; `get` on every pair at once (verified, written, synced)"
    );
    println!(
        "{:<8} {:>5} {:>12} {:>14} {:>20}",
        "path", "pairs", "Gbit/s", "server CPU s", "server cores/Gbit/s"
    );
    for pairs in [1usize, 8] {
        let size = (size_mib << 20) / pairs as u64;
        for relayed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let case = start(&bin, dir.path(), size, pairs, relayed);
            let (took, cpu) = run_case(&bin, dir.path(), &case, size);
            let rate = gbit(size * pairs as u64, took);
            println!(
                "{:<8} {:>5} {:>12.2} {:>14.2} {:>20}",
                if relayed { "relayed" } else { "direct" },
                pairs,
                rate,
                cpu,
                if relayed {
                    format!("{:.2}", cpu / took.as_secs_f64() / rate)
                } else {
                    "-".into()
                }
            );
            drop(case.nodes);
            drop(case.server);
        }
    }
}
