//! The one UDP socket a node (or server) owns, shared by QUIC and burrow's own
//! datagrams.
//!
//! quinn reads the socket through [`DemuxSocket`]. Every received datagram that is
//! burrow's own ([`is_burrow_datagram`]: STUN today, punch probes in the traversal
//! layer) goes to burrow's channel instead. Those all clear QUIC's fixed bit (0x40)
//! and carry a 32-bit magic value; burrow endpoints don't grease the fixed bit
//! (RFC 9287), so no QUIC packet of ours can be mistaken for one. Sends
//! of raw datagrams go through [`RawSender`] on the same socket, so they leave from
//! the port peers and the server already know.
//!
//! Receive errors caused by ICMP (a probe to a closed port answered "port
//! unreachable") are logged and skipped: quinn's endpoint would otherwise stop on
//! them, taking every connection with it.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::mpsc;

/// How many non-QUIC datagrams wait for burrow before new ones are dropped.
pub const RAW_QUEUE: usize = 1024;

/// A datagram for burrow rather than quinn.
#[derive(Debug, Clone)]
pub struct RawDatagram {
    /// Where it came from.
    pub from: SocketAddr,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// quinn's view of the shared socket.
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    raw_tx: mpsc::Sender<RawDatagram>,
    dropped: AtomicU64,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Sends raw (non-QUIC) datagrams from the shared socket.
#[derive(Clone, Debug)]
pub struct RawSender {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl RawSender {
    /// Sends one datagram now, or fails with `WouldBlock` when the socket buffer is
    /// full: raw datagrams (STUN, probes) are retried by their protocols, not queued.
    pub fn send(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        })
    }
}

impl DemuxSocket {
    /// Wraps `socket`: quinn gets the returned socket, burrow the sender and the
    /// receiver of non-QUIC datagrams.
    pub fn wrap(
        socket: std::net::UdpSocket,
    ) -> io::Result<(Arc<DemuxSocket>, RawSender, mpsc::Receiver<RawDatagram>)> {
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let (raw_tx, raw_rx) = mpsc::channel(RAW_QUEUE);
        let sender = RawSender {
            inner: inner.clone(),
        };
        let demux = Arc::new(DemuxSocket {
            inner,
            raw_tx,
            dropped: AtomicU64::new(0),
        });
        Ok((demux, sender, raw_rx))
    }

    /// Non-QUIC datagrams dropped because burrow's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn divert(&self, from: SocketAddr, data: &[u8]) {
        let d = RawDatagram {
            from,
            data: data.to_vec(),
        };
        if self.raw_tx.try_send(d).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// True for datagrams burrow handles itself rather than quinn: STUN, and punch
/// probes (their own magic).
pub fn is_burrow_datagram(datagram: &[u8]) -> bool {
    burrow_proto::stun::looks_like_stun(datagram)
        || burrow_proto::punch::session_of(datagram).is_some()
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
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut skipped = 0;
        loop {
            let n = match ready!(self.inner.poll_recv(cx, bufs, meta)) {
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
                let data = &bufs[i][..m.len];
                if m.len <= m.stride {
                    if is_burrow_datagram(data) {
                        self.divert(m.addr, data);
                        continue;
                    }
                } else {
                    // A GRO batch: divert copies of burrow's segments and leave them
                    // in place, where quinn discards them (fixed bit clear).
                    for seg in data.chunks(m.stride.max(1)) {
                        if is_burrow_datagram(seg) {
                            self.divert(m.addr, seg);
                        }
                    }
                }
                if kept != i {
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                    meta[kept] = m;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
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
