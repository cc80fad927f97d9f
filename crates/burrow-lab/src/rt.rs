//! Async code inside a lab namespace: a tokio runtime on a thread of its own
//! that entered the namespace first, so every socket its tasks open lives there.
//! Benchmarks and `burrow demo --lab` run whole nodes and servers this way, in
//! one process, each in its own corner of the lab.

use std::future::Future;

use tokio::sync::oneshot;

/// A single-threaded tokio runtime inside one lab namespace; dropping it stops
/// the runtime and every task on it.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts a runtime thread inside namespace `ns`.
    pub fn start(ns: &str) -> std::io::Result<NsRuntime> {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            let rt = crate::ns::enter(&ns).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            });
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = htx.send(Err(e));
                    return;
                }
            };
            let _ = htx.send(Ok(rt.handle().clone()));
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let handle = hrx
            .recv()
            .map_err(|_| std::io::Error::other("the runtime thread died"))??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `f` there and waits (blocking this thread) for its result.
    pub fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("the task ran to completion")
    }

    /// Runs `f` there; the result can be awaited from any runtime.
    pub async fn call<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.handle
            .spawn(f)
            .await
            .expect("the task ran to completion")
    }

    /// Starts `f` there in the background.
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(f);
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
