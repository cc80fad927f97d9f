//! The operator's socket, the home's control connection (`home/control.sock`,
//! or a named pipe on Windows): `burrow admin ...` and `burrow console` are
//! its clients.
//!
//! One JSON object per line, as on a node's control socket
//! ([`burrow_home::control`]): a request is `{"cmd": "...", ...}`
//! ([`AdminRequest`]); every reply is a [`Reply`].
//! `log` with `follow` keeps the connection open and sends one more line per
//! audit entry. Only the operator's account reaches it
//! ([`burrow_home::control`]). Every command that changes something is written to the
//! audit log.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use burrow_home::control::Reply;
use burrow_home::control::{Listener, Stream, WriteHalf};
use burrow_proto::rendezvous::{Refusal, ServerMsg, MAX_NOTICE, MAX_PASSWORD};
use burrow_proto::{Name, NodeId};
use burrow_store::BanTarget;
use rand::RngCore;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

mod api;

use api::time;
pub use api::{AdminRequest, BanView, InviteView, LogView, StatusView, UserView};
pub use burrow_home::control::{address, bind, unlink};

use crate::journal::Actor;
use crate::register::{invite_hash, store, AdmitError};
use crate::server::Shared;

/// Longest request line accepted.
pub const MAX_LINE: usize = 16 * 1024;
/// Default number of audit entries `log` returns.
pub const DEFAULT_LOG: usize = 50;

/// Serves admin clients until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, mut listener: Listener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            s = listener.accept() => s,
        };
        match stream {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                warn!("refused an admin connection from {e}");
            }
            Ok(stream) => {
                let shared = shared.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(shared, stream, stop).await {
                        debug!(error = %e, "admin client ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A failed admin command: what went wrong and what to do.
struct Failure(String, Option<String>);

impl Failure {
    fn new(msg: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        Failure(msg.into(), hint.into())
    }
}

impl From<AdmitError> for Failure {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::Store(e) => Failure::new(format!("store: {e}"), None),
            AdmitError::Refused(r) => Failure::new(r.to_string(), None),
        }
    }
}

type Outcome = Result<serde_json::Value, Failure>;

fn json<T: Serialize>(v: T) -> Outcome {
    Ok(serde_json::to_value(v).expect("admin views serialize to JSON"))
}

async fn write_reply(
    w: &mut (impl AsyncWriteExt + Unpin),
    outcome: Outcome,
) -> std::io::Result<()> {
    match outcome {
        Ok(data) => Reply::ok(data),
        Err(Failure(error, hint)) => Reply::err(error, hint),
    }
    .write_to(w)
    .await
}

async fn client(
    shared: Arc<Shared>,
    stream: Stream,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 1024));
    let mut line = String::new();
    loop {
        line.clear();
        if (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?
            == 0
        {
            return Ok(());
        }
        let request: AdminRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let hint = "the CLI and the server may be different versions".to_string();
                return write_reply(
                    &mut write,
                    Err(Failure::new(format!("bad request: {e}"), hint)),
                )
                .await;
            }
        };
        if let AdminRequest::Log {
            limit,
            follow: true,
        } = request
        {
            return follow_log(&shared, limit.unwrap_or(DEFAULT_LOG), &mut write, stop).await;
        }
        let outcome = handle(&shared, request).await;
        write_reply(&mut write, outcome).await?;
    }
}

async fn handle(shared: &Arc<Shared>, request: AdminRequest) -> Outcome {
    let now_ms = burrow_proto::time::unix_ms(SystemTime::now());
    let journal = &shared.journal;
    match request {
        AdminRequest::Status => {
            let (policy, bans) = shared.admission(|a, now| (a.policy(), a.bans(now).len()));
            json(StatusView {
                policy: policy.to_string(),
                online: shared.hub().sessions.len(),
                bans,
                handshakes: shared.handshakes.load(std::sync::atomic::Ordering::Relaxed),
                retries: shared.retries.load(std::sync::atomic::Ordering::Relaxed),
            })
        }
        AdminRequest::Users => users(shared).await,
        AdminRequest::AddUser { name, password } => {
            let name: Name = name
                .parse()
                .map_err(|e| Failure::new(format!("not a valid name: {e}"), None))?;
            if password.is_empty() || password.len() > MAX_PASSWORD {
                return Err(Failure::new(
                    format!("a password is 1 to {MAX_PASSWORD} bytes"),
                    None,
                ));
            }
            let hash =
                shared.hasher.hash(password).await.map_err(|e| {
                    Failure::new(e.to_string(), "try again in a moment".to_string())
                })?;
            let n = name.clone();
            let added = store(shared, move |s| {
                s.add_account(&n, Some(&hash), "operator", now_ms)
            })
            .await?;
            if !added {
                return Err(Failure::new(format!("{name} already has an account"), None));
            }
            journal.log(Actor::Operator, "add-user", &name, "");
            json(serde_json::Value::Null)
        }
        AdminRequest::Invite { uses, expires_secs } => {
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes);
            let code = base32(&bytes);
            let hash = invite_hash(&code);
            let expires = expires_secs.map(|s| now_ms.saturating_add(s.saturating_mul(1000)));
            let uses = uses.max(1);
            store(shared, move |s| s.add_invite(&hash, uses, expires, now_ms)).await?;
            let expires_at = expires.map(time);
            journal.log(
                Actor::Operator,
                "invite",
                format!("{}…", &code[..4]),
                format!(
                    "{uses} use(s), expires {}",
                    expires_at.as_deref().unwrap_or("never")
                ),
            );
            json(InviteView {
                code,
                uses,
                expires_at,
            })
        }
        AdminRequest::Allow { node } => {
            let id: NodeId = node.parse().map_err(|_| {
                Failure::new(
                    format!("not a node id: {node:?}"),
                    "give the whole id (64 hex digits): the node's `burrow status` shows it"
                        .to_string(),
                )
            })?;
            store(shared, move |s| s.allow(&id, now_ms)).await?;
            shared.admission(|a, _| a.allow(id));
            journal.log(Actor::Operator, "allow", id, "");
            json(serde_json::Value::Null)
        }
        AdminRequest::Deny { node } => {
            let id = resolve_node(shared, &node).await?;
            let was = store(shared, move |s| s.deny(&id)).await?;
            shared.admission(|a, _| a.deny(&id));
            if shared.admission(|a, _| a.policy()) == crate::Policy::Allowlist {
                if let Some(s) = shared.hub().sessions.get(&id) {
                    s.expel(Refusal::NotAllowed);
                }
            }
            journal.log(
                Actor::Operator,
                "deny",
                id,
                if was { "" } else { "was not allowed" },
            );
            json(serde_json::Value::Null)
        }
        AdminRequest::Say { text } => {
            check_notice(&text)?;
            let hub = shared.hub();
            for s in hub.sessions.values() {
                let _ = s.tx.try_send(Box::new(ServerMsg::Notice {
                    text: text.clone(),
                    everyone: true,
                }));
            }
            let n = hub.sessions.len();
            drop(hub);
            journal.log(Actor::Operator, "say", "everyone", text);
            json(serde_json::json!({ "delivered_to": n }))
        }
        AdminRequest::Tell { who, text } => {
            check_notice(&text)?;
            let id = resolve_node(shared, &who).await?;
            let sent = shared.hub().sessions.get(&id).map(|s| {
                s.tx.try_send(Box::new(ServerMsg::Notice {
                    text: text.clone(),
                    everyone: false,
                }))
                .is_ok()
            });
            match sent {
                Some(true) => {}
                Some(false) => return Err(Failure::new(format!("{who} is not reading"), None)),
                None => return Err(Failure::new(format!("{who} is not online"), None)),
            }
            journal.log(Actor::Operator, "tell", &who, text);
            json(serde_json::Value::Null)
        }
        AdminRequest::Kick { who } => {
            let id = resolve_node(shared, &who).await?;
            match shared.hub().sessions.get(&id) {
                Some(s) => s.expel(Refusal::Kicked),
                None => return Err(Failure::new(format!("{who} is not online"), None)),
            }
            journal.log(Actor::Operator, "kick", &who, "");
            json(serde_json::Value::Null)
        }
        AdminRequest::Ban {
            who,
            for_secs,
            reason,
        } => {
            let targets = ban_targets(shared, &who).await?;
            let duration = for_secs.map(Duration::from_secs);
            let reason = reason.unwrap_or_else(|| "by the operator".into());
            let mut bans = Vec::new();
            shared.admission(|a, now| {
                for t in &targets {
                    // Its events are drained here: the operator's bans are
                    // stored before the reply, not later by the journal.
                    a.ban(now, t.clone(), duration, reason.clone());
                }
                while let Some(e) = a.poll_event() {
                    if let crate::admission::AdmissionEvent::Banned(b) = e {
                        bans.push(b);
                    }
                }
            });
            let stored = bans.clone();
            store(shared, move |s| {
                stored.iter().try_for_each(|b| s.put_ban(b))
            })
            .await?;
            let until = bans.first().and_then(|b| b.until_ms);
            expel_banned(shared, &targets, until);
            for b in &bans {
                journal.log(
                    Actor::Operator,
                    "ban",
                    &b.target,
                    format!(
                        "{}, {}",
                        b.reason,
                        b.until_ms
                            .map_or("for good".into(), |t| format!("until {}", time(t)))
                    ),
                );
            }
            json(bans.into_iter().map(BanView::from).collect::<Vec<_>>())
        }
        AdminRequest::Unban { who } => {
            let targets = ban_targets(shared, &who).await?;
            let mut lifted = Vec::new();
            for t in targets {
                let in_memory = shared.admission(|a, _| a.unban(&t));
                let t2 = t.clone();
                let stored = store(shared, move |s| s.remove_ban(&t2)).await?;
                if in_memory || stored {
                    journal.log(Actor::Operator, "unban", &t, "");
                    lifted.push(t.to_string());
                }
            }
            if lifted.is_empty() {
                return Err(Failure::new(
                    format!("{who} is not banned"),
                    "burrow admin bans lists the bans in force".to_string(),
                ));
            }
            json(lifted)
        }
        AdminRequest::Bans => {
            let bans = shared.admission(|a, now| a.bans(now));
            json(bans.into_iter().map(BanView::from).collect::<Vec<_>>())
        }
        AdminRequest::Log { limit, .. } => {
            let limit = limit.unwrap_or(DEFAULT_LOG);
            let entries = store(shared, move |s| s.audit(0, limit)).await?;
            json(entries.into_iter().map(LogView::from).collect::<Vec<_>>())
        }
    }
}

fn check_notice(text: &str) -> Result<(), Failure> {
    if text.trim().is_empty() || text.len() > MAX_NOTICE {
        return Err(Failure::new(
            format!("a notice is 1 to {MAX_NOTICE} bytes"),
            None,
        ));
    }
    Ok(())
}

/// A node by id (whole, or a prefix of an online one's) or by the name it holds.
async fn resolve_node(shared: &Arc<Shared>, who: &str) -> Result<NodeId, Failure> {
    if let Ok(id) = who.parse::<NodeId>() {
        return Ok(id);
    }
    if let Ok(name) = who.parse::<Name>() {
        let n = name.clone();
        if let Some(id) = store(shared, move |s| s.name_owner(&n)).await? {
            return Ok(id);
        }
    }
    let lower = who.to_ascii_lowercase();
    let online: Vec<NodeId> = shared
        .hub()
        .sessions
        .keys()
        .filter(|id| lower.len() >= 4 && id.to_string().starts_with(&lower))
        .copied()
        .collect();
    match online.as_slice() {
        [id] => Ok(*id),
        [] => Err(Failure::new(
            format!("no node named {who:?} or with that id"),
            "burrow admin users lists the names and ids".to_string(),
        )),
        _ => Err(Failure::new(
            format!("{who:?} matches several online nodes"),
            "give more of the id".to_string(),
        )),
    }
}

/// What `ban`/`unban` of `who` covers: an address; a key; or a name and the
/// key that holds it.
async fn ban_targets(shared: &Arc<Shared>, who: &str) -> Result<Vec<BanTarget>, Failure> {
    if let Ok(t) = who.parse::<BanTarget>() {
        return Ok(vec![t]);
    }
    if let Ok(ip) = who.trim_end_matches("/64").parse::<IpAddr>() {
        return Ok(vec![BanTarget::addr(ip)]);
    }
    if let Ok(id) = who.parse::<NodeId>() {
        return Ok(vec![BanTarget::Node(id)]);
    }
    let name: Name = who
        .parse()
        .map_err(|_| Failure::new(format!("{who:?} is not a name, node id or address"), None))?;
    let n = name.clone();
    let owner = store(shared, move |s| s.name_owner(&n)).await?;
    let mut targets = vec![BanTarget::Name(name)];
    targets.extend(owner.map(BanTarget::Node));
    Ok(targets)
}

/// Disconnects the online nodes a ban covers.
fn expel_banned(shared: &Arc<Shared>, targets: &[BanTarget], until_ms: Option<u64>) {
    let hub = shared.hub();
    for (id, s) in &hub.sessions {
        let hit = targets.iter().any(|t| match t {
            BanTarget::Node(n) => n == id,
            BanTarget::Name(n) => *n == s.name,
            BanTarget::Addr(g) => {
                burrow_proto::ip_group(hub.real(s.conn.remote_address()).ip()) == *g
            }
        });
        if hit {
            s.expel(Refusal::Banned { until_ms });
        }
    }
}

/// Sends the newest `limit` entries, then each new one, until the client or
/// the server goes away.
async fn follow_log(
    shared: &Arc<Shared>,
    limit: usize,
    write: &mut WriteHalf,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mut live = shared.journal.subscribe();
    let history = match store(shared, move |s| s.audit(0, limit)).await {
        Ok(h) => h,
        Err(e) => return write_reply(write, Err(e.into())).await,
    };
    let mut last = history.last().map_or(0, |e| e.id);
    let views: Vec<LogView> = history.into_iter().map(LogView::from).collect();
    write_reply(write, json(views)).await?;
    loop {
        let entry = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            e = live.recv() => e,
        };
        match entry {
            Ok(e) if e.id > last => {
                last = e.id;
                write_reply(write, json(LogView::from(e))).await?;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "an audit log follower fell behind");
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Users: every bound name, and accounts not yet used.
async fn users(shared: &Arc<Shared>) -> Outcome {
    let (names, accounts, allowed) = store(shared, |s| {
        Ok((s.bound_names()?, s.accounts()?, s.allowed()?))
    })
    .await?;
    let online: std::collections::HashMap<NodeId, String> = {
        let hub = shared.hub();
        hub.sessions
            .iter()
            .map(|(id, s)| (*id, hub.real(s.conn.remote_address()).to_string()))
            .collect()
    };
    // Indexed once: a server may list 100 000 names.
    let has_password: std::collections::HashMap<&Name, bool> =
        accounts.iter().map(|a| (&a.name, a.has_password)).collect();
    let allowed: std::collections::HashSet<NodeId> = allowed.into_iter().collect();
    let bound: std::collections::HashSet<&Name> = names.iter().map(|b| &b.name).collect();
    let mut views: Vec<UserView> = names
        .iter()
        .map(|b| UserView {
            name: b.name.to_string(),
            id: Some(b.id.to_string()),
            online: online.contains_key(&b.id),
            addr: online.get(&b.id).cloned(),
            account: has_password.contains_key(&b.name),
            password: has_password.get(&b.name).copied().unwrap_or(false),
            allowed: allowed.contains(&b.id),
            last_seen: Some(time(b.last_seen_ms)),
        })
        .collect();
    for a in &accounts {
        if !bound.contains(&a.name) {
            views.push(UserView {
                name: a.name.to_string(),
                id: None,
                online: false,
                addr: None,
                account: true,
                password: a.has_password,
                allowed: false,
                last_seen: None,
            });
        }
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    json(views)
}

/// 16 bytes as 26 lowercase base32 characters (RFC 4648 alphabet, no padding):
/// easy to read aloud and to type.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_codes_are_26_base32_characters() {
        assert_eq!(base32(&[0; 16]), "a".repeat(26));
        assert_eq!(base32(&[0xff; 16]).len(), 26);
        assert_eq!(base32(b"f"), "my");
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    }
}
