//! The server's driver: accepts node connections and runs the registry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use burrow_net::{Endpoint, EndpointConfig, FrameReader, FrameWriter};
use burrow_proto::relay::Channel;
use burrow_proto::rendezvous::{self, ClientMsg, PeerInfo, Refusal, ServerMsg, MAX_CANDIDATES};
use burrow_proto::{NodeId, SecretKey};
use burrow_store::ServerStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::admission::{points, Admission, AdmissionConfig, AdmissionEvent, ConnVerdict, Now};
use crate::broker::{BrokerConfig, Out, Registry, RelayDrop};
use crate::journal::{Actor, Journal};
use crate::limit::RateLimit;
use crate::password::Hasher;
use crate::{admin, register, tracker};

/// How many messages wait for a slow node before the server drops its session.
const SESSION_QUEUE: usize = 256;
/// Messages per second a node may send after its first [`MESSAGE_BURST`]: far
/// above what a person's commands produce, far below what would let one node
/// flood others through the broker.
const MESSAGE_RATE: f64 = 20.0;
/// Messages a node may send at once.
const MESSAGE_BURST: f64 = 40.0;
/// How long a new connection has to open its control stream and say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server runs. Parsed by the binary; defaults suit a public server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address for QUIC and STUN. Default `0.0.0.0:7700`.
    pub listen: SocketAddr,
    /// Directory holding `server.db`.
    pub home: PathBuf,
    /// Broker limits.
    pub broker: BrokerConfig,
    /// A node silent for this long is gone (it stopped without saying goodbye).
    /// Default 30 s, three of the node's default 10 s keepalives.
    pub idle_timeout: Duration,
    /// The server's second address, for NAT diagnosis (RFC 5780): STUN is also
    /// answered there, on the listen port and the next one. Without it, only the
    /// next port is added, and nodes can't tell every filtering kind apart.
    pub alt_ip: Option<std::net::IpAddr>,
    /// Who may register, and intrusion detection's limits.
    pub admission: AdmissionConfig,
}

impl ServerConfig {
    /// Defaults with `home` as the state directory.
    pub fn new(home: PathBuf) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            home,
            broker: BrokerConfig::default(),
            idle_timeout: Duration::from_secs(30),
            alt_ip: None,
            admission: AdmissionConfig::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The home directory could not be created.
    #[error("cannot create the server's home directory: {0}")]
    Home(std::io::Error),
    /// The store could not be opened.
    #[error("cannot open the server store: {0}")]
    Store(#[from] burrow_store::StoreError),
    /// The socket could not be bound.
    #[error(transparent)]
    Endpoint(#[from] burrow_net::EndpointError),
    /// The STUN alternates could not be bound.
    #[error(transparent)]
    Stun(#[from] burrow_net::stun_server::GridError),
    /// The admin socket could not be bound.
    #[error("cannot open the admin socket {path}: {source}")]
    Admin {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

pub(crate) struct Session {
    pub(crate) id: u64,
    /// Boxed: a queue's first block holds 32 slots whether used or not, and
    /// with 100 000 sessions 32 whole messages each would be 400 MiB.
    pub(crate) tx: mpsc::Sender<Box<ServerMsg>>,
    pub(crate) conn: quinn::Connection,
    pub(crate) name: burrow_proto::Name,
}

impl Session {
    /// Tells the node why it must go, then closes its connection once the node
    /// has read that (or after a second).
    pub(crate) fn expel(&self, reason: Refusal) {
        let _ = self
            .tx
            .try_send(Box::new(ServerMsg::Refused { peer: None, reason }));
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            conn.close(quinn::VarInt::from_u32(7), b"expelled");
        });
    }
}

/// The registry and the sessions that deliver its output, behind one lock: a
/// change and the messages announcing it happen in one step, so every node sees
/// the same order of events the registry does.
pub(crate) struct Hub {
    pub(crate) registry: Registry,
    pub(crate) sessions: HashMap<NodeId, Session>,
}

impl Hub {
    /// Where a relay datagram on `channel` from `from` goes: to the other end of
    /// a live link, if `from` is one end's current address and within its quota.
    fn relay(
        &mut self,
        from: SocketAddr,
        channel: &Channel,
        len: usize,
    ) -> Option<(SocketAddr, Option<IpAddr>)> {
        let (a, b) = self.registry.channel_ends(channel)?;
        let addr_of = |id: &NodeId| self.sessions.get(id).map(|s| s.conn.remote_address());
        let (addr_a, addr_b) = (addr_of(&a)?, addr_of(&b)?);
        let (sender, to, to_id) = if from == addr_a {
            (a, addr_b, b)
        } else if from == addr_b {
            (b, addr_a, a)
        } else {
            return None;
        };
        // From the address the receiver talks to: it takes relayed packets only
        // from there.
        let src = self.sessions.get(&to_id).and_then(|s| s.conn.local_ip());
        match self.registry.charge_relay(Instant::now(), sender, len) {
            Ok(()) => Some((to, src)),
            Err(RelayDrop::OverQuota { first: true }) => {
                warn!(node = %sender.short(), "relay quota used up; relaying nothing more from it this session");
                None
            }
            Err(_) => None,
        }
    }

    /// Handles a message from `from`, first noting where the server sees the
    /// nodes it concerns now (a NAT may have moved them since they registered).
    /// Returns whether it answered or cancelled a request that doesn't exist
    /// (which no honest node does twice).
    fn handle_msg(&mut self, from: NodeId, msg: ClientMsg) -> bool {
        let mut refresh = vec![from];
        if let ClientMsg::Repunch { peer } = &msg {
            refresh.push(*peer);
        }
        for id in refresh {
            if let Some(s) = self.sessions.get(&id) {
                let seen = s.conn.remote_address();
                self.registry.update_observed(id, seen);
            }
        }
        let out = self.registry.handle_msg(Instant::now(), from, msg);
        let forged = out.iter().any(|(to, m)| {
            *to == from
                && matches!(
                    m,
                    ServerMsg::Refused {
                        reason: Refusal::NoSuchRequest,
                        ..
                    }
                )
        });
        self.deliver(out);
        forged
    }

    /// Delivers the registry's output. A node whose queue is full is too slow to
    /// keep up: its connection is closed, and its leave is handled when its task ends.
    pub(crate) fn deliver(&self, out: Vec<Out>) {
        for (to, msg) in out {
            if let Some(s) = self.sessions.get(&to) {
                match s.tx.try_send(Box::new(msg)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if s.conn.close_reason().is_none() {
                            warn!(node = %to.short(), "node is not reading its messages; disconnecting it");
                            s.conn.close(quinn::VarInt::from_u32(2), b"too slow");
                        }
                    }
                    // The session is ending; its leave is on the way.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }
}

pub(crate) struct Shared {
    pub(crate) hub: Mutex<Hub>,
    pub(crate) store: Arc<Mutex<ServerStore>>,
    next_session: AtomicU64,
    admission: Mutex<Admission>,
    pub(crate) journal: Journal,
    pub(crate) hasher: Hasher,
}

impl Shared {
    /// Runs `f` on the admission state, then acts on what it decided: bans are
    /// persisted and logged, and sessions from a banned address are closed.
    pub(crate) fn admission<R>(&self, f: impl FnOnce(&mut Admission, Now) -> R) -> R {
        let (r, events) = {
            let mut a = self
                .admission
                .lock()
                .expect("admission lock is never poisoned");
            let r = f(&mut a, Now::real());
            let events: Vec<AdmissionEvent> = std::iter::from_fn(|| a.poll_event()).collect();
            (r, events)
        };
        for event in events {
            self.record(event);
        }
        r
    }

    fn record(&self, event: AdmissionEvent) {
        match event {
            AdmissionEvent::Banned(ban) => {
                let until = match ban.until_ms {
                    Some(t) => format!(
                        "until {}",
                        humantime::format_rfc3339_seconds(burrow_proto::time::from_unix_ms(t))
                    ),
                    None => "for good".into(),
                };
                warn!(target = %ban.target, reason = %ban.reason, %until, "banned");
                self.journal.log(
                    Actor::Ids,
                    "ban",
                    &ban.target,
                    format!("{}, {until}", ban.reason),
                );
                if let burrow_store::BanTarget::Addr(group) = ban.target {
                    let hub = self.hub();
                    for s in hub.sessions.values() {
                        if burrow_proto::ip_group(s.conn.remote_address().ip()) == group {
                            s.expel(Refusal::Banned {
                                until_ms: ban.until_ms,
                            });
                        }
                    }
                }
                self.journal.ban(ban);
            }
            AdmissionEvent::LoginFailed { name, addr, reason } => {
                info!(%name, %addr, %reason, "login failed");
                self.journal.log(
                    Actor::Ids,
                    "login-failed",
                    &name,
                    format!("from {addr}: {reason}"),
                );
            }
            AdmissionEvent::NameBlocked { name, duration } => {
                warn!(%name, ?duration, "too many failed logins; blocking password logins for the name");
                self.journal.log(
                    Actor::Ids,
                    "block",
                    &name,
                    format!(
                        "password and invite logins refused for {}",
                        humantime::format_duration(duration)
                    ),
                );
            }
            AdmissionEvent::Misbehaved { addr, what, score } => {
                debug!(%addr, what, score, "misbehaviour");
                self.journal.log(
                    Actor::Ids,
                    "misbehaviour",
                    addr,
                    format!("{what}; score {score}"),
                );
            }
        }
    }

    /// Runs `f` on the registry and delivers what it returns, under one lock.
    fn update(&self, f: impl FnOnce(&mut Registry) -> Vec<Out>) {
        let mut hub = self.hub.lock().expect("hub lock is never poisoned");
        let out = f(&mut hub.registry);
        hub.deliver(out);
    }

    pub(crate) fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().expect("hub lock is never poisoned")
    }
}

/// A running rendezvous server.
pub struct Server {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    stun_grid: Arc<burrow_net::StunGrid>,
    admin: tokio::net::UnixListener,
    home: PathBuf,
}

impl Server {
    /// Opens the store and binds the socket. Call inside a tokio runtime.
    pub fn bind(secret: &SecretKey, config: ServerConfig) -> Result<Self, ServerError> {
        burrow_net::keyfile::create_private_dir(&config.home).map_err(ServerError::Home)?;
        let mut store = ServerStore::open(&config.home.join("server.db"))?;
        let bans = store.bans(burrow_proto::time::unix_ms(SystemTime::now()))?;
        let allowed = store.allowed()?;
        let admin = admin::bind(&config.home).map_err(|source| ServerError::Admin {
            path: admin::socket_path(&config.home),
            source,
        })?;
        // STUN also needs the next port. With a fixed port a clash is an error;
        // with port 0 (any port) another pair is tried.
        let tries = if config.listen.port() == 0 { 16 } else { 1 };
        let mut attempt = 0;
        let (endpoint, stun_grid) = loop {
            attempt += 1;
            let endpoint = Self::bind_endpoint(secret, &config)?;
            match endpoint.start_stun_grid(config.alt_ip) {
                Ok(grid) => break (endpoint, grid),
                Err(e) if attempt >= tries => return Err(e.into()),
                Err(_) => continue,
            }
        };
        let store = Arc::new(Mutex::new(store));
        let shared = Arc::new(Shared {
            hub: Mutex::new(Hub {
                registry: Registry::new(config.broker),
                sessions: HashMap::new(),
            }),
            journal: Journal::start(store.clone()),
            store,
            next_session: AtomicU64::new(1),
            admission: Mutex::new(Admission::new(config.admission.clone(), bans, allowed)),
            hasher: Hasher::default(),
        });
        let relay = Arc::downgrade(&shared);
        endpoint.set_relay(Arc::new(move |from, channel, len| {
            relay.upgrade()?.hub().relay(from, channel, len)
        }));
        let gate = Arc::downgrade(&shared);
        stun_grid.set_gate(Arc::new(move |from| {
            gate.upgrade()
                .is_some_and(|s| s.admission(|a, now| a.check_stun(now, from)))
        }));
        Ok(Server {
            endpoint,
            stun_grid,
            shared,
            admin,
            home: config.home,
        })
    }

    fn bind_endpoint(secret: &SecretKey, config: &ServerConfig) -> Result<Endpoint, ServerError> {
        Ok(Endpoint::bind(
            secret,
            EndpointConfig {
                bind: config.listen,
                alpns: vec![rendezvous::ALPN],
                // The server doesn't keep nodes' mappings alive; nodes do.
                keepalive: None,
                idle_timeout: config.idle_timeout,
                answer_stun: true,
                // A node opens one control stream and sends small frames: that is
                // all the buffering a stranger gets out of the server.
                max_bidi_streams: 1,
                stream_window: 4 * rendezvous::MAX_CLIENT_FRAME as u32,
                receive_window: 8 * rendezvous::MAX_CLIENT_FRAME as u32,
                ..EndpointConfig::default()
            },
        )?)
    }

    /// The server's key.
    pub fn id(&self) -> NodeId {
        self.endpoint.id()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound socket has a local address")
    }

    /// The STUN-only alternate addresses (RFC 5780 NAT diagnosis).
    pub fn stun_alternates(&self) -> Vec<SocketAddr> {
        self.stun_grid.alternates()
    }

    /// How many nodes are online.
    pub fn online(&self) -> usize {
        self.shared.hub().registry.online()
    }

    /// The admission policy in force.
    pub fn policy(&self) -> crate::Policy {
        self.shared.admission(|a, _| a.policy())
    }

    /// Serves until `shutdown` fires, then closes every connection.
    pub async fn run(self, shutdown: CancellationToken) {
        let timer = tokio::spawn(expire_requests(self.shared.clone(), shutdown.clone()));
        let admin = tokio::spawn(admin::serve(
            self.shared.clone(),
            self.admin,
            shutdown.clone(),
        ));
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.quic().accept() => i,
            };
            let Some(incoming) = incoming else { break };
            let remote = incoming.remote_address();
            match self
                .shared
                .admission(|a, now| a.check_connection(now, remote.ip()))
            {
                ConnVerdict::Accept => {}
                ConnVerdict::Refuse => {
                    debug!(%remote, "refused: banned address");
                    incoming.refuse();
                    continue;
                }
                ConnVerdict::Ignore => {
                    debug!(%remote, "ignored: too many connection attempts");
                    incoming.ignore();
                    continue;
                }
            }
            let shared = self.shared.clone();
            while sessions.try_join_next().is_some() {}
            sessions.spawn(
                async move {
                    if let Err(e) = serve_node(incoming, shared).await {
                        debug!(error = %e, "session ended");
                    }
                }
                .instrument(tracing::debug_span!("conn", %remote)),
            );
        }
        timer.abort();
        admin.abort();
        admin::unlink(&self.home);
        self.shared.journal.flush().await;
        self.endpoint
            .quic()
            .close(quinn::VarInt::from_u32(0), b"server shutting down");
        // Sessions end as their connections close; once they have all gone, the
        // socket is released and the port can be bound again.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        sessions.abort_all();
        self.shared.hub().sessions.clear();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.endpoint.quic().wait_idle()).await;
        self.stun_grid.close().await;
    }
}

async fn expire_requests(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    for n in 0u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.update(|r| r.handle_timeout(Instant::now()));
        // Intrusion detection's tables are pruned every 5 s: they are large and
        // nothing in them is urgent.
        if n % 20 == 0 {
            shared.admission(|a, now| a.handle_timeout(now));
        }
    }
}

/// Why a node's session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
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

async fn serve_node(incoming: quinn::Incoming, shared: Arc<Shared>) -> Result<(), SessionError> {
    let observed = incoming.remote_address();
    let misbehaved = |what: &'static str, points: u32| {
        shared.admission(|a, now| a.misbehaved(now, observed.ip(), what, points))
    };
    let conn = incoming.await?;
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
            conn.close(quinn::VarInt::from_u32(3), b"bad frame");
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

    // Boxed: the registration's future is large and finished after Hello; the
    // session's own future lives as long as the node stays.
    match Box::pin(register::admit(
        &shared,
        id,
        &name,
        credentials,
        observed.ip(),
    ))
    .await
    {
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

    let lan: Vec<SocketAddr> = lan_addrs
        .into_iter()
        .filter(|a| !a.ip().is_unspecified() && !a.ip().is_multicast() && a.port() != 0)
        .take(MAX_CANDIDATES)
        .collect();
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
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
            },
        );
        if let Some(old) = replaced {
            old.conn
                .close(quinn::VarInt::from_u32(4), b"replaced by a newer session");
        }
        let info = PeerInfo {
            id,
            name: name.clone(),
        };
        let out = hub.registry.handle_join(info, session, observed, lan);
        hub.deliver(out);
    }
    shared.admission(|a, _| a.registered(observed.ip()));
    info!(node = %id.short(), %name, %observed, "online");

    let writer_task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if writer.write(&msg).await.is_err() {
                break;
            }
        }
    });

    let mut limit = RateLimit::new(MESSAGE_RATE, MESSAGE_BURST, Instant::now());
    let result = loop {
        match reader.read::<ClientMsg>().await {
            Ok(Some(ClientMsg::Bye)) | Ok(None) => break Ok(()),
            Ok(Some(msg)) => {
                if !limit.allow(Instant::now()) {
                    warn!(node = %id.short(), "too many messages; closing the session");
                    misbehaved("message flood", points::FLOOD);
                    conn.close(quinn::VarInt::from_u32(6), b"too many messages");
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
                    let online = |found| tracker::entries(&shared.hub().registry, found);
                    if let Some(answer) =
                        Box::pin(tracker::handle(&shared.store, online, id, msg)).await
                    {
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
                conn.close(quinn::VarInt::from_u32(3), b"bad frame");
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
    conn.close(quinn::VarInt::from_u32(0), b"bye");
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
    conn.close(quinn::VarInt::from_u32(5), b"refused");
}
