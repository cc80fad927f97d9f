//! The file tracker: which node offers which file, by hash, name and size.
//!
//! The server never sees file contents, only what nodes say they offer. Offers
//! live in the server's store ([`burrow_store::ServerStore`]), so they outlast a
//! server restart; a node replaces its whole list after each registration
//! (`Offer{replace: true}` first), which drops what it no longer has. A search
//! lists, per file, the providers online now and how many others are offline.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use burrow_proto::files::MAX_NAME;
use burrow_proto::rendezvous::{
    ClientMsg, Query, Refusal, ServerMsg, TrackerEntry, MAX_OFFERS, MAX_PROVIDERS, MAX_RESULTS,
    OFFERS_PER_FRAME,
};
use burrow_proto::NodeId;
use burrow_store::{Offered, ServerStore, StoreError};
use tracing::{debug, warn};

use crate::broker::Registry;

/// Handles one tracker message from `from`; returns the answer, if any.
/// `online` turns stored offers into search results ([`entries`] with the
/// registry, which it locks only for that).
pub(crate) async fn handle(
    store: &Arc<Mutex<ServerStore>>,
    online: impl FnOnce(Vec<Offered>) -> Vec<TrackerEntry>,
    from: NodeId,
    msg: ClientMsg,
) -> Option<ServerMsg> {
    let store = store.clone();
    let now_ms = burrow_proto::time::unix_ms(SystemTime::now());
    match msg {
        ClientMsg::Offer { replace, files } => {
            let ok = if files.len() > OFFERS_PER_FRAME {
                false
            } else {
                let n = files.len();
                let result = blocking(store, move |s| {
                    s.offer(&from, replace, &files, MAX_OFFERS, now_ms)
                })
                .await;
                debug!(node = %from.short(), files = n, replace, ok = ?result, "offer");
                result.unwrap_or(true)
            };
            (!ok).then_some(ServerMsg::Refused {
                peer: None,
                reason: Refusal::TooManyOffers,
            })
        }
        ClientMsg::Unoffer { hash } => {
            blocking(store, move |s| s.unoffer(&from, &hash)).await;
            None
        }
        ClientMsg::Search { query_id, query } => {
            let found = match query {
                Query::Name(text) if text.len() <= MAX_NAME => {
                    blocking(store, move |s| s.search_name(&text, MAX_RESULTS)).await
                }
                Query::Name(_) => None,
                Query::Hash(hash) => blocking(store, move |s| s.lookup(&hash))
                    .await
                    .map(|o| o.into_iter().collect()),
            };
            let results = online(found.unwrap_or_default());
            Some(ServerMsg::SearchResults { query_id, results })
        }
        _ => None,
    }
}

/// Search results as nodes see them: online providers named, offline ones
/// counted, files with most online providers first.
pub(crate) fn entries(registry: &Registry, found: Vec<Offered>) -> Vec<TrackerEntry> {
    let mut out: Vec<TrackerEntry> = found
        .into_iter()
        .map(|o| {
            let online: Vec<_> = o
                .providers
                .iter()
                .filter_map(|id| registry.online_info(id).cloned())
                .collect();
            let offline = (o.providers.len() - online.len()) as u32;
            TrackerEntry {
                file: o.file,
                providers: online.into_iter().take(MAX_PROVIDERS).collect(),
                offline,
            }
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.providers.len()));
    out
}

/// Runs `f` on the store on a blocking thread; a failure is logged and `None`.
async fn blocking<T: Send + 'static>(
    store: Arc<Mutex<ServerStore>>,
    f: impl FnOnce(&mut ServerStore) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let result = tokio::task::spawn_blocking(move || {
        f(&mut store.lock().expect("store lock is never poisoned"))
    })
    .await;
    match result {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!(error = %e, "tracker store failed");
            None
        }
        Err(e) => {
            warn!(error = %e, "tracker task failed");
            None
        }
    }
}
