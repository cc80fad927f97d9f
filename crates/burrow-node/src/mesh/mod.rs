//! The mesh service (`burrow/mesh/1`, frames in [`burrow_proto::mesh`]): one
//! connection per link, beside the link's own, carrying forum gossip, set
//! reconciliation, clock probes and, without a server, peer exchange and
//! introductions.
//!
//! - [`gossip`]: Plumtree broadcast of new posts, and negentropy reconciliation
//!   when a link comes up.
//! - [`join`]: serverless networks: tickets, joining from one, introductions
//!   through mutual peers, keeping a target number of links.
//! - [`clock`]: each link's clock offset, from NTP-style probes.
//!
//! Who opens the mesh connection: the side that dialed the link's own
//! connection, right after it came up; or, joining from a ticket, the joiner,
//! first (the link's own connection follows once the mesh Hello proved it a
//! member).
//! If both sides open one at once, both keep the session whose dialer has the
//! smaller id.

pub(crate) mod clock;
pub(crate) mod gossip;
pub(crate) mod join;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::forum::{HlcClock, PostId, Topic};
use burrow_proto::mesh::{self, MeshFrame, MeshSecret, PeerAd};
use burrow_proto::reconcile::Reconciler;
use burrow_proto::{Name, NodeId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::handle::LinkHandle;
use crate::service::{Admission, LinkEvent, Service, Serving};

/// Frames queued for one link before gossip to it is dropped (reconciliation
/// repairs what a slow link missed).
const OUTBOX: usize = 4096;
/// How long the other side has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// One live mesh link.
#[derive(Debug)]
pub(crate) struct Link {
    /// Frames to send on it.
    pub tx: mpsc::Sender<MeshFrame>,
    /// The name it goes by.
    pub name: Name,
    /// Topics it follows.
    pub topics: HashSet<Topic>,
    /// Where it may be reached: the address we see it at, then what it announced.
    pub addrs: Vec<SocketAddr>,
    /// The peers it is linked with (serverless).
    pub peers: Vec<PeerAd>,
    /// Its clock's offset from ours.
    pub clock: clock::Estimate,
    /// Which of the two sides dialed this session.
    pub dialer: NodeId,
    /// Tells this session from a replaced one.
    pub session: u64,
    /// The mesh connection.
    pub conn: quinn::Connection,
    /// New posts it may still bring now ([`crate::NodeConfig::forum_link_rate`]).
    pub post_budget: burrow_proto::limit::RateLimit,
    /// Whether its going over that was logged (once per session).
    pub over_budget_logged: bool,
    /// Reconciliations we started, by topic.
    pub syncing: HashMap<Topic, Reconciler>,
    /// Reconciliations we answer, by topic (the set as it was at the start of
    /// the one in progress).
    pub answering: HashMap<Topic, Reconciler>,
}

/// Counters for the benchmark and for `status`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeshStats {
    /// Posts sent in full by gossip (eager pushes and graft answers).
    pub posts_sent: u64,
    /// Ids announced to lazy links.
    pub ihave_sent: u64,
    /// Posts received by gossip that we already had.
    pub duplicates: u64,
    /// Posts sent because reconciliation found the peer lacked them.
    pub synced_sent: u64,
    /// Reconciliation bytes sent and received.
    pub sync_bytes: u64,
    /// Announced ids not tracked because too many were awaited already.
    pub ihave_dropped: u64,
    /// New posts not taken because their link brought too many at once.
    pub over_link_rate: u64,
    /// New posts not stored because their author's share of the topic, or
    /// the topic, was full.
    pub over_quota: u64,
}

/// The mesh's part of the node's state.
#[derive(Debug)]
pub(crate) struct MeshState {
    pub links: HashMap<NodeId, Link>,
    pub hlc: HlcClock,
    /// Topics we follow (the store's list, cached).
    pub topics: BTreeSet<Topic>,
    /// Serverless: the network's secret. `None` with a server.
    pub secret: Option<MeshSecret>,
    /// Plumtree: which links get new posts in full, and the announced posts
    /// we wait for ([`burrow_proto::gossip`]).
    pub tree: gossip::Tree,
    /// Posts the store refused (over a quota), which reconciliation keeps
    /// bringing back: they cost a link's budget only once. At most
    /// [`gossip::MAX_REFUSED`], forgotten all at once past that.
    pub refused: HashSet<PostId>,
    /// Our address as a peer saw it (serverless: there is no STUN).
    pub observed: Option<SocketAddr>,
    pub stats: MeshStats,
    next_session: u64,
    /// Serverless bookkeeping of introductions ([`join`]).
    pub intro: join::Intros,
}

impl MeshState {
    /// The mesh's state as the store left it: the topics followed (the forum's
    /// always), the clock past the newest post, and serverless, the network's
    /// secret.
    pub(crate) fn load(
        store: &mut burrow_store::NodeStore,
        config: &crate::NodeConfig,
    ) -> Result<MeshState, burrow_store::StoreError> {
        let mut mesh = MeshState::default();
        store.follow(&Topic::default_topic())?;
        mesh.topics = store.topics()?.into_iter().collect();
        if let Some(latest) = store.latest_post_time()? {
            let now = burrow_proto::time::unix_ms(std::time::SystemTime::now()) as i64;
            let wall = now.saturating_add(config.clock_skew_ms).max(0) as u64;
            mesh.hlc.observe(latest, wall);
        }
        if config.server.is_none() {
            mesh.secret = Some(join::secret(store, &config.join)?);
        }
        Ok(mesh)
    }
}

impl Default for MeshState {
    fn default() -> Self {
        MeshState {
            links: HashMap::new(),
            hlc: HlcClock::default(),
            topics: BTreeSet::new(),
            secret: None,
            tree: gossip::tree(),
            refused: HashSet::new(),
            observed: None,
            stats: MeshStats::default(),
            next_session: 0,
            intro: join::Intros::default(),
        }
    }
}

/// Opens the mesh connection to `peer` (we dialed its link connection; or,
/// serverless, we are about to), unless one is up already.
pub(crate) async fn dial(mesh: Arc<Mesh>, peer: NodeId) {
    if mesh.state().links.contains_key(&peer) {
        return;
    }
    match mesh.link.connect(peer, mesh::ALPN).await {
        Ok(conn) => match conn.open_bi().await {
            Ok((send, recv)) => run(mesh, peer, conn, send, recv, true).await,
            Err(e) => debug!(peer = %peer.short(), error = %e, "mesh stream failed"),
        },
        Err(e) => warn!(peer = %peer.short(), error = %e, "cannot open the mesh link"),
    }
}

/// The mesh service: forum gossip and reconciliation, clock offsets, and
/// serverless, joining and introductions. A stranger may open it serverless
/// (its Hello proves membership, see [`run`]).
pub(crate) struct Mesh {
    pub(crate) link: LinkHandle,
    state: Mutex<MeshState>,
}

impl Mesh {
    pub(crate) fn new(link: LinkHandle, state: MeshState) -> Arc<Mesh> {
        Arc::new(Mesh {
            link,
            state: Mutex::new(state),
        })
    }

    /// The mesh's state. Locked only for short sections; the link's state may
    /// be locked inside it (never the other way round: the link never calls
    /// the mesh while it holds its own).
    pub(crate) fn state(&self) -> MutexGuard<'_, MeshState> {
        self.state.lock().expect("mesh lock is never poisoned")
    }

    /// Each linked peer's clock offset from ours, as its mesh link measured it.
    pub(crate) fn clock_offsets(&self) -> HashMap<NodeId, f64> {
        let st = self.state();
        st.links
            .iter()
            .filter_map(|(id, l)| Some((*id, l.clock.offset_ms()?)))
            .collect()
    }

    /// Every mesh link's connection (to close at shutdown).
    pub(crate) fn conns(&self) -> Vec<quinn::Connection> {
        self.state()
            .links
            .values()
            .map(|l| l.conn.clone())
            .collect()
    }
}

impl Service for Mesh {
    fn alpn(&self) -> &'static [u8] {
        mesh::ALPN
    }

    fn admission(&self) -> Admission {
        Admission::ProvesMembership
    }

    fn accept(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) -> Serving {
        Box::pin(accept(self, peer, conn))
    }

    fn on_link(self: Arc<Self>, event: &LinkEvent) {
        // The mesh link rides beside the link's connection; its dialer opens it.
        if let LinkEvent::Up { peer, dialed: true } = *event {
            self.link.spawn(dial(self.clone(), peer));
        }
    }

    fn dial_first(self: Arc<Self>, peer: NodeId) -> Option<Serving> {
        let serverless = self.state().secret.is_some();
        serverless.then(|| Box::pin(dial(self, peer)) as Serving)
    }
}

/// Serves a mesh connection `peer` opened.
pub(crate) async fn accept(mesh: Arc<Mesh>, peer: NodeId, conn: quinn::Connection) {
    match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok((send, recv))) => run(mesh, peer, conn, send, recv, false).await,
        _ => conn.close(burrow_net::Close::Done.code(), b"no mesh stream"),
    }
}

/// Runs one mesh session until its connection ends.
#[tracing::instrument(name = "mesh", skip_all, fields(peer = %peer.short()))]
pub(crate) async fn run(
    mesh: Arc<Mesh>,
    peer: NodeId,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dialed: bool,
) {
    let (tx, mut rx) = mpsc::channel::<MeshFrame>(OUTBOX);
    let writer = tokio::spawn(tracing::Instrument::in_current_span(async move {
        let mut w = FrameWriter::new(send, mesh::VERSION, mesh::MAX_FRAME);
        while let Some(f) = rx.recv().await {
            if w.write(&f).await.is_err() {
                break;
            }
        }
        w.finish();
    }));
    // Serverless, the side that was dialed speaks only after the dialer proved
    // it is a member: a stranger learns nothing.
    let hello_first = dialed || mesh.state().secret.is_none();
    if hello_first {
        let _ = tx.send(hello(&mesh, &peer, &conn)).await;
    }
    let mut reader = FrameReader::new(recv, mesh::VERSION, mesh::MAX_FRAME);
    let theirs = match tokio::time::timeout(HELLO_TIMEOUT, reader.read::<MeshFrame>()).await {
        Ok(Ok(Some(f @ MeshFrame::Hello { .. }))) => f,
        other => {
            debug!(peer = %peer.short(), ?other, "no mesh Hello");
            conn.close(burrow_net::Close::Done.code(), b"no hello");
            writer.abort();
            return;
        }
    };
    let session = match admit(&mesh, peer, &conn, &tx, theirs, dialed) {
        Ok(session) => session,
        Err(why) => {
            conn.close(burrow_net::Close::NotAMember.code(), why.as_bytes());
            writer.abort();
            return;
        }
    };
    if !hello_first {
        let _ = tx.send(hello(&mesh, &peer, &conn)).await;
    }
    info!(peer = %peer.short(), dialed, "mesh link up");
    if dialed {
        gossip::start_sync(&mesh, peer);
    }
    join::linked(&mesh, peer, dialed);
    let clock_mesh = mesh.clone();
    let pinger = tokio::spawn(tracing::Instrument::in_current_span(clock::probe(
        tx.clone(),
        move || clock_mesh.link.wall_us(),
    )));
    drop(tx);
    // Frames are read in their own task (a read must never be cancelled midway)
    // and handled here.
    let (ftx, frx) = mpsc::channel::<MeshFrame>(256);
    let read_task = tokio::spawn(tracing::Instrument::in_current_span(read_frames(
        reader, ftx,
    )));
    serve_frames(&mesh, peer, frx).await;
    read_task.abort();
    pinger.abort();
    writer.abort();
    end_session(&mesh, peer, session, &conn);
}

/// Reads `reader`'s frames into `ftx` until the stream ends.
async fn read_frames(mut reader: FrameReader, ftx: mpsc::Sender<MeshFrame>) {
    loop {
        match reader.read::<MeshFrame>().await {
            Ok(Some(f)) => {
                if ftx.send(f).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "mesh stream ended");
                return;
            }
        }
    }
}

/// Handles `peer`'s frames until its stream ends, a frame breaks the
/// protocol, or the peer is refused; runs of reconciled posts are stored in
/// batches.
async fn serve_frames(mesh: &Arc<Mesh>, peer: NodeId, mut frx: mpsc::Receiver<MeshFrame>) {
    while let Some(first) = frx.recv().await {
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            let ok = match frame {
                MeshFrame::Synced(p) => {
                    let mut batch = vec![p];
                    while batch.len() < gossip::SYNC_BATCH {
                        match frx.try_recv() {
                            Ok(MeshFrame::Synced(p)) => batch.push(p),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    gossip::receive_synced(mesh, peer, batch).await
                }
                other => handle(mesh, peer, other).await,
            };
            if !ok || mesh.link.refused(&peer) {
                return;
            }
        }
    }
}

/// Ends mesh session `session` with `peer`: a refused peer's link goes with
/// it, and the link is forgotten unless a newer session replaced it.
fn end_session(mesh: &Mesh, peer: NodeId, session: u64, conn: &quinn::Connection) {
    if mesh.link.refused(&peer) {
        warn!(peer = %peer.short(), "closing the mesh link of a misbehaving peer");
        conn.close(burrow_net::Close::Misbehaved.code(), b"misbehaving");
        mesh.link
            .close_link(&peer, burrow_net::Close::Misbehaved, b"misbehaving");
    }
    let gone = {
        let mut st = mesh.state();
        let ours = st.links.get(&peer).is_some_and(|l| l.session == session);
        if ours {
            st.links.remove(&peer);
            st.tree.link_down(&peer);
            // Under the mesh's lock: a session coming up meanwhile sets it
            // again only after this.
            if st.secret.is_some() {
                mesh.link.set_member(&peer, false);
            }
        }
        ours
    };
    if gone {
        info!(peer = %peer.short(), "mesh link down");
    }
    conn.close(burrow_net::Close::Done.code(), b"mesh session over");
}

/// Our Hello to `peer`.
fn hello(mesh: &Mesh, peer: &NodeId, conn: &quinn::Connection) -> MeshFrame {
    let st = mesh.state();
    MeshFrame::Hello {
        name: mesh.link.config().name.clone(),
        topics: st.topics.iter().cloned().collect(),
        addrs: join::own_addrs(mesh, &st),
        observed: mesh.link.real_addr(peer, conn),
        proof: st
            .secret
            .map(|s| mesh::membership_proof(&s, &mesh.link.id(), peer)),
    }
}

/// Checks `peer`'s Hello and records the link; returns the session's number,
/// or why it is refused.
fn admit(
    mesh: &Arc<Mesh>,
    peer: NodeId,
    conn: &quinn::Connection,
    tx: &mpsc::Sender<MeshFrame>,
    hello: MeshFrame,
    dialed: bool,
) -> Result<u64, &'static str> {
    if hello.check().is_err() {
        return Err("hello over its limits");
    }
    let MeshFrame::Hello {
        name,
        topics,
        addrs,
        observed,
        proof,
    } = hello
    else {
        return Err("no hello");
    };
    let mut st = mesh.state();
    if mesh.link.refused(&peer) {
        return Err("misbehaving");
    }
    member(mesh, &mut st, peer, &name, proof)?;
    if st.secret.is_some() {
        if let Some(seen) = observed.filter(|a| !burrow_net::paths::is_virtual(*a)) {
            st.observed = Some(seen);
        }
    }
    let dialer = if dialed { mesh.link.id() } else { peer };
    if let Some(existing) = st.links.get(&peer) {
        // Two sessions at once: keep the one whose dialer has the smaller id. A
        // new session from the same dialer replaces the old one (the peer
        // restarted, or moved, and the old connection hasn't timed out yet).
        if existing.dialer < dialer {
            debug!(peer = %peer.short(), "a second mesh session; keeping the first");
            return Err("a session exists");
        }
        existing.conn.close(
            burrow_net::Close::Done.code(),
            b"replaced by another session",
        );
    }
    let mut all_addrs: Vec<SocketAddr> = mesh.link.real_addr(&peer, conn).into_iter().collect();
    for a in addrs {
        if !all_addrs.contains(&a) {
            all_addrs.push(a);
        }
    }
    all_addrs.truncate(mesh::MAX_ADDRS);
    st.next_session += 1;
    let session = st.next_session;
    // A session that replaces another keeps its budget: reconnecting buys
    // no new burst.
    let post_budget = st.links.get(&peer).map_or_else(
        || {
            let (rate, burst) = mesh.link.config().forum_link_rate;
            burrow_proto::limit::RateLimit::new(rate, burst, Instant::now())
        },
        |l| l.post_budget.clone(),
    );
    st.tree.link_up(peer);
    let _ = st.links.insert(
        peer,
        Link {
            tx: tx.clone(),
            name,
            topics: topics.into_iter().collect(),
            addrs: all_addrs,
            peers: Vec::new(),
            clock: clock::Estimate::default(),
            dialer,
            session,
            conn: conn.clone(),
            post_budget,
            over_budget_logged: false,
            syncing: HashMap::new(),
            answering: HashMap::new(),
        },
    );
    Ok(session)
}

/// Whether `peer` may have a mesh link: serverless, a member proves it
/// knows the network's secret (and is admitted to the link as one); with a
/// server, admission was settled by connect/accept before this connection
/// was let in.
fn member(
    mesh: &Mesh,
    st: &mut MeshState,
    peer: NodeId,
    name: &Name,
    proof: Option<[u8; 32]>,
) -> Result<(), &'static str> {
    let Some(secret) = st.secret else {
        return if mesh.link.accepted(&peer) {
            Ok(())
        } else {
            Err("not accepted")
        };
    };
    if proof != Some(mesh::membership_proof(&secret, &peer, &mesh.link.id())) {
        // Not counted: strangers cost nothing to make, and a count per
        // stranger would grow without bound.
        warn!(peer = %peer.short(), "mesh Hello without a valid membership proof");
        return Err("not a member");
    }
    if !mesh.link.admit(peer, name) {
        return Err("peer table full");
    }
    mesh.link.set_member(&peer, true);
    Ok(())
}

/// Handles one frame; false ends the session.
async fn handle(mesh: &Arc<Mesh>, peer: NodeId, frame: MeshFrame) -> bool {
    if frame.check().is_err() {
        warn!(peer = %peer.short(), "mesh frame over its limits");
        return !mesh.link.strike(peer, "sent a mesh frame over its limits");
    }
    match frame {
        MeshFrame::Hello { .. } => {
            debug!(peer = %peer.short(), "second mesh Hello ignored");
        }
        MeshFrame::Topics(topics) => {
            if let Some(l) = mesh.state().links.get_mut(&peer) {
                l.topics = topics.into_iter().collect();
            }
        }
        MeshFrame::Post(post) => gossip::receive_post(mesh, peer, post).await,
        MeshFrame::IHave(ids) => gossip::receive_ihave(mesh, peer, ids).await,
        MeshFrame::Graft(ids) => gossip::receive_graft(mesh, peer, ids).await,
        MeshFrame::Prune => mesh.state().tree.pruned(&peer),
        MeshFrame::SyncStart { topic, msg } => {
            gossip::receive_sync(mesh, peer, topic, msg, true).await
        }
        MeshFrame::Sync { topic, msg } => gossip::receive_sync(mesh, peer, topic, msg, false).await,
        MeshFrame::SyncReply { topic, msg } => {
            gossip::receive_sync_reply(mesh, peer, topic, msg).await
        }
        MeshFrame::Want(ids) => gossip::receive_want(mesh, peer, ids).await,
        MeshFrame::Synced(post) => return gossip::receive_synced(mesh, peer, vec![post]).await,
        MeshFrame::Ping { t1 } => {
            let t2 = mesh.link.wall_us();
            let tx = mesh.state().links.get(&peer).map(|l| l.tx.clone());
            if let Some(tx) = tx {
                let _ = tx.try_send(MeshFrame::Pong {
                    t1,
                    t2,
                    t3: mesh.link.wall_us(),
                });
            }
        }
        MeshFrame::Pong { t1, t2, t3 } => {
            let t4 = mesh.link.wall_us();
            if let Some(l) = mesh.state().links.get_mut(&peer) {
                l.clock.add(t1, t2, t3, t4);
            }
        }
        MeshFrame::Peers(list) => join::receive_peers(mesh, peer, list),
        MeshFrame::Introduce { peer: target } => join::introduce(mesh, peer, target),
        MeshFrame::IntroRequest { peer: from, name } => {
            join::intro_requested(mesh, peer, from, name)
        }
        MeshFrame::IntroAccept { peer: asker } => join::intro_accepted(mesh, peer, asker),
        MeshFrame::Introduction {
            peer: other,
            name,
            candidates,
            punch,
            dial,
        } => join::introduced(mesh, peer, other, name, candidates, punch, dial),
    }
    true
}
