//! Links to peers: making a connection with an accepted peer, moving it between
//! the relay and a direct path, letting in the peers we accepted, and tracking
//! each connection until it closes.
//!
//! A link has one address for quinn, the peer's virtual address (see
//! [`burrow_net::paths`]); how packets reach it changes underneath:
//!
//! 1. When the server brokers a link ([`link`]), it hands both sides a relay
//!    channel and a punch ticket. The requester dials at once, through the
//!    relay: the first message never waits for the punch.
//! 2. Meanwhile both sides punch toward every candidate of the other. When a
//!    pair of addresses works both ways, the path goes direct, and the open
//!    connection moves there without a new handshake.
//! 3. [`monitor`] watches every direct path. One we sent on and heard nothing
//!    back from is pinged; if it stays silent it is dropped (the connection
//!    falls back to the relay) and a fresh punch is asked for. A relayed link asks
//!    for fresh punches on a schedule (backing off), and after either side
//!    re-registered (its addresses may have changed).
//!
//! Without a relay (the server doesn't relay) the requester dials once the punch
//! has found a path.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_net::punch::Punched;
use burrow_net::{Health, Route};
use burrow_proto::chat;
use burrow_proto::punch::{Mapping, Method, PunchConfig, PunchTicket, Role, Strategy};
use burrow_proto::rendezvous::{ClientMsg, Direction, LinkOffer};
use burrow_proto::NodeId;
use tracing::{debug, info, warn};

use crate::api::ConnectionState;
use crate::event::NodeEvent;
use crate::link::Inner;
use crate::service::{Admission, LinkEvent};
use crate::state::MAX_CONNS_PER_PEER;
use crate::PathPolicy;
use burrow_proto::punch::policy::{self, Dial, Facts, Plan, Repunch};

/// How often [`monitor`] looks at the paths.
const MONITOR_TICK: Duration = Duration::from_millis(250);
/// A direct path we sent on and heard nothing back from for this long is pinged...
const PATH_CHECK: Duration = Duration::from_millis(1000);
/// ...and after this long it is gone. A live path answers a ping within one
/// round trip plus the peer's ACK delay (25 ms); three seconds allows for loss.
const PATH_DEAD: Duration = Duration::from_secs(3);
/// How long a TCP punch (after a UDP punch found nothing) keeps dialing.
const TCP_PUNCH: Duration = Duration::from_secs(8);

/// The candidates worth probing: of an address family we can use (our
/// socket takes it, and the server saw us in it or we have a route to the
/// address: an IPv6 candidate is no use to a node with no IPv6 route out), never addresses that can't be a
/// peer's (unspecified, multicast, broadcast, link-local, port 0) or that are
/// our own, and loopback only when this node itself runs on loopback (with
/// its server, or bound there). The server already offers a peer's own
/// addresses only to nodes behind the same public address; this is the
/// node's own check on what a server or an introducer hands it.
fn usable(inner: &Inner, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
    let local = inner.endpoint.local_addr().ok();
    let (public, other, server) = {
        let st = inner.state();
        (st.public_addr, st.public_other, st.server_addr)
    };
    let on_loopback =
        local.is_some_and(|a| a.ip().is_loopback()) || server.is_some_and(|s| s.ip().is_loopback());
    let family_ok = |a: &SocketAddr| {
        let socket_takes = inner.endpoint.takes(*a);
        // Where the server saw us: those families work; no server, or its
        // STUN in the other family not answered yet: where we have a route.
        let seen = public.is_some_and(|p| p.is_ipv4() == a.is_ipv4())
            || other.is_some_and(|o| o.is_ipv4() == a.is_ipv4());
        socket_takes && (seen || a.ip().is_loopback() || crate::session::has_route(*a))
    };
    let broadcast = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    let (kept, dropped): (Vec<SocketAddr>, Vec<SocketAddr>) = candidates
        .iter()
        .map(|a| burrow_net::paths::canonical(*a))
        .partition(|a| {
            let ip = a.ip();
            family_ok(a)
                && (ip.is_loopback()
                    || (burrow_net::iface::usable_elsewhere(&ip) && !broadcast(ip)))
                && a.port() != 0
                && (!ip.is_loopback() || on_loopback)
                && Some(*a) != local
                && Some(*a) != public
                && Some(*a) != other
        });
    if !dropped.is_empty() {
        debug!(
            ?dropped,
            "not probing candidates of a family we have no route in, or that can't be a peer's (link-local, loopback, our own)"
        );
    }
    kept
}

/// Where to dial a peer over TCP: its public address as the server saw it,
/// the same IP with the peer's own port number (a node's TCP sockets share
/// its UDP port number, and NATs that remap UDP often keep TCP ports: the
/// lab's sequential one does), then its LAN addresses.
fn tcp_candidates(candidates: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    if let Some(first) = candidates.first() {
        out.push(*first);
        if let Some(lan) = candidates.get(1) {
            out.push(SocketAddr::new(first.ip(), lan.port()));
        }
    }
    for c in candidates.iter().skip(1) {
        if !out.contains(c) {
            out.push(*c);
        }
    }
    out.dedup();
    out
}

/// An address for people: a TCP link's real other end, marked as TCP.
pub(crate) fn shown(inner: &Inner, addr: SocketAddr) -> String {
    if burrow_net::tcp::is_link(addr) {
        format!("{} over TCP", inner.endpoint.real_addr(addr))
    } else {
        addr.to_string()
    }
}

/// How `peer`'s connection travels now, and the address it travels to, in words.
/// A connection a peer dialed from a real address (joining from our ticket) has
/// no path entry: it is direct, to that address.
pub(crate) fn path_of(
    inner: &Inner,
    peer: &NodeId,
    conn: Option<&quinn::Connection>,
) -> (ConnectionState, String) {
    match inner.endpoint.paths().status(peer).map(|s| s.route) {
        Some(Route::Direct(a)) => (ConnectionState::Direct, shown(inner, a)),
        Some(Route::Relayed(server)) => (
            ConnectionState::Relayed,
            format!("relay {}", shown(inner, server)),
        ),
        _ => match conn.map(|c| burrow_net::paths::canonical(c.remote_address())) {
            Some(a) if !burrow_net::paths::is_virtual(a) => {
                (ConnectionState::Direct, a.to_string())
            }
            _ => (ConnectionState::Relayed, "no path (waiting for one)".into()),
        },
    }
}

/// Which address family carries `peer`'s connection now (`ipv4` or `ipv6`):
/// the peer's address on a direct path, the server's on the relay.
pub(crate) fn family_of(
    inner: &Inner,
    peer: &NodeId,
    conn: Option<&quinn::Connection>,
) -> Option<String> {
    let real = |a: SocketAddr| burrow_net::paths::canonical(inner.endpoint.real_addr(a));
    let addr = match inner.endpoint.paths().status(peer).map(|s| s.route) {
        Some(Route::Direct(a)) | Some(Route::Relayed(a)) => real(a),
        _ => conn
            .map(|c| burrow_net::paths::canonical(c.remote_address()))
            .filter(|a| !burrow_net::paths::is_virtual(*a))?,
    };
    Some(if addr.is_ipv4() { "ipv4" } else { "ipv6" }.into())
}

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
fn left(inner: &Inner, before: Route, now: Option<SocketAddr>) {
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
fn schedule_repunch(inner: &Inner, peer: NodeId, found: bool) {
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

/// Requests sent at once by [`relink_all`]; the rest follow at [`RELINK_PACE`],
/// within the server's message rate (20/s, bursts of 40).
const RELINK_BURST: usize = 16;
const RELINK_PACE: Duration = Duration::from_millis(100);

/// Asks for fresh punches with every peer we have a connection with (after we
/// registered again: addresses may have changed, and after a server restart the
/// link must be made again).
pub(crate) fn relink_all(inner: &Arc<Inner>) {
    let linked: Vec<NodeId> = inner
        .state()
        .peers
        .iter()
        .filter(|(_, p)| p.connected())
        .map(|(id, _)| *id)
        .collect();
    let Some(tx) = inner.state().server_tx.clone() else {
        return;
    };
    inner.spawn(async move {
        for (i, peer) in linked.into_iter().enumerate() {
            if i >= RELINK_BURST {
                tokio::time::sleep(RELINK_PACE).await;
            }
            if tx.send(ClientMsg::Repunch { peer }).await.is_err() {
                return;
            }
        }
    });
}

/// Ends our link with `peer`: its path is forgotten, the server stops relaying.
pub(crate) fn unlink(inner: &Inner, peer: NodeId) {
    if let Some(s) = inner.endpoint.paths().status(&peer) {
        left(inner, s.route, None);
    }
    inner.endpoint.paths().remove(&peer);
    let tx = inner.state().server_tx.clone();
    if let Some(tx) = tx {
        let _ = tx.try_send(ClientMsg::Release { peer });
    }
}

/// Watches the paths of every connected peer (see the module doc).
pub(crate) async fn monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(MONITOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let linked: Vec<(NodeId, quinn::Connection, Repunch)> = inner
            .state()
            .peers
            .iter()
            .filter_map(|(id, p)| Some((*id, p.conn()?.clone(), p.repunch)))
            .collect();
        for (peer, conn, repunch) in linked {
            let paths = inner.endpoint.paths();
            match paths.health(&peer, now, PATH_CHECK, PATH_DEAD) {
                Health::Fine => {}
                Health::Check => {
                    // Anything ack-eliciting will do: the peer's ACK comes back
                    // on the path if it still works.
                    let _ = conn.send_datagram(bytes::Bytes::from_static(b"?"));
                }
                Health::Dead => {
                    let (before, _) = paths.set_direct(&peer, None);
                    left(&inner, before, None);
                    if let Some(p) = inner.state().peers.get_mut(&peer) {
                        p.method = None;
                    }
                    let has_relay = paths.status(&peer).is_some_and(|s| s.has_relay);
                    warn!(peer = %peer.short(), "direct path lost");
                    let name = inner.state().name_of(&peer);
                    inner.emit(NodeEvent::PathChanged {
                        name,
                        method: None,
                        path: ConnectionState::Relayed,
                        remote: if has_relay {
                            path_of(&inner, &peer, None).1
                        } else {
                            "no path (the server does not relay)".into()
                        },
                    });
                    request_repunch(&inner, peer);
                    schedule_repunch(&inner, peer, true);
                    continue;
                }
            }
            let relayed = matches!(
                paths.status(&peer).map(|s| s.route),
                Some(Route::Relayed(_))
            );
            if relayed && repunch.due(now) {
                request_repunch(&inner, peer);
                schedule_repunch(&inner, peer, false);
            }
        }
    }
}

/// Dials `peer` and registers the connection.
/// Serverless, the mesh connection goes first (its Hello proves membership), and
/// the chat connection follows once it is up.
pub(crate) async fn dial(inner: Arc<Inner>, peer: NodeId) {
    if inner.config.server.is_none() {
        if let Some(first) = inner.router().dial_first(peer) {
            return first.await;
        }
    }
    dial_chat(inner, peer).await;
}

/// Dials `peer`'s chat connection (the link) at its virtual address.
pub(crate) async fn dial_chat(inner: Arc<Inner>, peer: NodeId) {
    debug!(peer = %peer.short(), "dialing");
    match inner.connect_peer(peer, chat::ALPN).await {
        Ok(conn) => register(&inner, peer, conn, true),
        Err(e) => fail(&inner, peer, e.to_string()),
    }
}

/// The connection to `peer` could not be made: say so, and end the link.
fn fail(inner: &Arc<Inner>, peer: NodeId, error: String) {
    let name = {
        let mut st = inner.state();
        if let Some(p) = st.peers.get_mut(&peer) {
            if p.connected() {
                return;
            }
            p.request = None;
            p.accepted = false;
        }
        st.name_of(&peer)
    };
    unlink(inner, peer);
    warn!(peer = %peer.short(), %error, "could not connect");
    inner.emit(NodeEvent::ConnectFailed { name, error });
}

/// After we accept a request, or after a peer's last connection closes, it has
/// this long to connect before its admission lapses (it would have to ask again).
const ADMISSION_WINDOW: Duration = Duration::from_secs(30);

/// Withdraws `peer`'s admission if it hasn't connected within [`ADMISSION_WINDOW`].
pub(crate) async fn admission_deadline(inner: Arc<Inner>, peer: NodeId) {
    tokio::select! {
        _ = inner.shutdown.cancelled() => {}
        _ = tokio::time::sleep(ADMISSION_WINDOW) => {
            let mut st = inner.state();
            if let Some(p) = st.peers.get_mut(&peer) {
                if !p.connected() && p.request.is_none() {
                    p.accepted = false;
                }
            }
            let lapsed = st.peers.get(&peer).is_none_or(|p| !p.accepted);
            st.forget_idle(&peer);
            drop(st);
            if lapsed {
                unlink(&inner, peer);
            }
        }
    }
}

/// Accepts incoming connections until shutdown.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            i = inner.endpoint.quic().accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let inner = inner.clone();
        let remote = incoming.remote_address();
        let span = tracing::debug_span!(parent: &inner.span, "incoming", %remote);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(%remote, error = %e, "incoming handshake failed");
                        return;
                    }
                };
                let Some(peer) = burrow_net::peer_id(&conn) else {
                    return;
                };
                // (The handshake offers only the router's ALPNs.)
                let alpn = burrow_net::alpn(&conn).unwrap_or_default();
                let router = inner.router();
                let Some(service) = router.route(&alpn) else {
                    return;
                };
                let admitted = {
                    let st = inner.state();
                    // Serverless, a mesh connection from a stranger may be someone
                    // joining from our ticket: its Hello must prove it; the other
                    // services wait for that proof (a live mesh link).
                    let accepted = st.peers.get(&peer).is_some_and(|p| p.accepted);
                    let serverless = inner.config.server.is_none();
                    !st.conduct.refused(&peer)
                        && match (serverless, service.admission()) {
                            (false, _) => accepted,
                            (true, Admission::ProvesMembership) => true,
                            (true, Admission::Linked) => {
                                accepted && st.peers.get(&peer).is_some_and(|p| p.member)
                            }
                        }
                };
                // A connection through a link's virtual address must come from that
                // link's peer.
                let paths = inner.endpoint.paths();
                let wrong_path =
                    burrow_net::paths::is_virtual(remote) && paths.peer_of(remote) != Some(peer);
                if !admitted || wrong_path {
                    warn!(peer = %peer.short(), %remote, "refusing connection from a peer we did not accept");
                    conn.close(burrow_net::Close::NotAccepted.code(), b"not accepted");
                    return;
                }
                // (A child of the node's span itself: the `incoming` span
                // is off unless debugging.)
                let span = tracing::info_span!(
                    parent: &inner.span,
                    "conn",
                    peer = %peer.short(),
                    alpn = %String::from_utf8_lossy(service.alpn())
                );
                // The link's own connection is registered as the peer's link
                // before its service sees it.
                if service.alpn() == router.link().alpn() {
                    let _enter = span.enter();
                    return register(&inner, peer, conn, false);
                }
                let serving = service.accept(peer, conn);
                tracing::Instrument::instrument(serving, span).await;
            },
            span,
        ));
    }
}

/// Adds `conn` to `peer`'s live connections (the newest is used), serves chat on
/// it, and removes it when it closes. People hear of the first connection and of
/// the last one closing, not of the ones in between.
fn register(inner: &Arc<Inner>, peer: NodeId, conn: quinn::Connection, dialed: bool) {
    let (name, first) = {
        let mut st = inner.state();
        let p = st.peers.entry(peer).or_default();
        p.request = None;
        p.accepted = true;
        let first = !p.connected();
        p.conns.push(conn.clone());
        if p.conns.len() > MAX_CONNS_PER_PEER {
            let oldest = p.conns.remove(0);
            oldest.close(burrow_net::Close::Done.code(), b"too many connections");
        }
        (st.name_of(&peer), first)
    };
    let rtt_ms = conn.rtt().as_secs_f64() * 1000.0;
    let (path, remote) = path_of(inner, &peer, Some(&conn));
    info!(peer = %peer.short(), %remote, %path, rtt_ms, first, "connected");
    if first {
        inner.emit(NodeEvent::Connected {
            name,
            path,
            remote,
            rtt_ms,
        });
    }
    // (The mesh link rides beside the link's connection; its dialer opens it.)
    inner.router().tell(&LinkEvent::Up { peer, dialed });
    let inner2 = inner.clone();
    let span = tracing::info_span!("link", peer = %peer.short());
    inner.spawn(tracing::Instrument::instrument(
        async move {
            inner2.router().link().accept(peer, conn.clone()).await;
            let reason = conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "closed".into());
            let name = {
                let mut st = inner2.state();
                let Some(p) = st.peers.get_mut(&peer) else {
                    return;
                };
                p.conns.retain(|c| c.stable_id() != conn.stable_id());
                if p.connected() {
                    debug!(peer = %peer.short(), %reason, "a spare connection closed");
                    return;
                }
                // Admission lapses only after a grace window: the connection that
                // closed may be the loser of two that raced, the winner still on its
                // way, or the peer may be reconnecting after a network change.
                let name = st.name_of(&peer);
                drop(st);
                inner2.spawn(admission_deadline(inner2.clone(), peer));
                name
            };
            info!(peer = %peer.short(), %reason, "disconnected");
            inner2.emit(NodeEvent::Disconnected { name, reason });
        },
        span,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_ip_is_tried_with_the_peers_own_port_too() {
        let c: Vec<SocketAddr> = ["198.51.100.19:20003", "10.0.4.2:41000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            tcp_candidates(&c),
            vec![c[0], "198.51.100.19:41000".parse().unwrap(), c[1]]
        );
        let public: Vec<SocketAddr> = vec!["198.51.100.101:41000".parse().unwrap()];
        assert_eq!(tcp_candidates(&public), public);
    }
}
