//! The local control API: requests, replies and the views they carry.
//!
//! One JSON object per line on the Unix socket `home/control.sock`. A request is
//! `{"cmd": "...", ...}`; every reply is `{"ok": true, "data": ...}` or
//! `{"ok": false, "error": "...", "hint": "..."}`. `messages` with `follow` keeps
//! the connection open and sends one more `ok` line per new message. The CLI's
//! `--json` prints `data` exactly as received.

use serde::{Deserialize, Serialize};

/// A request to a running node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Own id, name, server, public address, connections.
    Status,
    /// Everyone known: online peers and connected ones.
    Peers,
    /// Ask a peer for a connection.
    Connect {
        /// Name or id (prefix).
        peer: String,
    },
    /// Accept a peer's request.
    Accept {
        /// Name or id (prefix).
        peer: String,
    },
    /// Refuse a peer's request.
    Reject {
        /// Name or id (prefix).
        peer: String,
    },
    /// Withdraw our request to a peer.
    Cancel {
        /// Name or id (prefix).
        peer: String,
    },
    /// Send a chat message over the connection to a peer.
    Send {
        /// Name or id (prefix).
        peer: String,
        /// The text.
        text: String,
    },
    /// Diagnose the NAT in front of this node (RFC 5780 tests against the server).
    Nat,
    /// Chat history (and, with `follow`, new messages as they come).
    Messages {
        /// How many of the newest to return. Default 100.
        #[serde(default)]
        limit: Option<usize>,
        /// Keep streaming new messages.
        #[serde(default)]
        follow: bool,
    },
}

/// A reply line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the user can do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The state of our link with a peer, as `peers --json` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// No connection and no request.
    None,
    /// We asked; waiting for their answer.
    PendingOut,
    /// They asked; waiting for ours.
    PendingIn,
    /// A direct QUIC connection.
    Direct,
    /// A QUIC connection through the server's relay.
    Relayed,
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionState::None => "-",
            ConnectionState::PendingOut => "asked, waiting",
            ConnectionState::PendingIn => "asks you",
            ConnectionState::Direct => "direct",
            ConnectionState::Relayed => "relayed",
        })
    }
}

/// One peer in `peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// Full id.
    pub id: String,
    /// Registered name, when known.
    pub name: Option<String>,
    /// Whether the server lists it as online.
    pub online: bool,
    /// Our link with it.
    pub connection: ConnectionState,
    /// Round-trip time of the connection, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id (hex).
    pub id: String,
    /// Author id.
    pub from: String,
    /// Author name.
    pub from_name: String,
    /// Recipient id.
    pub to: String,
    /// The text.
    pub text: String,
    /// When the author sent it (RFC 3339, author's clock).
    pub sent_at: String,
    /// When the recipient stored it (RFC 3339).
    pub received_at: String,
}

/// One connection in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// Peer id.
    pub peer: String,
    /// Peer name.
    pub name: Option<String>,
    /// `direct` or `relayed`.
    pub path: ConnectionState,
    /// The peer's address as our socket sees it.
    pub remote_addr: String,
    /// Round-trip time, in milliseconds.
    pub rtt_ms: f64,
}

/// The node's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// Own id.
    pub id: String,
    /// Own name.
    pub name: String,
    /// The server's address, with its key.
    pub server: String,
    /// Whether the node is registered with the server right now.
    pub server_connected: bool,
    /// Our address as the server sees it (STUN), once known.
    pub public_addr: Option<String>,
    /// Our UDP socket's local address.
    pub local_addr: String,
    /// Live peer connections.
    pub connections: Vec<ConnectionView>,
}
