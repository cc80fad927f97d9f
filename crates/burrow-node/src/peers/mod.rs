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

use burrow_net::{Health, Route};
use burrow_proto::rendezvous::ClientMsg;
use burrow_proto::NodeId;
use tracing::{debug, warn};

use crate::api::ConnectionState;
use crate::event::NodeEvent;
use crate::link::Inner;
use crate::service::LinkEvent;
use burrow_proto::punch::policy::Repunch;

mod accept;
mod punch;

use accept::register;
pub(crate) use accept::{accept_loop, admission_deadline, LinkService};
use punch::{left, schedule_repunch};
pub(crate) use punch::{link, repunch_indirect, request_repunch};

/// How often [`monitor`] looks at the paths.
const MONITOR_TICK: Duration = Duration::from_millis(250);
/// A direct path we sent on and heard nothing back from for this long is pinged...
const PATH_CHECK: Duration = Duration::from_millis(1000);
/// ...and after this long it is gone. A live path answers a ping within one
/// round trip plus the peer's ACK delay (25 ms); three seconds allows for loss.
const PATH_DEAD: Duration = Duration::from_secs(3);

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
        socket_takes && (seen || a.ip().is_loopback() || burrow_net::iface::has_route(*a))
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
/// the link's own connection follows once it is up.
pub(crate) async fn dial(inner: Arc<Inner>, peer: NodeId) {
    if inner.config.server.is_none() {
        if let Some(first) = inner.router().dial_first(peer) {
            return first.await;
        }
    }
    dial_link(inner, peer).await;
}

/// Dials `peer`'s link connection at its virtual address.
pub(crate) async fn dial_link(inner: Arc<Inner>, peer: NodeId) {
    debug!(peer = %peer.short(), "dialing");
    inner.router().tell(&LinkEvent::Dialing { peer });
    match inner.connect_peer(peer, burrow_proto::link::ALPN).await {
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
    inner.router().tell(&LinkEvent::Down { peer });
    warn!(peer = %peer.short(), %error, "could not connect");
    inner.emit(NodeEvent::ConnectFailed { name, error });
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
