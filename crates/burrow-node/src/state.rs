//! What a node knows while it runs: its peers and the state every part of
//! it shares, locked only for short sections (never across an `.await`),
//! and how a person's name for a peer resolves to its id.

use std::collections::HashMap;
use std::net::SocketAddr;

use burrow_proto::rendezvous::{ClientMsg, Direction, PeerInfo, Refusal, TrackerEntry};
use burrow_proto::{Name, NodeId};
use tokio::sync::{mpsc, oneshot};

use crate::error::PeerError;

/// The operations that ask the server about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestOp {
    Connect,
    Accept,
    Reject,
    Cancel,
}

/// Most peers the node tracks (the server's presence list can be long).
pub(crate) const MAX_PEERS: usize = 100_000;
/// A peer as this node knows it.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    pub name: Option<Name>,
    pub online: bool,
    /// A request between us that is waiting for an answer, and which side we are.
    pub request: Option<Direction>,
    /// We accepted this peer: its incoming connections are let in.
    pub accepted: bool,
    /// Live connections, oldest first. Usually one; two attempts that both
    /// completed (a direct dial and a punched one) can leave two for a moment.
    /// None is closed because another arrived: the side that dialed keeps one and
    /// drops the rest, and the others close by themselves.
    pub conns: Vec<quinn::Connection>,
    /// When a link that isn't direct next asks for a fresh punch.
    pub repunch: burrow_proto::punch::policy::Repunch,
    /// Serverless: its mesh link is up, so its membership of our network is
    /// proven, and its other services' connections come in.
    pub member: bool,
    /// What found the direct path, while there is one.
    pub method: Option<burrow_proto::punch::Method>,
}

/// Most live connections kept per peer; past that the oldest is closed.
pub(crate) const MAX_CONNS_PER_PEER: usize = 4;

impl Peer {
    /// The connection in use: the newest live one.
    pub fn conn(&self) -> Option<&quinn::Connection> {
        self.conns.last()
    }

    pub fn connected(&self) -> bool {
        !self.conns.is_empty()
    }
}

/// Everything that changes while the node runs. Locked only for short sections.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Sender to the current server session, while registered.
    pub server_tx: Option<mpsc::Sender<ClientMsg>>,
    pub server_id: Option<NodeId>,
    /// The server's address, as resolved for the current session.
    pub server_addr: Option<SocketAddr>,
    pub public_addr: Option<SocketAddr>,
    /// Our address in the other family than the session's (IPv6 when the
    /// session runs over IPv4), as the server's STUN saw it; `None` when we
    /// have none there, or it did not answer.
    pub public_other: Option<SocketAddr>,
    /// The server's addresses in that other family (its Welcome's `also`),
    /// and the session's proof for them.
    pub server_also: Vec<SocketAddr>,
    pub other_proof: Option<[u8; 12]>,
    /// How our NAT maps ports, as last measured ([`crate::nat::refresh_mapping`]).
    pub mapping: burrow_proto::punch::Mapping,
    /// The TTL of our opening probes, when a NAT of ours stands between us
    /// and the server (see `burrow_proto::punch`); `None` on a public address.
    pub open_ttl: Option<u8>,
    /// `--relay-only`: the server keeps our addresses from peers.
    pub relay_only: bool,
    /// The public port our router maps to us, and how ([`crate::portmap`]).
    pub port_map: Option<(SocketAddr, burrow_net::portmap::PortMapProtocol)>,
    pub peers: HashMap<NodeId, Peer>,
    /// Operations waiting for the server's answer about a peer (one per peer).
    pub waiters: HashMap<NodeId, (RequestOp, oneshot::Sender<Result<(), Refusal>>)>,
    /// Tracker searches waiting for their answer, by query id.
    pub searches: HashMap<u32, oneshot::Sender<Vec<TrackerEntry>>>,
    pub next_query: u32,
    /// Who may connect without asking, and what to do with strangers.
    pub contacts: crate::contacts::book::Contacts,
    /// Whom the server tells us about: everyone, or whom we watch.
    pub presence: burrow_proto::rendezvous::PresenceScope,
    /// Strikes against peers, and their connect requests (see [`crate::conduct`]).
    pub conduct: crate::conduct::Conduct,
    /// Name lookups waiting for the server's answer, by query id.
    pub lookups: HashMap<u32, oneshot::Sender<Option<PeerInfo>>>,
}

impl State {
    /// What we tell the server of our NAT: its mapping, our port mapping, and
    /// whether UDP reaches the server at all.
    pub fn nat_info(&self) -> burrow_proto::punch::NatInfo {
        burrow_proto::punch::NatInfo {
            mapping: self.mapping,
            mapped: self.port_map.map(|(a, _)| a),
            no_udp: self.no_udp(),
            relay_only: self.relay_only,
        }
    }

    /// Whether we reach the server only over TCP (so UDP punching can't work).
    pub fn no_udp(&self) -> bool {
        self.server_addr.is_some_and(burrow_net::tcp::is_link)
    }

    /// Whether `name` is `id`'s as far as we know: our own, a contact's (the
    /// user named it), or, with a server, the name the server binds to the
    /// key. Serverless peers name themselves, so only contacts count there.
    pub fn vouched_name(&self, id: &NodeId, me: NodeId, name: &str) -> bool {
        self.vouched(id, Some(&me), name)
    }

    fn vouched(&self, id: &NodeId, me: Option<&NodeId>, name: &str) -> bool {
        let server_binding = self.server_id.and(self.claimed_name(id)).map(Name::as_str);
        crate::names::vouched(id, name, me, self.contacts.name(id), server_binding)
    }

    /// The name a peer goes by here: the server's binding with a server, the
    /// name it gave itself serverless (which only a contact's name vouches for).
    pub fn claimed_name(&self, id: &NodeId) -> Option<&Name> {
        self.peers.get(id).and_then(|p| p.name.as_ref())
    }

    /// Whether a peer's name ([`Self::claimed_name`]) is vouched for.
    pub fn name_vouched(&self, id: &NodeId) -> bool {
        self.claimed_name(id)
            .is_some_and(|n| self.vouched(id, None, n.as_str()))
    }

    /// A peer as people read it in events and errors: its name, with its short
    /// id beside a name nobody vouches for (see [`crate::names::shown`]), or
    /// the short id alone.
    pub fn name_of(&self, id: &NodeId) -> String {
        match self.claimed_name(id) {
            Some(n) => crate::names::shown(n.as_str(), &id.to_string(), self.name_vouched(id)),
            None => id.short(),
        }
    }

    /// Records that the server lists `info` as online; returns its entry, or `None`
    /// when it is new and the table is full ([`MAX_PEERS`]).
    pub fn mark_online(&mut self, info: PeerInfo) -> Option<&mut Peer> {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&info.id) {
            return None;
        }
        let p = self.peers.entry(info.id).or_default();
        p.name = Some(info.name);
        p.online = true;
        Some(p)
    }

    /// Drops peers we know nothing useful about any more.
    pub fn forget_idle(&mut self, id: &NodeId) {
        if self
            .peers
            .get(id)
            .is_some_and(|p| !p.online && !p.connected() && p.request.is_none() && !p.accepted)
        {
            self.peers.remove(id);
        }
    }
}

/// Finds the peer a person means: a contact's name, a peer's name, or a
/// unique id prefix. A contact's name wins over a name a serverless peer
/// claims; a name that is also another peer's id prefix is ambiguous (a name
/// like `cafe1234` must not pass for the node whose id starts so).
pub(crate) fn resolve(st: &State, peer: &str) -> Result<NodeId, PeerError> {
    let wanted = peer.trim().to_ascii_lowercase();
    let hex = !wanted.is_empty() && wanted.chars().all(|c| c.is_ascii_hexdigit());
    let by_prefix = |id: &NodeId| hex && id.to_string().starts_with(&wanted);
    let ambiguous = |ids: &[NodeId]| {
        let ids: Vec<String> = ids.iter().map(|id| id.short()).collect();
        PeerError::Ambiguous(peer.to_string(), ids.join(", "))
    };
    // Serverless, names are only what peers claim: two may claim the same one.
    let mut named: Vec<NodeId> = st
        .contacts
        .ids()
        .filter(|id| st.contacts.name(id) == Some(wanted.as_str()))
        .collect();
    if named.is_empty() {
        named = st
            .peers
            .iter()
            .filter(|(_, p)| p.name.as_ref().is_some_and(|n| n.as_str() == wanted))
            .map(|(id, _)| *id)
            .collect();
    }
    match named.as_slice() {
        [id] => {
            let other_prefix: Vec<NodeId> = st
                .peers
                .keys()
                .filter(|other| *other != id && by_prefix(other))
                .copied()
                .collect();
            if other_prefix.is_empty() {
                return Ok(*id);
            }
            return Err(ambiguous(&[&[*id], other_prefix.as_slice()].concat()));
        }
        [] => {}
        many => return Err(ambiguous(many)),
    }
    if hex {
        let matches: Vec<NodeId> = st
            .peers
            .keys()
            .filter(|id| by_prefix(id))
            .copied()
            .collect();
        match matches.len() {
            1 => return Ok(matches[0]),
            0 => {
                if let Ok(id) = wanted.parse::<NodeId>() {
                    return Ok(id);
                }
            }
            _ => {
                let names: Vec<String> = matches.iter().map(|id| st.name_of(id)).collect();
                return Err(PeerError::Ambiguous(peer.to_string(), names.join(", ")));
            }
        }
    }
    Err(PeerError::Unknown(peer.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public()
    }

    fn named(st: &mut State, id: NodeId, name: &str) {
        st.peers.entry(id).or_default().name = Some(name.parse().unwrap());
    }

    #[test]
    fn a_contacts_name_wins_and_a_name_never_passes_for_an_id_prefix() {
        let mut st = State::default();
        let (alice, mallory) = (id(1), id(2));
        named(&mut st, alice, "alice");
        named(&mut st, mallory, "alice");
        // Two peers claim one name: neither is picked.
        assert!(matches!(
            resolve(&st, "alice"),
            Err(PeerError::Ambiguous(..))
        ));
        assert_eq!(st.name_of(&alice), format!("alice [{}]", alice.short()));
        // Saved as a contact, alice is the one `alice` means, and shown plainly.
        st.contacts.ids.insert(alice, "alice".into());
        assert_eq!(resolve(&st, "alice").unwrap(), alice);
        assert_eq!(st.name_of(&alice), "alice");
        assert_eq!(st.name_of(&mallory), format!("alice [{}]", mallory.short()));

        // A name spelled like another node's id: refused as ambiguous, never
        // resolved to the name's owner alone. (Names start with a letter, so
        // only ids starting with a-f can be mimicked.)
        let target = (3..)
            .map(id)
            .find(|i| i.short().starts_with(|c: char| c.is_ascii_lowercase()))
            .unwrap();
        let mimic = id(100);
        named(&mut st, target, "target");
        named(&mut st, mimic, &target.short());
        assert!(matches!(
            resolve(&st, &target.short()),
            Err(PeerError::Ambiguous(..))
        ));
        assert_eq!(resolve(&st, &target.to_string()[..12]).unwrap(), target);
        assert_eq!(resolve(&st, "target").unwrap(), target);
    }
}
