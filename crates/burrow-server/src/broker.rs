//! The registry of who is online and the connect broker, as a sans-IO state machine.
//!
//! The server's driver feeds it what happens (a node joined or left, a node sent a
//! message, time passed) and delivers the messages it returns. It never touches a
//! socket or the clock, so every rule below is unit-tested without either.
//!
//! Rules:
//! - A request is named by its two ends; at most one is pending from A to B.
//! - If B asks A while A's request to B is pending, both wanted the connection:
//!   the server treats it as B accepting A's request.
//! - A request nobody answers expires after [`BrokerConfig::request_ttl`].
//! - A node leaving ends every request it was part of, and the other side is told.
//! - An accepted request makes a *link* between the two nodes: a relay channel
//!   (when the server relays) and the right to ask for fresh punches
//!   (`Repunch`). A link ends when either side leaves or releases it. Without a
//!   link, `Repunch` counts as a wish; when both sides wish it (both came back
//!   after a server restart, with their connection still up) the link is made
//!   again. Addresses are only ever handed to a node its peer agreed to.
//! - Relayed bytes are charged to the sender: a rate and a per-session quota.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_proto::punch::{NatInfo, PunchTicket};
use burrow_proto::relay::Channel;
use burrow_proto::rendezvous::{
    ClientMsg, CloseReason, Direction, LinkOffer, PeerInfo, PresenceScope, Refusal, ServerMsg,
    PEERS_PER_FRAME, WATCH_PER_FRAME,
};
use burrow_proto::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::presence::Presence;
use burrow_proto::limit::RateLimit;

/// Fresh punches for one link at most this often (both sides may ask at once).
const REPUNCH_INTERVAL: Duration = Duration::from_secs(2);

/// Limits of the broker. Defaults assume people answering requests by hand.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// How long a connect request waits for an answer. Default 60 s: long enough
    /// for a person to see the prompt and type `burrow accept`.
    pub request_ttl: Duration,
    /// Most outgoing requests one node may have pending. Default 16.
    pub max_pending_per_node: usize,
    /// Relay traffic for linked nodes that have no direct path. Default on.
    pub relay: bool,
    /// Relayed bytes per second the server carries in all, shared fairly:
    /// each node that relayed within the last second may send
    /// `relay_total / n` of them. Default 10 Gbit/s, above what one server
    /// carries (about 2 Gbit/s on two cores), so in effect the machine's own
    /// limit, shared.
    pub relay_total: u64,
    /// At most this many relayed bytes per second from one node, whatever its
    /// share (`u64::MAX`, the default: no cap but the share).
    pub relay_rate: u64,
    /// Relayed bytes one node may send at once under `relay_rate`. Default
    /// 4 MiB; a fair share's burst is a tenth of a second of it.
    pub relay_burst: u64,
    /// Relayed bytes one node may send in one session. Default 1 GiB.
    pub relay_quota: u64,
    /// Most links one node may have; a new one past that ends its oldest.
    /// Default 64.
    pub max_links_per_node: usize,
    /// Whom each node hears come and go. Default [`PresenceScope::Everyone`]:
    /// right for thousands of nodes; [`PresenceScope::Watched`] for more (see
    /// [`crate::presence`]).
    pub presence: PresenceScope,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            request_ttl: Duration::from_secs(60),
            max_pending_per_node: 16,
            relay: true,
            relay_total: 10_000_000_000 / 8,
            relay_rate: u64::MAX,
            relay_burst: 4 << 20,
            relay_quota: 1 << 30,
            max_links_per_node: 64,
            presence: PresenceScope::Everyone,
        }
    }
}

/// Why a relayed datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayDrop {
    /// The channel is unknown, or the sender isn't one of its ends.
    NotLinked,
    /// The sender is over its rate.
    OverRate,
    /// The sender used up its quota; `first` is true the first time.
    OverQuota {
        /// Whether this is the first datagram over it (log once).
        first: bool,
    },
}

/// A node that relayed within this long shares the relay's total.
const RELAY_ACTIVE: Duration = Duration::from_secs(1);
/// How often the relaying nodes are counted again.
const RELAY_RECOUNT: Duration = Duration::from_millis(100);
/// The smallest burst a fair share allows (a few dozen datagrams).
const RELAY_MIN_BURST: f64 = 64.0 * 1024.0;

/// A message for one node.
pub type Out = (NodeId, ServerMsg);

#[derive(Debug)]
struct Online {
    info: PeerInfo,
    session: u64,
    /// Server-observed address first, then the node's LAN addresses.
    candidates: Vec<SocketAddr>,
    /// Its address in the other family (IPv6 when the session runs over
    /// IPv4), once a STUN request carrying its proof came from there.
    other: Option<SocketAddr>,
    /// The STUN transaction id that proves `other` (see [`Registry::witness`]).
    proof: [u8; 12],
    /// What it reported of its NAT.
    nat: NatInfo,
    /// Relayed bytes sent this session, and the rate they are sent at (its
    /// fair share, or its cap).
    relayed: u64,
    relay_rate: Option<RateLimit>,
}

impl Online {
    /// What of this node's addresses `viewer` is given to punch. The address
    /// the server sees it at, always: that one the server vouches for. Its
    /// own (LAN) addresses only when `viewer` is behind the same public
    /// address, where they lead to it; anywhere else they are addresses of
    /// the node's choosing for the viewer to probe and dial (loopback, a
    /// neighbour's, any public host), and the viewer gets the node's own port
    /// number at its public address instead (NATs that keep ports map it
    /// there; TCP punches try it). Loopback ones only between nodes on the
    /// server's own machine. A port mapping only when its public address is
    /// the one the server sees (the router's own). Its address in the other
    /// family, once the server saw it there.
    fn offered_to(&self, viewer: &Online) -> (Vec<SocketAddr>, NatInfo) {
        let Some(&observed) = self.candidates.first() else {
            return (Vec::new(), NatInfo::default());
        };
        if self.nat.relay_only {
            // Nothing but the server sees where it is.
            let nat = NatInfo {
                relay_only: true,
                ..NatInfo::default()
            };
            return (Vec::new(), nat);
        }
        let here = observed.ip();
        let same_place = viewer.candidates.first().is_some_and(|v| v.ip() == here);
        let mut out = vec![observed];
        // Its other family's address: the viewer tries it where it has a
        // route in that family (it may not be seen there itself yet: its
        // own STUN there is one round trip behind its Welcome).
        if let Some(other) = self.other {
            out.push(other);
        }
        if same_place {
            out.extend(
                self.candidates[1..]
                    .iter()
                    .filter(|a| !a.ip().is_loopback() || here.is_loopback()),
            );
        } else if let Some(own) = self.candidates.get(1) {
            // (A node's LAN addresses come IPv4 first, so this one is its
            // socket's port when it has IPv4 at all.)
            let public = SocketAddr::new(here, own.port());
            if public != observed {
                out.push(public);
            }
        }
        let mut nat = self.nat;
        if nat.mapped.is_some_and(|m| m.ip() != here) {
            nat.mapped = None;
        }
        (out, nat)
    }
}

#[derive(Debug)]
struct Link {
    channel: Channel,
    created: Instant,
    last_punch: Instant,
}

/// A link's key: its two ends, in a fixed order.
fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    }
}

/// Presence and pending requests.
#[derive(Debug)]
pub struct Registry {
    config: BrokerConfig,
    /// Draws punch tickets (seeded in tests).
    rng: StdRng,
    nodes: HashMap<NodeId, Online>,
    /// (requester, asked) → expiry.
    pending: HashMap<(NodeId, NodeId), Instant>,
    /// Links, by their ends ([`pair`]), and their channels.
    links: HashMap<(NodeId, NodeId), Link>,
    channels: HashMap<Channel, (NodeId, NodeId)>,
    /// (asker, peer) → expiry: a `Repunch` without a link, waiting for the peer's.
    wishes: HashMap<(NodeId, NodeId), Instant>,
    /// Who hears about whom.
    presence: Presence,
    /// Nodes that relayed within the last second (they share the total),
    /// as last counted, and when to count again.
    relaying: usize,
    relay_recount_at: Instant,
    /// Nodes that relayed lately, and when they last did (pruned at each count).
    relay_senders: HashMap<NodeId, Instant>,
    /// The server's own addresses, for Welcome's `also`.
    server_addrs: Vec<SocketAddr>,
    /// Online nodes' proofs (see [`Registry::witness`]).
    proofs: HashMap<[u8; 12], NodeId>,
}

impl Registry {
    /// An empty registry drawing punch tickets from the OS's randomness.
    pub fn new(config: BrokerConfig) -> Self {
        Self::with_rng(config, StdRng::from_entropy())
    }

    /// An empty registry drawing punch tickets from `rng`.
    pub fn with_rng(config: BrokerConfig, rng: StdRng) -> Self {
        Registry {
            presence: Presence::new(config.presence),
            config,
            rng,
            nodes: HashMap::new(),
            pending: HashMap::new(),
            links: HashMap::new(),
            channels: HashMap::new(),
            wishes: HashMap::new(),
            relaying: 0,
            relay_recount_at: Instant::now(),
            relay_senders: HashMap::new(),
            server_addrs: Vec::new(),
            proofs: HashMap::new(),
        }
    }

    /// The server's addresses (both families on a dual-stack server): a node
    /// is told, in its Welcome, those of the family its session doesn't use.
    pub fn set_server_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.server_addrs = addrs;
    }

    /// A STUN request with transaction id `tx` came from `from`: when `tx` is
    /// an online node's proof and `from` is of the other family than its
    /// session, `from` is that node's address in the family (offered to peers
    /// beside the session's), and the proof is spent: the first request wins
    /// (the id travels in the clear, and a replay must move nothing).
    /// Returns the node.
    ///
    /// The proof shows the request came from the node (it is sent only in its
    /// encrypted session), not that `from` is really where it came from: a
    /// node on a network that lets it spoof its source address could name
    /// another host. What that costs the host is a punch's probes (a few
    /// dozen small datagrams per connect, from peers that chose to link with
    /// that node), the same as a node's LAN address offered at one place.
    pub fn witness(&mut self, tx: &[u8; 12], from: SocketAddr) -> Option<NodeId> {
        let id = *self.proofs.get(tx)?;
        let node = self.nodes.get_mut(&id)?;
        let observed = node.candidates.first()?;
        if observed.is_ipv4() == from.is_ipv4() {
            return None;
        }
        node.other = Some(from);
        self.proofs.remove(tx);
        Some(id)
    }

    /// How many nodes are online.
    pub fn online(&self) -> usize {
        self.nodes.len()
    }

    /// `id` and its name, if it is online.
    pub fn online_info(&self, id: &NodeId) -> Option<&PeerInfo> {
        self.nodes.get(id).map(|n| &n.info)
    }

    /// A node registered (`session` tells its connections apart). A node that was
    /// already online under an older session is replaced; requests of the old
    /// session end (the node forgot them when it lost that session).
    pub fn handle_join(
        &mut self,
        info: PeerInfo,
        session: u64,
        observed: SocketAddr,
        lan: Vec<SocketAddr>,
    ) -> Vec<Out> {
        let id = info.id;
        // A node joining again under a new session stays online to everyone
        // (they hear PeerJoined again, not PeerLeft); only its requests end.
        let mut out = if self.nodes.contains_key(&id) {
            self.end_requests_of(id)
        } else {
            Vec::new()
        };
        let mut candidates = vec![observed];
        candidates.extend(lan.into_iter().filter(|a| *a != observed));
        self.presence.joined(id, &info.name);
        let audience = self.presence.audience(id, self.nodes.keys());
        // Under `Everyone` the audience is everyone else, and that is the
        // newcomer's snapshot too; under `Watched` it starts with nothing.
        let mut peers: Vec<PeerInfo> = match self.presence.scope() {
            PresenceScope::Everyone => audience
                .iter()
                .filter_map(|o| self.nodes.get(o).map(|n| n.info.clone()))
                .collect(),
            PresenceScope::Watched => Vec::new(),
        };
        out.extend(
            audience
                .into_iter()
                .map(|o| (o, ServerMsg::PeerJoined(info.clone()))),
        );
        let rest = peers.split_off(peers.len().min(PEERS_PER_FRAME));
        let proof: [u8; 12] = self.rng.gen();
        if let Some(old) = self.nodes.get(&id) {
            self.proofs.remove(&old.proof);
        }
        self.proofs.insert(proof, id);
        let also = self
            .server_addrs
            .iter()
            .filter(|a| a.is_ipv4() != observed.is_ipv4())
            .take(burrow_proto::rendezvous::MAX_ALSO)
            .copied()
            .collect();
        out.push((
            id,
            ServerMsg::Welcome {
                observed,
                also,
                proof,
                peers,
                request_ttl_ms: self.config.request_ttl.as_millis() as u64,
                presence: self.presence.scope(),
            },
        ));
        out.extend(
            rest.chunks(PEERS_PER_FRAME)
                .map(|c| (id, ServerMsg::Peers(c.to_vec()))),
        );
        self.nodes.insert(
            id,
            Online {
                info,
                session,
                candidates,
                other: None,
                proof,
                nat: NatInfo::default(),
                relayed: 0,
                relay_rate: None,
            },
        );
        out
    }

    /// A node's session ended. Ignored when the node has since joined again under
    /// a newer session.
    pub fn handle_leave(&mut self, id: NodeId, session: u64) -> Vec<Out> {
        if self.nodes.get(&id).is_none_or(|n| n.session != session) {
            return Vec::new();
        }
        if let Some(gone) = self.nodes.remove(&id) {
            self.presence.left(id, &gone.info.name);
            self.proofs.remove(&gone.proof);
        }
        self.end_links_of(id);
        let mut out = self.end_requests_of(id);
        out.extend(
            self.presence
                .audience(id, self.nodes.keys())
                .into_iter()
                .filter(|o| self.nodes.contains_key(o))
                .map(|other| (other, ServerMsg::PeerLeft { id })),
        );
        out
    }

    /// Ends every request `id` is part of, telling the other sides.
    fn end_requests_of(&mut self, id: NodeId) -> Vec<Out> {
        let mut out = Vec::new();
        let ended: Vec<(NodeId, NodeId)> = self
            .pending
            .keys()
            .filter(|(a, b)| *a == id || *b == id)
            .copied()
            .collect();
        for (from, to) in ended {
            self.pending.remove(&(from, to));
            if from == id {
                out.push(closed(to, from, Direction::Incoming, CloseReason::PeerLeft));
            } else {
                out.push(closed(from, to, Direction::Outgoing, CloseReason::PeerLeft));
            }
        }
        out
    }

    /// A registered node sent `msg`.
    pub fn handle_msg(&mut self, now: Instant, from: NodeId, msg: ClientMsg) -> Vec<Out> {
        match msg {
            ClientMsg::Connect { peer } => self.connect(now, from, peer),
            ClientMsg::Accept { peer } => self.accept(now, from, peer),
            ClientMsg::Reject { peer } => self.end(peer, from, CloseReason::Rejected, from),
            ClientMsg::Cancel { peer } => self.end(from, peer, CloseReason::Cancelled, from),
            ClientMsg::Repunch { peer } => self.repunch(now, from, peer),
            ClientMsg::Nat { nat } => {
                if let Some(n) = self.nodes.get_mut(&from) {
                    n.nat = nat;
                }
                Vec::new()
            }
            ClientMsg::Release { peer } => {
                self.end_link(pair(from, peer));
                self.wishes.remove(&(from, peer));
                Vec::new()
            }
            ClientMsg::Watch { ids } => {
                let ids = &ids[..ids.len().min(WATCH_PER_FRAME)];
                let online: Vec<PeerInfo> = self
                    .presence
                    .watch(from, ids)
                    .iter()
                    .filter_map(|w| self.nodes.get(w).map(|n| n.info.clone()))
                    .collect();
                if online.is_empty() {
                    Vec::new()
                } else {
                    vec![(from, ServerMsg::Peers(online))]
                }
            }
            ClientMsg::Unwatch { ids } => {
                self.presence
                    .unwatch(from, &ids[..ids.len().min(WATCH_PER_FRAME)]);
                Vec::new()
            }
            ClientMsg::Lookup { query_id, name } => {
                let peer = self.presence.lookup(&name);
                if let Some(p) = peer {
                    self.presence.watch(from, &[p]);
                }
                let peer = peer.and_then(|p| self.nodes.get(&p).map(|n| n.info.clone()));
                vec![(from, ServerMsg::Found { query_id, peer })]
            }
            ClientMsg::Hello { .. } => vec![refused(from, None, Refusal::HelloExpected)],
            // The tracker's messages are the server driver's (they touch the store).
            ClientMsg::Bye
            | ClientMsg::Offer { .. }
            | ClientMsg::Unoffer { .. }
            | ClientMsg::Search { .. } => Vec::new(),
        }
    }

    /// Expires requests whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Out> {
        let expired: Vec<(NodeId, NodeId)> = self
            .pending
            .iter()
            .filter(|(_, &at)| at <= now)
            .map(|(&k, _)| k)
            .collect();
        self.wishes.retain(|_, at| *at > now);
        let mut out = Vec::new();
        for (from, to) in expired {
            self.pending.remove(&(from, to));
            out.push(closed(from, to, Direction::Outgoing, CloseReason::Expired));
            out.push(closed(to, from, Direction::Incoming, CloseReason::Expired));
        }
        out
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    fn connect(&mut self, now: Instant, from: NodeId, to: NodeId) -> Vec<Out> {
        if from == to {
            return vec![refused(from, Some(to), Refusal::SelfConnect)];
        }
        if !self.nodes.contains_key(&to) {
            return vec![refused(from, Some(to), Refusal::PeerOffline)];
        }
        if self.pending.contains_key(&(to, from)) {
            // Both asked each other: that is consent on both sides.
            return self.accept(now, from, to);
        }
        if self.pending.contains_key(&(from, to)) {
            return vec![refused(from, Some(to), Refusal::AlreadyPending)];
        }
        let mine = self.pending.keys().filter(|(a, _)| *a == from).count();
        if mine >= self.config.max_pending_per_node {
            return vec![refused(from, Some(to), Refusal::TooManyRequests)];
        }
        let Some(requester) = self.nodes.get(&from) else {
            return Vec::new();
        };
        self.pending
            .insert((from, to), now + self.config.request_ttl);
        vec![
            (from, ServerMsg::Pending { peer: to }),
            (
                to,
                ServerMsg::Incoming {
                    peer: requester.info.clone(),
                },
            ),
        ]
    }

    /// `acceptor` accepts the request `requester` sent it.
    fn accept(&mut self, now: Instant, acceptor: NodeId, requester: NodeId) -> Vec<Out> {
        if self.pending.remove(&(requester, acceptor)).is_none() {
            return vec![refused(acceptor, Some(requester), Refusal::NoSuchRequest)];
        }
        let (Some(a), Some(r)) = (self.nodes.get(&acceptor), self.nodes.get(&requester)) else {
            return Vec::new();
        };
        let (a_cands, a_nat) = a.offered_to(r);
        let (r_cands, r_nat) = r.offered_to(a);
        let punch = PunchTicket::random(&mut self.rng);
        let relay = self.make_link(now, requester, acceptor);
        vec![
            (
                requester,
                ServerMsg::Accepted(LinkOffer {
                    peer: acceptor,
                    direction: Direction::Outgoing,
                    candidates: a_cands,
                    peer_nat: a_nat,
                    punch,
                    relay,
                }),
            ),
            (
                acceptor,
                ServerMsg::Accepted(LinkOffer {
                    peer: requester,
                    direction: Direction::Incoming,
                    candidates: r_cands,
                    peer_nat: r_nat,
                    punch,
                    relay,
                }),
            ),
        ]
    }

    /// Makes (or remakes) the link between `a` and `b`; its relay channel, if
    /// the server relays.
    fn make_link(&mut self, now: Instant, a: NodeId, b: NodeId) -> Option<Channel> {
        let key = pair(a, b);
        self.end_link(key);
        for end in [a, b] {
            let mine: Vec<_> = self
                .links
                .iter()
                .filter(|(k, _)| k.0 == end || k.1 == end)
                .map(|(k, l)| (l.created, *k))
                .collect();
            if mine.len() >= self.config.max_links_per_node {
                if let Some((_, oldest)) = mine.into_iter().min() {
                    self.end_link(oldest);
                }
            }
        }
        // Linked nodes hear about each other, whatever the presence scope.
        self.presence.watch(a, &[b]);
        self.presence.watch(b, &[a]);
        let channel = Channel::random(&mut self.rng);
        self.links.insert(
            key,
            Link {
                channel,
                created: now,
                last_punch: now,
            },
        );
        self.channels.insert(channel, key);
        self.config.relay.then_some(channel)
    }

    fn end_link(&mut self, key: (NodeId, NodeId)) {
        if let Some(l) = self.links.remove(&key) {
            self.channels.remove(&l.channel);
        }
    }

    fn end_links_of(&mut self, id: NodeId) {
        let keys: Vec<_> = self
            .links
            .keys()
            .filter(|k| k.0 == id || k.1 == id)
            .copied()
            .collect();
        for k in keys {
            self.end_link(k);
        }
        self.wishes.retain(|k, _| k.0 != id && k.1 != id);
    }

    /// `from` wants a fresh punch with `peer` (see the module's rules). Nodes
    /// ask in the background, so nothing is refused out loud: a request that
    /// can't be met (the peer is offline, too many wishes) is dropped, and the
    /// node asks again on its schedule or when the peer comes back.
    fn repunch(&mut self, now: Instant, from: NodeId, peer: NodeId) -> Vec<Out> {
        if from == peer || !self.nodes.contains_key(&peer) {
            return Vec::new();
        }
        let key = pair(from, peer);
        let relay = match self.links.get_mut(&key) {
            Some(link) if now < link.last_punch + REPUNCH_INTERVAL => return Vec::new(),
            Some(link) => {
                link.last_punch = now;
                self.config.relay.then_some(link.channel)
            }
            None if self.wishes.remove(&(peer, from)).is_some_and(|at| at > now) => {
                self.make_link(now, from, peer)
            }
            None => {
                let mine = self.wishes.keys().filter(|(a, _)| *a == from).count();
                if mine >= self.config.max_pending_per_node {
                    return Vec::new();
                }
                self.wishes
                    .insert((from, peer), now + self.config.request_ttl);
                return Vec::new();
            }
        };
        let (Some(f), Some(p)) = (self.nodes.get(&from), self.nodes.get(&peer)) else {
            return Vec::new();
        };
        let punch = PunchTicket::random(&mut self.rng);
        let (p_cands, p_nat) = p.offered_to(f);
        let (f_cands, f_nat) = f.offered_to(p);
        vec![
            (
                from,
                ServerMsg::Punch(LinkOffer {
                    peer,
                    direction: Direction::Outgoing,
                    candidates: p_cands,
                    peer_nat: p_nat,
                    punch,
                    relay,
                }),
            ),
            (
                peer,
                ServerMsg::Punch(LinkOffer {
                    peer: from,
                    direction: Direction::Incoming,
                    candidates: f_cands,
                    peer_nat: f_nat,
                    punch,
                    relay,
                }),
            ),
        ]
    }

    /// The server now sees `id` at `observed` (its NAT mapping changed): peers
    /// punching it from now on get that address.
    pub fn update_observed(&mut self, id: NodeId, observed: SocketAddr) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.candidates.first() != Some(&observed) {
                n.candidates.retain(|a| *a != observed);
                if !n.candidates.is_empty() {
                    n.candidates[0] = observed;
                } else {
                    n.candidates.push(observed);
                }
            }
        }
    }

    /// The two ends of a relay channel, if it is a live link's and the server relays.
    pub fn channel_ends(&self, channel: &Channel) -> Option<(NodeId, NodeId)> {
        if !self.config.relay {
            return None;
        }
        self.channels.get(channel).copied()
    }

    /// Charges `bytes` relayed from `from` to its rate (its fair share of
    /// [`BrokerConfig::relay_total`], at most [`BrokerConfig::relay_rate`])
    /// and its quota.
    pub fn charge_relay(
        &mut self,
        now: Instant,
        from: NodeId,
        bytes: usize,
    ) -> Result<(), RelayDrop> {
        if now >= self.relay_recount_at {
            // Who relays now: the senders of the last second share the total
            // (a walk over those who relayed lately, not over every node).
            let recent = now.checked_sub(RELAY_ACTIVE).unwrap_or(now);
            self.relay_senders.retain(|_, t| *t >= recent);
            self.relaying = self.relay_senders.len();
            self.relay_recount_at = now + RELAY_RECOUNT;
        }
        let config = &self.config;
        let n = self.nodes.get_mut(&from).ok_or(RelayDrop::NotLinked)?;
        if n.relayed >= config.relay_quota {
            return Err(RelayDrop::OverQuota { first: false });
        }
        let last = self.relay_senders.insert(from, now);
        if last.is_none_or(|t| t + RELAY_ACTIVE < now) {
            self.relaying += 1; // a new sender takes its share at once
        }
        let share = config.relay_total as f64 / self.relaying.max(1) as f64;
        let (rate, burst) = if (config.relay_rate as f64) < share {
            (config.relay_rate as f64, config.relay_burst as f64)
        } else {
            (share, (share / 10.0).max(RELAY_MIN_BURST))
        };
        let limit = n
            .relay_rate
            .get_or_insert_with(|| RateLimit::new(rate, burst, now));
        if limit.rate() != rate {
            limit.set(now, rate, burst);
        }
        if !limit.allow_n(now, bytes as f64) {
            return Err(RelayDrop::OverRate);
        }
        n.relayed += bytes as u64;
        if n.relayed >= config.relay_quota {
            return Err(RelayDrop::OverQuota { first: true });
        }
        Ok(())
    }

    /// Ends the request `from` → `to` for `reason`, on behalf of `by`.
    fn end(&mut self, from: NodeId, to: NodeId, reason: CloseReason, by: NodeId) -> Vec<Out> {
        if self.pending.remove(&(from, to)).is_none() {
            let other = if by == from { to } else { from };
            return vec![refused(by, Some(other), Refusal::NoSuchRequest)];
        }
        vec![
            closed(from, to, Direction::Outgoing, reason),
            closed(to, from, Direction::Incoming, reason),
        ]
    }
}

fn refused(to: NodeId, peer: Option<NodeId>, reason: Refusal) -> Out {
    (to, ServerMsg::Refused { peer, reason })
}

fn closed(to: NodeId, peer: NodeId, direction: Direction, reason: CloseReason) -> Out {
    (
        to,
        ServerMsg::Closed {
            peer,
            direction,
            reason,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn node(seed: u64, name: &str) -> PeerInfo {
        PeerInfo {
            id: SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public(),
            name: name.parse().unwrap(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 1], port))
    }

    /// A registry with alice and bob online.
    fn two() -> (Registry, PeerInfo, PeerInfo, Instant) {
        let mut r = Registry::new(BrokerConfig::default());
        let (a, b) = (node(1, "alice"), node(2, "bob"));
        r.handle_join(
            a.clone(),
            1,
            addr(1),
            vec![SocketAddr::from(([192, 168, 1, 2], 1))],
        );
        let out = r.handle_join(b.clone(), 2, addr(2), vec![]);
        assert!(out.contains(&(a.id, ServerMsg::PeerJoined(b.clone()))));
        assert!(
            matches!(&out.last().unwrap().1, ServerMsg::Welcome { peers, .. } if peers == &vec![a.clone()])
        );
        (r, a, b, Instant::now())
    }

    #[test]
    fn accept_hands_each_side_the_others_candidates() {
        let (mut r, a, b, now) = two();
        let out = r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        assert_eq!(
            out,
            vec![
                (b.id, ServerMsg::Pending { peer: a.id }),
                (a.id, ServerMsg::Incoming { peer: b.clone() })
            ]
        );
        // a measured its NAT: b hears how a's ports are allocated (b doesn't
        // know its own mapping yet).
        let a_nat = NatInfo {
            mapping: burrow_proto::punch::Mapping::Sequential {
                last: 20001,
                step: 1,
            },
            mapped: Some(addr(7)),
            no_udp: false,
            relay_only: false,
        };
        r.handle_msg(now, a.id, ClientMsg::Nat { nat: a_nat });
        let out = r.handle_msg(now, a.id, ClientMsg::Accept { peer: b.id });
        let ServerMsg::Accepted(LinkOffer { punch, relay, .. }) = out[0].1 else {
            panic!("{out:?}")
        };
        assert!(relay.is_some(), "a relay channel for the link");
        assert_eq!(
            out,
            vec![
                (
                    b.id,
                    ServerMsg::Accepted(LinkOffer {
                        peer: a.id,
                        direction: Direction::Outgoing,
                        candidates: vec![addr(1), SocketAddr::from(([192, 168, 1, 2], 1))],
                        peer_nat: a_nat,
                        punch,
                        relay,
                    })
                ),
                (
                    a.id,
                    ServerMsg::Accepted(LinkOffer {
                        peer: b.id,
                        direction: Direction::Incoming,
                        candidates: vec![addr(2)],
                        peer_nat: NatInfo::default(),
                        punch,
                        relay,
                    })
                ),
            ],
            "both sides get each other's candidates, the same punch ticket and relay channel"
        );
        // The request is used up: a replayed accept is refused.
        let out = r.handle_msg(now, a.id, ClientMsg::Accept { peer: b.id });
        assert_eq!(
            out,
            vec![(
                a.id,
                ServerMsg::Refused {
                    peer: Some(b.id),
                    reason: Refusal::NoSuchRequest
                }
            )]
        );
    }

    /// What `to` is given of `from`'s addresses (and port mapping) when it
    /// asks `from` for a link and `from` accepts.
    fn offered_by(
        r: &mut Registry,
        t: Instant,
        from: &PeerInfo,
        to: &PeerInfo,
    ) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        r.handle_msg(t, to.id, ClientMsg::Connect { peer: from.id });
        let out = r.handle_msg(t, from.id, ClientMsg::Accept { peer: to.id });
        out.into_iter()
            .find_map(|(id, m)| match m {
                ServerMsg::Accepted(LinkOffer {
                    candidates,
                    peer_nat,
                    ..
                }) if id == to.id => Some((candidates, peer_nat.mapped)),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn the_other_family_is_offered_once_the_proof_came_from_there_and_the_proof_is_spent() {
        let mut r = Registry::new(BrokerConfig::default());
        let t = Instant::now();
        let server4 = SocketAddr::from(([203, 0, 113, 200], 7700));
        let server6: SocketAddr = "[2001:db8::1]:7700".parse().unwrap();
        r.set_server_addrs(vec![server4, server6]);
        let (a, b, c) = (node(1, "alice"), node(2, "bob"), node(3, "carol"));
        let welcome = |out: Vec<Out>| match out.last().map(|o| &o.1) {
            Some(ServerMsg::Welcome { also, proof, .. }) => (also.clone(), *proof),
            other => panic!("expected a Welcome, got {other:?}"),
        };
        let (also, proof) = welcome(r.handle_join(a.clone(), 1, addr(1), vec![]));
        assert_eq!(
            also,
            vec![server6],
            "over IPv4, told the server's IPv6 address"
        );
        let alice6: SocketAddr = "[2001:db8:0:5::2]:4000".parse().unwrap();
        assert_eq!(r.witness(&[0; 12], alice6), None, "no proof, nothing shown");
        assert_eq!(
            r.witness(&proof, addr(9)),
            None,
            "the same family shows nothing"
        );
        assert_eq!(r.witness(&proof, alice6), Some(a.id));
        let elsewhere: SocketAddr = "[2001:db8:0:9::9]:4000".parse().unwrap();
        assert_eq!(
            r.witness(&proof, elsewhere),
            None,
            "a replayed proof moves nothing"
        );
        // bob's session runs over IPv6; carol has IPv4 alone.
        let bob6: SocketAddr = "[2001:db8:0:6::2]:5000".parse().unwrap();
        let (also, _) = welcome(r.handle_join(b.clone(), 2, bob6, vec![]));
        assert_eq!(
            also,
            vec![server4],
            "over IPv6, told the server's IPv4 address"
        );
        let carol_at = SocketAddr::from(([198, 51, 100, 20], 5000));
        r.handle_join(c.clone(), 3, carol_at, vec![]);
        assert_eq!(offered_by(&mut r, t, &a, &b).0, vec![addr(1), alice6]);
        assert_eq!(
            offered_by(&mut r, t, &a, &c).0,
            vec![addr(1), alice6],
            "to a peer not seen in IPv6 (yet) too: it tries where it has a route"
        );
        r.handle_leave(a.id, 1);
        assert_eq!(
            r.witness(&proof, alice6),
            None,
            "a gone node's proof is void"
        );
    }

    #[test]
    fn a_node_is_offered_only_the_addresses_the_server_vouches_for_or_that_lead_to_the_peer() {
        let mut r = Registry::new(BrokerConfig::default());
        let t = Instant::now();
        let (a, b, c) = (node(1, "alice"), node(2, "bob"), node(3, "carol"));
        // alice claims a LAN address, a loopback one and a public one that is
        // somebody else's, and a port mapping on another public address.
        let claimed = vec![
            SocketAddr::from(([192, 168, 1, 2], 4000)),
            SocketAddr::from(([127, 0, 0, 1], 22)),
            SocketAddr::from(([198, 51, 100, 9], 80)),
        ];
        r.handle_join(a.clone(), 1, addr(1), claimed.clone());
        // bob is behind alice's public address; carol is elsewhere.
        r.handle_join(b.clone(), 2, addr(2), vec![]);
        let carol_at = SocketAddr::from(([198, 51, 100, 20], 5000));
        r.handle_join(c.clone(), 3, carol_at, vec![]);
        let lie = NatInfo {
            mapping: burrow_proto::punch::Mapping::Independent,
            mapped: Some(SocketAddr::from(([198, 51, 100, 9], 443))),
            no_udp: false,
            relay_only: false,
        };
        r.handle_msg(t, a.id, ClientMsg::Nat { nat: lie });
        let offered = |r: &mut Registry, to: &PeerInfo| offered_by(r, t, &a, to);
        assert_eq!(
            offered(&mut r, &c),
            (vec![addr(1), addr(4000)], None),
            "elsewhere: only the address the server sees, and its own port there"
        );
        assert_eq!(
            offered(&mut r, &b),
            (vec![addr(1), claimed[0], claimed[2]], None),
            "behind the same address: its LAN addresses too, never loopback"
        );
    }

    #[test]
    fn reject_cancel_and_expiry_close_both_sides() {
        let (mut r, a, b, now) = two();
        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        let out = r.handle_msg(now, a.id, ClientMsg::Reject { peer: b.id });
        assert_eq!(
            out[0],
            (
                b.id,
                ServerMsg::Closed {
                    peer: a.id,
                    direction: Direction::Outgoing,
                    reason: CloseReason::Rejected
                }
            )
        );

        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        let out = r.handle_msg(now, b.id, ClientMsg::Cancel { peer: a.id });
        assert_eq!(
            out[1],
            (
                a.id,
                ServerMsg::Closed {
                    peer: b.id,
                    direction: Direction::Incoming,
                    reason: CloseReason::Cancelled
                }
            )
        );

        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(60)));
        assert!(r.handle_timeout(now + Duration::from_secs(59)).is_empty());
        let out = r.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, m)| matches!(
            m,
            ServerMsg::Closed {
                reason: CloseReason::Expired,
                ..
            }
        )));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn crossing_requests_connect_and_bad_requests_are_refused() {
        let (mut r, a, b, now) = two();
        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        assert_eq!(
            r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id }),
            vec![(
                b.id,
                ServerMsg::Refused {
                    peer: Some(a.id),
                    reason: Refusal::AlreadyPending
                }
            )]
        );
        let out = r.handle_msg(now, a.id, ClientMsg::Connect { peer: b.id });
        assert!(
            matches!(out[0].1, ServerMsg::Accepted(LinkOffer { .. }))
                && matches!(out[1].1, ServerMsg::Accepted(LinkOffer { .. }))
        );

        let ghost = node(9, "ghost");
        assert_eq!(
            r.handle_msg(now, a.id, ClientMsg::Connect { peer: ghost.id }),
            vec![(
                a.id,
                ServerMsg::Refused {
                    peer: Some(ghost.id),
                    reason: Refusal::PeerOffline
                }
            )]
        );
        assert_eq!(
            r.handle_msg(now, a.id, ClientMsg::Connect { peer: a.id }),
            vec![(
                a.id,
                ServerMsg::Refused {
                    peer: Some(a.id),
                    reason: Refusal::SelfConnect
                }
            )]
        );
        assert_eq!(
            r.handle_msg(now, a.id, ClientMsg::Cancel { peer: b.id }),
            vec![(
                a.id,
                ServerMsg::Refused {
                    peer: Some(b.id),
                    reason: Refusal::NoSuchRequest
                }
            )]
        );
    }

    #[test]
    fn leaving_ends_requests_and_tells_everyone_but_stale_sessions_do_nothing() {
        let (mut r, a, b, now) = two();
        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        let out = r.handle_leave(b.id, 2);
        assert!(out.contains(&(
            a.id,
            ServerMsg::Closed {
                peer: b.id,
                direction: Direction::Incoming,
                reason: CloseReason::PeerLeft
            }
        )));
        let lefts = out
            .iter()
            .filter(|o| **o == (a.id, ServerMsg::PeerLeft { id: b.id }))
            .count();
        assert_eq!(lefts, 1, "told once: {out:?}");
        assert_eq!(r.online(), 1);

        // bob reconnected (session 4) before his old session (3) noticed it was dead:
        // the old session's end changes nothing.
        r.handle_join(b.clone(), 3, addr(3), vec![]);
        r.handle_join(b.clone(), 4, addr(4), vec![]);
        assert!(r.handle_leave(b.id, 3).is_empty());
        assert_eq!(r.online(), 2);
        assert!(r
            .handle_leave(b.id, 4)
            .contains(&(a.id, ServerMsg::PeerLeft { id: b.id })));
    }

    #[test]
    fn a_replacing_session_ends_the_old_sessions_requests() {
        let (mut r, a, b, now) = two();
        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        let out = r.handle_join(b.clone(), 3, addr(3), vec![]);
        assert!(out.contains(&(
            a.id,
            ServerMsg::Closed {
                peer: b.id,
                direction: Direction::Incoming,
                reason: CloseReason::PeerLeft
            }
        )));
        // bob is told nothing before its Welcome, and nobody hears it left.
        let to_bob: Vec<_> = out.iter().filter(|(to, _)| *to == b.id).collect();
        assert!(
            matches!(to_bob[0].1, ServerMsg::Welcome { .. }),
            "{to_bob:?}"
        );
        assert!(!out
            .iter()
            .any(|(_, m)| matches!(m, ServerMsg::PeerLeft { .. })));
        assert!(out.contains(&(a.id, ServerMsg::PeerJoined(b.clone()))));
        // bob can ask again at once.
        let out = r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        assert_eq!(out[0], (b.id, ServerMsg::Pending { peer: a.id }));
    }

    #[test]
    fn large_snapshots_are_split_into_bounded_frames() {
        let mut r = Registry::new(BrokerConfig::default());
        let n = PEERS_PER_FRAME * 2 + 5;
        for i in 0..n as u64 {
            r.handle_join(node(100 + i, &format!("n{i}")), i, addr(1), vec![]);
        }
        let me = node(1, "me");
        let out = r.handle_join(me.clone(), 10_000, addr(2), vec![]);
        let mine: Vec<&ServerMsg> = out
            .iter()
            .filter(|(to, _)| *to == me.id)
            .map(|(_, m)| m)
            .collect();
        let listed: usize = mine
            .iter()
            .map(|m| match m {
                ServerMsg::Welcome { peers, .. } | ServerMsg::Peers(peers) => {
                    assert!(peers.len() <= PEERS_PER_FRAME);
                    peers.len()
                }
                other => panic!("unexpected {other:?}"),
            })
            .sum();
        assert_eq!(listed, n);
        assert!(
            matches!(mine[0], ServerMsg::Welcome { .. }),
            "the Welcome comes first"
        );
        for m in mine {
            assert!(
                burrow_proto::rendezvous::encode_server(m).is_ok(),
                "every frame fits"
            );
        }
    }

    #[test]
    fn pending_requests_per_node_are_bounded() {
        let mut r = Registry::new(BrokerConfig {
            max_pending_per_node: 2,
            ..Default::default()
        });
        let a = node(1, "a");
        r.handle_join(a.clone(), 1, addr(1), vec![]);
        let now = Instant::now();
        for i in 0..3u64 {
            let p = node(10 + i, &format!("p{i}"));
            r.handle_join(p.clone(), 10 + i, addr(10 + i as u16), vec![]);
            let out = r.handle_msg(now, a.id, ClientMsg::Connect { peer: p.id });
            if i < 2 {
                assert!(matches!(out[0].1, ServerMsg::Pending { .. }));
            } else {
                assert!(matches!(
                    out[0].1,
                    ServerMsg::Refused {
                        reason: Refusal::TooManyRequests,
                        ..
                    }
                ));
            }
        }
    }

    /// alice and bob, linked by bob's accepted request; the link's channel.
    fn linked() -> (Registry, PeerInfo, PeerInfo, Instant, Channel) {
        let (mut r, a, b, now) = two();
        r.handle_msg(now, b.id, ClientMsg::Connect { peer: a.id });
        let out = r.handle_msg(now, a.id, ClientMsg::Accept { peer: b.id });
        let ServerMsg::Accepted(LinkOffer {
            relay: Some(channel),
            ..
        }) = out[0].1
        else {
            panic!("{out:?}")
        };
        (r, a, b, now, channel)
    }

    #[test]
    fn a_link_relays_between_its_two_ends_until_one_leaves() {
        let (mut r, a, b, _, channel) = linked();
        assert_eq!(r.channel_ends(&channel), Some(pair(a.id, b.id)));
        assert_eq!(r.channel_ends(&Channel([0; 16])), None);
        r.handle_leave(a.id, 1);
        assert_eq!(r.channel_ends(&channel), None, "a leaving ends its links");
    }

    #[test]
    fn repunch_on_a_link_sends_both_sides_fresh_tickets_at_most_every_two_seconds() {
        let (mut r, a, b, now, channel) = linked();
        let later = now + REPUNCH_INTERVAL;
        r.update_observed(a.id, addr(11));
        let out = r.handle_msg(later, b.id, ClientMsg::Repunch { peer: a.id });
        let [(
            to_b,
            ServerMsg::Punch(LinkOffer {
                peer,
                direction,
                candidates,
                punch,
                relay,
                ..
            }),
        ), (
            to_a,
            ServerMsg::Punch(LinkOffer {
                punch: punch_a,
                direction: dir_a,
                ..
            }),
        )] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*to_b, *peer, *direction),
            (b.id, a.id, Direction::Outgoing)
        );
        assert_eq!((*to_a, *dir_a), (a.id, Direction::Incoming));
        assert_eq!(punch, punch_a, "one ticket for both");
        assert_eq!(*relay, Some(channel), "the same link");
        assert_eq!(candidates[0], addr(11), "the address the server sees now");
        // Both sides noticed at once: one punch is enough.
        assert!(r
            .handle_msg(later, a.id, ClientMsg::Repunch { peer: b.id })
            .is_empty());
    }

    #[test]
    fn without_a_link_both_sides_must_ask_before_addresses_are_shared() {
        let (mut r, a, b, now) = two();
        // No request was ever accepted: bob alone learns nothing.
        assert!(r
            .handle_msg(now, b.id, ClientMsg::Repunch { peer: a.id })
            .is_empty());
        assert_eq!(r.channels.len(), 0);
        // alice asks too (both came back after a server restart): a new link.
        let out = r.handle_msg(now, a.id, ClientMsg::Repunch { peer: b.id });
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(
            out[0].1,
            ServerMsg::Punch(LinkOffer { relay: Some(_), .. })
        ));
        // Released: relaying stops.
        let Some(channel) = r.channels.keys().next().copied() else {
            panic!("no channel")
        };
        r.handle_msg(now, b.id, ClientMsg::Release { peer: a.id });
        assert_eq!(r.channel_ends(&channel), None);
        // A lone wish expires.
        r.handle_msg(now, b.id, ClientMsg::Repunch { peer: a.id });
        r.handle_timeout(now + Duration::from_secs(61));
        assert!(r
            .handle_msg(
                now + Duration::from_secs(61),
                a.id,
                ClientMsg::Repunch { peer: b.id }
            )
            .is_empty());
    }

    #[test]
    fn relayed_bytes_are_charged_to_the_sender_rate_then_quota() {
        let mut r = Registry::new(BrokerConfig {
            relay_rate: 1000,
            relay_burst: 2000,
            relay_quota: 5000,
            ..BrokerConfig::default()
        });
        let a = node(1, "alice");
        r.handle_join(a.clone(), 1, addr(1), vec![]);
        let t0 = Instant::now();
        assert_eq!(r.charge_relay(t0, a.id, 1500), Ok(()));
        assert_eq!(r.charge_relay(t0, a.id, 1500), Err(RelayDrop::OverRate));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(r.charge_relay(t1, a.id, 1500), Ok(()));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(r.charge_relay(t2, a.id, 1000), Ok(()));
        let t3 = t2 + Duration::from_secs(2);
        assert_eq!(
            r.charge_relay(t3, a.id, 1000),
            Err(RelayDrop::OverQuota { first: true })
        );
        let t4 = t3 + Duration::from_secs(2);
        assert_eq!(
            r.charge_relay(t4, a.id, 10),
            Err(RelayDrop::OverQuota { first: false })
        );
    }

    #[test]
    fn the_relay_total_is_shared_by_the_nodes_relaying_now() {
        let mut r = Registry::new(BrokerConfig {
            relay_total: 1_000_000,
            ..BrokerConfig::default()
        });
        let (a, b) = (node(1, "alice"), node(2, "bob"));
        r.handle_join(a.clone(), 1, addr(1), vec![]);
        r.handle_join(b.clone(), 2, addr(2), vec![]);
        // How many bytes `id` gets through in one second, 10 KB at a time.
        let second = |r: &mut Registry, t0: Instant, ids: &[NodeId]| -> Vec<usize> {
            let mut got = vec![0; ids.len()];
            for ms in 0..1000u64 {
                let t = t0 + Duration::from_millis(ms);
                for (i, id) in ids.iter().enumerate() {
                    if r.charge_relay(t, *id, 1000).is_ok() {
                        got[i] += 1000;
                    }
                }
            }
            got
        };
        let t0 = Instant::now();
        // Alone, alice gets the whole total (and its first burst).
        let alone = second(&mut r, t0, &[a.id]);
        assert!((1_000_000..=1_150_000).contains(&alone[0]), "{alone:?}");
        // With bob relaying too, each gets half.
        let t1 = t0 + Duration::from_secs(1);
        let both = second(&mut r, t1, &[a.id, b.id]);
        for got in &both {
            assert!((450_000..=620_000).contains(got), "{both:?}");
        }
        // Bob stops; a second later alice has it all again.
        let t2 = t1 + Duration::from_secs(2);
        let again = second(&mut r, t2, &[a.id]);
        assert!(again[0] >= 950_000, "{again:?}");
    }

    #[test]
    fn links_per_node_are_bounded_oldest_first() {
        let mut r = Registry::new(BrokerConfig {
            max_links_per_node: 2,
            ..BrokerConfig::default()
        });
        let hub = node(1, "hub");
        r.handle_join(hub.clone(), 1, addr(1), vec![]);
        let mut t = Instant::now();
        let mut channels = Vec::new();
        for i in 0..3u64 {
            let other = node(10 + i, &format!("n{i}"));
            r.handle_join(other.clone(), 10 + i, addr(10 + i as u16), vec![]);
            t += Duration::from_secs(1);
            r.handle_msg(t, other.id, ClientMsg::Connect { peer: hub.id });
            let out = r.handle_msg(t, hub.id, ClientMsg::Accept { peer: other.id });
            let ServerMsg::Accepted(LinkOffer { relay: Some(c), .. }) = out[0].1 else {
                panic!("{out:?}")
            };
            channels.push(c);
        }
        assert_eq!(r.channel_ends(&channels[0]), None, "the oldest link ended");
        assert!(r.channel_ends(&channels[1]).is_some());
        assert!(r.channel_ends(&channels[2]).is_some());
    }
}
