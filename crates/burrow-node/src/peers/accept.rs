//! Letting peers in: who may connect (accepted, not refused, on its own
//! path), which service a connection goes to, the link's own connection
//! registered as the peer's link, and admission that lapses.

use std::sync::Arc;
use std::time::Duration;

use burrow_proto::NodeId;
use tracing::{debug, info, warn};

use super::{path_of, unlink};
use crate::event::NodeEvent;
use crate::link::Inner;
use crate::service::{Admission, LinkEvent, Service, Serving};
use crate::state::MAX_CONNS_PER_PEER;

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

/// The link's own connection as a service (`burrow/link/1`, see
/// [`burrow_proto::link`]): [`register`] makes it the peer's link, and it
/// carries nothing until it closes.
pub(crate) struct LinkService;

impl Service for LinkService {
    fn alpn(&self) -> &'static [u8] {
        burrow_proto::link::ALPN
    }

    fn accept(self: Arc<Self>, _peer: NodeId, conn: quinn::Connection) -> Serving {
        Box::pin(async move {
            conn.closed().await;
        })
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

/// Adds `conn` to `peer`'s live link connections (the newest is used), tells
/// the services, and removes it when it closes. People hear of the first connection and of
/// the last one closing, not of the ones in between.
pub(super) fn register(inner: &Arc<Inner>, peer: NodeId, conn: quinn::Connection, dialed: bool) {
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
            inner2.router().tell(&LinkEvent::Down { peer });
            inner2.emit(NodeEvent::Disconnected { name, reason });
        },
        span,
    ));
}
