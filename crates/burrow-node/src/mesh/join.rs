//! Networks without a server: tickets, joining from one, and meeting the peers
//! of peers through introductions.
//!
//! A network is its secret ([`MeshSecret`]): the first node makes one, and every
//! ticket carries it. A node started with `--join <ticket>` dials the addresses
//! in the ticket and proves it holds the secret in its mesh Hello (the other side
//! proves it back); then the link's own connection follows. When both sides are behind
//! NATs that filter, both run `--join` with each other's ticket: their dials
//! cross and open both NATs, as in a punch.
//!
//! Linked nodes tell each other whom they are linked with (`Peers`). A node with
//! fewer links than its target ([`crate::NodeConfig::mesh_links`]) asks a mutual
//! peer to introduce it to one of those (`Introduce`); the mutual peer asks the
//! other whether it wants that (`IntroRequest`), and once it says yes
//! (`IntroAccept`) hands both sides each other's addresses and a fresh punch
//! ticket (`Introduction`), and they punch as they would after a server
//! brokered the link. A node takes only introductions it asked for: the one it
//! sought (one at a time; one that fails isn't retried for a minute), and at
//! most [`MAX_AWAITED`] it agreed to, while it has fewer than twice its target
//! of links. Any member could otherwise send introductions of its own making
//! and have every other member punch and TCP-dial addresses of its choice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_proto::mesh::{self, MeshFrame, MeshSecret, PeerAd, Ticket};
use burrow_proto::punch::PunchTicket;
use burrow_proto::{Name, NodeId};
use rand::seq::SliceRandom;
use tracing::{debug, info, warn};

use crate::error::TicketError;

use super::{Mesh, MeshState};

/// The store setting holding the network's secret.
pub(crate) const SECRET_SETTING: &str = "mesh_secret";
/// How often the mesh is looked after (grafts, announcements, introductions).
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);
/// An introduction that hasn't produced a link by then has failed...
const INTRO_TIMEOUT: Duration = Duration::from_secs(15);
/// ...and that peer isn't asked for again until this has passed.
const INTRO_RETRY: Duration = Duration::from_secs(60);
/// How long one address of a ticket gets to answer.
const JOIN_ATTEMPT: Duration = Duration::from_secs(3);
/// Longest wait between attempts to join from a ticket.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Introductions a node agreed to (`IntroAccept`) and waits for at once.
const MAX_AWAITED: usize = 2;

/// Introductions in progress.
#[derive(Debug, Default)]
pub(crate) struct Intros {
    /// The one we asked for: whom, and since when.
    pending: Option<(NodeId, Instant)>,
    /// Peers whose introduction failed, and when.
    failed: HashMap<NodeId, Instant>,
    /// Introductions we agreed to: the peer, who introduces it, since when.
    awaited: HashMap<NodeId, (NodeId, Instant)>,
    /// The links we last told our links about.
    announced: Vec<NodeId>,
}

/// The network's secret: the ticket's when joining, else the one kept in the
/// store, else a new one (this node starts a network).
pub(crate) fn secret(
    store: &mut burrow_store::NodeStore,
    join: &[Ticket],
) -> Result<MeshSecret, burrow_store::StoreError> {
    let secret = match join.first() {
        Some(t) => t.secret,
        None => match store.setting(SECRET_SETTING)? {
            Some(b) if b.len() == 16 => MeshSecret(b.try_into().expect("length checked")),
            _ => MeshSecret::random(&mut rand::thread_rng()),
        },
    };
    store.set_setting(SECRET_SETTING, &secret.0)?;
    Ok(secret)
}

/// Starts the mesh's background work: gossip's timers; serverless, the
/// maintenance tick and a join loop per ticket.
pub(crate) fn start(mesh: &Arc<Mesh>) {
    mesh.link.spawn(super::gossip::drive(mesh.clone()));
    if mesh.state().secret.is_some() {
        mesh.link.spawn(maintain(mesh.clone()));
    }
    for ticket in mesh.link.config().join.clone() {
        if ticket.id == mesh.link.id() {
            warn!("ignoring a ticket to this node itself");
            continue;
        }
        mesh.link.spawn(join_loop(mesh.clone(), ticket));
    }
}

/// Addresses we may be reached at, best first: public (as the server or a peer
/// sees us), then the machine's own.
pub(crate) fn own_addrs(mesh: &Mesh, st: &MeshState) -> Vec<SocketAddr> {
    let mut out = mesh.link.own_addrs(st.observed);
    out.truncate(mesh::MAX_ADDRS);
    out
}

/// This node's ticket.
pub(crate) fn ticket(mesh: &Mesh) -> Result<Ticket, TicketError> {
    let st = mesh.state();
    let secret = st.secret.ok_or(TicketError::NotServerless)?;
    let addrs = own_addrs(mesh, &st);
    if addrs.is_empty() {
        return Err(TicketError::NoAddress);
    }
    Ok(Ticket {
        id: mesh.link.id(),
        secret,
        addrs,
    })
}

/// Joins from `ticket`, and again whenever this node is left without links.
async fn join_loop(mesh: Arc<Mesh>, ticket: Ticket) {
    let mut wait = Duration::from_secs(1);
    let mut joined = false;
    loop {
        let (linked_to_it, any) = {
            let st = mesh.state();
            (st.links.contains_key(&ticket.id), !st.links.is_empty())
        };
        if !linked_to_it && (!joined || !any) {
            match attempt(&mesh, &ticket).await {
                Ok(()) => {
                    joined = true;
                    wait = Duration::from_secs(1);
                }
                Err(e) => {
                    warn!(peer = %ticket.id.short(), error = %e, retry_in = ?wait, "cannot join");
                    mesh.link.emit(crate::NodeEvent::ConnectFailed {
                        name: ticket.id.short(),
                        error: format!("{e}; trying again in {} s", wait.as_secs()),
                    });
                    wait = (wait * 2).min(JOIN_BACKOFF_MAX);
                }
            }
        }
        tokio::select! {
            _ = mesh.link.shutdown().cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Dials the ticket's addresses in turn; the first that answers carries the link.
async fn attempt(mesh: &Arc<Mesh>, ticket: &Ticket) -> Result<(), String> {
    let mut last = String::from("the ticket has no address this node can use");
    for &addr in ticket.addrs.iter().filter(|a| mesh.link.takes(**a)) {
        debug!(peer = %ticket.id.short(), %addr, "joining");
        match mesh
            .link
            .dial_at(ticket.id, addr, mesh::ALPN, JOIN_ATTEMPT)
            .await
        {
            Ok(conn) => {
                let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                info!(peer = %ticket.id.short(), %addr, "joined");
                let mesh2 = mesh.clone();
                let id = ticket.id;
                mesh.link.spawn(async move {
                    super::run(mesh2, id, conn, send, recv, true).await;
                });
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    mesh.link.forget_direct(&ticket.id);
    Err(last)
}

/// A mesh link came up. Serverless: tell it whom we are linked with, and (as the
/// side that dialed) open the link's own connection if there is none yet: serverless,
/// the mesh connection comes first, because its Hello proves membership.
pub(crate) fn linked(mesh: &Arc<Mesh>, peer: NodeId, dialed: bool) {
    let dial = {
        let mut st = mesh.state();
        if st.secret.is_none() {
            return;
        }
        if st.intro.pending.is_some_and(|(p, _)| p == peer) {
            st.intro.pending = None;
        }
        let ads = link_ads(&st);
        if let Some(l) = st.links.get(&peer) {
            let _ = l.tx.try_send(MeshFrame::Peers(ads));
        }
        dialed && !mesh.link.linked(&peer)
    };
    if dial {
        mesh.link.dial_link(peer);
    }
}

/// Our links, as we tell our links about them.
fn link_ads(st: &MeshState) -> Vec<PeerAd> {
    let mut ads: Vec<PeerAd> = st
        .links
        .iter()
        .map(|(id, l)| PeerAd {
            id: *id,
            name: l.name.clone(),
        })
        .collect();
    ads.sort_by_key(|a| a.id);
    ads.truncate(mesh::MAX_PEER_ADS);
    ads
}

/// A link told us whom it is linked with.
pub(crate) fn receive_peers(mesh: &Mesh, from: NodeId, mut list: Vec<PeerAd>) {
    let mut st = mesh.state();
    if st.secret.is_none() {
        return;
    }
    list.retain(|a| a.id != mesh.link.id() && a.id != from);
    if let Some(l) = st.links.get_mut(&from) {
        l.peers = list;
    }
}

/// `from` asks us to introduce it to `target`, a peer of ours: we ask
/// `target` whether it wants that.
pub(crate) fn introduce(mesh: &Mesh, from: NodeId, target: NodeId) {
    let st = mesh.state();
    if st.secret.is_none() || target == from || target == mesh.link.id() {
        return;
    }
    let (Some(a), Some(c)) = (st.links.get(&from), st.links.get(&target)) else {
        debug!(peer = %from.short(), target = %target.short(), "cannot introduce: not linked");
        return;
    };
    let _ = c.tx.try_send(MeshFrame::IntroRequest {
        peer: from,
        name: a.name.clone(),
    });
}

/// `via` tells us `from` asked to meet us: we agree if we have room.
pub(crate) fn intro_requested(mesh: &Mesh, via: NodeId, from: NodeId, name: Name) {
    let mut st = mesh.state();
    if st.secret.is_none() || from == mesh.link.id() || from == via || mesh.link.refused(&from) {
        return;
    }
    let now = Instant::now();
    st.intro
        .awaited
        .retain(|_, (_, since)| now.duration_since(*since) < INTRO_TIMEOUT);
    let linked = st.links.contains_key(&from) || mesh.link.linked(&from);
    let full = st.links.len() >= 2 * mesh.link.config().mesh_links
        || st.intro.awaited.len() >= MAX_AWAITED;
    if linked || full || st.intro.awaited.contains_key(&from) {
        debug!(peer = %from.short(), %name, via = %via.short(), linked, full, "introduction declined");
        return;
    }
    let Some(v) = st.links.get(&via) else {
        return;
    };
    if v.tx.try_send(MeshFrame::IntroAccept { peer: from }).is_ok() {
        st.intro.awaited.insert(from, (via, now));
    }
}

/// `from` agreed to meet `peer`, who asked us for it: we introduce them.
pub(crate) fn intro_accepted(mesh: &Mesh, from: NodeId, peer: NodeId) {
    let st = mesh.state();
    if st.secret.is_none() || peer == from || peer == mesh.link.id() {
        return;
    }
    // `peer` takes the introduction only if it is still looking for `from`,
    // so nothing is checked here beyond both being linked with us.
    let (Some(a), Some(c)) = (st.links.get(&peer), st.links.get(&from)) else {
        return;
    };
    let punch = PunchTicket::random(&mut rand::thread_rng());
    info!(a = %a.name, c = %c.name, "introducing");
    let _ = a.tx.try_send(MeshFrame::Introduction {
        peer: from,
        name: c.name.clone(),
        candidates: c.addrs.clone(),
        punch,
        dial: true,
    });
    let _ = c.tx.try_send(MeshFrame::Introduction {
        peer,
        name: a.name.clone(),
        candidates: a.addrs.clone(),
        punch,
        dial: false,
    });
}

/// A mutual peer (`via`) introduces us to `other`: punch, and dial if told to.
pub(crate) fn introduced(
    mesh: &Arc<Mesh>,
    via: NodeId,
    other: NodeId,
    name: Name,
    candidates: Vec<SocketAddr>,
    punch: PunchTicket,
    dial: bool,
) {
    {
        let mut st = mesh.state();
        if st.secret.is_none() || other == mesh.link.id() || mesh.link.refused(&other) {
            return;
        }
        let linked = st.links.contains_key(&other) || mesh.link.linked(&other);
        // Only what we asked for: the introduction we sought (we dial), or one
        // we agreed to meet from this very introducer (we wait to be dialed).
        let asked = if dial {
            st.intro.pending.is_some_and(|(p, _)| p == other)
        } else {
            let agreed = st.intro.awaited.get(&other).copied();
            agreed.is_some_and(|(v, since)| v == via && since.elapsed() < INTRO_TIMEOUT)
                && st.intro.awaited.remove(&other).is_some()
        };
        if !asked {
            debug!(peer = %other.short(), via = %via.short(), dial, "introduction not asked for; ignored");
            return;
        }
        // Admitted for the punch and the mesh connection; its link and services
        // still wait for its mesh Hello to prove it a member.
        if linked || !mesh.link.admit(other, &name) {
            return;
        }
    }
    info!(peer = %other.short(), %name, via = %via.short(), dial, "introduced");
    mesh.link.punch_to(other, &candidates, punch, dial);
}

/// Looks after a serverless mesh until shutdown: tells links about link
/// changes and seeks introductions while below the target.
async fn maintain(mesh: Arc<Mesh>) {
    loop {
        tokio::select! {
            _ = mesh.link.shutdown().cancelled() => return,
            _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
        }
        let mut st = mesh.state();
        announce(&mut st);
        seek(&mesh, &mut st);
    }
}

/// Tells every link our links, when they changed.
fn announce(st: &mut MeshState) {
    let ads = link_ads(st);
    let ids: Vec<NodeId> = ads.iter().map(|a| a.id).collect();
    if ids == st.intro.announced {
        return;
    }
    for l in st.links.values() {
        let _ = l.tx.try_send(MeshFrame::Peers(ads.clone()));
    }
    st.intro.announced = ids;
}

/// Asks for an introduction to a peer of a peer, while below the target.
fn seek(mesh: &Mesh, st: &mut MeshState) {
    let now = Instant::now();
    let intro = &mut st.intro;
    if let Some((peer, since)) = intro.pending {
        if now.duration_since(since) < INTRO_TIMEOUT {
            return;
        }
        debug!(peer = %peer.short(), "introduction timed out");
        intro.failed.insert(peer, now);
        intro.pending = None;
    }
    intro
        .failed
        .retain(|_, t| now.duration_since(*t) < INTRO_RETRY);
    if st.links.len() >= mesh.link.config().mesh_links {
        return;
    }
    let mut options: Vec<(NodeId, NodeId)> = Vec::new();
    for (via, link) in &st.links {
        for ad in &link.peers {
            let known = st.links.contains_key(&ad.id)
                || mesh.link.linked(&ad.id)
                || st.intro.failed.contains_key(&ad.id)
                || mesh.link.refused(&ad.id);
            if !known && ad.id != mesh.link.id() {
                options.push((ad.id, *via));
            }
        }
    }
    let Some(&(target, via)) = options.choose(&mut rand::thread_rng()) else {
        return;
    };
    st.intro.pending = Some((target, now));
    if let Some(l) = st.links.get(&via) {
        debug!(target = %target.short(), via = %via.short(), "asking for an introduction");
        let _ = l.tx.try_send(MeshFrame::Introduce { peer: target });
    }
}
