//! The file tracker: which node offers which file, by hash, name and size.
//!
//! The server never sees file contents, only what nodes say they offer: claims,
//! which only the data proves. So an entry is a hash *and* a size, and each
//! provider's name for the file is kept beside it: a node that claims another
//! size for a hash gets an entry of its own and can't make honest providers
//! look like liars, and one that names a file differently is shown under its
//! own name. Sizes past [`MAX_FILE_SIZE`] are not recorded. Offers live in the
//! server's store ([`burrow_store::ServerStore`]), so they outlast a server
//! restart; a node replaces its whole list after each registration
//! (`Offer{replace: true}` first), which drops what it no longer has, and the
//! offers of nodes gone for [`OFFER_TTL`] are forgotten ([`forget_stale`]). A
//! search lists, per file, the providers online now and how many others are
//! offline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use burrow_proto::files::{MAX_FILE_SIZE, MAX_NAME};
use burrow_proto::rendezvous::{
    ClientMsg, Provider, Query, Refusal, ServerMsg, TrackerEntry, MAX_OFFERS, MAX_PROVIDERS,
    MAX_RESULTS, OFFERS_PER_FRAME,
};
use burrow_proto::NodeId;
use burrow_store::{Offered, ServerStore, StoreError};
use tracing::{debug, warn};

use crate::broker::Registry;

/// Handles one tracker message from `from`; returns the answer, if any.
/// Offers are written through the store's connection, searches read through
/// `stores.1`, a read-only one. `online` turns stored offers into search
/// results ([`entries`] with the registry, which it locks only for that).
pub(crate) async fn handle(
    stores: (&Arc<Mutex<ServerStore>>, &Arc<Mutex<ServerStore>>),
    online: impl FnOnce(Vec<Offered>) -> Vec<TrackerEntry>,
    from: NodeId,
    msg: ClientMsg,
) -> Option<ServerMsg> {
    let (store, reader) = (stores.0.clone(), stores.1.clone());
    let now_ms = burrow_proto::time::unix_ms(SystemTime::now());
    match msg {
        ClientMsg::Offer { replace, mut files } => {
            let ok = if files.len() > OFFERS_PER_FRAME {
                false
            } else {
                // No honest node shares a file this large: not worth a row.
                let before = files.len();
                files.retain(|f| f.size <= MAX_FILE_SIZE);
                if files.len() < before {
                    warn!(node = %from.short(), dropped = before - files.len(), "offers larger than any file burrow shares");
                }
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
                    blocking(reader, move |s| s.search_name(&text, MAX_RESULTS)).await
                }
                Query::Name(_) => None,
                Query::Hash(hash) => blocking(reader, move |s| s.lookup(&hash)).await,
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
            let online: Vec<Provider> = o
                .providers
                .iter()
                .filter_map(|(id, name)| {
                    registry.online_info(id).map(|peer| Provider {
                        peer: peer.clone(),
                        name: name.clone(),
                    })
                })
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

/// How long the offers of a node that is not online are kept: a node
/// renews its offers each time it registers, so these are nodes gone a month.
pub const OFFER_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Forgets the offers of nodes that have not registered for [`OFFER_TTL`] and
/// are not online now (`online` says which are), up to a thousand nodes a
/// call. Returns how many it forgot.
pub(crate) async fn forget_stale(
    store: &Arc<Mutex<ServerStore>>,
    online: impl Fn(&NodeId) -> bool,
) -> usize {
    let cutoff =
        burrow_proto::time::unix_ms(SystemTime::now()).saturating_sub(OFFER_TTL.as_millis() as u64);
    let Some(stale) = blocking(store.clone(), move |s| s.stale_offerers(cutoff, 1000)).await else {
        return 0;
    };
    let gone: Vec<NodeId> = stale.into_iter().filter(|id| !online(id)).collect();
    let n = gone.len();
    if n > 0 {
        blocking(store.clone(), move |s| s.forget_offers(&gone)).await;
        debug!(nodes = n, "forgot the offers of nodes long gone");
    }
    n
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
