//! The server's store: which key owns which name.

use std::path::Path;

use burrow_proto::{Name, NodeId};
use rusqlite::{params, OptionalExtension};

use crate::StoreError;

const MIGRATIONS: &[&str] = &["CREATE TABLE names (
        name TEXT PRIMARY KEY,
        node_id BLOB NOT NULL,
        registered_at_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE INDEX names_by_node ON names(node_id);"];

/// The outcome of asking for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameBinding {
    /// The name was free and is now bound to the key.
    New,
    /// The key already owned the name.
    Existing,
    /// Another key owns the name.
    Taken {
        /// The owner.
        owner: NodeId,
    },
}

/// The rendezvous server's persistent state.
#[derive(Debug)]
pub struct ServerStore {
    conn: rusqlite::Connection,
}

impl ServerStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(ServerStore {
            conn: crate::open(path, MIGRATIONS)?,
        })
    }

    /// Binds `name` to `id` if it is free or already `id`'s; records the time.
    pub fn bind_name(
        &mut self,
        name: &Name,
        id: &NodeId,
        now_ms: u64,
    ) -> Result<NameBinding, StoreError> {
        let tx = self.conn.transaction()?;
        let owner: Option<Vec<u8>> = tx
            .query_row(
                "SELECT node_id FROM names WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let result = match owner {
            None => {
                tx.execute(
                    "INSERT INTO names (name, node_id, registered_at_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?3)",
                    params![name.as_str(), id.as_bytes().as_slice(), now_ms as i64],
                )?;
                NameBinding::New
            }
            Some(bytes) if bytes == id.as_bytes() => {
                tx.execute(
                    "UPDATE names SET last_seen_ms = ?2 WHERE name = ?1",
                    params![name.as_str(), now_ms as i64],
                )?;
                NameBinding::Existing
            }
            Some(bytes) => NameBinding::Taken {
                owner: node_id("names", &bytes)?,
            },
        };
        tx.commit()?;
        Ok(result)
    }

    /// The key that owns `name`, if any.
    pub fn name_owner(&self, name: &Name) -> Result<Option<NodeId>, StoreError> {
        let owner: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT node_id FROM names WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        owner.map(|b| node_id("names", &b)).transpose()
    }
}

pub(crate) fn node_id(table: &'static str, bytes: &[u8]) -> Result<NodeId, StoreError> {
    let arr: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table,
        what: format!("node id of {} bytes", bytes.len()),
    })?;
    NodeId::from_bytes(arr).map_err(|e| StoreError::Corrupt {
        table,
        what: e.to_string(),
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

    #[test]
    fn names_bind_to_the_first_key_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let alice: Name = "alice".parse().unwrap();
        {
            let mut s = ServerStore::open(&path).unwrap();
            assert_eq!(s.bind_name(&alice, &id(1), 10).unwrap(), NameBinding::New);
            assert_eq!(
                s.bind_name(&alice, &id(1), 20).unwrap(),
                NameBinding::Existing
            );
        }
        let mut s = ServerStore::open(&path).unwrap();
        assert_eq!(
            s.bind_name(&alice, &id(2), 30).unwrap(),
            NameBinding::Taken { owner: id(1) }
        );
        assert_eq!(s.name_owner(&alice).unwrap(), Some(id(1)));
    }
}
