//! The node's configuration: plain data, parsed by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use burrow_proto::mesh::Ticket;
use burrow_proto::{Name, SecretKey, ServerAddr};

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's directory: store, control socket, known_servers, lock.
    pub home: PathBuf,
    /// The node's key (loaded from `home/key` by the binary).
    pub secret: SecretKey,
    /// The rendezvous server; `None` runs serverless: the node meets others from
    /// tickets ([`NodeConfig::join`]) and through introductions by its peers.
    pub server: Option<ServerAddr>,
    /// Serverless: nodes to meet first (each a friend's `burrow ticket`).
    pub join: Vec<Ticket>,
    /// Serverless: how many mesh links the node looks for through introductions.
    /// Default 4; it takes incoming links up to twice that.
    pub mesh_links: usize,
    /// How often the links this node dialed reconcile their forum sets again
    /// (besides when a link comes up). Default 60 s: what gossip missed (a
    /// post synced from a third peer isn't forwarded) arrives within a minute,
    /// at the cost of one short exchange per link per minute when nothing
    /// differs.
    pub resync_every: Duration,
    /// How many forum posts the store keeps per author and per topic from
    /// authors the node doesn't vouch for (see [`burrow_store::PostQuota`]).
    pub forum_quota: burrow_store::PostQuota,
    /// New forum posts one link may bring: per second, and at once (a first
    /// reconciliation brings a topic's history). Over it, posts from that
    /// link wait for a later reconciliation.
    pub forum_link_rate: (f64, f64),
    /// Added to the wall clock wherever the node reads it (post times, clock
    /// probes). Zero except in tests that give nodes disagreeing clocks.
    pub clock_skew_ms: i64,
    /// The name to register.
    pub name: Name,
    /// Password or invite for a server that keeps accounts. Default: none (a
    /// key that holds its name needs neither).
    pub credentials: burrow_proto::rendezvous::Credentials,
    /// UDP address to bind. Default `[::]:0`: every interface of both families
    /// on one socket (IPv4 alone where the machine has no IPv6), any port.
    pub bind: SocketAddr,
    /// QUIC keepalive. Default 10 s: under the 30 s UDP mapping timeout common on
    /// home routers, with room for one lost keepalive.
    pub keepalive: Duration,
    /// A connection silent this long is dead. Default 30 s.
    pub idle_timeout: Duration,
    /// Longest wait between attempts to reach the server again. Default 30 s.
    pub max_backoff: Duration,
    /// Offer what we downloaded, as a provider, once it is complete. Default on:
    /// every finished download adds a source.
    pub reshare: bool,
    /// Ask the router for a public port (PCP, NAT-PMP, UPnP) and offer it to
    /// peers as a candidate. Default on: where a router grants one, peers
    /// reach us directly even through a symmetric NAT; where none does, it
    /// costs a few seconds of quiet asking once. Never with a server on
    /// loopback (the peers are on this machine) or without a server.
    pub port_mapping: bool,
    /// Which paths links may take. Default [`PathPolicy::Any`].
    pub path: PathPolicy,
    /// An HTTP proxy (`host:port`) to reach the server's HTTPS port through,
    /// when UDP and TCP get nowhere. Default none.
    pub proxy: Option<String>,
}

pub use burrow_proto::punch::policy::PathPolicy;

impl NodeConfig {
    /// Defaults for the rest.
    pub fn new(home: PathBuf, secret: SecretKey, server: Option<ServerAddr>, name: Name) -> Self {
        NodeConfig {
            home,
            secret,
            server,
            join: Vec::new(),
            mesh_links: 4,
            resync_every: Duration::from_secs(60),
            forum_quota: burrow_store::PostQuota::default(),
            forum_link_rate: (100.0, 10_000.0),
            clock_skew_ms: 0,
            name,
            credentials: Default::default(),
            bind: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            reshare: true,
            port_mapping: true,
            path: PathPolicy::Any,
            proxy: None,
        }
    }
}
