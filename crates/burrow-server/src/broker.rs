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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_proto::punch::PunchTicket;
use burrow_proto::rendezvous::{
    ClientMsg, CloseReason, Direction, PeerInfo, Refusal, ServerMsg, PEERS_PER_FRAME,
};
use burrow_proto::NodeId;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Limits of the broker. Defaults assume people answering requests by hand.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// How long a connect request waits for an answer. Default 60 s: long enough
    /// for a person to see the prompt and type `burrow accept`.
    pub request_ttl: Duration,
    /// Most outgoing requests one node may have pending. Default 16.
    pub max_pending_per_node: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            request_ttl: Duration::from_secs(60),
            max_pending_per_node: 16,
        }
    }
}

/// A message for one node.
pub type Out = (NodeId, ServerMsg);

#[derive(Debug)]
struct Online {
    info: PeerInfo,
    session: u64,
    /// Server-observed address first, then the node's LAN addresses.
    candidates: Vec<SocketAddr>,
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
}

impl Registry {
    /// An empty registry drawing punch tickets from the OS's randomness.
    pub fn new(config: BrokerConfig) -> Self {
        Self::with_rng(config, StdRng::from_entropy())
    }

    /// An empty registry drawing punch tickets from `rng`.
    pub fn with_rng(config: BrokerConfig, rng: StdRng) -> Self {
        Registry {
            config,
            rng,
            nodes: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// How many nodes are online.
    pub fn online(&self) -> usize {
        self.nodes.len()
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
        let mut out = if self.nodes.contains_key(&id) {
            self.end_requests_of(id)
        } else {
            Vec::new()
        };
        let mut candidates = vec![observed];
        candidates.extend(lan.into_iter().filter(|a| *a != observed));
        let mut peers: Vec<PeerInfo> = self
            .nodes
            .values()
            .filter(|n| n.info.id != id)
            .map(|n| n.info.clone())
            .collect();
        out.extend(
            peers
                .iter()
                .map(|p| (p.id, ServerMsg::PeerJoined(info.clone()))),
        );
        let rest = peers.split_off(peers.len().min(PEERS_PER_FRAME));
        out.push((
            id,
            ServerMsg::Welcome {
                observed,
                peers,
                request_ttl_ms: self.config.request_ttl.as_millis() as u64,
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
        self.nodes.remove(&id);
        let mut out = self.end_requests_of(id);
        out.extend(
            self.nodes
                .keys()
                .map(|&other| (other, ServerMsg::PeerLeft { id })),
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
        out.extend(
            self.nodes
                .keys()
                .map(|&other| (other, ServerMsg::PeerLeft { id })),
        );
        out
    }

    /// A registered node sent `msg`.
    pub fn handle_msg(&mut self, now: Instant, from: NodeId, msg: ClientMsg) -> Vec<Out> {
        match msg {
            ClientMsg::Connect { peer } => self.connect(now, from, peer),
            ClientMsg::Accept { peer } => self.accept(from, peer),
            ClientMsg::Reject { peer } => self.end(peer, from, CloseReason::Rejected, from),
            ClientMsg::Cancel { peer } => self.end(from, peer, CloseReason::Cancelled, from),
            ClientMsg::Hello { .. } => vec![refused(from, None, Refusal::HelloExpected)],
            ClientMsg::Bye => Vec::new(),
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
            return self.accept(from, to);
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
    fn accept(&mut self, acceptor: NodeId, requester: NodeId) -> Vec<Out> {
        if self.pending.remove(&(requester, acceptor)).is_none() {
            return vec![refused(acceptor, Some(requester), Refusal::NoSuchRequest)];
        }
        let (Some(a), Some(r)) = (self.nodes.get(&acceptor), self.nodes.get(&requester)) else {
            return Vec::new();
        };
        let punch = PunchTicket::random(&mut self.rng);
        vec![
            (
                requester,
                ServerMsg::Accepted {
                    peer: acceptor,
                    direction: Direction::Outgoing,
                    candidates: a.candidates.clone(),
                    punch,
                },
            ),
            (
                acceptor,
                ServerMsg::Accepted {
                    peer: requester,
                    direction: Direction::Incoming,
                    candidates: r.candidates.clone(),
                    punch,
                },
            ),
        ]
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
        let out = r.handle_msg(now, a.id, ClientMsg::Accept { peer: b.id });
        let ServerMsg::Accepted { punch, .. } = out[0].1 else {
            panic!("{out:?}")
        };
        assert_eq!(
            out,
            vec![
                (
                    b.id,
                    ServerMsg::Accepted {
                        peer: a.id,
                        direction: Direction::Outgoing,
                        candidates: vec![addr(1), SocketAddr::from(([192, 168, 1, 2], 1))],
                        punch,
                    }
                ),
                (
                    a.id,
                    ServerMsg::Accepted {
                        peer: b.id,
                        direction: Direction::Incoming,
                        candidates: vec![addr(2)],
                        punch,
                    }
                ),
            ],
            "both sides get each other's candidates and the same punch ticket"
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
            matches!(out[0].1, ServerMsg::Accepted { .. })
                && matches!(out[1].1, ServerMsg::Accepted { .. })
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
        assert!(out.contains(&(a.id, ServerMsg::PeerLeft { id: b.id })));
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
}
