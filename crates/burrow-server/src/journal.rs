//! The audit log and the bans intrusion detection makes, written to the store
//! by one task in the order they happened, a batch to a transaction.
//!
//! Recording never waits: entries go into a bounded queue ([`QUEUE`]). If a
//! flood fills it, further entries are counted and dropped (and the count is
//! logged), never blocking the session that made them. Followers
//! (`admin log --follow`) get each entry once it is stored.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use burrow_store::{AuditEntry, Ban, ServerStore};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::warn;

/// Entries waiting to be written.
pub const QUEUE: usize = 4096;
/// Most entries written in one transaction.
const BATCH: usize = 256;

enum Record {
    Audit(AuditEntry),
    Ban(Ban),
    Flush(oneshot::Sender<()>),
}

/// Who made a decision, as the audit log names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The operator, through the admin socket or console.
    Operator,
    /// Intrusion detection.
    Ids,
    /// The server's ordinary rules (registrations, refusals).
    Server,
}

impl Actor {
    fn as_str(self) -> &'static str {
        match self {
            Actor::Operator => "operator",
            Actor::Ids => "ids",
            Actor::Server => "server",
        }
    }
}

/// The writer's handle.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Record>,
    follow: broadcast::Sender<AuditEntry>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Record")
    }
}

impl Journal {
    /// Starts the writer on `store`. It ends when every handle is dropped.
    pub fn start(store: Arc<Mutex<ServerStore>>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (follow, _) = broadcast::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write(store, rx, follow.clone(), dropped.clone()));
        Journal {
            tx,
            follow,
            dropped,
        }
    }

    /// Records a decision.
    pub fn log(
        &self,
        actor: Actor,
        action: &str,
        subject: impl Display,
        detail: impl Into<String>,
    ) {
        let entry = AuditEntry {
            id: 0,
            at_ms: burrow_proto::time::unix_ms(std::time::SystemTime::now()),
            actor: actor.as_str().into(),
            action: action.into(),
            subject: subject.to_string(),
            detail: detail.into(),
        };
        self.send(Record::Audit(entry));
    }

    /// Persists a ban made by intrusion detection.
    pub fn ban(&self, ban: Ban) {
        self.send(Record::Ban(ban));
    }

    /// Live entries, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditEntry> {
        self.follow.subscribe()
    }

    /// Waits until everything recorded so far is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Record::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn send(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits for one item, then takes what else is queued, up to `max` in all;
/// `None` once every sender is gone. The writers here use it to put a burst of
/// work in one transaction.
pub(crate) async fn recv_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn write(
    store: Arc<Mutex<ServerStore>>,
    mut rx: mpsc::Receiver<Record>,
    follow: broadcast::Sender<AuditEntry>,
    dropped: Arc<AtomicU64>,
) {
    let mut reported = 0;
    while let Some(batch) = recv_batch(&mut rx, BATCH).await {
        let store = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().expect("store lock is never poisoned");
            let mut entries = Vec::new();
            let mut flushes = Vec::new();
            for r in batch {
                match r {
                    Record::Audit(e) => entries.push(e),
                    Record::Ban(b) => {
                        if let Err(e) = store.put_ban(&b) {
                            warn!(error = %e, target = %b.target, "cannot store a ban");
                        }
                    }
                    Record::Flush(tx) => flushes.push(tx),
                }
            }
            let written = store.append_audit(&entries).unwrap_or_else(|e| {
                warn!(error = %e, "cannot write the audit log");
                Vec::new()
            });
            (written, flushes)
        })
        .await;
        let Ok((written, flushes)) = written else {
            continue;
        };
        for e in written {
            let _ = follow.send(e);
        }
        for f in flushes {
            let _ = f.send(());
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost > reported {
            warn!(
                dropped = lost - reported,
                "audit log entries dropped: the queue was full"
            );
            reported = lost;
        }
    }
}
