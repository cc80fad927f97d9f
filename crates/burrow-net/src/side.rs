//! Side sockets: extra UDP sockets a node opens for birthday probing (see
//! [`burrow_proto::punch::strategy`]), when its NAT gives every destination a
//! random port.
//!
//! Each side socket gets its own mapping from the NAT toward the peer. When a
//! punch succeeds through one of them, that socket *is* the path: its NAT
//! mapping is the one the peer reaches. So the winner outlives the punch and
//! carries the peer's QUIC packets, hidden from quinn like the relay is: the
//! path table sends a peer's packets through it ([`crate::paths::SendRoute`]),
//! and its receive task hands what arrives to quinn as coming from the peer's
//! virtual address. The losers close when the punch ends.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burrow_proto::punch::Local;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::paths::PathTable;

/// Where a side socket sends the punch datagrams it receives.
pub(crate) type PunchInbox = mpsc::Sender<(Local, SocketAddr, Vec<u8>)>;

/// Birthday punches running at once on one endpoint; more punch without side
/// sockets (each holds 256 file descriptors while it runs).
pub const MAX_BIRTHDAY_PUNCHES: usize = 2;

/// One side socket and the task reading it; dropping it closes both.
pub struct SideSocket {
    socket: Arc<UdpSocket>,
    local: Local,
    reader: AbortHandle,
    /// Whether the socket is IPv6 (IPv4 destinations are then sent mapped).
    ipv6: bool,
}

impl fmt::Debug for SideSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SideSocket({:?}, {:?})",
            self.local,
            self.socket.local_addr().ok()
        )
    }
}

impl Drop for SideSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SideSocket {
    /// Binds a side socket like `like` (same family, any port) and starts
    /// reading it: punch datagrams go to `punch`, QUIC from a known peer to
    /// quinn through `paths`.
    pub(crate) fn bind(
        like: SocketAddr,
        local: Local,
        punch: PunchInbox,
        paths: Arc<PathTable>,
    ) -> io::Result<SideSocket> {
        let any: SocketAddr = if like.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let std = crate::socket::bind_udp(any)?;
        let ipv6 = std.local_addr()?.is_ipv6();
        std.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std)?);
        let reader = tokio::spawn(read(socket.clone(), local, punch, paths)).abort_handle();
        Ok(SideSocket {
            socket,
            local,
            reader,
            ipv6,
        })
    }

    /// Which side socket this is.
    pub fn local(&self) -> Local {
        self.local
    }

    /// Sends one datagram now; a full buffer loses it (QUIC and the punch
    /// both retransmit).
    pub(crate) fn send(&self, to: SocketAddr, data: &[u8], ttl: Option<u8>) {
        let to = crate::socket::on_wire(self.ipv6, to);
        let sent = match ttl {
            Some(ttl) => crate::ttl::send_with_ttl((&*self.socket).into(), to, data, ttl),
            None => self.socket.try_send_to(data, to).map(|_| ()),
        };
        if let Err(e) = sent {
            tracing::trace!(%to, error = %e, "side socket send failed");
        }
    }
}

async fn read(socket: Arc<UdpSocket>, local: Local, punch: PunchInbox, paths: Arc<PathTable>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors (a probe to a closed port) are no reason to stop.
            Err(_) => continue,
        };
        let data = &buf[..n];
        let from = crate::paths::canonical(from);
        if burrow_proto::punch::session_of(data).is_some() {
            // The punch may be over: then nobody listens, and that is fine.
            let _ = punch.try_send((local, from, data.to_vec()));
        } else if !crate::socket::is_burrow_datagram(data) {
            paths.deliver_direct(from, data);
        }
    }
}

/// Counts birthday punches in flight (see [`MAX_BIRTHDAY_PUNCHES`]).
#[derive(Debug, Default)]
pub(crate) struct BirthdaySlots(AtomicUsize);

impl BirthdaySlots {
    /// Takes a slot, if one is free; it is given back when the guard drops.
    pub(crate) fn take(self: &Arc<Self>) -> Option<BirthdaySlot> {
        let mut n = self.0.load(Ordering::Relaxed);
        loop {
            if n >= MAX_BIRTHDAY_PUNCHES {
                return None;
            }
            match self
                .0
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(BirthdaySlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

/// A taken birthday slot.
#[derive(Debug)]
pub(crate) struct BirthdaySlot(Arc<BirthdaySlots>);

impl Drop for BirthdaySlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The path a punch found through a side socket.
#[derive(Clone, Debug)]
pub struct Via(pub(crate) Arc<SideSocket>);

impl PartialEq for Via {
    fn eq(&self, other: &Via) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Via {}
