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

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Port of every link's virtual address (peers' virtual addresses use port 1).
const LINK_PORT: u16 = 2;
/// Largest datagram a link carries (a relayed full-size QUIC packet is 1472).
pub const MAX_DATAGRAM: usize = 2048;
/// Datagrams queued for one link's writer before more are dropped (as a full
/// socket buffer drops them: QUIC retransmits).
const QUEUE: usize = 1024;
/// Most links at once on one endpoint.
pub const MAX_LINKS: usize = 4096;

/// Whether `addr` is a link's virtual address.
pub fn is_link(addr: SocketAddr) -> bool {
    match crate::paths::canonical(addr) {
        SocketAddr::V4(a) => a.ip().octets()[0] & 0xf0 == 240 && a.port() == LINK_PORT,
        SocketAddr::V6(_) => false,
    }
}

/// Where a link's received datagrams go: the shared socket's receive path.
pub(crate) type Deliver = Arc<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    /// The other end's real address.
    real: SocketAddr,
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
    ) -> Result<SocketAddr, LinkError> {
        let real = stream.peer_addr()?;
        let _ = stream.set_nodelay(true);
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0x0fff_ffff;
        let virt = SocketAddr::new(Ipv4Addr::from((240u32 << 24) | n).into(), LINK_PORT);
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut map = self.lock();
        if map.len() >= MAX_LINKS {
            return Err(LinkError::Full);
        }
        let weak = Arc::downgrade(self);
        let reader = tokio::spawn(read_link(read, virt, deliver, weak.clone())).abort_handle();
        let writer = tokio::spawn(write_link(write, rx, virt, weak)).abort_handle();
        map.insert(
            virt,
            Link {
                tx,
                real,
                tasks: [reader, writer],
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

    /// The real address behind `addr` when it is a link's, else `addr`.
    pub fn real_addr(&self, addr: SocketAddr) -> SocketAddr {
        self.lock()
            .get(&crate::paths::canonical(addr))
            .map_or(addr, |l| l.real)
    }

    /// Closes the link at `addr`.
    pub fn close(&self, addr: SocketAddr) {
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
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok(len) = read.read_u16().await {
        let len = usize::from(len);
        if len > MAX_DATAGRAM {
            tracing::debug!(%virt, len, "TCP link sent an oversized frame");
            break;
        }
        if read.read_exact(&mut buf[..len]).await.is_err() {
            break;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_addresses_are_apart_from_peer_addresses() {
        let link: SocketAddr = "240.0.0.7:2".parse().unwrap();
        assert!(is_link(link));
        assert!(!crate::paths::is_virtual(link));
        let peer: SocketAddr = "240.0.0.7:1".parse().unwrap();
        assert!(!is_link(peer));
        assert!(!is_link("198.51.100.1:2".parse().unwrap()));
    }
}
