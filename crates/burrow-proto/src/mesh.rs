//! The mesh service (ALPN [`ALPN`]): forum gossip, set reconciliation, clock
//! offsets, peer exchange and introductions between linked nodes, and the tickets
//! that start a network without a server.
//!
//! Each link carries one mesh connection beside its own, opened by
//! the side that dialed the link, with one bidirectional stream. Both ends speak
//! the same [`MeshFrame`]s over it:
//!
//! ```text
//! dialer                                      acceptor
//!  |-- Hello{name, topics, addrs, proof} ----->|  (serverless: checks the proof)
//!  |<---------------------------- Hello{...} --|
//!  |-- Sync{topic, msg} ---------------------->|  negentropy, per common topic,
//!  |<----------------------- SyncReply{...} ---|  a few rounds
//!  |-- Synced(post) ... / Want{ids} ---------->|  what each side lacks
//!  |<========= Post / IHave / Graft / Prune ==>|  gossip (a broadcast tree)
//!  |<========= Ping{t1} / Pong{t1,t2,t3} =====>|  clock offset, NTP-style
//!  |<========= Peers / Introduce / Introduction|  serverless: meeting peers of peers
//! ```
//!
//! An introduction is asked for by both the nodes it links, so that no member
//! can make another punch (and dial) addresses it didn't choose to meet:
//!
//! ```text
//! A                         V (linked with both)                         C
//!  |-- Introduce{peer: C} ---->|                                          |
//!  |                           |-- IntroRequest{peer: A, name} ---------->|  C has room: it
//!  |                           |<------------------ IntroAccept{peer: A} -|  now awaits A from V
//!  |<-- Introduction{C, dial} -|-- Introduction{A, no dial} ------------->|
//!  |<======================== punch, then A dials ======================>|
//! ```
//!
//! A takes the `Introduction` only while it waits for C, C only while it
//! awaits A from V; each has a bounded number of those in flight.
//!
//! Gossip follows Plumtree (Leitão, Pereira, Rodrigues, 2007): a new post goes in
//! full to "eager" links and as an id (`IHave`) to "lazy" ones. A duplicate turns
//! the link it came on lazy (`Prune`), so the eager links settle into a spanning
//! tree and each member receives each post about once. An `IHave` for a post that
//! doesn't arrive in time is answered with `Graft`, which fetches it and makes the
//! link eager again, repairing the tree.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::forum::{Post, PostId, Topic};
use crate::name::Name;
use crate::punch::PunchTicket;
use crate::NodeId;

/// ALPN of mesh connections.
pub const ALPN: &[u8] = b"burrow/mesh/1";
/// Version byte of mesh frames.
pub const VERSION: u8 = 1;
/// Largest mesh frame: a post, or a reconciliation message, with room to spare.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most ids in one `IHave`, `Graft` or `Want`.
pub const MAX_IDS: usize = 1024;
/// Most topics a node announces.
pub const MAX_TOPICS: usize = 64;
/// Most peers in one `Peers` frame.
pub const MAX_PEER_ADS: usize = 64;
/// Most addresses a node announces (in a Hello, a ticket or an introduction).
pub const MAX_ADDRS: usize = 8;

/// A linked peer, as a node tells its other peers about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAd {
    /// Its id.
    pub id: NodeId,
    /// The name it goes by.
    pub name: Name,
}

/// A frame on a mesh stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshFrame {
    /// The first frame each way.
    Hello {
        /// The sender's name.
        name: Name,
        /// The topics it follows.
        topics: Vec<Topic>,
        /// Addresses it can be reached at (LAN, and public where known).
        addrs: Vec<SocketAddr>,
        /// The receiver's address as the sender sees it, when it is a real one.
        observed: Option<SocketAddr>,
        /// Serverless networks: [`membership_proof`] from the sender to the
        /// receiver under the network's secret.
        proof: Option<[u8; 32]>,
    },
    /// The sender follows these topics now.
    Topics(Vec<Topic>),
    /// Peers the sender is linked with.
    Peers(Vec<PeerAd>),
    /// Gossip: a post, new to the sender when it forwarded it.
    Post(Post),
    /// Gossip: the sender has these posts (a lazy link's announcement).
    IHave(Vec<PostId>),
    /// Send me these posts, and push new ones to me in full from now on.
    Graft(Vec<PostId>),
    /// Stop pushing posts to me in full; ids are enough.
    Prune,
    /// Reconciliation, initiator to responder: a negentropy message for a
    /// topic, after the first ([`MeshFrame::SyncStart`]).
    Sync {
        /// The topic being reconciled.
        topic: Topic,
        /// The negentropy message.
        msg: Vec<u8>,
    },
    /// Reconciliation, responder to initiator.
    SyncReply {
        /// The topic being reconciled.
        topic: Topic,
        /// The negentropy message.
        msg: Vec<u8>,
    },
    /// Send me these posts (found missing by reconciliation).
    Want(Vec<PostId>),
    /// A post the receiver lacked, found by reconciliation (not forwarded on).
    Synced(Post),
    /// Clock probe: the sender's clock when it sent this (Unix ms).
    Ping {
        /// Sent at (sender's clock).
        t1: u64,
    },
    /// Answer to a Ping.
    Pong {
        /// The Ping's `t1`.
        t1: u64,
        /// When the Ping arrived (answerer's clock).
        t2: u64,
        /// When this Pong left (answerer's clock).
        t3: u64,
    },
    /// Serverless: please introduce me to this peer of yours.
    Introduce {
        /// The peer.
        peer: NodeId,
    },
    /// Serverless, from a mutual peer: `peer` asked to meet you. Answer
    /// [`MeshFrame::IntroAccept`] to be introduced, or nothing.
    IntroRequest {
        /// Who asks.
        peer: NodeId,
        /// Its name.
        name: Name,
    },
    /// Serverless, to the mutual peer: yes, introduce me to `peer`.
    IntroAccept {
        /// Who asked.
        peer: NodeId,
    },
    /// Serverless: meet this peer (an introduction by a mutual peer): punch to its
    /// candidates with this ticket; the side with `dial` set dials. Taken only
    /// by a node that asked for it (`Introduce`, or `IntroAccept` to the same
    /// mutual peer).
    Introduction {
        /// The peer to meet.
        peer: NodeId,
        /// Its name.
        name: Name,
        /// Where it may be reached.
        candidates: Vec<SocketAddr>,
        /// The punch session, the same for both sides.
        punch: PunchTicket,
        /// This side dials once the punch finds a path.
        dial: bool,
    },
    /// Reconciliation, initiator to responder: the first negentropy message of
    /// a reconciliation. The responder reads its set afresh for it (and keeps
    /// that for the [`MeshFrame::Sync`] rounds that follow), so every
    /// reconciliation sees what the responder holds now.
    SyncStart {
        /// The topic being reconciled.
        topic: Topic,
        /// The negentropy message.
        msg: Vec<u8>,
    },
}

/// Why a decoded frame is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mesh frame over its limits: {0}")]
pub struct FrameLimit(&'static str);

impl MeshFrame {
    /// Checks the limits a decoder can't (list lengths within [`MAX_FRAME`]).
    pub fn check(&self) -> Result<(), FrameLimit> {
        let ok = match self {
            MeshFrame::Hello { topics, addrs, .. } => {
                topics.len() <= MAX_TOPICS && addrs.len() <= MAX_ADDRS
            }
            MeshFrame::Topics(t) => t.len() <= MAX_TOPICS,
            MeshFrame::Peers(p) => p.len() <= MAX_PEER_ADS,
            MeshFrame::IHave(ids) | MeshFrame::Graft(ids) | MeshFrame::Want(ids) => {
                ids.len() <= MAX_IDS
            }
            MeshFrame::Introduction { candidates, .. } => candidates.len() <= MAX_ADDRS,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(FrameLimit("too many entries"))
        }
    }
}

/// A serverless network's shared secret: whoever holds a ticket may join, and
/// members prove it to each other without revealing it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MeshSecret(pub [u8; 16]);

impl fmt::Debug for MeshSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshSecret(..)")
    }
}

impl MeshSecret {
    /// A fresh random secret.
    pub fn random<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        MeshSecret(b)
    }
}

/// Proves to `to` that `from` holds the network's secret; bound to both ids, so
/// it can't be replayed to anyone else or by anyone else.
pub fn membership_proof(secret: &MeshSecret, from: &NodeId, to: &NodeId) -> [u8; 32] {
    let key = blake3::derive_key("burrow mesh membership v1", &secret.0);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(from.as_bytes());
    h.update(to.as_bytes());
    *h.finalize().as_bytes()
}

/// A ticket: what one friend hands another to join a network with no server.
/// One line: `burrow1:<node id>.<secret>@<addr>,<addr>...`.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The node to meet.
    pub id: NodeId,
    /// The network's secret.
    pub secret: MeshSecret,
    /// Where the node may be reached (at most [`MAX_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({} at {:?})", self.id.short(), self.addrs)
    }
}

const TICKET_PREFIX: &str = "burrow1:";

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        write!(
            f,
            "{TICKET_PREFIX}{}.{}@{}",
            self.id,
            hex::encode(self.secret.0),
            addrs.join(",")
        )
    }
}

/// Why a ticket can't be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// Not `burrow1:<id>.<secret>@<addrs>`.
    #[error("a ticket looks like burrow1:<node id>.<secret>@<address>,...")]
    Shape,
    /// The node id is not valid.
    #[error("the ticket's node id is not valid: {0}")]
    Id(#[from] crate::NodeIdError),
    /// An address is not `ip:port`.
    #[error("the ticket's address {0:?} is not ip:port")]
    Addr(String),
    /// No address, or more than [`MAX_ADDRS`].
    #[error("a ticket has 1 to {MAX_ADDRS} addresses")]
    AddrCount,
}

impl FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, TicketError> {
        let rest = s
            .trim()
            .strip_prefix(TICKET_PREFIX)
            .ok_or(TicketError::Shape)?;
        let (keys, addrs) = rest.split_once('@').ok_or(TicketError::Shape)?;
        let (id, secret) = keys.split_once('.').ok_or(TicketError::Shape)?;
        let id: NodeId = id.parse()?;
        let mut sec = [0u8; 16];
        hex::decode_to_slice(secret, &mut sec).map_err(|_| TicketError::Shape)?;
        let addrs = addrs
            .split(',')
            .map(|a| a.parse().map_err(|_| TicketError::Addr(a.to_string())))
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        if addrs.is_empty() || addrs.len() > MAX_ADDRS {
            return Err(TicketError::AddrCount);
        }
        Ok(Ticket {
            id,
            secret: MeshSecret(sec),
            addrs,
        })
    }
}

/// Encodes a mesh frame.
pub fn encode(frame: &MeshFrame) -> Result<Vec<u8>, crate::frame::EncodeError> {
    crate::frame::encode(VERSION, frame, MAX_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forum::Hlc;
    use crate::frame::decode;
    use crate::SecretKey;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    #[test]
    fn tickets_round_trip_and_bad_ones_say_why() {
        let t = Ticket {
            id: key(1).public(),
            secret: MeshSecret([7; 16]),
            addrs: vec![
                "192.0.2.1:4000".parse().unwrap(),
                "[::1]:5".parse().unwrap(),
            ],
        };
        let text = t.to_string();
        assert!(text.starts_with("burrow1:") && !text.contains(char::is_whitespace));
        assert_eq!(text.parse::<Ticket>(), Ok(t.clone()));
        assert_eq!(format!(" {text}\n").parse::<Ticket>(), Ok(t));
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::Shape));
        let no_addr = format!("burrow1:{}.{}@", key(1).public(), "00".repeat(16));
        assert_eq!(
            no_addr.parse::<Ticket>(),
            Err(TicketError::Addr(String::new()))
        );
    }

    #[test]
    fn proofs_bind_both_ids_and_the_secret() {
        let (a, b) = (key(1).public(), key(2).public());
        let s = MeshSecret([1; 16]);
        let p = membership_proof(&s, &a, &b);
        assert_ne!(p, membership_proof(&s, &b, &a));
        assert_ne!(p, membership_proof(&MeshSecret([2; 16]), &a, &b));
        assert_eq!(p, membership_proof(&s, &a, &b));
    }

    proptest! {
        #[test]
        fn random_tickets_never_panic(s in "\\PC{0,200}", tail in "[a-z0-9:.@_-]{0,80}") {
            let _ = s.parse::<Ticket>();
            let _ = format!("burrow1:{tail}").parse::<Ticket>();
            let _ = s.parse::<crate::ServerAddr>();
        }

        #[test]
        fn frames_round_trip(text in ".{1,100}", ids in proptest::collection::vec(any::<[u8; 32]>(), 0..20), t in any::<u64>()) {
            let post = Post::create(&key(1), "alice".parse().unwrap(), Topic::default_topic(), None, Hlc(t), text);
            let ids: Vec<PostId> = ids.into_iter().map(PostId).collect();
            for f in [
                MeshFrame::Post(post.clone()),
                MeshFrame::IHave(ids.clone()),
                MeshFrame::Want(ids),
                MeshFrame::Pong { t1: t, t2: t / 2, t3: t / 3 },
                MeshFrame::Sync { topic: Topic::default_topic(), msg: vec![0x61, 1, 2] },
                MeshFrame::IntroRequest { peer: key(2).public(), name: "carol".parse().unwrap() },
                MeshFrame::IntroAccept { peer: key(3).public() },
                MeshFrame::SyncStart { topic: Topic::default_topic(), msg: vec![0x61, 9] },
            ] {
                prop_assert_eq!(decode::<MeshFrame>(VERSION, &encode(&f).unwrap(), MAX_FRAME), Ok(f));
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(f) = decode::<MeshFrame>(VERSION, &bytes, MAX_FRAME) {
                let _ = f.check();
            }
            let _ = String::from_utf8_lossy(&bytes).parse::<Ticket>();
        }
    }
}
