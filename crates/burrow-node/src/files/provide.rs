//! One provider's part of a download: asking it for a link if we have none,
//! then [`STREAMS_PER_PROVIDER`] workers taking pieces from the plan until it
//! is done or the provider fails.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use burrow_proto::schedule::Failure;
use burrow_proto::NodeId;
use tokio::sync::mpsc;
use tracing::warn;

use super::fetch::{fetch_piece, PieceError, Take, STREAMS_PER_PROVIDER};
use super::plan::Plan;
use super::Files;
use crate::api::GetUpdate;
use crate::handle::LinkHandle;

/// Opens a files connection to `peer` over our link with it (direct or relayed).
pub(crate) async fn dial_files(
    link: &LinkHandle,
    peer: NodeId,
) -> Result<quinn::Connection, burrow_net::ConnectError> {
    link.connect(peer, burrow_proto::files::ALPN).await
}

/// How one provider's part of a download ended.
pub(super) struct ProviderEnd {
    pub name: String,
    pub id: NodeId,
    pub sent: u64,
    pub error: Option<PieceError>,
}

/// One of a provider's [`STREAMS_PER_PROVIDER`] workers: takes pieces from
/// the plan and fetches them on its own stream until the plan is done or the
/// provider fails (the first failure stops them all).
struct Worker {
    plan: Arc<Plan>,
    conn: quinn::Connection,
    id: NodeId,
    sent: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Option<PieceError>>>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    async fn run(self) {
        while !self.stop.load(Ordering::Relaxed) {
            let piece = match self.plan.take(self.id) {
                Take::Done => return,
                Take::Wait => {
                    self.plan.wait(Duration::from_millis(200)).await;
                    continue;
                }
                Take::Piece(p) => p,
            };
            let spans = self.plan.missing_spans(piece);
            let result = if spans.is_empty() {
                Ok(())
            } else {
                fetch_piece(&self.plan, &self.conn, spans, &self.sent).await
            };
            match result {
                Ok(()) => {
                    self.plan.put_back(piece);
                    if self.plan.write_back_due() {
                        let plan = self.plan.clone();
                        tokio::task::spawn_blocking(move || plan.write_back());
                    }
                }
                Err(PieceError::Disk(e)) => {
                    self.plan.fail(format!("cannot write the download: {e}"));
                    self.plan.put_back(piece);
                    return;
                }
                Err(e) => {
                    // Stop this provider's workers before its piece is free
                    // for another of them to take, and name the first cause
                    // (the others' errors follow from cutting it off).
                    self.stop.store(true, Ordering::Relaxed);
                    let how = match e {
                        PieceError::Lied(_) => Failure::Lied,
                        PieceError::Gone(_) => Failure::Gone,
                        _ => Failure::Lost,
                    };
                    self.failed
                        .lock()
                        .expect("failed lock is never poisoned")
                        .get_or_insert(e);
                    if self.plan.failed(self.id, piece, how) {
                        // A liar misbehaved; one without the file only
                        // has nothing for us.
                        let code = if how == Failure::Lied {
                            burrow_net::Close::Misbehaved
                        } else {
                            burrow_net::Close::Done
                        };
                        self.conn.close(code.code(), b"dropped");
                    }
                    return;
                }
            }
        }
    }
}

/// One provider's part: connect (asking, if we are not linked yet), then run
/// [`STREAMS_PER_PROVIDER`] workers until the plan is done or the provider fails.
pub(super) async fn provide(
    files: Arc<Files>,
    plan: Arc<Plan>,
    id: NodeId,
    name: String,
    active: Arc<AtomicUsize>,
    updates: mpsc::Sender<GetUpdate>,
) -> ProviderEnd {
    let sent = Arc::new(AtomicU64::new(0));
    let end = |error| ProviderEnd {
        name: name.clone(),
        id,
        sent: 0,
        error,
    };
    if let Err(why) = link_with(&files.link, id, &name, &updates).await {
        return end(Some(PieceError::Gone(why)));
    }
    let conn = match dial_files(&files.link, id).await {
        Ok(c) => c,
        Err(e) => return end(Some(PieceError::Lost(e.to_string()))),
    };
    active.fetch_add(1, Ordering::Relaxed);
    let failed = Arc::new(std::sync::Mutex::new(None::<PieceError>));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..STREAMS_PER_PROVIDER {
        let worker = Worker {
            plan: plan.clone(),
            conn: conn.clone(),
            id,
            sent: sent.clone(),
            failed: failed.clone(),
            stop: stop.clone(),
        };
        workers.spawn(tracing::Instrument::in_current_span(worker.run()));
    }
    while workers.join_next().await.is_some() {}
    active.fetch_sub(1, Ordering::Relaxed);
    conn.close(burrow_net::Close::Done.code(), b"done");
    let error = failed.lock().expect("failed lock is never poisoned").take();
    if let Some(e) = &error {
        warn!(provider = %id.short(), error = ?e, "provider dropped");
    }
    ProviderEnd {
        name: name.clone(),
        id,
        sent: sent.load(Ordering::Relaxed),
        error,
    }
}

/// Makes sure we have a link with `id`: asks for one if needed and waits for the
/// provider to accept (its policy decides who may download).
pub(super) async fn link_with(
    link: &LinkHandle,
    id: NodeId,
    name: &str,
    updates: &mpsc::Sender<GetUpdate>,
) -> Result<(), String> {
    let me = link.config().name.to_string();
    let asking = updates.send(GetUpdate::Notice(format!(
        "asking {name} for a connection; they must accept (burrow accept {me})"
    )));
    link.ensure_link(id, async {
        let _ = asking.await;
    })
    .await
}
