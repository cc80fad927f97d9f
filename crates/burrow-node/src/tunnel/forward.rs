//! The forwarding side: local ports that reach a peer's service, and
//! `burrow pipe`'s one-off streams. A forward opens the link when it is
//! needed (asking, as `connect` does) and the tunnel connection with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::tunnel::{self, Offered, ServiceName, Transport, TunnelFrame};
use burrow_proto::NodeId;
use burrow_store::StoredForward;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::splice::{self, Ended};
use super::{Conn, Tunnels};
use crate::api::{ForwardView, OfferedView};
use crate::error::ForwardError;
use crate::event::NodeEvent;

/// How long the exposing side has to answer a stream's first frame.
const ANSWER: Duration = Duration::from_secs(15);
/// A forward's troubles are told at most this often.
const TROUBLE_EVERY: Duration = Duration::from_secs(60);
/// After the peer said its service isn't ours, how long the forward stops
/// asking (its local connections are reset at once): a client retrying in a
/// loop must not look like a scanner to the peer.
const REFUSED_PAUSE: Duration = Duration::from_secs(10);

/// Our forwards, by local address.
pub(crate) struct Forwards {
    list: BTreeMap<SocketAddr, Arc<Forward>>,
}

impl Forwards {
    pub(crate) fn new(stored: Vec<StoredForward>) -> Forwards {
        Forwards {
            list: stored
                .into_iter()
                .map(|s| (s.listen, Arc::new(Forward::new(s))))
                .collect(),
        }
    }
}

/// A local port that reaches a peer's service.
pub(crate) struct Forward {
    pub(crate) stored: StoredForward,
    /// Ends its listener and every connection through it.
    pub(crate) cancel: CancellationToken,
    /// Bytes carried each way, in all.
    pub(crate) bytes: splice::Bytes,
    /// Connections (TCP) or flows (UDP) open now.
    open: AtomicU64,
    /// Connections or flows opened in all.
    total: AtomicU64,
    /// Why it doesn't listen, if it doesn't.
    error: Mutex<Option<String>>,
    /// The tunnel connection whose path we last told (its stable id).
    told: AtomicUsize,
    /// When a trouble was last told.
    trouble_at: Mutex<Option<Instant>>,
    /// Until when it doesn't ask the peer (it refused the service).
    paused_until: Mutex<Option<Instant>>,
}

/// Counts an open connection or flow while it lives.
pub(crate) struct Live<'a>(&'a Forward);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Forward {
    fn new(stored: StoredForward) -> Forward {
        Forward {
            stored,
            cancel: CancellationToken::new(),
            bytes: splice::Bytes::default(),
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            error: Mutex::new(None),
            told: AtomicUsize::new(usize::MAX),
            trouble_at: Mutex::new(None),
            paused_until: Mutex::new(None),
        }
    }

    /// The peer's name: as it goes by now, or as it did when the forward
    /// was made.
    pub(crate) fn peer_name(&self, tunnels: &Tunnels) -> String {
        tunnels
            .link
            .known_name(&self.stored.peer)
            .unwrap_or_else(|| self.stored.peer_name.clone())
    }

    fn target(&self, tunnels: &Tunnels) -> String {
        format!("{}/{}", self.peer_name(tunnels), self.stored.service)
    }

    /// Counts a connection or flow opened through it, until dropped.
    pub(crate) fn live(&self) -> Live<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        Live(self)
    }

    /// Tells, once per tunnel connection, how it is carried.
    pub(crate) fn carried(&self, tunnels: &Tunnels, conn: &quinn::Connection) {
        if self.told.swap(conn.stable_id(), Ordering::Relaxed) == conn.stable_id() {
            return;
        }
        let (path, remote) = tunnels.link.path(&self.stored.peer);
        tunnels.link.emit(NodeEvent::ForwardCarried {
            listen: self.stored.listen.to_string(),
            target: self.target(tunnels),
            path,
            remote,
        });
    }

    /// The peer refused an open for `why`: past a refusal of the service
    /// itself, stop asking for a while.
    pub(crate) fn refused(&self, why: tunnel::Refusal) {
        if matches!(
            why,
            tunnel::Refusal::NotExposed | tunnel::Refusal::WrongTransport
        ) {
            *self
                .paused_until
                .lock()
                .expect("pause lock is never poisoned") = Some(Instant::now() + REFUSED_PAUSE);
        }
    }

    /// Whether it is not asking the peer now.
    pub(crate) fn paused(&self) -> bool {
        let until = *self
            .paused_until
            .lock()
            .expect("pause lock is never poisoned");
        until.is_some_and(|t| Instant::now() < t)
    }

    /// Tells what went wrong (at most once a minute).
    pub(crate) fn trouble(&self, tunnels: &Tunnels, why: &str) {
        let now = Instant::now();
        {
            let mut at = self
                .trouble_at
                .lock()
                .expect("trouble lock is never poisoned");
            if at.is_some_and(|t| now.duration_since(t) < TROUBLE_EVERY) {
                return;
            }
            *at = Some(now);
        }
        let text = format!("{} → {}: {why}", self.stored.listen, self.target(tunnels));
        info!("{text}");
        tunnels.link.emit(NodeEvent::TunnelTrouble { text });
    }

    fn view(&self, tunnels: &Tunnels) -> ForwardView {
        ForwardView {
            listen: self.stored.listen.to_string(),
            peer: self.peer_name(tunnels),
            peer_id: self.stored.peer.to_string(),
            service: self.stored.service.to_string(),
            transport: self.stored.transport.to_string(),
            error: self
                .error
                .lock()
                .expect("error lock is never poisoned")
                .clone(),
            open: self.open.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bytes_out: self.bytes.out.load(Ordering::Relaxed),
            bytes_back: self.bytes.back.load(Ordering::Relaxed),
        }
    }
}

/// Opens a stream to `service` on `conn` and sends its `Open`; the answer
/// is read apart ([`answer`]), so a TCP connection's first bytes need not
/// wait for it.
async fn start_stream(
    conn: &quinn::Connection,
    service: &ServiceName,
    transport: Transport,
    flow: u32,
) -> Result<(FrameWriter, FrameReader), String> {
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut writer = FrameWriter::new(send, tunnel::VERSION, tunnel::MAX_FRAME);
    writer
        .write(&TunnelFrame::Open {
            service: service.clone(),
            transport,
            flow,
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        writer,
        FrameReader::new(recv, tunnel::VERSION, tunnel::MAX_FRAME),
    ))
}

/// The exposing side's answer to an `Open`: the stream to read on, or the
/// refusal in words (`peer` names the exposing side).
async fn answer(
    mut reader: FrameReader,
    peer: &str,
    service: &ServiceName,
    on_refusal: impl FnOnce(tunnel::Refusal),
) -> Result<quinn::RecvStream, String> {
    match tokio::time::timeout(ANSWER, reader.read::<TunnelFrame>()).await {
        Ok(Ok(Some(TunnelFrame::Opened))) => Ok(reader.into_inner()),
        Ok(Ok(Some(TunnelFrame::Refused { why }))) => {
            on_refusal(why);
            Err(why.explain(peer, service))
        }
        Ok(Ok(_)) => Err(format!("{peer} answered with something else")),
        Ok(Err(e)) => Err(format!("{peer}'s answer: {e}")),
        Err(_) => Err(format!("{peer} did not answer within {ANSWER:?}")),
    }
}

/// Opens a stream to `service` and waits for its answer.
pub(crate) async fn open_stream(
    conn: &quinn::Connection,
    peer: &str,
    service: &ServiceName,
    (transport, flow): (Transport, u32),
    on_refusal: impl FnOnce(tunnel::Refusal),
) -> Result<(FrameWriter, FrameReader), String> {
    let (writer, reader) = start_stream(conn, service, transport, flow).await?;
    let recv = answer(reader, peer, service, on_refusal).await?;
    Ok((
        writer,
        FrameReader::new(recv, tunnel::VERSION, tunnel::MAX_FRAME),
    ))
}

impl Tunnels {
    /// Our tunnel connection to `peer`, making the link first if there is
    /// none (asking, as `connect` does).
    pub(crate) async fn reach(self: &Arc<Self>, peer: NodeId) -> Result<Conn, ForwardError> {
        let name = self.link.shown_name(&peer);
        self.link
            .ensure_link(peer, async {})
            .await
            .map_err(|why| ForwardError::NoLink {
                name: name.clone(),
                why,
            })?;
        self.conn_to(peer)
            .await
            .map_err(|why| ForwardError::NoLink { name, why })
    }

    /// What `peer` exposes to us.
    pub(crate) async fn services(
        self: &Arc<Self>,
        peer: &str,
    ) -> Result<Vec<OfferedView>, ForwardError> {
        let id = self.link.resolve(peer).await?;
        Ok(self
            .offered(id)
            .await?
            .into_iter()
            .map(|o| OfferedView {
                name: o.name.to_string(),
                transport: o.transport.to_string(),
            })
            .collect())
    }

    async fn offered(self: &Arc<Self>, peer: NodeId) -> Result<Vec<Offered>, ForwardError> {
        let c = self.reach(peer).await?;
        let name = self.link.shown_name(&peer);
        let failed = |why: String| ForwardError::Tunnel(format!("{name}: {why}"));
        let (send, recv) = c.conn.open_bi().await.map_err(|e| failed(e.to_string()))?;
        let mut writer = FrameWriter::new(send, tunnel::VERSION, tunnel::MAX_FRAME);
        let mut reader = FrameReader::new(recv, tunnel::VERSION, tunnel::MAX_FRAME);
        writer
            .write(&TunnelFrame::List)
            .await
            .map_err(|e| failed(e.to_string()))?;
        writer.finish();
        match tokio::time::timeout(ANSWER, reader.read::<TunnelFrame>()).await {
            Ok(Ok(Some(TunnelFrame::Services { offered })))
                if offered.len() <= tunnel::MAX_SERVICES =>
            {
                Ok(offered)
            }
            Ok(Ok(_)) => Err(failed("answered with something else".into())),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!("no answer within {ANSWER:?}"))),
        }
    }

    /// Forwards the local address `listen` to `target` (`peer/service`):
    /// asks the peer what it exposes to us (making the link if needed),
    /// listens, and keeps the forward for the next start.
    pub(crate) async fn forward(
        self: &Arc<Self>,
        target: &str,
        listen: &str,
    ) -> Result<ForwardView, ForwardError> {
        let (peer, service) =
            super::parse_target(target).ok_or_else(|| ForwardError::BadTarget(target.into()))?;
        let listen = listen_addr(listen)?;
        if self.forwards().list.contains_key(&listen) {
            return Err(ForwardError::Exists(listen));
        }
        let id = self.link.resolve(peer).await?;
        let name = self.link.shown_name(&id);
        let offered = self.offered(id).await?;
        let transport = offered
            .iter()
            .find(|o| o.name == service)
            .map(|o| o.transport)
            .ok_or_else(|| {
                ForwardError::NotExposed(tunnel::Refusal::NotExposed.explain(&name, &service))
            })?;
        let stored = StoredForward {
            listen,
            peer: id,
            peer_name: name.clone(),
            service,
            transport,
            added_at_ms: self.link.wall_ms(),
        };
        let fwd = Arc::new(Forward::new(stored.clone()));
        let listener = bind(listen, transport).await?;
        self.link
            .with_store(move |s| s.put_forward(&stored))
            .await?;
        self.forwards().list.insert(listen, fwd.clone());
        self.run(fwd.clone(), listener);
        Ok(fwd.view(self))
    }

    /// Ends the forward on `listen`, and every connection through it.
    pub(crate) async fn unforward(&self, listen: &str) -> Result<(), ForwardError> {
        let listen = listen_addr(listen)?;
        let removed = self.forwards().list.remove(&listen);
        let Some(fwd) = removed else {
            return Err(ForwardError::NoSuchForward(listen));
        };
        fwd.cancel.cancel();
        self.link
            .with_store(move |s| s.remove_forward(listen))
            .await?;
        Ok(())
    }

    /// Our forwards, by local address.
    pub(crate) fn forward_views(&self) -> Vec<ForwardView> {
        let list: Vec<Arc<Forward>> = self.forwards().list.values().cloned().collect();
        list.iter().map(|f| f.view(self)).collect()
    }

    /// A stream to `target` (`peer/service`, TCP), once the peer accepted
    /// it: `burrow pipe`'s.
    pub(crate) async fn pipe(
        self: &Arc<Self>,
        target: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ForwardError> {
        let (peer, service) =
            super::parse_target(target).ok_or_else(|| ForwardError::BadTarget(target.into()))?;
        let id = self.link.resolve(peer).await?;
        let c = self.reach(id).await?;
        let name = self.link.shown_name(&id);
        let (writer, reader) = start_stream(&c.conn, &service, Transport::Tcp, 0)
            .await
            .map_err(ForwardError::Tunnel)?;
        let recv = answer(reader, &name, &service, |_| {})
            .await
            .map_err(ForwardError::NotExposed)?;
        Ok((writer.into_inner(), recv))
    }

    /// Starts serving `fwd` on `listener`.
    fn run(self: &Arc<Self>, fwd: Arc<Forward>, listener: Listener) {
        self.link.emit(NodeEvent::ForwardStarted {
            listen: fwd.stored.listen.to_string(),
            target: fwd.target(self),
            transport: fwd.stored.transport.to_string(),
        });
        let tunnels = self.clone();
        match listener {
            Listener::Tcp(l) => self.link.spawn(accept_tcp(tunnels, fwd, l)),
            Listener::Udp(s) => self.link.spawn(super::udp::forward(tunnels, fwd, s)),
        }
    }
}

/// Listens again on the forwards the store kept; one that can't keeps its
/// place (and says why in its view) until `unforward`.
pub(crate) async fn restore(tunnels: &Arc<Tunnels>) {
    let list: Vec<Arc<Forward>> = tunnels.forwards().list.values().cloned().collect();
    for fwd in list {
        match bind(fwd.stored.listen, fwd.stored.transport).await {
            Ok(l) => tunnels.run(fwd, l),
            Err(e) => {
                *fwd.error.lock().expect("error lock is never poisoned") = Some(e.to_string());
                fwd.trouble(tunnels, &e.to_string());
            }
        }
    }
}

/// A forward's listening socket.
enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

async fn bind(listen: SocketAddr, transport: Transport) -> Result<Listener, ForwardError> {
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::AddrInUse => ForwardError::InUse {
            addr: listen,
            owner: super::owner::of(listen, transport),
        },
        _ => ForwardError::Listen {
            addr: listen,
            why: e.to_string(),
        },
    };
    Ok(match transport {
        Transport::Tcp => Listener::Tcp(TcpListener::bind(listen).await.map_err(failed)?),
        Transport::Udp => Listener::Udp(UdpSocket::bind(listen).await.map_err(failed)?),
    })
}

/// The local address a forward listens on: `host:port`, or a bare port on
/// loopback.
fn listen_addr(listen: &str) -> Result<SocketAddr, ForwardError> {
    if let Ok(port) = listen.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    listen
        .parse()
        .map_err(|_| ForwardError::BadListen(listen.into()))
}

async fn accept_tcp(tunnels: Arc<Tunnels>, fwd: Arc<Forward>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = fwd.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, _)) if fwd.paused() => splice::reset(&tcp),
            Ok((tcp, _)) => {
                let (t, f) = (tunnels.clone(), fwd.clone());
                tokio::spawn(tracing::Instrument::in_current_span(async move {
                    tcp_conn(t, f, tcp).await;
                }));
            }
            Err(e) => {
                debug!(error = %e, "forward accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One local TCP connection through a forward.
async fn tcp_conn(tunnels: Arc<Tunnels>, fwd: Arc<Forward>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let _live = fwd.live();
    let c = match tunnels.reach(fwd.stored.peer).await {
        Ok(c) => c,
        Err(e) => {
            fwd.trouble(&tunnels, &e.to_string());
            splice::reset(&tcp);
            return;
        }
    };
    let (writer, reader) = match start_stream(&c.conn, &fwd.stored.service, Transport::Tcp, 0).await
    {
        Ok(s) => s,
        Err(e) => {
            fwd.trouble(&tunnels, &e);
            splice::reset(&tcp);
            return;
        }
    };
    fwd.carried(&tunnels, &c.conn);
    let name = fwd.peer_name(&tunnels);
    let (mut rd, mut wr) = tcp.into_split();
    let recv = answer(reader, &name, &fwd.stored.service, |why| fwd.refused(why));
    let send = writer.into_inner();
    let ended = splice::splice(&mut rd, &mut wr, send, recv, &fwd.bytes, &fwd.cancel).await;
    if let Ended::Reset(cause) = ended {
        // The peer's side is worth a line; the local program's own resets
        // and our removing the forward are not.
        if let splice::Cause::Peer(why) = cause {
            fwd.trouble(&tunnels, &why);
        }
        splice::reset_halves(rd, wr);
    }
}
