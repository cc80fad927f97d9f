//! `burrow server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use burrow_proto::rendezvous::PresenceScope;
use burrow_proto::ServerAddr;
use burrow_server::{AdmissionConfig, BrokerConfig, Policy, Server, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::stop::StopSignal;
use crate::CliError;

/// Options of `burrow server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on: UDP for QUIC and STUN (the next two ports answer
    /// STUN too, for NAT tests), and TCP on the same port for nodes whose
    /// networks drop UDP (QUIC over TCP; run on port 443 to reach networks
    /// that allow little else). The default, `[::]:7700`, takes IPv4 and
    /// IPv6 on one socket (IPv4 alone where the machine has no IPv6);
    /// `0.0.0.0:7700` is IPv4 only.
    #[arg(long, default_value = "[::]:7700")]
    listen: SocketAddr,
    /// How long a connect request waits for an answer.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    request_ttl: Duration,
    /// A node silent this long is gone (it stopped without saying goodbye).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A second address of this machine, for NAT diagnosis (`burrow nat`): STUN is
    /// also answered there and on the listen port + 1. Needs a specific --listen.
    #[arg(long)]
    alt_addr: Option<std::net::IpAddr>,
    /// Don't relay traffic between nodes that have no direct path (they then
    /// connect only where hole punching works).
    #[arg(long)]
    no_relay: bool,
    /// Relayed traffic the server carries in all, in Mbit/s, shared fairly
    /// among the nodes relaying at the moment (one alone gets all of it).
    /// The default is above what one server carries (about 2 Gbit/s on two
    /// cores): in effect the machine's own limit. Set it to what you want to
    /// give away of your uplink.
    #[arg(long, default_value_t = 10_000, value_name = "MBIT")]
    relay_total_mbit: u64,
    /// At most this much relayed traffic from one node, in KiB per second
    /// (bursts of twice that), whatever its share. Default: no cap but the
    /// share.
    #[arg(long, value_name = "KIB")]
    relay_rate_kib: Option<u64>,
    /// Relayed traffic one node may send per session, in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    relay_quota_mib: u64,
    /// Who may register: `open` (any key takes a free name), `accounts` (a name
    /// needs an account: `admin add-user` or an invite; a new key needs the
    /// password), `allowlist` (only node ids `admin allow`ed).
    #[arg(long, default_value = "open")]
    policy: Policy,
    /// Failed logins from one address before it is banned. As many on one
    /// name from several addresses make password logins for that name wait
    /// (0.5 s more per failure, at most 5 s); the name is never blocked.
    #[arg(long, default_value_t = 5, value_name = "N")]
    max_failures: u32,
    /// ... counted within this window.
    #[arg(long, default_value = "10min", value_parser = humantime::parse_duration)]
    failure_window: Duration,
    /// The first such ban; each repeat doubles it (up to a day).
    #[arg(long, default_value = "1min", value_parser = humantime::parse_duration)]
    block: Duration,
    /// New connections per second from one address (IPv6: one /64), after a
    /// burst of four times as many.
    #[arg(long, default_value_t = 5.0, value_name = "PER_SEC")]
    conn_rate: f64,
    /// STUN requests per second from one address, after a burst of twice as many.
    #[arg(long, default_value_t = 20.0, value_name = "PER_SEC")]
    stun_rate: f64,
    /// Misbehaviour points (a bad frame is 20) that get an address banned for
    /// 10 minutes (doubling on repeats).
    #[arg(long, default_value_t = 100, value_name = "POINTS")]
    misbehaviour_limit: u32,
    /// Whom each node hears come and go: `everyone` (every node sees every
    /// other; fine for thousands), or `watched` (only its contacts and links;
    /// others are found by name: for tens of thousands and more).
    #[arg(long, default_value = "everyone", value_parser = parse_presence)]
    presence: PresenceScope,
    /// Handshakes in progress past which new connections must first prove
    /// their address (a QUIC Retry: one more round trip for them, and a flood
    /// of Initials from spoofed addresses holds no more than this).
    #[arg(long, default_value_t = 256, value_name = "N")]
    retry_above: usize,
    /// Also take nodes over HTTPS here (TLS on TCP, then a WebSocket), for
    /// networks that pass nothing else: typically `[::]:443`. Nodes fall
    /// back to it when UDP and TCP to --listen get nowhere (the join URL
    /// names the port).
    #[arg(long, value_name = "ADDR")]
    https: Option<SocketAddr>,
    /// The certificate chain (PEM) the HTTPS port shows, e.g. Let's
    /// Encrypt's fullchain.pem: proxies that inspect TLS need one they
    /// trust. Without it, a self-signed one (nodes don't check it: they pin
    /// the server's key inside).
    #[arg(long, requires_all = ["key", "https"], value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires_all = ["cert", "https"], value_name = "FILE")]
    key: Option<PathBuf>,
}

fn parse_presence(s: &str) -> Result<PresenceScope, String> {
    match s {
        "everyone" => Ok(PresenceScope::Everyone),
        "watched" => Ok(PresenceScope::Watched),
        _ => Err(format!("{s:?}: use everyone or watched")),
    }
}

pub async fn run(home: PathBuf, args: ServerArgs) -> Result<(), CliError> {
    let (secret, created) = burrow_home::keyfile::load_or_create(&home.join("key"))?;
    let config = ServerConfig {
        listen: args.listen,
        home: home.clone(),
        broker: BrokerConfig {
            request_ttl: args.request_ttl,
            relay: !args.no_relay,
            relay_total: args.relay_total_mbit.saturating_mul(1_000_000 / 8),
            relay_rate: args
                .relay_rate_kib
                .map_or(u64::MAX, |k| k.saturating_mul(1024)),
            relay_burst: args
                .relay_rate_kib
                .map_or(4 << 20, |k| k.saturating_mul(2048)),
            relay_quota: args.relay_quota_mib.saturating_mul(1 << 20),
            presence: args.presence,
            ..BrokerConfig::default()
        },
        idle_timeout: args.idle_timeout,
        alt_ip: args.alt_addr,
        retry_above: args.retry_above,
        https: args.https,
        https_cert: args.cert.clone().zip(args.key.clone()),
        admission: AdmissionConfig {
            policy: args.policy,
            max_failures: args.max_failures.max(1),
            failure_window: args.failure_window,
            block_base: args.block,
            conn_rate: args.conn_rate,
            conn_burst: args.conn_rate * 4.0,
            stun_rate: args.stun_rate,
            stun_burst: args.stun_rate * 2.0,
            misbehaviour_limit: args.misbehaviour_limit.max(1),
            ..AdmissionConfig::default()
        },
    };
    let server = Server::bind(&secret, config).map_err(|e| {
        let hint = match e {
            burrow_server::ServerError::Endpoint(_) => Some("is another server using that port? pick another with --listen".to_string()),
            burrow_server::ServerError::Stun(_) => Some("STUN also needs the next port (and --alt-addr, if given, needs a specific --listen address)".to_string()),
            burrow_server::ServerError::Admin { .. } => Some("is a server already running with this --home? stop it, or pick another home".to_string()),
            _ => None,
        };
        CliError::new(e, hint)
    })?;
    let local = server.local_addr();
    let addrs = burrow_net::iface::lan_candidates(local);
    let host = addrs
        .first()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "<this-host>".into());
    // For nodes with IPv6 alone, when the first address is IPv4.
    let v6_url = addrs
        .iter()
        .find(|a| a.is_ipv6())
        .filter(|_| addrs.first().is_some_and(|a| a.is_ipv4()))
        .map(|a| ServerAddr {
            key: Some(server.id()),
            host: a.ip().to_string(),
            port: local.port(),
            https: server.https_addr().map(|a| a.port()),
        });
    let url = ServerAddr {
        key: Some(server.id()),
        host,
        port: local.port(),
        https: server.https_addr().map(|a| a.port()),
    };
    if created {
        println!("created a new server key in {}", home.join("key").display());
    }
    println!(
        "burrow server {} listening on {local} (QUIC and STUN over UDP; QUIC over TCP for networks that drop UDP)",
        server.id().short()
    );
    let alts: Vec<String> = server
        .stun_alternates()
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!("STUN for NAT diagnosis also on {}", alts.join(", "));
    if let Some(a) = server.https_addr() {
        println!(
            "HTTPS (TLS and a WebSocket, for networks that pass nothing else) on {a}, showing {}",
            if args.cert.is_some() {
                "the given certificate"
            } else {
                "a self-signed certificate"
            }
        );
    }
    if args.no_relay {
        println!("relay off: nodes connect only where hole punching works");
    } else {
        let cap = args
            .relay_rate_kib
            .map(|k| format!(", at most {k} KiB/s each"))
            .unwrap_or_default();
        println!(
            "relaying for nodes without a direct path: {} Mbit/s shared fairly{cap}, {} MiB per node and session",
            args.relay_total_mbit, args.relay_quota_mib
        );
    }
    println!("server id: {}", server.id());
    println!("join URL:  {url}");
    if let Some(v6) = v6_url {
        println!(
            "over IPv6: {v6}  (for nodes with IPv6 alone; dual-stack nodes find it themselves)"
        );
    }
    match args.policy {
        Policy::Open => {
            println!("policy open: nodes join with: burrow up --server {url} --name <name>")
        }
        Policy::Accounts => {
            println!("policy accounts: a name needs an account (burrow --home {} admin add-user <name>, or admin invite)", home.display());
            println!("nodes join with: burrow up --server {url} --name <name> --password-stdin | --invite <code>");
        }
        Policy::Allowlist => {
            println!("policy allowlist: only allowed node ids register (burrow --home {} admin allow <node-id>)", home.display());
        }
    }
    println!(
        "operate it with: burrow --home {} admin ... | console",
        home.display()
    );
    if local.ip().is_unspecified() {
        println!(
            "(use this machine's public address in place of {} if peers are elsewhere)",
            url.host
        );
    }
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let mut stop = StopSignal::install()?;
    tokio::spawn(async move {
        stop.wait().await;
        stopper.cancel();
    });
    server.run(shutdown).await;
    println!("server stopped");
    Ok(())
}
