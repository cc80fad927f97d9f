//! The link layer's core: what every part of a running node shares (its key,
//! endpoint, store, state, events, tasks). Services never see it: they hold a
//! [`crate::handle::LinkHandle`]; the link's own modules (the session, peer
//! links, presence, contacts, conduct, NAT) take it directly.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use burrow_net::Endpoint;
use burrow_proto::rendezvous::{ClientMsg, Direction, Query, TrackerEntry};
use burrow_proto::NodeId;
use burrow_store::NodeStore;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::error::{RequestError, ServerError, StoreFailure};
use crate::event::NodeEvent;
use crate::state::{resolve, RequestOp, State};

/// How long an operation waits for the server's answer.
pub(crate) const SERVER_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a tracker search waits for its answer.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer we ask for a link has to accept.
const ACCEPT_WAIT: Duration = Duration::from_secs(60);

pub(crate) struct Inner {
    pub config: NodeConfig,
    pub id: NodeId,
    pub endpoint: Endpoint,
    pub store: Arc<Mutex<NodeStore>>,
    pub state: Mutex<State>,
    pub events: broadcast::Sender<NodeEvent>,
    pub shutdown: CancellationToken,
    /// The services peers reach, by ALPN.
    /// (Set once, right after start builds the services.)
    pub router: std::sync::OnceLock<crate::service::Router>,
    /// `node{id, name}`: every task of this node runs in it, so the logs of
    /// several nodes in one process can be told apart.
    pub span: tracing::Span,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The home directory's lock, held until shutdown.
    pub(crate) lock: Mutex<Option<File>>,
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state lock is never poisoned")
    }

    /// The services, by ALPN.
    pub fn router(&self) -> &crate::service::Router {
        self.router
            .get()
            .expect("the router is set before the node runs")
    }

    pub fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// Opens a connection of `alpn` to `peer` on its link's path: its virtual
    /// address (direct or relayed underneath, see `burrow_net::paths`), or
    /// the real address its link connection came from.
    pub async fn connect_peer(
        &self,
        peer: NodeId,
        alpn: &[u8],
    ) -> Result<quinn::Connection, burrow_net::ConnectError> {
        // A link a peer dialed from a real address (serverless, joining from
        // our ticket) has no path entry: its services go where it came from.
        let real = self
            .state()
            .peers
            .get(&peer)
            .and_then(|p| p.conn())
            .map(|c| burrow_net::paths::canonical(c.remote_address()))
            .filter(|a| !burrow_net::paths::is_virtual(*a));
        let to = real.unwrap_or_else(|| self.endpoint.paths().open(peer));
        let (conn, _) = self.endpoint.connect(to, alpn, Some(peer)).await?;
        Ok(conn)
    }

    /// Counts a strike against `peer` for `what` (see [`crate::conduct`]);
    /// at the limit, closes every connection with it and returns true.
    pub(crate) fn strike(&self, peer: NodeId, what: &str) -> bool {
        let conns = {
            let mut st = self.state();
            if !st.conduct.strike(peer) {
                return false;
            }
            st.peers
                .get(&peer)
                .map(|p| p.conns.clone())
                .unwrap_or_default()
        };
        tracing::warn!(peer = %peer.short(), what, "refusing a misbehaving peer");
        for c in conns {
            c.close(burrow_net::Close::Misbehaved.code(), b"misbehaving");
        }
        true
    }

    /// Runs `fut` as one of the node's tasks (stopped at shutdown), in the
    /// span it was spawned from (a link's, a connection's), or the node's.
    pub fn spawn(self: &Arc<Self>, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let span = match tracing::Span::current() {
            s if s.is_none() => self.span.clone(),
            s => s,
        };
        let handle = tokio::spawn(fut.instrument(span));
        let mut tasks = self.tasks.lock().expect("tasks lock is never poisoned");
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// The wall clock (with the configured skew), Unix milliseconds.
    pub fn wall_ms(&self) -> u64 {
        self.wall_us() / 1000
    }

    /// The wall clock (with the configured skew), Unix microseconds.
    pub fn wall_us(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        now.saturating_add(self.config.clock_skew_ms.saturating_mul(1000))
            .max(0) as u64
    }

    /// Runs a store read that answers in an operation's own terms on a
    /// blocking thread.
    pub async fn with_store_op<T: Send + 'static, E: From<StoreFailure> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeStore) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            f(&mut store.lock().expect("store lock is never poisoned"))
        })
        .await
        .map_err(StoreFailure::from)?
    }

    /// Runs a store operation on a blocking thread.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeStore) -> Result<T, burrow_store::StoreError> + Send + 'static,
    ) -> Result<T, StoreFailure> {
        self.with_store_op(move |s| f(s).map_err(StoreFailure::from))
            .await
    }

    /// Asks the server to connect, accept, reject or cancel with `peer` (a
    /// name or an id prefix); returns its answer.
    pub(crate) async fn request(
        self: &Arc<Self>,
        peer: &str,
        op: RequestOp,
    ) -> Result<(), RequestError> {
        self.find_peer(peer).await;
        let (id, name, tx, rx) = {
            let mut st = self.state();
            let id = resolve(&st, peer)?;
            let name = st.name_of(&id);
            let p = st.peers.get(&id);
            let request = p.and_then(|p| p.request);
            match op {
                RequestOp::Connect if p.is_some_and(|p| p.connected()) => {
                    return Err(RequestError::AlreadyConnected(name))
                }
                RequestOp::Accept | RequestOp::Reject if request != Some(Direction::Incoming) => {
                    return Err(RequestError::NoRequest(format!("from {name}")))
                }
                RequestOp::Cancel if request != Some(Direction::Outgoing) => {
                    return Err(RequestError::NoRequest(format!("to {name}")))
                }
                _ => {}
            }
            let tx = st.server_tx.clone().ok_or(ServerError::Unavailable)?;
            if st.waiters.contains_key(&id) {
                return Err(RequestError::Busy(name));
            }
            let (wtx, wrx) = oneshot::channel();
            st.waiters.insert(id, (op, wtx));
            if matches!(op, RequestOp::Accept | RequestOp::Connect) {
                // Let its connection in from now on: it may arrive before the
                // server's confirmation does.
                if let Some(p) = st.peers.get_mut(&id) {
                    p.accepted = true;
                }
            }
            (id, name, tx, wrx)
        };
        let msg = match op {
            RequestOp::Connect => ClientMsg::Connect { peer: id },
            RequestOp::Accept => ClientMsg::Accept { peer: id },
            RequestOp::Reject => ClientMsg::Reject { peer: id },
            RequestOp::Cancel => ClientMsg::Cancel { peer: id },
        };
        let result = if tx.send(msg).await.is_err() {
            Err(ServerError::Unavailable.into())
        } else {
            match tokio::time::timeout(SERVER_ANSWER_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(reason))) => Err(RequestError::Refused { name, reason }),
                Ok(Err(_)) => Err(ServerError::Unavailable.into()),
                Err(_) => Err(ServerError::NoAnswer.into()),
            }
        };
        if result.is_err() {
            let mut st = self.state();
            st.waiters.remove(&id);
            // Admission was granted for this request only.
            if let Some(p) = st.peers.get_mut(&id) {
                p.accepted = p.connected();
            }
        }
        result
    }

    /// Sends a tracker query and waits for the answer.
    pub(crate) async fn tracker(
        self: &Arc<Self>,
        query: Query,
    ) -> Result<Vec<TrackerEntry>, ServerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (server, query_id) = {
            let mut st = self.state();
            let server = st.server_tx.clone().ok_or(ServerError::Unavailable)?;
            st.next_query = st.next_query.wrapping_add(1);
            let id = st.next_query;
            st.searches.insert(id, tx);
            (server, id)
        };
        let sent = server.send(ClientMsg::Search { query_id, query }).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(SEARCH_TIMEOUT, rx).await,
            Err(_) => {
                self.state().searches.remove(&query_id);
                return Err(ServerError::Unavailable);
            }
        };
        match answer {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(_)) => Err(ServerError::Unavailable),
            Err(_) => {
                self.state().searches.remove(&query_id);
                Err(ServerError::NoAnswer)
            }
        }
    }

    /// Makes sure we have a link with `id`: asks for one if needed (`asking`
    /// is told first) and waits for the peer to accept.
    pub(crate) async fn ensure_link(
        self: &Arc<Self>,
        id: NodeId,
        asking: impl std::future::Future<Output = ()>,
    ) -> Result<(), String> {
        let connected = || self.state().peers.get(&id).is_some_and(|p| p.connected());
        if connected() {
            return Ok(());
        }
        asking.await;
        match self.request(&id.to_string(), RequestOp::Connect).await {
            Ok(()) | Err(RequestError::AlreadyConnected(_)) | Err(RequestError::Busy(_)) => {}
            Err(e) => return Err(format!("could not be asked: {e}")),
        }
        let deadline = tokio::time::Instant::now() + ACCEPT_WAIT;
        while tokio::time::Instant::now() < deadline {
            if connected() {
                return Ok(());
            }
            let gave_up = self
                .state()
                .peers
                .get(&id)
                .is_none_or(|p| p.request.is_none() && !p.accepted);
            if gave_up {
                return Err("did not accept the connection".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("did not accept within {ACCEPT_WAIT:?}"))
    }
}
