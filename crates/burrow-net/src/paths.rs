//! Paths to peers, behind one stable address per peer.
//!
//! quinn talks to a peer at a *virtual* address (in 240.0.0.0/4, reserved and
//! never routed) that stays the same for the life of the link. The shared socket
//! decides, packet by packet, how that address is reached: directly at the
//! address a punch validated, or through the server's relay channel while there
//! is none. Packets arriving either way are handed to quinn as coming from the
//! virtual address. So a connection moves between relay and direct (and back,
//! when a direct path dies) without quinn noticing: no migration, no new
//! handshake, no stream interrupted. (iroh's "magicsock" works the same way.)
//!
//! A direct path is watched: when we have sent on it and heard nothing back on it
//! for a while, [`PathTable::health`] says so, and the node pings, then falls
//! back to the relay and punches again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::Waker;
use std::time::{Duration, Instant};

use burrow_proto::relay::Channel;
use burrow_proto::NodeId;

use crate::side::Via;

/// Whether `addr` is a linked peer's virtual address, not a real one
/// (see [`crate::virt`]).
pub fn is_virtual(addr: SocketAddr) -> bool {
    crate::virt::kind(addr) == Some(crate::virt::Kind::Peer)
}

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// How a peer is reached right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Directly, at this address.
    Direct(SocketAddr),
    /// Through the relay at this server address.
    Relayed(SocketAddr),
    /// Not at all yet (no relay, no punched path).
    Unreachable,
}

/// What the table knows about one peer's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStatus {
    /// quinn's address for the peer.
    pub virtual_addr: SocketAddr,
    /// How packets go now.
    pub route: Route,
    /// Whether a relay channel is there to fall back on.
    pub has_relay: bool,
}

/// What [`PathTable::health`] advises for a direct path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Heard from recently, or nothing sent that wants an answer.
    Fine,
    /// We sent and heard nothing for a while: provoke an answer (a QUIC ping).
    Check,
    /// Silent past the limit: the path is gone.
    Dead,
}

/// Most addresses remembered as a peer's own, per peer.
const MAX_ALIASES: usize = 8;

#[derive(Debug)]
struct Entry {
    peer: NodeId,
    direct: Option<SocketAddr>,
    /// The side socket the direct path leaves from, when a birthday punch
    /// found it (otherwise the endpoint's own socket).
    via: Option<Via>,
    /// Addresses proven to be the peer's (by an authenticated punch datagram):
    /// QUIC packets from them are the peer's, even before our side of the punch
    /// has finished and we send there ourselves.
    aliases: VecDeque<SocketAddr>,
    relay: Option<(SocketAddr, Channel)>,
    /// The first packet sent on the direct path since we last heard on it.
    unanswered_since: Option<Instant>,
}

impl Entry {
    fn route(&self) -> Route {
        match (self.direct, self.relay) {
            (Some(d), _) => Route::Direct(d),
            (None, Some((server, _))) => Route::Relayed(server),
            (None, None) => Route::Unreachable,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<SocketAddr, Entry>,
    by_peer: HashMap<NodeId, SocketAddr>,
    by_direct: HashMap<SocketAddr, SocketAddr>,
    by_channel: HashMap<Channel, SocketAddr>,
    next: u32,
}

/// Where the socket should send a packet quinn addressed to `dest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SendRoute {
    /// Not a virtual address: send as addressed.
    AsAddressed,
    /// To this real address.
    Direct(SocketAddr),
    /// To this real address, from a side socket.
    DirectVia(Via, SocketAddr),
    /// Wrapped for this channel, to the server at this address.
    Relay(SocketAddr, Channel),
    /// Nowhere to send it yet: drop it (QUIC retransmits).
    Drop,
}

/// Relay datagrams that came before their channel was known, kept this long...
const EARLY_FOR: Duration = Duration::from_secs(2);
/// ...and at most this many.
const EARLY_MAX: usize = 64;
/// Most unwrapped relayed packets waiting for quinn.
const INBOX_MAX: usize = 1024;

/// A relay datagram held for a channel we don't know yet: when it came, its
/// channel, who sent it (the relay), the datagram.
type Early = (Instant, Channel, SocketAddr, Vec<u8>);

/// A relayed packet for quinn: the virtual address it is from, its bytes.
pub(crate) type Unwrapped = (SocketAddr, Vec<u8>);

/// Every peer's path. Shared by the socket (per packet) and the node (per event).
#[derive(Debug, Default)]
pub struct PathTable {
    table: Mutex<Table>,
    /// Relay datagrams on channels not (yet) ours: the requester's first packet
    /// can overtake the server's message that tells us the channel.
    early: Mutex<VecDeque<Early>>,
    /// Unwrapped relayed packets waiting for quinn, and quinn's receive task to
    /// wake when some arrive outside a receive call.
    inbox: Mutex<VecDeque<Unwrapped>>,
    waker: Mutex<Option<Waker>>,
}

impl PathTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .expect("path table lock is never poisoned")
    }

    /// The virtual address for `peer`, created on first use.
    pub fn open(&self, peer: NodeId) -> SocketAddr {
        let mut t = self.lock();
        if let Some(v) = t.by_peer.get(&peer) {
            return *v;
        }
        t.next += 1;
        let v = crate::virt::addr(crate::virt::Kind::Peer, t.next);
        t.by_peer.insert(peer, v);
        t.entries.insert(
            v,
            Entry {
                peer,
                direct: None,
                via: None,
                aliases: VecDeque::new(),
                relay: None,
                unanswered_since: None,
            },
        );
        v
    }

    /// Forgets `peer`'s path: its virtual address reaches nothing any more.
    pub fn remove(&self, peer: &NodeId) {
        let mut t = self.lock();
        let Some(v) = t.by_peer.remove(peer) else {
            return;
        };
        if let Some(e) = t.entries.remove(&v) {
            for a in &e.aliases {
                t.by_direct.remove(a);
            }
            if let Some((_, c)) = e.relay {
                t.by_channel.remove(&c);
            }
        }
    }

    /// Sets (or clears) the relay channel through the server at `server`.
    /// Packets on it that arrived before this are handed to quinn now.
    pub fn set_relay(&self, peer: &NodeId, relay: Option<(SocketAddr, Channel)>) {
        let relay = relay.map(|(s, c)| (canonical(s), c));
        {
            let mut t = self.lock();
            let Some(v) = t.by_peer.get(peer).copied() else {
                return;
            };
            let old = t.entries.get_mut(&v).and_then(|e| {
                let old = e.relay.take();
                e.relay = relay;
                old
            });
            if let Some((_, c)) = old {
                t.by_channel.remove(&c);
            }
            let Some((server, channel)) = relay else {
                return;
            };
            t.by_channel.insert(channel, v);
            let now = Instant::now();
            let mut early = self.early.lock().expect("early lock is never poisoned");
            let mut found = Vec::new();
            early.retain(|(at, c, from, data)| {
                let mine = *c == channel && *from == server;
                if mine && now.saturating_duration_since(*at) < EARLY_FOR {
                    if let Some((_, packet)) = burrow_proto::relay::parse(data) {
                        found.push((v, packet.to_vec()));
                    }
                }
                !mine
            });
            if found.is_empty() {
                return;
            }
            self.inbox
                .lock()
                .expect("inbox lock is never poisoned")
                .extend(found);
        }
        self.wake();
    }

    /// Wakes quinn's receive task (packets are waiting in the inbox).
    pub(crate) fn wake(&self) {
        if let Some(w) = self
            .waker
            .lock()
            .expect("waker lock is never poisoned")
            .take()
        {
            w.wake();
        }
    }

    /// Hands quinn a QUIC packet that a side socket received from `from`, if
    /// `from` is a peer's (see [`crate::side`]).
    pub(crate) fn deliver_direct(&self, from: SocketAddr, packet: &[u8]) {
        let Some(v) = self.route_direct_recv(from) else {
            tracing::trace!(%from, "side socket packet from no peer");
            return;
        };
        if self.push_inbox((v, packet.to_vec())) {
            self.wake();
        }
    }

    /// Keeps a relay datagram whose channel we don't know (yet).
    pub(crate) fn hold_early(&self, channel: Channel, from: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        let mut early = self.early.lock().expect("early lock is never poisoned");
        while early
            .front()
            .is_some_and(|(at, ..)| now.saturating_duration_since(*at) >= EARLY_FOR)
            || early.len() >= EARLY_MAX
        {
            early.pop_front();
        }
        early.push_back((now, channel, canonical(from), data.to_vec()));
    }

    /// Queues relayed packets for quinn (bounded: past that they are lost).
    pub(crate) fn push_inbox(&self, packet: Unwrapped) -> bool {
        let mut q = self.inbox.lock().expect("inbox lock is never poisoned");
        if q.len() >= INBOX_MAX {
            return false;
        }
        q.push_back(packet);
        true
    }

    /// The next relayed packet for quinn.
    pub(crate) fn pop_inbox(&self) -> Option<Unwrapped> {
        self.inbox
            .lock()
            .expect("inbox lock is never poisoned")
            .pop_front()
    }

    /// Remembers quinn's receive task, to wake it when held packets are released.
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut w = self.waker.lock().expect("waker lock is never poisoned");
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    /// Sets (or clears) the direct path. Returns the route before and after.
    pub fn set_direct(&self, peer: &NodeId, direct: Option<SocketAddr>) -> (Route, Route) {
        self.set_path(peer, direct, None)
    }

    /// Sets the direct path to `direct`, leaving from side socket `via` when
    /// given (a birthday punch found it there). Returns the route before and after.
    pub fn set_direct_via(
        &self,
        peer: &NodeId,
        direct: SocketAddr,
        via: Option<Via>,
    ) -> (Route, Route) {
        self.set_path(peer, Some(direct), via)
    }

    fn set_path(
        &self,
        peer: &NodeId,
        direct: Option<SocketAddr>,
        via: Option<Via>,
    ) -> (Route, Route) {
        let mut t = self.lock();
        let Some(v) = t.by_peer.get(peer).copied() else {
            return (Route::Unreachable, Route::Unreachable);
        };
        let direct = direct.map(canonical);
        let Some(e) = t.entries.get_mut(&v) else {
            return (Route::Unreachable, Route::Unreachable);
        };
        let before = e.route();
        e.direct = direct;
        e.via = via;
        e.unanswered_since = None;
        let after = e.route();
        if let Some(d) = direct {
            Self::alias(&mut t, v, d);
        }
        (before, after)
    }

    /// Notes that `addr` is `peer`'s (an authenticated punch datagram came from
    /// it): QUIC packets from there are handed to quinn as the peer's.
    pub fn learn(&self, peer: &NodeId, addr: SocketAddr) {
        let mut t = self.lock();
        if let Some(v) = t.by_peer.get(peer).copied() {
            Self::alias(&mut t, v, canonical(addr));
        }
    }

    fn alias(t: &mut Table, v: SocketAddr, addr: SocketAddr) {
        let Some(e) = t.entries.get_mut(&v) else {
            return;
        };
        if e.aliases.contains(&addr) {
            return;
        }
        e.aliases.push_back(addr);
        let evicted = if e.aliases.len() > MAX_ALIASES {
            e.aliases
                .iter()
                .position(|a| Some(*a) != e.direct)
                .and_then(|i| e.aliases.remove(i))
        } else {
            None
        };
        if let Some(old) = evicted {
            if t.by_direct.get(&old) == Some(&v) {
                t.by_direct.remove(&old);
            }
        }
        // An address is one peer's: the newest proof wins.
        if let Some(prev) = t.by_direct.insert(addr, v) {
            if prev != v {
                if let Some(pe) = t.entries.get_mut(&prev) {
                    pe.aliases.retain(|a| *a != addr);
                    if pe.direct == Some(addr) {
                        pe.direct = None;
                        pe.via = None;
                    }
                }
            }
        }
    }

    /// `peer`'s path, if it has one.
    pub fn status(&self, peer: &NodeId) -> Option<PathStatus> {
        let t = self.lock();
        let v = t.by_peer.get(peer)?;
        let e = t.entries.get(v)?;
        Some(PathStatus {
            virtual_addr: *v,
            route: e.route(),
            has_relay: e.relay.is_some(),
        })
    }

    /// The peer a virtual address stands for.
    pub fn peer_of(&self, addr: SocketAddr) -> Option<NodeId> {
        self.lock().entries.get(&canonical(addr)).map(|e| e.peer)
    }

    /// How `peer`'s direct path is doing: `check` and `dead` are how long a sent
    /// packet may go unanswered before it needs checking, and before it is gone.
    pub fn health(&self, peer: &NodeId, now: Instant, check: Duration, dead: Duration) -> Health {
        let t = self.lock();
        let Some(e) = t.by_peer.get(peer).and_then(|v| t.entries.get(v)) else {
            return Health::Fine;
        };
        match e.unanswered_since {
            Some(since) if e.direct.is_some() => {
                let silent = now.saturating_duration_since(since);
                if silent >= dead {
                    Health::Dead
                } else if silent >= check {
                    Health::Check
                } else {
                    Health::Fine
                }
            }
            _ => Health::Fine,
        }
    }

    /// Where a packet quinn sends to `dest` goes.
    pub(crate) fn route_send(&self, dest: SocketAddr, now: Instant) -> SendRoute {
        let dest = canonical(dest);
        if !is_virtual(dest) {
            return SendRoute::AsAddressed;
        }
        let mut t = self.lock();
        let Some(e) = t.entries.get_mut(&dest) else {
            return SendRoute::Drop;
        };
        match (e.direct, e.relay) {
            (Some(d), _) => {
                e.unanswered_since.get_or_insert(now);
                match &e.via {
                    Some(via) => SendRoute::DirectVia(via.clone(), d),
                    None => SendRoute::Direct(d),
                }
            }
            (None, Some((server, channel))) => SendRoute::Relay(server, channel),
            (None, None) => SendRoute::Drop,
        }
    }

    /// The virtual address a QUIC packet from `from` is for, if `from` is a
    /// peer's direct path (and notes that the path answered).
    pub(crate) fn route_direct_recv(&self, from: SocketAddr) -> Option<SocketAddr> {
        let from = canonical(from);
        let mut t = self.lock();
        let v = *t.by_direct.get(&from)?;
        if let Some(e) = t.entries.get_mut(&v) {
            e.unanswered_since = None;
        }
        Some(v)
    }

    /// The virtual address a relay datagram on `channel` is for, if it came from
    /// the server that relays that channel.
    pub(crate) fn route_relay_recv(
        &self,
        channel: &Channel,
        from: SocketAddr,
    ) -> Option<SocketAddr> {
        let from = canonical(from);
        let t = self.lock();
        let v = *t.by_channel.get(channel)?;
        let e = t.entries.get(&v)?;
        (e.relay.map(|(s, _)| s) == Some(from)).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public()
    }

    #[test]
    fn a_path_moves_from_relay_to_direct_and_back_under_one_address() {
        let paths = PathTable::default();
        let (bob, server, direct) = (
            id(1),
            "198.51.100.1:7700".parse().unwrap(),
            "203.0.113.9:4000".parse().unwrap(),
        );
        let v = paths.open(bob);
        assert!(is_virtual(v));
        assert_eq!(paths.open(bob), v, "one address per peer");
        let now = Instant::now();
        assert_eq!(paths.route_send(v, now), SendRoute::Drop);

        let ch = Channel([3; 16]);
        paths.set_relay(&bob, Some((server, ch)));
        assert_eq!(paths.route_send(v, now), SendRoute::Relay(server, ch));
        assert_eq!(paths.route_relay_recv(&ch, server), Some(v));
        let elsewhere = "198.51.100.66:7700".parse().unwrap();
        assert_eq!(
            paths.route_relay_recv(&ch, elsewhere),
            None,
            "only from the relay"
        );

        assert_eq!(
            paths.set_direct(&bob, Some(direct)),
            (Route::Relayed(server), Route::Direct(direct))
        );
        assert_eq!(paths.route_send(v, now), SendRoute::Direct(direct));
        assert_eq!(paths.route_direct_recv(direct), Some(v));
        assert_eq!(paths.peer_of(v), Some(bob));

        paths.set_direct(&bob, None);
        assert_eq!(paths.route_send(v, now), SendRoute::Relay(server, ch));
        // Late packets from the old path are still bob's.
        assert_eq!(paths.route_direct_recv(direct), Some(v));

        paths.remove(&bob);
        assert_eq!(paths.route_direct_recv(direct), None);
        assert_eq!(paths.route_send(v, now), SendRoute::Drop);
        assert_eq!(paths.route_relay_recv(&ch, server), None);
        assert_ne!(paths.open(bob), v, "addresses are never reused");
    }

    #[test]
    fn a_direct_path_that_stops_answering_needs_a_check_then_is_dead() {
        let paths = PathTable::default();
        let bob = id(1);
        let direct: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let v = paths.open(bob);
        paths.set_direct(&bob, Some(direct));
        let (check, dead) = (Duration::from_secs(1), Duration::from_secs(3));
        let t0 = Instant::now();
        assert_eq!(paths.health(&bob, t0, check, dead), Health::Fine);
        paths.route_send(v, t0);
        paths.route_send(v, t0 + Duration::from_millis(500));
        assert_eq!(
            paths.health(&bob, t0 + Duration::from_millis(900), check, dead),
            Health::Fine
        );
        assert_eq!(
            paths.health(&bob, t0 + Duration::from_secs(2), check, dead),
            Health::Check
        );
        assert_eq!(
            paths.health(&bob, t0 + Duration::from_secs(3), check, dead),
            Health::Dead
        );
        // An answer resets the clock.
        paths.route_direct_recv(direct);
        assert_eq!(
            paths.health(&bob, t0 + Duration::from_secs(9), check, dead),
            Health::Fine
        );
    }

    #[test]
    fn real_addresses_pass_through_and_mapped_ones_match() {
        let paths = PathTable::default();
        let server: SocketAddr = "198.51.100.1:7700".parse().unwrap();
        assert_eq!(
            paths.route_send(server, Instant::now()),
            SendRoute::AsAddressed
        );
        let v = paths.open(id(2));
        let SocketAddr::V4(v4) = v else { panic!() };
        let mapped = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
        assert!(is_virtual(mapped));
        assert_eq!(paths.peer_of(mapped), Some(id(2)));
        assert!(!is_virtual("240.0.0.1:80".parse().unwrap()));
    }

    #[test]
    fn relayed_packets_that_overtake_their_channel_are_delivered_once_it_is_known() {
        let paths = PathTable::default();
        let bob = id(1);
        let server: SocketAddr = "198.51.100.1:7700".parse().unwrap();
        let (ours, other) = (Channel([1; 16]), Channel([2; 16]));
        let mut d = Vec::new();
        burrow_proto::relay::wrap(&ours, b"initial", &mut d);
        paths.hold_early(ours, server, &d);
        burrow_proto::relay::wrap(&other, b"not ours", &mut d);
        paths.hold_early(other, server, &d);
        let v = paths.open(bob);
        assert_eq!(paths.pop_inbox(), None);
        paths.set_relay(&bob, Some((server, ours)));
        assert_eq!(paths.pop_inbox(), Some((v, b"initial".to_vec())));
        assert_eq!(paths.pop_inbox(), None, "only the channel's own packets");
    }

    #[test]
    fn a_proven_address_is_the_peers_before_we_send_there() {
        let paths = PathTable::default();
        let (bob, carol) = (id(1), id(2));
        let (vb, vc) = (paths.open(bob), paths.open(carol));
        let seen: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        assert_eq!(paths.route_direct_recv(seen), None);
        paths.learn(&bob, seen);
        assert_eq!(paths.route_direct_recv(seen), Some(vb));
        assert_eq!(
            paths.route_send(vb, Instant::now()),
            SendRoute::Drop,
            "still not sent there"
        );
        // The address moved to carol (a NAT reused the port): it is hers now.
        paths.learn(&carol, seen);
        assert_eq!(paths.route_direct_recv(seen), Some(vc));
        // Bounded.
        for port in 0..100 {
            paths.learn(&bob, SocketAddr::from(([203, 0, 113, 10], port)));
        }
        let t = paths.lock();
        assert!(t.entries[&vb].aliases.len() <= MAX_ALIASES);
        assert!(t.by_direct.len() <= 2 * MAX_ALIASES);
    }
}
