//! burrow's benchmarks. Each prints its figures beside a baseline measured in the
//! same run.
//!
//! `setup`: how fast two nodes behind the lab's kernel NATs get a working
//! connection and a direct path, with a fixed delay on every uplink. For every
//! ordered pair of NAT kinds, fresh nodes (new keys, new sockets, flushed NAT
//! tables) connect several times; the acceptor accepts at once. Reported per
//! cell, as medians: the time from the connect request to the first chat message
//! acknowledged by the peer, and to the direct path, in milliseconds and in
//! peer-to-peer round trips. The baselines: a raw UDP echo between two peers
//! through the lab (one round trip) and a bare QUIC dial to a known address
//! plus one echo (no rendezvous, no NAT). The table is made with routers that
//! drop unsolicited packets to themselves and again with routers that don't
//! (`--firewall on|off|both`), and once more with dual-stack peers, whose IPv6
//! sits behind the routers' stateful firewalls (`--family v4|dual|both`).
//!
//! Needs root (the lab); run with `cargo run --release -p burrow-bench -- setup`.
//!
//! `relay`: see [`relay`]. Run with `cargo build --release -p burrow -p burrow-bench && target/release/burrow-bench relay`.
//!
//! `forum`: see [`forum`]. Run with `cargo run --release -p burrow-bench -- forum`
//! (no root needed: loopback and memory).
//!
//! `server`: see [`server`]. Run with `cargo build --release -p burrow &&
//! cargo run --release -p burrow-bench -- server` (no root needed: loopback).
//!
//! `tracker`: see [`tracker`]. Run with `cargo run --release -p burrow-bench --
//! tracker` (no root needed: one store on disk).
//!
//! `transfer`: see [`transfer`]. Run with `cargo build --release -p burrow &&
//! cargo run --release -p burrow-bench -- transfer [--lab]`.
//!
//! `tunnel`: see [`tunnel`]. Run with `cargo build --release -p burrow -p
//! burrow-bench && target/release/burrow-bench tunnel [--lab]`.

mod forum;
mod relay;
mod server;
mod tracker;
mod transfer;
mod tunnel;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use burrow_lab::{Family, Host, Lab, NatKind, NsRuntime, SERVER_ADDRS};
use burrow_node::api::ConnectionState;
use burrow_node::{Node, NodeConfig, NodeEvent};
use burrow_proto::punch::Method;
use burrow_proto::{Name, SecretKey, ServerAddr};
use clap::{Parser, Subcommand};
use tokio::sync::oneshot;

#[derive(Parser)]
#[command(
    about = "burrow's benchmarks (setup and transfer --lab need root: they build a network lab)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

/// Which address families the setup benchmark gives its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Families {
    /// IPv4 alone (the tables `--firewall` asks for).
    V4,
    /// Dual-stack peers (one table, routers with an input firewall).
    Dual,
    /// Both.
    Both,
}

/// Which routers the setup benchmark builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Firewall {
    On,
    Off,
    Both,
}

#[derive(Subcommand)]
enum Bench {
    /// Connection setup through every pair of NAT kinds, with delayed uplinks.
    Setup {
        /// Runs per cell (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// One-way delay on every uplink, in milliseconds.
        #[arg(long, default_value_t = 10)]
        delay_ms: u64,
        /// How long a run waits for the direct path.
        #[arg(long, default_value = "11s", value_parser = humantime::parse_duration)]
        direct_wait: Duration,
        /// Only the cells whose requester or acceptor kind is named here
        /// (e.g. `--only Symmetric`); every cell by default.
        #[arg(long)]
        only: Vec<String>,
        /// Routers with an input firewall (`on`: they drop unsolicited
        /// packets to themselves, as most home routers do), without one
        /// (`off`: plain masquerade), or the whole table once each way.
        #[arg(long, value_enum, default_value_t = Firewall::Both)]
        firewall: Firewall,
        /// IPv4 peers (`v4`), dual-stack peers (`dual`: IPv6 with home
        /// routers' stateful firewalls beside the IPv4 NATs), or both.
        #[arg(long, value_enum, default_value_t = Families::Both)]
        family: Families,
    },
    /// One file between two nodes, beside plain TCP and bare QUIC.
    Transfer {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Across the NAT lab (root needed) instead of loopback.
        #[arg(long)]
        lab: bool,
        /// With --lab: one-way delay on every uplink, in milliseconds (the
        /// peers are four uplink crossings apart: 10 ms makes a 40 ms round trip).
        #[arg(long, default_value_t = 10)]
        delay_ms: u64,
        /// Rounds of bare QUIC then burrow, one after the other; the medians
        /// are reported (this machine's speed drifts from minute to minute).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        rounds: u64,
    },
    /// One TCP connection through a forward beside plain TCP and a bare
    /// QUIC stream, and a new connection's first byte through an open
    /// forward beside one made straight to the service.
    Tunnel {
        /// Bytes per round, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Across the NAT lab (root needed) instead of loopback.
        #[arg(long)]
        lab: bool,
        /// With --lab: one-way delay on every uplink, in milliseconds.
        #[arg(long, default_value_t = 10)]
        delay_ms: u64,
        /// Rounds of bare QUIC then the tunnel; the medians are reported.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        rounds: u64,
    },
    /// Relayed throughput through one server, 1 and 8 pairs at once, beside
    /// the same pairs direct, and the server's CPU (loopback, release binary).
    Relay {
        /// Bytes moved per case, in MiB, split among the pairs.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
    /// One server process under many simulated nodes: registrations per second,
    /// memory per node, brokering latency at a steady rate.
    Server(server::Args),
    /// Tracker name searches (index and the old scan) and the name bindings
    /// that share their store.
    Tracker {
        /// Offers in the store.
        #[arg(long, default_value_t = 200_000)]
        offers: usize,
        /// Name bindings timed in each case.
        #[arg(long, default_value_t = 200)]
        bindings: usize,
    },
    /// Forum gossip across in-process nodes, and set reconciliation.
    Forum {
        /// Nodes in the gossip mesh.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Posts to spread (the first one shapes the tree).
        #[arg(long, default_value_t = 21)]
        posts: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.bench {
        Bench::Setup {
            runs,
            delay_ms,
            direct_wait,
            only,
            firewall,
            family,
        } => setup(
            runs,
            Duration::from_millis(delay_ms),
            direct_wait,
            &only,
            (firewall, family),
        ),
        Bench::Transfer {
            size_mib,
            lab,
            delay_ms,
            rounds,
        } => transfer::run(
            size_mib,
            rounds as usize,
            lab.then(|| Duration::from_millis(delay_ms)),
        ),
        Bench::Tunnel {
            size_mib,
            lab,
            delay_ms,
            rounds,
        } => tunnel::run(
            size_mib,
            rounds as usize,
            lab.then(|| Duration::from_millis(delay_ms)),
        ),
        Bench::Forum { nodes, posts } => forum::run(nodes, posts),
        Bench::Relay { size_mib } => relay::run(size_mib),
        Bench::Tracker { offers, bindings } => tracker::run(offers, bindings),
        Bench::Server(args) => server::run(args),
    }
}

/// The middle value (the upper one of an even count); none of nothing.
fn median<T: PartialOrd + Copy>(v: &mut [T]) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Some(v[v.len() / 2])
}

/// Median round trip of a raw UDP echo from `a` to `b` (after one to warm up ARP).
fn udp_rtt(a: &Host, b: &Host) -> Duration {
    let (sa, sb) = (a.udp(0).unwrap(), b.udp(9000).unwrap());
    sa.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sb.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let to = SocketAddr::from((b.addr, 9000));
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..21 {
            let Ok((n, from)) = sb.recv_from(&mut buf) else {
                return;
            };
            let _ = sb.send_to(&buf[..n], from);
        }
    });
    let mut rtts = Vec::new();
    for i in 0..21 {
        let t = Instant::now();
        sa.send_to(b"ping", to).unwrap();
        let mut buf = [0u8; 64];
        sa.recv_from(&mut buf).expect("echo");
        if i > 0 {
            rtts.push(t.elapsed());
        }
    }
    echo.join().unwrap();
    median(&mut rtts).unwrap()
}

/// Frames per second one delayed link carries: a one-second UDP blast from a
/// public peer to the server, counted where it arrives.
fn link_ceiling(from: &Host, server: &Host) -> f64 {
    let tx: UdpSocket = from.udp(0).unwrap();
    let rx: UdpSocket = server.udp(9100).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = SocketAddr::from((server.addr, 9100));
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        let mut first = None;
        let mut last = Instant::now();
        while rx.recv_from(&mut buf).is_ok() {
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            n += 1;
        }
        (n, first.map(|f| last - f))
    });
    let payload = [0u8; 200];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(1) && sent < 2_000_000 {
        if tx.send_to(&payload, to).is_ok() {
            sent += 1;
        }
    }
    let (n, span) = counter.join().unwrap();
    match span {
        Some(s) if !s.is_zero() => n as f64 / s.as_secs_f64(),
        _ => 0.0,
    }
}

/// Bare QUIC between two public peers: dial a known address with a known key,
/// one 4-byte echo. No rendezvous, no NAT: the floor for a first message.
fn bare_quic(a: &Host, b: &Host, runs: usize) -> Duration {
    let (ra, rb) = (
        NsRuntime::start(&a.ns).unwrap(),
        NsRuntime::start(&b.ns).unwrap(),
    );
    let mut times = Vec::new();
    for i in 0..runs + 1 {
        let kb = SecretKey::generate(&mut rand::thread_rng());
        let id_b = kb.public();
        let bind_b = SocketAddr::from((b.addr, 0));
        let addr_b = rb.run(async move {
            let ep = burrow_net::Endpoint::bind(
                &kb,
                burrow_net::EndpointConfig {
                    bind: bind_b,
                    alpns: vec![b"bench/1"],
                    ..Default::default()
                },
            )
            .unwrap();
            let addr = ep.local_addr().unwrap();
            tokio::spawn(async move {
                if let Some(inc) = ep.quic().accept().await {
                    if let Ok(conn) = inc.await {
                        if let Ok((mut s, mut r)) = conn.accept_bi().await {
                            let mut buf = [0u8; 4];
                            if r.read_exact(&mut buf).await.is_ok() {
                                let _ = s.write_all(&buf).await;
                                let _ = s.finish();
                            }
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    }
                }
            });
            addr
        });
        let took = ra.run(async move {
            let ka = SecretKey::generate(&mut rand::thread_rng());
            let ep =
                burrow_net::Endpoint::bind(&ka, burrow_net::EndpointConfig::default()).unwrap();
            let t = Instant::now();
            let (conn, _) = ep.connect(addr_b, b"bench/1", Some(id_b)).await.unwrap();
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            r.read_exact(&mut buf).await.unwrap();
            let took = t.elapsed();
            conn.close(0u8.into(), b"done");
            took
        });
        if i > 0 {
            times.push(took);
        }
    }
    median(&mut times).unwrap()
}

/// One run of a cell: fresh nodes connect; returns (first message, direct
/// path, what found it).
fn one_setup(
    server: &ServerAddr,
    (req, req_name): (&NsRuntime, &str),
    (acc, acc_name): (&NsRuntime, &str),
    direct_wait: Duration,
) -> (Duration, Option<Duration>, Option<Method>, Option<String>) {
    // Names stay bound to their first key: every run's fresh nodes get new ones.
    let (req_name, acc_name) = (req_name.to_string(), acc_name.to_string());
    let dir = tempfile::tempdir().unwrap();
    let start = |home: std::path::PathBuf, name: &str| {
        let config = NodeConfig {
            idle_timeout: Duration::from_secs(30),
            ..NodeConfig::new(
                home,
                SecretKey::generate(&mut rand::thread_rng()),
                Some(server.clone()),
                name.parse::<Name>().unwrap(),
            )
        };
        async move { Node::start(config).await.expect("the node starts") }
    };
    let acceptor = acc.run(start(dir.path().join("acc"), &acc_name));
    let requester = req.run(start(dir.path().join("req"), &req_name));
    // The acceptor says yes at once.
    let a = acceptor.clone();
    let asker = req_name.clone();
    acc.spawn(async move {
        let mut events = a.subscribe();
        while let Ok(e) = events.recv().await {
            if matches!(e, NodeEvent::IncomingRequest { .. }) {
                let _ = a.accept(&asker).await;
                return;
            }
        }
    });
    let r = requester.clone();
    let (acc_name2, req_name2) = (acc_name.clone(), req_name.clone());
    let result = req.run(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r
            .peers()
            .iter()
            .any(|p| p.name.as_deref() == Some(&acc_name))
        {
            assert!(Instant::now() < deadline, "the acceptor never came online");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Events are stamped as they happen, by a task of their own: the
        // direct path may come while the first message is on its way.
        let mut events = r.subscribe();
        let t0 = Instant::now();
        let (connected_tx, connected) = oneshot::channel::<Result<(), String>>();
        let (direct_tx, direct_rx) = oneshot::channel::<Duration>();
        tokio::spawn(async move {
            let (mut connected_tx, mut direct_tx) = (Some(connected_tx), Some(direct_tx));
            while let Ok(e) = events.recv().await {
                let direct = match e {
                    NodeEvent::Connected { path, .. } => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                        path == ConnectionState::Direct
                    }
                    NodeEvent::PathChanged { path, .. } => path == ConnectionState::Direct,
                    NodeEvent::ConnectFailed { error, .. } => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(Err(error));
                        }
                        false
                    }
                    _ => false,
                };
                if direct {
                    if let Some(tx) = direct_tx.take() {
                        let _ = tx.send(t0.elapsed());
                    }
                }
            }
        });
        r.connect(&acc_name).await.expect("the request is made");
        if let Err(e) = connected.await.expect("the watcher runs") {
            panic!("no connection: {e}");
        }
        r.send(&acc_name, "first").await.expect("delivered");
        let first = t0.elapsed();
        let left = (t0 + direct_wait).saturating_duration_since(Instant::now());
        let direct = tokio::time::timeout(left, direct_rx)
            .await
            .ok()
            .and_then(|d| d.ok());
        (first, direct)
    });
    // Each side knows what found its end; the more specific of the two.
    let method_of = |node: &Node, other: &str| {
        node.peers()
            .into_iter()
            .find(|p| p.name.as_deref() == Some(other))
            .and_then(|p| p.method)
    };
    let seen = [
        method_of(&requester, &acc_name2),
        method_of(&acceptor, &req_name2),
    ];
    let method = seen
        .iter()
        .flatten()
        .find(|m| **m != Method::Probe)
        .or(seen.iter().flatten().next())
        .copied();
    let family = requester
        .peers()
        .into_iter()
        .find(|p| p.name.as_deref() == Some(&acc_name2))
        .and_then(|p| p.family);
    let result = (
        result.0,
        result.1,
        result.1.and(method),
        result.1.and(family),
    );
    req.run(async move { requester.shutdown().await });
    acc.run(async move { acceptor.shutdown().await });
    result
}

fn setup(
    runs: usize,
    delay: Duration,
    direct_wait: Duration,
    only: &[String],
    (firewall, family): (Firewall, Families),
) {
    let mut lab = Lab::new().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        eprintln!("hint: the lab needs root, iproute2, nftables and conntrack");
        std::process::exit(1)
    });
    lab.set_uplink_delay(delay);
    // The server gets its IPv6 addresses before it binds (it tells nodes of
    // them); peers get IPv6 only in the dual-stack table.
    lab.set_family(Family::DualStack).unwrap();
    lab.set_family(Family::V4).unwrap();

    let server_rt = NsRuntime::start(&lab.server().ns).unwrap();
    let srv_dir = tempfile::tempdir().unwrap();
    // A home of its own inside the temporary directory (which may be open to
    // others: a home must not be).
    let srv_home = srv_dir.path().join("server");
    let (server_addr, server_stop) = server_rt.run(async move {
        let secret = SecretKey::generate(&mut rand::thread_rng());
        let mut config = burrow_server::ServerConfig::new(srv_home);
        config.listen = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 7700));
        let server = burrow_server::Server::bind(&secret, config).expect("the server starts");
        let addr = ServerAddr {
            key: Some(server.id()),
            host: SERVER_ADDRS[0].to_string(),
            port: 7700,
            https: None,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(server.run(stop.clone()));
        (addr, stop)
    });

    let (pa, _) = lab.add_peer("pa", NatKind::None).unwrap();
    let (pb, _) = lab.add_peer("pb", NatKind::None).unwrap();
    let rtt = udp_rtt(&pa, &pb);
    let to_server = udp_rtt(&pa, lab.server());
    let ceiling = link_ceiling(&pa, lab.server());
    let quic = bare_quic(&pa, &pb, runs);
    let in_rtts = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64();

    println!(
        "burrow setup benchmark: {} ms one-way on every uplink, {runs} runs per cell (medians)",
        delay.as_millis()
    );
    println!(
        "baseline: raw UDP echo peer <-> peer {:.1} ms (= 1 RTT), peer <-> server {:.1} ms",
        ms(rtt),
        ms(to_server)
    );
    println!(
        "baseline: bare QUIC dial to a known address + one echo, public peers: {:.1} ms ({:.1} RTT)",
        ms(quic),
        in_rtts(quic)
    );
    println!(
        "delay link ceiling: {:.0} frames/s through one link's relay threads",
        ceiling
    );
    let firewalls: &[bool] = match firewall {
        Firewall::On => &[true],
        Firewall::Off => &[false],
        Firewall::Both => &[true, false],
    };
    // (router firewall, dual-stack peers)
    let mut variants: Vec<(bool, bool)> = Vec::new();
    if family != Families::Dual {
        variants.extend(firewalls.iter().map(|&f| (f, false)));
    }
    if family != Families::V4 {
        variants.push((true, true));
    }
    let mut over = Vec::new();
    for (v, &(with_firewall, dual)) in variants.iter().enumerate() {
        lab.set_router_firewall(with_firewall);
        lab.set_family(if dual { Family::DualStack } else { Family::V4 })
            .unwrap();
        println!();
        println!(
            "routers {} an input firewall{}",
            if with_firewall { "with" } else { "without" },
            if dual {
                ", dual-stack peers (IPv6 behind the routers' stateful firewalls)"
            } else {
                ""
            }
        );
        println!(
            "{:<15} {:<15} {:>22} {:>22} {:>8}  found by",
            "requester", "acceptor", "first message", "direct path", "direct"
        );
        for (i, req_kind) in NatKind::ALL.into_iter().enumerate() {
            for (j, acc_kind) in NatKind::ALL.into_iter().enumerate() {
                let named = |k: NatKind| {
                    only.iter()
                        .any(|o| o.eq_ignore_ascii_case(&format!("{k:?}")))
                };
                if !only.is_empty() && !named(req_kind) && !named(acc_kind) {
                    continue;
                }
                let (rh, rr) = lab.add_peer(&format!("req{v}{i}{j}"), req_kind).unwrap();
                let (ah, ar) = lab.add_peer(&format!("acc{v}{i}{j}"), acc_kind).unwrap();
                let (req, acc) = (
                    NsRuntime::start(&rh.ns).unwrap(),
                    NsRuntime::start(&ah.ns).unwrap(),
                );
                let mut firsts = Vec::new();
                let mut directs = Vec::new();
                let mut methods = Vec::new();
                let mut families = Vec::new();
                for run in 0..runs {
                    for r in [&rr, &ar].into_iter().flatten() {
                        lab.flush_mappings(r).unwrap();
                    }
                    let (first, direct, method, carried) = one_setup(
                        &server_addr,
                        (&req, &format!("req{v}{i}{j}n{run}")),
                        (&acc, &format!("acc{v}{i}{j}n{run}")),
                        direct_wait,
                    );
                    firsts.push(first);
                    directs.extend(direct);
                    methods.extend(method);
                    families.extend(carried);
                }
                families.sort();
                families.dedup();
                methods.sort_by_key(|m| m.words());
                methods.dedup();
                let method = methods
                    .iter()
                    .map(|m| m.words())
                    .collect::<Vec<_>>()
                    .join(", ");
                let method = if dual && !families.is_empty() {
                    format!("{method} (over {})", families.join(", "))
                } else {
                    method
                };
                let n_direct = directs.len();
                let first = median(&mut firsts).unwrap();
                let direct = median(&mut directs);
                println!(
                    "{:<15} {:<15} {:>9.0} ms {:>5.1} RTT {:>22} {:>5}/{runs}  {method}",
                    format!("{req_kind:?}"),
                    format!("{acc_kind:?}"),
                    ms(first),
                    in_rtts(first),
                    direct
                        .map(|d| format!("{:.0} ms {:>5.1} RTT", ms(d), in_rtts(d)))
                        .unwrap_or_else(|| "relayed".into()),
                    n_direct
                );
                let cell = format!(
                    "{req_kind:?} x {acc_kind:?}{}{}",
                    if with_firewall { "" } else { " (no firewall)" },
                    if dual { " (dual-stack)" } else { "" }
                );
                if in_rtts(first) > 4.0 {
                    over.push(format!("{cell}: first message {:.1} RTT", in_rtts(first)));
                }
                // Birthday probing takes seconds by design (random ports hit at
                // 250 probes a second), and TCP simultaneous open waits for the
                // kernel's SYN retransmission (1 s) or, after UDP, for UDP to give
                // up (10 s): neither has a round-trip target.
                let slow_by_design =
                    methods.contains(&Method::Birthday) || methods.contains(&Method::Tcp);
                if !slow_by_design && direct.is_some_and(|d| in_rtts(d) > 6.0) {
                    over.push(format!(
                        "{cell}: direct path {:.1} RTT",
                        in_rtts(direct.unwrap())
                    ));
                }
            }
        }
    }
    println!();
    if over.is_empty() {
        println!(
            "targets met: first message within 4 RTT in every cell, direct path within 6 RTT where neither birthday probing nor TCP is needed"
        );
    } else {
        println!("over target (first message 4 RTT, direct 6 RTT):");
        for o in over {
            println!("  {o}");
        }
    }
    server_stop.cancel();
    drop(server_rt);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
