//! burrow's networking: one UDP socket per node, carrying QUIC and STUN.
//!
//! - [`socket`]: a quinn [`AsyncUdpSocket`](quinn::AsyncUdpSocket) wrapper that hands
//!   every datagram that isn't QUIC (STUN now, punch probes later) to burrow instead
//!   of quinn, and lets burrow send raw datagrams from the same port. Because the
//!   port is shared, the address a STUN server observes is the one peers reach.
//! - [`tls`]: QUIC's TLS 1.3 with raw Ed25519 public keys (RFC 7250) on both sides:
//!   every handshake proves both ends' [`NodeId`](burrow_proto::NodeId)s.
//! - [`endpoint`]: binds the socket, the QUIC endpoint and the STUN client/responder
//!   together ([`Endpoint`]).
//! - [`framed`]: length-prefixed, versioned frames on QUIC streams.
//! - [`https`]: the same links as TCP's, as WebSockets over TLS, for networks
//!   that pass only HTTPS (and HTTP proxies).
//! - [`iface`]: the machine's own addresses, offered to peers as LAN candidates.
//! - [`ttl`]: datagrams with a chosen TTL (opening probes), and how many hops
//!   our NATs are deep.

pub mod close;
pub mod endpoint;
pub mod framed;
pub mod https;
pub mod iface;
pub mod paths;
mod plain;
pub mod portmap;
pub mod punch;
pub mod side;
pub mod socket;
pub mod tcp;
pub mod tls;
pub mod ttl;
pub mod virt;

pub use close::Close;
pub use endpoint::{
    ConnectError, Endpoint, EndpointConfig, EndpointError, RelayHandler, StunHook, StunQueryError,
};
pub use framed::{FrameReader, FrameWriter, FramedError};
pub use paths::{Health, PathStatus, PathTable, Route};
pub use tls::{alpn, peer_id};
