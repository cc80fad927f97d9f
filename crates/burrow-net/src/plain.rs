//! A UDP socket for quinn that asks the system for plain datagrams only: no
//! ECN, no packet info, no segmentation offload, one datagram per call.
//!
//! quinn-udp sets socket options that some Winsock providers refuse (Wine's,
//! and layered providers that firewalls and VPN clients install), and then
//! refuses the socket. burrow takes this one instead, so a node on such a
//! system works, without ECN and the offloads (slower at high rates, and
//! replies on a multi-homed host leave from the address the system picks).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::ReadBuf;

/// What [`PlainSocket`] tells quinn it receives at once.
const RECEIVE_ROOM: usize = 64;

/// Plain datagrams through a tokio socket, sent straight from a clone of it.
#[derive(Debug)]
pub(crate) struct PlainSocket {
    io: tokio::net::UdpSocket,
    /// Sends go to the system at once, not through tokio's record of
    /// whether the socket is writable: a socket that has sent nothing yet is
    /// not on that record (on Windows, and under Wine, for a while), and
    /// burrow's own datagrams (STUN answers, probes) are not retried.
    send: std::net::UdpSocket,
    /// Where a datagram lands first: room for the largest, so none fails to
    /// fit (Windows fails such a receive, WSAEMSGSIZE, losing its sender);
    /// what quinn's buffer can't hold is cut off, as Unix does.
    landing: std::sync::Mutex<Vec<u8>>,
}

impl PlainSocket {
    /// Wraps `socket` (made non-blocking).
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(PlainSocket {
            send: socket.try_clone()?,
            io: tokio::net::UdpSocket::from_std(socket)?,
            landing: std::sync::Mutex::new(vec![0; 1 << 16]),
        })
    }
}

/// Waits until the socket can send.
#[derive(Debug)]
struct Writable(Arc<PlainSocket>);

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

impl AsyncUdpSocket for PlainSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // One segment per transmit: max_transmit_segments says so to quinn,
        // and burrow's own batches come split ([`crate::socket::RawSender`]).
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            if let Err(e) = self.send.send_to(datagram, transmit.destination) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    // The buffer is full: tokio learns it, so that quinn's
                    // wait for writable waits for the system.
                    let _ = self.io.try_io(tokio::io::Interest::WRITABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut landing = self.landing.lock().unwrap_or_else(|e| e.into_inner());
        let mut read = ReadBuf::new(&mut landing[..]);
        let from = ready!(self.io.poll_recv_from(cx, &mut read))?;
        let datagram = read.filled();
        let len = datagram.len().min(buf.len());
        buf[..len].copy_from_slice(&datagram[..len]);
        *slot = RecvMeta {
            addr: from,
            len,
            stride: len,
            ecn: None,
            dst_ip: None,
        };
        Poll::Ready(Ok(1))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    /// One datagram per receive, but quinn sizes its buffers by this (its
    /// payload limit, 1472 bytes, times this), and burrow reads more than
    /// QUIC there: a STUN request padded to 1536 bytes (RFC 5780) must fit
    /// whole, as it does in the buffers quinn-udp gets with GRO on Linux.
    fn max_receive_segments(&self) -> usize {
        RECEIVE_ROOM
    }

    fn may_fragment(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch leaves as one datagram per segment, and each arrives with its
    /// sender (QUIC over these sockets runs in CI under Wine, whose sockets
    /// refuse quinn-udp's options).
    #[tokio::test]
    async fn a_batch_leaves_one_datagram_per_segment() {
        let open = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            Arc::new(PlainSocket::new(s).unwrap())
        };
        let (a, b) = (open(), open());
        let to = b.local_addr().unwrap();
        a.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: b"one two",
            segment_size: Some(4),
            src_ip: None,
        })
        .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut buf = [0u8; 16];
            let mut meta = [RecvMeta::default()];
            let n = std::future::poll_fn(|cx| {
                b.poll_recv(cx, &mut [io::IoSliceMut::new(&mut buf)], &mut meta)
            })
            .await
            .unwrap();
            assert_eq!((n, meta[0].addr), (1, a.local_addr().unwrap()));
            got.push(buf[..meta[0].len].to_vec());
        }
        assert_eq!(got, [b"one ".to_vec(), b"two".to_vec()]);
    }
}
