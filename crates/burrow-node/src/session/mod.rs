//! The node's session with the rendezvous server.
//!
//! [`connect`] dials the server (checking its key: pinned by the address, or
//! trusted on first use via [`KnownServers`]), says Hello and waits for Welcome.
//! [`run`] then reads the server's messages into the node's state until the
//! session is lost, and reconnects with jittered exponential backoff. Direct peer
//! connections don't depend on the session and survive its loss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use burrow_net::{iface, ConnectError, FrameReader, FrameWriter};
use burrow_proto::rendezvous::{self, ClientMsg, ServerMsg};
use burrow_proto::NodeId;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::event::NodeEvent;
use crate::link::Inner;
use crate::peers;
use crate::trust::KnownServers;

mod broker;
mod dial;
pub(crate) mod error;

use dial::{dial, dial_by_name, server_addr};
pub use error::SessionError;

/// How long the server has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for the server before senders wait.
const OUTBOX: usize = 64;
/// First retry delay after losing the server.
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// A registered session, ready to run.
pub(crate) struct Session {
    conn: quinn::Connection,
    reader: FrameReader,
    writer: FrameWriter,
    /// The outbox: the node's operations send through `tx` (also in the state).
    tx: mpsc::Sender<ClientMsg>,
    rx: mpsc::Receiver<ClientMsg>,
}

/// Dials the server, checks its key, registers, and applies the Welcome.
pub(crate) async fn connect(inner: &Arc<Inner>) -> Result<Session, SessionError> {
    let mut reached = reach(inner).await?;
    let (mut reader, writer) = hello(inner, &reached.conn, reached.via, reached.local).await?;
    let first = tokio::time::timeout(WELCOME_TIMEOUT, reader.read::<ServerMsg>())
        .await
        .map_err(|_| SessionError::Lost("no answer to Hello".into()))??;
    match first {
        Some(ServerMsg::Welcome {
            observed,
            also,
            proof,
            peers,
            presence,
            ..
        }) => {
            let (tx, rx) = mpsc::channel::<ClientMsg>(OUTBOX);
            let welcome = Welcome {
                observed,
                also,
                proof,
                peers,
                presence,
            };
            apply_welcome(inner, &mut reached, &tx, welcome);
            Ok(Session {
                conn: reached.conn,
                reader,
                writer,
                tx,
                rx,
            })
        }
        Some(ServerMsg::Refused { reason, .. }) => {
            reached
                .conn
                .close(burrow_net::Close::Done.code(), b"refused");
            Err(SessionError::Refused {
                reason,
                us: inner.id,
            })
        }
        Some(other) => Err(SessionError::Lost(format!(
            "expected Welcome, got {other:?}"
        ))),
        None => Err(SessionError::Lost("server closed the session".into())),
    }
}

/// The server, reached: how, over which connection, its key.
struct Reached {
    /// The server as `host:port`, for people and the known-servers file.
    host: String,
    /// Where the session's packets go (a real address, or a TCP link's).
    via: SocketAddr,
    conn: quinn::Connection,
    key: NodeId,
    /// Our socket's address.
    local: SocketAddr,
    /// How deep our NATs are, being measured (see [`measure_nat_hops`]).
    hop_probe: Option<burrow_net::ttl::HopProbe>,
}

/// Resolves and dials the server (through the proxy by name where nothing
/// else reaches it), and checks its key: pinned by the address, or trusted
/// on first use and remembered.
async fn reach(inner: &Arc<Inner>) -> Result<Reached, SessionError> {
    let Some(server) = &inner.config.server else {
        return Err(SessionError::Lost("this node runs without a server".into()));
    };
    let host = server.host_port();
    let local = inner
        .endpoint
        .local_addr()
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    let addr = match server_addr(&host, local).await {
        Ok(addr) => Some(addr),
        // A network whose only way out is a proxy often has no outside DNS
        // either: the proxy resolves the name for its tunnel.
        Err(SessionError::Resolve { reason, .. }) if inner.config.proxy.is_some() => {
            info!(server = %host, %reason, "asking the proxy to reach the server by name");
            None
        }
        Err(e) => return Err(e),
    };
    let known = KnownServers::new(&inner.config.home);
    let remembered = known.lookup(&host);
    let expected = server.key.or(remembered);
    // How deep our NATs are is measured alongside (its answers are read once
    // we are registered). Its datagrams leave first: on a sequential NAT they
    // take a port, which must come before the session's and the mapping
    // measurement's, not between them.
    let hop_probe = addr.map(burrow_net::ttl::HopProbe::send);
    let (via, dialed) = match addr {
        Some(addr) => dial(inner, addr, expected).await,
        None => dial_by_name(inner, server, expected).await?,
    };
    let addr = addr.map_or_else(|| host.clone(), |a| a.to_string());
    let (conn, key) = match dialed {
        Ok(ok) => ok,
        Err(ConnectError::WrongKey {
            expected, actual, ..
        }) => {
            return Err(match server.key {
                Some(_) => SessionError::PinnedKeyMismatch {
                    addr,
                    expected,
                    actual,
                },
                None => SessionError::KeyChanged {
                    host,
                    expected,
                    actual,
                    file: known.path().display().to_string(),
                },
            })
        }
        Err(source) => return Err(SessionError::Unreachable { addr, source }),
    };
    if server.key.is_none() && remembered.is_none() {
        info!(server = %host, key = %key, "trusting server key on first use");
        if let Err(e) = known.remember(&host, &key) {
            warn!(error = %e, "cannot record the server key");
        }
    }
    Ok(Reached {
        host,
        via,
        conn,
        key,
        local,
        hop_probe,
    })
}

/// Measures how our NAT maps, then opens the session's stream and says
/// Hello, with our NAT right behind it.
async fn hello(
    inner: &Arc<Inner>,
    conn: &quinn::Connection,
    via: SocketAddr,
    local: SocketAddr,
) -> Result<(FrameReader, FrameWriter), SessionError> {
    // How our NAT maps (STUN at the server's main and measurement ports),
    // measured once the handshake is done and sent right behind the Hello, so
    // the server knows it before anyone can ask to connect to us. Not during
    // the handshake: a STUN request racing the QUIC Initial out of one socket
    // can make a random-port NAT create two mappings for the one flow (a
    // conntrack clash), and the server then hears the session from a port
    // that isn't its connection's (seen as 1 registration in 40 failing).
    // Over TCP there is no UDP mapping to measure (UDP is what failed).
    let mapping = if burrow_net::tcp::is_link(via) {
        burrow_proto::punch::Mapping::Unknown
    } else {
        crate::nat::mapping(&inner.endpoint, via)
            .await
            .map_or(burrow_proto::punch::Mapping::Unknown, |(_, m)| m)
    };
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    let reader = FrameReader::new(recv, rendezvous::VERSION, rendezvous::MAX_FRAME);
    let mut writer = FrameWriter::new(send, rendezvous::VERSION, rendezvous::MAX_FRAME);
    // Relay-only: not even our own addresses go to the server for peers.
    let mut lan_addrs = if inner.config.path == crate::PathPolicy::RelayOnly {
        Vec::new()
    } else {
        iface::lan_candidates(local)
    };
    lan_addrs.truncate(rendezvous::MAX_CANDIDATES);
    writer
        .write(&ClientMsg::Hello {
            name: inner.config.name.clone(),
            lan_addrs,
            credentials: inner.config.credentials.clone(),
        })
        .await?;
    let nat = {
        let mut st = inner.state();
        st.mapping = mapping;
        burrow_proto::punch::NatInfo {
            // Not in the state yet: the session's address is set on Welcome.
            no_udp: burrow_net::tcp::is_link(via),
            ..st.nat_info()
        }
    };
    writer.write(&ClientMsg::Nat { nat }).await?;
    Ok((reader, writer))
}

/// What the server's Welcome says.
struct Welcome {
    observed: SocketAddr,
    also: Vec<SocketAddr>,
    proof: [u8; 12],
    peers: Vec<rendezvous::PeerInfo>,
    presence: rendezvous::PresenceScope,
}

/// Applies the Welcome: the session is usable from here (operations queue on
/// `tx` until its writer starts), who is online is as the server says, and
/// every service hears we registered.
fn apply_welcome(
    inner: &Arc<Inner>,
    reached: &mut Reached,
    tx: &mpsc::Sender<ClientMsg>,
    w: Welcome,
) {
    let Welcome {
        observed,
        also,
        proof,
        peers,
        presence,
    } = w;
    {
        let mut st = inner.state();
        st.server_tx = Some(tx.clone());
        st.server_addr = Some(reached.via);
        st.server_id = Some(reached.key);
        st.public_addr = Some(observed);
        st.public_other = None;
        st.other_proof = Some(proof);
        st.server_also = also
            .iter()
            .map(|a| burrow_net::paths::canonical(*a))
            .take(rendezvous::MAX_ALSO)
            .collect();
        // Behind a NAT (the server saw another address than ours),
        // punches open our side first; how deep our NATs are is
        // measured below, one hop past a home router meanwhile.
        let behind_nat = !iface::lan_candidates(reached.local)
            .iter()
            .any(|a| a.ip() == observed.ip());
        st.open_ttl = behind_nat.then(|| burrow_net::ttl::open_ttl(None));
        if let Some(probe) = reached.hop_probe.take().filter(|_| behind_nat) {
            measure_nat_hops(inner, probe);
        }
        st.presence = presence;
        for p in st.peers.values_mut() {
            p.online = false;
        }
        for info in peers {
            st.mark_online(info);
        }
        let ids: Vec<NodeId> = st.peers.keys().copied().collect();
        for id in ids {
            st.forget_idle(&id);
        }
        crate::presence::send_watches(&st);
    }
    inner.emit(NodeEvent::ServerConnected {
        over_tcp: burrow_net::tcp::is_link(reached.via),
        server: reached.host.clone(),
        public_addr: observed,
    });
    if inner.config.path != crate::PathPolicy::RelayOnly && !also.is_empty() {
        inner.spawn(find_other_family(inner.clone(), also, proof));
    }
    peers::relink_all(inner);
    inner.router().tell(&crate::service::LinkEvent::Registered);
}

/// How long we wait for the server's STUN in our other address family.
const OTHER_FAMILY_WAIT: Duration = Duration::from_secs(3);

/// Asks the server's STUN at its addresses of our other address family, with
/// the Welcome's proof, so that the server sees where we are there (and
/// offers it to peers of that family), and we learn it. Addresses we have no
/// route to are not tried.
async fn find_other_family(inner: Arc<Inner>, also: Vec<SocketAddr>, proof: [u8; 12]) {
    for server in also
        .into_iter()
        .map(burrow_net::paths::canonical)
        .take(burrow_proto::rendezvous::MAX_ALSO)
        .filter(|a| burrow_net::iface::has_route(*a))
    {
        match inner
            .endpoint
            .stun_as(server, proof, OTHER_FAMILY_WAIT)
            .await
        {
            Ok(seen) => {
                let seen = burrow_net::paths::canonical(seen);
                {
                    let mut st = inner.state();
                    // Unless a newer session has taken over meanwhile.
                    if st.other_proof != Some(proof) {
                        return;
                    }
                    info!(%seen, "our address in the other family");
                    st.public_other = Some(seen);
                }
                // A link the server made before it saw us there gave the
                // peer no address of ours in this family: punch it again.
                peers::repunch_indirect(&inner);
                return;
            }
            Err(e) => debug!(%server, error = %e, "no STUN answer in the other family"),
        }
    }
}

/// Runs sessions until shutdown: serves one, and when it is lost, reconnects,
/// unless the server refused us for a reason that trying again won't change.
pub(crate) async fn run(inner: Arc<Inner>, first: Session) {
    let mut session = first;
    loop {
        let error = serve(&inner, session).await;
        if inner.shutdown.is_cancelled() {
            return;
        }
        forget_session(&inner);
        if expelled(&inner, &error) {
            return;
        }
        let mut error = error.to_string();
        let mut attempt = 0u32;
        session = loop {
            attempt += 1;
            let delay = backoff(attempt, inner.config.max_backoff);
            warn!(%error, retry_in = ?delay, "server session lost");
            inner.emit(NodeEvent::ServerLost {
                error: error.clone(),
                retry_in_ms: delay.as_millis() as u64,
            });
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match connect(&inner).await {
                Ok(s) => break s,
                Err(e) if expelled(&inner, &e) => return,
                Err(e) => error = e.to_string(),
            }
        };
    }
}

/// If `error` is a final refusal, says so (the node stops trying) and returns true.
fn expelled(inner: &Inner, error: &SessionError) -> bool {
    match error {
        SessionError::Refused { reason, .. } | SessionError::Expelled { reason, .. }
            if reason.is_final() =>
        {
            info!(%reason, "the server refused us; not trying again");
            inner.emit(NodeEvent::Expelled {
                error: error.to_string(),
                hint: error.hint(),
            });
            true
        }
        _ => false,
    }
}

/// Jittered exponential backoff: 250 ms doubling to `max`, each delay drawn
/// uniformly from its upper half so that nodes don't retry in lockstep.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let d = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16).saturating_sub(1))
        .min(max);
    rand::thread_rng().gen_range(d / 2..=d)
}

/// Forgets what only the server session vouched for: presence and pending requests.
fn forget_session(inner: &Inner) {
    let mut st = inner.state();
    st.server_tx = None;
    st.waiters.clear();
    // A TCP link to the server carried only this session.
    if let Some(server) = st.server_addr {
        inner.endpoint.close_link(server); // a no-op over UDP
    }
    for p in st.peers.values_mut() {
        p.online = false;
        p.request = None;
        p.accepted = p.connected();
    }
    let ids: Vec<NodeId> = st.peers.keys().copied().collect();
    for id in ids {
        st.forget_idle(&id);
    }
}

/// Serves one session until it is lost (or shutdown): returns why it ended.
async fn serve(inner: &Arc<Inner>, session: Session) -> SessionError {
    let Session {
        conn,
        mut reader,
        mut writer,
        tx,
        mut rx,
    } = session;
    // Writes run in their own task: a read cancelled mid-frame would corrupt the stream.
    let writer_task = tokio::spawn(tracing::Instrument::in_current_span(async move {
        while let Some(msg) = rx.recv().await {
            let bye = msg == ClientMsg::Bye;
            if writer.write(&msg).await.is_err() || bye {
                break;
            }
        }
        writer.finish();
    }));
    let error = loop {
        let msg = tokio::select! {
            _ = inner.shutdown.cancelled() => {
                let _ = tx.send(ClientMsg::Bye).await;
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_millis(500), writer_task).await;
                conn.close(burrow_net::Close::Done.code(), b"bye");
                return SessionError::Lost("shutting down".into());
            }
            m = reader.read::<ServerMsg>() => m,
        };
        match msg {
            Ok(Some(ServerMsg::Refused { peer: None, reason })) if reason.is_final() => {
                break SessionError::Expelled {
                    reason,
                    us: inner.id,
                }
            }
            Ok(Some(m)) => handle(inner, m),
            Ok(None) => break SessionError::Lost("the server closed the session".into()),
            Err(e) => break e.into(),
        }
    };
    writer_task.abort();
    conn.close(burrow_net::Close::Done.code(), b"session lost");
    error
}

/// Applies one server message to the node's state.
fn handle(inner: &Arc<Inner>, msg: ServerMsg) {
    debug!(?msg, "from server");
    let mut st = inner.state();
    match msg {
        ServerMsg::Welcome { .. } => warn!("unexpected second Welcome"),
        ServerMsg::Peers(list) => {
            for info in list {
                st.mark_online(info);
            }
        }
        ServerMsg::PeerJoined(info) => {
            let name = info.name.to_string();
            let id = info.id;
            if let Some(p) = st.mark_online(info) {
                let linked = p.connected();
                drop(st);
                inner.emit(NodeEvent::PeerOnline { name });
                if linked {
                    // It registered again: its addresses may have changed, and
                    // the server may have forgotten our link.
                    peers::request_repunch(inner, id);
                }
            }
        }
        ServerMsg::PeerLeft { id } => {
            let name = st.name_of(&id);
            if let Some(p) = st.peers.get_mut(&id) {
                p.online = false;
                p.request = None;
            }
            st.forget_idle(&id);
            drop(st);
            inner.emit(NodeEvent::PeerOffline { name });
        }
        ServerMsg::Notice { text, everyone } => {
            drop(st);
            inner
                .router()
                .tell(&crate::service::LinkEvent::Notice { text, everyone });
        }
        ServerMsg::Pending { peer } => broker::pending(&mut st, peer),
        ServerMsg::Incoming { peer } => broker::incoming(inner, st, peer),
        ServerMsg::Accepted(offer) => broker::accepted(inner, st, offer),
        ServerMsg::Punch(offer) => broker::punch(inner, st, offer),
        ServerMsg::Closed {
            peer,
            direction,
            reason,
        } => broker::closed(inner, st, peer, direction, reason),
        ServerMsg::Refused {
            peer: Some(peer),
            reason,
        } => broker::refused(&mut st, peer, reason),
        ServerMsg::Refused { peer: None, reason } => warn!(%reason, "server refused a message"),
        ServerMsg::Found { query_id, peer } => {
            if let Some(tx) = st.lookups.remove(&query_id) {
                let _ = tx.send(peer);
            }
        }
        ServerMsg::SearchResults { query_id, results } => {
            if let Some(tx) = st.searches.remove(&query_id) {
                let _ = tx.send(results);
            }
        }
    }
}

/// Reads how many hops our NATs are deep from `probe`'s answers and sets the
/// opening probes' TTL from it.
fn measure_nat_hops(inner: &Arc<Inner>, probe: burrow_net::ttl::HopProbe) {
    let inner2 = inner.clone();
    inner.spawn(async move {
        let hops = tokio::task::spawn_blocking(move || probe.collect(crate::nat::HOPS_WAIT))
            .await
            .ok()
            .flatten();
        let ttl = burrow_net::ttl::open_ttl(hops);
        tracing::debug!(?hops, ttl, "our NATs' depth; opening probes' TTL");
        let mut st = inner2.state();
        if st.open_ttl.is_some() {
            st.open_ttl = Some(ttl);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let max = Duration::from_secs(30);
        for attempt in 1..40 {
            let d = backoff(attempt, max);
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << (attempt.min(16) - 1))
                .min(max);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(1, max) <= BACKOFF_BASE);
    }
}
