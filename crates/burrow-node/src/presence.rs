//! Presence on a server that announces only watched nodes
//! ([`PresenceScope::Watched`]): the node tells the server whom it watches (its
//! contacts; the server watches links for it) after every Welcome, and finds
//! anyone else by name when the user names them.

use std::sync::Arc;

use burrow_proto::rendezvous::{ClientMsg, PresenceScope, WATCH_PER_FRAME};
use burrow_proto::{Name, NodeId};
use tokio::sync::oneshot;
use tracing::debug;

use crate::error::PeerError;
use crate::link::{Inner, SERVER_ANSWER_TIMEOUT};
use crate::state::{resolve, State};

/// Whom the node asks the server to watch: its contacts and linked peers.
fn watch_list(st: &State) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = st.contacts.ids().collect();
    ids.extend(
        st.peers
            .iter()
            .filter(|(_, p)| p.connected() || p.accepted)
            .map(|(id, _)| *id),
    );
    ids.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    ids.dedup();
    ids
}

/// Sends the watch list (after a Welcome). Queued in the session's outbox.
pub(crate) fn send_watches(st: &State) {
    if st.presence != PresenceScope::Watched {
        return;
    }
    let Some(tx) = &st.server_tx else { return };
    for ids in watch_list(st).chunks(WATCH_PER_FRAME) {
        if tx.try_send(ClientMsg::Watch { ids: ids.to_vec() }).is_err() {
            debug!("outbox full; the watch list goes with the next session");
            return;
        }
    }
}

/// Tells the server to watch (`watch`) or stop watching `id`.
pub(crate) fn set_watch(inner: &Arc<Inner>, id: NodeId, watch: bool) {
    let st = inner.state();
    if st.presence != PresenceScope::Watched {
        return;
    }
    if let Some(tx) = &st.server_tx {
        let ids = vec![id];
        let msg = if watch {
            ClientMsg::Watch { ids }
        } else {
            ClientMsg::Unwatch { ids }
        };
        let _ = tx.try_send(msg);
    }
}

impl Inner {
    /// Makes sure a peer the user named is in the peer table: if no known peer
    /// matches and it is a name, asks the server who is online under it. What
    /// can't be found is left for [`resolve`] to report.
    pub(crate) async fn find_peer(self: &Arc<Self>, peer: &str) {
        let (query_id, rx, tx, name) = {
            let mut st = self.state();
            match resolve(&st, peer) {
                Err(PeerError::Unknown(_)) => {}
                _ => return,
            }
            let Ok(name) = peer.trim().parse::<Name>() else {
                return;
            };
            let Some(tx) = st.server_tx.clone() else {
                return;
            };
            st.next_query = st.next_query.wrapping_add(1);
            let query_id = st.next_query;
            let (otx, orx) = oneshot::channel();
            st.lookups.insert(query_id, otx);
            (query_id, orx, tx, name)
        };
        let found = match tx.send(ClientMsg::Lookup { query_id, name }).await {
            Ok(()) => tokio::time::timeout(SERVER_ANSWER_TIMEOUT, rx).await,
            Err(_) => return,
        };
        let mut st = self.state();
        st.lookups.remove(&query_id);
        if let Ok(Ok(Some(info))) = found {
            st.mark_online(info);
        }
    }
}
