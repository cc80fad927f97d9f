//! Ctrl-C and SIGTERM end the commands that run until stopped, every time,
//! even while events pour in: `up` under presence churn, `messages --follow`
//! while messages arrive, `get` while it reports progress. Real processes on
//! 127.0.0.1.
#![cfg(target_os = "linux")] // Unix signals

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proc::*;

/// How long a command may take to exit after the signal. `up` tells the
/// server and its peers goodbye first; the clients have nothing to finish.
const UP_EXIT: Duration = Duration::from_millis(2500);
const CLIENT_EXIT: Duration = Duration::from_secs(1);

/// Sends SIGTERM (even tries) or SIGINT (odd ones) to `p`; returns how long it
/// took to exit, or panics if it is still running after `limit` (and kills it).
fn stop(p: &mut Proc, attempt: usize, limit: Duration, what: &str) -> Duration {
    let signal = if attempt.is_multiple_of(2) {
        "TERM"
    } else {
        "INT"
    };
    unsafe_kill(p.child.id(), signal);
    let sent = Instant::now();
    loop {
        if p.child.try_wait().unwrap().is_some() {
            let took = sent.elapsed();
            assert!(
                took <= limit,
                "{what} try {attempt}: SIG{signal} took {took:?} to end it (limit {limit:?})"
            );
            return took;
        }
        assert!(
            sent.elapsed() <= limit,
            "{what} try {attempt}: still running {limit:?} after SIG{signal}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `work` on a thread until the returned guard is dropped.
struct Background {
    running: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(n: usize, work: impl Fn(usize, u64) + Send + Sync + 'static) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let work = Arc::new(work);
        let threads = (0..n)
            .map(|i| {
                let (running, work) = (running.clone(), work.clone());
                std::thread::spawn(move || {
                    // Bounded: the test ends it long before this.
                    for round in 0..10_000 {
                        if !running.load(Ordering::Relaxed) {
                            break;
                        }
                        work(i, round);
                    }
                })
            })
            .collect();
        Background { running, threads }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn up_ends_on_every_sigterm_and_sigint_while_presence_events_pour_in() {
    let dir = tempfile::tempdir().unwrap();
    // Every node here comes from 127.0.0.1: lift the per-address limit on
    // new connections.
    let (_srv, url) = loopback_server(&dir.path().join("srv"), &["--conn-rate", "1000"]);
    // Three nodes that come and go without end: every other node hears each
    // arrival and departure.
    let churn_dir = dir.path().join("churn");
    let churn = {
        let url = url.clone();
        Background::start(3, move |i, _| {
            let home = churn_dir.join(format!("c{i}"));
            let mut p = loopback_up(&home, &url, &format!("churn{i}"));
            std::thread::sleep(Duration::from_millis(150));
            p.terminate();
        })
    };

    // Eight nodes started at once, like a lab or a login script would, each
    // stopped as soon as it is up, while the others' arrivals still flood it.
    let mut tries = 0;
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let mut nodes: Vec<Proc> = (0..8)
            .map(|i| {
                let home = dir.path().join(format!("n{round}-{i}"));
                let mut args = vec!["--home", home.to_str().unwrap()];
                let name = format!("node{round}-{i}");
                args.extend(loopback_up_args(&url, &name));
                Proc::spawn(&args)
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.expect_line("is up");
            let took = stop(node, tries, UP_EXIT, &format!("up (node {round}-{i})"));
            slowest = slowest.max(took);
            node.expect_line("stopped");
            tries += 1;
        }
    }
    drop(churn);
    assert!(tries >= 40);
    eprintln!("{tries} nodes stopped by signal, slowest in {slowest:?}");
}

#[test]
fn messages_follow_ends_on_every_signal_while_messages_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = alice_and_bob(dir.path());
    let (ah, bh) = (nodes.ah.clone(), nodes.bh.clone());
    // bob keeps talking, from two shells at once.
    let talk = {
        let bh = bh.clone();
        Background::start(2, move |i, n| {
            let (ok, _, err) = run(&bh, &["send", "alice", &format!("message {i}.{n}")]);
            assert!(ok, "send failed: {err}");
        })
    };
    let mut slowest = Duration::ZERO;
    for attempt in 0..20 {
        let mut follow = Proc::spawn(&[
            "--home",
            ah.to_str().unwrap(),
            "messages",
            "--follow",
            "--limit",
            "1",
        ]);
        // One line of history, then one that arrived since: the follow
        // loop is running, and more keep coming.
        follow.expect_lines("message ", 2);
        let took = stop(&mut follow, attempt, CLIENT_EXIT, "messages --follow");
        slowest = slowest.max(took);
    }
    drop(talk);
    eprintln!("20 follows stopped by signal, slowest in {slowest:?}");
}

#[test]
fn get_ends_on_every_signal_during_its_progress_and_then_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = alice_and_bob(dir.path());
    let (ah, bh) = (nodes.ah.clone(), nodes.bh.clone());
    // Ten files, each stopped twice: once fresh, once resumed. Each is large
    // enough that a short try doesn't finish it, and sparse, so it costs no
    // disk on the sharing side.
    let size: u64 = 256 << 20;
    let hashes: Vec<String> = (0..10)
        .map(|k| {
            let original = dir.path().join(format!("big{k}.bin"));
            // Zeros but for its number in front: ten different hashes.
            let mut file = std::fs::File::create(&original).unwrap();
            std::io::Write::write_all(&mut file, format!("file {k}").as_bytes()).unwrap();
            file.set_len(size).unwrap();
            let shared = json(&ah, &["share", original.to_str().unwrap()]);
            shared["hash"].as_str().unwrap().to_string()
        })
        .collect();
    let out = dir.path().join("downloads");
    std::fs::create_dir_all(&out).unwrap();

    let mut slowest = Duration::ZERO;
    for attempt in 0..20 {
        let said = dir.path().join(format!("get-{attempt}.err"));
        let mut get = Proc::spawn_with_stderr(
            &[
                "--home",
                bh.to_str().unwrap(),
                "get",
                &hashes[attempt / 2],
                "-o",
                out.to_str().unwrap(),
            ],
            std::fs::File::create(&said).unwrap(),
        );
        // The first progress line: bytes are flowing and updates arriving.
        get.expect_line(" of 256.00 MiB");
        let took = stop(&mut get, attempt, CLIENT_EXIT, "get");
        slowest = slowest.max(took);
        let said = std::fs::read_to_string(&said).unwrap();
        assert!(
            said.contains("error: stopped")
                && said.contains("hint: run the same command again: it continues"),
            "get try {attempt} said: {said}"
        );
        // The second try of each file starts where the first stopped.
        assert_eq!(
            said.contains("resuming:"),
            !attempt.is_multiple_of(2),
            "get try {attempt} said: {said}"
        );
    }
    eprintln!("20 gets stopped by signal, slowest in {slowest:?}");
    let placed: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(
        placed.is_empty(),
        "nothing unfinished is placed: {placed:?}"
    );
}
