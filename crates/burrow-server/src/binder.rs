//! Name bindings with group commit: registrations that arrive together are
//! bound in one transaction, so a burst of nodes costs one sync to disk rather
//! than one each. Every registration still waits until its binding is durable
//! before its node is welcomed.

use std::sync::{Arc, Mutex};

use burrow_proto::{Name, NodeId};
use burrow_store::{NameBinding, ServerStore};
use tokio::sync::{mpsc, oneshot};

/// Most bindings in one transaction.
const BATCH: usize = 128;
/// Registrations waiting to be bound (more wait for room).
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<NameBinding, String>>;

/// The binder's handle.
#[derive(Debug, Clone)]
pub(crate) struct Binder {
    tx: mpsc::Sender<(Name, NodeId, Reply)>,
}

impl Binder {
    /// Starts the binding task on `store`; it ends when every handle is gone.
    pub(crate) fn start(store: Arc<Mutex<ServerStore>>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx));
        Binder { tx }
    }

    /// Binds `name` to `id` if it is free or already `id`'s (durably).
    pub(crate) async fn bind(&self, name: Name, id: NodeId) -> Result<NameBinding, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((name, id, reply))
            .await
            .map_err(|_| "the server is stopping".to_string())?;
        answer
            .await
            .map_err(|_| "the server is stopping".to_string())?
    }
}

async fn run(store: Arc<Mutex<ServerStore>>, mut rx: mpsc::Receiver<(Name, NodeId, Reply)>) {
    while let Some(batch) = crate::journal::recv_batch(&mut rx, BATCH).await {
        let requests: Vec<(Name, NodeId)> =
            batch.iter().map(|(n, id, _)| (n.clone(), *id)).collect();
        let store = store.clone();
        let now = burrow_proto::time::unix_ms(std::time::SystemTime::now());
        let result = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .expect("store lock is never poisoned")
                .bind_names(&requests, now)
        })
        .await;
        match result {
            Ok(Ok(bindings)) => {
                for ((_, _, reply), b) in batch.into_iter().zip(bindings) {
                    let _ = reply.send(Ok(b));
                }
            }
            Ok(Err(e)) => {
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            Err(e) => {
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
