//! Hole punching, sans-IO: both sides probe every candidate address of the other
//! at once; the first address whose probe is acknowledged is a path that works
//! both ways (our probe reached them, their answer reached us).
//!
//! ```text
//! requester                                     acceptor
//!   |-- Probe{nonce} to each candidate -->X (dropped by the acceptor's NAT: no mapping yet)
//!   |<-------------------- Probe{nonce'} --|  opens the acceptor's NAT toward us;
//!   |-- Ack{nonce'} ---------------------->|  our NAT lets it in (we sent there first)
//!   |<------------------------ Ack{nonce} -|  → both: Success(addr)
//! ```
//!
//! Probes are burrow datagrams on the node's one UDP socket: a 4-byte magic whose
//! first byte clears QUIC's fixed bit, then the kind, the session id the server
//! handed both sides, a nonce, and a 16-byte BLAKE3 tag keyed with the session
//! secret (also from the server, over TLS). A stranger can neither forge a probe
//! nor reflect ours back at us (the sender's role is in the tag).
//!
//! [`PunchSession`] takes time as an argument and never touches a socket; the
//! driver in `burrow-net` feeds it datagrams and timeouts and sends what it polls.
//!
//! **Opening probes.** A router without an input firewall accepts a probe
//! that arrives before its own side has sent toward us, keeps a conntrack
//! entry for it, and then maps its side's probes to us to *another* port (the
//! tuple is taken): neither side ever hears the other. So with
//! [`PunchConfig::open_ttl`] set, a session's first datagram to each candidate
//! is a probe with a small TTL that passes our own NAT (making the mapping
//! and the filter entry toward the peer) and dies before the peer's; full
//! probes begin [`PunchConfig::head_start`] later, by which time the peer has
//! opened its side too. Every probe that then arrives finds its way open.
//!
//! Behind hard NATs ([`strategy`]) a session also probes from side sockets
//! (datagrams carry the [`Local`] socket they leave from or came in on), sprays
//! random ports of the peer's address, or probes ports predicted for it. Every
//! probe's nonce remembers its socket, address and [`Method`], so the success
//! event says which of them found the path.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub mod policy;
mod probe;
#[cfg(test)]
mod sim;
pub mod strategy;

pub use probe::{check_stream_proof, session_of, stream_proof};
use probe::{decode, encode};
use strategy::PortWalk;
pub use strategy::{Local, Mapping, Method, NatInfo, Strategy};

/// First bytes of every punch datagram. `0x00` clears QUIC's fixed bit; bytes 4..8
/// can never be STUN's cookie (byte 4 is the kind, 1 or 2).
pub const MAGIC: [u8; 4] = [0x00, b'b', b'r', b'w'];
/// Size of a punch datagram.
pub const DATAGRAM_LEN: usize = 4 + 1 + 16 + 8 + 16;
/// Most candidate addresses probed (ours from the server plus peer-reflexive
/// ones), besides side sockets' and predicted ones.
pub const MAX_CANDIDATES: usize = 24;
/// Most outstanding nonces remembered (a spray's 2 000 and the candidates'
/// probes fit); the oldest are forgotten first.
const MAX_NONCES: usize = 4096;

/// What the server hands both sides of an accepted request.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchTicket {
    /// Names this punch; probes of other sessions are ignored.
    pub session: [u8; 16],
    /// Keys the probes' tags.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for PunchTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PunchTicket({})", hex::encode(&self.session[..4]))
    }
}

impl PunchTicket {
    /// A fresh random ticket.
    pub fn random<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut t = PunchTicket {
            session: [0; 16],
            secret: [0; 32],
        };
        rng.fill_bytes(&mut t.session);
        rng.fill_bytes(&mut t.secret);
        t
    }
}

/// Which side of the request we are (part of every tag, so probes can't be
/// reflected back at their sender).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We asked for the connection.
    Requester,
    /// We accepted it.
    Acceptor,
}

impl Role {
    /// The other side's role.
    pub fn other(self) -> Role {
        match self {
            Role::Requester => Role::Acceptor,
            Role::Acceptor => Role::Requester,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Role::Requester => 1,
            Role::Acceptor => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Probe = 1,
    Ack = 2,
}

/// How long full probes wait after the opening ones by default: longer than
/// the two sides' start times differ by (both hear from the server at about
/// once; a far peer hears later by at most the time a probe takes to reach it),
/// short beside a punch.
pub const OPEN_HEAD_START: Duration = Duration::from_millis(20);

/// Timing of a punch. Defaults: probe each candidate at once, then after 50, 100,
/// 200 ms and every 400 ms after that, for at most 10 s; no opening probes and
/// no head start.
#[derive(Clone, Debug)]
pub struct PunchConfig {
    /// Delay before a candidate's second probe; it doubles up to `max_interval`.
    pub first_interval: Duration,
    /// Longest delay between two probes to one candidate.
    pub max_interval: Duration,
    /// Give up after this long.
    pub deadline: Duration,
    /// Keep answering the peer's probes this long after we succeeded, so it
    /// succeeds too.
    pub linger: Duration,
    /// The TTL of opening probes (see the module's docs): enough hops to pass
    /// our own NATs, too few to reach the peer's. `None` (no NAT of ours to
    /// open) sends none and starts full probes at once.
    pub open_ttl: Option<u8>,
    /// How long full probes wait: after the opening ones, or, with none to
    /// send (no NAT of ours), after the start, so that a peer behind a NAT
    /// without a firewall has opened its side before our probes arrive. Zero
    /// by default; nodes use [`OPEN_HEAD_START`].
    pub head_start: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            first_interval: Duration::from_millis(50),
            max_interval: Duration::from_millis(400),
            deadline: Duration::from_secs(10),
            linger: Duration::from_secs(3),
            open_ttl: None,
            head_start: Duration::ZERO,
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// From which of our sockets.
    pub from: Local,
    /// What.
    pub data: Vec<u8>,
    /// The IP TTL (hop limit) to send with, when not the socket's default:
    /// an opening probe's, which must die between our NAT and the peer's.
    pub ttl: Option<u8>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PunchEvent {
    /// `addr`, probed from our socket `local`, answered: a path that works
    /// both ways, found by `method`.
    Success {
        /// The peer's address on that path.
        addr: SocketAddr,
        /// Our socket on that path.
        local: Local,
        /// What found it.
        method: Method,
    },
    /// The deadline passed without success.
    Failed,
}

#[derive(Debug)]
struct Candidate {
    addr: SocketAddr,
    local: Local,
    method: Method,
    next_at: Instant,
    interval: Duration,
    max_interval: Duration,
    /// Its next probe is an opening one (TTL-limited).
    opening: bool,
    /// Every probe of it is TTL-limited: a side socket's, which only holds its
    /// mapping open and must never reach the peer's NAT before the peer's
    /// spray has (it would take the port the spray looks for).
    limited: bool,
}

/// Random-port probing of one address.
#[derive(Debug)]
struct Spray {
    ip: IpAddr,
    ports: PortWalk,
    left: u32,
    next_at: Instant,
}

/// One side of one punch.
#[derive(Debug)]
pub struct PunchSession {
    ticket: PunchTicket,
    role: Role,
    config: PunchConfig,
    candidates: Vec<Candidate>,
    /// How many of `candidates` are ordinary (server-given or peer-reflexive).
    ordinary: usize,
    spray: Option<Spray>,
    /// Nonces of our probes → where they went and why, oldest first in `order`.
    sent: HashMap<u64, (Local, SocketAddr, Method)>,
    order: VecDeque<u64>,
    next_nonce: u64,
    deadline: Instant,
    succeeded: Option<(SocketAddr, Instant)>,
    finished: bool,
    outbox: VecDeque<Transmit>,
    events: VecDeque<PunchEvent>,
}

impl PunchSession {
    /// Starts probing `candidates` at `now`. `nonce_seed` comes from the caller's
    /// RNG (seeded in tests).
    pub fn new(
        now: Instant,
        role: Role,
        ticket: PunchTicket,
        candidates: &[SocketAddr],
        config: PunchConfig,
        nonce_seed: u64,
    ) -> Self {
        Self::with_strategy(
            now,
            role,
            ticket,
            candidates,
            &Strategy::default(),
            config,
            nonce_seed,
        )
    }

    /// Like [`Self::new`], doing `strategy`'s extra work for hard NATs too: side
    /// sockets probe the first candidate, the spray and predicted ports start
    /// at once.
    pub fn with_strategy(
        now: Instant,
        role: Role,
        ticket: PunchTicket,
        candidates: &[SocketAddr],
        strategy: &Strategy,
        config: PunchConfig,
        nonce_seed: u64,
    ) -> Self {
        let mut s = PunchSession {
            ticket,
            role,
            deadline: now + config.deadline,
            config,
            candidates: Vec::new(),
            ordinary: 0,
            spray: strategy.spray.map(|ip| Spray {
                ip,
                ports: PortWalk::new(nonce_seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15),
                left: strategy::SPRAY_BUDGET,
                next_at: now + strategy::BIRTHDAY_AFTER,
            }),
            sent: HashMap::new(),
            order: VecDeque::new(),
            next_nonce: nonce_seed,
            succeeded: None,
            finished: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        };
        // Paired prediction: these are our first new mappings, in order.
        let predicted = strategy.predicted.iter().take(strategy::PREDICTED.into());
        if strategy.predicted_first {
            for &addr in predicted.clone() {
                let interval = s.config.first_interval;
                s.push(now, addr, Local::MAIN, Method::Predicted, interval);
            }
        }
        // The peer's port mapping next, so it is labelled as such even when
        // the server lists it among the candidates too.
        if let Some(mapped) = strategy.mapped {
            let interval = s.config.first_interval;
            s.push(now, mapped, Local::MAIN, Method::PortMapping, interval);
        }
        for &addr in candidates {
            s.add_candidate(now, addr);
        }
        if let Some(&first) = candidates.first() {
            let start = now + strategy::BIRTHDAY_AFTER;
            for i in 1..=strategy.side_sockets.min(strategy::SIDE_SOCKETS) {
                s.push(
                    start,
                    first,
                    Local(i),
                    Method::Birthday,
                    strategy::SIDE_INTERVAL,
                );
            }
        }
        if !strategy.predicted_first {
            for &addr in predicted {
                let interval = s.config.first_interval;
                s.push(now, addr, Local::MAIN, Method::Predicted, interval);
            }
        }
        s
    }

    /// The session id this machine answers to.
    pub fn session(&self) -> [u8; 16] {
        self.ticket.session
    }

    /// Adds a candidate (ignored when known or when the list is full).
    pub fn add_candidate(&mut self, now: Instant, addr: SocketAddr) {
        self.add_ordinary(now, Local::MAIN, addr, Method::Probe);
    }

    fn add_ordinary(&mut self, now: Instant, local: Local, addr: SocketAddr, method: Method) {
        if self.ordinary < MAX_CANDIDATES && !self.knows(local, addr) {
            self.ordinary += 1;
            let interval = self.config.first_interval;
            self.push(now, addr, local, method, interval);
        }
    }

    fn knows(&self, local: Local, addr: SocketAddr) -> bool {
        self.candidates
            .iter()
            .any(|c| c.addr == addr && c.local == local)
    }

    /// Adds a candidate probed at `now`, then after `first`, doubling up to
    /// the configured maximum (side sockets: every `first`).
    fn push(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        local: Local,
        method: Method,
        first: Duration,
    ) {
        if self.knows(local, addr) {
            return;
        }
        let side =
            local != Local::MAIN && method == Method::Birthday && first == strategy::SIDE_INTERVAL;
        let max_interval = if side {
            first
        } else {
            self.config.max_interval
        };
        let opening = self.config.open_ttl.is_some();
        self.candidates.push(Candidate {
            addr,
            local,
            method,
            next_at: if opening {
                now
            } else {
                now + self.config.head_start
            },
            interval: first,
            max_interval,
            opening,
            limited: opening && side,
        });
    }

    /// Feeds a punch datagram that came from `from` on our socket `local`.
    /// Returns false when it is not a valid datagram of this session (the
    /// caller may count that as misbehaviour).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: Local,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Some((kind, role, nonce)) = decode(&self.ticket, data) else {
            return false;
        };
        if role == self.role {
            return false; // our own datagram, reflected
        }
        match kind {
            Kind::Probe => {
                // Answer every probe, even after success: the peer needs our ack.
                let ack = encode(&self.ticket, Kind::Ack, self.role, nonce);
                self.outbox.push_back(Transmit {
                    to: from,
                    from: local,
                    data: ack,
                    ttl: None,
                });
                if self.succeeded.is_none() {
                    // The peer reaches us from `from`: probe back there now (a
                    // "triggered check", as ICE calls it) rather than at the next
                    // retry, and add it if the server didn't know it (a
                    // peer-reflexive candidate).
                    match self
                        .candidates
                        .iter_mut()
                        .find(|c| c.addr == from && c.local == local)
                    {
                        Some(c) => {
                            c.next_at = c.next_at.min(now);
                            // It reached us from there: the way is open, and
                            // the answer must reach it at full TTL.
                            c.opening = false;
                            c.limited = false;
                        }
                        None => {
                            // An address our spray probed: the spray opened
                            // our filter to it, the birthday technique found it.
                            let sprayed = self.spray.is_some()
                                && self.sent.values().any(|&(l, to, m)| {
                                    (l, to, m) == (local, from, Method::Birthday)
                                });
                            let method = if sprayed {
                                Method::Birthday
                            } else {
                                Method::Probe
                            };
                            self.add_ordinary(now, local, from, method);
                            // The peer's probe came in from there: our NAT
                            // holds that way open already.
                            if let Some(c) = self.candidates.last_mut() {
                                if c.addr == from && c.local == local {
                                    c.opening = false;
                                    c.next_at = now;
                                }
                            }
                        }
                    }
                }
            }
            Kind::Ack => {
                let Some(&(sent_from, sent_to, method)) = self.sent.get(&nonce) else {
                    return false;
                };
                if (sent_from, sent_to) != (local, from) {
                    return false;
                }
                if self.succeeded.is_none() && !self.finished {
                    self.succeeded = Some((from, now));
                    self.events.push_back(PunchEvent::Success {
                        addr: from,
                        local,
                        method,
                    });
                }
            }
        }
        true
    }

    /// Advances time: gives up at the deadline, stops lingering after success.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        match self.succeeded {
            Some((_, at)) if now >= at + self.config.linger => self.finished = true,
            None if now >= self.deadline => {
                self.finished = true;
                self.events.push_back(PunchEvent::Failed);
            }
            _ => {}
        }
    }

    /// The next datagram to send now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(t) = self.outbox.pop_front() {
            return Some(t);
        }
        if self.finished || self.succeeded.is_some() || now >= self.deadline {
            return None;
        }
        let head_start = self.config.head_start;
        let open_ttl = self.config.open_ttl;
        if let Some(c) = self.candidates.iter_mut().find(|c| c.next_at <= now) {
            let ttl = if c.opening || c.limited {
                open_ttl
            } else {
                None
            };
            if c.opening {
                // The full probes follow once the peer has opened its side.
                c.opening = false;
                c.next_at = now + head_start.max(Duration::from_millis(1));
            } else {
                c.next_at = now + c.interval;
                c.interval = (c.interval * 2).min(c.max_interval);
            }
            let (to, from, method) = (c.addr, c.local, c.method);
            let mut t = self.probe(to, from, method);
            t.ttl = ttl;
            return Some(t);
        }
        let spray = self
            .spray
            .as_mut()
            .filter(|s| s.left > 0 && s.next_at <= now)?;
        spray.left -= 1;
        spray.next_at = now + strategy::SPRAY_INTERVAL;
        let to = SocketAddr::new(spray.ip, spray.ports.next_port());
        Some(self.probe(to, Local::MAIN, Method::Birthday))
    }

    fn probe(&mut self, to: SocketAddr, from: Local, method: Method) -> Transmit {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        while self.order.len() >= MAX_NONCES {
            if let Some(old) = self.order.pop_front() {
                self.sent.remove(&old);
            }
        }
        self.sent.insert(nonce, (from, to, method));
        self.order.push_back(nonce);
        Transmit {
            to,
            from,
            data: encode(&self.ticket, Kind::Probe, self.role, nonce),
            ttl: None,
        }
    }

    /// When to call [`Self::handle_timeout`] / [`Self::poll_transmit`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        if let Some((_, at)) = self.succeeded {
            return Some(at + self.config.linger);
        }
        let next_probe = self.candidates.iter().map(|c| c.next_at).min();
        let next_spray = self
            .spray
            .as_ref()
            .filter(|s| s.left > 0)
            .map(|s| s.next_at);
        let next = [next_probe, next_spray].into_iter().flatten().min();
        Some(next.map_or(self.deadline, |p| p.min(self.deadline)))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    /// Whether the session has nothing left to do.
    pub fn is_finished(&self) -> bool {
        self.finished && self.outbox.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn ticket() -> PunchTicket {
        PunchTicket::random(&mut rand::rngs::StdRng::seed_from_u64(1))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A requester probing `to_b` and an acceptor probing `aa`, at `now`.
    fn pair(now: Instant, to_b: &[SocketAddr], aa: SocketAddr) -> (PunchSession, PunchSession) {
        let cfg = PunchConfig::default();
        (
            PunchSession::new(now, Role::Requester, ticket(), to_b, cfg.clone(), 1),
            PunchSession::new(now, Role::Acceptor, ticket(), &[aa], cfg, 2),
        )
    }

    /// Success at `addr` on the main socket, by ordinary probing.
    fn probed(addr: SocketAddr) -> Option<PunchEvent> {
        Some(PunchEvent::Success {
            addr,
            local: Local::MAIN,
            method: Method::Probe,
        })
    }

    /// Two sessions joined by a network that drops whatever `blocked` says, with
    /// the given NAT-like address rewriting done by the caller's candidates.
    fn run(
        a: &mut PunchSession,
        a_addr: SocketAddr,
        b: &mut PunchSession,
        b_addr: SocketAddr,
        mut delivered: impl FnMut(SocketAddr, SocketAddr) -> bool,
        start: Instant,
    ) -> (Option<PunchEvent>, Option<PunchEvent>, Duration) {
        let mut now = start;
        let (mut ea, mut eb) = (None, None);
        for _ in 0..20_000 {
            let mut moved = true;
            while moved {
                moved = false;
                while let Some(t) = a.poll_transmit(now) {
                    moved = true;
                    if t.to == b_addr && delivered(a_addr, b_addr) {
                        b.handle_datagram(now, Local::MAIN, a_addr, &t.data);
                    }
                }
                while let Some(t) = b.poll_transmit(now) {
                    moved = true;
                    if t.to == a_addr && delivered(b_addr, a_addr) {
                        a.handle_datagram(now, Local::MAIN, b_addr, &t.data);
                    }
                }
            }
            ea = ea.or(a.poll_event());
            eb = eb.or(b.poll_event());
            if ea.is_some() && eb.is_some() {
                return (ea, eb, now - start);
            }
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { break };
            now = next.max(now + Duration::from_millis(1));
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        (ea.or(a.poll_event()), eb.or(b.poll_event()), now - start)
    }

    #[test]
    fn two_open_sides_succeed_on_the_first_exchange() {
        let now = Instant::now();
        let (aa, ba) = (addr("198.51.100.10:1000"), addr("198.51.100.11:2000"));
        let (mut a, mut b) = pair(now, &[ba], aa);
        let (ea, eb, took) = run(&mut a, aa, &mut b, ba, |_, _| true, now);
        assert_eq!(ea, probed(ba));
        assert_eq!(eb, probed(aa));
        assert_eq!(took, Duration::ZERO);
    }

    #[test]
    fn a_probe_from_the_peer_triggers_ours_at_once() {
        // a's first probe is lost (b wasn't listening yet); b's arrives: a probes
        // b again right away instead of at its next retry.
        let now = Instant::now();
        let (aa, ba) = (addr("198.51.100.10:1000"), addr("198.51.100.11:2000"));
        let (mut a, mut b) = pair(now, &[ba], aa);
        assert!(a.poll_transmit(now).is_some(), "a's first probe (lost)");
        let probe = b.poll_transmit(now).unwrap();
        assert!(a.handle_datagram(now, Local::MAIN, ba, &probe.data));
        let ack = a.poll_transmit(now).unwrap();
        let again = a.poll_transmit(now).expect("a triggered probe, now");
        assert_eq!(again.to, ba);
        assert!(b.handle_datagram(now, Local::MAIN, aa, &ack.data));
        assert!(b.handle_datagram(now, Local::MAIN, aa, &again.data));
        let b_ack = std::iter::from_fn(|| b.poll_transmit(now)).last().unwrap();
        assert!(a.handle_datagram(now, Local::MAIN, ba, &b_ack.data));
        assert_eq!(a.poll_event(), probed(ba));
    }

    #[test]
    fn restricted_nats_open_once_both_have_sent() {
        // Each side drops inbound from the other until it has sent there itself,
        // as a port-restricted NAT does.
        let now = Instant::now();
        let (aa, ba) = (addr("198.51.100.10:1000"), addr("198.51.100.11:2000"));
        let (mut a, mut b) = pair(now, &[addr("10.0.0.5:9"), ba], aa);
        let mut opened = std::collections::HashSet::new();
        let (ea, eb, _) = run(
            &mut a,
            aa,
            &mut b,
            ba,
            |from, to| {
                opened.insert((from, to));
                opened.contains(&(to, from))
            },
            now,
        );
        assert_eq!(ea, probed(ba));
        assert_eq!(eb, probed(aa));
    }

    #[test]
    fn a_blocked_path_fails_at_the_deadline_and_probes_are_paced() {
        let now = Instant::now();
        let config = PunchConfig {
            deadline: Duration::from_secs(2),
            ..Default::default()
        };
        let mut a = PunchSession::new(
            now,
            Role::Requester,
            ticket(),
            &[addr("198.51.100.11:2000")],
            config,
            1,
        );
        let mut sent = 0;
        let mut t = now;
        while t < now + Duration::from_secs(3) {
            while a.poll_transmit(t).is_some() {
                sent += 1;
            }
            a.handle_timeout(t);
            if let Some(PunchEvent::Failed) = a.poll_event() {
                assert!(t >= now + Duration::from_secs(2));
                // 0, 50, 150, 350, then every 400 ms up to 2 s: 8 probes.
                assert!((6..=9).contains(&sent), "sent {sent}");
                return;
            }
            t = a.poll_timeout().unwrap_or(t + Duration::from_millis(10));
        }
        panic!("no Failed event");
    }

    #[test]
    fn a_stream_proof_holds_for_its_ticket_and_role_only() {
        let t = ticket();
        let p = stream_proof(&t, Role::Requester);
        assert!(check_stream_proof(&t, Role::Requester, &p));
        assert!(
            !check_stream_proof(&t, Role::Acceptor, &p),
            "not reflectable"
        );
        let other = PunchTicket {
            secret: [9; 32],
            ..t
        };
        assert!(!check_stream_proof(&other, Role::Requester, &p));
        assert!(!check_stream_proof(&t, Role::Requester, &p[..31]));
    }

    #[test]
    fn forged_reflected_and_foreign_datagrams_are_refused() {
        let now = Instant::now();
        let peer = addr("198.51.100.11:2000");
        let mut a = PunchSession::new(
            now,
            Role::Requester,
            ticket(),
            &[peer],
            PunchConfig::default(),
            1,
        );
        let probe = a.poll_transmit(now).unwrap();
        // Our own probe reflected back.
        assert!(!a.handle_datagram(now, Local::MAIN, peer, &probe.data));
        // A tampered tag.
        let mut forged = probe.data.clone();
        forged[DATAGRAM_LEN - 1] ^= 1;
        assert!(!a.handle_datagram(now, Local::MAIN, peer, &forged));
        // Another session's secret.
        let other = PunchTicket {
            secret: [9; 32],
            ..ticket()
        };
        let mut b = PunchSession::new(now, Role::Acceptor, other, &[], PunchConfig::default(), 2);
        let _ = b.handle_datagram(now, Local::MAIN, addr("198.51.100.10:1"), &probe.data);
        assert!(
            b.poll_transmit(now).is_none(),
            "no answer to a probe it can't verify"
        );
        // An ack for a nonce we never sent to that address.
        let ack = encode(&ticket(), Kind::Ack, Role::Acceptor, 12345);
        assert!(!a.handle_datagram(now, Local::MAIN, peer, &ack));
        assert_eq!(a.poll_event(), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..80), magic in any::<bool>()) {
            if magic && data.len() >= 4 {
                data[..4].copy_from_slice(&MAGIC);
            }
            let now = Instant::now();
            let mut a = PunchSession::new(now, Role::Requester, ticket(), &[], PunchConfig::default(), 1);
            prop_assert!(!a.handle_datagram(now, Local::MAIN, "1.2.3.4:5".parse().unwrap(), &data));
            let _ = session_of(&data);
        }
    }
}
