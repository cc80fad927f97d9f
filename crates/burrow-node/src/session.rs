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

use burrow_net::https::Via;
use burrow_net::{iface, ConnectError, FrameReader, FrameWriter};
use burrow_proto::addr::ServerAddr;
use burrow_proto::rendezvous::{
    self, ClientMsg, CloseReason, Direction, LinkOffer, Refusal, ServerMsg,
};
use burrow_proto::NodeId;
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::event::NodeEvent;
use crate::node::{Inner, RequestOp};
use crate::peers;
use crate::trust::KnownServers;

/// How long the server has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for the server before senders wait.
const OUTBOX: usize = 64;
/// First retry delay after losing the server.
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// Why a session could not be set up or was lost.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The server's host name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// host:port.
        host: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {addr}: {source}")]
    Unreachable {
        /// Where we dialed (an address, or the name the proxy was asked for).
        addr: String,
        /// Why.
        source: ConnectError,
    },
    /// The server proved a key other than the one its address pins.
    #[error("the server at {addr} presented key {actual}, but the address pins {expected}")]
    PinnedKeyMismatch {
        /// Where we dialed (an address, or the name the proxy was asked for).
        addr: String,
        /// Pinned key.
        expected: NodeId,
        /// Presented key.
        actual: NodeId,
    },
    /// The server's key differs from the one recorded on first use.
    #[error("server key changed since last time: {host} now presents {actual}, but {file} records {expected}")]
    KeyChanged {
        /// host:port.
        host: String,
        /// Recorded key.
        expected: NodeId,
        /// Presented key.
        actual: NodeId,
        /// The known_servers file.
        file: String,
    },
    /// The server refused our registration.
    #[error("the server refused to register us: {reason}")]
    Refused {
        /// Why.
        reason: Refusal,
        /// Our key: what an allowlist's operator needs to let us in.
        us: NodeId,
    },
    /// The server ended our session for good (kicked, banned, taken off the
    /// allowlist).
    #[error("the server disconnected us: {reason}")]
    Expelled {
        /// Why.
        reason: Refusal,
        /// Our key.
        us: NodeId,
    },
    /// The server's name does not resolve here (or to nothing we have a
    /// route to), and the proxy, asked for it by name, did not get us
    /// through.
    #[error("{host} is out of reach from here but through the proxy, and the proxy at {proxy} did not get through: {reason}")]
    Proxy {
        /// The server's name and HTTPS port.
        host: String,
        /// The proxy.
        proxy: String,
        /// What the proxy or the server's HTTPS port said.
        reason: String,
    },
    /// The session broke.
    #[error("lost the server: {0}")]
    Lost(String),
}

impl SessionError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SessionError::Unreachable { .. } => {
                "is `burrow server` running there, and is its UDP port open?".into()
            }
            SessionError::Proxy { .. } => {
                "does the server listen with --https (its URL then ends in ?https=PORT), and does the proxy allow that port?".into()
            }
            SessionError::PinnedKeyMismatch { .. } => {
                "check the server id in the address with the server's operator".into()
            }
            SessionError::KeyChanged { file, host, .. } => {
                format!("if you trust the new key, remove the line for {host} from {file}")
            }
            SessionError::Refused { reason, us } | SessionError::Expelled { reason, us } => {
                return refusal_hint(reason, us)
            }
            _ => return None,
        })
    }
}

/// What a person can do about a refusal of our registration (`us` is our key).
fn refusal_hint(r: &Refusal, us: &NodeId) -> Option<String> {
    Some(match r {
        Refusal::NameTaken => {
            "that name belongs to another key on this server: pick another with --name".into()
        }
        Refusal::CredentialsRequired => {
            "give the account's password (--password-stdin) or an invite from the server's operator (--invite CODE)".into()
        }
        Refusal::WrongPassword => {
            "check the password; after 5 failures logins for the name are blocked for a while".into()
        }
        Refusal::InviteInvalid => "ask the server's operator for a new invite".into(),
        Refusal::NotAllowed => format!(
            "this server admits only the nodes its operator allowed: ask them to run `burrow admin allow {us}`"
        ),
        Refusal::Banned { until_ms: Some(t) } => format!(
            "the ban ends at {}",
            humantime::format_rfc3339_seconds(burrow_proto::time::from_unix_ms(*t))
        ),
        Refusal::Banned { until_ms: None } => {
            "ask the server's operator if you think it is a mistake".into()
        }
        Refusal::Blocked { retry_in_ms } => {
            format!("try again in {} s", retry_in_ms.div_ceil(1000))
        }
        Refusal::Kicked => "start the node again to come back".into(),
        _ => return None,
    })
}

impl From<burrow_net::FramedError> for SessionError {
    fn from(e: burrow_net::FramedError) -> Self {
        SessionError::Lost(e.to_string())
    }
}

/// A registered session, ready to run.
pub(crate) struct Session {
    conn: quinn::Connection,
    reader: FrameReader,
    writer: FrameWriter,
    /// The outbox: the node's operations send through `tx` (also in the state).
    tx: mpsc::Sender<ClientMsg>,
    rx: mpsc::Receiver<ClientMsg>,
}

/// How long UDP has the server to itself before TCP is tried beside it: a
/// handshake that works takes one round trip; one that hasn't answered by now
/// may be on a network that drops UDP.
const UDP_HEAD_START: Duration = Duration::from_secs(2);
/// How long a TCP connection to the server may take.
const TCP_CONNECT: Duration = Duration::from_secs(5);

/// How long UDP and TCP have the server to themselves before HTTPS is tried
/// beside them (a network that passes nothing else).
const HTTPS_HEAD_START: Duration = Duration::from_secs(4);
/// The HTTPS port tried when the server's address names none.
const DEFAULT_HTTPS_PORT: u16 = 443;

/// Dials the server over UDP; when that has not answered within
/// [`UDP_HEAD_START`], over TCP beside it (QUIC over a TCP link, see
/// `burrow_net::tcp`); and after [`HTTPS_HEAD_START`], over HTTPS (a
/// WebSocket over TLS on the server's HTTPS port, through the proxy when one
/// is set: `burrow_net::https`). The first to connect wins. Returns the
/// address the session runs to (a link's virtual address over TCP or HTTPS)
/// and the outcome; when all fail, UDP's error.
async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    expected: Option<NodeId>,
) -> (
    SocketAddr,
    Result<(quinn::Connection, NodeId), ConnectError>,
) {
    let ep = &inner.endpoint;
    let udp = ep.connect(addr, rendezvous::ALPN, expected);
    tokio::pin!(udp);
    tokio::select! {
        r = &mut udp => return (addr, r),
        _ = tokio::time::sleep(UDP_HEAD_START) => {}
    }
    // QUIC over a link once it is made; a wrong key is the answer, whichever
    // way it came. The links made are noted: those that lose the race are
    // closed (a server holds only a few per address).
    let made = std::sync::Mutex::new(Vec::new());
    let over = |link: Option<SocketAddr>, how: &'static str| {
        let made = &made;
        async move {
            let link = link?;
            made.lock().expect("never poisoned").push(link);
            match ep.connect(link, rendezvous::ALPN, expected).await {
                Ok(c) => Some((link, Ok(c))),
                Err(e @ ConnectError::WrongKey { .. }) => Some((link, Err(e))),
                Err(e) => {
                    debug!(%addr, error = %e, "QUIC over {how} failed");
                    None
                }
            }
        }
    };
    let tcp = async {
        let link = ep
            .dial_tcp(addr, TCP_CONNECT)
            .await
            .inspect_err(|e| debug!(%addr, error = %e, "no TCP either"))
            .ok();
        over(link, "TCP").await
    };
    let server = inner.config.server.as_ref();
    // Only where the server says it listens there, or a proxy is the way
    // out (then its usual port): not at every web server on 443 whenever
    // a server is merely down.
    let proxy = inner.config.proxy.clone();
    let https_port = server
        .and_then(|s| s.https)
        .or(proxy.is_some().then_some(DEFAULT_HTTPS_PORT));
    let host = server.map_or_else(|| addr.ip().to_string(), |s| s.host.clone());
    let https = async {
        let https_port = https_port?;
        tokio::time::sleep(HTTPS_HEAD_START - UDP_HEAD_START).await;
        let to = SocketAddr::new(addr.ip(), https_port);
        let via = proxy
            .as_deref()
            .map_or(Via::Direct(to), |proxy| Via::Proxy {
                proxy,
                server: Some(to),
            });
        let link = match ep.dial_https(&host, https_port, via).await {
            Ok(link) => Some(link),
            Err(e) => {
                let via = proxy
                    .as_deref()
                    .map(|p| format!(" through the proxy {p}"))
                    .unwrap_or_default();
                info!(%to, error = %e, "no HTTPS to the server{via}");
                None
            }
        };
        over(link, "HTTPS").await
    };
    tokio::pin!(tcp);
    tokio::pin!(https);
    let (mut tcp_done, mut https_done) = (false, false);
    let mut udp_failed = None;
    let result = loop {
        tokio::select! {
            r = &mut udp, if udp_failed.is_none() => {
                if r.is_ok() {
                    break (addr, r);
                }
                udp_failed = Some(r);
            }
            t = &mut tcp, if !tcp_done => match t {
                Some(t) => {
                    info!(server = %addr, "reaching the server over TCP (no answer over UDP)");
                    break t;
                }
                None => tcp_done = true,
            },
            h = &mut https, if !https_done => match h {
                Some(h) => {
                    info!(server = %addr, port = ?https_port, "reaching the server over HTTPS (no answer over UDP or TCP)");
                    break h;
                }
                None => https_done = true,
            },
        }
        if tcp_done && https_done {
            if let Some(r) = udp_failed {
                break (addr, r);
            }
        }
    };
    let made: Vec<SocketAddr> = made.lock().expect("never poisoned").drain(..).collect();
    for link in made {
        if link != result.0 || result.1.is_err() {
            ep.close_link(link);
        }
    }
    result
}

/// Dials the server, checks its key, registers, and applies the Welcome.
pub(crate) async fn connect(inner: &Arc<Inner>) -> Result<Session, SessionError> {
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
    let mut reader = FrameReader::new(recv, rendezvous::VERSION, rendezvous::MAX_FRAME);
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
            {
                let mut st = inner.state();
                // Usable as soon as the Welcome is applied: operations queue in the
                // outbox until the session's writer starts.
                st.server_tx = Some(tx.clone());
                st.server_addr = Some(via);
                st.server_id = Some(key);
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
                let behind_nat = !iface::lan_candidates(local)
                    .iter()
                    .any(|a| a.ip() == observed.ip());
                st.open_ttl = behind_nat.then(|| burrow_net::ttl::open_ttl(None));
                if let Some(probe) = hop_probe.filter(|_| behind_nat) {
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
                over_tcp: burrow_net::tcp::is_link(via),
                server: host,
                public_addr: observed,
            });
            if inner.config.path != crate::PathPolicy::RelayOnly && !also.is_empty() {
                inner.spawn(find_other_family(inner.clone(), also, proof));
            }
            peers::relink_all(inner);
            crate::files::announce_all(inner);
            Ok(Session {
                conn,
                reader,
                writer,
                tx,
                rx,
            })
        }
        Some(ServerMsg::Refused { reason, .. }) => {
            conn.close(burrow_net::Close::Done.code(), b"refused");
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

/// Resolves `host` (host:port) to the address to dial from our socket at
/// `local`.
async fn server_addr(host: &str, local: SocketAddr) -> Result<SocketAddr, SessionError> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(host)
        .await
        .map_err(|e| SessionError::Resolve {
            host: host.into(),
            reason: e.to_string(),
        })?
        .map(burrow_net::paths::canonical)
        .collect();
    pick_server_addr(local, &resolved).ok_or_else(|| SessionError::Resolve {
        host: host.into(),
        reason: if resolved.is_empty() {
            "no address".into()
        } else {
            format!(
                "no route from here to {} (is this machine online, and in that address family?)",
                resolved
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    })
}

/// Dials the server by name through the proxy (its HTTPS port, or 443):
/// for a name that resolves only on the proxy's side. Returns the link's
/// address and the QUIC outcome over it, or why no link was made.
async fn dial_by_name(
    inner: &Arc<Inner>,
    server: &ServerAddr,
    expected: Option<NodeId>,
) -> Result<
    (
        SocketAddr,
        Result<(quinn::Connection, NodeId), ConnectError>,
    ),
    SessionError,
> {
    let ep = &inner.endpoint;
    let proxy = inner.config.proxy.as_deref().unwrap_or_default();
    let port = server.https.unwrap_or(DEFAULT_HTTPS_PORT);
    let via = Via::Proxy {
        proxy,
        server: None,
    };
    let link = ep
        .dial_https(&server.host, port, via)
        .await
        .map_err(|e| SessionError::Proxy {
            host: format!("{}:{port}", server.host),
            proxy: proxy.into(),
            reason: e.to_string(),
        })?;
    info!(server = %server.host, port, "reaching the server over HTTPS, by name through the proxy");
    let dialed = ep.connect(link, rendezvous::ALPN, expected).await;
    if dialed.is_err() {
        ep.close_link(link);
    }
    Ok((link, dialed))
}

/// The server address to dial of those `host` resolved to: one our socket
/// (bound at `local`) can send to and this machine has a route to, IPv4 first
/// (NAT measurements and port mappings are IPv4's; a dual-stack node finds
/// its IPv6 address through the server's Welcome).
fn pick_server_addr(local: SocketAddr, resolved: &[SocketAddr]) -> Option<SocketAddr> {
    let fits = |a: &SocketAddr| burrow_net::socket::takes(local, *a);
    let mut usable: Vec<SocketAddr> = resolved.iter().copied().filter(fits).collect();
    usable.sort_by_key(|a| a.is_ipv6());
    usable
        .iter()
        .copied()
        .find(|a| has_route(*a))
        .or_else(|| usable.first().copied())
}

/// Whether this machine has a route to `to` (a UDP socket connects without
/// sending anything: it fails at once without one).
pub(crate) fn has_route(to: SocketAddr) -> bool {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any).is_ok_and(|s| s.connect(to).is_ok())
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
        .filter(|a| has_route(*a))
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
        ServerMsg::Pending { peer } => {
            if let Some(p) = st.peers.get_mut(&peer) {
                p.request = Some(Direction::Outgoing);
            }
            resolve_waiter(&mut st, peer, |op| op == RequestOp::Connect, Ok(()));
        }
        ServerMsg::Incoming { peer } => {
            let name = peer.name.to_string();
            let id = peer.id;
            let Some(p) = st.mark_online(peer) else {
                warn!(%name, "peer table full; ignoring a connect request");
                return;
            };
            p.request = Some(Direction::Incoming);
            let answer = crate::contacts::answer(&mut st, &id);
            drop(st);
            match answer {
                crate::contacts::Answer::Ask => inner.emit(NodeEvent::IncomingRequest { name }),
                other => crate::contacts::answer_for_user(inner, id, name, other),
            }
        }
        ServerMsg::Notice { text, everyone } => {
            drop(st);
            crate::chat::notice(inner, text, everyone);
        }
        ServerMsg::Accepted(LinkOffer {
            peer,
            direction,
            candidates,
            peer_nat,
            punch,
            relay,
        }) => {
            if let Some(p) = st.peers.get_mut(&peer) {
                p.accepted = true;
                if direction == Direction::Incoming {
                    // Our part is done; the requester dials us now.
                    p.request = None;
                }
            }
            let op = match direction {
                Direction::Outgoing => RequestOp::Connect,
                Direction::Incoming => RequestOp::Accept,
            };
            resolve_waiter(&mut st, peer, |o| o == op, Ok(()));
            drop(st);
            peers::link(inner, peer, direction, &candidates, peer_nat, punch, relay);
            if direction == Direction::Incoming {
                inner.spawn(peers::admission_deadline(inner.clone(), peer))
            }
        }
        ServerMsg::Punch(LinkOffer {
            peer,
            direction,
            candidates,
            peer_nat,
            punch,
            relay,
        }) => {
            // Only for a link we still have: a stale one is released.
            let ours = st
                .peers
                .get(&peer)
                .is_some_and(|p| p.connected() || p.accepted);
            drop(st);
            if ours {
                peers::link(inner, peer, direction, &candidates, peer_nat, punch, relay);
            } else {
                peers::unlink(inner, peer);
            }
        }
        ServerMsg::Closed {
            peer,
            direction,
            reason,
        } => {
            let name = st.name_of(&peer);
            if let Some(p) = st.peers.get_mut(&peer) {
                p.request = None;
                // The request is over: only a live connection keeps the peer admitted.
                p.accepted = p.connected();
            }
            let answered = match (direction, reason) {
                (Direction::Incoming, CloseReason::Rejected) => Some(RequestOp::Reject),
                (Direction::Outgoing, CloseReason::Cancelled) => Some(RequestOp::Cancel),
                _ => None,
            };
            resolve_waiter(&mut st, peer, |op| Some(op) == answered, Ok(()));
            st.forget_idle(&peer);
            drop(st);
            inner.emit(NodeEvent::RequestClosed {
                name,
                direction,
                reason,
            });
        }
        ServerMsg::Refused {
            peer: Some(peer),
            reason,
        } => {
            if let Some(p) = st.peers.get_mut(&peer) {
                if !p.connected() {
                    p.accepted = false;
                }
            }
            resolve_waiter(&mut st, peer, |_| true, Err(reason));
        }
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

/// Answers the operation waiting on `peer`, if `answers` says this reply is its.
fn resolve_waiter(
    st: &mut crate::state::State,
    peer: NodeId,
    answers: impl Fn(RequestOp) -> bool,
    result: Result<(), Refusal>,
) {
    if st.waiters.get(&peer).is_some_and(|(op, _)| answers(*op)) {
        if let Some((_, w)) = st.waiters.remove(&peer) {
            let _ = w.send(result);
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
