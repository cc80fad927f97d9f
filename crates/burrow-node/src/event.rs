//! What a node tells whoever watches it (`burrow up` prints these in plain words).

use std::net::SocketAddr;

use burrow_proto::rendezvous::{CloseReason, Direction};

use crate::api::{ConnectionState, MessageView};

/// Something that happened on the node.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// Registered with the server.
    ServerConnected {
        /// The server's address.
        server: String,
        /// Our address as the server sees it.
        public_addr: SocketAddr,
        /// The session runs over TCP (nothing came back over UDP).
        over_tcp: bool,
    },
    /// Lost the server; retrying in the background.
    ServerLost {
        /// Why.
        error: String,
        /// When the next attempt is, in milliseconds.
        retry_in_ms: u64,
    },
    /// A peer came online.
    PeerOnline {
        /// Its name.
        name: String,
    },
    /// A peer went offline.
    PeerOffline {
        /// Its name.
        name: String,
    },
    /// A peer asks to connect.
    IncomingRequest {
        /// Its name.
        name: String,
    },
    /// A peer's request was answered for the user, by the incoming setting.
    RequestAnswered {
        /// Its name.
        name: String,
        /// Accepted (else rejected).
        accepted: bool,
        /// Why, in words ("a contact", "not a contact", "anyone may connect").
        why: &'static str,
    },
    /// The server refused us for good (banned, kicked, not allowed, wrong
    /// password...): the node no longer tries to register.
    Expelled {
        /// What the server said.
        error: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// A request ended without a connection.
    RequestClosed {
        /// The other side's name.
        name: String,
        /// Our side of it.
        direction: Direction,
        /// Why.
        reason: CloseReason,
    },
    /// A connection came up.
    Connected {
        /// Peer name.
        name: String,
        /// How.
        path: ConnectionState,
        /// Where packets go: the peer's address, or the relay's.
        remote: String,
        /// Round-trip time, ms.
        rtt_ms: f64,
    },
    /// A connection moved: to a direct path, or back to the relay.
    PathChanged {
        /// Peer name.
        name: String,
        /// The path now.
        path: ConnectionState,
        /// Where packets go now.
        remote: String,
        /// What found the direct path (none when it fell back to the relay).
        method: Option<burrow_proto::punch::Method>,
    },
    /// A connection could not be made.
    ConnectFailed {
        /// Peer name.
        name: String,
        /// Why.
        error: String,
    },
    /// A connection went away.
    Disconnected {
        /// Peer name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A chat message arrived or was delivered.
    Message(MessageView),
    /// A forum post arrived, or we wrote one.
    Post(crate::api::PostView),
    /// A forward listens (made now, or again as the node started).
    ForwardStarted {
        /// Its local address.
        listen: String,
        /// `peer/service`.
        target: String,
        /// `tcp` or `udp`.
        transport: String,
    },
    /// A forward's first connection over its peer's tunnel connection (and
    /// again after the link was made anew): how it is carried.
    ForwardCarried {
        /// Its local address.
        listen: String,
        /// `peer/service`.
        target: String,
        /// Direct or relayed.
        path: ConnectionState,
        /// Where packets go.
        remote: String,
    },
    /// Something in a tunnel went wrong, in words (told at most once a
    /// minute per peer or forward).
    TunnelTrouble {
        /// What.
        text: String,
    },
    /// A shared file is no longer offered.
    ShareWithdrawn {
        /// Its share name.
        name: String,
        /// Where it was.
        path: String,
        /// Why.
        reason: String,
    },
}
