//! Links to peers: dialing an accepted peer, letting in the peers we accepted, and
//! tracking each connection until it closes.
//!
//! Both sides punch (see [`burrow_proto::punch`]) toward every candidate the
//! server handed over, with the ticket it handed both. Meanwhile the requester
//! dials every candidate directly too (server-observed address first, then LAN
//! addresses, staggered: "happy eyeballs"), and dials again the moment the punch
//! finds a working path; the first handshake that proves the expected key wins.
//! The acceptor's probes are what open its NAT to the requester; it lets in only
//! keys it accepted (or asked itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::chat;
use burrow_proto::punch::{PunchConfig, PunchTicket, Role};
use burrow_proto::NodeId;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::api::ConnectionState;
use crate::event::NodeEvent;
use crate::node::{Inner, MAX_CONNS_PER_PEER};

/// Delay between starting attempts on successive candidates.
const STAGGER: Duration = Duration::from_millis(150);
/// QUIC close code: we did not accept this peer.
const NOT_ACCEPTED: u32 = 0x10;

/// The candidates our socket can reach (same address family).
fn usable(inner: &Inner, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
    let local_v4 = inner
        .endpoint
        .local_addr()
        .map(|a| a.is_ipv4())
        .unwrap_or(true);
    candidates
        .iter()
        .copied()
        .filter(|a| a.is_ipv4() == local_v4)
        .collect()
}

/// The acceptor's side: probe the requester's candidates so that our NAT lets
/// its connection in. The outcome is only logged: the requester dials.
pub(crate) fn punch_for_requester(
    inner: &Arc<Inner>,
    peer: NodeId,
    candidates: &[SocketAddr],
    ticket: PunchTicket,
) {
    let candidates = usable(inner, candidates);
    let started =
        inner
            .endpoint
            .start_punch(Role::Acceptor, ticket, &candidates, PunchConfig::default());
    match started {
        Ok(outcome) => inner.spawn(async move {
            match outcome.await {
                Ok(Some(addr)) => debug!(peer = %peer.short(), %addr, "punched toward requester"),
                _ => debug!(peer = %peer.short(), "punch toward requester found no path"),
            }
        }),
        Err(e) => warn!(peer = %peer.short(), error = %e, "cannot punch"),
    }
}

/// Dials `peer` at `candidates` while punching toward them, and registers the
/// first connection that proves `peer`'s key.
pub(crate) async fn dial(
    inner: Arc<Inner>,
    peer: NodeId,
    candidates: Vec<SocketAddr>,
    ticket: PunchTicket,
) {
    let candidates = usable(&inner, &candidates);
    let started =
        inner
            .endpoint
            .start_punch(Role::Requester, ticket, &candidates, PunchConfig::default());
    let mut punched = match started {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "cannot punch");
            None
        }
    };
    let mut attempts = JoinSet::new();
    let attempt = |attempts: &mut JoinSet<_>, addr: SocketAddr, delay: Duration| {
        let inner = inner.clone();
        attempts.spawn(async move {
            tokio::time::sleep(delay).await;
            debug!(peer = %peer.short(), %addr, "dialing");
            inner.endpoint.connect(addr, chat::ALPN, Some(peer)).await
        });
    };
    for (i, addr) in candidates.iter().enumerate() {
        attempt(&mut attempts, *addr, STAGGER * i as u32);
    }
    let mut last_error = String::from("no usable candidate address");
    loop {
        tokio::select! {
            result = attempts.join_next(), if !attempts.is_empty() => match result {
                Some(Ok(Ok((conn, _)))) => {
                    attempts.abort_all();
                    register(&inner, peer, conn);
                    return;
                }
                Some(Ok(Err(e))) => last_error = e.to_string(),
                Some(Err(e)) => last_error = e.to_string(),
                None => {}
            },
            outcome = async { punched.as_mut().expect("guarded by the if").await }, if punched.is_some() => {
                punched = None;
                match outcome {
                    Ok(Some(addr)) => {
                        debug!(peer = %peer.short(), %addr, "punched; dialing the path");
                        attempt(&mut attempts, addr, Duration::ZERO);
                    }
                    _ => last_error = "hole punching found no path".into(),
                }
            }
            else => break,
        }
    }
    let name = {
        let mut st = inner.state();
        if let Some(p) = st.peers.get_mut(&peer) {
            p.request = None;
            p.accepted = p.connected();
        }
        st.name_of(&peer)
    };
    warn!(peer = %peer.short(), error = %last_error, "could not connect");
    inner.emit(NodeEvent::ConnectFailed {
        name,
        error: last_error,
    });
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

/// Adds `conn` to `peer`'s live connections (the newest is used), serves chat on
/// it, and removes it when it closes. People hear of the first connection and of
/// the last one closing, not of the ones in between.
fn register(inner: &Arc<Inner>, peer: NodeId, conn: quinn::Connection) {
    let (name, first) = {
        let mut st = inner.state();
        let p = st.peers.entry(peer).or_default();
        p.request = None;
        p.accepted = true;
        let first = !p.connected();
        p.conns.push(conn.clone());
        if p.conns.len() > MAX_CONNS_PER_PEER {
            let oldest = p.conns.remove(0);
            oldest.close(quinn::VarInt::from_u32(0), b"too many connections");
        }
        (st.name_of(&peer), first)
    };
    let rtt_ms = conn.rtt().as_secs_f64() * 1000.0;
    info!(peer = %peer.short(), remote = %conn.remote_address(), rtt_ms, first, "connected");
    if first {
        inner.emit(NodeEvent::Connected {
            name,
            path: ConnectionState::Direct,
            remote: conn.remote_address(),
            rtt_ms,
        });
    }
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
    });
}
