//! `tunnel`: one TCP connection through a forward, beside plain TCP and a
//! bare QUIC stream in the same run, and the time to the first byte of a new
//! TCP connection through an open forward beside one made straight to the
//! service.
//!
//! burrow runs as it does for people: the release binary as a server and two
//! `up` nodes; alice exposes a sink (it reads and counts, in this process),
//! bob forwards a local port to it, and this process writes the file's bytes
//! into bob's port. Bare QUIC and the tunnel run in alternating rounds (this
//! machine's speed drifts) and the medians are reported.
//!
//! The first byte: a service that answers each byte it reads with one byte;
//! the time from `connect` to the answer, through the forward (its link and
//! tunnel connection already up) and straight to the service's address.
//!
//! On loopback by default; with `--lab`, across the NAT lab with a delay on
//! every uplink: bob behind a port-restricted NAT, alice on the public
//! segment (so a plain TCP connection reaches her service too).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::median;
use crate::transfer::{
    bare_quic, burrow_binary, cli, gbit, generate, places, send_file, start_pair, tcp, End, Places,
};

/// First-byte samples per kind.
const FIRST_BYTES: usize = 20;

/// Listens on every address of `end` and hands each of the first `conns`
/// connections to `each`, on a thread of its own; returns the address to
/// reach it at.
fn serve_on(
    end: &End,
    conns: usize,
    mut each: impl FnMut(TcpStream) + Send + 'static,
) -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (end, ip) = (end.clone(), end.ip);
    std::thread::spawn(move || {
        end.enter();
        let l = TcpListener::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        addr_tx.send(SocketAddr::new(ip, port)).unwrap();
        for s in l.incoming().take(conns) {
            each(s.unwrap());
        }
    });
    addr_rx.recv().unwrap()
}

/// Serves `conns` connections on `end`: each is read to its end and counted;
/// the time it ended and its byte count come back on the channel.
fn sink(end: &End, conns: usize) -> (SocketAddr, std::sync::mpsc::Receiver<(Instant, u64)>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = serve_on(end, conns, move |mut s| {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k @ 1..) = s.read(&mut buf) {
            n += k as u64;
        }
        let _ = tx.send((Instant::now(), n));
    });
    (addr, rx)
}

/// Answers each byte with one byte, on every connection, until the process
/// ends (one thread per connection, for `conns` of them).
fn answerer(end: &End, conns: usize) -> SocketAddr {
    serve_on(end, conns, |mut s| {
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while let Ok(1) = s.read(&mut b) {
                if s.write_all(&b).is_err() {
                    return;
                }
            }
        });
    })
}

/// From `end`: connect to `addr`, send a byte, wait for the answer.
fn first_byte(end: &End, addr: SocketAddr) -> Duration {
    let end = end.clone();
    std::thread::spawn(move || {
        end.enter();
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"?").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        start.elapsed()
    })
    .join()
    .unwrap()
}

/// A free TCP port on `end`.
fn free_port(end: &End) -> u16 {
    let end = end.clone();
    std::thread::spawn(move || {
        end.enter();
        TcpListener::bind(SocketAddr::new(end.ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
    .join()
    .unwrap()
}

/// alice exposes `service` (listening at `port` on her side), bob forwards a
/// local port to it; returns bob's local address.
fn forward(bin: &Path, dir: &Path, bob: &End, name: &str, port: u16) -> SocketAddr {
    cli(
        bin,
        &dir.join("alice"),
        &[
            "expose",
            name,
            &format!("127.0.0.1:{port}"),
            "--allow",
            "bob",
        ],
    );
    let local = SocketAddr::new(
        [127, 0, 0, 1].into(),
        free_port(&End {
            ip: [127, 0, 0, 1].into(),
            ..bob.clone()
        }),
    );
    cli(
        bin,
        &dir.join("bob"),
        &["forward", &format!("alice/{name}"), &local.to_string()],
    );
    local
}

/// Runs the benchmark: `size_mib` MiB per round, on loopback or (with
/// `delay`) across the lab.
pub fn run(size_mib: u64, rounds: usize, lab_delay: Option<Duration>) {
    let bin = burrow_binary();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    let size = size_mib << 20;
    generate(&file, size);
    let Places {
        lab,
        server,
        behind: bob,
        public: alice,
        place,
    } = places(lab_delay, "forwarder");
    println!(
        "tunnel: {size_mib} MiB, {place}, {rounds} rounds (bare QUIC and the tunnel alternate)"
    );
    let t = tcp(&file, &bob, &alice);
    println!(
        "  plain TCP              {:6.2} Gbit/s  {:6.2} s",
        gbit(size, t),
        t.as_secs_f64()
    );
    // alice exposes, bob forwards.
    let nodes = start_pair(&bin, dir.path(), &server, &alice, &bob);
    let ends = (&bob, &alice);
    throughput(&bin, dir.path(), &file, ends, rounds);
    first_bytes(&bin, dir.path(), ends, lab_delay.map(|d| 4 * d));
    drop(nodes);
    drop(lab);
}

/// Rounds of bare QUIC and one TCP connection through a forward, from bob
/// to alice, and their medians.
fn throughput(bin: &Path, dir: &Path, file: &Path, (bob, alice): (&End, &End), rounds: usize) {
    let size = std::fs::metadata(file).unwrap().len();
    let (sink_addr, ends) = sink(alice, rounds);
    let local = forward(bin, dir, bob, "sink", sink_addr.port());
    let (mut bare, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (q, _, _) = bare_quic(file, bob, alice);
        let start = send_file(bob, local, file);
        let (end, n) = ends.recv_timeout(Duration::from_secs(300)).unwrap();
        assert_eq!(n, size, "every byte through the tunnel");
        let g = end - start;
        let ratio = q.as_secs_f64() / g.as_secs_f64();
        println!(
            "  round {round}: bare QUIC {:5.2} Gbit/s, tunnel {:5.2} Gbit/s: {:.0}%",
            gbit(size, q),
            gbit(size, g),
            100.0 * ratio
        );
        bare.push(q);
        ours.push(g);
        ratios.push(ratio);
    }
    let (q, g) = (median(&mut bare).unwrap(), median(&mut ours).unwrap());
    println!(
        "  bare QUIC (one stream) {:6.2} Gbit/s  (median)",
        gbit(size, q)
    );
    println!(
        "  through a forward      {:6.2} Gbit/s  {:.0}% of bare QUIC (median of the rounds)",
        gbit(size, g),
        100.0 * median(&mut ratios).unwrap()
    );
}

/// A new connection's first byte, through an open forward and straight to
/// the service (`rtt`: the lab's round trip, to count in).
fn first_bytes(bin: &Path, dir: &Path, (bob, alice): (&End, &End), rtt: Option<Duration>) {
    let answer = answerer(alice, 2 * FIRST_BYTES + 2);
    let local = forward(bin, dir, bob, "answer", answer.port());
    first_byte(bob, local);
    first_byte(bob, answer);
    let (mut through, mut straight) = (Vec::new(), Vec::new());
    for _ in 0..FIRST_BYTES {
        through.push(first_byte(bob, local));
        straight.push(first_byte(bob, answer));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (t, s) = (
        median(&mut through).unwrap(),
        median(&mut straight).unwrap(),
    );
    let in_rtt = |d: Duration| match rtt {
        Some(r) => format!(" ({:.1} round trips)", d.as_secs_f64() / r.as_secs_f64()),
        None => String::new(),
    };
    println!(
        "  first byte, straight   {:7.2} ms{}  (TCP connect and one exchange, to the service's address)",
        ms(s),
        in_rtt(s)
    );
    println!(
        "  first byte, forward    {:7.2} ms{}  (connect to the forward, one exchange through the open link; median of {FIRST_BYTES})",
        ms(t),
        in_rtt(t)
    );
}
