//! The one UDP socket a node (or server) owns, shared by QUIC and burrow's own
//! datagrams.
//!
//! quinn reads and writes the socket through [`DemuxSocket`], which does three
//! things on the way:
//!
//! - Datagrams that are burrow's own ([`is_burrow_datagram`]: STUN, punch probes,
//!   relay datagrams for the server to forward) go to burrow's channel instead.
//!   Those all clear QUIC's fixed bit (0x40) and carry a 32-bit magic value;
//!   burrow endpoints don't grease the fixed bit (RFC 9287), so no QUIC packet of
//!   ours can be mistaken for one.
//! - Packets to a peer's virtual address (see [`crate::paths`]) leave directly or
//!   wrapped for the relay, whichever path the peer has now; packets from either
//!   path reach quinn as coming from the virtual address.
//! - Receive errors caused by ICMP (a probe to a closed port answered "port
//!   unreachable") are logged and skipped: quinn's endpoint would otherwise stop
//!   on them, taking every connection with it.
//!
//! Raw datagrams are sent through [`RawSender`] on the same socket, so they leave
//! from the port peers and the server already know.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use burrow_proto::relay::{self, Channel};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::mpsc;

use crate::paths::{canonical, PathTable, SendRoute};
use crate::tcp::{self, Links};

/// Binds a UDP socket at `addr`. The IPv6 wildcard (`[::]`) makes one socket
/// for both families (IPv4 peers then appear IPv4-mapped to the kernel;
/// burrow's own code sees them as IPv4, see [`canonical`]); where the system
/// has no IPv6 at all, it falls back to IPv4's wildcard on the same port.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = bind_udp_socket(addr)?;
    grow_buffers(&socket);
    Ok(socket)
}

/// The socket buffers asked for: 7 MiB each way (as wireguard-go asks), so
/// that a node descheduled for a few milliseconds at gigabits a second finds
/// its datagrams queued rather than dropped. The system grants at most its
/// limit (`net.core.rmem_max`, `wmem_max`): 4 MiB on this VM's Debian, 208 KiB
/// where it is untuned. At the default 208 KiB, a loopback tunnel lost
/// thousands of datagrams a gigabyte to full buffers (`netstat -su`).
const SOCKET_BUFFER: usize = 7 << 20;

fn grow_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot grow the UDP receive buffer");
    }
    if let Err(e) = s.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot grow the UDP send buffer");
    }
}

fn bind_udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dual = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    let v6 = (|| {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if dual {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        Ok::<_, io::Error>(socket)
    })();
    match v6 {
        Ok(socket) => Ok(socket.into()),
        Err(e) if dual && no_ipv6(&e) => {
            tracing::info!(error = %e, "no IPv6 on this system: binding IPv4 only");
            std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, addr.port()))
        }
        Err(e) => Err(e),
    }
}

/// `socket` as quinn drives it: through quinn-udp (ECN, packet info,
/// segmentation offload) where the system takes its options, else as plain
/// datagrams ([`crate::plain`]), with a warning.
pub fn for_quic(socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    match quinn::TokioRuntime.wrap_udp_socket(socket.try_clone()?) {
        Ok(inner) => Ok(inner),
        Err(e) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(error = %e, "this system's UDP sockets refuse ECN and packet info: using plain datagrams");
            });
            Ok(Arc::new(crate::plain::PlainSocket::new(socket)?))
        }
    }
}

/// Errors meaning the system has no IPv6 to bind (a kernel without it, or
/// with it disabled).
pub(crate) fn no_ipv6(e: &io::Error) -> bool {
    #[cfg(unix)]
    let codes = [
        libc::EAFNOSUPPORT,
        libc::EADDRNOTAVAIL,
        libc::EPROTONOSUPPORT,
    ];
    // Winsock's WSAEAFNOSUPPORT, WSAEADDRNOTAVAIL, WSAEPROTONOSUPPORT.
    #[cfg(windows)]
    let codes = [10047, 10049, 10043];
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// Lets more than one socket bind `socket`'s port (the TCP punch's listener
/// and its connects): `SO_REUSEPORT` on Unix. On Windows `SO_REUSEADDR`,
/// which the caller sets on every socket anyway, already does it.
pub(crate) fn share_port(socket: &socket2::Socket) -> io::Result<()> {
    #[cfg(unix)]
    return socket.set_reuse_port(true);
    #[cfg(windows)]
    return socket.set_reuse_address(true);
}

/// Whether a socket bound at `local` can send to `to` (canonical): the IPv6
/// wildcard takes both families ([`bind_udp`] makes it dual-stack), any
/// other address its own family only.
pub fn takes(local: SocketAddr, to: SocketAddr) -> bool {
    match local {
        SocketAddr::V6(l) if l.ip().is_unspecified() => true,
        SocketAddr::V6(l) if l.ip().to_ipv4_mapped().is_some() => to.is_ipv4(),
        _ => local.is_ipv4() == to.is_ipv4(),
    }
}

/// `to` as a socket of family `ipv6` sends to it: an IPv4 address becomes
/// IPv4-mapped on an IPv6 socket (the form every system accepts there).
pub fn on_wire(ipv6: bool, to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(a) if ipv6 => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        other => other,
    }
}

/// How many non-QUIC datagrams wait for burrow before new ones are dropped.
pub const RAW_QUEUE: usize = 1024;

/// A datagram for burrow rather than quinn.
#[derive(Debug, Clone)]
pub struct RawDatagram {
    /// Where it came from.
    pub from: SocketAddr,
    /// The local address it arrived at, when the socket could tell (a socket
    /// bound to every address answers from this one: a NAT in front of the
    /// sender lets in only answers from where its request went).
    pub to_ip: Option<IpAddr>,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// quinn's view of the shared socket.
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    raw_tx: mpsc::Sender<RawDatagram>,
    dropped: AtomicU64,
    paths: Arc<PathTable>,
    /// TCP links: datagrams to their virtual addresses go down them.
    links: Arc<Links>,
    /// Whether the socket is IPv6 (quinn then uses IPv4-mapped addresses).
    ipv6: bool,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Sends raw (non-QUIC) datagrams from the shared socket (or down a TCP link,
/// when addressed to one).
#[derive(Clone, Debug)]
pub struct RawSender {
    inner: Arc<dyn AsyncUdpSocket>,
    links: Arc<Links>,
    /// The same socket, for datagrams with their own TTL ([`crate::ttl`]).
    same: Arc<std::net::UdpSocket>,
    /// Whether the socket is IPv6 (IPv4 destinations are then sent mapped).
    ipv6: bool,
}

impl RawSender {
    /// Sends one datagram now, or fails with `WouldBlock` when the socket buffer is
    /// full: raw datagrams (STUN, probes) are retried by their protocols, not queued.
    pub fn send(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.send_from(to, None, data)
    }

    /// Like [`Self::send`], from local address `src` when given (a socket bound
    /// to every address otherwise lets the kernel choose).
    pub fn send_from(&self, to: SocketAddr, src: Option<IpAddr>, data: &[u8]) -> io::Result<()> {
        if tcp::is_link(to) {
            self.links.send(to, data);
            return Ok(());
        }
        self.inner.try_send(&Transmit {
            destination: on_wire(self.ipv6, to),
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: src,
        })
    }

    /// Sends `batch`, datagrams of `segment` bytes each (the last may be
    /// shorter), to `to` from `src` in one go (GSO where the system has it).
    /// At most [`Self::max_segments`] of them.
    pub fn send_batch(
        &self,
        to: SocketAddr,
        src: Option<IpAddr>,
        batch: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        if tcp::is_link(to) || batch.len() <= segment {
            for d in batch.chunks(segment.max(1)) {
                self.send_from(to, src, d)?;
            }
            return Ok(());
        }
        self.inner.try_send(&Transmit {
            destination: on_wire(self.ipv6, to),
            ecn: None,
            contents: batch,
            segment_size: Some(segment),
            src_ip: src,
        })
    }

    /// The most datagrams [`Self::send_batch`] takes at once.
    pub fn max_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    /// Like [`Self::send`], with IP TTL `ttl` for this datagram only (an
    /// opening probe). A TCP link has no TTL to set: the datagram goes as is.
    pub fn send_with_ttl(&self, to: SocketAddr, data: &[u8], ttl: u8) -> io::Result<()> {
        if tcp::is_link(to) {
            return self.send(to, data);
        }
        crate::ttl::send_with_ttl((&*self.same).into(), on_wire(self.ipv6, to), data, ttl)
    }
}

impl DemuxSocket {
    /// Wraps `socket`: quinn gets the returned socket, burrow the sender and the
    /// receiver of non-QUIC datagrams. Packets to and from peers go by `paths`.
    pub fn wrap(
        socket: std::net::UdpSocket,
        paths: Arc<PathTable>,
        links: Arc<Links>,
    ) -> io::Result<(Arc<DemuxSocket>, RawSender, mpsc::Receiver<RawDatagram>)> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        let same = Arc::new(socket.try_clone()?);
        let inner = for_quic(socket)?;
        let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
        let sender = RawSender {
            inner: inner.clone(),
            links: links.clone(),
            same,
            ipv6,
        };
        let demux = Arc::new(DemuxSocket {
            inner,
            raw_tx,
            dropped: AtomicU64::new(0),
            paths,
            links,
            ipv6,
        });
        Ok((demux, sender, raw_rx))
    }

    /// Receives a datagram that came up the TCP link at `from` (its virtual
    /// address), as if the socket had: burrow's own are diverted, QUIC (direct
    /// or relayed) is queued for quinn.
    pub(crate) fn deliver_link(&self, from: SocketAddr, data: &[u8]) {
        let Some((addr, start)) = self.classify(from, None, data) else {
            return;
        };
        if self.paths.push_inbox((addr, data[start..].to_vec())) {
            self.paths.wake();
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends each segment of `contents` to `to`, down a TCP link when `to` is
    /// one. Returns false when `to` is not a link (the caller sends by UDP).
    fn send_link(&self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> bool {
        if !tcp::is_link(to) {
            return false;
        }
        let segment = segment_size.unwrap_or(contents.len()).max(1);
        for packet in contents.chunks(segment) {
            self.links.send(to, packet);
        }
        true
    }

    /// Non-QUIC datagrams dropped because burrow's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn divert(&self, from: SocketAddr, to_ip: Option<IpAddr>, data: &[u8]) {
        let d = RawDatagram {
            from: canonical(from),
            to_ip: to_ip.map(|ip| ip.to_canonical()),
            data: data.to_vec(),
        };
        if self.raw_tx.try_send(d).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A virtual address as quinn knows it (IPv4-mapped on an IPv6 socket).
    fn for_quinn(&self, v: SocketAddr) -> SocketAddr {
        match v {
            SocketAddr::V4(a) if self.ipv6 => {
                SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port())
            }
            other => other,
        }
    }

    /// What quinn should see of one received datagram: `None` when it was
    /// burrow's own (diverted); else its source as quinn knows it and where its
    /// QUIC packet starts (after a relay header). `to_ip` is the local address
    /// it arrived at, if known.
    fn classify(
        &self,
        from: SocketAddr,
        to_ip: Option<IpAddr>,
        data: &[u8],
    ) -> Option<(SocketAddr, usize)> {
        match self.relayed(from, to_ip, data) {
            Relayed::Ours(v, _) => Some((self.for_quinn(v), relay::HEADER_LEN)),
            Relayed::Diverted => None,
            Relayed::No if is_burrow_datagram(data) => {
                self.divert(from, to_ip, data);
                None
            }
            Relayed::No => Some((self.direct_source(from), 0)),
        }
    }

    /// Whether `data` is a relay datagram, and if so, whose: a relay datagram on
    /// a channel not ours is diverted (the server's relay forwards it) and held
    /// for a moment (it may be on a channel we are about to learn of).
    fn relayed<'a>(&self, from: SocketAddr, to_ip: Option<IpAddr>, data: &'a [u8]) -> Relayed<'a> {
        let Some((channel, packet)) = relay::parse(data) else {
            return Relayed::No;
        };
        match self.paths.route_relay_recv(&channel, from) {
            Some(v) => Relayed::Ours(v, packet),
            None => {
                self.paths.hold_early(channel, from, data);
                self.divert(from, to_ip, data);
                Relayed::Diverted
            }
        }
    }

    /// Moves unwrapped relayed packets into quinn's buffers.
    fn drain_unwrapped(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((from, packet)) = self.paths.pop_inbox() else {
                break;
            };
            let from = self.for_quinn(from);
            if packet.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..packet.len()].copy_from_slice(&packet);
            meta[n] = RecvMeta {
                addr: from,
                len: packet.len(),
                stride: packet.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        n
    }

    /// Sends `transmit` wrapped for `channel`, one relay datagram per segment.
    fn send_relayed(
        &self,
        server: SocketAddr,
        channel: Channel,
        transmit: &Transmit,
    ) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        if transmit.contents.len() > segment && !tcp::is_link(server) {
            // A batch: wrapped segment by segment into one batch of the same
            // count (every segment but the last is `segment` long, so the
            // wrapped ones share one stride), one send for all of them.
            if segment > relay::MAX_PAYLOAD {
                return Ok(()); // larger than the relay carries: lost, as on a smaller MTU
            }
            let count = transmit.contents.len().div_ceil(segment);
            let mut batch = Vec::with_capacity(transmit.contents.len() + count * relay::HEADER_LEN);
            for packet in transmit.contents.chunks(segment) {
                relay::wrap_onto(&channel, packet, &mut batch);
            }
            return self.inner.try_send(&Transmit {
                destination: on_wire(self.ipv6, server),
                ecn: None,
                contents: &batch,
                segment_size: Some(relay::HEADER_LEN + segment),
                src_ip: None,
            });
        }
        let mut datagram = Vec::with_capacity(relay::HEADER_LEN + segment);
        for (i, packet) in transmit.contents.chunks(segment).enumerate() {
            if packet.len() > relay::MAX_PAYLOAD {
                // Larger than the relay carries (an MTU probe): lost, as on a
                // link with a smaller MTU.
                continue;
            }
            relay::wrap(&channel, packet, &mut datagram);
            if self.send_link(server, &datagram, None) {
                continue;
            }
            let sent = self.inner.try_send(&Transmit {
                destination: on_wire(self.ipv6, server),
                ecn: None,
                contents: &datagram,
                segment_size: None,
                src_ip: None,
            });
            match sent {
                Ok(()) => {}
                // quinn retries the whole transmit: duplicates of the segments
                // already sent are harmless to QUIC.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && i == 0 => return Err(e),
                Err(e) => tracing::debug!(%server, error = %e, "relayed packet not sent"),
            }
        }
        Ok(())
    }
}

impl DemuxSocket {
    /// Sorts a GRO batch: burrow's segments are diverted, relayed ones unwrapped
    /// into the queue (they may belong to different peers). Returns whether the
    /// batch is QUIC for quinn to read in place; segments quinn gets that aren't
    /// QUIC have the fixed bit clear, and quinn discards them.
    fn keep_batch(&self, data: &[u8], m: RecvMeta) -> bool {
        let mut quic = false;
        for seg in data.chunks(m.stride.max(1)) {
            match self.relayed(m.addr, m.dst_ip, seg) {
                Relayed::Ours(v, packet) => {
                    if !self.paths.push_inbox((v, packet.to_vec())) {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Relayed::Diverted => {}
                Relayed::No if is_burrow_datagram(seg) => self.divert(m.addr, m.dst_ip, seg),
                Relayed::No => quic = true,
            }
        }
        quic
    }

    /// quinn's name for a source of QUIC packets: its peer's virtual address
    /// when it is a direct path.
    fn direct_source(&self, from: SocketAddr) -> SocketAddr {
        match self.paths.route_direct_recv(from) {
            Some(v) => self.for_quinn(v),
            None => from,
        }
    }
}

/// What a received datagram is, as far as the relay goes.
enum Relayed<'a> {
    /// Not a relay datagram.
    No,
    /// A relayed packet of the peer at this virtual address.
    Ours(SocketAddr, &'a [u8]),
    /// A relay datagram that isn't ours: diverted.
    Diverted,
}

/// Moves `len` bytes at `start` of datagram `from` to the front of slot `to`
/// (`to <= from`).
fn move_datagram(bufs: &mut [IoSliceMut<'_>], from: usize, to: usize, start: usize, len: usize) {
    if to == from {
        bufs[from].copy_within(start..start + len, 0);
    } else {
        let (head, tail) = bufs.split_at_mut(from);
        head[to][..len].copy_from_slice(&tail[0][start..start + len]);
    }
}

/// True for datagrams burrow handles itself rather than quinn: STUN, punch
/// probes and relay datagrams (their own magics).
pub fn is_burrow_datagram(datagram: &[u8]) -> bool {
    burrow_proto::stun::looks_like_stun(datagram)
        || burrow_proto::punch::session_of(datagram).is_some()
        || relay::parse(datagram).is_some()
}

/// Errors an unconnected UDP socket may report because of ICMP from the network.
/// None of them is a reason to stop the endpoint.
fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | TimedOut
            | Interrupted
    ) || matches!(e.raw_os_error(), Some(code) if code == 113 /* EHOSTUNREACH */ || code == 101 /* ENETUNREACH */ || code == 111 /* ECONNREFUSED */ || code == 71 /* EPROTO */)
}

/// At most this many transient receive errors are skipped in one poll before
/// yielding, so an ICMP storm can't pin a core.
const MAX_SKIPPED_ERRORS: usize = 64;

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self
            .paths
            .route_send(transmit.destination, std::time::Instant::now())
        {
            SendRoute::AsAddressed => {
                if self.send_link(
                    transmit.destination,
                    transmit.contents,
                    transmit.segment_size,
                ) {
                    return Ok(());
                }
                self.inner.try_send(transmit)
            }
            // The kernel picks the source address for the real destination:
            // the one quinn remembers came with the first packet, which may have
            // arrived on another path (through the relay).
            SendRoute::Direct(to) => {
                if self.send_link(to, transmit.contents, transmit.segment_size) {
                    return Ok(());
                }
                self.inner.try_send(&Transmit {
                    destination: on_wire(self.ipv6, to),
                    src_ip: None,
                    ..*transmit
                })
            }
            SendRoute::DirectVia(via, to) => {
                let segment = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                for packet in transmit.contents.chunks(segment) {
                    via.0.send(to, packet, None);
                }
                Ok(())
            }
            SendRoute::Relay(server, channel) => self.send_relayed(server, channel, transmit),
            // No way to the peer yet: as if lost on the wire.
            SendRoute::Drop => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = self.drain_unwrapped(bufs, meta);
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        let mut skipped = 0;
        loop {
            let polled = self.inner.poll_recv(cx, bufs, meta);
            if polled.is_pending() {
                // Held relayed packets may be released while we wait.
                self.paths.set_waker(cx.waker());
                let n = self.drain_unwrapped(bufs, meta);
                if n > 0 {
                    return Poll::Ready(Ok(n));
                }
            }
            let n = match ready!(polled) {
                Ok(n) => n,
                Err(e) if is_transient(&e) && skipped < MAX_SKIPPED_ERRORS => {
                    skipped += 1;
                    tracing::debug!(error = %e, "ignoring transient receive error");
                    continue;
                }
                Err(e) if is_transient(&e) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            };
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                if m.len > m.stride {
                    // A GRO batch: one source, segments of one size.
                    if self.keep_batch(&bufs[i][..m.len], m) {
                        let addr = self.direct_source(m.addr);
                        move_datagram(bufs, i, kept, 0, m.len);
                        meta[kept] = RecvMeta { addr, ..m };
                        kept += 1;
                    }
                    continue;
                }
                let Some((addr, start)) = self.classify(m.addr, m.dst_ip, &bufs[i][..m.len]) else {
                    continue;
                };
                let len = m.len - start;
                move_datagram(bufs, i, kept, start, len);
                meta[kept] = RecvMeta {
                    addr,
                    len,
                    stride: len,
                    ..m
                };
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            let n = self.drain_unwrapped(bufs, meta);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn sockets_get_the_buffers_the_system_allows() {
        let limit = |name: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let s = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let s = socket2::SockRef::from(&s);
        // Linux reports twice what it grants (the rest is its bookkeeping).
        let want = |max: usize| 2 * max.min(SOCKET_BUFFER);
        assert_eq!(s.recv_buffer_size().unwrap(), want(limit("rmem_max")));
        assert_eq!(s.send_buffer_size().unwrap(), want(limit("wmem_max")));
    }

    #[test]
    fn only_stun_is_diverted() {
        let stun =
            burrow_proto::stun::binding_request(burrow_proto::stun::TransactionId::new([1; 12]));
        assert!(is_burrow_datagram(&stun));
        let mut quic = vec![0xc0u8; 1200];
        quic[4..8].copy_from_slice(&burrow_proto::stun::MAGIC_COOKIE);
        assert!(!is_burrow_datagram(&quic));
        assert!(!is_burrow_datagram(&[0x00, 0x01, 0, 0]));
        assert!(!is_burrow_datagram(&[]));
    }
}
