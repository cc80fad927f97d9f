//! The node's store: chat history, the files it shares, and the downloads in
//! progress (which chunk groups are verified, so a download resumes).

use std::path::{Path, PathBuf};

use burrow_proto::chat::MessageId;
use burrow_proto::files::{BlobHash, ShareName};
use burrow_proto::NodeId;
use rusqlite::{params, OptionalExtension};

use crate::server::node_id;
use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE messages (
        id BLOB PRIMARY KEY,
        from_id BLOB NOT NULL,
        from_name TEXT NOT NULL,
        to_id BLOB NOT NULL,
        text TEXT NOT NULL,
        sent_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL
    );
    CREATE INDEX messages_by_time ON messages(received_at_ms);",
    "CREATE TABLE shares (
        hash BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        path BLOB NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        downloaded INTEGER NOT NULL,
        added_at_ms INTEGER NOT NULL
    );
    CREATE TABLE downloads (
        hash BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        verified BLOB NOT NULL,
        started_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    );",
    // Forum posts: the whole signed post in `body` (postcard), with the columns
    // the queries use beside it.
    "CREATE TABLE posts (
        id BLOB PRIMARY KEY,
        topic TEXT NOT NULL,
        parent BLOB,
        created INTEGER NOT NULL,
        body BLOB NOT NULL,
        received_at_ms INTEGER NOT NULL
    );
    CREATE INDEX posts_by_topic ON posts(topic, created);
    CREATE TABLE topics (topic TEXT PRIMARY KEY);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
    // Notices from the server's operator sit in the chat history, marked by kind;
    // contacts may connect without being asked about.
    "ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE contacts (
        node_id BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        added_at_ms INTEGER NOT NULL
    );",
    // Whether the author's name was vouched for when the message came (older
    // messages: not known, so not).
    "ALTER TABLE messages ADD COLUMN from_verified INTEGER NOT NULL DEFAULT 0;",
    // Posts by author, for the forum's quotas (older rows are filled in from
    // their bodies when the store opens).
    "ALTER TABLE posts ADD COLUMN author BLOB;
    CREATE INDEX posts_by_author ON posts(topic, author);",
    // Tunnels: the services we expose (to whom), and our forwards to peers'.
    "CREATE TABLE exposed (
        name TEXT PRIMARY KEY,
        addr TEXT NOT NULL,
        udp INTEGER NOT NULL,
        allow BLOB NOT NULL,
        contacts INTEGER NOT NULL,
        added_at_ms INTEGER NOT NULL
    );
    CREATE TABLE forwards (
        listen TEXT PRIMARY KEY,
        peer BLOB NOT NULL,
        peer_name TEXT NOT NULL,
        service TEXT NOT NULL,
        udp INTEGER NOT NULL,
        added_at_ms INTEGER NOT NULL
    );",
];

/// What a stored message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Chat between two nodes.
    Chat,
    /// A notice from the server's operator to this node (`admin tell`).
    NoticeToUs,
    /// A notice from the server's operator to every node (`admin say`).
    NoticeToAll,
}

impl MessageKind {
    fn code(self) -> i64 {
        match self {
            MessageKind::Chat => 0,
            MessageKind::NoticeToUs => 1,
            MessageKind::NoticeToAll => 2,
        }
    }

    fn from_code(c: i64) -> Result<Self, StoreError> {
        Ok(match c {
            0 => MessageKind::Chat,
            1 => MessageKind::NoticeToUs,
            2 => MessageKind::NoticeToAll,
            _ => {
                return Err(StoreError::Corrupt {
                    table: "messages",
                    what: format!("kind {c}"),
                })
            }
        })
    }
}

/// A peer allowed to connect without asking the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Its key.
    pub id: NodeId,
    /// Its name when added.
    pub name: String,
    /// When it was added, Unix ms.
    pub added_at_ms: u64,
}

/// A file this node offers, served from where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredShare {
    /// Its content hash.
    pub hash: BlobHash,
    /// What it is offered as.
    pub name: ShareName,
    /// Where it is (absolute).
    pub path: PathBuf,
    /// Its size when hashed.
    pub size: u64,
    /// Its modification time when hashed (ns since the epoch): a file whose size or
    /// mtime differ has changed and is not served under this hash.
    pub mtime_ns: i64,
    /// It came from a download (rather than `burrow share`).
    pub downloaded: bool,
    /// When it was shared, Unix ms.
    pub added_at_ms: u64,
}

/// A download in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDownload {
    /// The file's hash.
    pub hash: BlobHash,
    /// The name it will be saved under (before making it a safe file name).
    pub name: ShareName,
    /// Its size.
    pub size: u64,
    /// One bit per chunk group, set once the group is verified and on disk.
    pub verified: Vec<u8>,
    /// When it started, Unix ms.
    pub started_at_ms: u64,
}

/// A chat message as stored: sent by us (stored on the peer's ack) or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Random id, the same on both ends.
    pub id: MessageId,
    /// Author.
    pub from: NodeId,
    /// Author's name when the message was stored.
    pub from_name: String,
    /// Whether that name was vouched for then (ours, a contact's, the server's
    /// binding), rather than only claimed.
    pub from_verified: bool,
    /// Recipient.
    pub to: NodeId,
    /// The text.
    pub text: String,
    /// When the author sent it (author's clock), Unix ms.
    pub sent_at_ms: u64,
    /// When the recipient stored it (for our own messages: when the ack came), Unix ms.
    pub received_at_ms: u64,
    /// Chat, or a notice from the server (then `from` is the server's key).
    pub kind: MessageKind,
}

/// The node's persistent state.
#[derive(Debug)]
pub struct NodeStore {
    pub(crate) conn: rusqlite::Connection,
}

impl NodeStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut store = NodeStore {
            conn: crate::open(path, MIGRATIONS)?,
        };
        store.fill_post_authors()?;
        Ok(store)
    }

    /// Opens the store at `path` to read it while no node runs there (the
    /// forum, offline): nothing is created, migrated or written.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Ok(NodeStore {
            conn: crate::open_read_only(path, MIGRATIONS)?,
        })
    }

    /// Stores `m`. Returns false when a message with its id was already stored (a
    /// resend after a lost ack): the first copy is kept.
    pub fn insert_message(&mut self, m: &StoredMessage) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO messages (id, from_id, from_name, to_id, text, sent_at_ms, received_at_ms, kind, from_verified)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                m.id.0.as_slice(),
                m.from.as_bytes().as_slice(),
                m.from_name,
                m.to.as_bytes().as_slice(),
                m.text,
                m.sent_at_ms as i64,
                m.received_at_ms as i64,
                m.kind.code(),
                m.from_verified
            ],
        )?;
        Ok(n == 1)
    }

    /// The newest `limit` messages, oldest first.
    pub fn messages(&self, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, from_id, from_name, to_id, text, sent_at_ms, received_at_ms, kind, from_verified FROM messages
             ORDER BY received_at_ms DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, bool>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, from, from_name, to, text, sent, received, kind, from_verified) = row?;
            let id: [u8; 16] = id.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                table: "messages",
                what: "message id length".into(),
            })?;
            out.push(StoredMessage {
                id: MessageId(id),
                from: node_id("messages", &from)?,
                from_name,
                from_verified,
                to: node_id("messages", &to)?,
                text,
                sent_at_ms: sent as u64,
                received_at_ms: received as u64,
                kind: MessageKind::from_code(kind)?,
            });
        }
        out.reverse();
        Ok(out)
    }

    /// Adds (or renames) a contact. Returns false when it was one already.
    pub fn add_contact(&mut self, c: &Contact) -> Result<bool, StoreError> {
        let existed: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM contacts WHERE node_id = ?1)",
            [c.id.as_bytes().as_slice()],
            |r| r.get(0),
        )?;
        self.conn.execute(
            "INSERT INTO contacts (node_id, name, added_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (node_id) DO UPDATE SET name = ?2",
            params![c.id.as_bytes().as_slice(), c.name, c.added_at_ms as i64],
        )?;
        Ok(!existed)
    }

    /// Removes a contact. Returns whether it was one.
    pub fn remove_contact(&mut self, id: &NodeId) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM contacts WHERE node_id = ?1",
            [id.as_bytes().as_slice()],
        )?;
        Ok(n == 1)
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node_id, name, added_at_ms FROM contacts ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (id, name, at) = row?;
            Ok(Contact {
                id: node_id("contacts", &id)?,
                name,
                added_at_ms: at as u64,
            })
        })
        .collect()
    }

    /// Records a share (replacing one with the same hash).
    pub fn put_share(&mut self, s: &StoredShare) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO shares (hash, name, path, size, mtime_ns, downloaded, added_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                s.hash.0.as_slice(),
                s.name.as_str(),
                crate::path::to_sql(&s.path),
                s.size as i64,
                s.mtime_ns,
                s.downloaded,
                s.added_at_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Forgets the share with `hash`; false if there was none.
    pub fn remove_share(&mut self, hash: &BlobHash) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM shares WHERE hash = ?1", [hash.0.as_slice()])?;
        Ok(n == 1)
    }

    /// Every share, oldest first.
    pub fn shares(&self) -> Result<Vec<StoredShare>, StoreError> {
        self.select_shares("ORDER BY added_at_ms, rowid", [])
    }

    /// The share with `hash`.
    pub fn share(&self, hash: &BlobHash) -> Result<Option<StoredShare>, StoreError> {
        Ok(self
            .select_shares("WHERE hash = ?1", [hash.0.as_slice()])?
            .pop())
    }

    fn select_shares(
        &self,
        tail: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredShare>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT hash, name, path, size, mtime_ns, downloaded, added_at_ms FROM shares {tail}"
        ))?;
        let rows = stmt.query_map(params, |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, rusqlite::types::Value>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, name, path, size, mtime_ns, downloaded, added) = row?;
            out.push(StoredShare {
                hash: blob_hash("shares", &hash)?,
                name: share_name("shares", name)?,
                path: crate::path::from_sql("shares", path)?,
                size: size as u64,
                mtime_ns,
                downloaded,
                added_at_ms: added as u64,
            });
        }
        Ok(out)
    }

    /// Records a download, or its progress (its `verified` bitmap).
    pub fn put_download(&mut self, d: &StoredDownload, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO downloads (hash, name, size, verified, started_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (hash) DO UPDATE SET name = ?2, size = ?3, verified = ?4, updated_at_ms = ?6",
            params![
                d.hash.0.as_slice(),
                d.name.as_str(),
                d.size as i64,
                d.verified,
                d.started_at_ms as i64,
                now_ms as i64
            ],
        )?;
        Ok(())
    }

    /// The download of `hash` in progress, if any.
    pub fn download(&self, hash: &BlobHash) -> Result<Option<StoredDownload>, StoreError> {
        let row = self
            .conn
            .query_row(
                "SELECT name, size, verified, started_at_ms FROM downloads WHERE hash = ?1",
                [hash.0.as_slice()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(name, size, verified, started)| {
            Ok(StoredDownload {
                hash: *hash,
                name: share_name("downloads", name)?,
                size: size as u64,
                verified,
                started_at_ms: started as u64,
            })
        })
        .transpose()
    }

    /// Forgets the download of `hash` (finished or abandoned).
    pub fn remove_download(&mut self, hash: &BlobHash) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM downloads WHERE hash = ?1", [hash.0.as_slice()])?;
        Ok(())
    }
}

fn blob_hash(table: &'static str, bytes: &[u8]) -> Result<BlobHash, StoreError> {
    Ok(BlobHash(bytes.try_into().map_err(|_| {
        StoreError::Corrupt {
            table,
            what: format!("hash of {} bytes", bytes.len()),
        }
    })?))
}

fn share_name(table: &'static str, name: String) -> Result<ShareName, StoreError> {
    ShareName::try_from(name).map_err(|e| StoreError::Corrupt {
        table,
        what: format!("name: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    #[test]
    fn messages_persist_once_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let a = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1)).public();
        let b = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(2)).public();
        let msg = |n: u8, t: u64| StoredMessage {
            id: MessageId([n; 16]),
            from: a,
            from_name: "alice".into(),
            from_verified: true,
            to: b,
            text: format!("m{n}"),
            sent_at_ms: t,
            received_at_ms: t + 1,
            kind: if n == 2 {
                MessageKind::NoticeToAll
            } else {
                MessageKind::Chat
            },
        };
        {
            let mut s = NodeStore::open(&path).unwrap();
            assert!(s.insert_message(&msg(1, 100)).unwrap());
            assert!(s.insert_message(&msg(2, 200)).unwrap());
            assert!(!s.insert_message(&msg(1, 300)).unwrap());
        }
        let s = NodeStore::open(&path).unwrap();
        let got = s.messages(10).unwrap();
        assert_eq!(got, vec![msg(1, 100), msg(2, 200)]);
        assert_eq!(s.messages(1).unwrap(), vec![msg(2, 200)]);
    }

    #[test]
    fn a_read_only_store_reads_and_refuses_writes_and_older_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        assert!(
            NodeStore::open_read_only(&path).is_err(),
            "nothing is created"
        );
        assert!(!path.exists());
        let a = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1)).public();
        let contact = Contact {
            id: a,
            name: "alice".into(),
            added_at_ms: 1,
        };
        NodeStore::open(&path)
            .unwrap()
            .add_contact(&contact)
            .unwrap();
        let mut ro = NodeStore::open_read_only(&path).unwrap();
        assert_eq!(ro.contacts().unwrap(), vec![contact.clone()]);
        assert!(
            ro.add_contact(&contact).is_err(),
            "a read-only store writes nothing"
        );
        drop(ro);
        // A store an older burrow left (one migration short).
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "user_version", v - 1).unwrap();
        drop(conn);
        assert!(matches!(
            NodeStore::open_read_only(&path),
            Err(StoreError::Outdated { .. })
        ));
    }

    #[test]
    fn contacts_are_kept_renamed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let a = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(1)).public();
        let c = |name: &str| Contact {
            id: a,
            name: name.into(),
            added_at_ms: 5,
        };
        {
            let mut s = NodeStore::open(&path).unwrap();
            assert!(s.add_contact(&c("bob")).unwrap());
            assert!(!s.add_contact(&c("bobby")).unwrap());
        }
        let mut s = NodeStore::open(&path).unwrap();
        assert_eq!(s.contacts().unwrap(), vec![c("bobby")]);
        assert!(s.remove_contact(&a).unwrap());
        assert!(!s.remove_contact(&a).unwrap());
        assert!(s.contacts().unwrap().is_empty());
    }

    #[test]
    fn shares_and_downloads_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let share = StoredShare {
            hash: BlobHash([7; 32]),
            name: "holiday video".parse().unwrap(),
            path: PathBuf::from("/tmp/holiday.mkv"),
            size: 1 << 30,
            mtime_ns: 1_700_000_000_123_456_789,
            downloaded: false,
            added_at_ms: 5,
        };
        let download = StoredDownload {
            hash: BlobHash([8; 32]),
            name: "x.bin".parse().unwrap(),
            size: 100_000,
            verified: vec![0b101, 0],
            started_at_ms: 9,
        };
        {
            let mut s = NodeStore::open(&path).unwrap();
            s.put_share(&share).unwrap();
            s.put_download(&download, 10).unwrap();
            let mut more = download.clone();
            more.verified = vec![0b111, 1];
            s.put_download(&more, 11).unwrap();
        }
        let mut s = NodeStore::open(&path).unwrap();
        assert_eq!(s.shares().unwrap(), vec![share.clone()]);
        assert_eq!(s.share(&share.hash).unwrap(), Some(share.clone()));
        let got = s.download(&download.hash).unwrap().unwrap();
        assert_eq!(got.verified, vec![0b111, 1]);
        assert_eq!(got.started_at_ms, 9);
        assert!(s.remove_share(&share.hash).unwrap());
        assert!(!s.remove_share(&share.hash).unwrap());
        s.remove_download(&download.hash).unwrap();
        assert!(s.download(&download.hash).unwrap().is_none());
    }
}
