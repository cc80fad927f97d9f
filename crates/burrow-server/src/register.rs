//! Whether a Hello may register its name: bans and the allowlist
//! ([`crate::admission`]), then the name's owner and, where the server keeps
//! accounts, the password or invite.
//!
//! The rules, by policy:
//!
//! - every policy: a banned key, name or address is refused; a key that holds
//!   the name already logs in by that key (the handshake proved it);
//! - `open` and `allowlist`: a free name is bound to the first key that asks;
//! - `accounts`: a free name needs an invite (which makes its account, with the
//!   password given, if any); a name with an account and another key needs the
//!   account's password, and is then bound to the new key. Wrong passwords and
//!   bad invites count as failed logins.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use burrow_proto::rendezvous::{Credentials, Refusal};
use burrow_proto::{Name, NodeId};
use burrow_store::{NameBinding, Redeemed, ServerStore};

use crate::admission::Policy;
use crate::server::Shared;

/// Why a registration didn't go through.
#[derive(Debug)]
pub(crate) enum AdmitError {
    /// Refused, for the node to hear.
    Refused(Refusal),
    /// The store failed (the node hears nothing; its session just ends).
    Store(String),
}

impl From<Refusal> for AdmitError {
    fn from(r: Refusal) -> Self {
        AdmitError::Refused(r)
    }
}

/// How a node got in, for the audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Admitted {
    /// Its key holds the name (or took a free one under an open policy).
    Key,
    /// Its password matched the account's.
    Password,
    /// An invite made its account.
    Invite,
}

impl std::fmt::Display for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Admitted::Key => "by key",
            Admitted::Password => "by password",
            Admitted::Invite => "by invite",
        })
    }
}

/// The hash an invite code is stored under.
pub(crate) fn invite_hash(code: &str) -> [u8; 32] {
    *blake3::hash(code.trim().as_bytes()).as_bytes()
}

/// Decides whether `id` at `ip` may register as `name`, binding the name if so.
pub(crate) async fn admit(
    shared: &Arc<Shared>,
    id: NodeId,
    name: &Name,
    credentials: Credentials,
    ip: IpAddr,
) -> Result<Admitted, AdmitError> {
    let policy =
        shared.admission(|a, now| a.check_hello(now, &id, name, ip).map(|()| a.policy()))?;
    let now_ms = burrow_proto::time::unix_ms(SystemTime::now());
    if policy != Policy::Accounts {
        let binding = shared
            .binder
            .bind(name.clone(), id)
            .await
            .map_err(AdmitError::Store)?;
        return match binding {
            NameBinding::Taken { .. } => Err(Refusal::NameTaken.into()),
            NameBinding::New | NameBinding::Existing => Ok(Admitted::Key),
        };
    }

    let n = name.clone();
    let (owner, account) = store(shared, move |s| Ok((s.name_owner(&n)?, s.account(&n)?))).await?;
    if owner == Some(id) {
        let n = name.clone();
        store(shared, move |s| s.rebind_name(&n, &id, now_ms)).await?;
        return Ok(Admitted::Key);
    }
    let Credentials { password, invite } = credentials;
    if invite.is_none() && password.is_none() {
        return Err(Refusal::CredentialsRequired.into());
    }
    // A name guessed from many places makes every attempt wait; a correct
    // password from an address that didn't fail still gets in, later.
    let delay = shared.admission(|a, now| a.check_login(now, name, ip))?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let failed = |reason: Refusal| {
        shared.admission(|a, now| a.login_failed(now, name, ip, reason.clone()));
        AdmitError::Refused(reason)
    };

    if let Some(code) = invite {
        let hash = match password {
            Some(p) => Some(
                shared
                    .hasher
                    .hash(p.expose().to_string())
                    .await
                    .map_err(busy)?,
            ),
            None => None,
        };
        let code = invite_hash(code.expose());
        let n = name.clone();
        let redeemed = store(shared, move |s| {
            s.redeem_invite(&code, &n, &id, hash.as_deref(), now_ms)
        })
        .await?;
        return match redeemed {
            Redeemed::Created => Ok(Admitted::Invite),
            Redeemed::InvalidCode => Err(failed(Refusal::InviteInvalid)),
            Redeemed::NameTaken => Err(Refusal::NameTaken.into()),
        };
    }

    let password = password.expect("one of invite and password is given");
    let hash = match account {
        // No account: a password can't help; an invite can.
        None => return Err(Refusal::CredentialsRequired.into()),
        Some(None) => return Err(failed(Refusal::WrongPassword)),
        Some(Some(hash)) => hash,
    };
    let matches = shared
        .hasher
        .verify(password.expose().to_string(), hash)
        .await
        .map_err(busy)?;
    if !matches {
        return Err(failed(Refusal::WrongPassword));
    }
    let n = name.clone();
    store(shared, move |s| s.rebind_name(&n, &id, now_ms)).await?;
    Ok(Admitted::Password)
}

fn busy(_: crate::password::Busy) -> AdmitError {
    AdmitError::Refused(Refusal::Blocked { retry_in_ms: 1000 })
}

/// Runs `f` on the store on a blocking thread.
pub(crate) async fn store<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut ServerStore) -> Result<T, burrow_store::StoreError> + Send + 'static,
) -> Result<T, AdmitError> {
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || f(&mut store.lock().expect("store lock is never poisoned")))
        .await
        .map_err(|e| AdmitError::Store(e.to_string()))?
        .map_err(|e| AdmitError::Store(e.to_string()))
}
