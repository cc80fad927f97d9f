//! The node itself: start-up, the operations the control API exposes, and
//! shutdown. What it knows while it runs is in [`crate::state`]; why things
//! fail, in [`crate::error`].

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use burrow_net::{Endpoint, EndpointConfig};
use burrow_proto::rendezvous::Direction;
use burrow_proto::{Name, NodeId};
use burrow_store::NodeStore;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{
    ConnectionState, ConnectionView, ContactView, ExposureView, FileView, ForwardView, GetUpdate,
    GetView, MessageView, OfferedView, PeerView, PostView, SearchView, SettingsView, ShareView,
    StatusView,
};
use crate::chat::Chat;
use crate::config::NodeConfig;
use crate::error::{
    ContactsError, ExposeError, ForumError, ForwardError, GetError, ListError, NatError,
    RequestError, SendError, ServerError, ShareError, StartError, StoreFailure, TicketError,
};
use crate::event::NodeEvent;
use crate::files::Files;
use crate::handle::LinkHandle;
use crate::link::Inner;
use crate::mesh::Mesh;
use crate::peers;
use crate::service::{Router, Service};
use crate::session;
use crate::state::RequestOp;
use crate::state::State;
use crate::tunnel::Tunnels;

/// The ALPNs of the node's services, the link's first (see `Node::start`).
const ALPNS: [&[u8]; 5] = [
    burrow_proto::link::ALPN,
    burrow_proto::chat::ALPN,
    burrow_proto::files::ALPN,
    burrow_proto::mesh::ALPN,
    burrow_proto::tunnel::ALPN,
];
/// Events buffered for slow watchers before they miss some.
const EVENT_BUFFER: usize = 1024;

/// A running node. Cheap to clone: clones share the node.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
    chat: Arc<Chat>,
    files: Arc<Files>,
    mesh: Arc<Mesh>,
    tunnels: Arc<Tunnels>,
}

impl Node {
    /// Opens the home, binds the socket, registers with the server (failing
    /// if that is refused) and starts the node's tasks; returns the node and
    /// its control socket, which [`Node::start`] (in [`crate::control`]) serves.
    pub(crate) async fn launch(
        config: NodeConfig,
    ) -> Result<(Node, burrow_home::control::Listener), StartError> {
        let span = tracing::info_span!(
            "node",
            id = %config.secret.public().short(),
            name = %config.name
        );
        Self::launch_in(config, span.clone()).instrument(span).await
    }

    async fn launch_in(
        config: NodeConfig,
        span: tracing::Span,
    ) -> Result<(Node, burrow_home::control::Listener), StartError> {
        let home = config.home.clone();
        let (lock, mut store) = open_home(&home)?;
        let mesh = crate::mesh::MeshState::load(&mut store, &config)?;
        let contacts = crate::contacts::load(&store)?;
        let exposures = store.exposures()?;
        let forwards = store.forwards()?;
        let endpoint = Endpoint::bind(
            &config.secret,
            EndpointConfig {
                bind: config.bind,
                alpns: ALPNS.to_vec(),
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
                contacts,
                relay_only,
                ..State::default()
            }),
            events,
            shutdown: CancellationToken::new(),
            router: OnceLock::new(),
            span,
            tasks: Mutex::new(Vec::new()),
            lock: Mutex::new(Some(lock)),
        });
        // The services, the link's first; the endpoint offers their ALPNs.
        let link = || LinkHandle::new(inner.clone());
        let node = Node {
            inner: inner.clone(),
            chat: Chat::new(link()),
            files: Files::new(link()),
            mesh: Mesh::new(link(), mesh),
            tunnels: Tunnels::new(link(), exposures, forwards),
        };
        let services: Vec<Arc<dyn Service>> = vec![
            Arc::new(peers::LinkService),
            node.chat.clone(),
            node.files.clone(),
            node.mesh.clone(),
            node.tunnels.clone(),
        ];
        let router = Router::new(services);
        debug_assert_eq!(
            router.alpns(),
            ALPNS,
            "the endpoint offers every service's ALPN"
        );
        let _ = inner.router.set(router);
        let first = match inner.config.server {
            Some(_) => Some(session::connect(&inner).await?),
            None => None,
        };
        let listener = burrow_home::control::bind(&home).map_err(|source| StartError::Home {
            path: home.clone(),
            source,
        })?;
        if let Some(first) = first {
            inner.spawn(session::run(inner.clone(), first));
        }
        crate::mesh::join::start(&node.mesh);
        node.run_link();
        node.tunnels.start().await;
        Ok((node, listener))
    }

    /// Starts the link's tasks: accepting connections, watching links, TCP
    /// punches, the router's port mapping.
    fn run_link(&self) {
        let inner = &self.inner;
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
        // The mesh's lock before the link's, never inside it.
        let offsets = self.mesh.clock_offsets();
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
                clock_offset_ms: offsets.get(id).copied(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        out
    }

    /// Asks `peer` (name or id prefix) for a connection.
    pub async fn connect(&self, peer: &str) -> Result<(), RequestError> {
        self.inner.request(peer, RequestOp::Connect).await
    }

    /// Accepts `peer`'s pending request.
    pub async fn accept(&self, peer: &str) -> Result<(), RequestError> {
        self.inner.request(peer, RequestOp::Accept).await
    }

    /// Refuses `peer`'s pending request.
    pub async fn reject(&self, peer: &str) -> Result<(), RequestError> {
        self.inner.request(peer, RequestOp::Reject).await
    }

    /// Withdraws our pending request to `peer`.
    pub async fn cancel(&self, peer: &str) -> Result<(), RequestError> {
        self.inner.request(peer, RequestOp::Cancel).await
    }

    /// Adds `add` or removes `remove` (names or id prefixes), then lists the contacts.
    pub async fn contacts(
        &self,
        add: Option<&str>,
        remove: Option<&str>,
    ) -> Result<Vec<ContactView>, ContactsError> {
        self.inner.contacts(add, remove).await
    }

    /// Sets what happens to incoming requests (if given), then shows the settings.
    pub async fn settings(&self, incoming: Option<&str>) -> Result<SettingsView, ContactsError> {
        self.inner.settings(incoming).await
    }

    /// Offers the file at `path` (absolute) as `name` (default: its file name):
    /// hashes it, keeps its outboard, tells the tracker.
    pub async fn share(&self, path: &str, name: Option<&str>) -> Result<ShareView, ShareError> {
        self.files.share(path, name).await
    }

    /// Exposes the local service at `addr` as `name` to the peers `allow`
    /// names (`contacts` for the contacts list); exposing a name again
    /// changes it, keeping the connections of peers still allowed.
    pub async fn expose(
        &self,
        name: &str,
        addr: &str,
        udp: bool,
        allow: &[String],
    ) -> Result<ExposureView, ExposeError> {
        self.tunnels.expose(name, addr, udp, allow).await
    }

    /// Stops exposing `name`; its connections end.
    pub async fn unexpose(&self, name: &str) -> Result<(), ExposeError> {
        self.tunnels.unexpose(name).await
    }

    /// What this node exposes, with live connection counts.
    pub fn exposed(&self) -> Vec<ExposureView> {
        self.tunnels.exposures()
    }

    /// What `peer` exposes to us (making the link if needed).
    pub async fn services(&self, peer: &str) -> Result<Vec<OfferedView>, ForwardError> {
        self.tunnels.services(peer).await
    }

    /// Forwards the local address `listen` to `target` (`peer/service`).
    pub async fn forward(&self, target: &str, listen: &str) -> Result<ForwardView, ForwardError> {
        self.tunnels.forward(target, listen).await
    }

    /// Ends the forward on `listen`.
    pub async fn unforward(&self, listen: &str) -> Result<(), ForwardError> {
        self.tunnels.unforward(listen).await
    }

    /// Our forwards, with their connections and bytes.
    pub fn forwards(&self) -> Vec<ForwardView> {
        self.tunnels.forward_views()
    }

    /// A stream to `target`'s TCP service (`peer/service`), once the peer
    /// accepted it.
    pub async fn pipe(
        &self,
        target: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ForwardError> {
        self.tunnels.pipe(target).await
    }

    /// What this node offers.
    pub async fn shares(&self) -> Result<Vec<ShareView>, ShareError> {
        self.files.shares().await
    }

    /// Stops offering `file` (its hash, a unique hash prefix, or its name).
    pub async fn unshare(&self, file: &str) -> Result<ShareView, ShareError> {
        self.files.unshare(file).await
    }

    /// Asks the tracker for files whose name contains `query`.
    pub async fn search(&self, query: &str) -> Result<Vec<SearchView>, ShareError> {
        self.files.search(query).await
    }

    /// Asks `peer` (connected) what it offers.
    pub async fn files(&self, peer: &str) -> Result<Vec<FileView>, ListError> {
        self.files.files(peer).await
    }

    /// Writes a post (a reply when `reply_to` names a post by id prefix), stores
    /// it and gossips it to every linked member following its topic.
    pub async fn post(
        &self,
        text: &str,
        reply_to: Option<&str>,
        topic: Option<&str>,
    ) -> Result<PostView, ForumError> {
        self.mesh.post(text, reply_to, topic).await
    }

    /// The posts of a topic (default: the forum), or of one thread, oldest
    /// first. Reading a topic follows it.
    pub async fn forum(
        &self,
        topic: Option<&str>,
        thread: Option<&str>,
    ) -> Result<Vec<PostView>, ForumError> {
        self.mesh.forum(topic, thread).await
    }

    /// Follows `topic`: stores it, tells the links, and reconciles it with those
    /// that follow it too.
    pub async fn follow(&self, topic: &burrow_proto::forum::Topic) -> Result<(), ForumError> {
        self.mesh.follow(topic).await
    }

    /// This node's ticket (serverless only): what a friend passes to `up --join`.
    pub fn ticket(&self) -> Result<String, TicketError> {
        self.mesh.ticket()
    }

    /// The mesh's counters (posts gossiped, duplicates, reconciliation bytes).
    pub fn mesh_stats(&self) -> crate::mesh::MeshStats {
        self.mesh.mesh_stats()
    }

    /// Downloads `file` (a hash, or a name the tracker knows) from every online
    /// provider into `dir`, reporting on `updates`. Resumes an interrupted
    /// download of the same hash.
    pub async fn get(
        &self,
        file: &str,
        dir: &str,
        force: bool,
        updates: tokio::sync::mpsc::Sender<GetUpdate>,
    ) -> Result<GetView, GetError> {
        self.files.get(file, dir, force, updates).await
    }

    /// Sends `text` to `peer` over our connection. Returns once the peer has
    /// stored it; only then is it stored here as sent.
    pub async fn send(&self, peer: &str, text: &str) -> Result<MessageView, SendError> {
        self.chat.send(peer, text).await
    }

    /// Tests how the NAT in front of us maps and filters (takes a few seconds).
    pub async fn nat(&self) -> Result<crate::nat::NatReport, NatError> {
        let server = self
            .inner
            .state()
            .server_addr
            .ok_or(ServerError::Unavailable)?;
        if burrow_net::tcp::is_link(server) {
            return Err(NatError::NoUdp);
        }
        let local = self
            .inner
            .endpoint
            .local_addr()
            .map_err(|e| NatError::Failed(e.to_string()))?;
        let mut own = burrow_net::iface::lan_candidates(local);
        own.push(local);
        let mut report = crate::nat::diagnose(&self.inner.endpoint, server, &own).await?;
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
    pub async fn messages(&self, limit: usize) -> Result<Vec<MessageView>, StoreFailure> {
        self.chat.messages(limit).await
    }

    /// Says goodbye to the server, closes every connection and the socket.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        // Close peer links first: their tasks end when the connections do.
        let mut conns = self.mesh.conns();
        conns.extend(
            self.inner
                .state()
                .peers
                .values()
                .flat_map(|p| p.conns.iter().cloned()),
        );
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
        burrow_home::control::unlink(&self.inner.config.home);
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

/// Makes the home directory (private) and locks it, then opens the store.
fn open_home(home: &Path) -> Result<(File, NodeStore), StartError> {
    let home_err = |source| StartError::Home {
        path: home.to_path_buf(),
        source,
    };
    burrow_home::keyfile::create_private_dir(home).map_err(home_err)?;
    let lock = File::create(home.join("node.lock")).map_err(home_err)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StartError::AlreadyRunning(home.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(home_err(e)),
    }
    let store = NodeStore::open(&home.join("node.db"))?;
    Ok((lock, store))
}
