//! Punching: what a link does when the server (or a mutual peer) offers it,
//! and after: the relay channel, UDP and then TCP punches, going direct,
//! and asking again on a schedule while the link is relayed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_net::punch::Punched;
use burrow_net::Route;
use burrow_proto::punch::policy::{self, Dial, Facts, Plan};
use burrow_proto::punch::{Mapping, Method, PunchConfig, PunchTicket, Role, Strategy};
use burrow_proto::rendezvous::{ClientMsg, Direction, LinkOffer};
use burrow_proto::NodeId;
use tracing::{debug, info, warn};

use super::{dial, fail, shown, tcp_candidates, usable};
use crate::api::ConnectionState;
use crate::event::NodeEvent;
use crate::link::Inner;
use crate::PathPolicy;

/// How long a TCP punch (after a UDP punch found nothing) keeps dialing.
const TCP_PUNCH: Duration = Duration::from_secs(8);

/// The server (or serverless, a mutual peer) made or refreshed our link with
/// `offer.peer`: set the relay channel, punch, and (as the side that asked,
/// if not connected yet) dial.
pub(crate) fn link(inner: &Arc<Inner>, offer: LinkOffer) {
    let Some((udp, dial_when)) = prepare(inner, &offer) else {
        return;
    };
    let LinkOffer {
        peer,
        direction,
        candidates,
        mut peer_nat,
        punch: ticket,
        ..
    } = offer;
    let role = match direction {
        Direction::Outgoing => Role::Requester,
        Direction::Incoming => Role::Acceptor,
    };
    let (own_mapping, open_ttl) = {
        let st = inner.state();
        (st.mapping, st.open_ttl)
    };
    let observed = candidates.first().map(|a| burrow_net::paths::canonical(*a));
    let candidates = usable(inner, &candidates);
    // The hard-NAT tricks aim at the peer's address as the server sees it,
    // and at its NAT's ports: IPv4's, and only where we probe that address
    // (an IPv6-only node drops it; its tricks must not land on an IPv6 host).
    let observed = observed.filter(|o| o.is_ipv4() && candidates.first() == Some(o));
    peer_nat.mapped = peer_nat.mapped.filter(|m| !usable(inner, &[*m]).is_empty());
    // Behind hard NATs, each side does its part (side sockets, random ports,
    // predicted ports); see `burrow_proto::punch::strategy`.
    let strategy = Strategy::choose(own_mapping, peer_nat, observed);
    if strategy.is_hard() {
        debug!(peer = %peer.short(), ?own_mapping, ?peer_nat, ?strategy, "hard NAT punch");
    }
    let punched = udp.then(|| {
        inner.endpoint.start_punch(
            role,
            ticket,
            &candidates,
            &strategy,
            PunchConfig {
                open_ttl,
                head_start: burrow_proto::punch::OPEN_HEAD_START,
                ..PunchConfig::default()
            },
            Some(peer),
        )
    });
    if dial_when == Dial::Now {
        inner.spawn(dial(inner.clone(), peer));
    }
    let punching = Punching {
        peer,
        role,
        ticket,
        tcp_candidates: tcp_candidates(&candidates),
        open_ttl,
        own_mapping,
        dial_when,
    };
    let inner2 = inner.clone();
    inner.spawn(async move {
        let direct = match punched {
            Some(Ok(outcome)) => outcome.await.ok().flatten(),
            Some(Err(e)) => {
                warn!(peer = %peer.short(), error = %e, "cannot punch");
                None
            }
            None => None,
        };
        after_udp(inner2, punching, direct).await;
    });
}

/// Sets the link's relay channel and decides what it does (see
/// [`policy::plan`]): `None` when there is nothing to punch (relayed, idle,
/// or failed, which is said), else whether to punch over UDP and when to dial.
fn prepare(inner: &Arc<Inner>, offer: &LinkOffer) -> Option<(bool, Dial)> {
    let peer = offer.peer;
    let policy = inner.config.path;
    // Direct-only: the relay channel is not used (nothing goes through it).
    let relay = offer.relay.filter(|_| policy != PathPolicy::DirectOnly);
    let paths = inner.endpoint.paths();
    paths.open(peer);
    let server = inner.state().server_addr;
    if let (Some(channel), Some(server)) = (relay, server) {
        paths.set_relay(&peer, Some((server, channel)));
    }
    let has_relay = paths.status(&peer).is_some_and(|s| s.has_relay);
    let st = inner.state();
    let dial_now = offer.direction == Direction::Outgoing
        && !st.peers.get(&peer).is_some_and(|p| p.connected());
    let plan = policy::plan(Facts {
        policy,
        peer_relay_only: offer.peer_nat.relay_only,
        has_relay,
        dials: dial_now,
        // One side reaches the server only over TCP: UDP can't work between
        // us, and both sides know it, so both go to TCP simultaneous open at
        // once.
        udp_hopeless: st.no_udp() || offer.peer_nat.no_udp,
    });
    match plan {
        Plan::Fail(why) => {
            let name = st.name_of(&peer);
            drop(st);
            fail(inner, peer, why.message(&name));
            None
        }
        Plan::Idle | Plan::Relay { dial: false } => None,
        Plan::Relay { dial: true } => {
            drop(st);
            inner.spawn(dial(inner.clone(), peer));
            None
        }
        Plan::Punch { udp, dial } => Some((udp, dial)),
    }
}

/// A punch under way, for [`after_udp`].
struct Punching {
    peer: NodeId,
    role: Role,
    ticket: PunchTicket,
    tcp_candidates: Vec<SocketAddr>,
    open_ttl: Option<u8>,
    own_mapping: Mapping,
    dial_when: Dial,
}

/// After the UDP punch (`direct` is what it found): TCP simultaneous open
/// when it found nothing, then the path goes direct or waits for a
/// re-punch, and the link dials or fails as the policy says.
async fn after_udp(inner: Arc<Inner>, p: Punching, mut direct: Option<Punched>) {
    let peer = p.peer;
    if direct.is_none() {
        // Nothing over UDP (NATs that map UDP worse than TCP), or no
        // UDP to try. Both sides' punches end at the same deadline (or
        // neither ran), so both try TCP simultaneous open now, together.
        let tcp = inner
            .endpoint
            .tcp_punch(p.role, p.ticket, &p.tcp_candidates, TCP_PUNCH, p.open_ttl)
            .await;
        direct = tcp.map(|link| Punched {
            addr: link,
            method: Method::Tcp,
            via: None,
        });
    }
    // A sequential NAT's ports moved on with this punch's mappings:
    // measure again, so the next punch predicts from the newest.
    if matches!(p.own_mapping, Mapping::Sequential { .. }) {
        crate::nat::refresh_mapping(&inner);
    }
    let found = direct.is_some();
    match direct {
        Some(d) => go_direct(&inner, peer, d),
        None => {
            debug!(peer = %peer.short(), "hole punching found no direct path");
            schedule_repunch(&inner, peer, false);
        }
    }
    match policy::after_punch(inner.config.path, p.dial_when, found) {
        Some(why) => {
            let name = inner.state().name_of(&peer);
            fail(&inner, peer, why.message(&name));
        }
        None if p.dial_when == Dial::WhenDirect => dial(inner, peer).await,
        None => {}
    }
}

/// The peer's path was `before` and is now direct at `now` (or not direct):
/// a TCP link it left carries nothing else, so it is closed.
pub(super) fn left(inner: &Inner, before: Route, now: Option<SocketAddr>) {
    if let Route::Direct(old) = before {
        if Some(old) != now {
            inner.endpoint.close_link(old); // a no-op unless `old` is a link
        }
    }
}

/// A punch found a path: it goes direct (the connection moves there).
fn go_direct(inner: &Arc<Inner>, peer: NodeId, found: Punched) {
    let Punched { addr, method, via } = found;
    let (before, after) = inner.endpoint.paths().set_direct_via(&peer, addr, via);
    left(inner, before, Some(addr));
    schedule_repunch(inner, peer, true);
    if let Some(p) = inner.state().peers.get_mut(&peer) {
        p.method = Some(method);
    }
    if before == after {
        return;
    }
    let connected = inner
        .state()
        .peers
        .get(&peer)
        .is_some_and(|p| p.connected());
    info!(peer = %peer.short(), %addr, ?method, "direct path");
    if connected {
        let name = inner.state().name_of(&peer);
        inner.emit(NodeEvent::PathChanged {
            name,
            path: ConnectionState::Direct,
            remote: shown(inner, addr),
            method: Some(method),
        });
    }
}

/// Sets when a relayed link next asks for a punch: soon after a direct path was
/// found (so that losing it starts from the shortest wait), backing off
/// otherwise (see [`Repunch`]).
pub(super) fn schedule_repunch(inner: &Inner, peer: NodeId, found: bool) {
    let mut st = inner.state();
    if let Some(p) = st.peers.get_mut(&peer) {
        if found {
            p.repunch.found(Instant::now());
        } else {
            p.repunch.missed(Instant::now());
        }
    }
}

/// Asks the server for a fresh punch with `peer` (quietly: the server may be away).
pub(crate) fn request_repunch(inner: &Inner, peer: NodeId) {
    let tx = inner.state().server_tx.clone();
    if let Some(tx) = tx {
        debug!(peer = %peer.short(), "asking for a fresh punch");
        let _ = tx.try_send(ClientMsg::Repunch { peer });
    }
}

/// Asks for fresh punches with every peer linked to us over anything but a
/// direct path (the relay, or nothing yet).
pub(crate) fn repunch_indirect(inner: &Inner) {
    let linked: Vec<NodeId> = inner.state().peers.keys().copied().collect();
    for peer in linked {
        match inner.endpoint.paths().status(&peer).map(|s| s.route) {
            Some(Route::Direct(_)) | None => {}
            Some(_) => request_repunch(inner, peer),
        }
    }
}
