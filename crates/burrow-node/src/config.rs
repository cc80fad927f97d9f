//! The node's configuration: plain data, parsed by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use burrow_proto::{Name, SecretKey, ServerAddr};

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's directory: store, control socket, known_servers, lock.
    pub home: PathBuf,
    /// The node's key (loaded from `home/key` by the binary).
    pub secret: SecretKey,
    /// The rendezvous server.
    pub server: ServerAddr,
    /// The name to register.
    pub name: Name,
    /// UDP address to bind. Default `0.0.0.0:0`: every interface, any port.
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
}

impl NodeConfig {
    /// Defaults for the rest.
    pub fn new(home: PathBuf, secret: SecretKey, server: ServerAddr, name: Name) -> Self {
        NodeConfig {
            home,
            secret,
            server,
            name,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            reshare: true,
        }
    }
}
