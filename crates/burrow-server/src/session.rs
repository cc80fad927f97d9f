//! One node's session with the server: the QUIC handshake, Hello and
//! admission ([`register_node`]), then its control stream until it leaves
//! ([`run_session`]): messages in, rate-limited and checked, and the registry's
//! answers out through the session's queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::rendezvous::{self, ClientMsg, PeerInfo, Refusal, ServerMsg, MAX_CANDIDATES};
use burrow_proto::{Name, NodeId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::admission::points;
use crate::journal::Actor;
use crate::server::{Session, Shared};
use crate::{register, tracker};
use burrow_proto::limit::RateLimit;

/// How many messages wait for a slow node before the server drops its session.
const SESSION_QUEUE: usize = 256;
/// Messages per second a node may send after its first [`MESSAGE_BURST`]: far
/// above what a person's commands produce, far below what would let one node
/// flood others through the broker.
const MESSAGE_RATE: f64 = 20.0;
/// Messages a node may send at once.
const MESSAGE_BURST: f64 = 40.0;
/// Tracker searches per second a node may make after its first
/// [`SEARCH_BURST`]; past that each waits its turn (the node's session reads
/// nothing else meanwhile), so a searcher's cost to the server is bounded.
const SEARCH_RATE: f64 = 2.0;
/// Searches a node may make at once.
const SEARCH_BURST: f64 = 10.0;
/// How long a new connection has to open its control stream and say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node's session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    #[error("no key in handshake")]
    NoKey,
    #[error("no Hello within {HELLO_TIMEOUT:?}")]
    HelloTimeout,
    #[error("stream: {0}")]
    Framed(#[from] burrow_net::FramedError),
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("store: {0}")]
    Store(String),
}

/// Serves one node's connection: its handshake and registration, then its
/// session until it leaves.
pub(crate) async fn serve_node(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    counted: InProgress,
) -> Result<(), SessionError> {
    // Boxed: registering takes a large future that is done with once the node
    // is in, while the session's lives as long as the node stays (100 000 of
    // them on a busy server).
    let remote = incoming.remote_address();
    let result = match Box::pin(register_node(incoming, &shared, counted)).await {
        Ok(node) => run_session(node, shared.clone()).await,
        Err(e) => Err(e),
    };
    // A node over TCP had its link for this session only.
    shared.close_link(remote);
    result
}

/// A node that registered.
struct Registered {
    conn: quinn::Connection,
    id: NodeId,
    name: Name,
    observed: SocketAddr,
    lan_addrs: Vec<SocketAddr>,
    reader: FrameReader,
    writer: FrameWriter,
}

/// The handshake, Hello and admission.
async fn register_node(
    incoming: quinn::Incoming,
    shared: &Arc<Shared>,
    counted: InProgress,
) -> Result<Registered, SessionError> {
    let observed = shared.real(incoming.remote_address());
    let misbehaved = |what: &'static str, points: u32| {
        shared.admission(|a, now| a.misbehaved(now, observed.ip(), what, points))
    };
    let conn = incoming.await;
    drop(counted);
    let conn = conn?;
    let id = burrow_net::peer_id(&conn).ok_or(SessionError::NoKey)?;
    let Ok(stream) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await else {
        misbehaved("no Hello", points::NO_HELLO);
        return Err(SessionError::HelloTimeout);
    };
    let (send, recv) = stream?;
    let mut reader = FrameReader::new(recv, rendezvous::VERSION, rendezvous::MAX_CLIENT_FRAME);
    let mut writer = FrameWriter::new(send, rendezvous::VERSION, rendezvous::MAX_FRAME);

    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.read::<ClientMsg>())
        .await
        .map_err(|_| SessionError::HelloTimeout);
    let (name, lan_addrs, credentials) = match hello {
        Ok(Ok(Some(ClientMsg::Hello {
            name,
            lan_addrs,
            credentials,
        }))) => (name, lan_addrs, credentials),
        Ok(Err(e)) => {
            warn!(node = %id.short(), error = %e, "bad first frame");
            misbehaved("bad first frame", points::BAD_FRAME);
            conn.close(burrow_net::Close::BadFrame.code(), b"bad frame");
            return Err(e.into());
        }
        Err(e) => {
            misbehaved("no Hello", points::NO_HELLO);
            return Err(e);
        }
        Ok(Ok(_)) => {
            misbehaved("no Hello", points::NO_HELLO);
            refuse(&conn, &mut writer, Refusal::HelloExpected).await;
            return Err(SessionError::Refused(Refusal::HelloExpected));
        }
    };

    match register::admit(shared, id, &name, credentials, observed.ip()).await {
        Ok(how) => {
            shared.journal.log(
                Actor::Server,
                "registered",
                &name,
                format!("node {} from {observed} ({how})", id.short()),
            );
        }
        Err(register::AdmitError::Store(e)) => return Err(SessionError::Store(e)),
        Err(register::AdmitError::Refused(reason)) => {
            info!(node = %id.short(), %name, %observed, %reason, "registration refused");
            shared.journal.log(
                Actor::Server,
                "refused",
                &name,
                format!("node {} from {observed}: {reason}", id.short()),
            );
            refuse(&conn, &mut writer, reason.clone()).await;
            return Err(SessionError::Refused(reason));
        }
    }
    Ok(Registered {
        conn,
        id,
        name,
        observed,
        lan_addrs,
        reader,
        writer,
    })
}

/// The session of a registered node, until it leaves.
async fn run_session(node: Registered, shared: Arc<Shared>) -> Result<(), SessionError> {
    let Registered {
        conn,
        id,
        name,
        observed,
        lan_addrs,
        mut reader,
        mut writer,
    } = node;
    let misbehaved = |what: &'static str, points: u32| {
        shared.admission(|a, now| a.misbehaved(now, observed.ip(), what, points))
    };
    let lan: Vec<SocketAddr> = lan_addrs
        .into_iter()
        .filter(|a| !a.ip().is_unspecified() && !a.ip().is_multicast() && a.port() != 0)
        .take(MAX_CANDIDATES)
        .collect();
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let news = Arc::new(PresenceNews::default());
    let answers = tx.clone();
    {
        // Session map and registry change together, so both name the same
        // (newest) session for this node.
        let mut hub = shared.hub();
        let replaced = hub.sessions.insert(
            id,
            Session {
                id: session,
                tx,
                conn: conn.clone(),
                name: name.clone(),
                news: news.clone(),
            },
        );
        if let Some(old) = replaced {
            old.conn.close(
                burrow_net::Close::Replaced.code(),
                b"replaced by a newer session",
            );
        }
        let info = PeerInfo {
            id,
            name: name.clone(),
        };
        let out = hub.registry.handle_join(info, session, observed, lan);
        hub.deliver(out);
    }
    shared.admission(|a, _| a.registered(observed.ip()));
    // Fails only while the server shuts down.
    let _ = shared.watch.send((id, conn.clone())).await;
    info!(node = %id.short(), %name, %observed, "online");

    let writer_task = tokio::spawn(async move {
        loop {
            // The queue first: the Welcome is in it before any news.
            let batch = tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(msg) => vec![*msg],
                    None => break,
                },
                () = news.ready.notified() => news.take(),
            };
            for msg in &batch {
                if writer.write(msg).await.is_err() {
                    return;
                }
            }
        }
    });

    let mut limit = RateLimit::new(MESSAGE_RATE, MESSAGE_BURST, Instant::now());
    let mut searches = RateLimit::new(SEARCH_RATE, SEARCH_BURST, Instant::now());
    let result = loop {
        match reader.read::<ClientMsg>().await {
            Ok(Some(ClientMsg::Bye)) | Ok(None) => break Ok(()),
            Ok(Some(msg)) => {
                if !limit.allow(Instant::now()) {
                    warn!(node = %id.short(), "too many messages; closing the session");
                    misbehaved("message flood", points::FLOOD);
                    conn.close(
                        burrow_net::Close::TooManyMessages.code(),
                        b"too many messages",
                    );
                    break Ok(());
                }
                if let ClientMsg::Connect { peer } = &msg {
                    if !shared.admission(|a, now| a.allow_request(now, id)) {
                        let refusal = ServerMsg::Refused {
                            peer: Some(*peer),
                            reason: Refusal::TooManyRequests,
                        };
                        let _ = answers.try_send(Box::new(refusal));
                        continue;
                    }
                }
                debug!(node = %id.short(), ?msg, "message");
                if matches!(
                    msg,
                    ClientMsg::Offer { .. } | ClientMsg::Unoffer { .. } | ClientMsg::Search { .. }
                ) {
                    if matches!(msg, ClientMsg::Search { .. }) {
                        // One token's time: the bucket has one by then.
                        while !searches.allow(Instant::now()) {
                            tokio::time::sleep(Duration::from_secs_f64(1.0 / SEARCH_RATE)).await;
                        }
                    }
                    let online = |found| tracker::entries(&shared.hub().registry, found);
                    let stores = (&shared.store, &shared.search_store);
                    if let Some(answer) = Box::pin(tracker::handle(stores, online, id, msg)).await {
                        if answers.try_send(Box::new(answer)).is_err() {
                            warn!(node = %id.short(), "node is not reading its answers");
                        }
                    }
                } else if shared.hub().handle_msg(id, msg) {
                    misbehaved("answer to no request", points::FORGED_REQUEST);
                }
            }
            Err(burrow_net::FramedError::Read(e)) => {
                debug!(node = %id.short(), error = %e, "connection lost");
                break Ok(());
            }
            Err(e) => {
                warn!(node = %id.short(), error = %e, "bad frame; closing the session");
                misbehaved("bad frame", points::BAD_FRAME);
                conn.close(burrow_net::Close::BadFrame.code(), b"bad frame");
                break Err(e.into());
            }
        }
    };

    {
        let mut hub = shared.hub();
        if hub.sessions.get(&id).is_some_and(|s| s.id == session) {
            hub.sessions.remove(&id);
        }
        let out = hub.registry.handle_leave(id, session);
        hub.deliver(out);
    }
    shared.admission(|a, _| a.left(observed.ip()));
    writer_task.abort();
    conn.close(burrow_net::Close::Done.code(), b"bye");
    info!(node = %id.short(), %name, "offline");
    result
}

/// Sends a refusal and closes the connection once the peer has read it.
async fn refuse(conn: &quinn::Connection, writer: &mut FrameWriter, reason: Refusal) {
    let _ = writer
        .write(&ServerMsg::Refused { peer: None, reason })
        .await;
    writer.finish();
    // Give the refusal time to arrive before the close overtakes it.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    conn.close(burrow_net::Close::Refused.code(), b"refused");
}

/// Most peers whose joins or leaves wait for one node at once (each peer's
/// latest only); past this the node is too slow and is disconnected.
pub(crate) const MAX_NEWS: usize = 8192;

/// The joins and leaves waiting for one node, coalesced per peer: a node
/// that comes and goes a thousand times while the node is busy costs it one
/// message, and churn of many nodes can't overflow the node's queue (which
/// once dropped honest nodes under `--presence everyone`). The writer sends
/// them after what its queue holds.
#[derive(Debug, Default)]
pub(crate) struct PresenceNews {
    pending: std::sync::Mutex<HashMap<NodeId, ServerMsg>>,
    pub(crate) ready: tokio::sync::Notify,
}

/// What [`PresenceNews::note`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Noted {
    /// A join or a leave: it waits with the news.
    Taken,
    /// Anything else: for the queue.
    NotNews,
    /// [`MAX_NEWS`] peers wait already: the node is too slow.
    Full,
}

impl PresenceNews {
    /// Keeps `msg` if it is a join or a leave.
    pub(crate) fn note(&self, msg: &ServerMsg) -> Noted {
        let peer = match msg {
            ServerMsg::PeerJoined(info) => info.id,
            ServerMsg::PeerLeft { id } => *id,
            _ => return Noted::NotNews,
        };
        let mut pending = self.pending.lock().expect("news lock is never poisoned");
        if pending.len() >= MAX_NEWS && !pending.contains_key(&peer) {
            return Noted::Full;
        }
        pending.insert(peer, msg.clone());
        drop(pending);
        self.ready.notify_one();
        Noted::Taken
    }

    /// Everything waiting, each peer's latest news.
    pub(crate) fn take(&self) -> Vec<ServerMsg> {
        let mut pending = self.pending.lock().expect("news lock is never poisoned");
        std::mem::take(&mut *pending).into_values().collect()
    }
}

/// Counts one handshake in progress for as long as it lives (also when its
/// future is dropped half-way). Made in the accept loop, so a burst of
/// Initials is counted before the next one is looked at.
pub(crate) struct InProgress(Arc<Shared>);

impl InProgress {
    pub(crate) fn count(shared: Arc<Shared>) -> Self {
        shared.handshakes.fetch_add(1, Ordering::Relaxed);
        InProgress(shared)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn peer(seed: u64, name: &str) -> PeerInfo {
        PeerInfo {
            id: SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public(),
            name: name.parse().unwrap(),
        }
    }

    #[test]
    fn news_keeps_each_peers_latest_and_passes_the_rest_on() {
        let news = PresenceNews::default();
        let (a, b) = (peer(1, "a"), peer(2, "b"));
        for _ in 0..1000 {
            assert_eq!(news.note(&ServerMsg::PeerJoined(a.clone())), Noted::Taken);
            assert_eq!(news.note(&ServerMsg::PeerLeft { id: a.id }), Noted::Taken);
        }
        assert_eq!(news.note(&ServerMsg::PeerJoined(b.clone())), Noted::Taken);
        let mut got = news.take();
        got.sort_by_key(|m| matches!(m, ServerMsg::PeerJoined(_)));
        assert_eq!(
            got,
            [ServerMsg::PeerLeft { id: a.id }, ServerMsg::PeerJoined(b)]
        );
        assert!(news.take().is_empty());
        let other = ServerMsg::Refused {
            peer: None,
            reason: Refusal::Kicked,
        };
        assert_eq!(news.note(&other), Noted::NotNews);
        // Bounded: past MAX_NEWS peers the node is too slow.
        for i in 0..MAX_NEWS as u64 {
            let left = ServerMsg::PeerLeft {
                id: peer(10 + i, "x").id,
            };
            assert_eq!(news.note(&left), Noted::Taken);
        }
        let one_more = ServerMsg::PeerLeft {
            id: peer(1, "a").id,
        };
        assert_eq!(news.note(&one_more), Noted::Full);
    }
}
