//! The server's driver: accepts node connections and runs the registry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use burrow_net::{Endpoint, EndpointConfig};
use burrow_proto::relay::Channel;
use burrow_proto::rendezvous::{self, ClientMsg, Refusal, ServerMsg};
use burrow_proto::{NodeId, SecretKey};
use burrow_store::ServerStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::admin;
use crate::admission::{Admission, AdmissionConfig, AdmissionEvent, ConnVerdict, Now};
use crate::broker::{BrokerConfig, Out, Registry, RelayDrop};
use crate::journal::{Actor, Journal};
use crate::password::Hasher;
use crate::silence::{Heard, Silence};

/// How the server runs. Parsed by the binary; defaults suit a public server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address for QUIC and STUN. Default `[::]:7700`: both families on
    /// one socket (IPv4 alone where the machine has no IPv6).
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
    /// Handshakes in progress past which a new connection must first prove
    /// its address with a QUIC Retry (one round trip more, no state kept for
    /// it until then): under a flood of Initials from spoofed addresses the
    /// server holds no more half-open handshakes than this. Default 256.
    pub retry_above: usize,
    /// Also take nodes over HTTPS here (TLS on TCP, then a WebSocket; see
    /// `burrow_net::https`), typically port 443, for networks that pass
    /// nothing else. Default: off.
    pub https: Option<SocketAddr>,
    /// The certificate chain and key (PEM files) the HTTPS port shows; a
    /// self-signed certificate when not given.
    pub https_cert: Option<(PathBuf, PathBuf)>,
}

impl ServerConfig {
    /// Defaults with `home` as the state directory.
    pub fn new(home: PathBuf) -> Self {
        ServerConfig {
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 7700)),
            home,
            broker: BrokerConfig::default(),
            idle_timeout: Duration::from_secs(30),
            alt_ip: None,
            admission: AdmissionConfig::default(),
            retry_above: 256,
            https: None,
            https_cert: None,
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
    Stun(#[from] crate::stun_grid::GridError),
    /// The TCP listener could not be bound.
    #[error("cannot listen on TCP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTPS port could not be set up.
    #[error("HTTPS on {addr}: {reason}")]
    Https {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
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
    /// Joins and leaves for the node, apart from `tx` and coalesced: churn
    /// can't fill its queue.
    pub(crate) news: Arc<crate::session::PresenceNews>,
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
            conn.close(burrow_net::Close::Expelled.code(), b"expelled");
        });
    }
}

/// The registry and the sessions that deliver its output, behind one lock: a
/// change and the messages announcing it happen in one step, so every node sees
/// the same order of events the registry does.
pub(crate) struct Hub {
    pub(crate) registry: Registry,
    pub(crate) sessions: HashMap<NodeId, Session>,
    links: Arc<burrow_net::tcp::Links>,
}

impl Hub {
    /// A session's real remote address (see [`Shared::real`]).
    pub(crate) fn real(&self, addr: SocketAddr) -> SocketAddr {
        self.links.real_addr(addr)
    }

    /// Where a relay datagram on `channel` from `from` goes: to the other end of
    /// a live link, if `from` is one end's current address and within its quota.
    fn relay(
        &mut self,
        from: SocketAddr,
        channel: &Channel,
        len: usize,
    ) -> Option<(SocketAddr, Option<IpAddr>)> {
        let (a, b) = self.registry.channel_ends(channel)?;
        let addr_of = |id: &NodeId| {
            self.sessions
                .get(id)
                .map(|s| burrow_net::paths::canonical(s.conn.remote_address()))
        };
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
        let src = self
            .sessions
            .get(&to_id)
            .and_then(|s| s.conn.local_ip())
            .map(|ip| ip.to_canonical());
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
    pub(crate) fn handle_msg(&mut self, from: NodeId, msg: ClientMsg) -> bool {
        let mut refresh = vec![from];
        if let ClientMsg::Repunch { peer } = &msg {
            refresh.push(*peer);
        }
        for id in refresh {
            if let Some(s) = self.sessions.get(&id) {
                let seen = s.conn.remote_address();
                self.registry.update_observed(id, self.real(seen));
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
                match s.news.note(&msg) {
                    crate::session::Noted::Taken => continue,
                    crate::session::Noted::NotNews => {}
                    crate::session::Noted::Full => {
                        if s.conn.close_reason().is_none() {
                            warn!(node = %to.short(), "node is not reading who comes and goes; disconnecting it");
                            s.conn.close(burrow_net::Close::TooSlow.code(), b"too slow");
                        }
                        continue;
                    }
                }
                match s.tx.try_send(Box::new(msg)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if s.conn.close_reason().is_none() {
                            warn!(node = %to.short(), "node is not reading its messages; disconnecting it");
                            s.conn.close(burrow_net::Close::TooSlow.code(), b"too slow");
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
    /// A read-only connection to the same store, for tracker searches: they
    /// never wait behind name bindings and bans, nor those behind them.
    pub(crate) search_store: Arc<Mutex<ServerStore>>,
    pub(crate) next_session: AtomicU64,
    /// Handshakes in progress (see [`ServerConfig::retry_above`]).
    pub(crate) handshakes: std::sync::atomic::AtomicUsize,
    /// Retry packets sent since the server started.
    pub(crate) retries: AtomicU64,
    admission: Mutex<Admission>,
    pub(crate) journal: Journal,
    pub(crate) hasher: Hasher,
    pub(crate) binder: crate::binder::Binder,
    /// TCP links: nodes on networks that drop UDP reach us over TCP, and
    /// quinn knows them by a virtual address.
    links: Arc<burrow_net::tcp::Links>,
    /// Sessions to watch for silence ([`crate::silence`]), to its driver.
    pub(crate) watch: mpsc::Sender<(NodeId, quinn::Connection)>,
}

impl Shared {
    /// Closes the TCP link at `addr`, if it is one.
    pub(crate) fn close_link(&self, addr: SocketAddr) {
        self.links.close(addr);
    }

    /// The real address of a node quinn knows at `addr` (the other end of its
    /// TCP link, when it came over TCP). Bans, limits and candidates use this.
    pub(crate) fn real(&self, addr: SocketAddr) -> SocketAddr {
        self.links.real_addr(addr)
    }

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
                        if burrow_proto::ip_group(hub.real(s.conn.remote_address()).ip()) == group {
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
            AdmissionEvent::NameUnderAttack {
                name,
                failures,
                addresses,
                delay,
            } => {
                warn!(%name, failures, addresses, ?delay, "name guessed from several addresses; slowing its password logins");
                self.journal.log(
                    Actor::Ids,
                    "slow-logins",
                    &name,
                    format!(
                        "{failures} failed logins from {addresses} addresses: each password attempt now waits {} (growing with more)",
                        humantime::format_duration(delay)
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
    watched: mpsc::Receiver<(NodeId, quinn::Connection)>,
    idle_timeout: Duration,
    stun_grid: Arc<crate::stun_grid::StunGrid>,
    admin: burrow_home::control::Listener,
    home: PathBuf,
    retry_above: usize,
    https: Option<SocketAddr>,
}

impl Server {
    /// Opens the store and binds the socket. Call inside a tokio runtime.
    pub fn bind(secret: &SecretKey, config: ServerConfig) -> Result<Self, ServerError> {
        burrow_home::keyfile::create_private_dir(&config.home).map_err(ServerError::Home)?;
        let mut store = ServerStore::open(&config.home.join("server.db"))?;
        let search_store = Arc::new(Mutex::new(ServerStore::open_reader(
            &config.home.join("server.db"),
        )?));
        let bans = store.bans(burrow_proto::time::unix_ms(SystemTime::now()))?;
        let allowed = store.allowed()?;
        let admin = admin::bind(&config.home).map_err(|source| ServerError::Admin {
            path: admin::address(&config.home),
            source,
        })?;
        // STUN also needs the next port. With a fixed port a clash is an error;
        // with port 0 (any port) another pair is tried.
        let tries = if config.listen.port() == 0 { 16 } else { 1 };
        let mut attempt = 0;
        let (endpoint, stun_grid) = loop {
            attempt += 1;
            let endpoint = Self::bind_endpoint(secret, &config)?;
            match crate::stun_grid::start(&endpoint, config.alt_ip) {
                Ok(grid) => break (endpoint, grid),
                Err(e) if attempt >= tries => return Err(e.into()),
                Err(_) => continue,
            }
        };
        let store = Arc::new(Mutex::new(store));
        // Registrations wait here while the silence driver is busy reading
        // counts: a few milliseconds with 100 000 nodes.
        let (watch, watched) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            hub: Mutex::new(Hub {
                links: endpoint.links(),
                registry: Registry::new(config.broker),
                sessions: HashMap::new(),
            }),
            journal: Journal::start(store.clone()),
            binder: crate::binder::Binder::start(store.clone()),
            store,
            search_store,
            next_session: AtomicU64::new(1),
            handshakes: Default::default(),
            retries: AtomicU64::new(0),
            admission: Mutex::new(Admission::new(config.admission.clone(), bans, allowed)),
            hasher: Hasher::default(),
            links: endpoint.links(),
            watch,
        });
        let relay = Arc::downgrade(&shared);
        endpoint.set_relay(Arc::new(move |from, channel, len| {
            relay.upgrade()?.hub().relay(from, channel, len)
        }));
        // Where nodes appear in their other family: both families' addresses
        // go in Welcomes, and a STUN request with a node's proof shows it.
        if let Ok(local) = endpoint.local_addr() {
            shared.hub().registry.set_server_addrs(server_addrs(local));
        }
        let witness = Arc::downgrade(&shared);
        stun_grid.set_witness(Arc::new(move |tx, from| {
            // Only a real address a peer could reach (not a TCP link's
            // virtual one, nor loopback or link-local) can be a node's.
            let from = burrow_net::paths::canonical(from);
            if burrow_net::tcp::is_link(from) || !burrow_net::iface::usable_elsewhere(&from.ip()) {
                return;
            }
            if let Some(s) = witness.upgrade() {
                if let Some(id) = s.hub().registry.witness(tx, from) {
                    tracing::debug!(node = %id.short(), %from, "node seen in its other address family");
                }
            }
        }));
        let gate = Arc::downgrade(&shared);
        stun_grid.set_gate(Arc::new(move |from| {
            gate.upgrade()
                .and_then(|s| s.admission(|a, now| a.check_stun(now, from)))
        }));
        // The same port over TCP, for nodes whose networks drop UDP: the
        // connection limits and bans apply before a byte is read.
        let gate = Arc::downgrade(&shared);
        endpoint
            .listen_tcp(Some(Arc::new(move |from: SocketAddr| {
                gate.upgrade().is_some_and(|s| {
                    s.admission(|a, now| a.check_connection(now, from.ip())) == ConnVerdict::Accept
                })
            })))
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let https = match config.https {
            None => None,
            Some(addr) => {
                let failed = |reason: String| ServerError::Https { addr, reason };
                let cert = config
                    .https_cert
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path()));
                let tls = burrow_net::https::server_tls(cert).map_err(|e| failed(e.to_string()))?;
                let gate = Arc::downgrade(&shared);
                let bound = endpoint
                    .listen_https(
                        addr,
                        tls,
                        Some(Arc::new(move |from: SocketAddr| {
                            gate.upgrade().is_some_and(|s| {
                                s.admission(|a, now| a.check_connection(now, from.ip()))
                                    == ConnVerdict::Accept
                            })
                        })),
                    )
                    .map_err(|e| failed(e.to_string()))?;
                Some(bound)
            }
        };
        Ok(Server {
            https,
            endpoint,
            stun_grid,
            shared,
            watched,
            idle_timeout: config.idle_timeout,
            admin,
            home: config.home,
            retry_above: config.retry_above,
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
                // Small frames only; relayed traffic is raw datagrams, not
                // these connections. Saves 1.3 KiB per connected node.
                mtu_discovery: false,
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

    /// Where nodes reach us over HTTPS, when we listen there.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https
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
        let silence = tokio::spawn(close_silent(self.watched, self.idle_timeout));
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
            let remote = self.shared.real(incoming.remote_address());
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
            if self.shared.handshakes.load(Ordering::Relaxed) >= self.retry_above
                && !incoming.remote_address_validated()
                && incoming.may_retry()
            {
                // After the address's own limits. Stateless: a spoofed
                // source never sees the Retry, so it never costs a handshake.
                self.shared.retries.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = incoming.retry() {
                    debug!(%remote, error = %e, "no Retry sent");
                }
                continue;
            }
            let shared = self.shared.clone();
            let counted = crate::session::InProgress::count(shared.clone());
            while sessions.try_join_next().is_some() {}
            sessions.spawn(
                async move {
                    if let Err(e) = crate::session::serve_node(incoming, shared, counted).await {
                        debug!(error = %e, "session ended");
                    }
                }
                .instrument(tracing::debug_span!("conn", %remote)),
            );
        }
        timer.abort();
        silence.abort();
        admin.abort();
        admin::unlink(&self.home);
        self.shared.journal.flush().await;
        self.endpoint
            .quic()
            .close(burrow_net::Close::Done.code(), b"server shutting down");
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
        // The tracker forgets nodes gone a month, at start and every hour.
        if n % (4 * 3600) == 0 {
            let online = |id: &NodeId| shared.hub().registry.online_info(id).is_some();
            crate::tracker::forget_stale(&shared.store, online).await;
        }
    }
}

/// Drives [`Silence`]: closes the sessions of nodes that sent nothing for
/// `limit`, so that they leave at once (see [`crate::silence`] for why QUIC's
/// idle timer alone can keep them twice as long).
async fn close_silent(mut watched: mpsc::Receiver<(NodeId, quinn::Connection)>, limit: Duration) {
    let heard = |conn: &quinn::Connection| match conn.close_reason() {
        Some(_) => Heard::Gone,
        None => Heard::Datagrams(conn.stats().udp_rx.datagrams),
    };
    let mut silence = Silence::new(limit);
    loop {
        let wake = silence.poll_timeout();
        tokio::select! {
            new = watched.recv() => {
                let Some((id, conn)) = new else { return };
                let Heard::Datagrams(n) = heard(&conn) else { continue };
                silence.handle_added(Instant::now(), (id, conn), n);
            }
            _ = sleep_until_some(wake) => {
                for (id, conn) in silence.handle_timeout(Instant::now(), |(_, c)| heard(c)) {
                    info!(node = %id.short(), ?limit, "nothing heard from it; closing its session");
                    conn.close(burrow_net::Close::Silent.code(), b"silent");
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The addresses nodes reach a server listening at `listen` on: that one when
/// it is specific; every global interface address when it is a wildcard
/// (`[::]` takes both families): a private IPv4 or unique-local IPv6 address
/// is no use to a node on the internet.
fn server_addrs(listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    burrow_net::iface::lan_candidates(listen)
        .into_iter()
        .filter(|a| burrow_net::iface::is_global(&a.ip()))
        .collect()
}
