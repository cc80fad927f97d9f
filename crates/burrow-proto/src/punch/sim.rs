//! Punches between simulated NATs, sans-IO: each side's NAT maps and filters
//! as RFC 4787 describes, datagrams take 10 ms each way, and the sessions run
//! on simulated time. A NAT without a firewall keeps an entry for every
//! datagram it refused and then maps its own side's datagrams toward that
//! sender to another port, as Linux's masquerade does; a datagram with a TTL
//! set (an opening probe) passes its own NAT and reaches no other. The lab runs the same cases through Linux's NAT; these
//! run hundreds of seeds in milliseconds, to measure success rates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// A new random port per (socket, destination).
    Random,
    /// A new port per (socket, destination), one after the other.
    Sequential,
}

struct Nat {
    ip: IpAddr,
    kind: Kind,
    rng: rand::rngs::StdRng,
    next_port: u16,
    /// (our socket, destination) → public port.
    maps: HashMap<(Local, SocketAddr), u16>,
    /// public port → (our socket, the destination it was opened toward).
    reverse: HashMap<u16, Vec<(Local, SocketAddr)>>,
    /// Drops refused datagrams without a trace; without, remembers them.
    firewall: bool,
    /// (public port, remote) of datagrams refused and remembered.
    taken: HashSet<(u16, SocketAddr)>,
    /// (our socket, destination) moved to another port by a taken tuple.
    moved: HashMap<(Local, SocketAddr), u16>,
}

impl Nat {
    fn new(ip: &str, kind: Kind, seed: u64) -> Nat {
        Nat {
            ip: ip.parse().unwrap(),
            kind,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            next_port: 20000,
            maps: HashMap::new(),
            reverse: HashMap::new(),
            firewall: true,
            taken: HashSet::new(),
            moved: HashMap::new(),
        }
    }

    fn without_firewall(mut self) -> Nat {
        self.firewall = false;
        self
    }

    /// The public source of a datagram from `local` to `to`, mapping it if new.
    fn outbound(&mut self, local: Local, to: SocketAddr) -> SocketAddr {
        let key = match self.kind {
            Kind::PortRestricted => (local, "0.0.0.0:0".parse().unwrap()),
            _ => (local, to),
        };
        if let Some(&p) = self.moved.get(&(local, to)) {
            return SocketAddr::new(self.ip, p);
        }
        let port = match self.maps.get(&key) {
            Some(p) => *p,
            None => {
                let p = match self.kind {
                    Kind::PortRestricted => 40000 + local.0,
                    Kind::Random => self.rng.gen_range(1024..=65535),
                    Kind::Sequential => {
                        self.next_port += 1;
                        self.next_port
                    }
                };
                self.maps.insert(key, p);
                p
            }
        };
        let opened = self
            .reverse
            .get(&port)
            .is_some_and(|seen| seen.contains(&(local, to)));
        if !opened && self.taken.contains(&(port, to)) {
            // The tuple is taken by a datagram we refused: another port.
            let p = self.rng.gen_range(1024..=65535);
            self.moved.insert((local, to), p);
            self.reverse.entry(p).or_default().push((local, to));
            return SocketAddr::new(self.ip, p);
        }
        let seen = self.reverse.entry(port).or_default();
        if !seen.contains(&(local, to)) {
            seen.push((local, to));
        }
        SocketAddr::new(self.ip, port)
    }

    /// Which of our sockets a datagram from `from` to our `port` reaches, if
    /// the filter lets it in (only from where that mapping has sent).
    fn inbound(&mut self, from: SocketAddr, port: u16) -> Option<Local> {
        let local = self
            .reverse
            .get(&port)
            .and_then(|seen| seen.iter().find(|(_, to)| *to == from))
            .map(|(l, _)| *l);
        if local.is_none() && !self.firewall {
            self.taken.insert((port, from));
        }
        local
    }
}

const ONE_WAY: Duration = Duration::from_millis(10);

struct Outcome {
    a: Option<PunchEvent>,
    b: Option<PunchEvent>,
    probes: usize,
}

/// Runs a punch between `a` behind `na` and `b` behind `nb` until both have an
/// event or nothing is left to do.
fn punch(a: &mut PunchSession, na: &mut Nat, b: &mut PunchSession, nb: &mut Nat) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    // Datagrams in flight: (arrival, sequence) → (to side b?, local, from, data).
    type InFlight = (bool, Local, SocketAddr, Vec<u8>);
    let mut wire: BTreeMap<(Instant, u64), InFlight> = BTreeMap::new();
    let mut seq = 0u64;
    let (mut ea, mut eb, mut probes) = (None, None, 0);
    for _ in 0..200_000 {
        for to_b in [true, false] {
            let (s, nat, other) = if to_b {
                (&mut *a, &mut *na, &mut *nb)
            } else {
                (&mut *b, &mut *nb, &mut *na)
            };
            while let Some(t) = s.poll_transmit(now) {
                probes += 1;
                let src = nat.outbound(t.from, t.to);
                // An opening probe dies past our NAT.
                if t.to.ip() == other.ip && t.ttl.is_none() {
                    if let Some(local) = other.inbound(src, t.to.port()) {
                        seq += 1;
                        wire.insert((now + ONE_WAY, seq), (to_b, local, src, t.data));
                    }
                }
            }
        }
        ea = ea.or(a.poll_event());
        eb = eb.or(b.poll_event());
        if ea.is_some() && eb.is_some() {
            break;
        }
        let next_wire = wire.keys().next().map(|(at, _)| *at);
        let next = [a.poll_timeout(), b.poll_timeout(), next_wire]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        now = next.max(now);
        while let Some(entry) = wire.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to_b, local, from, data) = entry.remove();
            let s = if to_b { &mut *b } else { &mut *a };
            s.handle_datagram(now, local, from, &data);
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
        if now - start > Duration::from_secs(15) {
            break;
        }
    }
    Outcome {
        a: ea.or(a.poll_event()),
        b: eb.or(b.poll_event()),
        probes,
    }
}

fn ticket(seed: u64) -> PunchTicket {
    PunchTicket::random(&mut rand::rngs::StdRng::seed_from_u64(seed))
}

/// One punch between a requester behind `ka` and an acceptor behind `kb`, each
/// side choosing its strategy from the mappings as a node would.
fn run(ka: Kind, kb: Kind, seed: u64) -> Outcome {
    run_with(ka, kb, seed, &Setup::default())
}

/// How the routers and sessions of a simulated punch differ from the default.
#[derive(Default)]
struct Setup {
    /// Neither router has a firewall.
    no_firewall: bool,
    /// Both sides send opening probes with this TTL.
    open_ttl: Option<u8>,
    /// The acceptor starts this much later than the requester.
    skew: Duration,
}

fn run_with(ka: Kind, kb: Kind, seed: u64, setup: &Setup) -> Outcome {
    let mut na = Nat::new("198.51.100.10", ka, seed);
    let mut nb = Nat::new("198.51.100.20", kb, seed ^ 0xffff);
    if setup.no_firewall {
        na = na.without_firewall();
        nb = nb.without_firewall();
    }
    // The server saw each side at the mapping toward it, and the node measured
    // its mapping against the server's two ports.
    let server: SocketAddr = "198.51.100.1:7700".parse().unwrap();
    let server2: SocketAddr = "198.51.100.1:7701".parse().unwrap();
    let (a_seen, b_seen) = (
        na.outbound(Local::MAIN, server),
        nb.outbound(Local::MAIN, server),
    );
    let a_map = Mapping::from_ports(a_seen.port(), na.outbound(Local::MAIN, server2).port());
    let b_map = Mapping::from_ports(b_seen.port(), nb.outbound(Local::MAIN, server2).port());
    let t = ticket(seed);
    let now = Instant::now();
    let cfg = PunchConfig {
        open_ttl: setup.open_ttl,
        head_start: if setup.open_ttl.is_some() {
            OPEN_HEAD_START
        } else {
            Duration::ZERO
        },
        ..PunchConfig::default()
    };
    let mut a = PunchSession::with_strategy(
        now,
        Role::Requester,
        t,
        &[b_seen],
        &Strategy::choose(a_map, nat(b_map), Some(b_seen)),
        cfg.clone(),
        seed,
    );
    let mut b = PunchSession::with_strategy(
        now + setup.skew,
        Role::Acceptor,
        t,
        &[a_seen],
        &Strategy::choose(b_map, nat(a_map), Some(a_seen)),
        cfg,
        seed.wrapping_mul(31),
    );
    punch(&mut a, &mut na, &mut b, &mut nb)
}

fn nat(mapping: Mapping) -> NatInfo {
    NatInfo {
        mapping,
        mapped: None,
        no_udp: false,
        relay_only: false,
    }
}

fn method(e: &Option<PunchEvent>) -> Option<Method> {
    match e {
        Some(PunchEvent::Success { method, .. }) => Some(*method),
        _ => None,
    }
}

#[test]
fn birthday_probing_gets_through_a_random_port_nat_almost_always() {
    // Both orders: the random side asks, or accepts.
    for (ka, kb) in [
        (Kind::Random, Kind::PortRestricted),
        (Kind::PortRestricted, Kind::Random),
    ] {
        let runs = 200;
        let mut ok = 0;
        let mut most_probes = 0;
        for seed in 0..runs {
            let o = run(ka, kb, seed);
            most_probes = most_probes.max(o.probes);
            // Both sides succeed; at least one knows the birthday technique
            // found the path (the other may see its ordinary probe answered,
            // when a random port hit the mapping of its main socket).
            let (ma, mb) = (method(&o.a), method(&o.b));
            if ma.is_some() && mb.is_some() && [ma, mb].contains(&Some(Method::Birthday)) {
                ok += 1;
            }
        }
        println!("{ka:?} x {kb:?}: {ok}/{runs} direct, at most {most_probes} probes in a punch");
        assert!(ok * 100 >= runs * 97, "{ka:?} x {kb:?}: only {ok}/{runs}");
        // Bounded: the spray's budget, 256 side sockets every 2 s, and the
        // ordinary schedule.
        assert!(most_probes < 2000 + 256 * 6 + 200, "{most_probes} probes");
    }
}

#[test]
fn a_sequential_nat_is_reached_at_a_predicted_port() {
    for (ka, kb) in [
        (Kind::Sequential, Kind::PortRestricted),
        (Kind::PortRestricted, Kind::Sequential),
    ] {
        for seed in 0..50 {
            let o = run(ka, kb, seed);
            let methods: HashSet<_> = [method(&o.a), method(&o.b)].into_iter().collect();
            assert!(
                methods.contains(&Some(Method::Predicted)) && !methods.contains(&None),
                "{ka:?} x {kb:?} seed {seed}: {:?} {:?}",
                o.a,
                o.b
            );
        }
    }
}

#[test]
fn two_random_port_nats_give_up_at_the_deadline() {
    let o = run(Kind::Random, Kind::Random, 7);
    assert_eq!(o.a, Some(PunchEvent::Failed));
    assert_eq!(o.b, Some(PunchEvent::Failed));
}

#[test]
fn port_restricted_pairs_need_no_tricks() {
    let o = run(Kind::PortRestricted, Kind::PortRestricted, 3);
    assert_eq!(method(&o.a), Some(Method::Probe));
    assert_eq!(method(&o.b), Some(Method::Probe));
    assert!(o.probes < 20, "{} probes", o.probes);
}

#[test]
fn without_router_firewalls_an_early_probe_takes_the_port_unless_both_open_first() {
    use self::Kind::*;
    // The failure: the acceptor hears of the punch 5 ms after the requester,
    // whose first probe reaches the acceptor's router first and takes the tuple.
    let early = Setup {
        no_firewall: true,
        skew: Duration::from_millis(5),
        ..Setup::default()
    };
    let o = run_with(PortRestricted, PortRestricted, 1, &early);
    assert_eq!(o.a, Some(PunchEvent::Failed), "{:?}", o.b);
    // Opening probes first: every cell that goes direct with firewalls goes
    // direct without them, for skews up to the head start.
    for (ka, kb) in [
        (PortRestricted, PortRestricted),
        (PortRestricted, Random),
        (Random, PortRestricted),
        (PortRestricted, Sequential),
        (Sequential, PortRestricted),
        (Sequential, Sequential),
    ] {
        for skew_ms in [0, 5, 15] {
            let setup = Setup {
                no_firewall: true,
                open_ttl: Some(2),
                skew: Duration::from_millis(skew_ms),
            };
            let runs = if ka == Random || kb == Random { 40 } else { 10 };
            let ok = (0..runs)
                .filter(|&seed| {
                    let o = run_with(ka, kb, seed, &setup);
                    method(&o.a).is_some() && method(&o.b).is_some()
                })
                .count() as u64;
            assert!(
                ok * 100 >= runs * 95,
                "{ka:?} x {kb:?}, skew {skew_ms} ms: {ok}/{runs}"
            );
        }
    }
}

#[test]
fn two_sequential_nats_pair_their_predicted_ports() {
    for seed in 0..20 {
        let o = run(Kind::Sequential, Kind::Sequential, seed);
        assert_eq!(
            method(&o.a),
            Some(Method::Predicted),
            "seed {seed}: {:?}",
            o.a
        );
        assert_eq!(
            method(&o.b),
            Some(Method::Predicted),
            "seed {seed}: {:?}",
            o.b
        );
    }
}
