//! The node's store: chat history.

use std::path::Path;

use burrow_proto::chat::MessageId;
use burrow_proto::NodeId;
use rusqlite::params;

use crate::server::node_id;
use crate::StoreError;

const MIGRATIONS: &[&str] = &["CREATE TABLE messages (
        id BLOB PRIMARY KEY,
        from_id BLOB NOT NULL,
        from_name TEXT NOT NULL,
        to_id BLOB NOT NULL,
        text TEXT NOT NULL,
        sent_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL
    );
    CREATE INDEX messages_by_time ON messages(received_at_ms);"];

/// A chat message as stored: sent by us (stored on the peer's ack) or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Random id, the same on both ends.
    pub id: MessageId,
    /// Author.
    pub from: NodeId,
    /// Author's name when the message was stored.
    pub from_name: String,
    /// Recipient.
    pub to: NodeId,
    /// The text.
    pub text: String,
    /// When the author sent it (author's clock), Unix ms.
    pub sent_at_ms: u64,
    /// When the recipient stored it (for our own messages: when the ack came), Unix ms.
    pub received_at_ms: u64,
}

/// The node's persistent state.
#[derive(Debug)]
pub struct NodeStore {
    conn: rusqlite::Connection,
}

impl NodeStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(NodeStore {
            conn: crate::open(path, MIGRATIONS)?,
        })
    }

    /// Stores `m`. Returns false when a message with its id was already stored (a
    /// resend after a lost ack): the first copy is kept.
    pub fn insert_message(&mut self, m: &StoredMessage) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO messages (id, from_id, from_name, to_id, text, sent_at_ms, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                m.id.0.as_slice(),
                m.from.as_bytes().as_slice(),
                m.from_name,
                m.to.as_bytes().as_slice(),
                m.text,
                m.sent_at_ms as i64,
                m.received_at_ms as i64
            ],
        )?;
        Ok(n == 1)
    }

    /// The newest `limit` messages, oldest first.
    pub fn messages(&self, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, from_id, from_name, to_id, text, sent_at_ms, received_at_ms FROM messages
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
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, from, from_name, to, text, sent, received) = row?;
            let id: [u8; 16] = id.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                table: "messages",
                what: "message id length".into(),
            })?;
            out.push(StoredMessage {
                id: MessageId(id),
                from: node_id("messages", &from)?,
                from_name,
                to: node_id("messages", &to)?,
                text,
                sent_at_ms: sent as u64,
                received_at_ms: received as u64,
            });
        }
        out.reverse();
        Ok(out)
    }
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
            to: b,
            text: format!("m{n}"),
            sent_at_ms: t,
            received_at_ms: t + 1,
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
}
