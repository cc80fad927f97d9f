//! The link handle: all a service sees of the link and the node (see
//! [`crate::service`]).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use burrow_proto::rendezvous::{ClientMsg, Query, TrackerEntry};
use burrow_proto::NodeId;
use burrow_store::NodeStore;

use crate::config::NodeConfig;
use crate::error::{PeerError, ServerError, StoreFailure};
use crate::event::NodeEvent;
use crate::link::Inner;

/// What a service may ask of the link and the node: reach a peer, strike one
/// that broke its protocol, name one, ask the server, use the store, tell
/// events. Services see nothing else of the node.
#[derive(Clone)]
pub(crate) struct LinkHandle {
    inner: Arc<Inner>,
}

impl LinkHandle {
    pub(crate) fn new(inner: Arc<Inner>) -> LinkHandle {
        LinkHandle { inner }
    }

    /// Our id.
    pub(crate) fn id(&self) -> NodeId {
        self.inner.id
    }

    /// How the node was started.
    pub(crate) fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The node's home directory.
    pub(crate) fn home(&self) -> &Path {
        &self.inner.config.home
    }

    /// Counts a strike against `peer` for `what` (see [`crate::conduct`]);
    /// true when that refuses it.
    pub(crate) fn strike(&self, peer: NodeId, what: &str) -> bool {
        self.inner.strike(peer, what)
    }

    /// Whether `peer` is refused for misbehaving.
    pub(crate) fn refused(&self, peer: &NodeId) -> bool {
        self.inner.state().conduct.refused(peer)
    }

    /// The name `peer` goes by here (its short id without one), and whether
    /// anyone vouches for it.
    pub(crate) fn name(&self, peer: &NodeId) -> (String, bool) {
        let st = self.inner.state();
        let name = st
            .claimed_name(peer)
            .map_or_else(|| peer.short(), |n| n.to_string());
        (name, st.name_vouched(peer))
    }

    /// The name `peer` goes by here, if we know one.
    pub(crate) fn known_name(&self, peer: &NodeId) -> Option<String> {
        self.inner.state().claimed_name(peer).map(|n| n.to_string())
    }

    /// The name `peer` is shown by (with its short id beside one nobody vouches for).
    pub(crate) fn shown_name(&self, peer: &NodeId) -> String {
        self.inner.state().name_of(peer)
    }

    /// Whether `name` is `peer`'s as far as we know (see [`crate::names::vouched`]).
    pub(crate) fn vouched_name(&self, peer: &NodeId, name: &str) -> bool {
        self.inner.state().vouched_name(peer, self.inner.id, name)
    }

    /// The peer a person means by `peer` (a name or an id prefix), asking the
    /// server for a name it doesn't know yet.
    pub(crate) async fn resolve(&self, peer: &str) -> Result<NodeId, PeerError> {
        self.inner.find_peer(peer).await;
        crate::state::resolve(&self.inner.state(), peer)
    }

    /// Whether `peer`'s link is up.
    pub(crate) fn linked(&self, peer: &NodeId) -> bool {
        self.inner
            .state()
            .peers
            .get(peer)
            .is_some_and(|p| p.connected())
    }

    /// Whether `peer` is in our contacts list.
    pub(crate) fn is_contact(&self, peer: &NodeId) -> bool {
        self.inner.state().contacts.name(peer).is_some()
    }

    /// How `peer`'s link is carried now, and where its packets go.
    pub(crate) fn path(&self, peer: &NodeId) -> (crate::api::ConnectionState, String) {
        let conn = self
            .inner
            .state()
            .peers
            .get(peer)
            .and_then(|p| p.conn().cloned());
        crate::peers::path_of(&self.inner, peer, conn.as_ref())
    }

    /// Whether we accepted `peer` (its connections are let in).
    pub(crate) fn accepted(&self, peer: &NodeId) -> bool {
        let st = self.inner.state();
        st.peers.get(peer).is_some_and(|p| p.accepted)
    }

    /// Serverless: admits `peer`, named `name`, for a punch and the mesh
    /// connection (its other services wait until [`Self::set_member`]); false
    /// when the peer table is full.
    pub(crate) fn admit(&self, peer: NodeId, name: &burrow_proto::Name) -> bool {
        let mut st = self.inner.state();
        if !st.peers.contains_key(&peer) && st.peers.len() >= crate::state::MAX_PEERS {
            return false;
        }
        let p = st.peers.entry(peer).or_default();
        p.name = Some(name.clone());
        p.accepted = true;
        true
    }

    /// Serverless: `peer` proved its membership of our network (its mesh link
    /// is up), or its mesh link went down. Its other services' connections
    /// come in only while it is a member.
    pub(crate) fn set_member(&self, peer: &NodeId, member: bool) {
        let mut st = self.inner.state();
        if let Some(p) = st.peers.get_mut(peer) {
            p.member = member;
            p.online = member || p.connected();
        }
    }

    /// Closes every connection of `peer`'s link with `code`.
    pub(crate) fn close_link(&self, peer: &NodeId, code: burrow_net::Close, why: &[u8]) {
        let conns = self
            .inner
            .state()
            .peers
            .get(peer)
            .map(|p| p.conns.clone())
            .unwrap_or_default();
        for c in conns {
            c.close(code.code(), why);
        }
    }

    /// Serverless: punches towards `peer` at `candidates`, as a mutual peer
    /// introduced us (dialing if `dial`, else waiting to be dialed, for a
    /// while).
    pub(crate) fn punch_to(
        &self,
        peer: NodeId,
        candidates: &[std::net::SocketAddr],
        punch: burrow_proto::punch::PunchTicket,
        dial: bool,
    ) {
        use burrow_proto::rendezvous::Direction;
        let direction = if dial {
            Direction::Outgoing
        } else {
            Direction::Incoming
        };
        // Serverless nodes don't measure their mapping (no STUN grid to
        // measure against): ordinary probing only.
        crate::peers::link(
            &self.inner,
            burrow_proto::rendezvous::LinkOffer {
                peer,
                direction,
                candidates: candidates.to_vec(),
                peer_nat: burrow_proto::punch::NatInfo::default(),
                punch,
                relay: None,
            },
        );
        if !dial {
            let inner = self.inner.clone();
            self.inner
                .spawn(crate::peers::admission_deadline(inner, peer));
        }
    }

    /// Opens `peer`'s link's own connection (serverless, once its mesh link
    /// proved it a member).
    pub(crate) fn dial_link(&self, peer: NodeId) {
        let inner = self.inner.clone();
        self.inner.spawn(crate::peers::dial_link(inner, peer));
    }

    /// Dials `peer` at the real address `addr` (serverless: from a ticket),
    /// taking at most `wait`. The address stays `peer`'s direct path until
    /// [`Self::forget_direct`].
    pub(crate) async fn dial_at(
        &self,
        peer: NodeId,
        addr: std::net::SocketAddr,
        alpn: &[u8],
        wait: std::time::Duration,
    ) -> Result<quinn::Connection, String> {
        let paths = self.inner.endpoint.paths();
        let v = paths.open(peer);
        paths.set_direct(&peer, Some(addr));
        match tokio::time::timeout(wait, self.inner.endpoint.connect(v, alpn, Some(peer))).await {
            Ok(Ok((conn, _))) => Ok(conn),
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!("no answer from {addr}")),
        }
    }

    /// Forgets the direct path [`Self::dial_at`] set.
    pub(crate) fn forget_direct(&self, peer: &NodeId) {
        self.inner.endpoint.paths().set_direct(peer, None);
    }

    /// Whether our socket can send to `addr` (its family).
    pub(crate) fn takes(&self, addr: std::net::SocketAddr) -> bool {
        self.inner.endpoint.takes(addr)
    }

    /// The address `peer` is reached at when it is a real one: `conn`'s
    /// remote address, or the direct path behind its virtual address.
    pub(crate) fn real_addr(
        &self,
        peer: &NodeId,
        conn: &quinn::Connection,
    ) -> Option<std::net::SocketAddr> {
        let remote = burrow_net::paths::canonical(conn.remote_address());
        if !burrow_net::paths::is_virtual(remote) {
            return Some(remote);
        }
        match self.inner.endpoint.paths().status(peer)?.route {
            burrow_net::Route::Direct(a) => Some(a),
            _ => None,
        }
    }

    /// Addresses we may be reached at, best first: public (as the server saw
    /// us, then as `seen`: a peer did), then the machine's own.
    pub(crate) fn own_addrs(
        &self,
        seen: Option<std::net::SocketAddr>,
    ) -> Vec<std::net::SocketAddr> {
        let mut out = Vec::new();
        for a in [self.inner.state().public_addr, seen].into_iter().flatten() {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if let Ok(local) = self.inner.endpoint.local_addr() {
            for a in burrow_net::iface::lan_candidates(local) {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Opens a connection of `alpn` to `peer` over its link's path.
    pub(crate) async fn connect(
        &self,
        peer: NodeId,
        alpn: &[u8],
    ) -> Result<quinn::Connection, burrow_net::ConnectError> {
        self.inner.connect_peer(peer, alpn).await
    }

    /// Makes sure we have a link with `peer`: asks for one if needed (as
    /// `connect` does; `asking` is told first) and waits for it to accept.
    pub(crate) async fn ensure_link(
        &self,
        peer: NodeId,
        asking: impl Future<Output = ()>,
    ) -> Result<(), String> {
        self.inner.ensure_link(peer, asking).await
    }

    /// Tells the server `msg`, if we are registered (dropped otherwise: the
    /// next registration tells the server everything again).
    pub(crate) fn tell_server(&self, msg: ClientMsg) -> bool {
        let tx = self.inner.state().server_tx.clone();
        tx.is_some_and(|tx| tx.try_send(msg).is_ok())
    }

    /// The server session's sender, while registered.
    pub(crate) fn server(&self) -> Option<tokio::sync::mpsc::Sender<ClientMsg>> {
        self.inner.state().server_tx.clone()
    }

    /// The server's key, while registered.
    pub(crate) fn server_id(&self) -> Option<NodeId> {
        self.inner.state().server_id
    }

    /// Asks the server's tracker `query`.
    pub(crate) async fn tracker(&self, query: Query) -> Result<Vec<TrackerEntry>, ServerError> {
        self.inner.tracker(query).await
    }

    /// Runs a store operation on a blocking thread.
    pub(crate) async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeStore) -> Result<T, burrow_store::StoreError> + Send + 'static,
    ) -> Result<T, StoreFailure> {
        self.inner.with_store(f).await
    }

    /// Runs a store read that answers in an operation's own terms on a
    /// blocking thread.
    pub(crate) async fn with_store_op<T: Send + 'static, E: From<StoreFailure> + Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeStore) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        self.inner.with_store_op(f).await
    }

    /// The store itself, for work already on a blocking thread.
    pub(crate) fn store(&self) -> &Arc<std::sync::Mutex<NodeStore>> {
        &self.inner.store
    }

    /// Runs `fut` as one of the node's tasks (stopped at shutdown).
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.inner.spawn(fut);
    }

    /// Cancelled when the node shuts down.
    pub(crate) fn shutdown(&self) -> &tokio_util::sync::CancellationToken {
        &self.inner.shutdown
    }

    /// The wall clock (with the configured skew), Unix milliseconds.
    pub(crate) fn wall_ms(&self) -> u64 {
        self.inner.wall_ms()
    }

    /// The wall clock (with the configured skew), Unix microseconds.
    pub(crate) fn wall_us(&self) -> u64 {
        self.inner.wall_us()
    }

    /// Tells whoever watches the node.
    pub(crate) fn emit(&self, event: NodeEvent) {
        self.inner.emit(event);
    }
}
