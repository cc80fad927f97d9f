//! What the admin socket takes and gives: [`AdminRequest`] and the views its
//! replies carry (the `--json` output of `burrow admin ...`).

use burrow_store::{AuditEntry, Ban};
use serde::{Deserialize, Serialize};

/// A request to a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Policy, nodes online, bans in force.
    Status,
    /// Every registered name: its key, account, whether it is online and where.
    Users,
    /// Make an account (policy `accounts`).
    AddUser {
        /// The name it owns.
        name: String,
        /// Its password (hashed with argon2id; never stored or logged).
        password: String,
    },
    /// Make an invite code.
    Invite {
        /// How many accounts it can make.
        uses: u32,
        /// How long it is valid, in seconds; `None` for ever.
        expires_secs: Option<u64>,
    },
    /// Let a key register (policy `allowlist`).
    Allow {
        /// Its id (64 hex digits).
        node: String,
    },
    /// Take a key off the allowlist (and disconnect it, under that policy).
    Deny {
        /// Its id, or the name it holds.
        node: String,
    },
    /// A notice to every online node.
    Say {
        /// The text.
        text: String,
    },
    /// A notice to one node.
    Tell {
        /// Its name or id.
        who: String,
        /// The text.
        text: String,
    },
    /// Disconnect a node (its `burrow up` stops and says why).
    Kick {
        /// Its name or id.
        who: String,
    },
    /// Ban a name (and the key holding it), a key, or an address.
    Ban {
        /// A name, a node id, or an IP address (IPv6: its /64).
        who: String,
        /// How long, in seconds; `None` for good.
        for_secs: Option<u64>,
        /// Why (for the audit log).
        #[serde(default)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Unban {
        /// As given to `ban`.
        who: String,
    },
    /// The bans in force.
    Bans,
    /// The audit log's newest entries; with `follow`, then each new one.
    Log {
        /// How many.
        limit: Option<usize>,
        /// Keep sending new entries.
        #[serde(default)]
        follow: bool,
    },
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// Who may register.
    pub policy: String,
    /// Nodes online.
    pub online: usize,
    /// Bans in force.
    pub bans: usize,
    /// QUIC handshakes in progress.
    #[serde(default)]
    pub handshakes: usize,
    /// QUIC Retry packets sent since the server started (connections asked
    /// to prove their address while many handshakes were in progress).
    #[serde(default)]
    pub retries: u64,
}

/// A registered name, in `users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    /// The name.
    pub name: String,
    /// The key holding it (none for an account nobody has used yet).
    pub id: Option<String>,
    /// Whether it is online now.
    pub online: bool,
    /// Where the server sees it, when online.
    pub addr: Option<String>,
    /// Whether it has an account (policy `accounts`).
    pub account: bool,
    /// Whether its account has a password.
    pub password: bool,
    /// Whether its key is on the allowlist.
    pub allowed: bool,
    /// When it last registered (RFC 3339).
    pub last_seen: Option<String>,
}

/// A new invite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteView {
    /// The code (shown once; the server keeps only its hash).
    pub code: String,
    /// How many accounts it can make.
    pub uses: u32,
    /// Until when (RFC 3339), if it expires.
    pub expires_at: Option<String>,
}

/// A ban, in `bans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanView {
    /// `node:<id>`, `name:<name>` or `ip:<address>`.
    pub target: String,
    /// Until when (RFC 3339); `None` for good.
    pub until: Option<String>,
    /// Why.
    pub reason: String,
    /// When it was made (RFC 3339).
    pub at: String,
}

/// An audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogView {
    /// Its number.
    pub id: i64,
    /// When (RFC 3339, ms).
    pub at: String,
    /// `operator`, `ids` or `server`.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To whom.
    pub subject: String,
    /// Why, and the rest.
    pub detail: String,
}

impl From<AuditEntry> for LogView {
    fn from(e: AuditEntry) -> Self {
        LogView {
            id: e.id,
            at: time(e.at_ms),
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            detail: e.detail,
        }
    }
}

impl From<Ban> for BanView {
    fn from(b: Ban) -> Self {
        BanView {
            target: b.target.to_string(),
            until: b.until_ms.map(time),
            reason: b.reason,
            at: time(b.at_ms),
        }
    }
}

pub(super) fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(burrow_proto::time::from_unix_ms(ms)).to_string()
}
