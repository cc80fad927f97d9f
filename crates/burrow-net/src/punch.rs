//! The driver of [`burrow_proto::punch::PunchSession`]: feeds it the punch
//! datagrams the endpoint's dispatcher routes to it (by session id), sends what it
//! polls from the shared socket, and reports the outcome.
//!
//! Every address an authenticated punch datagram comes from is noted as the
//! peer's in the path table, so that QUIC packets from it reach quinn as the
//! peer's even before our side of the punch has finished.
//!
//! The caller gets the outcome as soon as it is known; the driver keeps running
//! until the session is finished (it lingers after success, answering the peer's
//! probes so that the peer succeeds too).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burrow_proto::punch::{PunchEvent, PunchSession};
use burrow_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::paths::PathTable;
use crate::socket::RawSender;

/// Punch datagrams queued for one session before more are dropped.
const SESSION_QUEUE: usize = 64;
/// Most punch sessions running at once on one endpoint.
pub const MAX_SESSIONS: usize = 64;

/// Routes from session id to the driver of that session.
pub(crate) type Routes = Arc<Mutex<HashMap<[u8; 16], mpsc::Sender<(SocketAddr, Vec<u8>)>>>>;

/// Why a punch could not start.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// Too many punches are running.
    #[error("too many hole punches in progress")]
    Busy,
    /// A punch with this session id is already running.
    #[error("this punch is already running")]
    Duplicate,
}

/// Registers `session` and drives it in a task. The receiver yields the peer's
/// address on a working path, or `None` when the punch failed.
pub(crate) fn start(
    session: PunchSession,
    raw: RawSender,
    routes: Routes,
    learn: Option<(Arc<PathTable>, NodeId)>,
) -> Result<oneshot::Receiver<Option<SocketAddr>>, PunchError> {
    let id = session.session();
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    {
        let mut r = routes.lock().expect("punch routes lock is never poisoned");
        if r.contains_key(&id) {
            return Err(PunchError::Duplicate);
        }
        if r.len() >= MAX_SESSIONS {
            return Err(PunchError::Busy);
        }
        r.insert(id, tx);
    }
    let (outcome_tx, outcome_rx) = oneshot::channel();
    tokio::spawn(drive(session, rx, raw, outcome_tx, routes, id, learn));
    Ok(outcome_rx)
}

async fn drive(
    mut s: PunchSession,
    mut rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    raw: RawSender,
    outcome: oneshot::Sender<Option<SocketAddr>>,
    routes: Routes,
    id: [u8; 16],
    learn: Option<(Arc<PathTable>, NodeId)>,
) {
    let mut outcome = Some(outcome);
    loop {
        let now = Instant::now();
        s.handle_timeout(now);
        while let Some(t) = s.poll_transmit(now) {
            if let Err(e) = raw.send(t.to, &t.data) {
                tracing::debug!(to = %t.to, error = %e, "punch probe not sent");
            }
        }
        while let Some(event) = s.poll_event() {
            let result = match event {
                PunchEvent::Success { addr } => {
                    tracing::debug!(%addr, "punch succeeded");
                    Some(addr)
                }
                PunchEvent::Failed => {
                    tracing::debug!("punch failed");
                    None
                }
            };
            if let Some(o) = outcome.take() {
                let _ = o.send(result);
            }
        }
        if s.is_finished() {
            break;
        }
        let wake = s.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            d = rx.recv() => match d {
                Some((from, data)) => {
                    if !s.handle_datagram(Instant::now(), from, &data) {
                        tracing::debug!(%from, "invalid punch datagram");
                    } else if let Some((paths, peer)) = &learn {
                        paths.learn(peer, from);
                    }
                }
                None => break,
            },
            _ = async { tokio::time::sleep_until(wake.expect("guarded by the if")).await }, if wake.is_some() => {}
        }
    }
    routes
        .lock()
        .expect("punch routes lock is never poisoned")
        .remove(&id);
}
