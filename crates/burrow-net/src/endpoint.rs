//! A burrow endpoint: the shared UDP socket, the QUIC endpoint on it, and the STUN
//! client (and, on servers, responder) reading the socket's non-QUIC datagrams.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use burrow_proto::stun::{self, Change, TransactionId};
use burrow_proto::{NodeId, SecretKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use burrow_proto::punch::{PunchConfig, PunchSession, PunchTicket, Role, Strategy};
use burrow_proto::relay::{self, Channel};

use crate::paths::PathTable;
use crate::socket::{DemuxSocket, RawDatagram, RawSender};
use crate::tls;

/// Most STUN queries waiting for an answer at once.
const MAX_STUN_WAITERS: usize = 64;

/// How an endpoint is set up. Defaults suit a node on the internet.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Address to bind the UDP socket to. Default `[::]:0`: any port, both
    /// families on one socket (IPv4 only where the system has no IPv6).
    pub bind: SocketAddr,
    /// ALPNs accepted on incoming connections. Empty: accept none.
    pub alpns: Vec<&'static [u8]>,
    /// QUIC keepalive interval. Default 10 s: under the 30 s UDP mapping timeout
    /// common on home routers, with room for one lost keepalive.
    pub keepalive: Option<Duration>,
    /// A connection with no packets for this long is dead. Default 30 s (three
    /// keepalives missed). The smaller of the two ends' values applies.
    pub idle_timeout: Duration,
    /// Handshake deadline for outgoing connections. Default 10 s.
    pub connect_timeout: Duration,
    /// Answer STUN Binding requests (servers do; nodes don't).
    pub answer_stun: bool,
    /// Bidirectional streams a peer may have open at once. Default 32. burrow
    /// uses no unidirectional streams, so peers may open none.
    pub max_bidi_streams: u32,
    /// Bytes a peer may have in flight on one stream. Default 1.25 MiB (quinn's).
    pub stream_window: u32,
    /// Bytes a peer may have in flight on one connection. Default 8 MiB. With the
    /// stream limit, this bounds what one peer can make us buffer.
    pub receive_window: u32,
    /// Bytes we keep in flight (sent, not yet acknowledged) on one connection.
    /// Default 8 MiB. Like the receive windows, it caps a connection's rate at
    /// window / round trip.
    pub send_window: u64,
    /// Let incoming connections follow a client to a new address (QUIC
    /// migration). Servers do (a node's NAT may move it); nodes don't: their
    /// peers' paths change underneath the virtual address ([`crate::paths`]),
    /// and a connection quinn moved to a real address would leave that table.
    pub allow_migration: bool,
    /// Probe each connection's path for packets larger than 1200 bytes (QUIC's
    /// DPLPMTUD). Default on: file transfers gain from full-size packets. A
    /// rendezvous server turns it off: its connections carry small control
    /// frames, and the probing state costs about 1.3 KiB a connection.
    pub mtu_discovery: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            bind: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            alpns: Vec::new(),
            keepalive: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            answer_stun: false,
            max_bidi_streams: 32,
            stream_window: 1_250_000,
            receive_window: 8 << 20,
            send_window: 8 << 20,
            allow_migration: true,
            mtu_discovery: true,
        }
    }
}

/// Why an endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// What we tried to bind.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The QUIC endpoint could not start on the socket.
    #[error("cannot start QUIC on the socket: {0}")]
    Quic(std::io::Error),
}

/// Why an outgoing connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// quinn refused to start the attempt (e.g. an invalid address).
    #[error("cannot connect: {0}")]
    Start(#[from] quinn::ConnectError),
    /// The handshake or connection failed.
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    /// No answer within the connect timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The other end proved a key, but not the one we wanted.
    #[error("{addr} presented key {actual}, expected {expected}")]
    WrongKey {
        /// Who we dialed.
        addr: SocketAddr,
        /// The key we wanted.
        expected: NodeId,
        /// The key it proved.
        actual: NodeId,
    },
    /// The handshake finished without a usable key (cannot happen with our verifiers).
    #[error("peer presented no key")]
    NoKey,
}

/// Why a STUN query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum StunQueryError {
    /// No response within the deadline.
    #[error("no STUN answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// Too many queries in flight.
    #[error("too many STUN queries in flight")]
    Busy,
}

type Waiters = Arc<Mutex<HashMap<TransactionId, oneshot::Sender<stun::Response>>>>;

/// Most relayed datagrams a server sends in one batch. At 64 (the system's
/// limit) one relayed pair on loopback fell from 2.0 to 0.25 Gbit/s (losses,
/// most likely at the receiver's socket buffer); at 10, 2.2.
const RELAY_BATCH: usize = 10;

/// HTTPS handshakes (TLS and the WebSocket upgrade) a server runs at once...
const MAX_HTTPS_HANDSHAKES: usize = 256;
/// ...and from one address group (an IPv4 address, an IPv6 /64).
const MAX_HTTPS_HANDSHAKES_PER_GROUP: usize = 8;

/// One address group's hold on a handshake slot, given back on drop.
struct GroupSlot(Arc<Mutex<HashMap<IpAddr, usize>>>, IpAddr);

impl Drop for GroupSlot {
    fn drop(&mut self) {
        let mut held = self.0.lock().expect("never poisoned");
        if let Some(n) = held.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.1);
            }
        }
    }
}

/// The next connection on `listener` that `gate` lets in (canonical source).
async fn accept_gated(
    listener: &tokio::net::TcpListener,
    gate: Option<&TcpGate>,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let from = crate::paths::canonical(from);
        if gate.is_some_and(|g| !g(from)) {
            tracing::debug!(%from, "{what} connection refused (gate)");
            continue;
        }
        return (stream, from);
    }
}

/// Where a relayed datagram goes: the address, and the local one to send from.
pub type RelayRoute = (SocketAddr, Option<IpAddr>);

/// Decides where a relay datagram goes (see [`Endpoint::set_relay`]): given who
/// sent it, its channel and its size, the address to forward it to and, on a
/// server with several addresses, the one to send from (the one that node talks
/// to, which is the only source it accepts relayed packets from); `None` drops it.
pub type RelayHandler =
    Arc<dyn Fn(SocketAddr, &Channel, usize) -> Option<RelayRoute> + Send + Sync>;
type RelaySlot = Arc<OnceLock<RelayHandler>>;
/// Decides whether a TCP connection from an address is taken ([`Endpoint::listen_tcp`]).
pub type TcpGate = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Answers the Binding requests that reach the main socket (see
/// [`Endpoint::set_stun_hook`]): given the socket's address, the local IP the
/// request arrived at (when the socket could tell), its source and the
/// request. A server's RFC 5780 grid answers through one.
pub type StunHook =
    Arc<dyn Fn(SocketAddr, Option<IpAddr>, SocketAddr, stun::Request) + Send + Sync>;
type StunSlot = Arc<OnceLock<StunHook>>;

/// The shared socket with QUIC and STUN on it.
pub struct Endpoint {
    quic: quinn::Endpoint,
    secret: SecretKey,
    raw: RawSender,
    transport: Arc<quinn::TransportConfig>,
    connect_timeout: Duration,
    waiters: Waiters,
    stun_hook: StunSlot,
    punches: crate::punch::Routes,
    birthdays: Arc<crate::side::BirthdaySlots>,
    paths: Arc<PathTable>,
    links: Arc<crate::tcp::Links>,
    deliver: crate::tcp::Deliver,
    waiting: Arc<crate::tcp::Waiting>,
    tcp_listener: Mutex<Option<JoinHandle<()>>>,
    https_listener: Mutex<Option<JoinHandle<()>>>,
    relay: RelaySlot,
    dispatcher: JoinHandle<()>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.secret.public())
            .field("local", &self.quic.local_addr().ok())
            .field("relay", &self.relay.get().is_some())
            .finish()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.dispatcher.abort();
        if let Some(t) = self
            .tcp_listener
            .get_mut()
            .expect("listener lock is never poisoned")
            .take()
        {
            t.abort();
        }
        if let Some(t) = self
            .https_listener
            .get_mut()
            .expect("listener lock is never poisoned")
            .take()
        {
            t.abort();
        }
    }
}

impl Endpoint {
    /// Binds the socket and starts QUIC and the datagram dispatcher. Must be called
    /// inside a tokio runtime.
    pub fn bind(secret: &SecretKey, config: EndpointConfig) -> Result<Self, EndpointError> {
        let socket =
            crate::socket::bind_udp(config.bind).map_err(|source| EndpointError::Bind {
                addr: config.bind,
                source,
            })?;
        socket.set_nonblocking(true).map_err(EndpointError::Quic)?;
        let paths = Arc::new(PathTable::default());
        let links = Arc::new(crate::tcp::Links::default());
        let (demux, raw, raw_rx) =
            DemuxSocket::wrap(socket, paths.clone(), links.clone()).map_err(EndpointError::Quic)?;
        let weak_demux = Arc::downgrade(&demux);
        let deliver: crate::tcp::Deliver = Arc::new(move |from, data: &[u8]| {
            if let Some(d) = weak_demux.upgrade() {
                d.deliver_link(from, data);
            }
        });

        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(0u8.into())
            .max_concurrent_bidi_streams(config.max_bidi_streams.into())
            .stream_receive_window(config.stream_window.into())
            .receive_window(config.receive_window.into())
            .send_window(config.send_window)
            .keep_alive_interval(config.keepalive);
        if !config.mtu_discovery {
            transport.mtu_discovery_config(None);
        }
        transport.max_idle_timeout(Some(
            config
                .idle_timeout
                .try_into()
                .expect("idle timeout fits QUIC's varint range"),
        ));
        let transport = Arc::new(transport);

        let server = if config.alpns.is_empty() {
            None
        } else {
            let tls = tls::server_config(secret, &config.alpns);
            let crypto = QuicServerConfig::try_from(tls)
                .expect("TLS 1.3 with an initial suite is QUIC-capable");
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            server.transport_config(transport.clone());
            server.migration(config.allow_migration);
            Some(server)
        };
        let mut endpoint_config = quinn::EndpointConfig::default();
        // Keep the fixed bit set in every packet we send, so that the socket's
        // demultiplexer and middleboxes can always tell QUIC from STUN.
        endpoint_config.grease_quic_bit(false);
        let quic = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            server,
            demux,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(EndpointError::Quic)?;

        let waiters: Waiters = Arc::default();
        let stun_hook: StunSlot = Arc::default();
        let punches: crate::punch::Routes = Arc::default();
        let relay: RelaySlot = Arc::default();
        let local = quic.local_addr().map_err(EndpointError::Quic)?;
        let dispatcher = tokio::spawn(dispatch(
            raw_rx,
            raw.clone(),
            waiters.clone(),
            config.answer_stun.then(|| (local, stun_hook.clone())),
            punches.clone(),
            relay.clone(),
        ));
        Ok(Endpoint {
            quic,
            secret: secret.clone(),
            raw,
            transport,
            connect_timeout: config.connect_timeout,
            waiters,
            stun_hook,
            punches,
            birthdays: Arc::default(),
            paths,
            links,
            deliver,
            waiting: Arc::default(),
            tcp_listener: Mutex::new(None),
            https_listener: Mutex::new(None),
            relay,
            dispatcher,
        })
    }

    /// The QUIC endpoint (for `accept`, `close`, `wait_idle`).
    pub fn quic(&self) -> &quinn::Endpoint {
        &self.quic
    }

    /// This endpoint's own key.
    pub fn id(&self) -> NodeId {
        self.secret.public()
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// Whether our socket can send to `to`: the IPv6 wildcard (dual-stack,
    /// as burrow binds `[::]`) takes both families, a specific IPv6 address
    /// only IPv6, an IPv4 socket only IPv4.
    pub fn takes(&self, to: SocketAddr) -> bool {
        self.local_addr()
            .is_ok_and(|l| crate::socket::takes(l, crate::paths::canonical(to)))
    }

    /// Also accepts TCP on our UDP socket's address: each connection becomes a
    /// link ([`crate::tcp`]) that QUIC and the relay use like a UDP path.
    /// `gate` may refuse a connection by its source address (bans, rate
    /// limits) before anything is read from it.
    pub fn listen_tcp(&self, gate: Option<TcpGate>) -> std::io::Result<SocketAddr> {
        let local = self.local_addr()?;
        let listener = crate::tcp::bound_socket(local, false)?.listen(1024)?;
        let (links, deliver) = (self.links.clone(), self.deliver.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, from) = accept_gated(&listener, gate.as_ref(), "TCP").await;
                if let Err(e) =
                    links.attach(stream, deliver.clone(), crate::tcp::Opened::ByStranger)
                {
                    tracing::debug!(%from, error = %e, "TCP link refused");
                }
            }
        });
        self.set_listener(task);
        Ok(local)
    }

    /// Also accepts nodes over HTTPS at `addr` (TLS with `tls`, then a
    /// WebSocket: see [`crate::https`]): each becomes a link, as over TCP.
    /// `gate` refuses connections by source address before TLS starts.
    /// Returns the address bound.
    pub fn listen_https(
        &self,
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        gate: Option<TcpGate>,
    ) -> std::io::Result<SocketAddr> {
        let listener = crate::tcp::bound_socket(addr, false)?.listen(1024)?;
        let bound = listener.local_addr()?;
        let (links, deliver) = (self.links.clone(), self.deliver.clone());
        // Handshakes at once: each holds a socket and some TLS state for at
        // most `https::HANDSHAKE`; one address group holds a few of them.
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTPS_HANDSHAKES));
        let per_group: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        let task = tokio::spawn(async move {
            loop {
                let (stream, from) = accept_gated(&listener, gate.as_ref(), "HTTPS").await;
                let group = burrow_proto::ip_group(from.ip());
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%from, "too many HTTPS handshakes; connection dropped");
                    continue;
                };
                {
                    let mut held = per_group.lock().expect("never poisoned");
                    let n = held.entry(group).or_insert(0);
                    if *n >= MAX_HTTPS_HANDSHAKES_PER_GROUP {
                        tracing::debug!(%from, "too many HTTPS handshakes from its address; dropped");
                        continue;
                    }
                    *n += 1;
                }
                let (links, deliver, tls) = (links.clone(), deliver.clone(), tls.clone());
                let per_group = per_group.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _held = GroupSlot(per_group, group);
                    let ws = match crate::https::accept(stream, tls).await {
                        Ok(ws) => ws,
                        Err(e) => {
                            tracing::debug!(%from, error = %e, "HTTPS handshake failed");
                            return;
                        }
                    };
                    if let Err(e) =
                        links.attach_ws(ws, from, deliver, crate::tcp::Opened::ByStranger)
                    {
                        tracing::debug!(%from, error = %e, "HTTPS link refused");
                    }
                });
            }
        });
        self.https_listener
            .lock()
            .expect("listener lock is never poisoned")
            .replace(task)
            .inspect(|old| old.abort());
        Ok(bound)
    }

    /// Connects to the server `host` on `port` over HTTPS, the way `via`
    /// says (straight to an address, or through an HTTP proxy by name), and
    /// makes the WebSocket a link: returns the virtual address to dial QUIC
    /// to.
    pub async fn dial_https(
        &self,
        host: &str,
        port: u16,
        via: crate::https::Via<'_>,
    ) -> Result<SocketAddr, crate::https::HttpsError> {
        let (ws, real) = crate::https::dial(host, port, via).await?;
        self.links
            .attach_ws(ws, real, self.deliver.clone(), crate::tcp::Opened::ByUs)
            .map_err(|e| crate::https::HttpsError::Io(std::io::Error::other(e.to_string())))
    }

    /// Keeps `task` as the endpoint's TCP listener (one at a time).
    fn set_listener(&self, task: JoinHandle<()>) {
        if let Some(old) = self
            .tcp_listener
            .lock()
            .expect("listener lock is never poisoned")
            .replace(task)
        {
            old.abort();
        }
    }

    /// Connects to `to` over TCP (from our UDP socket's port number, so the
    /// address the server sees is the one a TCP punch would use) and makes the
    /// connection a link: returns the virtual address to dial (QUIC) or send
    /// to (relay datagrams) through it.
    pub async fn dial_tcp(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr, crate::tcp::LinkError> {
        let socket = crate::tcp::shared_port_socket(self.shared_port()?)?;
        let to = crate::socket::on_wire(self.shared_port()?.is_ipv6(), to);
        let stream = tokio::time::timeout(timeout, socket.connect(to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        self.links
            .attach(stream, self.deliver.clone(), crate::tcp::Opened::ByUs)
    }

    /// Our port number on every address, for TCP sockets that share it.
    fn shared_port(&self) -> std::io::Result<SocketAddr> {
        let local = self.local_addr()?;
        let any: IpAddr = if local.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        Ok(SocketAddr::new(any, local.port()))
    }

    /// Listens on TCP on our port for peers' side of TCP punches (a node
    /// behind no NAT, or one that lets the SYN in, is reached here before
    /// its own SYN leaves): see [`Endpoint::tcp_punch`].
    pub fn listen_punches(&self) -> std::io::Result<()> {
        let listener = crate::tcp::shared_port_socket(self.shared_port()?)?.listen(64)?;
        let task = tokio::spawn(crate::tcp::serve_punches(listener, self.waiting.clone()));
        self.set_listener(task);
        Ok(())
    }

    /// Punches over TCP (simultaneous open, see [`crate::tcp`]) toward
    /// `candidates` for up to `deadline`, proving `ticket` on the stream;
    /// returns the new link's virtual address, to use as the peer's direct path.
    pub async fn tcp_punch(
        &self,
        role: Role,
        ticket: PunchTicket,
        candidates: &[SocketAddr],
        deadline: Duration,
        open_ttl: Option<u8>,
    ) -> Option<SocketAddr> {
        let local = self.shared_port().ok()?;
        let Some((id, accepted)) = self.waiting.add(ticket, role) else {
            tracing::debug!(
                max = crate::tcp::MAX_TCP_PUNCHES,
                "too many TCP punches at once; not punching"
            );
            return None;
        };
        let stream = crate::tcp::simultaneous_open(
            local, candidates, ticket, role, deadline, open_ttl, accepted,
        )
        .await;
        self.waiting.remove(id);
        self.links
            .attach(stream?, self.deliver.clone(), crate::tcp::Opened::ByUs)
            .ok()
    }

    /// The real address behind `addr`: the other end of a TCP link when `addr`
    /// is one's virtual address, else `addr` itself.
    pub fn real_addr(&self, addr: SocketAddr) -> SocketAddr {
        self.links.real_addr(addr)
    }

    /// The TCP links (to look up real addresses from anywhere).
    pub fn links(&self) -> Arc<crate::tcp::Links> {
        self.links.clone()
    }

    /// Closes the TCP link at `addr`, if it is one.
    pub fn close_link(&self, addr: SocketAddr) {
        self.links.close(addr);
    }

    /// Every peer's path: how packets to a peer's virtual address travel.
    pub fn paths(&self) -> &PathTable {
        &self.paths
    }

    /// Makes this endpoint a relay: every relay datagram that isn't for one of
    /// our own paths goes to `handler`, and is forwarded unchanged to the address
    /// it returns. Set once; later calls are ignored.
    pub fn set_relay(&self, handler: RelayHandler) {
        let _ = self.relay.set(handler);
    }

    /// Sender for raw datagrams on the shared socket.
    pub fn raw_sender(&self) -> &RawSender {
        &self.raw
    }

    /// Dials `addr` for service `alpn`. With `expected`, a peer proving any other key
    /// is refused with [`ConnectError::WrongKey`] before anything is sent to it.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
        expected: Option<NodeId>,
    ) -> Result<(quinn::Connection, NodeId), ConnectError> {
        let tls = tls::client_config(&self.secret, alpn);
        let crypto =
            QuicClientConfig::try_from(tls).expect("TLS 1.3 with an initial suite is QUIC-capable");
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(self.transport.clone());
        let connecting = self.quic.connect_with(cfg, addr, tls::SERVER_NAME)?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        let actual = tls::peer_id(&conn).ok_or(ConnectError::NoKey)?;
        if let Some(expected) = expected {
            if expected != actual {
                conn.close(crate::Close::WrongKey.code(), b"unexpected key");
                return Err(ConnectError::WrongKey {
                    addr,
                    expected,
                    actual,
                });
            }
        }
        Ok((conn, actual))
    }

    /// Hands the Binding requests reaching the main socket to `hook` instead
    /// of answering them plainly (a server's STUN grid). Needs `answer_stun`.
    /// Set once; later calls are ignored.
    pub fn set_stun_hook(&self, hook: StunHook) {
        let _ = self.stun_hook.set(hook);
    }

    /// Starts punching toward `candidates` (see [`burrow_proto::punch`]), doing
    /// `strategy`'s part for hard NATs. The receiver yields the path found (the
    /// peer's address, how, and the side socket it leaves from for a birthday
    /// punch), or `None` when the punch gave up. With `peer`, addresses the
    /// punch proves to be the peer's are noted in its path
    /// ([`PathTable::learn`]).
    ///
    /// Side sockets are opened here, at most [`crate::side::MAX_BIRTHDAY_PUNCHES`]
    /// punches' worth at once; past that, or when binding fails, the punch
    /// runs with the ones it got (or none).
    pub fn start_punch(
        &self,
        role: Role,
        ticket: PunchTicket,
        candidates: &[SocketAddr],
        strategy: &Strategy,
        config: PunchConfig,
        peer: Option<NodeId>,
    ) -> Result<oneshot::Receiver<Option<crate::punch::Punched>>, crate::punch::PunchError> {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::punch::SESSION_QUEUE);
        let mut strategy = strategy.clone();
        let slot = (strategy.side_sockets > 0)
            .then(|| self.birthdays.take())
            .flatten();
        let mut sides = Vec::new();
        if let (Some(_), Ok(like)) = (&slot, self.local_addr()) {
            for i in 1..=strategy.side_sockets {
                let local = burrow_proto::punch::Local(i);
                match crate::side::SideSocket::bind(like, local, tx.clone(), self.paths.clone()) {
                    Ok(s) => sides.push(Arc::new(s)),
                    Err(e) => {
                        tracing::warn!(error = %e, opened = sides.len(), "cannot open more side sockets");
                        break;
                    }
                }
            }
        } else if strategy.side_sockets > 0 {
            tracing::debug!("birthday punches busy: punching without side sockets");
        }
        strategy.side_sockets = sides.len() as u16;
        let session = PunchSession::with_strategy(
            std::time::Instant::now(),
            role,
            ticket,
            candidates,
            &strategy,
            config,
            rand::random(),
        );
        crate::punch::start(
            crate::punch::Prepared {
                session,
                rx,
                tx,
                sides,
                slot,
            },
            self.raw.clone(),
            self.punches.clone(),
            peer.map(|p| (self.paths.clone(), p)),
        )
    }

    /// Asks the STUN server at `server` which address our socket appears from,
    /// retransmitting (RFC 8489 style, doubling from 250 ms) until `deadline`.
    pub async fn stun(
        &self,
        server: SocketAddr,
        deadline: Duration,
    ) -> Result<SocketAddr, StunQueryError> {
        Ok(self
            .stun_query(server, Change::default(), deadline)
            .await?
            .mapped)
    }

    /// A Binding request to `server` asking for `change`; the whole response.
    pub async fn stun_query(
        &self,
        server: SocketAddr,
        change: Change,
        deadline: Duration,
    ) -> Result<stun::Response, StunQueryError> {
        let mut id = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut id);
        self.stun_query_as(server, id, change, deadline).await
    }

    /// Like [`Self::stun`], with transaction id `tx` (a server's proof that the
    /// request is ours: see `ServerMsg::Welcome`'s `also`).
    pub async fn stun_as(
        &self,
        server: SocketAddr,
        tx: [u8; 12],
        deadline: Duration,
    ) -> Result<SocketAddr, StunQueryError> {
        Ok(self
            .stun_query_as(server, tx, Change::default(), deadline)
            .await?
            .mapped)
    }

    async fn stun_query_as(
        &self,
        server: SocketAddr,
        id: [u8; 12],
        change: Change,
        deadline: Duration,
    ) -> Result<stun::Response, StunQueryError> {
        let tx = TransactionId::new(id);
        let (answer_tx, mut answer_rx) = oneshot::channel();
        {
            let mut w = self.waiters.lock().expect("waiters lock is never poisoned");
            if w.len() >= MAX_STUN_WAITERS {
                return Err(StunQueryError::Busy);
            }
            w.insert(tx, answer_tx);
        }
        let request = stun::binding_request_with(tx, change);
        let result = tokio::time::timeout(deadline, async {
            let mut wait = Duration::from_millis(250);
            loop {
                if let Err(e) = self.raw.send(server, &request) {
                    tracing::debug!(%server, error = %e, "STUN send failed");
                }
                match tokio::time::timeout(wait, &mut answer_rx).await {
                    Ok(Ok(addr)) => return Some(addr),
                    Ok(Err(_)) => return None,
                    Err(_) => wait = (wait * 2).min(Duration::from_secs(2)),
                }
            }
        })
        .await;
        self.waiters
            .lock()
            .expect("waiters lock is never poisoned")
            .remove(&tx);
        match result {
            Ok(Some(addr)) => Ok(addr),
            _ => Err(StunQueryError::Timeout(server, deadline)),
        }
    }
}

/// Routes the socket's non-QUIC datagrams: relay datagrams to the relay (on a
/// server), punch probes to their session, STUN responses to their waiting
/// query, STUN requests to the responder (when answering: our address and the
/// STUN hook, if the server set one); anything else is dropped.
async fn dispatch(
    mut rx: mpsc::Receiver<RawDatagram>,
    raw: RawSender,
    waiters: Waiters,
    answer: Option<(SocketAddr, StunSlot)>,
    punches: crate::punch::Routes,
    relay: RelaySlot,
) {
    // A datagram read ahead while batching relayed ones, and, for a relayed
    // one, the handler's verdict (asked once: it charges the sender).
    let mut ahead: Option<(RawDatagram, Option<Option<RelayRoute>>)> = None;
    loop {
        let (RawDatagram { from, to_ip, data }, routed) = match ahead.take() {
            Some(d) => d,
            None => match rx.recv().await {
                Some(d) => (d, None),
                None => break,
            },
        };
        if let Some((channel, _)) = relay::parse(&data) {
            let route =
                routed.unwrap_or_else(|| relay.get().and_then(|h| h(from, &channel, data.len())));
            let Some((to, src)) = route else {
                tracing::trace!(%from, ?channel, "relay datagram dropped");
                continue;
            };
            // Relayed datagrams queued behind this one for the same place, of
            // the same size, go out with it in one batch.
            let segment = data.len();
            let mut batch = data;
            let mut count = 1;
            while count < raw.max_segments().min(RELAY_BATCH) {
                let Ok(next) = rx.try_recv() else { break };
                let route = relay::parse(&next.data)
                    .and_then(|(c, _)| relay.get().and_then(|h| h(next.from, &c, next.data.len())));
                if route != Some((to, src)) || next.data.len() > segment {
                    let verdict = relay::parse(&next.data).map(|_| route);
                    ahead = Some((next, verdict));
                    break;
                }
                let last = next.data.len() < segment;
                batch.extend_from_slice(&next.data);
                count += 1;
                if last {
                    break;
                }
            }
            if let Err(e) = raw.send_batch(to, src, &batch, segment) {
                tracing::debug!(%to, error = %e, "relayed datagrams not sent");
            }
            continue;
        }
        if let Some(id) = burrow_proto::punch::session_of(&data) {
            let route = punches
                .lock()
                .expect("punch routes lock is never poisoned")
                .get(&id)
                .cloned();
            match route {
                Some(r) => {
                    let _ = r.try_send((burrow_proto::punch::Local::MAIN, from, data));
                }
                None => tracing::debug!(%from, "punch datagram for no session"),
            }
            continue;
        }
        if !stun::looks_like_stun(&data) {
            tracing::debug!(%from, len = data.len(), "dropping unknown datagram");
            continue;
        }
        if let Some((local, hook)) = &answer {
            if let Ok(req) = stun::parse_request(&data) {
                match hook.get() {
                    Some(hook) => hook(*local, to_ip, from, req),
                    None => {
                        let reply = stun::binding_response(req.tx, from, None, None);
                        if let Err(e) = raw.send_from(from, to_ip, &reply) {
                            tracing::debug!(%from, error = %e, "STUN answer not sent");
                        }
                    }
                }
                continue;
            }
        }
        match stun::parse_response(&data) {
            Ok(resp) => {
                let waiter = waiters
                    .lock()
                    .expect("waiters lock is never poisoned")
                    .remove(&resp.tx);
                if let Some(w) = waiter {
                    let _ = w.send(resp);
                }
            }
            Err(e) => tracing::debug!(%from, error = %e, "dropping STUN datagram"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::Route;
    use rand::SeedableRng;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// Completes every incoming handshake, for tests that only dial.
    fn accept_all(server: Endpoint) {
        tokio::spawn(async move {
            while let Some(i) = server.quic().accept().await {
                let _ = i.await;
            }
        });
    }

    fn local() -> EndpointConfig {
        EndpointConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn stun_and_quic_share_one_port() {
        let server = Endpoint::bind(
            &key(1),
            EndpointConfig {
                alpns: vec![b"t/1"],
                answer_stun: true,
                ..local()
            },
        )
        .unwrap();
        let client = Endpoint::bind(&key(2), local()).unwrap();
        let server_addr = server.local_addr().unwrap();

        let seen = client
            .stun(server_addr, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(seen, client.local_addr().unwrap());

        let accept = tokio::spawn(async move {
            let conn = server.quic().accept().await.unwrap().await.unwrap();
            let who = tls::peer_id(&conn);
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            (who, recv.read_to_end(100).await.unwrap())
        });
        let (conn, server_id) = client
            .connect(server_addr, b"t/1", Some(key(1).public()))
            .await
            .unwrap();
        assert_eq!(server_id, key(1).public());
        let (mut s, _recv) = conn.open_bi().await.unwrap();
        s.write_all(b"hi").await.unwrap();
        s.finish().unwrap();
        let (who, data) = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .expect("the server reads the stream")
            .unwrap();
        assert_eq!(who, Some(key(2).public()));
        assert_eq!(data, b"hi");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn padded_requests_are_answered_without_padding() {
        let server = Endpoint::bind(
            &key(1),
            EndpointConfig {
                answer_stun: true,
                ..local()
            },
        )
        .unwrap();
        let main = server.local_addr().unwrap();
        let t = Duration::from_secs(2);
        // A 1536-byte request, as RFC 5780 clients pad them, is answered too.
        let mut padded = burrow_proto::stun::binding_request(TransactionId::new([9; 12]));
        padded.extend_from_slice(&[0x00, 0x26, 0x05, 0xdc]);
        padded.extend_from_slice(&[0u8; 1500]);
        let len = (padded.len() - burrow_proto::stun::HEADER_LEN) as u16;
        padded[2..4].copy_from_slice(&len.to_be_bytes());
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.set_read_timeout(Some(t)).unwrap();
        probe.send_to(&padded, main).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = probe.recv_from(&mut buf).expect("padded request answered");
        assert!(n < 200, "the answer carries no padding: {n} bytes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_endpoints_punch_and_then_talk_quic_on_the_path() {
        let ticket = PunchTicket::random(&mut rand::rngs::StdRng::seed_from_u64(5));
        let a = Endpoint::bind(
            &key(1),
            EndpointConfig {
                alpns: vec![b"t/1"],
                ..local()
            },
        )
        .unwrap();
        let b = Endpoint::bind(
            &key(2),
            EndpointConfig {
                alpns: vec![b"t/1"],
                ..local()
            },
        )
        .unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // A's candidates for B include a dead address first.
        let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let ra = a
            .start_punch(
                Role::Requester,
                ticket,
                &[dead, ba],
                &Strategy::default(),
                PunchConfig::default(),
                None,
            )
            .unwrap();
        let rb = b
            .start_punch(
                Role::Acceptor,
                ticket,
                &[aa],
                &Strategy::default(),
                PunchConfig::default(),
                None,
            )
            .unwrap();
        let t = Duration::from_secs(5);
        let found = |r: Option<crate::punch::Punched>| r.map(|p| (p.addr, p.via.is_none()));
        assert_eq!(
            found(tokio::time::timeout(t, ra).await.unwrap().unwrap()),
            Some((ba, true))
        );
        assert_eq!(
            found(tokio::time::timeout(t, rb).await.unwrap().unwrap()),
            Some((aa, true))
        );
        // The same socket carries QUIC on the path.
        let accept =
            tokio::spawn(async move { b.quic().accept().await.unwrap().await.map(|_| ()) });
        let (conn, _) = a.connect(ba, b"t/1", Some(key(2).public())).await.unwrap();
        accept.await.unwrap().unwrap();
        assert!(conn.rtt() < Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relayed_connection_moves_to_the_direct_path_without_a_break() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let node = |seed| {
            Endpoint::bind(
                &key(seed),
                EndpointConfig {
                    alpns: vec![b"t/1"],
                    ..local()
                },
            )
            .unwrap()
        };
        let (relay, a, b) = (Endpoint::bind(&key(9), local()).unwrap(), node(1), node(2));
        let (ra, aa, ba) = (
            relay.local_addr().unwrap(),
            a.local_addr().unwrap(),
            b.local_addr().unwrap(),
        );
        let channel = Channel([5; 16]);
        let relayed = Arc::new(AtomicUsize::new(0));
        let count = relayed.clone();
        relay.set_relay(Arc::new(move |from, ch, _len| {
            if *ch != channel {
                return None;
            }
            count.fetch_add(1, Ordering::Relaxed);
            match from {
                f if f == aa => Some((ba, None)),
                f if f == ba => Some((aa, None)),
                _ => None,
            }
        }));
        let (ida, idb) = (key(1).public(), key(2).public());
        let vb = a.paths().open(idb);
        let va = b.paths().open(ida);
        a.paths().set_relay(&idb, Some((ra, channel)));
        b.paths().set_relay(&ida, Some((ra, channel)));

        // An echo service on b; the connection comes in from a's virtual address.
        let b = Arc::new(b);
        let b2 = b.clone();
        let echo = tokio::spawn(async move {
            let conn = b2.quic().accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut buf = [0u8; 64];
            while let Some(n) = recv.read(&mut buf).await.unwrap() {
                send.write_all(&buf[..n]).await.unwrap();
            }
            conn.remote_address()
        });
        let (conn, _) = a.connect(vb, b"t/1", Some(idb)).await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        async fn echoes(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, n: u32) {
            let mut buf = [0u8; 4];
            for i in 0..n {
                send.write_all(&i.to_be_bytes()).await.unwrap();
                recv.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, i.to_be_bytes());
            }
        }
        echoes(&mut send, &mut recv, 20).await;
        assert!(
            relayed.load(Ordering::Relaxed) >= 40,
            "the handshake and the echoes went through the relay"
        );
        assert_eq!(a.paths().status(&idb).unwrap().route, Route::Relayed(ra));

        // A punch found the direct path: both sides switch; the stream goes on.
        a.paths().set_direct(&idb, Some(ba));
        b.paths().set_direct(&ida, Some(aa));
        echoes(&mut send, &mut recv, 3).await;
        let before = relayed.load(Ordering::Relaxed);
        echoes(&mut send, &mut recv, 200).await;
        assert_eq!(
            relayed.load(Ordering::Relaxed),
            before,
            "direct packets went through the relay"
        );
        assert_eq!(a.paths().status(&idb).unwrap().route, Route::Direct(ba));

        // The direct path dies: back to the relay, same connection.
        a.paths().set_direct(&idb, None);
        b.paths().set_direct(&ida, None);
        echoes(&mut send, &mut recv, 20).await;
        assert!(relayed.load(Ordering::Relaxed) >= before + 40);
        send.finish().unwrap();
        assert_eq!(echo.await.unwrap(), va, "b saw one address throughout");
        assert_eq!(conn.remote_address(), vb);
    }

    #[tokio::test]
    async fn wrong_key_is_refused_with_both_keys_named() {
        let server = Endpoint::bind(
            &key(1),
            EndpointConfig {
                alpns: vec![b"t/1"],
                ..local()
            },
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        accept_all(server);
        let client = Endpoint::bind(&key(2), local()).unwrap();
        match client.connect(addr, b"t/1", Some(key(3).public())).await {
            Err(ConnectError::WrongKey {
                expected, actual, ..
            }) => {
                assert_eq!((expected, actual), (key(3).public(), key(1).public()));
            }
            other => panic!("expected WrongKey, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn peers_may_not_open_unidirectional_streams() {
        let server = Endpoint::bind(
            &key(1),
            EndpointConfig {
                alpns: vec![b"t/1"],
                ..local()
            },
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let keep = tokio::spawn(async move {
            let conn = server.quic().accept().await.unwrap().await.unwrap();
            conn.closed().await
        });
        let client = Endpoint::bind(&key(2), local()).unwrap();
        let (conn, _) = client.connect(addr, b"t/1", None).await.unwrap();
        // No credit for unidirectional streams: opening one waits forever.
        let opened = tokio::time::timeout(Duration::from_millis(300), conn.open_uni()).await;
        assert!(opened.is_err(), "a unidirectional stream was allowed");
        keep.abort();
    }

    #[tokio::test]
    async fn garbage_datagrams_do_not_stop_the_endpoint() {
        let server = Endpoint::bind(
            &key(1),
            EndpointConfig {
                alpns: vec![b"t/1"],
                answer_stun: true,
                ..local()
            },
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for i in 0..500usize {
            let mut d = vec![0u8; 1 + (i * 7) % 1400];
            rng.fill_bytes(&mut d);
            if i % 3 == 0 && d.len() >= 20 {
                d[0] &= 0x3f;
                d[4..8].copy_from_slice(&stun::MAGIC_COOKIE);
            }
            junk.send_to(&d, addr).unwrap();
        }
        accept_all(server);
        let client = Endpoint::bind(&key(2), local()).unwrap();
        assert!(client.stun(addr, Duration::from_secs(2)).await.is_ok());
        assert!(client.connect(addr, b"t/1", None).await.is_ok());
    }
}
