//! The local control API: requests, replies and the views they carry.
//!
//! One JSON object per line on the Unix socket `home/control.sock`. A request is
//! `{"cmd": "...", ...}`; every reply is `{"ok": true, "data": ...}` or
//! `{"ok": false, "error": "...", "hint": "..."}`. `messages` with `follow` keeps
//! the connection open and sends one more `ok` line per new message; `get` sends
//! `{"progress": ...}` and `{"notice": "..."}` lines ([`GetUpdate`]) before its
//! result ([`GetView`]). The CLI's `--json` prints `data` exactly as received.

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
    /// List, add or remove contacts (peers that connect without asking).
    Contacts {
        /// Add this peer (name or id prefix).
        #[serde(default)]
        add: Option<String>,
        /// Remove this contact (name or id prefix).
        #[serde(default)]
        remove: Option<String>,
    },
    /// Show settings, or change what happens to incoming requests.
    Settings {
        /// `ask`, `contacts-only` or `anyone`.
        #[serde(default)]
        incoming: Option<String>,
    },
    /// Offer a file: hash it (once) and tell the tracker.
    Share {
        /// Absolute path of the file.
        path: String,
        /// The name to offer it under (default: its file name).
        #[serde(default)]
        name: Option<String>,
    },
    /// Stop offering a file.
    Unshare {
        /// Its hash, or its share name.
        file: String,
    },
    /// What this node offers.
    Shares,
    /// Search the server's tracker by name.
    Search {
        /// Text the name contains.
        query: String,
    },
    /// Ask a connected peer what it offers.
    Files {
        /// Name or id (prefix).
        peer: String,
    },
    /// Download a file from every online provider (streams [`GetUpdate`]s).
    Get {
        /// The hash, or a name the tracker knows (unique).
        file: String,
        /// Absolute directory to save it in.
        dir: String,
        /// Replace a file of the same name there.
        #[serde(default)]
        force: bool,
    },
    /// Write a forum post.
    Post {
        /// The text.
        text: String,
        /// The post it answers (id prefix).
        #[serde(default)]
        reply_to: Option<String>,
        /// Its topic (default `forum`; a reply goes in its parent's).
        #[serde(default)]
        topic: Option<String>,
    },
    /// The posts of a topic, or of one thread.
    Forum {
        /// The topic (default `forum`).
        #[serde(default)]
        topic: Option<String>,
        /// Only this post (id prefix) and the replies under it.
        #[serde(default)]
        thread: Option<String>,
    },
    /// This node's ticket (serverless).
    Ticket,
    /// Chat history (and, with `follow`, new messages as they come).
    Messages {
        /// How many of the newest to return. Default 100.
        #[serde(default)]
        limit: Option<usize>,
        /// Keep streaming new messages.
        #[serde(default)]
        follow: bool,
    },
    /// Expose a local service to peers (again: change it).
    Expose {
        /// Its name.
        name: String,
        /// The local address its connections go to.
        addr: String,
        /// UDP (else TCP).
        #[serde(default)]
        udp: bool,
        /// Who may reach it: peer names or ids, or `contacts`.
        allow: Vec<String>,
    },
    /// Stop exposing a service.
    Unexpose {
        /// Its name.
        name: String,
    },
    /// What this node exposes.
    Exposed,
    /// What a peer exposes to us.
    Services {
        /// Name or id (prefix).
        peer: String,
    },
    /// Forward a local address to a peer's service.
    Forward {
        /// `peer/service`.
        target: String,
        /// The local address (or a bare port, on loopback).
        listen: String,
    },
    /// End a forward.
    Unforward {
        /// Its local address.
        listen: String,
    },
    /// Our forwards.
    Forwards,
    /// One stream to a peer's TCP service: after the `ok` reply, the
    /// connection carries its bytes both ways.
    Pipe {
        /// `peer/service`.
        target: String,
    },
}

/// A line `get` sends while it works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GetUpdate {
    /// How far it is.
    Progress {
        /// Bytes verified and written (including those from before a resume).
        done: u64,
        /// The file's size.
        size: u64,
        /// Providers sending right now.
        providers: usize,
    },
    /// Something a person should know (a provider dropped, waiting for one to accept).
    Notice(String),
}

/// A finished download, as `get --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetView {
    /// The content hash.
    pub hash: String,
    /// The name it was offered under.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Where it is now.
    pub path: String,
    /// Names of the providers that sent verified data in this run.
    pub providers: Vec<String>,
    /// How long this run took.
    pub elapsed_ms: u64,
    /// Bytes already verified from an earlier, interrupted run.
    pub resumed_bytes: u64,
}

/// A service this node exposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposureView {
    /// Its name.
    pub name: String,
    /// Where its connections go.
    pub addr: String,
    /// `tcp` or `udp`.
    pub transport: String,
    /// Peers allowed by name.
    pub allow: Vec<String>,
    /// Contacts are allowed too.
    pub contacts: bool,
    /// Connections (or flows) in now.
    pub connections: u64,
}

/// A service a peer exposes to us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferedView {
    /// Its name.
    pub name: String,
    /// `tcp` or `udp`.
    pub transport: String,
}

/// A forward: a local address that reaches a peer's service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardView {
    /// The local address.
    pub listen: String,
    /// The peer's name.
    pub peer: String,
    /// The peer's id.
    pub peer_id: String,
    /// Its service.
    pub service: String,
    /// `tcp` or `udp`.
    pub transport: String,
    /// Why it doesn't listen (its port was taken when the node started).
    pub error: Option<String>,
    /// Connections (or flows) open now.
    pub open: u64,
    /// Connections (or flows) in all, since the node started.
    pub total: u64,
    /// Bytes sent to the peer.
    pub bytes_out: u64,
    /// Bytes that came back.
    pub bytes_back: u64,
}

/// A file this node offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareView {
    /// Content hash.
    pub hash: String,
    /// The name it is offered under.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it is served from.
    pub path: String,
    /// It came from a download.
    pub downloaded: bool,
}

/// A file another node offers (`files <peer>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileView {
    /// Content hash.
    pub hash: String,
    /// The name it is offered under.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A node offering a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The name it offers the file under (each provider names it itself).
    pub file_name: String,
}

/// A tracker search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchView {
    /// Content hash.
    pub hash: String,
    /// The name most of its providers give it.
    pub name: String,
    /// Size in bytes, as these providers claim it: another claim for the
    /// same hash is another result, and `get` downloads the one the data
    /// proves.
    pub size: u64,
    /// Online providers.
    pub providers: Vec<ProviderView>,
    /// Providers that offered it but are offline.
    pub offline_providers: u32,
}

pub use burrow_home::control::Reply;

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
    /// Registered name, when known (serverless: the name it gave itself).
    pub name: Option<String>,
    /// Whether that name is vouched for: the server binds it to the key, or a
    /// contact was saved under it. People are shown the short id beside a
    /// name that isn't.
    #[serde(default)]
    pub name_verified: bool,
    /// Whether the server lists it as online.
    pub online: bool,
    /// Our link with it.
    pub connection: ConnectionState,
    /// The address family carrying the link (`ipv4` or `ipv6`: the peer's
    /// address when direct, the server's when relayed); none unlinked.
    #[serde(default)]
    pub family: Option<String>,
    /// What found the direct path: `probe` (ordinary hole punching),
    /// `predicted` (a sequential NAT's next port) or `birthday` (side sockets
    /// and random ports); none while relayed.
    pub method: Option<burrow_proto::punch::Method>,
    /// Round-trip time of the connection, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The peer's clock minus ours, in milliseconds, from NTP-style probes on
    /// the mesh link (once one came back).
    pub clock_offset_ms: Option<f64>,
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
    /// Whether that name is the author's as far as this node knows (ours, a
    /// contact's, or the server's binding); serverless, a peer's name is only
    /// what it claims. People are shown the author's short id beside a name
    /// that isn't.
    #[serde(default)]
    pub from_verified: bool,
    /// Recipient id.
    pub to: String,
    /// The text.
    pub text: String,
    /// When the author sent it (RFC 3339, author's clock).
    pub sent_at: String,
    /// When the recipient stored it (RFC 3339).
    pub received_at: String,
    /// A notice from the server's operator (`from` is the server's key), not chat.
    #[serde(default)]
    pub from_server: bool,
    /// A notice to every node (`admin say`) rather than to this one.
    #[serde(default)]
    pub everyone: bool,
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
    /// The address family carrying it: `ipv4` or `ipv6`.
    #[serde(default)]
    pub family: Option<String>,
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
    /// How the session reaches the server: `udp`, `tcp` where nothing came
    /// back over UDP (a network that drops it; the relay carries peers then),
    /// or `https` where only that got through.
    pub server_transport: Option<String>,
    /// Our address as the server sees it (STUN), once known.
    pub public_addr: Option<String>,
    /// Our address in the other family (IPv6 beside IPv4, or the other way
    /// round), when we have one the server's STUN answered at.
    #[serde(default)]
    pub public_other: Option<String>,
    /// Our UDP socket's local address.
    pub local_addr: String,
    /// Live peer connections.
    pub connections: Vec<ConnectionView>,
    /// Whom the server announces: `everyone`, or only `watched` nodes (contacts
    /// and links; others are found by name).
    #[serde(default)]
    pub presence: String,
}

/// A contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whether it is online now.
    pub online: bool,
}

/// The node's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsView {
    /// What happens to connect requests: `ask`, `contacts-only` or `anyone`.
    pub incoming: String,
}

/// One post, as `forum --json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostView {
    /// Its id (hex).
    pub id: String,
    /// The id of the post it answers.
    pub parent: Option<String>,
    /// The author's id.
    pub author: String,
    /// The name the author gave itself in the post.
    pub author_name: String,
    /// Whether that name is the author's as far as this node knows: the name
    /// the server binds to the author's key, a contact's name, or ours. A
    /// post's name is whatever its author claims; `forum` shows the short id
    /// beside one that isn't vouched for.
    pub author_verified: bool,
    /// Its topic.
    pub topic: String,
    /// The text.
    pub text: String,
    /// When it was written (RFC 3339, the author's clock as the hybrid logical
    /// clock carried it).
    pub created_at: String,
    /// The hybrid logical clock reading posts are ordered by.
    pub hlc: u64,
}

impl PostView {
    /// A post as the API shows it (its author not yet vouched for).
    pub fn of(p: &burrow_proto::forum::Post) -> PostView {
        PostView {
            id: p.id.to_string(),
            parent: p.parent.map(|id| id.to_string()),
            author: p.author.to_string(),
            author_name: p.author_name.to_string(),
            author_verified: false,
            topic: p.topic.to_string(),
            text: p.text.clone(),
            created_at: rfc3339(p.created.ms()),
            hlc: p.created.0,
        }
    }
}

/// Unix ms as RFC 3339; times humantime can't write (past year 9999) as ms.
fn rfc3339(ms: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let t = humantime::format_rfc3339_millis(burrow_proto::time::from_unix_ms(ms));
    if write!(out, "{t}").is_err() {
        out = format!("{ms} ms after 1970");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_time_prints() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert!(rfc3339(u64::MAX >> 16).ends_with("ms after 1970"));
    }
}
