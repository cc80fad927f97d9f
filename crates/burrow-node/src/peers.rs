//! Links to peers: dialing an accepted peer, letting in the peers we accepted, and
//! tracking each connection until it closes.
//!
//! The requester dials every candidate the server handed over (server-observed
//! address first, then LAN addresses), staggered so the likeliest goes first
//! ("happy eyeballs"); the first handshake that proves the expected key wins.
//! The acceptor lets in only keys it accepted (or asked itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::chat;
use burrow_proto::NodeId;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::api::ConnectionState;
use crate::event::NodeEvent;
use crate::node::Inner;

/// Delay between starting attempts on successive candidates.
const STAGGER: Duration = Duration::from_millis(150);
/// QUIC close code: we did not accept this peer.
const NOT_ACCEPTED: u32 = 0x10;

/// Dials `peer` at `candidates` and registers the first connection that proves
/// `peer`'s key.
pub(crate) async fn dial(inner: Arc<Inner>, peer: NodeId, candidates: Vec<SocketAddr>) {
    let local_v4 = inner
        .endpoint
        .local_addr()
        .map(|a| a.is_ipv4())
        .unwrap_or(true);
    let mut attempts = JoinSet::new();
    let usable = candidates.into_iter().filter(|a| a.is_ipv4() == local_v4);
    for (i, addr) in usable.enumerate() {
        let inner = inner.clone();
        attempts.spawn(async move {
            tokio::time::sleep(STAGGER * i as u32).await;
            debug!(peer = %peer.short(), %addr, "dialing candidate");
            inner.endpoint.connect(addr, chat::ALPN, Some(peer)).await
        });
    }
    let mut last_error = String::from("no usable candidate address");
    while let Some(result) = attempts.join_next().await {
        match result {
            Ok(Ok((conn, _))) => {
                attempts.abort_all();
                register(&inner, peer, conn);
                return;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(e) => last_error = e.to_string(),
        }
    }
    let name = {
        let mut st = inner.state();
        if let Some(p) = st.peers.get_mut(&peer) {
            p.request = None;
            p.accepted = p.conn.is_some();
        }
        st.name_of(&peer)
    };
    warn!(peer = %peer.short(), error = %last_error, "could not connect");
    inner.emit(NodeEvent::ConnectFailed {
        name,
        error: last_error,
    });
}

/// After we accept a request, the requester has this long to connect before its
/// admission lapses (it would have to ask again).
const ADMISSION_WINDOW: Duration = Duration::from_secs(30);

/// Withdraws `peer`'s admission if it hasn't connected within [`ADMISSION_WINDOW`].
pub(crate) async fn admission_deadline(inner: Arc<Inner>, peer: NodeId) {
    tokio::select! {
        _ = inner.shutdown.cancelled() => {}
        _ = tokio::time::sleep(ADMISSION_WINDOW) => {
            let mut st = inner.state();
            if let Some(p) = st.peers.get_mut(&peer) {
                if p.conn.is_none() && p.request.is_none() {
                    p.accepted = false;
                }
            }
            st.forget_idle(&peer);
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
        tokio::spawn(async move {
            let remote = incoming.remote_address();
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
            let admitted = inner.state().peers.get(&peer).is_some_and(|p| p.accepted);
            if !admitted {
                warn!(peer = %peer.short(), %remote, "refusing connection from a peer we did not accept");
                conn.close(quinn::VarInt::from_u32(NOT_ACCEPTED), b"not accepted");
                return;
            }
            register(&inner, peer, conn);
        });
    }
}

/// Makes `conn` the link to `peer`, serves chat on it, and clears it when it closes.
fn register(inner: &Arc<Inner>, peer: NodeId, conn: quinn::Connection) {
    let name = {
        let mut st = inner.state();
        let p = st.peers.entry(peer).or_default();
        p.request = None;
        p.accepted = true;
        if let Some(old) = p.conn.replace(conn.clone()) {
            old.close(quinn::VarInt::from_u32(0), b"replaced");
        }
        st.name_of(&peer)
    };
    let rtt_ms = conn.rtt().as_secs_f64() * 1000.0;
    info!(peer = %peer.short(), remote = %conn.remote_address(), rtt_ms, "connected");
    inner.emit(NodeEvent::Connected {
        name,
        path: ConnectionState::Direct,
        remote: conn.remote_address(),
        rtt_ms,
    });
    let inner2 = inner.clone();
    inner.spawn(async move {
        crate::chat::serve(&inner2, peer, &conn).await;
        let reason = conn
            .close_reason()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "closed".into());
        let name = {
            let mut st = inner2.state();
            let Some(p) = st.peers.get_mut(&peer) else {
                return;
            };
            if p.conn
                .as_ref()
                .is_none_or(|c| c.stable_id() != conn.stable_id())
            {
                return; // replaced by a newer connection
            }
            p.conn = None;
            p.accepted = false;
            let name = st.name_of(&peer);
            st.forget_idle(&peer);
            name
        };
        info!(peer = %peer.short(), %reason, "disconnected");
        inner2.emit(NodeEvent::Disconnected { name, reason });
    });
}
