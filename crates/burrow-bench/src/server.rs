//! `server`: how many nodes one rendezvous server holds, how fast they register,
//! what each costs it in memory, and how fast it brokers connect requests.
//!
//! The release `burrow server` runs as its own process (so its memory is its
//! own) on 127.0.0.1. This process plays the nodes: each has its own key and
//! its own QUIC connection, does what `burrow up` does on the control stream
//! (Hello, Welcome, then answers requests), and keeps its connection alive with
//! the node's keepalive (10 s). Nodes are spread over many 127.x.y.z source
//! addresses, `--per-addr` each, so the server's per-address limits apply as
//! they would in the wild.
//!
//! Measured: registrations per second (handshake, Hello, Welcome) with
//! `--parallel` in flight; the server's resident memory per connected node;
//! and, at a steady `--rate`, the brokering latency from a node's Connect to
//! its Accepted (through the server, the asked node's accept, and back).
//! Baselines in the same run: a one-socket UDP echo with pipelined clients,
//! and bare QUIC handshakes against a plain quinn endpoint with the same
//! crypto and nothing else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::rendezvous::{self, ClientMsg, Direction, LinkOffer, ServerMsg};
use burrow_proto::{NodeId, SecretKey};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::{mpsc, Semaphore};

/// What the benchmark is asked to do.
#[derive(clap::Args)]
pub struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100_000)]
    pub nodes: usize,
    /// Nodes per source address (127.x.y.z): within the server's per-address
    /// connection burst (20).
    #[arg(long, default_value_t = 16)]
    pub per_addr: usize,
    /// Registrations in flight at once (more loses packets on loopback's
    /// socket buffers and waits for retransmissions).
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// Connect requests per second in the brokering phase.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long the brokering phase lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// The server's presence scope: watched or everyone.
    #[arg(long, default_value = "watched")]
    pub presence: String,
}

pub fn run(args: Args) {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench(args));
}

async fn bench(args: Args) {
    let addrs = args.nodes.div_ceil(args.per_addr.max(1));
    println!(
        "server: {} simulated nodes over {addrs} source addresses ({} each), presence {}",
        args.nodes, args.per_addr, args.presence
    );
    println!(
        "  baseline: UDP echo, one socket, pipelined      {:>9.0} requests/s",
        udp_echo_rate()
    );
    let (bare, bare_n) = bare_quic_handshakes(args.parallel).await;
    println!("  baseline: bare QUIC handshakes ({bare_n}, same crypto) {bare:>7.0} /s");

    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut server, addr, key) = start_server(dir.path(), &args.presence);
    let before = rss_kib(server.id());

    // Register every node, `parallel` at a time.
    let (events_tx, mut events) = mpsc::unbounded_channel::<(usize, Instant)>();
    let endpoints: Vec<quinn::Endpoint> = (0..addrs)
        .map(|i| {
            quinn::Endpoint::client(SocketAddr::new(source_addr(i), 0)).expect("a client socket")
        })
        .collect();
    let permits = Arc::new(Semaphore::new(args.parallel));
    let transport = Arc::new(node_transport());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.nodes {
        let ep = endpoints[i / args.per_addr].clone();
        let (permits, transport, events) = (permits.clone(), transport.clone(), events_tx.clone());
        tasks.spawn(async move {
            let permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore stays open");
            let node = register(&ep, addr, key, transport, i).await;
            drop(permit);
            node.map(|(id, reader, writer)| {
                let (tx, rx) = mpsc::channel(8);
                tokio::spawn(node_task(i, reader, writer, rx, events));
                (i, id, tx)
            })
        });
    }
    let mut sims: Vec<Option<(NodeId, mpsc::Sender<ClientMsg>)>> = vec![None; args.nodes];
    let mut failed = 0usize;
    while let Some(done) = tasks.join_next().await {
        match done.expect("registration tasks don't panic") {
            Ok((i, id, tx)) => sims[i] = Some((id, tx)),
            Err(e) => {
                if failed < 3 {
                    eprintln!("  a registration failed: {e}");
                }
                failed += 1;
            }
        }
    }
    let took = started.elapsed();
    let registered = args.nodes - failed;
    println!(
        "  registrations (handshake, Hello, Welcome)      {:>9.0} /s  ({registered} of {} in {:.1} s; {:.0}% of bare QUIC)",
        registered as f64 / took.as_secs_f64(),
        args.nodes,
        took.as_secs_f64(),
        100.0 * registered as f64 / took.as_secs_f64() / bare
    );

    // Memory once it has settled, with every node keeping alive.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = rss_kib(server.id());
    println!(
        "  server memory: {} MiB with {registered} nodes, {} MiB idle = {:.1} KiB per node (peak {} MiB)",
        after.0 / 1024,
        before.0 / 1024,
        (after.0 - before.0) as f64 / registered.max(1) as f64,
        after.1 / 1024
    );

    // Brokering at a steady rate: node i asks node i + n/2, which accepts.
    let half = args.nodes / 2;
    let total = (args.rate as u64 * args.secs) as usize;
    let mut starts: Vec<Option<Instant>> = vec![None; args.nodes];
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    let mut latencies = Vec::with_capacity(total);
    let mut sent = 0usize;
    for n in 0..total {
        tick.tick().await;
        while let Ok((i, at)) = events.try_recv() {
            if let Some(s) = starts[i].take() {
                latencies.push(at - s);
            }
        }
        let a = n % half;
        let (Some((_, a_tx)), Some((b_id, _))) = (&sims[a], &sims[half + a]) else {
            continue;
        };
        if starts[a].is_some() {
            continue; // still waiting on its last one
        }
        starts[a] = Some(Instant::now());
        if a_tx.try_send(ClientMsg::Connect { peer: *b_id }).is_ok() {
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while latencies.len() < sent && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            Ok(Some((i, at))) => {
                if let Some(s) = starts[i].take() {
                    latencies.push(at - s);
                }
            }
            _ => continue,
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "  brokering at {}/s for {} s: {}/{sent} accepted, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (Connect to Accepted)",
        args.rate,
        args.secs,
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let after = rss_kib(server.id());
    println!(
        "  server memory after brokering: {} MiB (peak {} MiB)",
        after.0 / 1024,
        after.1 / 1024
    );
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    for ep in endpoints {
        ep.close(burrow_net::Close::Done.code(), b"done");
    }
}

/// 127.1.0.1, 127.1.0.2, ...: a distinct source address per group of nodes.
fn source_addr(i: usize) -> IpAddr {
    let n = i as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ))
}

/// The node's transport settings, as `burrow up` has them: keepalive 10 s.
fn node_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t.max_idle_timeout(Some(
        Duration::from_secs(30)
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    t
}

fn client_config(
    secret: &SecretKey,
    transport: Arc<quinn::TransportConfig>,
) -> quinn::ClientConfig {
    let tls = burrow_net::tls::client_config(secret, rendezvous::ALPN);
    let crypto = QuicClientConfig::try_from(tls).expect("TLS 1.3 is QUIC-capable");
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    cfg
}

/// One node: a fresh key, a connection, Hello, Welcome.
async fn register(
    ep: &quinn::Endpoint,
    server: SocketAddr,
    server_key: NodeId,
    transport: Arc<quinn::TransportConfig>,
    i: usize,
) -> Result<(NodeId, FrameReader, FrameWriter), String> {
    let key = SecretKey::generate(&mut rand::thread_rng());
    let id = key.public();
    let connecting = ep
        .connect_with(
            client_config(&key, transport),
            server,
            burrow_net::tls::SERVER_NAME,
        )
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if burrow_net::tls::peer_id(&conn) != Some(server_key) {
        return Err("the server proved another key".into());
    }
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(recv, rendezvous::VERSION, rendezvous::MAX_FRAME);
    let mut writer = FrameWriter::new(send, rendezvous::VERSION, rendezvous::MAX_FRAME);
    writer
        .write(&ClientMsg::Hello {
            name: format!("n{i}").parse().expect("n<number> is a valid name"),
            lan_addrs: vec![],
            credentials: Default::default(),
        })
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(30), reader.read::<ServerMsg>()).await {
        Ok(Ok(Some(ServerMsg::Welcome { .. }))) => Ok((id, reader, writer)),
        Ok(Ok(other)) => Err(format!("expected Welcome, got {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no Welcome".into()),
    }
}

/// A registered node: accepts every request, reports (and releases) every
/// accepted one of its own, sends what the benchmark gives it.
async fn node_task(
    i: usize,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    mut cmds: mpsc::Receiver<ClientMsg>,
    events: mpsc::UnboundedSender<(usize, Instant)>,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<ClientMsg>(16);
    // Writes in their own task: a cancelled read must not cut a write short.
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if writer.write(&m).await.is_err() {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            m = reader.read::<ServerMsg>() => match m {
                Ok(Some(ServerMsg::Incoming { peer })) => {
                    let _ = out_tx.send(ClientMsg::Accept { peer: peer.id }).await;
                }
                Ok(Some(ServerMsg::Accepted(LinkOffer { peer, direction: Direction::Outgoing, .. }))) => {
                    let _ = events.send((i, Instant::now()));
                    let _ = out_tx.send(ClientMsg::Release { peer }).await;
                }
                Ok(Some(_)) => {}
                _ => return,
            },
            c = cmds.recv() => match c {
                Some(msg) => { let _ = out_tx.send(msg).await; }
                None => return,
            },
        }
    }
}

/// Starts the release `burrow server` on 127.0.0.1 with limits for a load
/// test's many nodes per address; returns it, its address and key.
fn start_server(home: &Path, presence: &str) -> (Child, SocketAddr, NodeId) {
    let bin = crate::transfer::burrow_binary();
    let mut child = Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(["server", "--listen", "127.0.0.1:0", "--presence", presence])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("burrow server starts");
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let mut url = None;
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(u) = line.strip_prefix("join URL:") {
            url = Some(u.trim().to_string());
            break;
        }
    }
    // Keep reading what it prints, so that it never writes into a closed pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let url: burrow_proto::ServerAddr = url
        .expect("the server prints its join URL")
        .parse()
        .expect("a valid URL");
    let addr = url.host_port().parse().expect("an address");
    (child, addr, url.key.expect("the URL pins the key"))
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Requests per second a one-socket UDP echo answers, clients pipelining 64.
fn udp_echo_rate() -> f64 {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let to = server.local_addr().expect("bound");
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a timeout");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a timeout");
    let mut buf = [0u8; 64];
    for _ in 0..64 {
        let _ = client.send_to(b"ping", to);
    }
    let start = Instant::now();
    let mut answered = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        if client.recv_from(&mut buf).is_err() {
            let _ = client.send_to(b"ping", to);
            continue;
        }
        answered += 1;
        let _ = client.send_to(b"ping", to);
    }
    let rate = answered as f64 / start.elapsed().as_secs_f64();
    drop(client);
    echo.join().expect("the echo thread ends");
    rate
}

/// Handshakes per second against a bare quinn endpoint with burrow's crypto
/// (raw-key TLS 1.3) that does nothing else, from the same kind of clients.
async fn bare_quic_handshakes(parallel: usize) -> (f64, usize) {
    let n: usize = 5000;
    let key = SecretKey::generate(&mut rand::thread_rng());
    let server = burrow_net::Endpoint::bind(
        &key,
        burrow_net::EndpointConfig {
            bind: "127.0.0.1:0".parse().expect("an address"),
            alpns: vec![rendezvous::ALPN],
            ..Default::default()
        },
    )
    .expect("a QUIC endpoint");
    let addr = server.local_addr().expect("bound");
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let accept = {
        let (quic, held) = (server.quic().clone(), held.clone());
        tokio::spawn(async move {
            while let Some(inc) = quic.accept().await {
                let held = held.clone();
                tokio::spawn(async move {
                    if let Ok(c) = inc.await {
                        held.lock().expect("not poisoned").push(c);
                    }
                });
            }
        })
    };
    let endpoints: Vec<quinn::Endpoint> = (0..n.div_ceil(16))
        .map(|i| {
            quinn::Endpoint::client(SocketAddr::new(source_addr(200_000 + i), 0))
                .expect("a client socket")
        })
        .collect();
    let transport = Arc::new(node_transport());
    let permits = Arc::new(Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (ep, transport, permits) = (
            endpoints[i / 16].clone(),
            transport.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("open");
            let key = SecretKey::generate(&mut rand::thread_rng());
            let connecting = ep
                .connect_with(
                    client_config(&key, transport),
                    addr,
                    burrow_net::tls::SERVER_NAME,
                )
                .ok()?;
            connecting.await.ok()
        });
    }
    let mut conns = Vec::new();
    while let Some(c) = tasks.join_next().await {
        if let Ok(Some(c)) = c {
            conns.push(c);
        }
    }
    let rate = conns.len() as f64 / start.elapsed().as_secs_f64();
    let count = conns.len();
    for c in conns {
        c.close(burrow_net::Close::Done.code(), b"done");
    }
    accept.abort();
    server.quic().close(burrow_net::Close::Done.code(), b"done");
    (rate, count)
}

/// Lets this process hold a socket per source address and more.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
