//! The node itself: shared state, start-up, the operations the control API exposes,
//! and shutdown.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use burrow_net::{Endpoint, EndpointConfig};
use burrow_proto::chat::{self, MessageId};
use burrow_proto::rendezvous::{ClientMsg, Direction, PeerInfo, Refusal, TrackerEntry};
use burrow_proto::{BlobHash, Name, NodeId};
use burrow_store::{NodeStore, StoredMessage};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{ConnectionState, ConnectionView, MessageView, PeerView, StatusView};
use crate::config::NodeConfig;
use crate::event::NodeEvent;
use crate::session::{self, SessionError};
use crate::{control, peers};

/// Most peers the node tracks (the server's presence list can be long).
pub(crate) const MAX_PEERS: usize = 100_000;
/// How long an operation waits for the server's answer.
pub(crate) const SERVER_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Events buffered for slow watchers before they miss some.
const EVENT_BUFFER: usize = 1024;

/// A peer as this node knows it.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    pub name: Option<Name>,
    pub online: bool,
    /// A request between us that is waiting for an answer, and which side we are.
    pub request: Option<Direction>,
    /// We accepted this peer: its incoming connections are let in.
    pub accepted: bool,
    /// Live connections, oldest first. Usually one; two attempts that both
    /// completed (a direct dial and a punched one) can leave two for a moment.
    /// None is closed because another arrived: the side that dialed keeps one and
    /// drops the rest, and the others close by themselves.
    pub conns: Vec<quinn::Connection>,
    /// When a link that isn't direct next asks for a fresh punch.
    pub repunch: burrow_proto::punch::policy::Repunch,
    /// What found the direct path, while there is one.
    pub method: Option<burrow_proto::punch::Method>,
}

/// Most live connections kept per peer; past that the oldest is closed.
pub(crate) const MAX_CONNS_PER_PEER: usize = 4;

impl Peer {
    /// The connection in use: the newest live one.
    pub fn conn(&self) -> Option<&quinn::Connection> {
        self.conns.last()
    }

    pub fn connected(&self) -> bool {
        !self.conns.is_empty()
    }
}

/// Everything that changes while the node runs. Locked only for short sections.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Sender to the current server session, while registered.
    pub server_tx: Option<mpsc::Sender<ClientMsg>>,
    pub server_id: Option<NodeId>,
    /// The server's address, as resolved for the current session.
    pub server_addr: Option<SocketAddr>,
    pub public_addr: Option<SocketAddr>,
    /// Our address in the other family than the session's (IPv6 when the
    /// session runs over IPv4), as the server's STUN saw it; `None` when we
    /// have none there, or it did not answer.
    pub public_other: Option<SocketAddr>,
    /// The server's addresses in that other family (its Welcome's `also`),
    /// and the session's proof for them.
    pub server_also: Vec<SocketAddr>,
    pub other_proof: Option<[u8; 12]>,
    /// How our NAT maps ports, as last measured ([`crate::nat::refresh_mapping`]).
    pub mapping: burrow_proto::punch::Mapping,
    /// The TTL of our opening probes, when a NAT of ours stands between us
    /// and the server (see `burrow_proto::punch`); `None` on a public address.
    pub open_ttl: Option<u8>,
    /// `--relay-only`: the server keeps our addresses from peers.
    pub relay_only: bool,
    /// The public port our router maps to us, and how ([`crate::portmap`]).
    pub port_map: Option<(SocketAddr, burrow_net::portmap::PortMapProtocol)>,
    pub peers: HashMap<NodeId, Peer>,
    /// Operations waiting for the server's answer about a peer (one per peer).
    pub waiters: HashMap<NodeId, (RequestOp, oneshot::Sender<Result<(), Refusal>>)>,
    /// Tracker searches waiting for their answer, by query id.
    pub searches: HashMap<u32, oneshot::Sender<Vec<TrackerEntry>>>,
    pub next_query: u32,
    /// Files being downloaded now.
    pub downloads: HashSet<BlobHash>,
    /// Files connections we serve, per peer (at most
    /// [`crate::files::serve::MAX_CONNS_PER_PEER`] each).
    pub files_serving: HashMap<NodeId, usize>,
    /// Forum gossip, reconciliation, clock offsets, serverless links.
    pub mesh: crate::mesh::MeshState,
    /// Who may connect without asking, and what to do with strangers.
    pub contacts: crate::contacts::Contacts,
    /// Whom the server tells us about: everyone, or whom we watch.
    pub presence: burrow_proto::rendezvous::PresenceScope,
    /// Strikes against peers, and their connect requests (see [`crate::conduct`]).
    pub conduct: crate::conduct::Conduct,
    /// Name lookups waiting for the server's answer, by query id.
    pub lookups: HashMap<u32, oneshot::Sender<Option<PeerInfo>>>,
}

impl State {
    /// What we tell the server of our NAT: its mapping, our port mapping, and
    /// whether UDP reaches the server at all.
    pub fn nat_info(&self) -> burrow_proto::punch::NatInfo {
        burrow_proto::punch::NatInfo {
            mapping: self.mapping,
            mapped: self.port_map.map(|(a, _)| a),
            no_udp: self.no_udp(),
            relay_only: self.relay_only,
        }
    }

    /// Whether we reach the server only over TCP (so UDP punching can't work).
    pub fn no_udp(&self) -> bool {
        self.server_addr.is_some_and(burrow_net::tcp::is_link)
    }

    /// Whether `name` is `id`'s as far as we know: our own, a contact's (the
    /// user named it), or, with a server, the name the server binds to the
    /// key. Serverless peers name themselves, so only contacts count there.
    pub fn vouched_name(&self, id: &NodeId, me: NodeId, name: &str) -> bool {
        self.vouched(id, Some(&me), name)
    }

    fn vouched(&self, id: &NodeId, me: Option<&NodeId>, name: &str) -> bool {
        let server_binding = self.server_id.and(self.claimed_name(id)).map(Name::as_str);
        crate::forum::vouched(id, name, me, self.contacts.name(id), server_binding)
    }

    /// The name a peer goes by here: the server's binding with a server, the
    /// name it gave itself serverless (which only a contact's name vouches for).
    pub fn claimed_name(&self, id: &NodeId) -> Option<&Name> {
        self.peers.get(id).and_then(|p| p.name.as_ref())
    }

    /// Whether a peer's name ([`Self::claimed_name`]) is vouched for.
    pub fn name_vouched(&self, id: &NodeId) -> bool {
        self.claimed_name(id)
            .is_some_and(|n| self.vouched(id, None, n.as_str()))
    }

    /// A peer as people read it in events and errors: its name, with its short
    /// id beside a name nobody vouches for (see [`crate::forum::shown`]), or
    /// the short id alone.
    pub fn name_of(&self, id: &NodeId) -> String {
        match self.claimed_name(id) {
            Some(n) => crate::forum::shown(n.as_str(), &id.to_string(), self.name_vouched(id)),
            None => id.short(),
        }
    }

    /// Records that the server lists `info` as online; returns its entry, or `None`
    /// when it is new and the table is full ([`MAX_PEERS`]).
    pub fn mark_online(&mut self, info: PeerInfo) -> Option<&mut Peer> {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&info.id) {
            return None;
        }
        let p = self.peers.entry(info.id).or_default();
        p.name = Some(info.name);
        p.online = true;
        Some(p)
    }

    /// Drops peers we know nothing useful about any more.
    pub fn forget_idle(&mut self, id: &NodeId) {
        if self
            .peers
            .get(id)
            .is_some_and(|p| !p.online && !p.connected() && p.request.is_none() && !p.accepted)
        {
            self.peers.remove(id);
        }
    }
}

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

/// Why a node could not start. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another node holds the home directory.
    #[error("a node is already running in {0}")]
    AlreadyRunning(PathBuf),
    /// The home directory is unusable.
    #[error("cannot use home directory {path}: {source}")]
    Home {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the node store: {0}")]
    Store(#[from] burrow_store::StoreError),
    /// The socket could not be bound.
    #[error(transparent)]
    Endpoint(#[from] burrow_net::EndpointError),
    /// The first registration with the server failed.
    #[error(transparent)]
    Server(#[from] SessionError),
}

impl StartError {
    /// What the user can do.
    pub fn hint(&self) -> Option<String> {
        match self {
            StartError::AlreadyRunning(home) => Some(format!(
                "stop it first, or talk to it: burrow --home {} status",
                home.display()
            )),
            StartError::Server(e) => e.hint(),
            _ => None,
        }
    }
}

/// Why an operation on a running node failed. Each has a hint for the user.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No peer by that name or id.
    #[error("no peer called {0:?} is known")]
    UnknownPeer(String),
    /// An id prefix matching several peers.
    #[error("{0:?} matches several peers: {1}")]
    AmbiguousPeer(String, String),
    /// The node is between server sessions.
    #[error("not registered with the server right now")]
    ServerUnavailable,
    /// The server did not answer in time.
    #[error("the server did not answer")]
    NoAnswer,
    /// The server refused.
    #[error("{name}: {reason}")]
    Refused {
        /// The peer concerned.
        name: String,
        /// Why.
        reason: Refusal,
    },
    /// Another operation on this peer is waiting for the server.
    #[error("another request about {0} is in progress")]
    Busy(String),
    /// No request to answer or withdraw.
    #[error("there is no pending request {0}")]
    NoRequest(String),
    /// Already connected.
    #[error("already connected to {0}")]
    AlreadyConnected(String),
    /// No connection to send over.
    #[error("not connected to {0}")]
    NotConnected(String),
    /// The message is empty or too long.
    #[error("message must have 1 to {} bytes", chat::MAX_TEXT)]
    BadText,
    /// The message did not reach the peer (it was not stored there).
    #[error("message to {name} not delivered: {reason}")]
    NotDelivered {
        /// The peer.
        name: String,
        /// Why.
        reason: String,
    },
    /// The node's store failed.
    #[error("store error: {0}")]
    Store(String),
    /// NAT diagnosis failed.
    #[error("NAT diagnosis failed: {0}")]
    Nat(String),
    /// A local file could not be read, hashed or written.
    #[error("{0}")]
    File(String),
    /// A share name breaks the rules.
    #[error("bad share name: {0}")]
    BadName(burrow_proto::files::ShareNameError),
    /// We don't offer that.
    #[error("you are not sharing {0:?}")]
    NoSuchShare(String),
    /// A name (or hash prefix) that fits several files.
    #[error("{0:?} names several files: {1}")]
    AmbiguousFile(String, String),
    /// The tracker knows no such file.
    #[error("the tracker knows no file {0:?}")]
    UnknownFile(String),
    /// Nobody who has the file is online.
    #[error("nobody who has {name:?} is online ({offline} providers offline)")]
    NoProviders {
        /// The file's name.
        name: String,
        /// How many providers are offline.
        offline: u32,
    },
    /// The target file exists.
    #[error("{0} already exists")]
    Exists(String),
    /// We already have this file.
    #[error("you already have this file: {0}")]
    AlreadyHave(String),
    /// The same file is being downloaded already.
    #[error("{0:?} is already being downloaded")]
    AlreadyDownloading(String),
    /// A download stopped before the file was complete.
    #[error("download stopped: {0}")]
    Download(String),
    /// A topic name breaks the rules.
    #[error("bad topic: {0}")]
    BadTopic(String),
    /// No post has that id (prefix).
    #[error("no post {0:?} is known here")]
    NoSuchPost(String),
    /// An id prefix matching several posts.
    #[error("{0:?} matches several posts: {1}")]
    AmbiguousPost(String, String),
    /// Only serverless nodes have tickets.
    #[error("this node runs with a server; tickets are for networks without one")]
    NotServerless,
    /// The mesh can't do what was asked.
    #[error("{0}")]
    Mesh(String),
    /// A setting's value is not one it takes.
    #[error("{0}")]
    BadSetting(String),
    /// The peer is not a contact.
    #[error("{0} is not a contact")]
    NotAContact(String),
    /// A peer's files service failed.
    #[error("{name}: {reason}")]
    Peer {
        /// The peer.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

impl ApiError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ApiError::UnknownPeer(_) => "burrow peers lists who is online".into(),
            ApiError::AmbiguousPeer(..) => "name it by more of its id (`burrow peers` lists them)".into(),
            ApiError::ServerUnavailable | ApiError::NoAnswer => {
                "the node reconnects by itself; try again in a moment (burrow status shows the server link)".into()
            }
            ApiError::Refused { reason: Refusal::PeerOffline, .. } => "wait until they are online (burrow peers)".into(),
            ApiError::NoRequest(_) => "burrow peers shows pending requests".into(),
            ApiError::AlreadyConnected(n) => format!("burrow send {n} \"...\""),
            ApiError::NotConnected(n) => format!("run burrow connect {n} first; {n} must accept"),
            ApiError::NotDelivered { .. } => "nothing was stored on either side; send it again".into(),
            ApiError::NoSuchShare(_) => "burrow shares lists what you offer".into(),
            ApiError::AmbiguousFile(..) => "use the full hash (burrow search shows it)".into(),
            ApiError::UnknownFile(f) => format!("burrow search {f} finds files whose names contain it"),
            ApiError::NoProviders { .. } => "try again when a provider is online (burrow search shows them)".into(),
            ApiError::Exists(_) => "use --force to replace it, or -o to save elsewhere; nothing was lost, the download is kept".into(),
            ApiError::Download(_) => "run the same get again: it continues from what was already verified".into(),
            ApiError::NoSuchPost(_) => "burrow forum lists posts with their ids".into(),
            ApiError::AmbiguousPost(..) => "type more of the id".into(),
            ApiError::NotServerless => "start a node without --server to begin a network of your own: burrow up --name <name>".into(),
            ApiError::BadSetting(_) => "burrow settings incoming ask|contacts-only|anyone".into(),
            ApiError::NotAContact(_) => "burrow contacts list shows your contacts".into(),
            _ => return None,
        })
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

/// Finds the peer a person means: a contact's name, a peer's name, or a
/// unique id prefix. A contact's name wins over a name a serverless peer
/// claims; a name that is also another peer's id prefix is ambiguous (a name
/// like `cafe1234` must not pass for the node whose id starts so).
pub(crate) fn resolve(st: &State, peer: &str) -> Result<NodeId, ApiError> {
    let wanted = peer.trim().to_ascii_lowercase();
    let hex = !wanted.is_empty() && wanted.chars().all(|c| c.is_ascii_hexdigit());
    let by_prefix = |id: &NodeId| hex && id.to_string().starts_with(&wanted);
    let ambiguous = |ids: &[NodeId]| {
        let ids: Vec<String> = ids.iter().map(|id| id.short()).collect();
        ApiError::AmbiguousPeer(peer.to_string(), ids.join(", "))
    };
    // Serverless, names are only what peers claim: two may claim the same one.
    let mut named: Vec<NodeId> = st
        .contacts
        .ids()
        .filter(|id| st.contacts.name(id) == Some(wanted.as_str()))
        .collect();
    if named.is_empty() {
        named = st
            .peers
            .iter()
            .filter(|(_, p)| p.name.as_ref().is_some_and(|n| n.as_str() == wanted))
            .map(|(id, _)| *id)
            .collect();
    }
    match named.as_slice() {
        [id] => {
            let other_prefix: Vec<NodeId> = st
                .peers
                .keys()
                .filter(|other| *other != id && by_prefix(other))
                .copied()
                .collect();
            if other_prefix.is_empty() {
                return Ok(*id);
            }
            return Err(ambiguous(&[&[*id], other_prefix.as_slice()].concat()));
        }
        [] => {}
        many => return Err(ambiguous(many)),
    }
    if hex {
        let matches: Vec<NodeId> = st
            .peers
            .keys()
            .filter(|id| by_prefix(id))
            .copied()
            .collect();
        match matches.len() {
            1 => return Ok(matches[0]),
            0 => {
                if let Ok(id) = wanted.parse::<NodeId>() {
                    return Ok(id);
                }
            }
            _ => {
                let names: Vec<String> = matches.iter().map(|id| st.name_of(id)).collect();
                return Err(ApiError::AmbiguousPeer(peer.to_string(), names.join(", ")));
            }
        }
    }
    Err(ApiError::UnknownPeer(peer.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public()
    }

    fn named(st: &mut State, id: NodeId, name: &str) {
        st.peers.entry(id).or_default().name = Some(name.parse().unwrap());
    }

    #[test]
    fn a_contacts_name_wins_and_a_name_never_passes_for_an_id_prefix() {
        let mut st = State::default();
        let (alice, mallory) = (id(1), id(2));
        named(&mut st, alice, "alice");
        named(&mut st, mallory, "alice");
        // Two peers claim one name: neither is picked.
        assert!(matches!(
            resolve(&st, "alice"),
            Err(ApiError::AmbiguousPeer(..))
        ));
        assert_eq!(st.name_of(&alice), format!("alice [{}]", alice.short()));
        // Saved as a contact, alice is the one `alice` means, and shown plainly.
        st.contacts.ids.insert(alice, "alice".into());
        assert_eq!(resolve(&st, "alice").unwrap(), alice);
        assert_eq!(st.name_of(&alice), "alice");
        assert_eq!(st.name_of(&mallory), format!("alice [{}]", mallory.short()));

        // A name spelled like another node's id: refused as ambiguous, never
        // resolved to the name's owner alone. (Names start with a letter, so
        // only ids starting with a-f can be mimicked.)
        let target = (3..)
            .map(id)
            .find(|i| i.short().starts_with(|c: char| c.is_ascii_lowercase()))
            .unwrap();
        let mimic = id(100);
        named(&mut st, target, "target");
        named(&mut st, mimic, &target.short());
        assert!(matches!(
            resolve(&st, &target.short()),
            Err(ApiError::AmbiguousPeer(..))
        ));
        assert_eq!(resolve(&st, &target.to_string()[..12]).unwrap(), target);
        assert_eq!(resolve(&st, "target").unwrap(), target);
    }
}
