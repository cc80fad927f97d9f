//! `tracker`: what a name search costs the server, and what it costs the
//! registrations that share its store.
//!
//! A server store (SQLite, on disk, WAL, fsync on commit as the server runs it)
//! holds `--offers` offers from 1 000-file nodes. Measured, in one run:
//!
//! - a name search's time through [`ServerStore::search_name`] (the trigram
//!   index, at most [`MAX_SEARCHED`] offers looked at), beside the baseline of
//!   the `LIKE '%…%'` scan the tracker used before, on the same file;
//! - name bindings' latency (what a registration waits for) while another
//!   thread searches without pause: as the server runs now (searches on their
//!   own read-only connection), and as it ran before (scans under the one
//!   store lock that bindings take), beside bindings with nobody searching.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_proto::files::{BlobHash, FileEntry};
use burrow_proto::{Name, NodeId, SecretKey};
use burrow_store::server::MAX_SEARCHED;
use burrow_store::ServerStore;
use rand::SeedableRng;

const WORDS: [&str; 8] = [
    "holiday", "concert", "thesis", "backup", "recipes", "garden", "lecture", "scan",
];
const QUERIES: [&str; 4] = ["holiday", "0042", ".bin", "nothing like it"];

pub fn run(offers: usize, bindings: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("server.db");
    let mut store = ServerStore::open(&path).expect("the store opens");
    let started = Instant::now();
    let per_node = 1000;
    for n in 0..offers.div_ceil(per_node) {
        let node = key(n as u64);
        let files: Vec<FileEntry> = (0..per_node.min(offers - n * per_node))
            .map(|i| {
                let k = n * per_node + i;
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&(k as u64).to_le_bytes());
                FileEntry {
                    hash: BlobHash(hash),
                    name: format!("{} {k:07}.bin", WORDS[k % WORDS.len()])
                        .parse()
                        .expect("a share name"),
                    size: 1 << 20,
                }
            })
            .collect();
        store
            .offer(&node, true, &files, per_node, 1)
            .expect("offers are stored");
    }
    println!(
        "tracker: {offers} offers stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let scan = rusqlite::Connection::open(&path).expect("a second connection");
    println!("  search (median of 9)       index         LIKE scan (before)   results");
    for q in QUERIES {
        let indexed = median_time(9, || store.search_name(q, 50).expect("search").len());
        let scanned = median_time(9, || like_scan(&scan, q, 50));
        println!(
            "  {:<22} {:>9.2} ms {:>14.2} ms {:>12}",
            format!("{q:?}"),
            indexed.0.as_secs_f64() * 1e3,
            scanned.0.as_secs_f64() * 1e3,
            format!("{} / {}", indexed.1, scanned.1)
        );
    }
    println!("  (a search looks at no more than {MAX_SEARCHED} matching offers; the scan reads them all)");

    let store = Arc::new(Mutex::new(store));
    let reader = Arc::new(Mutex::new(
        ServerStore::open_reader(&path).expect("a reader"),
    ));
    let scan = Arc::new(Mutex::new(scan));
    let quiet = bind_latencies(&store, bindings, 0, || {});
    let now = {
        let reader = reader.clone();
        bind_latencies(&store, bindings, 1, move || {
            let _ = reader.lock().unwrap().search_name(".bin", 50);
        })
    };
    let before = {
        let (store, scan) = (store.clone(), scan.clone());
        bind_latencies(&store.clone(), bindings, 2, move || {
            // The old tracker: the scan ran holding the store's one lock.
            let _held = store.lock().unwrap();
            like_scan(&scan.lock().unwrap(), ".bin", 50);
        })
    };
    println!("  name bindings ({bindings} each)   p50         p99");
    for (what, mut l) in [
        ("nobody searching", quiet),
        ("searching, now", now),
        ("searching, before", before),
    ] {
        l.sort();
        let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!("  {what:<24} {:>7.2} ms {:>9.2} ms", at(0.5), at(0.99));
    }
}

fn key(n: u64) -> NodeId {
    SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(n)).public()
}

/// The tracker's search before the index: every offer's name through LIKE.
fn like_scan(conn: &rusqlite::Connection, text: &str, limit: usize) -> usize {
    let pattern = format!("%{text}%");
    let mut stmt = conn
        .prepare_cached(
            "SELECT hash, size FROM offers WHERE name LIKE ?1
             GROUP BY hash, size ORDER BY COUNT(*) DESC, MIN(offered_at_ms) LIMIT ?2",
        )
        .expect("the old query");
    stmt.query_map(rusqlite::params![pattern, limit as i64], |_| Ok(()))
        .expect("the old query runs")
        .count()
}

fn median_time(runs: usize, mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut n = 0;
    for _ in 0..runs {
        let t = Instant::now();
        n = f();
        times.push(t.elapsed());
    }
    (crate::median(&mut times).expect("runs > 0"), n)
}

/// How long each of `count` name bindings takes (fresh names, round `round`)
/// while `search` runs in a loop on another thread.
fn bind_latencies(
    store: &Arc<Mutex<ServerStore>>,
    count: usize,
    round: u64,
    search: impl Fn() + Send + 'static,
) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Bounded like everything else: it stops when told, or after a minute.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                search();
            }
        })
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name: Name = format!("user{round}x{i}").parse().expect("a name");
        let id = key(1_000_000 + round * 100_000 + i as u64);
        let t = Instant::now();
        store
            .lock()
            .unwrap()
            .bind_name(&name, &id, 1)
            .expect("a binding");
        out.push(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    searcher.join().expect("the searcher ends");
    out
}
