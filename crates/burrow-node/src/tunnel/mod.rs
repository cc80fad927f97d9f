//! The tunnel service (ALPN `burrow/tunnel/1`, see [`burrow_proto::tunnel`]):
//! a node exposes local TCP and UDP services to the peers it names
//! ([`expose`]), and a peer forwards a local port to one of them
//! ([`forward`]), over the link's path, direct or relayed.
//!
//! One tunnel connection per pair, opened by the forwarding side with its
//! first stream, closed with the link. On it, one stream per TCP connection
//! ([`splice`]) and per UDP flow, whose datagrams carry the flow's id
//! ([`Datagrams`]). A link's path moving between relay and direct changes
//! nothing up here: connections are to the peer's virtual address, and the
//! path table underneath moves its packets.
//!
//! Exposures and forwards are kept in the store and come back at start.

mod expose;
mod forward;
mod owner;
pub(crate) mod splice;
mod udp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use burrow_proto::tunnel::{self, Refusals, ServiceName};
use burrow_proto::NodeId;
use tokio::sync::mpsc;
use tracing::debug;

use crate::handle::LinkHandle;
use crate::service::{LinkEvent, Service, Serving};

pub(crate) use expose::Exposed;
pub(crate) use forward::Forwards;

/// Datagrams queued for one flow before more are dropped (UDP's own rule:
/// a flow that can't keep up loses packets, it doesn't hold others up).
const FLOW_QUEUE: usize = 256;

/// The tunnel service: what we expose, our forwards, and the tunnel
/// connections between them and peers.
pub(crate) struct Tunnels {
    link: LinkHandle,
    exposed: Mutex<Exposed>,
    forwards: Mutex<Forwards>,
    /// Our tunnel connection to each peer (one we opened), or the one being
    /// opened.
    conns: Mutex<HashMap<NodeId, Slot>>,
    /// Peers' refused opens, to log each peer once a minute and strike floods.
    refusals: Mutex<Refusals>,
}

/// A tunnel connection we opened, with its flows' datagrams.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) conn: quinn::Connection,
    pub(crate) datagrams: Arc<Datagrams>,
}

type Slot = Arc<tokio::sync::OnceCell<Conn>>;

impl Service for Tunnels {
    fn alpn(&self) -> &'static [u8] {
        tunnel::ALPN
    }

    fn accept(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) -> Serving {
        Box::pin(async move { expose::serve(self, peer, conn).await })
    }

    fn on_link(self: Arc<Self>, event: &LinkEvent) {
        // A tunnel connection outlives no link: the next one opens a new one
        // (and the forwards announce their path again).
        // Theirs too: a peer whose link we closed (or struck) keeps none.
        if let LinkEvent::Down { peer } = event {
            let slot = self.conns().remove(peer);
            if let Some(c) = slot.as_ref().and_then(|s| s.get()) {
                c.conn.close(burrow_net::Close::Done.code(), b"link closed");
            }
            let theirs = self.exposed().take_conns(peer);
            for c in theirs {
                c.close(burrow_net::Close::Done.code(), b"link closed");
            }
        }
    }
}

impl Tunnels {
    /// The service, with the exposures and forwards the store keeps (the
    /// forwards listen once [`Tunnels::start`] runs).
    pub(crate) fn new(
        link: LinkHandle,
        exposures: Vec<burrow_store::StoredExposure>,
        forwards: Vec<burrow_store::StoredForward>,
    ) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            link,
            exposed: Mutex::new(Exposed::new(exposures)),
            forwards: Mutex::new(Forwards::new(forwards)),
            conns: Mutex::default(),
            refusals: Mutex::default(),
        })
    }

    /// Starts the forwards the store kept.
    pub(crate) async fn start(self: &Arc<Self>) {
        forward::restore(self).await;
    }

    fn exposed(&self) -> MutexGuard<'_, Exposed> {
        self.exposed.lock().expect("exposed lock is never poisoned")
    }

    fn forwards(&self) -> MutexGuard<'_, Forwards> {
        self.forwards
            .lock()
            .expect("forwards lock is never poisoned")
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<NodeId, Slot>> {
        self.conns.lock().expect("tunnel lock is never poisoned")
    }

    /// Our tunnel connection to `peer` (linked): the one we have (or are
    /// opening), or a new one on the link's path.
    async fn conn_to(self: &Arc<Self>, peer: NodeId) -> Result<Conn, String> {
        for _ in 0..2 {
            let slot = self.conns().entry(peer).or_default().clone();
            let c = slot.get_or_try_init(|| self.open(peer)).await?.clone();
            if c.conn.close_reason().is_none() {
                return Ok(c);
            }
            let mut conns = self.conns();
            if conns.get(&peer).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                conns.remove(&peer);
            }
        }
        Err("the tunnel connection closed as it opened".into())
    }

    async fn open(self: &Arc<Self>, peer: NodeId) -> Result<Conn, String> {
        let conn = self
            .link
            .connect(peer, tunnel::ALPN)
            .await
            .map_err(|e| e.to_string())?;
        let datagrams = Arc::new(Datagrams::default());
        let (c, d) = (conn.clone(), datagrams.clone());
        self.link.spawn(async move { d.run(&c).await });
        Ok(Conn { conn, datagrams })
    }
}

/// A connection's UDP flows: datagrams that come in go to their flow's
/// queue by id; unknown ids and full queues drop them.
#[derive(Default)]
pub(crate) struct Datagrams {
    flows: Mutex<DatagramFlows>,
}

#[derive(Default)]
struct DatagramFlows {
    queues: HashMap<u32, mpsc::Sender<bytes::Bytes>>,
    next: u32,
}

impl Datagrams {
    /// A new flow (at most [`tunnel::MAX_FLOWS`]): its id, chosen here, and
    /// its queue.
    pub(crate) fn open(&self) -> Option<(u32, mpsc::Receiver<bytes::Bytes>)> {
        let mut f = self.flows.lock().expect("flows lock is never poisoned");
        if f.queues.len() >= tunnel::MAX_FLOWS {
            return None;
        }
        let mut id = f.next;
        while f.queues.contains_key(&id) {
            id = (id + 1) & tunnel::MAX_FLOW;
        }
        f.next = (id + 1) & tunnel::MAX_FLOW;
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        f.queues.insert(id, tx);
        Some((id, rx))
    }

    /// Flow `id`, which the peer chose; `None` when it is taken or there
    /// are [`tunnel::MAX_FLOWS`] already.
    pub(crate) fn accept(&self, id: u32) -> Option<mpsc::Receiver<bytes::Bytes>> {
        let mut f = self.flows.lock().expect("flows lock is never poisoned");
        if f.queues.len() >= tunnel::MAX_FLOWS || f.queues.contains_key(&id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        f.queues.insert(id, tx);
        Some(rx)
    }

    /// Forgets flow `id`.
    pub(crate) fn close(&self, id: u32) {
        let mut f = self.flows.lock().expect("flows lock is never poisoned");
        f.queues.remove(&id);
    }

    /// Hands `conn`'s datagrams to their flows until it closes.
    pub(crate) async fn run(&self, conn: &quinn::Connection) {
        while let Ok(d) = conn.read_datagram().await {
            let Some((id, payload)) = tunnel::decode_datagram(&d) else {
                debug!("tunnel datagram without a flow id");
                continue;
            };
            let start = d.len() - payload.len();
            let f = self.flows.lock().expect("flows lock is never poisoned");
            if let Some(q) = f.queues.get(&id) {
                let _ = q.try_send(d.slice(start..));
            }
        }
    }
}

/// `peer/service`, as a person types it.
pub(crate) fn parse_target(target: &str) -> Option<(&str, ServiceName)> {
    let (peer, service) = target.split_once('/')?;
    if peer.is_empty() {
        return None;
    }
    Some((peer, service.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_peer_slash_service() {
        let (peer, service) = parse_target("alice/web").unwrap();
        assert_eq!((peer, service.as_str()), ("alice", "web"));
        assert!(parse_target("alice").is_none());
        assert!(parse_target("/web").is_none());
        assert!(parse_target("alice/Web!").is_none());
    }

    #[test]
    fn flows_are_bounded_and_their_ids_unique() {
        let d = Datagrams::default();
        let mut held = Vec::new();
        for want in 0..tunnel::MAX_FLOWS as u32 {
            let (id, rx) = d.open().unwrap();
            assert_eq!(id, want);
            held.push(rx);
        }
        assert!(d.open().is_none(), "no more than MAX_FLOWS");
        assert!(d.accept(9999).is_none(), "full");
        d.close(3);
        assert!(d.accept(5).is_none(), "a taken id is refused");
        let (id, _rx) = d.open().unwrap();
        assert_ne!(id, 3, "ids move on rather than reuse at once");
    }
}
