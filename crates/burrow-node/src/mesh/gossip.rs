//! Spreading posts: Plumtree gossip for new posts, negentropy reconciliation for
//! what a member missed while away (see [`burrow_proto::mesh`] for the frames).
//!
//! Gossip, per post: a member that receives a post for the first time stores it
//! and forwards it in full to its eager links and as an id to its lazy ones. A
//! post that arrives again turns the link it came on lazy (`Prune`), so after the
//! first few posts the eager links form a spanning tree. When an id announced by a
//! lazy link hasn't arrived as a post within [`GRAFT_AFTER`], the member asks that
//! link for it (`Graft`), which also makes the link eager again.
//!
//! Reconciliation: when a link comes up (and every
//! [`crate::NodeConfig::resync_every`] after, a minute by default), its
//! dialer reconciles every topic both sides follow; each side then sends the other the posts it lacks (`Synced`, not
//! forwarded on: the other members reconcile on their own links).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_proto::forum::{Post, PostId, Topic};
use burrow_proto::gossip::{Out, Plumtree};
use burrow_proto::mesh::{MeshFrame, MAX_IDS};
use burrow_proto::reconcile::Reconciler;
use burrow_proto::NodeId;
use burrow_store::Stored;
use tracing::{debug, warn};

use super::Mesh;
use crate::event::NodeEvent;

/// How long an announced post may take to arrive before it is grafted.
pub(crate) const GRAFT_AFTER: Duration = Duration::from_millis(1000);
/// Refused posts remembered (see [`crate::mesh::MeshState::refused`]).
pub(crate) const MAX_REFUSED: usize = 65_536;
/// Reconciled posts stored per transaction.
pub(crate) const SYNC_BATCH: usize = 256;
/// Posts read from the store per batch when answering.
const SEND_BATCH: usize = 256;

/// Sends a new post on: in full to eager links, as an id to lazy ones, except to
/// the link it came from. Only links following its topic get it.
pub(crate) fn broadcast(mesh: &Mesh, post: &Post, from: Option<NodeId>) {
    let mut st = mesh.state();
    let mesh = &mut *st;
    let targets: Vec<NodeId> = mesh
        .links
        .iter()
        .filter(|(_, l)| l.topics.contains(&post.topic))
        .map(|(id, _)| *id)
        .collect();
    let (mut full, mut ids) = (0, 0);
    for s in mesh.tree.broadcast(post.id, from, targets) {
        let (to, frame) = match s {
            Out::Message { to, .. } => (to, MeshFrame::Post(post.clone())),
            Out::IHave { to, ids } => (to, MeshFrame::IHave(ids)),
            _ => continue,
        };
        let full_post = matches!(frame, MeshFrame::Post(_));
        if mesh
            .links
            .get(&to)
            .is_some_and(|l| l.tx.try_send(frame).is_ok())
        {
            if full_post {
                full += 1;
            } else {
                ids += 1;
            }
        }
    }
    mesh.stats.posts_sent += full;
    mesh.stats.ihave_sent += ids;
}

/// Verifies, stores and reports posts from `peer`; returns which were new.
/// Invalid posts count against the peer; posts of topics we don't follow are
/// dropped. New posts beyond the link's budget wait (a later reconciliation
/// brings them), and those past the store's quota are not kept (see
/// [`burrow_store::PostQuota`]); neither is the peer's fault (it may only be
/// passing them on), so neither is a strike.
async fn accept(mesh: &Arc<Mesh>, peer: NodeId, posts: Vec<Post>) -> Vec<(Post, bool)> {
    let valid = verified(mesh, peer, posts);
    if valid.is_empty() {
        return Vec::new();
    }
    let valid = within_budget(mesh, peer, valid).await;
    let now = mesh.link.wall_ms();
    let batch = valid.clone();
    let exempt: HashSet<NodeId> = {
        batch
            .iter()
            .filter(|p| mesh.link.vouched_name(&p.author, p.author_name.as_str()))
            .map(|p| p.author)
            .collect()
    };
    let quota = Some(mesh.link.config().forum_quota);
    let stored = mesh
        .link
        .with_store(move |s| s.insert_posts(&batch, now, quota, |a| exempt.contains(a)))
        .await;
    let stored = match stored {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot store posts");
            return Vec::new();
        }
    };
    remember_refused(mesh, peer, &valid, &stored);
    let out: Vec<(Post, bool)> = valid
        .into_iter()
        .zip(stored)
        .filter(|(_, s)| *s != Stored::OverQuota)
        .map(|(p, s)| (p, s == Stored::New))
        .collect();
    {
        let mut st = mesh.state();
        for (p, new) in &out {
            st.tree.arrived(&p.id);
            if *new {
                st.hlc.observe(p.created, now);
            }
        }
    }
    for (p, new) in &out {
        if *new {
            let mut view = crate::api::PostView::of(p);
            view.author_verified = mesh.link.vouched_name(&p.author, p.author_name.as_str());
            mesh.link.emit(NodeEvent::Post(view));
        }
    }
    // A reply whose parent we lack: ask the sender for it now rather than wait
    // for the next reconciliation.
    let parents: Vec<PostId> = out
        .iter()
        .filter(|(_, new)| *new)
        .filter_map(|(p, _)| p.parent)
        .collect();
    if !parents.is_empty() {
        let lacking = lacking(mesh, parents).await;
        if !lacking.is_empty() {
            send(mesh, peer, MeshFrame::Want(lacking));
        }
    }
    out
}

/// The posts of `posts` that `peer`'s link may bring now: the ones we have
/// cost nothing, each new one a token of the link's budget.
async fn within_budget(mesh: &Arc<Mesh>, peer: NodeId, posts: Vec<Post>) -> Vec<Post> {
    let lacking: HashSet<PostId> = lacking(mesh, posts.iter().map(|p| p.id).collect())
        .await
        .into_iter()
        .collect();
    let now = Instant::now();
    let mut st = mesh.state();
    let mesh = &mut *st;
    let refused = &mesh.refused;
    let Some(link) = mesh.links.get_mut(&peer) else {
        return posts;
    };
    let mut over = 0u64;
    let kept: Vec<Post> = posts
        .into_iter()
        .filter(|p| {
            let free = !lacking.contains(&p.id) || refused.contains(&p.id);
            let ok = free || link.post_budget.allow(now);
            over += u64::from(!ok);
            ok
        })
        .collect();
    if over > 0 {
        if !link.over_budget_logged {
            link.over_budget_logged = true;
            warn!(peer = %peer.short(), "a link brings new forum posts faster than allowed; the rest wait for a later reconciliation");
        }
        st.stats.over_link_rate += over;
    }
    kept
}

/// The posts of `posts` whose signatures hold, in topics we follow; a forgery
/// counts against `peer`.
fn verified(mesh: &Mesh, peer: NodeId, posts: Vec<Post>) -> Vec<Post> {
    let mut valid = Vec::with_capacity(posts.len());
    let wall = mesh.link.wall_ms();
    for p in posts {
        if let Err(e) = p.verify(wall) {
            warn!(peer = %peer.short(), post = %p.id.short(), error = %e, "refusing a post");
            if e.is_forgery() {
                mesh.link.strike(peer, "sent a forged post");
            }
            continue;
        }
        if mesh.state().topics.contains(&p.topic) {
            valid.push(p);
        }
    }
    valid
}

/// Remembers the posts the store refused (over a quota), so reconciliation
/// bringing them back costs a link's budget only once.
fn remember_refused(mesh: &Mesh, peer: NodeId, posts: &[Post], stored: &[Stored]) {
    let over_quota = stored.iter().filter(|s| **s == Stored::OverQuota).count();
    if over_quota == 0 {
        return;
    }
    debug!(peer = %peer.short(), over_quota, "posts not kept: their author's share of the topic, or the topic, is full");
    let mut st = mesh.state();
    st.stats.over_quota += over_quota as u64;
    if st.refused.len() + over_quota > MAX_REFUSED {
        st.refused.clear();
    }
    for (p, s) in posts.iter().zip(stored) {
        if *s == Stored::OverQuota {
            st.refused.insert(p.id);
        }
    }
}

/// Which of `ids` we don't have.
async fn lacking(mesh: &Arc<Mesh>, ids: Vec<PostId>) -> Vec<PostId> {
    let query = ids.clone();
    match mesh.link.with_store(move |s| s.have_posts(&query)).await {
        Ok(have) => ids
            .into_iter()
            .zip(have)
            .filter(|(_, h)| !h)
            .map(|(id, _)| id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn send(mesh: &Mesh, peer: NodeId, frame: MeshFrame) {
    send_locked(&mesh.state(), peer, frame);
}

/// Queues `frame` on `peer`'s link, if it has one and room.
fn send_locked(st: &super::MeshState, peer: NodeId, frame: MeshFrame) {
    if let Some(l) = st.links.get(&peer) {
        let _ = l.tx.try_send(frame);
    }
}

/// A gossiped post.
pub(crate) async fn receive_post(mesh: &Arc<Mesh>, peer: NodeId, post: Post) {
    for (p, new) in accept(mesh, peer, vec![post]).await {
        if new {
            broadcast(mesh, &p, Some(peer));
        } else {
            // A duplicate: this link is not on the tree. (Prune again if it
            // was lazy already: our first Prune may have been dropped.)
            let mut st = mesh.state();
            st.stats.duplicates += 1;
            if st.tree.duplicate(p.id, peer).is_some() {
                send_locked(&st, peer, MeshFrame::Prune);
            }
        }
    }
}

/// Posts found missing by reconciliation (or asked for by `Want`); false ends
/// the session (the peer is past the misbehaviour limit).
pub(crate) async fn receive_synced(mesh: &Arc<Mesh>, peer: NodeId, posts: Vec<Post>) -> bool {
    accept(mesh, peer, posts).await;
    !mesh.link.refused(&peer)
}

/// Announced posts awaited at once (each for [`GRAFT_AFTER`]). Past this a
/// link's announcements are not tracked: announcing costs a peer nothing, and
/// what gossip misses this way reconciliation fetches later.
pub(crate) const MAX_MISSING: usize = 8192;

/// The node's Plumtree: links by peer, posts by id.
pub(crate) type Tree = Plumtree<NodeId, PostId>;

/// A tree with the node's limits.
pub(crate) fn tree() -> Tree {
    Plumtree::new(GRAFT_AFTER, MAX_MISSING, MAX_IDS)
}

/// A lazy link announces posts: note the ones we lack, to graft if they don't
/// come by the tree.
pub(crate) async fn receive_ihave(mesh: &Arc<Mesh>, peer: NodeId, ids: Vec<PostId>) {
    let lacking = lacking(mesh, ids).await;
    let mut st = mesh.state();
    let dropped = st.tree.announced(peer, lacking, Instant::now()) as u64;
    if dropped > 0 {
        debug!(peer = %peer.short(), dropped, "announcements not tracked: too many awaited");
        st.stats.ihave_dropped += dropped;
    }
}

/// Grafts the posts still missing after [`GRAFT_AFTER`].
fn graft_overdue(mesh: &Mesh) {
    let mut st = mesh.state();
    for s in st.tree.overdue(Instant::now()) {
        if let Out::Graft { to, ids } = s {
            debug!(peer = %to.short(), n = ids.len(), "grafting");
            send_locked(&st, to, MeshFrame::Graft(ids));
        }
    }
}

/// The gossip driver's longest sleep: how late past
/// [`crate::NodeConfig::resync_every`] a reconciliation may start.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// Its shortest: grafts due within this of each other go together (each
/// `IHave` sets a deadline of its own, and announcing costs a peer nothing).
const GRAFT_TICK: Duration = Duration::from_millis(50);

/// Gossip's timers, with a server or without, until shutdown: grafts what
/// falls due, and reconciles dialed links every
/// [`crate::NodeConfig::resync_every`].
pub(crate) async fn drive(mesh: Arc<Mesh>) {
    let mut last_resync = Instant::now();
    loop {
        let now = Instant::now();
        let wake = mesh.state().tree.next_due().map_or(now + IDLE_TICK, |due| {
            due.clamp(now + GRAFT_TICK, now + IDLE_TICK)
        });
        tokio::select! {
            _ = mesh.link.shutdown().cancelled() => return,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        graft_overdue(&mesh);
        if last_resync.elapsed() >= mesh.link.config().resync_every {
            last_resync = Instant::now();
            resync_dialed(&mesh);
        }
    }
}

/// The peer wants posts in full again, starting with these.
pub(crate) async fn receive_graft(mesh: &Arc<Mesh>, peer: NodeId, ids: Vec<PostId>) {
    mesh.state().tree.grafted(&peer);
    let n = send_posts(mesh, peer, ids, MeshFrame::Post).await;
    mesh.state().stats.posts_sent += n;
}

/// The peer lacks these posts (reconciliation found them missing).
pub(crate) async fn receive_want(mesh: &Arc<Mesh>, peer: NodeId, ids: Vec<PostId>) {
    let n = send_posts(mesh, peer, ids, MeshFrame::Synced).await;
    mesh.state().stats.synced_sent += n;
}

/// Sends the posts with these ids that we have (in topics the peer follows),
/// waiting for room in the link's queue. Returns how many went.
async fn send_posts(
    mesh: &Arc<Mesh>,
    peer: NodeId,
    ids: Vec<PostId>,
    frame: fn(Post) -> MeshFrame,
) -> u64 {
    let mut sent = 0;
    for chunk in ids.chunks(SEND_BATCH) {
        let chunk = chunk.to_vec();
        let Ok(posts) = mesh.link.with_store(move |s| s.posts_by_id(&chunk)).await else {
            return sent;
        };
        let (tx, topics) = {
            let st = mesh.state();
            let Some(l) = st.links.get(&peer) else {
                return sent;
            };
            (l.tx.clone(), l.topics.clone())
        };
        for p in posts {
            if topics.contains(&p.topic) {
                if tx.send(frame(p)).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
        }
    }
    sent
}

/// Reconciles again every link this node dialed (called on a timer): repairs
/// what gossip dropped on a full queue while the link stayed up.
pub(crate) fn resync_dialed(mesh: &Arc<Mesh>) {
    let dialed: Vec<NodeId> = mesh
        .state()
        .links
        .iter()
        .filter(|(_, l)| l.dialer == mesh.link.id() && l.syncing.is_empty())
        .map(|(id, _)| *id)
        .collect();
    for peer in dialed {
        start_sync(mesh, peer);
    }
}

/// Starts reconciling every topic both sides follow (we dialed the link).
pub(crate) fn start_sync(mesh: &Arc<Mesh>, peer: NodeId) {
    let topics: Vec<Topic> = {
        let st = mesh.state();
        let Some(l) = st.links.get(&peer) else {
            return;
        };
        st.topics
            .iter()
            .filter(|t| l.topics.contains(*t))
            .cloned()
            .collect()
    };
    for topic in topics {
        let mesh2 = mesh.clone();
        mesh.link
            .spawn(async move { sync_topic(mesh2, peer, topic).await });
    }
}

/// Starts reconciling `topic` with every link that follows it (we just started
/// following it).
pub(crate) fn sync_everyone(mesh: &Arc<Mesh>, topic: &Topic) {
    let peers: Vec<NodeId> = mesh
        .state()
        .links
        .iter()
        .filter(|(_, l)| l.topics.contains(topic))
        .map(|(id, _)| *id)
        .collect();
    for peer in peers {
        let (mesh2, topic) = (mesh.clone(), topic.clone());
        mesh.link
            .spawn(async move { sync_topic(mesh2, peer, topic).await });
    }
}

async fn sync_topic(mesh: Arc<Mesh>, peer: NodeId, topic: Topic) {
    let t = topic.clone();
    let built = mesh
        .link
        .with_store(move |s| s.post_items(&t))
        .await
        .map(Reconciler::new);
    let mut rec = match built {
        Ok(Ok(r)) => r,
        _ => return,
    };
    let Ok(first) = rec.initiate() else { return };
    let tx = {
        let mut st = mesh.state();
        st.stats.sync_bytes += first.len() as u64;
        let Some(l) = st.links.get_mut(&peer) else {
            return;
        };
        l.syncing.insert(topic.clone(), rec);
        l.tx.clone()
    };
    let _ = tx.send(MeshFrame::SyncStart { topic, msg: first }).await;
}

/// Responder: answers one reconciliation message. The set is read at the
/// start of each reconciliation (`start`) and kept for its following rounds:
/// kept for the whole session, as it once was, the minute's re-sync never
/// offered what arrived here since the link came up.
pub(crate) async fn receive_sync(
    mesh: &Arc<Mesh>,
    peer: NodeId,
    topic: Topic,
    msg: Vec<u8>,
    start: bool,
) {
    if !mesh.state().topics.contains(&topic) {
        // We don't follow it (any more): an empty answer ends their side.
        let answer = Reconciler::new([]).and_then(|mut r| r.respond(&msg));
        if let Ok(answer) = answer {
            send(mesh, peer, MeshFrame::SyncReply { topic, msg: answer });
        }
        return;
    }
    let cached = mesh
        .state()
        .links
        .get_mut(&peer)
        .and_then(|l| l.answering.remove(&topic))
        .filter(|_| !start);
    let mut rec = match cached {
        Some(r) => r,
        None => {
            let t = topic.clone();
            match mesh.link.with_store(move |s| s.post_items(&t)).await {
                Ok(items) => match Reconciler::new(items) {
                    Ok(r) => r,
                    Err(_) => return,
                },
                Err(_) => return,
            }
        }
    };
    match rec.respond(&msg) {
        Ok(answer) => {
            let tx = {
                let mut st = mesh.state();
                st.stats.sync_bytes += (msg.len() + answer.len()) as u64;
                let Some(l) = st.links.get_mut(&peer) else {
                    return;
                };
                l.answering.insert(topic.clone(), rec);
                l.tx.clone()
            };
            // Waits for room: a dropped answer would stall the reconciliation.
            let _ = tx.send(MeshFrame::SyncReply { topic, msg: answer }).await;
        }
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "bad reconciliation message");
            mesh.link.strike(peer, "sent a bad reconciliation message");
        }
    }
}

/// Initiator: reads an answer, sends what the peer lacks, asks for what we lack,
/// and continues until the sets are reconciled.
pub(crate) async fn receive_sync_reply(mesh: &Arc<Mesh>, peer: NodeId, topic: Topic, msg: Vec<u8>) {
    let Some(mut rec) = mesh
        .state()
        .links
        .get_mut(&peer)
        .and_then(|l| l.syncing.remove(&topic))
    else {
        debug!(peer = %peer.short(), %topic, "reconciliation answer we didn't ask for");
        return;
    };
    let round = match rec.step(&msg) {
        Ok(r) => r,
        Err(e) => {
            warn!(peer = %peer.short(), error = %e, "bad reconciliation answer");
            mesh.link.strike(peer, "sent a bad reconciliation answer");
            return;
        }
    };
    let tx = {
        let mut st = mesh.state();
        let mesh = &mut *st;
        mesh.stats.sync_bytes += (msg.len() + round.next.as_ref().map_or(0, |n| n.len())) as u64;
        let Some(l) = mesh.links.get_mut(&peer) else {
            return;
        };
        if round.next.is_some() {
            l.syncing.insert(topic.clone(), rec);
        }
        l.tx.clone()
    };
    if !round.need.is_empty() {
        debug!(peer = %peer.short(), %topic, n = round.need.len(), "reconciliation: asking for posts");
    }
    for chunk in round.need.chunks(MAX_IDS) {
        if tx.send(MeshFrame::Want(chunk.to_vec())).await.is_err() {
            return;
        }
    }
    if let Some(next) = round.next {
        let _ = tx.send(MeshFrame::Sync { topic, msg: next }).await;
    }
    if !round.have.is_empty() {
        let n = send_posts(mesh, peer, round.have, MeshFrame::Synced).await;
        mesh.state().stats.synced_sent += n;
    }
}
