//! Datagrams over TCP, for networks that drop UDP.
//!
//! A TCP connection ("link") carries datagrams framed as `u16 length | bytes`.
//! Each link gets a virtual address (240.0.0.0/4 port 2, apart from the
//! peers' port-1 addresses in [`crate::paths`]); the shared socket sends
//! anything addressed to it down the link, and receives what comes up the link
//! as if it came from that address. So QUIC, the relay and burrow's own
//! datagrams work over TCP unchanged: a node on a network that blocks UDP
//! reaches the server (and the relay) over a link, and the server's relay
//! forwards between UDP and TCP ends alike.
//!
//! QUIC over TCP pays for head-of-line blocking and doubled congestion
//! control; it is the path of last resort, chosen only when UDP gets nowhere.
//!
//! A listener's table of links is open to strangers, so it is guarded: one
//! address group holds at most [`MAX_LINKS_PER_GROUP`] of the
//! [`MAX_LINKS`], a link a stranger opened must start with a QUIC Initial
//! (a frame of at least [`MIN_FIRST_FRAME`] bytes) within
//! [`FIRST_FRAME_WAIT`], and empty frames don't count as a link being alive.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use burrow_proto::punch::{PunchTicket, Role};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Largest datagram a link carries (a relayed full-size QUIC packet is 1472).
pub const MAX_DATAGRAM: usize = 2048;
/// Datagrams queued for one link's writer before more are dropped (as a full
/// socket buffer drops them: QUIC retransmits).
const QUEUE: usize = 1024;
/// Most links at once on one endpoint.
pub const MAX_LINKS: usize = 4096;
/// A link that brings nothing for this long is closed.
const LINK_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// Links one address group (an IPv4 address, an IPv6 /64) may hold in a
/// listener's table: a household's nodes behind one NAT, not a table's worth.
pub const MAX_LINKS_PER_GROUP: usize = 16;
/// How long a stranger's link has to send its first datagram...
pub const FIRST_FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// ...which must be at least this long: QUIC pads a client's Initial to 1200
/// bytes, and every link a node opens starts with one.
pub const MIN_FIRST_FRAME: usize = 1200;

/// Who opened a link, which decides what its first frame must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// We dialed it, or a punch proved it: anything may come first.
    ByUs,
    /// A stranger connected to our listener: a QUIC Initial must come first.
    ByStranger,
}

/// Whether `addr` is a link's virtual address (see [`crate::virt`]).
pub fn is_link(addr: SocketAddr) -> bool {
    crate::virt::kind(addr) == Some(crate::virt::Kind::Link)
}

/// Where a link's received datagrams go: the shared socket's receive path.
pub(crate) type Deliver = Arc<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    /// The other end's real address.
    real: SocketAddr,
    /// `tcp`, or `https` for a WebSocket.
    transport: &'static str,
    tasks: [AbortHandle; 2],
}

/// The endpoint's links, by virtual address.
#[derive(Default)]
pub struct Links {
    map: Mutex<HashMap<SocketAddr, Link>>,
    next: AtomicU32,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Links({})", self.lock().len())
    }
}

/// Why a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Too many links.
    #[error("too many TCP links")]
    Full,
    /// Too many links from the address group.
    #[error("too many TCP links from {0}")]
    TooManyFrom(std::net::IpAddr),
    /// The connection failed.
    #[error("TCP: {0}")]
    Io(#[from] io::Error),
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Link>> {
        self.map.lock().expect("links lock is never poisoned")
    }

    /// Takes `stream` as a link: returns its virtual address. Datagrams read
    /// from it go to `deliver`; the link ends (and is forgotten) when the
    /// stream does.
    pub(crate) fn attach(
        self: &Arc<Self>,
        stream: TcpStream,
        deliver: Deliver,
        opened: Opened,
    ) -> Result<SocketAddr, LinkError> {
        let real = crate::paths::canonical(stream.peer_addr()?);
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        self.insert(real, opened, "tcp", |virt, rx, links| {
            let reader = tokio::spawn(read_link(read, virt, deliver, links.clone(), opened));
            let writer = tokio::spawn(write_link(write, rx, virt, links));
            [reader.abort_handle(), writer.abort_handle()]
        })
    }

    /// Takes a WebSocket (a node's HTTPS link, see [`crate::https`]) from
    /// `real` as a link, as [`Self::attach`] takes a TCP stream: each binary
    /// message is one datagram.
    pub(crate) fn attach_ws<S>(
        self: &Arc<Self>,
        ws: tokio_tungstenite::WebSocketStream<S>,
        real: SocketAddr,
        deliver: Deliver,
        opened: Opened,
    ) -> Result<SocketAddr, LinkError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use futures_util::StreamExt;
        let (sink, stream) = ws.split();
        self.insert(
            crate::paths::canonical(real),
            opened,
            "https",
            |virt, rx, links| {
                let reader = tokio::spawn(read_ws(stream, virt, deliver, links.clone(), opened));
                let writer = tokio::spawn(write_ws(sink, rx, virt, links));
                [reader.abort_handle(), writer.abort_handle()]
            },
        )
    }

    /// Gives a new link from `real` its virtual address and starts its tasks
    /// (`start`: reader and writer), within the table's bounds.
    fn insert(
        self: &Arc<Self>,
        real: SocketAddr,
        opened: Opened,
        transport: &'static str,
        start: impl FnOnce(SocketAddr, mpsc::Receiver<Vec<u8>>, Weak<Links>) -> [AbortHandle; 2],
    ) -> Result<SocketAddr, LinkError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let virt = crate::virt::addr(crate::virt::Kind::Link, n);
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut map = self.lock();
        if map.len() >= MAX_LINKS {
            return Err(LinkError::Full);
        }
        let group = burrow_proto::ip_group(real.ip());
        if opened == Opened::ByStranger
            && map
                .values()
                .filter(|l| burrow_proto::ip_group(l.real.ip()) == group)
                .count()
                >= MAX_LINKS_PER_GROUP
        {
            return Err(LinkError::TooManyFrom(group));
        }
        let tasks = start(virt, rx, Arc::downgrade(self));
        map.insert(
            virt,
            Link {
                tx,
                real,
                transport,
                tasks,
            },
        );
        tracing::debug!(%real, %virt, "TCP link up");
        Ok(virt)
    }

    /// Queues `data` for the link at `to`. Returns false when `to` is no link;
    /// a full queue drops the datagram (like a full socket buffer).
    pub(crate) fn send(&self, to: SocketAddr, data: &[u8]) -> bool {
        let map = self.lock();
        let Some(link) = map.get(&crate::paths::canonical(to)) else {
            return false;
        };
        if data.len() <= MAX_DATAGRAM {
            let _ = link.tx.try_send(data.to_vec());
        }
        true
    }

    /// The real address behind `addr` when it is a link's, else `addr` (UDP
    /// addresses are answered without a lookup).
    pub fn real_addr(&self, addr: SocketAddr) -> SocketAddr {
        let addr = crate::paths::canonical(addr);
        if !is_link(addr) {
            return addr;
        }
        self.lock()
            .get(&crate::paths::canonical(addr))
            .map_or(addr, |l| l.real)
    }

    /// How the link at `addr` is carried (`tcp`, `https`), if it is one.
    pub fn transport(&self, addr: SocketAddr) -> Option<&'static str> {
        self.lock()
            .get(&crate::paths::canonical(addr))
            .map(|l| l.transport)
    }

    /// Closes the link at `addr`, if it is one.
    pub fn close(&self, addr: SocketAddr) {
        if !is_link(addr) {
            return;
        }
        if let Some(link) = self.lock().remove(&crate::paths::canonical(addr)) {
            for t in link.tasks {
                t.abort();
            }
        }
    }

    fn forget(&self, addr: SocketAddr) {
        self.lock().remove(&addr);
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for (_, link) in self.map.get_mut().expect("links lock").drain() {
            for t in link.tasks {
                t.abort();
            }
        }
    }
}

async fn read_link(
    mut read: tokio::net::tcp::OwnedReadHalf,
    virt: SocketAddr,
    deliver: Deliver,
    links: Weak<Links>,
    opened: Opened,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // A live link carries QUIC keepalives (every 10 s from a node); one silent
    // for a minute is a stranger holding a slot, or a dead peer. Empty frames
    // carry nothing and keep nothing alive.
    let mut first = opened == Opened::ByStranger;
    let mut idle = tokio::time::Instant::now() + if first { FIRST_FRAME_WAIT } else { LINK_IDLE };
    loop {
        let Ok(Ok(len)) = tokio::time::timeout_at(idle, read.read_u16()).await else {
            break;
        };
        let len = usize::from(len);
        if len == 0 {
            continue;
        }
        if len > MAX_DATAGRAM || (first && len < MIN_FIRST_FRAME) {
            tracing::debug!(%virt, len, first, "TCP link sent a frame it must not");
            break;
        }
        if read.read_exact(&mut buf[..len]).await.is_err() {
            break;
        }
        first = false;
        idle = tokio::time::Instant::now() + LINK_IDLE;
        deliver(virt, &buf[..len]);
    }
    tracing::debug!(%virt, "TCP link down");
    if let Some(l) = links.upgrade() {
        l.forget(virt);
    }
}

async fn write_link(
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    virt: SocketAddr,
    links: Weak<Links>,
) {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        // Batch what is queued into one write.
        out.clear();
        let mut next = Some(first);
        while let Some(d) = next {
            out.extend_from_slice(&(d.len() as u16).to_be_bytes());
            out.extend_from_slice(&d);
            next = if out.len() < 60 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if write.write_all(&out).await.is_err() {
            break;
        }
    }
    if let Some(l) = links.upgrade() {
        l.forget(virt);
    }
}

/// Reads a WebSocket link's datagrams (binary messages), under the same
/// rules as [`read_link`]'s frames.
async fn read_ws<S>(
    mut stream: futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<S>>,
    virt: SocketAddr,
    deliver: Deliver,
    links: Weak<Links>,
    opened: Opened,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut first = opened == Opened::ByStranger;
    let mut idle = tokio::time::Instant::now() + if first { FIRST_FRAME_WAIT } else { LINK_IDLE };
    loop {
        let Ok(Some(Ok(msg))) = tokio::time::timeout_at(idle, stream.next()).await else {
            break;
        };
        let data = match msg {
            Message::Binary(data) => data,
            // Pings are answered by the WebSocket layer; they keep nothing alive.
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => break,
        };
        let len = data.len();
        if len == 0 {
            continue;
        }
        if len > MAX_DATAGRAM || (first && len < MIN_FIRST_FRAME) {
            tracing::debug!(%virt, len, first, "HTTPS link sent a message it must not");
            break;
        }
        first = false;
        idle = tokio::time::Instant::now() + LINK_IDLE;
        deliver(virt, &data);
    }
    tracing::debug!(%virt, "HTTPS link down");
    if let Some(l) = links.upgrade() {
        l.forget(virt);
    }
}

/// Writes a WebSocket link's datagrams, what is queued in one flush.
async fn write_ws<S>(
    mut sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<S>,
        tokio_tungstenite::tungstenite::Message,
    >,
    mut rx: mpsc::Receiver<Vec<u8>>,
    virt: SocketAddr,
    links: Weak<Links>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    'out: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut queued = 0;
        while let Some(d) = next {
            if sink.feed(Message::Binary(d.into())).await.is_err() {
                break 'out;
            }
            queued += 1;
            next = if queued < 64 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    if let Some(l) = links.upgrade() {
        l.forget(virt);
    }
}

/// A TCP socket bound to `local` that others (the other attempts, the
/// server link) may share: SO_REUSEADDR and SO_REUSEPORT, so every connection
/// leaves from the node's one port number.
pub(crate) fn shared_port_socket(local: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    bound_socket(local, true)
}

/// A TCP socket bound to `local` with SO_REUSEADDR (and SO_REUSEPORT when
/// `shared`: only sockets of the same user can then share the port).
/// The IPv6 wildcard takes both families, as the UDP socket does
/// ([`crate::socket::bind_udp`]); connect such a socket to an IPv4 address
/// through [`crate::socket::on_wire`].
pub(crate) fn bound_socket(local: SocketAddr, shared: bool) -> io::Result<tokio::net::TcpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if local.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if matches!(local, SocketAddr::V6(a) if a.ip().is_unspecified()) {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if shared {
        crate::socket::share_port(&socket)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
}

/// Where a socket bound at `local` connects to reach `to`.
fn dest(local: SocketAddr, to: SocketAddr) -> SocketAddr {
    crate::socket::on_wire(local.is_ipv6(), to)
}

/// Candidates a TCP punch dials at most.
const MAX_TCP_CANDIDATES: usize = 4;
/// TCP punches an endpoint runs at once: each dials up to
/// [`MAX_TCP_CANDIDATES`] addresses a few times a second, so this bounds the
/// SYNs and sockets that peers' candidates can cost us. Past it a punch is
/// refused (the link stays on the relay) rather than queued.
pub const MAX_TCP_PUNCHES: usize = 16;
/// Each connect waits this long (the kernel resends a SYN after 1 s).
const CONNECT_ATTEMPT: std::time::Duration = std::time::Duration::from_secs(3);
/// Between attempts to one candidate (a refused connect comes back at once).
const RETRY: std::time::Duration = std::time::Duration::from_millis(250);
/// How long the other side has to prove itself on a new stream.
const PROOF_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// TCP simultaneous open: connects from our port `local` to every candidate at
/// once, again and again until `deadline`, while the peer does the same toward
/// us. Each NAT sees an outgoing SYN before the peer's arrives (or the peer's
/// SYN meets ours in flight), so the two SYNs cross and the kernels complete
/// the handshake. The first stream whose other end proves the punch's secret
/// ([`burrow_proto::punch::stream_proof`]) wins.
///
/// With `open_ttl`, each candidate's first SYN is an opening one (as UDP's
/// opening probes, see [`burrow_proto::punch`]): sent with that TTL, it makes
/// our NAT's mapping and dies before the peer's NAT, which would otherwise
/// answer it with a reset and keep the tuple from the peer's own SYN
/// ([`open_then_connect`]).
pub(crate) async fn simultaneous_open(
    local: SocketAddr,
    candidates: &[SocketAddr],
    ticket: burrow_proto::punch::PunchTicket,
    role: burrow_proto::punch::Role,
    deadline: std::time::Duration,
    open_ttl: Option<u8>,
    mut accepted: mpsc::Receiver<TcpStream>,
) -> Option<TcpStream> {
    let end = tokio::time::Instant::now() + deadline;
    let mut tries = tokio::task::JoinSet::new();
    for &to in candidates.iter().take(MAX_TCP_CANDIDATES) {
        tries.spawn(async move {
            if let Some(ttl) = open_ttl {
                if let Some(stream) = open_then_connect(local, to, ttl).await {
                    if let Some(stream) = prove(stream, &ticket, role).await {
                        return Some(stream);
                    }
                }
                tokio::time::sleep(RETRY).await;
            }
            while tokio::time::Instant::now() < end {
                let attempt = async {
                    let socket = shared_port_socket(local).ok()?;
                    let stream =
                        tokio::time::timeout(CONNECT_ATTEMPT, socket.connect(dest(local, to)))
                            .await
                            .ok()?
                            .ok()?;
                    prove(stream, &ticket, role).await
                };
                if let Some(stream) = attempt.await {
                    return Some(stream);
                }
                tokio::time::sleep(RETRY).await;
            }
            None
        });
    }
    let mut listening = true;
    loop {
        tokio::select! {
            r = tries.join_next() => match r {
                Some(Ok(Some(stream))) => return Some(stream),
                Some(_) => {}
                None => return None,
            },
            // The peer's SYN reached our listener first (we have no NAT, or
            // it let the SYN in): the listener checked its proof already.
            s = accepted.recv(), if listening => match s {
                Some(stream) => return Some(stream),
                None => listening = false,
            },
            _ = tokio::time::sleep_until(end) => return None,
        }
    }
}

/// A connect whose SYN leaves with TTL `ttl` (an opening one: it makes our
/// NAT's mapping toward `to` and dies before the peer's NAT), raised to the
/// socket's usual TTL after the head start, so that the kernel's own
/// retransmission (after 1 s) and our answer to the peer's SYN reach the peer.
/// The socket stays the same throughout: a second one from the same port
/// would find the 4-tuple taken.
async fn open_then_connect(local: SocketAddr, to: SocketAddr, ttl: u8) -> Option<TcpStream> {
    // The family the SYN leaves in (an IPv4 peer of a dual-stack socket
    // goes by IPv4, with IPv4's TTL).
    let ipv6 = crate::paths::canonical(to).is_ipv6();
    let socket = shared_port_socket(local).ok()?;
    let usual = crate::ttl::ttl_of(&SockRef::from(&socket), ipv6).ok()?;
    crate::ttl::set_ttl(&SockRef::from(&socket), ipv6, ttl).ok()?;
    let raw = crate::ttl::raw_socket(&socket);
    let connect = socket.connect(dest(local, to));
    tokio::pin!(connect);
    let head_start = burrow_proto::punch::OPEN_HEAD_START;
    if let Ok(r) = tokio::time::timeout(head_start, &mut connect).await {
        // Through already (no NAT of the peer's in the way): go on at the
        // usual TTL.
        let stream = r.ok()?;
        crate::ttl::set_ttl(&SockRef::from(&stream), ipv6, usual).ok()?;
        return Some(stream);
    }
    // The pending connect owns the socket, open while it is.
    crate::ttl::set_ttl_raw(raw, ipv6, usual).ok()?;
    tokio::time::timeout(CONNECT_ATTEMPT, connect)
        .await
        .ok()?
        .ok()
}

/// One punch waiting: its id, ticket, our role, where its streams go.
type WaitingPunch = (u64, PunchTicket, Role, mpsc::Sender<TcpStream>);

/// TCP punches in progress, for the node's listener ([`serve_punches`]) to
/// hand the streams it accepted to: by ticket, with our role.
#[derive(Default)]
pub(crate) struct Waiting {
    punches: Mutex<Vec<WaitingPunch>>,
    next: std::sync::atomic::AtomicU64,
}

impl Waiting {
    /// Registers a punch; its accepted streams come out of the receiver.
    /// `None` when [`MAX_TCP_PUNCHES`] are running already: the caller runs
    /// none.
    pub(crate) fn add(
        &self,
        ticket: PunchTicket,
        role: Role,
    ) -> Option<(u64, mpsc::Receiver<TcpStream>)> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        let mut p = self.punches.lock().expect("waiting lock is never poisoned");
        if p.len() >= MAX_TCP_PUNCHES {
            return None;
        }
        p.push((id, ticket, role, tx));
        Some((id, rx))
    }

    /// The punch is over.
    pub(crate) fn remove(&self, id: u64) {
        self.punches
            .lock()
            .expect("waiting lock is never poisoned")
            .retain(|(i, ..)| *i != id);
    }

    /// The punch whose peer this proof is from.
    fn find(&self, proof: &[u8]) -> Option<(PunchTicket, Role, mpsc::Sender<TcpStream>)> {
        let p = self.punches.lock().expect("waiting lock is never poisoned");
        p.iter()
            .find(|(_, t, role, _)| burrow_proto::punch::check_stream_proof(t, role.other(), proof))
            .map(|(_, t, role, tx)| (*t, *role, tx.clone()))
    }
}

/// Streams the node's listener is checking at once; more wait to be accepted.
const MAX_ANSWERING: usize = 64;

/// A node's TCP listener: a stream that proves the secret of a punch in
/// progress goes to that punch; anything else is closed. Nothing but a proof
/// (32 bytes, within 3 s) is read from a stranger.
pub(crate) async fn serve_punches(listener: tokio::net::TcpListener, waiting: Arc<Waiting>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if answer(stream, &waiting).await.is_none() {
                tracing::debug!(%from, "TCP connection with no punch to join, closed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, waiting: &Waiting) -> Option<()> {
    let exchange = async {
        if stream.read_u16().await.ok()? != 32 {
            return None;
        }
        let mut theirs = [0u8; 32];
        stream.read_exact(&mut theirs).await.ok()?;
        let (ticket, role, tx) = waiting.find(&theirs)?;
        let ours = burrow_proto::punch::stream_proof(&ticket, role);
        stream.write_u16(32).await.ok()?;
        stream.write_all(&ours).await.ok()?;
        Some(tx)
    };
    let tx = tokio::time::timeout(PROOF_WAIT, exchange).await.ok()??;
    tx.send(stream).await.ok()
}

/// Sends our proof and checks the peer's, both framed like datagrams.
async fn prove(
    mut stream: TcpStream,
    ticket: &burrow_proto::punch::PunchTicket,
    role: burrow_proto::punch::Role,
) -> Option<TcpStream> {
    let ours = burrow_proto::punch::stream_proof(ticket, role);
    let exchange = async {
        stream.write_u16(ours.len() as u16).await.ok()?;
        stream.write_all(&ours).await.ok()?;
        let len = usize::from(stream.read_u16().await.ok()?);
        if len != ours.len() {
            return None;
        }
        let mut theirs = [0u8; 32];
        stream.read_exact(&mut theirs).await.ok()?;
        burrow_proto::punch::check_stream_proof(ticket, role.other(), &theirs).then_some(())
    };
    tokio::time::timeout(PROOF_WAIT, exchange).await.ok()??;
    Some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_sides_dialing_each_other_meet_and_prove_the_ticket() {
        use burrow_proto::punch::{PunchTicket, Role};
        use rand::SeedableRng;
        let ticket = PunchTicket::random(&mut rand::rngs::StdRng::seed_from_u64(3));
        // Two free ports on loopback: each side dials the other's from its own.
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (a, b) = (free(), free());
        let t = std::time::Duration::from_secs(5);
        let (to_b, to_a) = ([b], [a]);
        // b has a listener (no NAT in front of it on loopback): a's SYN reaches
        // it, and b's own SYNs meet a's port in between a's attempts.
        let waiting = Arc::new(Waiting::default());
        let listener = shared_port_socket(b).unwrap().listen(16).unwrap();
        let server = tokio::spawn(serve_punches(listener, waiting.clone()));
        let (id, accepted) = waiting.add(ticket, Role::Acceptor).unwrap();
        let (_, none) = mpsc::channel(1);
        let (sa, sb) = tokio::join!(
            simultaneous_open(a, &to_b, ticket, Role::Requester, t, None, none),
            simultaneous_open(b, &to_a, ticket, Role::Acceptor, t, None, accepted)
        );
        waiting.remove(id);
        let (sa, sb) = (sa.expect("a met b"), sb.expect("b met a"));
        assert_eq!(sa.local_addr().unwrap(), a);
        assert_eq!(sb.local_addr().unwrap(), b);
        assert_eq!(sa.peer_addr().unwrap(), b);
        // The wrong secret gets nowhere.
        let wrong = PunchTicket {
            secret: [7; 32],
            ..ticket
        };
        let (c, d) = (free(), free());
        let short = std::time::Duration::from_millis(1500);
        let (to_d, to_c) = ([d], [c]);
        let (id, accepted) = waiting.add(wrong, Role::Acceptor).unwrap();
        let listener = shared_port_socket(d).unwrap().listen(16).unwrap();
        let server2 = tokio::spawn(serve_punches(listener, waiting.clone()));
        let (_, none) = mpsc::channel(1);
        let (sc, sd) = tokio::join!(
            simultaneous_open(c, &to_d, ticket, Role::Requester, short, None, none),
            simultaneous_open(d, &to_c, wrong, Role::Acceptor, short, None, accepted)
        );
        waiting.remove(id);
        assert!(sc.is_none() && sd.is_none());
        server.abort();
        server2.abort();
    }

    #[test]
    fn link_addresses_are_apart_from_peer_addresses() {
        let link: SocketAddr = "240.0.0.7:2".parse().unwrap();
        assert!(is_link(link));
        assert!(!crate::paths::is_virtual(link));
        let peer: SocketAddr = "240.0.0.7:1".parse().unwrap();
        assert!(!is_link(peer));
        assert!(!is_link("198.51.100.1:2".parse().unwrap()));
    }

    #[test]
    fn tcp_punches_beyond_the_bound_are_refused_not_run_silently() {
        let waiting = Waiting::default();
        let ticket = PunchTicket {
            session: [1; 16],
            secret: [2; 32],
        };
        let running: Vec<u64> = (0..MAX_TCP_PUNCHES)
            .map(|_| waiting.add(ticket, Role::Requester).unwrap().0)
            .collect();
        assert!(waiting.add(ticket, Role::Requester).is_none());
        // One ends: there is room for one more.
        waiting.remove(running[0]);
        assert!(waiting.add(ticket, Role::Requester).is_some());
        assert!(waiting.add(ticket, Role::Requester).is_none());
    }
}
