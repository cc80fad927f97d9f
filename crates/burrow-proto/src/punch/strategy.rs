//! Hard NATs: what to do beyond probing the candidates the server handed us,
//! chosen from how each side's NAT maps ports.
//!
//! A NAT with *endpoint-independent* mapping (RFC 4787: full cone,
//! port-restricted cone, most home routers) keeps one public port per socket,
//! whatever the destination; ordinary probing gets through it. A NAT with
//! *endpoint-dependent* mapping ("symmetric") gives each destination its own
//! public port, so the port the server saw is not the one a peer would have to
//! reach. Two things still work when the other side's mapping is independent:
//!
//! - **Prediction**, for NATs that allocate ports one after another
//!   ([`Mapping::Sequential`]): the node measured its last port and the step; the
//!   peer probes the next [`PREDICTED`] ports after it.
//! - **The birthday paradox**, for random ports ([`Mapping::Random`]): the
//!   symmetric side opens [`SIDE_SOCKETS`] extra sockets that each probe the
//!   peer's one public address, so its NAT holds that many mappings open toward
//!   it; the peer probes random ports of the symmetric side's address. Each probe
//!   hits one of the 256 mappings with probability 256/64 512, so 1 000 probes
//!   succeed with probability 1 − (1 − 1/252)^1000 ≈ 98 %, and the
//!   [`SPRAY_BUDGET`] of 2 000 with 99.96 %.
//!
//! - **Port mapping**: a node whose router granted it a public port (PCP,
//!   NAT-PMP or UPnP) reports it, and the peer probes it like any candidate;
//!   it gets through whatever the router's NAT would do.
//!
//! - **Paired prediction**, for two sequential NATs: each side's first new
//!   mappings are the probes to the other's predicted ports, in order, so our
//!   k-th new port (`ours.last + k·step`) goes toward the peer's k-th, which
//!   the peer opened toward our k-th. Both sides compute the same pairs; the
//!   pairing holds as long as neither NAT hands out a port to anyone else
//!   between the measurement and the punch (a refused punch is measured
//!   again and retried).
//!
//! Two random-port NATs face each other with 64 512² possible pairs: no
//! technique here helps, and the link stays on the relay.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a NAT chooses the public port for a new destination, as the node behind
/// it measured against the server's two STUN ports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mapping {
    /// Not measured (yet), or the server gave no second port to measure with.
    #[default]
    Unknown,
    /// The same public port for every destination (or no NAT at all).
    Independent,
    /// A new port per destination, each `step` after the one before; `last` is
    /// the newest port seen.
    Sequential {
        /// The newest public port measured.
        last: u16,
        /// The distance between consecutive new ports (1 on most such NATs).
        step: i16,
    },
    /// A new, unpredictable port per destination.
    Random,
}

/// What a node tells the server (and the server its peers) about its NAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatInfo {
    /// How its NAT allocates ports.
    pub mapping: Mapping,
    /// A public address its router forwards to it (a port mapping), if any.
    pub mapped: Option<SocketAddr>,
    /// It reaches the server only over TCP: UDP can't reach it, and a punch
    /// goes straight to TCP simultaneous open.
    pub no_udp: bool,
    /// It wants to be reached through the relay only (`burrow up
    /// --relay-only`): the server hands its peers none of its addresses and
    /// nobody punches.
    pub relay_only: bool,
}

/// Steps larger than this are not "sequential" but random.
pub const MAX_STEP: i16 = 16;

impl Mapping {
    /// Classifies two public ports measured one after the other from one
    /// socket: `first` toward the server's main port, `second` toward its other
    /// port.
    pub fn from_ports(first: u16, second: u16) -> Mapping {
        let step = i32::from(second) - i32::from(first);
        match step {
            0 => Mapping::Independent,
            s if s.unsigned_abs() <= MAX_STEP as u32 => Mapping::Sequential {
                last: second,
                step: s as i16,
            },
            _ => Mapping::Random,
        }
    }

    /// Whether the public port depends on the destination.
    pub fn is_dependent(self) -> bool {
        matches!(self, Mapping::Sequential { .. } | Mapping::Random)
    }
}

/// How a punch found its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Probing the addresses the server knew (or the peer's probes revealed).
    Probe,
    /// Probing ports predicted for a sequential NAT.
    Predicted,
    /// The birthday technique: side sockets on one side, random ports on the other.
    Birthday,
    /// Probing the public port the peer's router maps to it (PCP, NAT-PMP, UPnP).
    PortMapping,
    /// TCP simultaneous open (after UDP found nothing), QUIC over the stream.
    Tcp,
}

impl Method {
    /// In words, for people.
    pub fn words(self) -> &'static str {
        match self {
            Method::Probe => "hole punching",
            Method::Predicted => "port prediction",
            Method::Birthday => "birthday probing",
            Method::PortMapping => "port mapping",
            Method::Tcp => "TCP simultaneous open",
        }
    }
}

/// One of our sockets: the endpoint's main socket, or a side socket opened for
/// birthday probing (numbered from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Local(pub u16);

impl Local {
    /// The endpoint's own socket, the one QUIC and the server use.
    pub const MAIN: Local = Local(0);
}

/// The birthday technique starts this long after ordinary probing: a path
/// that ordinary probing can find (a peer whose NAT doesn't filter, or no NAT)
/// is found by then, and the 256 sockets and 2 000 probes are never spent.
/// It also keeps the two techniques from finding *different* paths at once,
/// where each side would settle on its own.
pub const BIRTHDAY_AFTER: Duration = Duration::from_millis(500);
/// Side sockets the random-port side opens.
pub const SIDE_SOCKETS: u16 = 256;
/// How often each side socket probes the peer again (its NAT mapping and the
/// chance to answer the peer stay fresh; the first probe opens the mapping).
pub const SIDE_INTERVAL: Duration = Duration::from_secs(2);
/// Random ports probed at most, per punch.
pub const SPRAY_BUDGET: u32 = 2000;
/// One random-port probe every 4 ms: 250 a second, 11 KB/s, 2 000 in 8 s
/// (inside the punch's 10 s). Fast enough to finish before the side sockets'
/// mappings age, slow enough not to fill a router's queue or look like a flood.
pub const SPRAY_INTERVAL: Duration = Duration::from_millis(4);
/// Ports probed after a sequential NAT's last one.
pub const PREDICTED: u16 = 32;
/// The ports random NATs choose from (Linux uses 1024–65535 for sources above 1023).
const SPRAY_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// The extra work one side of a punch does for hard NATs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Strategy {
    /// Probe the peer's first candidate from this many side sockets.
    pub side_sockets: u16,
    /// Probe random ports at this address.
    pub spray: Option<IpAddr>,
    /// Probe these predicted addresses.
    pub predicted: Vec<SocketAddr>,
    /// Probe this address, the peer's port mapping.
    pub mapped: Option<SocketAddr>,
    /// Probe `predicted` before anything else, in order (paired prediction
    /// between two sequential NATs: our k-th new port goes to the peer's k-th).
    pub predicted_first: bool,
}

impl Strategy {
    /// What to do given our mapping and what the peer said of its NAT, and the
    /// peer's address as the server sees it (its first candidate).
    pub fn choose(own: Mapping, peer: NatInfo, peer_observed: Option<SocketAddr>) -> Strategy {
        let mapped = peer.mapped;
        let Some(observed) = peer_observed else {
            return Strategy {
                mapped,
                ..Strategy::default()
            };
        };
        let strategy = match (own, peer.mapping) {
            // Our ports are random, the peer's aren't: hold many mappings open
            // toward its one address.
            (Mapping::Random, Mapping::Independent) => Strategy {
                side_sockets: SIDE_SOCKETS,
                ..Strategy::default()
            },
            // The peer's are random, ours aren't: look for one of its mappings.
            (Mapping::Independent, Mapping::Random) => Strategy {
                spray: Some(observed.ip()),
                ..Strategy::default()
            },
            // The peer's are sequential: the next ones after its last.
            (Mapping::Independent, Mapping::Sequential { last, step }) => Strategy {
                predicted: predict(observed.ip(), last, step),
                ..Strategy::default()
            },
            // Both are: pair our next ports with the peer's, one by one.
            (Mapping::Sequential { .. }, Mapping::Sequential { last, step }) => Strategy {
                predicted: predict(observed.ip(), last, step),
                predicted_first: true,
                ..Strategy::default()
            },
            _ => Strategy::default(),
        };
        Strategy { mapped, ..strategy }
    }

    /// Whether there is anything beyond ordinary probing.
    pub fn is_hard(&self) -> bool {
        self.side_sockets > 0
            || self.spray.is_some()
            || !self.predicted.is_empty()
            || self.mapped.is_some()
    }
}

/// The [`PREDICTED`] ports a sequential NAT at `ip` hands out after `last`
/// (those inside the port range).
fn predict(ip: IpAddr, last: u16, step: i16) -> Vec<SocketAddr> {
    (1..=PREDICTED)
        .filter_map(|i| {
            let port = i32::from(last) + i32::from(step) * i32::from(i);
            u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .map(|p| SocketAddr::new(ip, p))
        })
        .collect()
}

/// Walks every port of [`SPRAY_PORTS`] once, in an order drawn from `seed`: a
/// fixed stride coprime with the range's size (64 512 = 2¹⁰·3²·7) from a random
/// start, so no port is probed twice.
#[derive(Clone, Debug)]
pub(super) struct PortWalk {
    next: u32,
    stride: u32,
}

impl PortWalk {
    const SIZE: u32 = *SPRAY_PORTS.end() as u32 - *SPRAY_PORTS.start() as u32 + 1;

    pub(super) fn new(seed: u64) -> PortWalk {
        let start = (seed % u64::from(Self::SIZE)) as u32;
        // Odd, and not a multiple of 3 or 7: coprime with 64 512.
        let mut stride = ((seed >> 20) % u64::from(Self::SIZE)) as u32 | 1;
        while stride.is_multiple_of(3) || stride.is_multiple_of(7) {
            stride += 2;
        }
        PortWalk {
            next: start,
            stride: stride % Self::SIZE,
        }
    }

    pub(super) fn next_port(&mut self) -> u16 {
        let port = *SPRAY_PORTS.start() as u32 + self.next;
        self.next = (self.next + self.stride) % Self::SIZE;
        port as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_told_apart_by_two_ports() {
        assert_eq!(Mapping::from_ports(40000, 40000), Mapping::Independent);
        assert_eq!(
            Mapping::from_ports(20004, 20005),
            Mapping::Sequential {
                last: 20005,
                step: 1
            }
        );
        assert_eq!(
            Mapping::from_ports(20010, 20008),
            Mapping::Sequential {
                last: 20008,
                step: -2
            }
        );
        assert_eq!(Mapping::from_ports(1500, 61234), Mapping::Random);
    }

    fn nat(mapping: Mapping) -> NatInfo {
        NatInfo {
            mapping,
            mapped: None,
            no_udp: false,
            relay_only: false,
        }
    }

    #[test]
    fn each_side_does_its_part_and_two_random_nats_do_nothing() {
        use Mapping::*;
        let peer: SocketAddr = "198.51.100.20:20005".parse().unwrap();
        let s = Strategy::choose(Random, nat(Independent), Some(peer));
        assert_eq!(s.side_sockets, SIDE_SOCKETS);
        let s = Strategy::choose(Independent, nat(Random), Some(peer));
        assert_eq!(s.spray, Some(peer.ip()));
        let s = Strategy::choose(
            Independent,
            nat(Sequential {
                last: 20005,
                step: 1,
            }),
            Some(peer),
        );
        assert_eq!(s.predicted.len(), PREDICTED as usize);
        assert_eq!(s.predicted[0], "198.51.100.20:20006".parse().unwrap());
        assert!(!Strategy::choose(Random, nat(Random), Some(peer)).is_hard());
        // Two sequential NATs pair their predictions, before anything else.
        let seq = |last| Sequential { last, step: 1 };
        let s = Strategy::choose(seq(30000), nat(seq(20005)), Some(peer));
        assert!(s.predicted_first && s.predicted.len() == PREDICTED as usize);
        assert_eq!(s.predicted[0], "198.51.100.20:20006".parse().unwrap());
        assert!(!Strategy::choose(Independent, nat(seq(20005)), Some(peer)).predicted_first);
        assert!(!Strategy::choose(Independent, nat(Independent), Some(peer)).is_hard());
        assert!(!Strategy::choose(Unknown, nat(Random), Some(peer)).is_hard());
        // A peer's port mapping is probed whatever the NATs are.
        let mapped: SocketAddr = "198.51.100.20:40001".parse().unwrap();
        let s = Strategy::choose(
            Random,
            NatInfo {
                mapping: Random,
                mapped: Some(mapped),
                no_udp: false,
                relay_only: false,
            },
            Some(peer),
        );
        assert_eq!(s.mapped, Some(mapped));
        assert!(s.is_hard() && s.side_sockets == 0 && s.spray.is_none());
        // Prediction stays inside the port range.
        let s = Strategy::choose(
            Independent,
            nat(Sequential {
                last: 65530,
                step: 1,
            }),
            Some(peer),
        );
        assert_eq!(s.predicted.len(), 5);
    }

    #[test]
    fn the_port_walk_visits_every_port_once() {
        for seed in [0, 1, 12345, u64::MAX] {
            let mut w = PortWalk::new(seed);
            let mut seen = vec![false; 65536];
            for _ in 0..PortWalk::SIZE {
                let p = w.next_port();
                assert!(p >= 1024);
                assert!(!seen[p as usize], "port {p} twice (seed {seed})");
                seen[p as usize] = true;
            }
        }
    }
}
