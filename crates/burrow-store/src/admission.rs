//! What the server decides about who may register, kept across restarts:
//! accounts (argon2 hashes, never passwords), invite codes (their hashes),
//! the allowlist, bans, and the audit log of every such decision.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use burrow_proto::{Name, NodeId};
use rusqlite::{params, OptionalExtension};

use crate::server::{node_id, ServerStore};
use crate::StoreError;

/// Schema for the server's admission state (appended to the server's migrations).
pub(crate) const MIGRATION: &str = "
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        password_hash TEXT,
        created_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE invites (
        code_hash BLOB PRIMARY KEY,
        uses_left INTEGER NOT NULL,
        expires_at_ms INTEGER,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE allowed (
        node_id BLOB PRIMARY KEY,
        added_at_ms INTEGER NOT NULL
    );
    CREATE TABLE bans (
        target TEXT PRIMARY KEY,
        until_ms INTEGER,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );";

/// The audit log keeps this many entries; older ones are dropped as new ones come.
pub const AUDIT_KEEP: i64 = 200_000;

/// Who or what a ban applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// A node's key.
    Node(NodeId),
    /// A registered name (whatever key asks for it).
    Name(Name),
    /// An address group (see [`burrow_proto::ip_group`]: an IPv4 address or an
    /// IPv6 /64). Build it with [`BanTarget::addr`].
    Addr(IpAddr),
}

impl BanTarget {
    /// The ban for the group `ip` belongs to.
    pub fn addr(ip: IpAddr) -> Self {
        BanTarget::Addr(burrow_proto::ip_group(ip))
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Node(id) => write!(f, "node:{id}"),
            BanTarget::Name(n) => write!(f, "name:{n}"),
            BanTarget::Addr(ip @ IpAddr::V6(_)) => write!(f, "ip:{ip}/64"),
            BanTarget::Addr(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// A ban target that doesn't parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a ban target: {0:?} (expected node:<id>, name:<name> or ip:<address>)")]
pub struct BanTargetError(String);

impl FromStr for BanTarget {
    type Err = BanTargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BanTargetError(s.to_string());
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "node" => value.parse().map(BanTarget::Node).map_err(|_| bad()),
            "name" => value.parse().map(BanTarget::Name).map_err(|_| bad()),
            "ip" => value
                .trim_end_matches("/64")
                .parse()
                .map(BanTarget::addr)
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// A ban as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub target: BanTarget,
    /// Until when, Unix ms; `None` for good.
    pub until_ms: Option<u64>,
    /// Why, in words.
    pub reason: String,
    /// When it was made, Unix ms.
    pub at_ms: u64,
}

impl Ban {
    /// Whether it is in force at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|u| u > now_ms)
    }
}

/// An account as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The name it owns.
    pub name: Name,
    /// Whether it has a password (an account made by an invite without one
    /// logs in by its key only).
    pub has_password: bool,
    /// When it was made, Unix ms.
    pub created_at_ms: u64,
    /// How: "operator" or "invite".
    pub created_by: String,
}

/// A name bound to a key, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundName {
    /// The name.
    pub name: Name,
    /// Its key.
    pub id: NodeId,
    /// First registered, Unix ms.
    pub registered_at_ms: u64,
    /// Last registered, Unix ms.
    pub last_seen_ms: u64,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Increasing id (a follower asks for what comes after the last it saw).
    pub id: i64,
    /// When, Unix ms.
    pub at_ms: u64,
    /// Who decided: "operator", "ids" (intrusion detection) or "server".
    pub actor: String,
    /// What: "ban", "login-failed", "registered", ...
    pub action: String,
    /// Whom it concerns (a name, a node id, an address).
    pub subject: String,
    /// Why, and anything else worth knowing.
    pub detail: String,
}

/// What redeeming an invite did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// The account was made and the name bound to the key.
    Created,
    /// The code is unknown, used up or expired; nothing changed.
    InvalidCode,
    /// The name already has an account, or another key holds it; nothing changed.
    NameTaken,
}

impl ServerStore {
    /// Makes an account for `name`. Returns false, changing nothing, when it exists.
    pub fn add_account(
        &mut self,
        name: &Name,
        password_hash: Option<&str>,
        created_by: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO accounts (name, password_hash, created_at_ms, created_by)
             VALUES (?1, ?2, ?3, ?4)",
            params![name.as_str(), password_hash, now_ms as i64, created_by],
        )?;
        Ok(n == 1)
    }

    /// Removes `name`'s account and its name binding. Returns whether it existed.
    pub fn remove_account(&mut self, name: &Name) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM accounts WHERE name = ?1", [name.as_str()])?;
        tx.execute("DELETE FROM names WHERE name = ?1", [name.as_str()])?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// `name`'s account: `None` when it has none, else its password hash (if any).
    pub fn account(&self, name: &Name) -> Result<Option<Option<String>>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT password_hash FROM accounts WHERE name = ?1",
                [name.as_str()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?)
    }

    /// Every account, by name.
    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, password_hash IS NOT NULL, created_at_ms, created_by FROM accounts ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (name, has_password, at, created_by) = row?;
            Ok(Account {
                name: parse_name("accounts", &name)?,
                has_password,
                created_at_ms: at as u64,
                created_by,
            })
        })
        .collect()
    }

    /// Binds `name` to `id`, whoever held it before (a password login from a new key).
    pub fn rebind_name(&mut self, name: &Name, id: &NodeId, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO names (name, node_id, registered_at_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO UPDATE SET node_id = ?2, last_seen_ms = ?3",
            params![name.as_str(), id.as_bytes().as_slice(), now_ms as i64],
        )?;
        Ok(())
    }

    /// Every bound name, by name.
    pub fn bound_names(&self) -> Result<Vec<BoundName>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, node_id, registered_at_ms, last_seen_ms FROM names ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (name, id, registered, seen) = row?;
            Ok(BoundName {
                name: parse_name("names", &name)?,
                id: node_id("names", &id)?,
                registered_at_ms: registered as u64,
                last_seen_ms: seen as u64,
            })
        })
        .collect()
    }

    /// Records an invite by the hash of its code.
    pub fn add_invite(
        &mut self,
        code_hash: &[u8; 32],
        uses: u32,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO invites (code_hash, uses_left, expires_at_ms, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                code_hash.as_slice(),
                uses as i64,
                expires_at_ms.map(|t| t as i64),
                now_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Uses one of the invite's uses to make `name`'s account (with `password_hash`,
    /// if given) and bind the name to `id`, all in one transaction.
    pub fn redeem_invite(
        &mut self,
        code_hash: &[u8; 32],
        name: &Name,
        id: &NodeId,
        password_hash: Option<&str>,
        now_ms: u64,
    ) -> Result<Redeemed, StoreError> {
        let tx = self.conn.transaction()?;
        let invite: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT uses_left, expires_at_ms FROM invites WHERE code_hash = ?1",
                [code_hash.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let valid = invite
            .is_some_and(|(uses, expires)| uses > 0 && expires.is_none_or(|e| e > now_ms as i64));
        if !valid {
            return Ok(Redeemed::InvalidCode);
        }
        let has_account: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE name = ?1)",
            [name.as_str()],
            |r| r.get(0),
        )?;
        let holder: Option<Vec<u8>> = tx
            .query_row(
                "SELECT node_id FROM names WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        if has_account || holder.is_some_and(|h| h != id.as_bytes()) {
            return Ok(Redeemed::NameTaken);
        }
        tx.execute(
            "UPDATE invites SET uses_left = uses_left - 1 WHERE code_hash = ?1",
            [code_hash.as_slice()],
        )?;
        tx.execute(
            "INSERT INTO accounts (name, password_hash, created_at_ms, created_by) VALUES (?1, ?2, ?3, 'invite')",
            params![name.as_str(), password_hash, now_ms as i64],
        )?;
        tx.execute(
            "INSERT INTO names (name, node_id, registered_at_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO UPDATE SET last_seen_ms = ?3",
            params![name.as_str(), id.as_bytes().as_slice(), now_ms as i64],
        )?;
        tx.commit()?;
        Ok(Redeemed::Created)
    }

    /// Lets `id` register on an allowlist server. Returns false if it already could.
    pub fn allow(&mut self, id: &NodeId, now_ms: u64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO allowed (node_id, added_at_ms) VALUES (?1, ?2)",
            params![id.as_bytes().as_slice(), now_ms as i64],
        )?;
        Ok(n == 1)
    }

    /// Takes `id` off the allowlist. Returns whether it was on it.
    pub fn deny(&mut self, id: &NodeId) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM allowed WHERE node_id = ?1",
            [id.as_bytes().as_slice()],
        )?;
        Ok(n == 1)
    }

    /// Every allowed key.
    pub fn allowed(&self) -> Result<Vec<NodeId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node_id FROM allowed ORDER BY added_at_ms")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|row| node_id("allowed", &row?)).collect()
    }

    /// Records a ban, replacing any earlier one on the same target.
    pub fn put_ban(&mut self, ban: &Ban) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO bans (target, until_ms, reason, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                ban.target.to_string(),
                ban.until_ms.map(|t| t as i64),
                ban.reason,
                ban.at_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Lifts the ban on `target`. Returns whether there was one.
    pub fn remove_ban(&mut self, target: &BanTarget) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM bans WHERE target = ?1", [target.to_string()])?;
        Ok(n == 1)
    }

    /// The bans in force at `now_ms`, oldest first; expired ones are deleted.
    pub fn bans(&mut self, now_ms: u64) -> Result<Vec<Ban>, StoreError> {
        self.conn.execute(
            "DELETE FROM bans WHERE until_ms IS NOT NULL AND until_ms <= ?1",
            [now_ms as i64],
        )?;
        let mut stmt = self
            .conn
            .prepare("SELECT target, until_ms, reason, at_ms FROM bans ORDER BY at_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (target, until, reason, at) = row?;
            Ok(Ban {
                target: target
                    .parse()
                    .map_err(|e: BanTargetError| StoreError::Corrupt {
                        table: "bans",
                        what: e.to_string(),
                    })?,
                until_ms: until.map(|t| t as u64),
                reason,
                at_ms: at as u64,
            })
        })
        .collect()
    }

    /// Appends `entries` (their `id`s are ignored) in one transaction, dropping
    /// the oldest past [`AUDIT_KEEP`]. Returns the entries with their ids.
    pub fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(entries.len());
        {
            let mut insert = tx.prepare(
                "INSERT INTO audit (at_ms, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.at_ms as i64,
                    e.actor,
                    e.action,
                    e.subject,
                    e.detail
                ])?;
                out.push(AuditEntry {
                    id: tx.last_insert_rowid(),
                    ..e.clone()
                });
            }
        }
        if let Some(last) = out.last() {
            tx.execute("DELETE FROM audit WHERE id <= ?1", [last.id - AUDIT_KEEP])?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// The newest `limit` audit entries after `after_id`, oldest first.
    pub fn audit(&self, after_id: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at_ms, actor, action, subject, detail FROM
               (SELECT * FROM audit WHERE id > ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![after_id, limit as i64], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at_ms: r.get::<_, i64>(1)? as u64,
                actor: r.get(2)?,
                action: r.get(3)?,
                subject: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn parse_name(table: &'static str, s: &str) -> Result<Name, StoreError> {
    s.parse().map_err(|e| StoreError::Corrupt {
        table,
        what: format!("name: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public()
    }

    fn open(dir: &tempfile::TempDir) -> ServerStore {
        ServerStore::open(&dir.path().join("server.db")).unwrap()
    }

    #[test]
    fn ban_targets_print_and_parse_back() {
        for t in [
            BanTarget::Node(id(1)),
            BanTarget::Name("alice".parse().unwrap()),
            BanTarget::addr("203.0.113.9".parse().unwrap()),
            BanTarget::addr("2001:db8::77".parse().unwrap()),
        ] {
            assert_eq!(t.to_string().parse::<BanTarget>(), Ok(t));
        }
        assert_eq!(
            BanTarget::addr("2001:db8::77".parse().unwrap()).to_string(),
            "ip:2001:db8::/64"
        );
        assert!("ip:not-an-ip".parse::<BanTarget>().is_err());
        assert!("alice".parse::<BanTarget>().is_err());
    }

    #[test]
    fn bans_persist_expire_and_lift() {
        let dir = tempfile::tempdir().unwrap();
        let forever = Ban {
            target: BanTarget::Node(id(1)),
            until_ms: None,
            reason: "spam".into(),
            at_ms: 10,
        };
        let short = Ban {
            target: BanTarget::addr("127.0.0.9".parse().unwrap()),
            until_ms: Some(100),
            reason: "5 failed logins".into(),
            at_ms: 20,
        };
        {
            let mut s = open(&dir);
            s.put_ban(&forever).unwrap();
            s.put_ban(&short).unwrap();
        }
        let mut s = open(&dir);
        assert_eq!(s.bans(50).unwrap(), vec![forever.clone(), short.clone()]);
        assert_eq!(s.bans(100).unwrap(), vec![forever.clone()]);
        assert!(s.remove_ban(&forever.target).unwrap());
        assert!(!s.remove_ban(&forever.target).unwrap());
        assert!(s.bans(0).unwrap().is_empty());
    }

    #[test]
    fn an_invite_makes_one_account_per_use_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir);
        let code = [7u8; 32];
        s.add_invite(&code, 2, Some(1000), 0).unwrap();
        let (alice, bob, carol): (Name, Name, Name) = (
            "alice".parse().unwrap(),
            "bob".parse().unwrap(),
            "carol".parse().unwrap(),
        );
        assert_eq!(
            s.redeem_invite(&[8; 32], &alice, &id(1), None, 1).unwrap(),
            Redeemed::InvalidCode
        );
        assert_eq!(
            s.redeem_invite(&code, &alice, &id(1), Some("h"), 1)
                .unwrap(),
            Redeemed::Created
        );
        assert_eq!(s.account(&alice).unwrap(), Some(Some("h".into())));
        assert_eq!(s.name_owner(&alice).unwrap(), Some(id(1)));
        // The name has an account now: a second use can't take it.
        assert_eq!(
            s.redeem_invite(&code, &alice, &id(2), None, 2).unwrap(),
            Redeemed::NameTaken
        );
        // Expired, then used up.
        assert_eq!(
            s.redeem_invite(&code, &bob, &id(2), None, 1000).unwrap(),
            Redeemed::InvalidCode
        );
        assert_eq!(
            s.redeem_invite(&code, &bob, &id(2), None, 3).unwrap(),
            Redeemed::Created
        );
        assert_eq!(
            s.redeem_invite(&code, &carol, &id(3), None, 4).unwrap(),
            Redeemed::InvalidCode
        );
        assert_eq!(s.accounts().unwrap().len(), 2);
    }

    #[test]
    fn the_allowlist_and_accounts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let alice: Name = "alice".parse().unwrap();
        {
            let mut s = open(&dir);
            assert!(s.allow(&id(1), 1).unwrap());
            assert!(!s.allow(&id(1), 2).unwrap());
            assert!(s.add_account(&alice, Some("hash"), "operator", 3).unwrap());
            assert!(!s.add_account(&alice, None, "operator", 4).unwrap());
            s.rebind_name(&alice, &id(2), 5).unwrap();
            s.rebind_name(&alice, &id(3), 6).unwrap();
        }
        let mut s = open(&dir);
        assert_eq!(s.allowed().unwrap(), vec![id(1)]);
        assert!(s.deny(&id(1)).unwrap());
        assert!(s.allowed().unwrap().is_empty());
        assert_eq!(s.name_owner(&alice).unwrap(), Some(id(3)));
        assert_eq!(s.bound_names().unwrap()[0].registered_at_ms, 5);
        assert!(s.remove_account(&alice).unwrap());
        assert_eq!(s.account(&alice).unwrap(), None);
        assert_eq!(s.name_owner(&alice).unwrap(), None);
    }

    #[test]
    fn the_audit_log_pages_from_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir);
        let entry = |n: u64| AuditEntry {
            id: 0,
            at_ms: n,
            actor: "ids".into(),
            action: "login-failed".into(),
            subject: format!("127.0.0.{n}"),
            detail: String::new(),
        };
        let written = s.append_audit(&[entry(1), entry(2), entry(3)]).unwrap();
        assert!(written[0].id < written[1].id && written[1].id < written[2].id);
        let last_two = s.audit(0, 2).unwrap();
        assert_eq!(last_two, written[1..].to_vec());
        assert_eq!(s.audit(written[1].id, 10).unwrap(), written[2..].to_vec());
    }
}
