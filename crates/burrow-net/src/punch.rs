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

use burrow_proto::punch::{Local, Method, PunchEvent, PunchSession};
use burrow_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::paths::PathTable;
use crate::side::{BirthdaySlot, SideSocket, Via};
use crate::socket::RawSender;

/// Punch datagrams queued for one session before more are dropped (a birthday
/// punch's 256 side sockets may all answer at once).
pub(crate) const SESSION_QUEUE: usize = 512;
/// Most punch sessions running at once on one endpoint.
pub const MAX_SESSIONS: usize = 64;

/// A punch datagram for a session: the socket it came in on, its source, its bytes.
pub(crate) type Inbound = (Local, SocketAddr, Vec<u8>);

/// Routes from session id to the driver of that session.
pub(crate) type Routes = Arc<Mutex<HashMap<[u8; 16], mpsc::Sender<Inbound>>>>;

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

/// The path a punch found.
#[derive(Clone, Debug)]
pub struct Punched {
    /// The peer's address on it.
    pub addr: SocketAddr,
    /// What found it.
    pub method: Method,
    /// The side socket it leaves from, when it isn't the endpoint's own socket
    /// (set it with [`PathTable::set_direct_via`]).
    pub via: Option<Via>,
}

/// A punch ready to run: its session, its inbox, and its side sockets (if any).
pub(crate) struct Prepared {
    pub(crate) session: PunchSession,
    pub(crate) rx: mpsc::Receiver<Inbound>,
    pub(crate) tx: mpsc::Sender<Inbound>,
    pub(crate) sides: Vec<Arc<SideSocket>>,
    pub(crate) slot: Option<BirthdaySlot>,
}

/// Registers the session and drives it in a task. The receiver yields the path
/// found, or `None` when the punch failed.
pub(crate) fn start(
    p: Prepared,
    raw: RawSender,
    routes: Routes,
    learn: Option<(Arc<PathTable>, NodeId)>,
) -> Result<oneshot::Receiver<Option<Punched>>, PunchError> {
    let id = p.session.session();
    {
        let mut r = routes.lock().expect("punch routes lock is never poisoned");
        if r.contains_key(&id) {
            return Err(PunchError::Duplicate);
        }
        if r.len() >= MAX_SESSIONS {
            return Err(PunchError::Busy);
        }
        r.insert(id, p.tx.clone());
    }
    let (outcome_tx, outcome_rx) = oneshot::channel();
    tokio::spawn(drive(p, raw, outcome_tx, routes, id, learn));
    Ok(outcome_rx)
}

async fn drive(
    p: Prepared,
    raw: RawSender,
    outcome: oneshot::Sender<Option<Punched>>,
    routes: Routes,
    id: [u8; 16],
    learn: Option<(Arc<PathTable>, NodeId)>,
) {
    let Prepared {
        session: mut s,
        mut rx,
        tx,
        sides,
        slot,
    } = p;
    // Only side sockets and the routes hold senders: the channel closes when
    // they are all gone.
    drop(tx);
    let side = |l: Local| sides.get(usize::from(l.0).checked_sub(1)?);
    let mut outcome = Some(outcome);
    loop {
        let now = Instant::now();
        s.handle_timeout(now);
        while let Some(t) = s.poll_transmit(now) {
            if t.from == Local::MAIN {
                let sent = match t.ttl {
                    Some(ttl) => raw.send_with_ttl(t.to, &t.data, ttl),
                    None => raw.send(t.to, &t.data),
                };
                if let Err(e) = sent {
                    tracing::debug!(to = %t.to, error = %e, "punch probe not sent");
                }
            } else if let Some(sock) = side(t.from) {
                sock.send(t.to, &t.data, t.ttl);
            }
        }
        while let Some(event) = s.poll_event() {
            let result = match event {
                PunchEvent::Success {
                    addr,
                    local,
                    method,
                } => {
                    tracing::debug!(%addr, ?local, ?method, "punch succeeded");
                    Some(Punched {
                        addr,
                        method,
                        via: side(local).map(|sock| Via(sock.clone())),
                    })
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
                Some((local, from, data)) => {
                    if !s.handle_datagram(Instant::now(), local, from, &data) {
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
    // The losing side sockets close here; a winner lives on in the path table.
    drop(sides);
    drop(slot);
}
