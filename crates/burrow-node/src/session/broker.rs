//! The broker's messages about one peer: a request waiting, coming in,
//! accepted, closed or refused, and the punches that make and refresh a
//! link. Each answers the operation waiting on the peer, if it is its.

use std::sync::{Arc, MutexGuard};

use burrow_proto::rendezvous::{CloseReason, Direction, LinkOffer, PeerInfo, Refusal};
use burrow_proto::NodeId;
use tracing::warn;

use crate::contacts::{self, Answer};
use crate::event::NodeEvent;
use crate::link::Inner;
use crate::peers;
use crate::state::RequestOp;
use crate::state::State;

/// The server holds our request to `peer`.
pub(super) fn pending(st: &mut State, peer: NodeId) {
    if let Some(p) = st.peers.get_mut(&peer) {
        p.request = Some(Direction::Outgoing);
    }
    resolve_waiter(st, peer, |op| op == RequestOp::Connect, Ok(()));
}

/// `peer` asks us for a link: the settings answer, or the user is asked.
pub(super) fn incoming(inner: &Arc<Inner>, mut st: MutexGuard<'_, State>, peer: PeerInfo) {
    let name = peer.name.to_string();
    let id = peer.id;
    let Some(p) = st.mark_online(peer) else {
        warn!(%name, "peer table full; ignoring a connect request");
        return;
    };
    p.request = Some(Direction::Incoming);
    let answer = contacts::answer(&mut st, &id);
    drop(st);
    match answer {
        Answer::Ask => inner.emit(NodeEvent::IncomingRequest { name }),
        other => contacts::answer_for_user(inner, id, name, other),
    }
}

/// The server made the link (we asked and were accepted, or we accepted).
pub(super) fn accepted(inner: &Arc<Inner>, mut st: MutexGuard<'_, State>, offer: LinkOffer) {
    let (peer, direction) = (offer.peer, offer.direction);
    if let Some(p) = st.peers.get_mut(&peer) {
        p.accepted = true;
        if direction == Direction::Incoming {
            // Our part is done; the requester dials us now.
            p.request = None;
        }
    }
    let op = match direction {
        Direction::Outgoing => RequestOp::Connect,
        Direction::Incoming => RequestOp::Accept,
    };
    resolve_waiter(&mut st, peer, |o| o == op, Ok(()));
    drop(st);
    peers::link(inner, offer);
    if direction == Direction::Incoming {
        inner.spawn(peers::admission_deadline(inner.clone(), peer))
    }
}

/// A fresh punch for a link we have; a stale one is released.
pub(super) fn punch(inner: &Arc<Inner>, st: MutexGuard<'_, State>, offer: LinkOffer) {
    let ours = st
        .peers
        .get(&offer.peer)
        .is_some_and(|p| p.connected() || p.accepted);
    drop(st);
    if ours {
        peers::link(inner, offer);
    } else {
        peers::unlink(inner, offer.peer);
    }
}

/// A request between us ended without a link (rejected, cancelled, expired).
pub(super) fn closed(
    inner: &Arc<Inner>,
    mut st: MutexGuard<'_, State>,
    peer: NodeId,
    direction: Direction,
    reason: CloseReason,
) {
    let name = st.name_of(&peer);
    if let Some(p) = st.peers.get_mut(&peer) {
        p.request = None;
        // The request is over: only a live connection keeps the peer admitted.
        p.accepted = p.connected();
    }
    let answered = match (direction, reason) {
        (Direction::Incoming, CloseReason::Rejected) => Some(RequestOp::Reject),
        (Direction::Outgoing, CloseReason::Cancelled) => Some(RequestOp::Cancel),
        _ => None,
    };
    resolve_waiter(&mut st, peer, |op| Some(op) == answered, Ok(()));
    st.forget_idle(&peer);
    drop(st);
    inner.emit(NodeEvent::RequestClosed {
        name,
        direction,
        reason,
    });
}

/// The server refused what we asked about `peer`.
pub(super) fn refused(st: &mut State, peer: NodeId, reason: Refusal) {
    if let Some(p) = st.peers.get_mut(&peer) {
        if !p.connected() {
            p.accepted = false;
        }
    }
    resolve_waiter(st, peer, |_| true, Err(reason));
}

/// Answers the operation waiting on `peer`, if `answers` says this reply is its.
fn resolve_waiter(
    st: &mut State,
    peer: NodeId,
    answers: impl Fn(RequestOp) -> bool,
    result: Result<(), Refusal>,
) {
    if st.waiters.get(&peer).is_some_and(|(op, _)| answers(*op)) {
        if let Some((_, w)) = st.waiters.remove(&peer) {
            let _ = w.send(result);
        }
    }
}
