//! The node itself: start-up, the operations the control API exposes, and
//! shutdown. What it knows while it runs is in [`crate::state`]; why things
//! fail, in [`crate::error`].

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use burrow_net::{Endpoint, EndpointConfig};
use burrow_proto::chat::{self, MessageId};
use burrow_proto::rendezvous::{ClientMsg, Direction};
use burrow_proto::{Name, NodeId};
use burrow_store::{NodeStore, StoredMessage};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{ConnectionState, ConnectionView, MessageView, PeerView, StatusView};
use crate::config::NodeConfig;
use crate::error::{ApiError, StartError};
use crate::event::NodeEvent;
use crate::session;
use crate::state::{resolve, State};
use crate::{control, peers};

/// How long an operation waits for the server's answer.
pub(crate) const SERVER_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Events buffered for slow watchers before they miss some.
const EVENT_BUFFER: usize = 1024;

pub(crate) struct Inner {
    pub config: NodeConfig,
    pub id: NodeId,
    pub endpoint: Endpoint,
    pub store: Arc<Mutex<NodeStore>>,
    pub state: Mutex<State>,
    pub events: broadcast::Sender<NodeEvent>,
    pub shutdown: CancellationToken,
    /// The services peers reach, by ALPN.
    pub router: crate::service::Router,
    /// `node{id, name}`: every task of this node runs in it, so the logs of
    /// several nodes in one process can be told apart.
    pub span: tracing::Span,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The home directory's lock, held until shutdown.
    lock: Mutex<Option<File>>,
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state lock is never poisoned")
    }

    pub fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// Opens a connection of `alpn` to `peer` at its link's virtual address
    /// (direct or relayed underneath, see `burrow_net::paths`).
    pub async fn connect_peer(
        &self,
        peer: NodeId,
        alpn: &[u8],
    ) -> Result<quinn::Connection, burrow_net::ConnectError> {
        let v = self.endpoint.paths().open(peer);
        let (conn, _) = self.endpoint.connect(v, alpn, Some(peer)).await?;
        Ok(conn)
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

    /// Runs a store read that answers in the API's terms on a blocking thread.
    pub async fn with_store_api<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeStore) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            f(&mut store.lock().expect("store lock is never poisoned"))
        })
        .await
        .map_err(|e| ApiError::Store(e.to_string()))?
    }

    /// Runs a store operation on a blocking thread.
    pub async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeStore) -> Result<T, burrow_store::StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        self.with_store_api(move |s| f(s).map_err(|e| ApiError::Store(e.to_string())))
            .await
    }

    pub fn message_view(&self, m: &StoredMessage) -> MessageView {
        let rfc3339 =
            |ms| humantime::format_rfc3339_millis(burrow_proto::time::from_unix_ms(ms)).to_string();
        // Vouched for when it came, or since (its author saved as a contact).
        let from_verified =
            m.from_verified || self.state().vouched_name(&m.from, self.id, &m.from_name);
        MessageView {
            id: m.id.to_string(),
            from: m.from.to_string(),
            from_name: m.from_name.clone(),
            from_verified,
            to: m.to.to_string(),
            text: m.text.clone(),
            sent_at: rfc3339(m.sent_at_ms),
            received_at: rfc3339(m.received_at_ms),
            from_server: m.kind != burrow_store::MessageKind::Chat,
            everyone: m.kind == burrow_store::MessageKind::NoticeToAll,
        }
    }
}

/// A running node. Cheap to clone: clones share the node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// The operations that ask the server about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestOp {
    Connect,
    Accept,
    Reject,
    Cancel,
}

impl Node {
    /// Starts a node: locks the home directory, opens the store, binds the socket,
    /// registers with the server (failing if that is refused), and opens the
    /// control socket.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let span = tracing::info_span!(
            "node",
            id = %config.secret.public().short(),
            name = %config.name
        );
        Self::start_in(config, span.clone()).instrument(span).await
    }

    async fn start_in(config: NodeConfig, span: tracing::Span) -> Result<Node, StartError> {
        let home = config.home.clone();
        let home_err = |source| StartError::Home {
            path: home.clone(),
            source,
        };
        burrow_net::keyfile::create_private_dir(&home).map_err(home_err)?;
        let lock = File::create(home.join("node.lock")).map_err(home_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StartError::AlreadyRunning(home)),
            Err(std::fs::TryLockError::Error(e)) => return Err(home_err(e)),
        }
        let mut store = NodeStore::open(&home.join("node.db"))?;
        let mut mesh = crate::mesh::MeshState::default();
        store.follow(&burrow_proto::forum::Topic::default_topic())?;
        mesh.topics = store.topics()?.into_iter().collect();
        if let Some(latest) = store.latest_post_time()? {
            mesh.hlc.observe(latest, config_wall_ms(&config));
        }
        if config.server.is_none() {
            mesh.secret = Some(crate::mesh::join::secret(&mut store, &config.join)?);
        }
        let contacts = crate::contacts::load(&store)?;
        let router = crate::service::Router::standard();
        let endpoint = Endpoint::bind(
            &config.secret,
            EndpointConfig {
                bind: config.bind,
                alpns: router.alpns(),
                keepalive: Some(config.keepalive),
                idle_timeout: config.idle_timeout,
                allow_migration: false,
                stream_window: crate::files::STREAM_WINDOW,
                receive_window: crate::files::RECEIVE_WINDOW,
                send_window: crate::files::SEND_WINDOW,
                ..EndpointConfig::default()
            },
        )?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let relay_only = config.path == crate::PathPolicy::RelayOnly;
        let inner = Arc::new(Inner {
            id: config.secret.public(),
            config,
            endpoint,
            store: Arc::new(Mutex::new(store)),
            state: Mutex::new(State {
                mesh,
                contacts,
                relay_only,
                ..State::default()
            }),
            events,
            shutdown: CancellationToken::new(),
            router,
            span,
            tasks: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
        });
        let first = match inner.config.server {
            Some(_) => Some(session::connect(&inner).await?),
            None => None,
        };
        let listener = control::bind(&home).map_err(home_err)?;
        let node = Node {
            inner: inner.clone(),
        };
        if let Some(first) = first {
            inner.spawn(session::run(inner.clone(), first));
        }
        crate::mesh::join::start(&inner);
        inner.spawn(peers::accept_loop(inner.clone()));
        inner.spawn(peers::monitor(inner.clone()));
        // Peers punching over TCP (when UDP found nothing) may reach our port
        // before our own SYN leaves; without a listener the kernel would
        // refuse them.
        if let Err(e) = inner.endpoint.listen_punches() {
            tracing::warn!(error = %e, "no TCP listener: TCP punches rely on crossing SYNs alone");
        }
        // A server on this machine (loopback) means peers on this machine
        // too: a router's port would serve nobody, and asking it would send
        // PCP and SSDP onto the LAN for nothing.
        let server_here = inner.config.proxy.is_none()
            && inner
                .state()
                .server_addr
                .is_some_and(|a| inner.endpoint.real_addr(a).ip().is_loopback());
        let punching = inner.config.path != crate::PathPolicy::RelayOnly;
        if inner.config.port_mapping && punching && inner.config.server.is_some() && !server_here {
            inner.spawn(crate::portmap::run(inner.clone()));
        }
        inner.spawn(control::serve(node.clone(), listener));
        Ok(node)
    }

    /// Our id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Our registered name.
    pub fn name(&self) -> &Name {
        &self.inner.config.name
    }

    /// Watch what happens. Subscribe before acting to see the results.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.inner.events.subscribe()
    }

    /// Own id, name, server, public address, live connections.
    pub fn status(&self) -> StatusView {
        let st = self.inner.state();
        let mut connections: Vec<ConnectionView> = st
            .peers
            .iter()
            .filter_map(|(id, p)| {
                let c = p.conn()?;
                let (path, remote_addr) = peers::path_of(&self.inner, id, Some(c));
                Some(ConnectionView {
                    peer: id.to_string(),
                    name: p.name.as_ref().map(|n| n.to_string()),
                    path,
                    remote_addr,
                    family: peers::family_of(&self.inner, id, Some(c)),
                    rtt_ms: c.rtt().as_secs_f64() * 1000.0,
                })
            })
            .collect();
        connections.sort_by(|a, b| a.name.cmp(&b.name));
        let server = match (&self.inner.config.server, st.server_id) {
            (None, _) => "none (serverless)".to_string(),
            (Some(s @ burrow_proto::ServerAddr { key: Some(_), .. }), _) | (Some(s), None) => {
                s.to_string()
            }
            (Some(s), Some(k)) => burrow_proto::ServerAddr {
                key: Some(k),
                ..s.clone()
            }
            .to_string(),
        };
        StatusView {
            id: self.inner.id.to_string(),
            name: self.inner.config.name.to_string(),
            server,
            server_connected: st.server_tx.is_some(),
            server_transport: st.server_tx.as_ref().and(st.server_addr).map(|a| {
                self.inner
                    .endpoint
                    .links()
                    .transport(a)
                    .unwrap_or("udp")
                    .to_string()
            }),
            public_addr: st.public_addr.map(|a| a.to_string()),
            public_other: st.public_other.map(|a| a.to_string()),
            local_addr: self
                .inner
                .endpoint
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            connections,
            presence: match st.presence {
                burrow_proto::rendezvous::PresenceScope::Everyone => "everyone",
                burrow_proto::rendezvous::PresenceScope::Watched => "watched",
            }
            .into(),
        }
    }

    /// Everyone known, by name.
    pub fn peers(&self) -> Vec<PeerView> {
        let st = self.inner.state();
        let mut out: Vec<PeerView> = st
            .peers
            .iter()
            .map(|(id, p)| PeerView {
                id: id.to_string(),
                name: p.name.as_ref().map(|n| n.to_string()),
                name_verified: st.name_vouched(id),
                online: p.online,
                connection: match (p.conn(), p.request) {
                    (Some(c), _) => peers::path_of(&self.inner, id, Some(c)).0,
                    (None, Some(Direction::Outgoing)) => ConnectionState::PendingOut,
                    (None, Some(Direction::Incoming)) => ConnectionState::PendingIn,
                    (None, None) => ConnectionState::None,
                },
                family: p
                    .conn()
                    .and_then(|c| peers::family_of(&self.inner, id, Some(c))),
                method: p
                    .conn()
                    .filter(|c| {
                        peers::path_of(&self.inner, id, Some(c)).0 == ConnectionState::Direct
                    })
                    .and(p.method),
                rtt_ms: p.conn().map(|c| c.rtt().as_secs_f64() * 1000.0),
                clock_offset_ms: st.mesh.links.get(id).and_then(|l| l.clock.offset_ms()),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        out
    }

    /// Asks `peer` (name or id prefix) for a connection.
    pub async fn connect(&self, peer: &str) -> Result<(), ApiError> {
        self.request(peer, RequestOp::Connect).await
    }

    /// Accepts `peer`'s pending request.
    pub async fn accept(&self, peer: &str) -> Result<(), ApiError> {
        self.request(peer, RequestOp::Accept).await
    }

    /// Refuses `peer`'s pending request.
    pub async fn reject(&self, peer: &str) -> Result<(), ApiError> {
        self.request(peer, RequestOp::Reject).await
    }

    /// Withdraws our pending request to `peer`.
    pub async fn cancel(&self, peer: &str) -> Result<(), ApiError> {
        self.request(peer, RequestOp::Cancel).await
    }

    pub(crate) async fn request(&self, peer: &str, op: RequestOp) -> Result<(), ApiError> {
        self.find_peer(peer).await?;
        let (id, name, tx, rx) = {
            let mut st = self.inner.state();
            let id = resolve(&st, peer)?;
            let name = st.name_of(&id);
            let p = st.peers.get(&id);
            let request = p.and_then(|p| p.request);
            match op {
                RequestOp::Connect if p.is_some_and(|p| p.connected()) => {
                    return Err(ApiError::AlreadyConnected(name))
                }
                RequestOp::Accept | RequestOp::Reject if request != Some(Direction::Incoming) => {
                    return Err(ApiError::NoRequest(format!("from {name}")))
                }
                RequestOp::Cancel if request != Some(Direction::Outgoing) => {
                    return Err(ApiError::NoRequest(format!("to {name}")))
                }
                _ => {}
            }
            let tx = st.server_tx.clone().ok_or(ApiError::ServerUnavailable)?;
            if st.waiters.contains_key(&id) {
                return Err(ApiError::Busy(name));
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
            Err(ApiError::ServerUnavailable)
        } else {
            match tokio::time::timeout(SERVER_ANSWER_TIMEOUT, rx).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(reason))) => Err(ApiError::Refused { name, reason }),
                Ok(Err(_)) => Err(ApiError::ServerUnavailable),
                Err(_) => Err(ApiError::NoAnswer),
            }
        };
        if result.is_err() {
            let mut st = self.inner.state();
            st.waiters.remove(&id);
            // Admission was granted for this request only.
            if let Some(p) = st.peers.get_mut(&id) {
                p.accepted = p.connected();
            }
        }
        result
    }

    /// Sends `text` to `peer` over our connection. Returns once the peer has
    /// stored it; only then is it stored here as sent.
    pub async fn send(&self, peer: &str, text: &str) -> Result<MessageView, ApiError> {
        if text.is_empty() || text.len() > chat::MAX_TEXT {
            return Err(ApiError::BadText);
        }
        let (id, name, conn) = {
            let st = self.inner.state();
            let id = resolve(&st, peer)?;
            let name = st.name_of(&id);
            let conn = st.peers.get(&id).and_then(|p| p.conn().cloned());
            (id, name.clone(), conn.ok_or(ApiError::NotConnected(name))?)
        };
        let mut msg = StoredMessage {
            id: MessageId::random(&mut rand::thread_rng()),
            from: self.inner.id,
            from_name: self.inner.config.name.to_string(),
            from_verified: true,
            to: id,
            text: text.to_string(),
            sent_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
            received_at_ms: 0,
            kind: burrow_store::MessageKind::Chat,
        };
        crate::chat::send(&conn, &msg)
            .await
            .map_err(|e| ApiError::NotDelivered {
                name,
                reason: e.to_string(),
            })?;
        msg.received_at_ms = burrow_proto::time::unix_ms(SystemTime::now());
        let stored = msg.clone();
        self.inner
            .with_store(move |s| s.insert_message(&stored))
            .await?;
        let view = self.inner.message_view(&msg);
        self.inner.emit(NodeEvent::Message(view.clone()));
        Ok(view)
    }

    /// Tests how the NAT in front of us maps and filters (takes a few seconds).
    pub async fn nat(&self) -> Result<crate::nat::NatReport, ApiError> {
        let server = self
            .inner
            .state()
            .server_addr
            .ok_or(ApiError::ServerUnavailable)?;
        if burrow_net::tcp::is_link(server) {
            return Err(ApiError::Nat(
                "this node reaches the server over TCP because nothing came back over UDP: this network seems to drop UDP, so there is no UDP mapping to test; peers reach you through the server's relay".into(),
            ));
        }
        let local = self
            .inner
            .endpoint
            .local_addr()
            .map_err(|e| ApiError::Store(e.to_string()))?;
        let mut own = burrow_net::iface::lan_candidates(local);
        own.push(local);
        let mut report = crate::nat::diagnose(&self.inner.endpoint, server, &own)
            .await
            .map_err(|e| ApiError::Nat(e.to_string()))?;
        // The tests made new mappings: a sequential NAT's ports moved on.
        crate::nat::refresh_mapping(&self.inner);
        let also = self.inner.state().server_also.clone();
        report.other_family = crate::nat::other_family(&self.inner.endpoint, &also, &own).await;
        if let Some((addr, protocol)) = self.inner.state().port_map {
            report.port_mapping = Some(protocol);
            report.mapped_addr = Some(addr);
            report.summary.push_str(&format!(
                " Your router forwards {addr} to this node ({protocol}): peers reach you there whatever its NAT does."
            ));
        }
        Ok(report)
    }

    /// The newest `limit` messages, oldest first.
    pub async fn messages(&self, limit: usize) -> Result<Vec<MessageView>, ApiError> {
        let stored = self.inner.with_store(move |s| s.messages(limit)).await?;
        Ok(stored.iter().map(|m| self.inner.message_view(m)).collect())
    }

    /// Says goodbye to the server, closes every connection and the socket.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        // Close peer links first: their tasks end when the connections do.
        let conns: Vec<quinn::Connection> = {
            let st = self.inner.state();
            st.peers
                .values()
                .flat_map(|p| p.conns.iter().cloned())
                .chain(st.mesh.links.values().map(|l| l.conn.clone()))
                .collect()
        };
        for c in conns {
            c.close(burrow_net::Close::Done.code(), b"node shutting down");
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .expect("tasks lock is never poisoned"),
        );
        // Two seconds for all of them together (tasks that watch the token end
        // at once; a punch in flight doesn't, and is cut short).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
        self.inner
            .endpoint
            .quic()
            .close(burrow_net::Close::Done.code(), b"node shutting down");
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.inner.endpoint.quic().wait_idle(),
        )
        .await;
        control::unlink(&self.inner.config.home);
        // Another node may use this home from now on.
        drop(
            self.inner
                .lock
                .lock()
                .expect("lock mutex is never poisoned")
                .take(),
        );
    }
}

/// The wall clock a configuration reads, before the node exists.
fn config_wall_ms(config: &NodeConfig) -> u64 {
    let now = burrow_proto::time::unix_ms(SystemTime::now()) as i64;
    now.saturating_add(config.clock_skew_ms).max(0) as u64
}
