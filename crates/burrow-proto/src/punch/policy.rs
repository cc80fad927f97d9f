//! How a node makes and keeps a link's path, as a policy with no I/O: which
//! ways to try and in which order when the server makes a link ([`plan`]),
//! what to tell the user when none works ([`Why`]), and when a link that
//! isn't direct looks for a direct path again ([`Repunch`]).
//!
//! The order, when nothing forbids it: the side that asked dials at once
//! through the relay (the first message never waits for a punch); both sides
//! punch over UDP; if UDP finds nothing, both try TCP simultaneous open,
//! together (their UDP punches end at the same deadline). Where UDP can't
//! work at all (either side reaches the server only over TCP), TCP starts at
//! once. A relayed link asks for a fresh punch after [`REPUNCH_FIRST`],
//! doubling up to [`REPUNCH_MAX`]; a found path resets the wait, and a lost
//! one asks at once.

use std::time::{Duration, Instant};

/// Which paths a node's links may take (`burrow up --direct-only`,
/// `--relay-only`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathPolicy {
    /// Relayed first where needed, direct as soon as a punch finds a way.
    #[default]
    Any,
    /// Never through the relay: a link with no direct path fails, saying so.
    DirectOnly,
    /// Never punched: peers get none of our addresses from the server and
    /// every link runs through the relay, so only the server sees where we are.
    RelayOnly,
}

/// What a node knows when the server makes (or remakes) a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Our policy.
    pub policy: PathPolicy,
    /// The peer takes relayed links only.
    pub peer_relay_only: bool,
    /// The link has a relay channel we may use (never with
    /// [`PathPolicy::DirectOnly`]).
    pub has_relay: bool,
    /// We asked, and have no connection with the peer yet: we dial.
    pub dials: bool,
    /// Either side reaches the server only over TCP, so UDP can't work
    /// between us.
    pub udp_hopeless: bool,
}

/// When the dialing side dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    /// We don't (the other side does, or the connection is up).
    No,
    /// At once, through the relay.
    Now,
    /// Once a punch found a direct path (there is no relay to start on).
    WhenDirect,
}

/// What to do with a link the server made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No punching (either side is relay-only): the relay carries the link.
    Relay {
        /// We dial, through the relay.
        dial: bool,
    },
    /// Punch: over UDP first (unless `udp` is false: it can't work), then
    /// TCP simultaneous open if UDP found nothing.
    Punch {
        /// Try UDP first.
        udp: bool,
        /// When we dial.
        dial: Dial,
    },
    /// The link can't be made; the dialing side tells the user why.
    Fail(Why),
    /// Nothing for us to do: the other side dials (or fails) on its own.
    Idle,
}

/// Why a link could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The peer is relay-only, and we never relay.
    PeerRelayOnly,
    /// Relay-only, but the server doesn't relay.
    NoRelay,
    /// No punch found a direct path, and we never relay.
    NoDirectPathDirectOnly,
    /// No punch found a direct path, and the server doesn't relay.
    NoDirectPath,
}

impl Why {
    /// In words, for the user; `peer` is how the peer is named.
    pub fn message(self, peer: &str) -> String {
        match self {
            Why::PeerRelayOnly => format!(
                "{peer} takes relayed links only (--relay-only), and this node never relays (--direct-only)"
            ),
            Why::NoRelay => {
                "no relay (the server does not relay), and relay-only links are never punched".into()
            }
            Why::NoDirectPathDirectOnly => {
                "no direct path (--direct-only: the relay is never used)".into()
            }
            Why::NoDirectPath => "no direct path, and the server does not relay".into(),
        }
    }
}

/// What to do with a link the server made, given `f`.
pub fn plan(f: Facts) -> Plan {
    if f.policy == PathPolicy::RelayOnly || f.peer_relay_only {
        let why = if f.policy == PathPolicy::DirectOnly {
            Some(Why::PeerRelayOnly)
        } else if !f.has_relay {
            Some(Why::NoRelay)
        } else {
            None
        };
        return match (why, f.dials) {
            (Some(why), true) => Plan::Fail(why),
            (Some(_), false) => Plan::Idle,
            (None, dial) => Plan::Relay { dial },
        };
    }
    let dial = match (f.dials, f.has_relay) {
        (false, _) => Dial::No,
        (true, true) => Dial::Now,
        (true, false) => Dial::WhenDirect,
    };
    Plan::Punch {
        udp: !f.udp_hopeless,
        dial,
    }
}

/// Why a punch that found nothing ends the link, if it does: when we were to
/// dial once it found a path.
pub fn after_punch(policy: PathPolicy, dial: Dial, found: bool) -> Option<Why> {
    (dial == Dial::WhenDirect && !found).then_some(if policy == PathPolicy::DirectOnly {
        Why::NoDirectPathDirectOnly
    } else {
        Why::NoDirectPath
    })
}

/// First wait before a relayed link looks for a direct path again.
pub const REPUNCH_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between two looks.
pub const REPUNCH_MAX: Duration = Duration::from_secs(300);

/// When a link that isn't direct next asks the server for a fresh punch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repunch {
    /// The wait after the next ask.
    wait: Duration,
    /// When to ask, if scheduled.
    at: Option<Instant>,
}

impl Default for Repunch {
    fn default() -> Self {
        Repunch {
            wait: REPUNCH_FIRST,
            at: None,
        }
    }
}

impl Repunch {
    /// A punch found a direct path, or a direct path was lost (and the
    /// caller asks at once): the next look comes after the shortest wait.
    pub fn found(&mut self, now: Instant) {
        self.wait = REPUNCH_FIRST;
        self.schedule(now);
    }

    /// A punch found nothing: the next look waits longer.
    pub fn missed(&mut self, now: Instant) {
        self.schedule(now);
    }

    /// Whether a look is due at `now` (the caller asks only for a link on
    /// the relay, then calls [`Repunch::missed`]).
    pub fn due(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| at <= now)
    }

    /// When the next look is.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    fn schedule(&mut self, now: Instant) {
        self.at = Some(now + self.wait);
        self.wait = (self.wait * 2).min(REPUNCH_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            policy: PathPolicy::Any,
            peer_relay_only: false,
            has_relay: true,
            dials: true,
            udp_hopeless: false,
        }
    }

    #[test]
    fn the_asker_dials_through_the_relay_at_once_and_both_punch_udp_first() {
        assert_eq!(
            plan(facts()),
            Plan::Punch {
                udp: true,
                dial: Dial::Now
            }
        );
        let acceptor = Facts {
            dials: false,
            ..facts()
        };
        assert_eq!(
            plan(acceptor),
            Plan::Punch {
                udp: true,
                dial: Dial::No
            }
        );
    }

    #[test]
    fn where_udp_cannot_work_tcp_starts_at_once() {
        let f = Facts {
            udp_hopeless: true,
            ..facts()
        };
        assert_eq!(
            plan(f),
            Plan::Punch {
                udp: false,
                dial: Dial::Now
            }
        );
    }

    #[test]
    fn without_a_relay_the_asker_dials_once_direct_or_says_why_not() {
        let f = Facts {
            has_relay: false,
            ..facts()
        };
        let Plan::Punch { dial, .. } = plan(f) else {
            panic!("{:?}", plan(f))
        };
        assert_eq!(dial, Dial::WhenDirect);
        assert_eq!(after_punch(PathPolicy::Any, dial, true), None);
        assert_eq!(
            after_punch(PathPolicy::Any, dial, false),
            Some(Why::NoDirectPath)
        );
        // Direct-only: the relay channel is never taken, so the same path,
        // with its own words.
        assert_eq!(
            after_punch(PathPolicy::DirectOnly, dial, false),
            Some(Why::NoDirectPathDirectOnly)
        );
        assert!(Why::NoDirectPathDirectOnly
            .message("bob")
            .contains("--direct-only"));
        // With a relay, a failed punch leaves the link on it.
        assert_eq!(after_punch(PathPolicy::Any, Dial::Now, false), None);
        assert_eq!(after_punch(PathPolicy::Any, Dial::No, false), None);
    }

    #[test]
    fn relay_only_never_punches_and_fails_clearly_where_no_relay_can_carry_it() {
        for f in [
            Facts {
                policy: PathPolicy::RelayOnly,
                ..facts()
            },
            Facts {
                peer_relay_only: true,
                ..facts()
            },
        ] {
            assert_eq!(plan(f), Plan::Relay { dial: true });
            assert_eq!(
                plan(Facts { dials: false, ..f }),
                Plan::Relay { dial: false }
            );
            assert_eq!(
                plan(Facts {
                    has_relay: false,
                    ..f
                }),
                Plan::Fail(Why::NoRelay)
            );
            assert_eq!(
                plan(Facts {
                    has_relay: false,
                    dials: false,
                    ..f
                }),
                Plan::Idle
            );
        }
        let direct_only_meets_relay_only = Facts {
            policy: PathPolicy::DirectOnly,
            peer_relay_only: true,
            has_relay: false,
            ..facts()
        };
        assert_eq!(
            plan(direct_only_meets_relay_only),
            Plan::Fail(Why::PeerRelayOnly)
        );
        assert!(Why::PeerRelayOnly.message("bob").starts_with("bob takes"));
    }

    #[test]
    fn looks_for_a_direct_path_back_off_and_a_find_or_a_loss_starts_over() {
        let t0 = Instant::now();
        let mut r = Repunch::default();
        assert!(!r.due(t0), "nothing scheduled yet");
        r.missed(t0);
        assert_eq!(r.at(), Some(t0 + REPUNCH_FIRST));
        assert!(!r.due(t0 + REPUNCH_FIRST - Duration::from_millis(1)));
        assert!(r.due(t0 + REPUNCH_FIRST));
        // Each miss doubles the next wait: 10, 20, 40, ... up to 300 s.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let at = r.at().unwrap();
            now = at;
            r.missed(now);
            waits.push((r.at().unwrap() - now).as_secs());
        }
        assert_eq!(waits, [20, 40, 80, 160, 300, 300, 300, 300]);
        // A found path resets it (so does a lost one: the caller asks at
        // once, then as after a find).
        r.found(now);
        assert_eq!(r.at(), Some(now + REPUNCH_FIRST));
        r.missed(now);
        assert_eq!(r.at(), Some(now + 2 * REPUNCH_FIRST));
        r.found(now);
        assert_eq!(r.at(), Some(now + REPUNCH_FIRST));
    }
}
