//! Node ↔ server messages: registration, presence and the connect broker.
//!
//! One QUIC connection per node (ALPN [`ALPN`]); the node opens one bidirectional
//! control stream and both sides send [`frame`](crate::frame)s on it.
//!
//! ```text
//! node                                   server
//!  |-- Hello{name, lan_addrs, -------------->|  admits the key (policy, bans),
//!  |         credentials}                    |  binds name to key (or Refused)
//!  |<----------- Welcome{observed, peers} ---|
//!  |<---------- PeerJoined / PeerLeft -------|  live presence, no polling
//!  |-- Watch{ids} / Lookup{name} ----------->|  (presence `Watched`: only
//!  |<---------- Peers / Found ---------------|   watched nodes are announced)
//!  |<---------- Notice{text, everyone} ------|  the operator's `say` / `tell`
//!  |<---------- Refused{None, Banned|Kicked}-|  then the server closes the session
//!
//! bob                       server                      alice
//!  |-- Connect{alice} ------->|                            |
//!  |<-- Pending{alice} -------|-- Incoming{bob} ---------->|
//!  |                          |<------- Accept{bob} -------|   (or Reject / expiry)
//!  |<-- Accepted{alice, cands,|-- Accepted{bob, cands, --->|
//!  |            ticket}       |            ticket}         |
//!  |<======= punch probes both ways, to every candidate ==>|
//!  |== QUIC (burrow/link/1): through the relay channel at once,
//!  |   moved to the punched path as soon as it works =====>|
//!  |                          |                            |
//!  |-- Repunch{alice} ------->|  (direct path lost, or on a schedule)
//!  |<-- Punch{alice, cands, --|-- Punch{bob, cands, ticket}>|
//!  |           ticket}        |                            |
//!  |-- Release{alice} ------->|  link closed: stop relaying
//! ```
//!
//! The requester may `Cancel` while the request is pending; the server expires
//! requests nobody answered and tells both sides. A request is named by its two
//! ends: there is at most one pending request from one node to another.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::files::{BlobHash, FileEntry, ShareName};
use crate::id::NodeId;
use crate::name::Name;
use crate::punch::{NatInfo, PunchTicket};
use crate::relay::Channel;

/// ALPN of the node ↔ server connection.
pub const ALPN: &[u8] = b"burrow/rendezvous/1";
/// Version byte of every control-stream frame. 2: relay channels and re-punching;
/// 3: the file tracker; 4: credentials in Hello, bans and operator notices;
/// 5: NAT mappings for hard-NAT punching; 6: `NatInfo::no_udp`, a punch that goes
/// straight to TCP.
pub const VERSION: u8 = 7;
/// Most addresses in [`ServerMsg::Welcome`]'s `also`.
pub const MAX_ALSO: usize = 2;
/// Largest frame the server sends. Presence snapshots are split
/// ([`PEERS_PER_FRAME`]) to stay well under it.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest frame a node may send the server. A Hello with every candidate is under
/// 700 bytes, an [`ClientMsg::Offer`] of [`OFFERS_PER_FRAME`] files under 12 KiB;
/// the server reads no more than this from anyone.
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;
/// Most files in one [`ClientMsg::Offer`].
pub const OFFERS_PER_FRAME: usize = 40;
/// Most files one node may have in the tracker.
pub const MAX_OFFERS: usize = 10_000;
/// Most entries in one [`ServerMsg::SearchResults`].
pub const MAX_RESULTS: usize = 100;
/// Most online providers listed per search result.
pub const MAX_PROVIDERS: usize = 32;
/// Most peers listed in one [`ServerMsg::Welcome`] or [`ServerMsg::Peers`] frame
/// (about 80 KiB), so a snapshot of any size travels in frames under [`MAX_FRAME`].
pub const PEERS_PER_FRAME: usize = 1000;
/// Most addresses a node may offer as its own candidates.
pub const MAX_CANDIDATES: usize = 16;
/// Longest password a node may send, in bytes (argon2 takes any length; this
/// bounds what a stranger makes the server hash).
pub const MAX_PASSWORD: usize = 256;
/// Most ids in one [`ClientMsg::Watch`] or [`ClientMsg::Unwatch`] (8 KiB).
pub const WATCH_PER_FRAME: usize = 256;
/// Most nodes one node may watch (contacts and links; more are ignored).
pub const MAX_WATCHES: usize = 1024;
/// Longest operator notice, in bytes.
pub const MAX_NOTICE: usize = 4096;

/// A secret a node sends once, in Hello: its `Debug` never shows the text, so a
/// logged message can't leak it. Longer than [`MAX_PASSWORD`] bytes does not decode.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`, if it is within [`MAX_PASSWORD`] bytes.
    pub fn new(text: String) -> Result<Self, SecretTooLong> {
        if text.len() > MAX_PASSWORD {
            return Err(SecretTooLong);
        }
        Ok(Secret(text))
    }

    /// The text, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A password or invite code longer than [`MAX_PASSWORD`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("longer than {MAX_PASSWORD} bytes")]
pub struct SecretTooLong;

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Secret::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// What a node offers to prove it may register its name, on a server whose
/// policy asks for more than a key (`burrow server --policy accounts`). A key
/// that already holds the name needs neither.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The account's password (or, with `invite`, the password to set).
    pub password: Option<Secret>,
    /// An invite code from the operator: creates the account.
    pub invite: Option<Secret>,
}

/// Whom a node hears come and go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceScope {
    /// Every node online (a community server: `burrow peers` lists everyone).
    #[default]
    Everyone,
    /// Only the nodes it watches ([`ClientMsg::Watch`]: its contacts; its links
    /// are watched for it) and those it looked up by name ([`ClientMsg::Lookup`]).
    /// What a server of many thousands runs: presence then costs each node what
    /// it watches, not the square of the nodes online.
    Watched,
}

/// A node as everyone else sees it in the presence list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node's key.
    pub id: NodeId,
    /// The name bound to that key.
    pub name: Name,
}

/// What a node sends the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message: register under `name`, offering `lan_addrs` as candidates.
    Hello {
        /// The name to register (bound to the connection's key on first use).
        name: Name,
        /// The node's own interface addresses with its UDP port.
        lan_addrs: Vec<SocketAddr>,
        /// Password or invite, where the server keeps accounts.
        credentials: Credentials,
    },
    /// Ask `peer` for a connection.
    Connect {
        /// Who to connect to.
        peer: NodeId,
    },
    /// Accept the pending request from `peer`.
    Accept {
        /// The requester.
        peer: NodeId,
    },
    /// Refuse the pending request from `peer`.
    Reject {
        /// The requester.
        peer: NodeId,
    },
    /// Withdraw our pending request to `peer`.
    Cancel {
        /// The node we asked.
        peer: NodeId,
    },
    /// Look for a direct path to `peer` again (ours was lost, or we are relayed
    /// and our candidates may have changed). Both sides get a fresh [`ServerMsg::Punch`].
    Repunch {
        /// The linked peer.
        peer: NodeId,
    },
    /// How our NAT maps ports, as we measured it, and the port our router
    /// maps to us, if any (after each Welcome, and when either changes). The
    /// server hands it to the peers we punch with, so that each side knows
    /// which hard-NAT technique is its part ([`crate::punch::Strategy`]).
    Nat {
        /// What we know of our NAT.
        nat: NatInfo,
    },
    /// Our link with `peer` is closed: the server stops relaying for it.
    Release {
        /// The linked peer.
        peer: NodeId,
    },
    /// Leaving now (the server says so to the others at once).
    Bye,
    /// Tell us when these nodes come and go (presence [`PresenceScope::Watched`];
    /// at most [`WATCH_PER_FRAME`]). Answered with [`ServerMsg::Peers`] listing
    /// those online now.
    Watch {
        /// The nodes.
        ids: Vec<NodeId>,
    },
    /// Stop telling us about these nodes.
    Unwatch {
        /// The nodes.
        ids: Vec<NodeId>,
    },
    /// Who is online under `name`? Answered by [`ServerMsg::Found`] with the same
    /// `query_id`; a node found is watched from then on.
    Lookup {
        /// Chosen by the node to match the answer.
        query_id: u32,
        /// The name.
        name: Name,
    },
    /// Put these files in the tracker as offered by us (at most
    /// [`OFFERS_PER_FRAME`]). With `replace`, first forget everything we offered
    /// before: a node sends its whole list this way after registering.
    Offer {
        /// Forget our earlier offers first.
        replace: bool,
        /// What we offer.
        files: Vec<FileEntry>,
    },
    /// We no longer offer `hash`.
    Unoffer {
        /// The file.
        hash: BlobHash,
    },
    /// Look files up in the tracker; answered by [`ServerMsg::SearchResults`]
    /// with the same `query_id`.
    Search {
        /// Chosen by the node to match the answer.
        query_id: u32,
        /// What to look for.
        query: Query,
    },
}

/// A tracker search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Files whose name contains this text (case-insensitive; at most
    /// [`crate::files::MAX_NAME`] bytes).
    Name(String),
    /// The file with this hash.
    Hash(BlobHash),
}

/// A file the tracker knows, and who offers it. One entry per hash *and*
/// size: offers are only claims until the data proves them, so a node that
/// claims another size for a hash gets an entry of its own instead of
/// overruling the honest providers' one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerEntry {
    /// Hash, size, and the name most of its providers give it (the earliest
    /// of those on a tie).
    pub file: FileEntry,
    /// Online nodes offering it (at most [`MAX_PROVIDERS`]), each with the
    /// name it gave the file.
    pub providers: Vec<Provider>,
    /// How many offline nodes offered it when last online.
    pub offline: u32,
}

/// One online node offering a tracker entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Who.
    pub peer: PeerInfo,
    /// The name it offers the file under.
    pub name: ShareName,
}

/// Why the server refused something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The name is bound to another key.
    NameTaken,
    /// The first message was not `Hello`.
    HelloExpected,
    /// The target is not online.
    PeerOffline,
    /// There is no pending request to answer or cancel.
    NoSuchRequest,
    /// A node can't connect to itself.
    SelfConnect,
    /// The same request is already pending.
    AlreadyPending,
    /// The node has too many requests pending.
    TooManyRequests,
    /// The node offers too many files ([`MAX_OFFERS`]).
    TooManyOffers,
    /// The server keeps accounts and the name has none of ours: a password or an
    /// invite is needed.
    CredentialsRequired,
    /// The password does not match the account's.
    WrongPassword,
    /// The invite code is unknown, used up or expired, or the name already has
    /// an account.
    InviteInvalid,
    /// The server admits only nodes its operator allowed.
    NotAllowed,
    /// The operator banned this node, its name or its address.
    Banned {
        /// Until when, Unix ms; `None` for good.
        until_ms: Option<u64>,
    },
    /// Password logins from this address are paused: too many failed there,
    /// or the server is busy checking passwords. Wait.
    Blocked {
        /// How long until the block ends, ms.
        retry_in_ms: u64,
    },
    /// The operator disconnected this node.
    Kicked,
}

impl Refusal {
    /// Whether a node should stop trying to register after this: trying again
    /// as it is can only be refused again (until someone changes something).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Refusal::NameTaken
                | Refusal::CredentialsRequired
                | Refusal::WrongPassword
                | Refusal::InviteInvalid
                | Refusal::NotAllowed
                | Refusal::Banned { .. }
                | Refusal::Kicked
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NameTaken => "that name is registered to another key",
            Refusal::HelloExpected => "the first message must be Hello",
            Refusal::PeerOffline => "that peer is not online",
            Refusal::NoSuchRequest => "there is no such pending request",
            Refusal::SelfConnect => "a node cannot connect to itself",
            Refusal::AlreadyPending => "a request to that peer is already pending",
            Refusal::TooManyRequests => "too many requests pending",
            Refusal::TooManyOffers => "too many files offered to the tracker",
            Refusal::CredentialsRequired => {
                "this server keeps accounts: that name needs its password or an invite"
            }
            Refusal::WrongPassword => "wrong password for that name",
            Refusal::InviteInvalid => {
                "the invite is unknown, used up or expired (or the name already has an account)"
            }
            Refusal::NotAllowed => "this server admits only nodes its operator allowed",
            Refusal::Banned { until_ms: None } => "banned from this server",
            Refusal::Banned { until_ms: Some(_) } => "banned from this server for a while",
            Refusal::Blocked { .. } => {
                "password logins from this address are paused (too many failed logins, or the server is busy checking passwords); try again later"
            }
            Refusal::Kicked => "disconnected by the server's operator",
        })
    }
}

/// Which side of a request a message concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// We asked the peer.
    Outgoing,
    /// The peer asked us.
    Incoming,
}

/// Everything a node needs to make or remake a link with a peer: who it
/// is, how to reach it, and how to punch toward it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOffer {
    /// The other side.
    pub peer: NodeId,
    /// Which side we are: `Outgoing` for the one that asked (it dials, and
    /// probes as the requester).
    pub direction: Direction,
    /// The other side's addresses: server-observed first, then LAN.
    pub candidates: Vec<SocketAddr>,
    /// What the other side said of its NAT.
    pub peer_nat: NatInfo,
    /// Both sides punch with this ticket, at once (see [`crate::punch`]).
    pub punch: PunchTicket,
    /// The link's relay channel (see [`crate::relay`]), unless the server
    /// doesn't relay.
    pub relay: Option<Channel>,
}

/// What the server sends a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Registration succeeded.
    Welcome {
        /// The node's address as the server saw it (its public address).
        observed: SocketAddr,
        /// The server's addresses of the other family (IPv6 for a session
        /// over IPv4, and the other way round), at most [`MAX_ALSO`]: a
        /// dual-stack node sends a STUN Binding request to one with
        /// transaction id `proof`, which shows the server its address in that
        /// family (offered to peers beside `observed`) and tells the node.
        also: Vec<SocketAddr>,
        /// The transaction id that proves, in a STUN request to an `also`
        /// address, that the request is this session's node.
        proof: [u8; 12],
        /// Everyone else online now.
        peers: Vec<PeerInfo>,
        /// How long a connect request waits for an answer, in milliseconds.
        request_ttl_ms: u64,
        /// Whom we will hear about: everyone, or only whom we watch.
        presence: PresenceScope,
    },
    /// Something the node asked for was refused. Refusing `Hello` ends the session.
    Refused {
        /// The peer a request concerned, if any.
        peer: Option<NodeId>,
        /// Why.
        reason: Refusal,
    },
    /// More of the snapshot that began with `Welcome` (sent when more than
    /// [`PEERS_PER_FRAME`] nodes are online).
    Peers(Vec<PeerInfo>),
    /// A node came online.
    PeerJoined(PeerInfo),
    /// A node went offline (said goodbye, or stopped answering keepalives).
    PeerLeft {
        /// Who left.
        id: NodeId,
    },
    /// Our request to `peer` is pending: they have been asked.
    Pending {
        /// The node asked.
        peer: NodeId,
    },
    /// `peer` asks to connect to us.
    Incoming {
        /// The requester.
        peer: PeerInfo,
    },
    /// A request was accepted: the link is made. The requester receives this
    /// and dials; the acceptor receives it too (for punching toward the
    /// requester). `direction` is which side of the request we are.
    Accepted(LinkOffer),
    /// Punch toward the peer again, with fresh candidates and a fresh ticket
    /// (both sides get this at once, after one of them sent
    /// [`ClientMsg::Repunch`]). `direction` is `Outgoing` for the side that
    /// asked (it probes as the requester); the relay channel is new if the
    /// link was made again.
    Punch(LinkOffer),
    /// A notice from the server's operator (`admin say` / `admin tell`), at
    /// most [`MAX_NOTICE`] bytes.
    Notice {
        /// The text.
        text: String,
        /// Sent to every online node (`say`), not only to us (`tell`).
        everyone: bool,
    },
    /// The answer to [`ClientMsg::Lookup`].
    Found {
        /// The lookup's id.
        query_id: u32,
        /// The node online under that name, if any.
        peer: Option<PeerInfo>,
    },
    /// The answer to [`ClientMsg::Search`].
    SearchResults {
        /// The search's id.
        query_id: u32,
        /// At most [`MAX_RESULTS`] files, most providers first.
        results: Vec<TrackerEntry>,
    },
    /// The request between us and `peer` is over without a connection.
    Closed {
        /// The other side.
        peer: NodeId,
        /// Which side of the request we are.
        direction: Direction,
        /// What ended it.
        reason: CloseReason,
    },
}

/// Why a pending request ended without a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The asked node refused.
    Rejected,
    /// The requester withdrew it.
    Cancelled,
    /// Nobody answered in time.
    Expired,
    /// The other side went offline.
    PeerLeft,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Rejected => "rejected",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Expired => "expired",
            CloseReason::PeerLeft => "peer went offline",
        })
    }
}

/// Encodes a node → server message as a frame.
pub fn encode_client(msg: &ClientMsg) -> Result<Vec<u8>, crate::frame::EncodeError> {
    crate::frame::encode(VERSION, msg, MAX_FRAME)
}

/// Encodes a server → node message as a frame.
pub fn encode_server(msg: &ServerMsg) -> Result<Vec<u8>, crate::frame::EncodeError> {
    crate::frame::encode(VERSION, msg, MAX_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, DecodeError};
    use crate::id::SecretKey;
    use crate::punch::Mapping;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn arb_id() -> impl Strategy<Value = NodeId> {
        any::<u64>()
            .prop_map(|s| SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(s)).public())
    }
    fn arb_name() -> impl Strategy<Value = Name> {
        "[a-z][a-z0-9_-]{0,31}".prop_map(|s| s.parse().expect("regex yields valid names"))
    }
    /// Addresses as they exist on the wire: no IPv6 scope id or flow label, which
    /// mean nothing on another machine.
    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        any::<SocketAddr>().prop_map(|a| SocketAddr::new(a.ip(), a.port()))
    }
    fn arb_addrs() -> impl Strategy<Value = Vec<SocketAddr>> {
        proptest::collection::vec(arb_addr(), 0..MAX_CANDIDATES)
    }
    fn arb_file() -> impl Strategy<Value = FileEntry> {
        (any::<[u8; 32]>(), "[a-z][a-z0-9 ._-]{0,30}", any::<u64>()).prop_map(|(h, n, size)| {
            FileEntry {
                hash: BlobHash(h),
                name: n.parse().expect("regex yields valid share names"),
                size,
            }
        })
    }
    fn arb_client() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (
                arb_name(),
                arb_addrs(),
                proptest::option::of("[ -~]{0,64}"),
                proptest::option::of("[a-z0-9]{0,26}")
            )
                .prop_map(|(name, lan_addrs, password, invite)| ClientMsg::Hello {
                    name,
                    lan_addrs,
                    credentials: Credentials {
                        password: password.map(|p| Secret::new(p).unwrap()),
                        invite: invite.map(|i| Secret::new(i).unwrap()),
                    }
                }),
            arb_id().prop_map(|peer| ClientMsg::Connect { peer }),
            arb_id().prop_map(|peer| ClientMsg::Accept { peer }),
            arb_id().prop_map(|peer| ClientMsg::Reject { peer }),
            arb_id().prop_map(|peer| ClientMsg::Cancel { peer }),
            arb_id().prop_map(|peer| ClientMsg::Repunch { peer }),
            arb_id().prop_map(|peer| ClientMsg::Release { peer }),
            prop_oneof![
                Just(Mapping::Unknown),
                Just(Mapping::Independent),
                Just(Mapping::Random),
                (any::<u16>(), any::<i16>())
                    .prop_map(|(last, step)| Mapping::Sequential { last, step }),
            ]
            .prop_map(|mapping| ClientMsg::Nat {
                nat: NatInfo {
                    mapping,
                    mapped: Some(SocketAddr::from(([198, 51, 100, 7], 4000))),
                    no_udp: false,
                    relay_only: false,
                }
            }),
            Just(ClientMsg::Bye),
            proptest::collection::vec(arb_id(), 0..8).prop_map(|ids| ClientMsg::Watch { ids }),
            proptest::collection::vec(arb_id(), 0..8).prop_map(|ids| ClientMsg::Unwatch { ids }),
            (any::<u32>(), arb_name())
                .prop_map(|(query_id, name)| ClientMsg::Lookup { query_id, name }),
            (any::<bool>(), proptest::collection::vec(arb_file(), 0..4))
                .prop_map(|(replace, files)| ClientMsg::Offer { replace, files }),
            any::<[u8; 32]>().prop_map(|h| ClientMsg::Unoffer { hash: BlobHash(h) }),
            (any::<u32>(), "[a-z .]{0,20}").prop_map(|(query_id, q)| ClientMsg::Search {
                query_id,
                query: Query::Name(q)
            }),
            (any::<u32>(), any::<[u8; 32]>()).prop_map(|(query_id, h)| ClientMsg::Search {
                query_id,
                query: Query::Hash(BlobHash(h))
            }),
        ]
    }
    fn arb_server() -> impl Strategy<Value = ServerMsg> {
        let info = || (arb_id(), arb_name()).prop_map(|(id, name)| PeerInfo { id, name });
        let dir = prop_oneof![Just(Direction::Outgoing), Just(Direction::Incoming)];
        prop_oneof![
            (
                arb_addr(),
                proptest::collection::vec(info(), 0..8),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(observed, peers, request_ttl_ms, watched)| {
                    ServerMsg::Welcome {
                        observed,
                        also: vec![observed],
                        proof: [7; 12],
                        peers,
                        request_ttl_ms,
                        presence: if watched {
                            PresenceScope::Watched
                        } else {
                            PresenceScope::Everyone
                        },
                    }
                }),
            (any::<u32>(), proptest::option::of(info()))
                .prop_map(|(query_id, peer)| ServerMsg::Found { query_id, peer }),
            (
                proptest::option::of(arb_id()),
                prop_oneof![
                    Just(Refusal::NameTaken),
                    Just(Refusal::PeerOffline),
                    Just(Refusal::NoSuchRequest),
                    Just(Refusal::WrongPassword),
                    proptest::option::of(any::<u64>())
                        .prop_map(|until_ms| Refusal::Banned { until_ms }),
                    any::<u64>().prop_map(|retry_in_ms| Refusal::Blocked { retry_in_ms }),
                    Just(Refusal::Kicked),
                ]
            )
                .prop_map(|(peer, reason)| ServerMsg::Refused { peer, reason }),
            info().prop_map(ServerMsg::PeerJoined),
            ("[ -~]{0,100}", any::<bool>())
                .prop_map(|(text, everyone)| ServerMsg::Notice { text, everyone }),
            proptest::collection::vec(info(), 0..4).prop_map(ServerMsg::Peers),
            arb_id().prop_map(|id| ServerMsg::PeerLeft { id }),
            arb_id().prop_map(|peer| ServerMsg::Pending { peer }),
            info().prop_map(|peer| ServerMsg::Incoming { peer }),
            (
                any::<u32>(),
                proptest::collection::vec(
                    (
                        arb_file(),
                        proptest::collection::vec(
                            (info(), arb_file())
                                .prop_map(|(peer, f)| Provider { peer, name: f.name }),
                            0..3
                        ),
                        any::<u32>()
                    ),
                    0..3
                )
            )
                .prop_map(|(query_id, r)| ServerMsg::SearchResults {
                    query_id,
                    results: r
                        .into_iter()
                        .map(|(file, providers, offline)| TrackerEntry {
                            file,
                            providers,
                            offline
                        })
                        .collect()
                }),
            (
                arb_id(),
                dir.clone(),
                arb_addrs(),
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                proptest::option::of(any::<[u8; 16]>())
            )
                .prop_map(|(peer, direction, candidates, session, secret, relay)| {
                    ServerMsg::Accepted(LinkOffer {
                        peer,
                        direction,
                        candidates,
                        peer_nat: NatInfo {
                            mapping: Mapping::Sequential {
                                last: session[0].into(),
                                step: 1,
                            },
                            mapped: None,
                            no_udp: false,
                            relay_only: false,
                        },
                        punch: PunchTicket { session, secret },
                        relay: relay.map(Channel),
                    })
                }),
            (
                arb_id(),
                dir.clone(),
                arb_addrs(),
                any::<[u8; 16]>(),
                any::<[u8; 32]>(),
                proptest::option::of(any::<[u8; 16]>())
            )
                .prop_map(|(peer, direction, candidates, session, secret, relay)| {
                    ServerMsg::Punch(LinkOffer {
                        peer,
                        direction,
                        candidates,
                        peer_nat: NatInfo {
                            mapping: Mapping::Sequential {
                                last: session[0].into(),
                                step: 1,
                            },
                            mapped: None,
                            no_udp: false,
                            relay_only: false,
                        },
                        punch: PunchTicket { session, secret },
                        relay: relay.map(Channel),
                    })
                }),
            (
                arb_id(),
                dir,
                prop_oneof![Just(CloseReason::Rejected), Just(CloseReason::Expired)]
            )
                .prop_map(|(peer, direction, reason)| ServerMsg::Closed {
                    peer,
                    direction,
                    reason
                }),
        ]
    }

    proptest! {
        #[test]
        fn client_messages_round_trip(msg in arb_client()) {
            let frame = encode_client(&msg).unwrap();
            prop_assert_eq!(decode::<ClientMsg>(VERSION, &frame, MAX_FRAME), Ok(msg));
        }

        #[test]
        fn server_messages_round_trip(msg in arb_server()) {
            let frame = encode_server(&msg).unwrap();
            prop_assert_eq!(decode::<ServerMsg>(VERSION, &frame, MAX_FRAME), Ok(msg));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ClientMsg>(VERSION, &bytes, MAX_FRAME);
            let _ = decode::<ServerMsg>(VERSION, &bytes, MAX_FRAME);
            if bytes.len() > 1 {
                let _ = crate::frame::decode_body::<ClientMsg>(VERSION, &bytes);
                let _ = crate::frame::decode_body::<ServerMsg>(VERSION, &bytes);
            }
        }

        #[test]
        fn truncated_frames_are_errors(msg in arb_client(), cut in 1usize..64) {
            let frame = encode_client(&msg).unwrap();
            let cut = cut.min(frame.len() - 1);
            prop_assert!(decode::<ClientMsg>(VERSION, &frame[..frame.len() - cut], MAX_FRAME).is_err());
        }
    }

    #[test]
    fn unknown_version_and_oversize_are_named() {
        let mut frame = encode_client(&ClientMsg::Bye).unwrap();
        frame[4] = 9;
        assert_eq!(
            decode::<ClientMsg>(VERSION, &frame, MAX_FRAME),
            Err(DecodeError::UnknownVersion {
                got: 9,
                expected: VERSION
            })
        );
        let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            crate::frame::decode_len(big, MAX_FRAME),
            Err(DecodeError::TooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
    }

    #[test]
    fn secrets_are_bounded_and_never_shown() {
        let s = Secret::new("hunter2".into()).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(…)");
        let hello = ClientMsg::Hello {
            name: "alice".parse().unwrap(),
            lan_addrs: vec![],
            credentials: Credentials {
                password: Some(s),
                invite: None,
            },
        };
        assert!(!format!("{hello:?}").contains("hunter2"));
        assert_eq!(
            Secret::new("x".repeat(MAX_PASSWORD + 1)),
            Err(SecretTooLong)
        );
        // A too-long password on the wire is malformed, not allocated and hashed.
        let long = postcard::to_stdvec(&"x".repeat(MAX_PASSWORD + 1)).unwrap();
        assert!(postcard::from_bytes::<Secret>(&long).is_err());
    }

    #[test]
    fn invalid_name_in_hello_is_malformed() {
        // A hand-built Hello whose name breaks the rules must not decode into a Name.
        let mut body = vec![VERSION, 0]; // variant 0 = Hello
        body.push(3);
        body.extend_from_slice(b"../");
        body.push(0); // no lan addrs
        assert!(matches!(
            crate::frame::decode_body::<ClientMsg>(VERSION, &body),
            Err(DecodeError::Malformed(_))
        ));
    }
}
