//! `transfer`: one file from one node to another, beside the same bytes over a
//! plain TCP connection and over a bare quinn connection (same TLS 1.3 raw-key
//! crypto and flow-control windows as burrow, no verification, no disk).
//!
//! burrow runs as it does for people: the release `burrow` binary as a server and
//! two `up` nodes, `share` on one side and `get --json` on the other (BLAKE3
//! verification of every 16 KiB group, the file written to disk and synced).
//! Peak memory is each node process's high-water mark (VmHWM); CPU time is
//! each end's user + system time during the transfer (from `/proc`).
//!
//! This machine's speed drifts by a third from one minute to the next, so bare
//! QUIC and burrow run in alternating rounds on the same nodes, and the medians
//! are reported with every round's figures. Each round also times the disk
//! side alone (the same bytes to a new file, written as the downloader writes
//! them, synced).
//!
//! On loopback by default; with `--lab`, across the NAT lab with a delay on every
//! uplink (two uplinks each way: 4 × delay round trip), the sender behind a
//! port-restricted NAT and the receiver on the public segment, so plain TCP can
//! run over the same links.

use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_lab::{Host, Lab, NatKind};
use burrow_proto::SecretKey;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::median;

/// Where each end of a measurement runs: a lab host, or loopback.
#[derive(Clone)]
pub(crate) struct End {
    pub(crate) host: Option<Host>,
    pub(crate) ip: std::net::IpAddr,
}

impl End {
    pub(crate) fn enter(&self) {
        if let Some(h) = &self.host {
            burrow_lab::enter_namespace(&h.ns).expect("entering the lab namespace");
        }
    }

    pub(crate) fn command(&self, program: &Path) -> Command {
        match &self.host {
            Some(h) => h.command(program.to_str().expect("a UTF-8 path")),
            None => Command::new(program),
        }
    }
}

/// Writes `size` seeded pseudo-random bytes, on disk before anything is
/// measured: otherwise the kernel writes them back during the runs, on the same
/// two cores.
pub(crate) fn generate(path: &Path, size: u64) {
    burrow_lab::data::write_random(path, size, 1).expect("test data written");
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("test data synced");
}

/// The disk side alone: the file's bytes written to a new file as the
/// downloader writes them (1 MiB direct writes where the file system takes
/// them, else 16 KiB writes through the page cache) and synced, in this
/// process. Returns the time and the CPU seconds it took.
fn disk_write(file: &Path, dir: &Path) -> (Duration, f64) {
    use std::os::unix::fs::OpenOptionsExt;
    let copy = dir.join("disk-write.bin");
    let mut from = std::fs::File::open(file).unwrap();
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&copy);
    let (mut to, block) = match direct {
        Ok(f) => (f, 1 << 20),
        Err(_) => (std::fs::File::create(&copy).unwrap(), 16 * 1024),
    };
    // Direct I/O needs the buffer aligned in memory.
    let mut raw = vec![0u8; block + 4096];
    let at = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[at..at + block];
    let (start, cpu0) = (Instant::now(), thread_cpu());
    let mut at = 0;
    loop {
        let n = from.read(buf).unwrap();
        if n == 0 {
            break;
        }
        if n < block || to.write_all(&buf[..n]).is_err() {
            // A short last block can't go direct, nor anything on a file
            // system that refuses direct writes: through the page cache.
            to = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
            to.seek(std::io::SeekFrom::Start(at)).unwrap();
            to.write_all(&buf[..n]).unwrap();
        }
        at += n as u64;
    }
    to.sync_data().unwrap();
    let took = (start.elapsed(), thread_cpu() - cpu0);
    std::fs::remove_file(&copy).unwrap();
    took
}

/// CPU time (user + system) used so far by the thread or process whose
/// `/proc` stat file is `stat`, in seconds.
fn cpu_secs(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).expect("a /proc stat file");
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th, in clock ticks.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .expect("a /proc stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPU time used so far by the calling thread, in seconds.
fn thread_cpu() -> f64 {
    cpu_secs("/proc/thread-self/stat")
}

/// Plain TCP: the file's bytes from `from` to `to`, read and dropped there.
pub(crate) fn tcp(file: &Path, from: &End, to: &End) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let to2 = to.clone();
    let receiver = std::thread::spawn(move || {
        to2.enter();
        let l = TcpListener::bind((to2.ip, 0)).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf).unwrap() {
                0 => break,
                k => n += k as u64,
            }
        }
        (Instant::now(), n)
    });
    let start = send_file(from, rx.recv().unwrap(), file);
    let (end, n) = receiver.join().unwrap();
    assert_eq!(n, std::fs::metadata(file).unwrap().len());
    end - start
}

/// A quinn endpoint on a socket with burrow's buffer sizes (the baseline
/// should not lose datagrams burrow wouldn't).
fn bare_endpoint(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> quinn::Endpoint {
    let socket = burrow_net::socket::bind_udp(bind).expect("a UDP socket");
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("a quinn endpoint")
}

/// Writes `file` from `end` into `addr`, one connection; returns when it
/// started.
pub(crate) fn send_file(end: &End, addr: SocketAddr, file: &Path) -> Instant {
    let (end, file) = (end.clone(), file.to_path_buf());
    std::thread::spawn(move || {
        end.enter();
        let mut f = std::fs::File::open(file).unwrap();
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            s.write_all(&buf[..k]).unwrap();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        start
    })
    .join()
    .unwrap()
}

/// quinn alone: one stream, burrow's TLS, windows and socket buffers, the file's bytes read
/// and dropped. Returns the time and the CPU seconds of sender and receiver.
pub(crate) fn bare_quic(file: &Path, from: &End, to: &End) -> (Duration, f64, f64) {
    let transport = || {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window((4u32 << 20).into())
            .receive_window((16u32 << 20).into())
            .send_window(16 << 20);
        Arc::new(t)
    };
    let server_key = SecretKey::generate(&mut rand::thread_rng());
    let server_id = server_key.public();
    let (tx, rx) = std::sync::mpsc::channel();
    let to2 = to.clone();
    let receiver = std::thread::spawn(move || {
        to2.enter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tls = burrow_net::tls::server_config(&server_key, &[b"bench/1"]);
            let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(
                QuicServerConfig::try_from(tls).unwrap(),
            ));
            cfg.transport_config(transport());
            let ep = bare_endpoint(SocketAddr::new(to2.ip, 0), Some(cfg));
            tx.send(ep.local_addr().unwrap()).unwrap();
            let conn = ep.accept().await.unwrap().await.unwrap();
            let cpu0 = thread_cpu();
            let mut r = conn.accept_uni().await.unwrap();
            let mut n = 0u64;
            while let Some(chunk) = r.read_chunk(usize::MAX, true).await.unwrap() {
                n += chunk.bytes.len() as u64;
            }
            let end = Instant::now();
            let cpu = thread_cpu() - cpu0;
            conn.close(0u8.into(), b"done");
            ep.wait_idle().await;
            (end, n, cpu)
        })
    });
    let addr = rx.recv().unwrap();
    let (from2, file2) = (from.clone(), file.to_path_buf());
    let sender = std::thread::spawn(move || {
        from2.enter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let key = SecretKey::generate(&mut rand::thread_rng());
            let tls = burrow_net::tls::client_config(&key, b"bench/1");
            let mut cfg =
                quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
            cfg.transport_config(transport());
            let bind = SocketAddr::new(from2.ip, 0);
            let ep = bare_endpoint(bind, None);
            let mut f = std::fs::File::open(file2).unwrap();
            let start = Instant::now();
            let cpu0 = thread_cpu();
            let conn = ep
                .connect_with(cfg, addr, burrow_net::tls::SERVER_NAME)
                .unwrap()
                .await
                .unwrap();
            assert_eq!(burrow_net::peer_id(&conn), Some(server_id));
            let mut s = conn.open_uni().await.unwrap();
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let k = f.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                buf.truncate(k);
                s.write_chunk(buf.into()).await.unwrap();
            }
            s.finish().unwrap();
            conn.closed().await;
            (start, thread_cpu() - cpu0)
        })
    });
    let (start, tx_cpu) = sender.join().unwrap();
    let (end, n, rx_cpu) = receiver.join().unwrap();
    assert_eq!(n, std::fs::metadata(file).unwrap().len());
    (end - start, tx_cpu, rx_cpu)
}

/// A `burrow` process whose stdout is read line by line.
pub(crate) struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("burrow starts");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    pub(crate) fn expect(&self, needle: &str) -> String {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("burrow never printed {needle:?}"));
            if l.contains(needle) {
                return l;
            }
        }
    }

    /// CPU seconds the process has used so far, all threads.
    pub(crate) fn cpu(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Peak resident memory, from /proc.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process is alive");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmHWM in /proc/pid/status")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cli(bin: &Path, home: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "burrow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

pub(crate) fn wait_for(
    bin: &Path,
    home: &Path,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check(&cli(bin, home, &["peers"])) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn peer_is(v: &serde_json::Value, name: &str, states: &[&str]) -> bool {
    v.as_array().is_some_and(|a| {
        a.iter()
            .any(|p| p["name"] == name && states.iter().any(|s| p["connection"] == *s))
    })
}

/// A server and two nodes, alice sharing the file with bob, linked directly.
struct Burrow {
    bin: PathBuf,
    dir: PathBuf,
    hash: String,
    /// How long `share` took (hashing the file).
    hash_time: Duration,
    // Dropped (killed) in reverse order: the nodes, then the server.
    alice: Proc,
    bob: Proc,
    _server: Proc,
}

/// A server and two nodes in `dir` (homes `srv`, `alice`, `bob`), bob
/// linked to alice directly. Fields drop in order: the nodes, then the server.
pub(crate) struct Pair {
    pub(crate) alice: Proc,
    pub(crate) bob: Proc,
    pub(crate) server: Proc,
}

/// Starts a [`Pair`]: the server on `server`, alice on `a`, bob on `b`; bob
/// asks, alice accepts, and it waits for the direct path.
pub(crate) fn start_pair(bin: &Path, dir: &Path, server: &End, a: &End, b: &End) -> Pair {
    let srv = Proc::spawn({
        let mut c = server.command(bin);
        c.arg("--home").arg(dir.join("srv")).args([
            "server",
            "--listen",
            &format!("{}:0", server.ip),
        ]);
        c
    });
    let url = srv
        .expect("join URL:")
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    let up = |end: &End, name: &str| {
        let mut c = end.command(bin);
        c.arg("--home")
            .arg(dir.join(name))
            .args(["up", "--server", &url, "--name", name]);
        if end.host.is_none() {
            c.args(["--bind", "127.0.0.1:0"]);
        }
        let p = Proc::spawn(c);
        p.expect("is up");
        p
    };
    let (alice, bob) = (up(a, "alice"), up(b, "bob"));
    let (ah, bh) = (dir.join("alice"), dir.join("bob"));
    wait_for(bin, &bh, "alice online", |v| peer_is(v, "alice", &["none"]));
    cli(bin, &bh, &["connect", "alice"]);
    wait_for(bin, &ah, "bob's request", |v| {
        peer_is(v, "bob", &["pending_in"])
    });
    cli(bin, &ah, &["accept", "bob"]);
    wait_for(bin, &bh, "a direct path", |v| {
        peer_is(v, "alice", &["direct"])
    });
    Pair {
        alice,
        bob,
        server: srv,
    }
}

/// One `get`: its time, and the CPU seconds each node spent on it.
struct Get {
    elapsed: Duration,
    sender_cpu: f64,
    receiver_cpu: f64,
}

impl Burrow {
    fn start(bin: &Path, dir: &Path, file: &Path, server: &End, from: &End, to: &End) -> Burrow {
        let pair = start_pair(bin, dir, server, from, to);
        let t = Instant::now();
        let shared = cli(bin, &dir.join("alice"), &["share", file.to_str().unwrap()]);
        let hash_time = t.elapsed();
        let hash = shared["hash"].as_str().unwrap().to_string();
        Burrow {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            hash,
            hash_time,
            alice: pair.alice,
            bob: pair.bob,
            _server: pair.server,
        }
    }

    /// bob downloads the file into a fresh directory, which is removed after.
    fn get(&self, file: &Path, round: usize) -> Get {
        let out = self.dir.join(format!("received-{round}"));
        let cpu0 = (self.alice.cpu(), self.bob.cpu());
        let got = cli(
            &self.bin,
            &self.dir.join("bob"),
            &["get", &self.hash, "-o", out.to_str().unwrap()],
        );
        let elapsed = Duration::from_millis(got["elapsed_ms"].as_u64().unwrap());
        let (sender_cpu, receiver_cpu) = (self.alice.cpu() - cpu0.0, self.bob.cpu() - cpu0.1);
        assert_eq!(
            std::fs::metadata(out.join(file.file_name().unwrap()))
                .unwrap()
                .len(),
            std::fs::metadata(file).unwrap().len()
        );
        std::fs::remove_dir_all(&out).expect("the download removed");
        Get {
            elapsed,
            sender_cpu,
            receiver_cpu,
        }
    }
}

/// The release `burrow` binary, built beside this benchmark.
pub(crate) fn burrow_binary() -> PathBuf {
    let bin = std::env::current_exe()
        .expect("own path")
        .with_file_name("burrow");
    if !bin.exists() {
        eprintln!(
            "{} is missing: build it first with `cargo build --release -p burrow`",
            bin.display()
        );
        std::process::exit(2);
    }
    bin
}

pub(crate) fn gbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

/// Where a benchmark's parties run: all on loopback, or across the lab with
/// `delay` on every uplink (one behind a port-restricted NAT, one on the
/// public segment, so plain TCP reaches it too).
pub(crate) struct Places {
    /// The lab, kept for the whole run.
    pub(crate) lab: Option<Lab>,
    pub(crate) server: End,
    /// Behind the NAT.
    pub(crate) behind: End,
    /// On the public segment.
    pub(crate) public: End,
    /// In words, for the report (`behind` names the NATed party).
    pub(crate) place: String,
}

pub(crate) fn places(lab_delay: Option<Duration>, behind: &str) -> Places {
    let Some(delay) = lab_delay else {
        let lo = End {
            host: None,
            ip: [127, 0, 0, 1].into(),
        };
        return Places {
            lab: None,
            server: lo.clone(),
            behind: lo.clone(),
            public: lo,
            place: "loopback".into(),
        };
    };
    let mut l = Lab::new().unwrap_or_else(|e| {
        eprintln!("cannot build the lab (root needed): {e}");
        std::process::exit(2);
    });
    l.set_uplink_delay(delay);
    let (a, _) = l.add_peer("tx", NatKind::PortRestricted).unwrap();
    let (b, _) = l.add_peer("rx", NatKind::None).unwrap();
    let end = |h: Host| End {
        ip: h.addr.into(),
        host: Some(h),
    };
    Places {
        server: end(l.server().clone()),
        behind: end(a),
        public: end(b),
        place: format!(
            "lab: {behind} behind a port-restricted NAT, {} ms round trip",
            4 * delay.as_millis()
        ),
        lab: Some(l),
    }
}

/// Runs the benchmark with a file of `size_mib` MiB, on loopback or (with
/// `delay`) across the lab.
pub fn run(size_mib: u64, rounds: usize, lab_delay: Option<Duration>) {
    let bin = burrow_binary();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    let size = size_mib << 20;
    generate(&file, size);
    // Keep the lab alive for the whole run; loopback needs none.
    let Places {
        lab,
        server,
        behind: from,
        public: to,
        place,
    } = places(lab_delay, "sender");
    println!("transfer: {size_mib} MiB, {place}, {rounds} rounds (bare QUIC and burrow alternate)");
    let t = tcp(&file, &from, &to);
    println!(
        "  plain TCP           {:6.2} Gbit/s  {:6.2} s",
        gbit(size, t),
        t.as_secs_f64()
    );
    let b = Burrow::start(&bin, dir.path(), &file, &server, &from, &to);
    let (mut bare, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (q, q_tx, q_rx) = bare_quic(&file, &from, &to);
        let g = b.get(&file, round);
        let (w, w_cpu) = disk_write(&file, dir.path());
        let ratio = q.as_secs_f64() / g.elapsed.as_secs_f64();
        println!(
            "  round {round}: bare QUIC {:5.2} Gbit/s (cpu {q_tx:.2} + {q_rx:.2} s), burrow {:5.2} Gbit/s (cpu {:.2} + {:.2} s): {:.0}%; disk alone {:.2} s (cpu {w_cpu:.2} s)",
            gbit(size, q),
            gbit(size, g.elapsed),
            g.sender_cpu,
            g.receiver_cpu,
            100.0 * ratio,
            w.as_secs_f64()
        );
        bare.push(q);
        ours.push(g.elapsed);
        ratios.push(ratio);
    }
    let q = median(&mut bare).expect("at least one round");
    let g = median(&mut ours).expect("at least one round");
    println!(
        "  bare QUIC (quinn)   {:6.2} Gbit/s  {:6.2} s  (median)",
        gbit(size, q),
        q.as_secs_f64()
    );
    println!(
        "  burrow get          {:6.2} Gbit/s  {:6.2} s  {:.0}% of bare QUIC (median of the rounds; every 16 KiB verified, written to disk and synced)",
        gbit(size, g),
        g.as_secs_f64(),
        100.0 * median(&mut ratios).expect("at least one round")
    );
    println!(
        "  share (hashing)     {:6.2} GB/s",
        size as f64 / b.hash_time.as_secs_f64() / 1e9
    );
    println!(
        "  peak memory         sender {} MiB, receiver {} MiB",
        b.alice.peak_rss_kib() / 1024,
        b.bob.peak_rss_kib() / 1024
    );
    drop(b);
    drop(lab);
}
