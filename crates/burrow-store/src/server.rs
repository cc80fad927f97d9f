//! The server's store: which key owns which name, and the file tracker (who
//! offers which file). Accounts, invites, the allowlist, bans and the audit
//! log are in [`crate::admission`].

use std::path::Path;

use burrow_proto::files::{BlobHash, FileEntry};
use burrow_proto::ShareName;
use burrow_proto::{Name, NodeId};
use rusqlite::{params, OptionalExtension};

use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE names (
        name TEXT PRIMARY KEY,
        node_id BLOB NOT NULL,
        registered_at_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE INDEX names_by_node ON names(node_id);",
    "CREATE TABLE offers (
        hash BLOB NOT NULL,
        node_id BLOB NOT NULL,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        offered_at_ms INTEGER NOT NULL,
        PRIMARY KEY (hash, node_id)
    );
    CREATE INDEX offers_by_node ON offers(node_id);
    CREATE INDEX offers_by_name ON offers(name COLLATE NOCASE);",
    crate::admission::MIGRATION,
    // Searching names by substring with an index (trigrams) instead of a
    // LIKE scan over every offer. The index points at offers by rowid:
    // nothing here VACUUMs (which may renumber rowids), and searches check
    // the name again anyway.
    "CREATE VIRTUAL TABLE offer_names USING fts5(
        name, content='offers', content_rowid='rowid', tokenize='trigram'
    );
    INSERT INTO offer_names(offer_names) VALUES ('rebuild');
    CREATE TRIGGER offers_named AFTER INSERT ON offers BEGIN
        INSERT INTO offer_names(rowid, name) VALUES (new.rowid, new.name);
    END;
    CREATE TRIGGER offers_unnamed AFTER DELETE ON offers BEGIN
        INSERT INTO offer_names(offer_names, rowid, name) VALUES ('delete', old.rowid, old.name);
    END;
    CREATE TRIGGER offers_renamed AFTER UPDATE ON offers BEGIN
        INSERT INTO offer_names(offer_names, rowid, name) VALUES ('delete', old.rowid, old.name);
        INSERT INTO offer_names(rowid, name) VALUES (new.rowid, new.name);
    END;",
];

/// Offers a name search looks at, at most (the newest): a search's cost is
/// bounded whatever it matches (the most offered files among them come first).
pub const MAX_SEARCHED: usize = 10_000;

/// Searches shorter than this many characters match whole names only (the
/// substring index is of three-character pieces).
pub const MIN_SUBSTRING: usize = 3;

/// A file in the tracker, by hash and claimed size, with every node that
/// offers it so (online or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Hash, size, and the name most providers give it (the earliest of
    /// those on a tie).
    pub file: FileEntry,
    /// Who offers it, earliest first, each with the name it gave.
    pub providers: Vec<(NodeId, ShareName)>,
}

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
    pub(crate) conn: rusqlite::Connection,
}

impl ServerStore {
    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(ServerStore {
            conn: crate::open(path, MIGRATIONS)?,
        })
    }

    /// A second connection to the store at `path` (opened and migrated by
    /// [`Self::open`] first) that only reads: searches run on it, so they
    /// never wait for writers, nor writers for them (the store is in WAL mode).
    pub fn open_reader(path: &Path) -> Result<Self, StoreError> {
        let conn = crate::open(path, MIGRATIONS)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(ServerStore { conn })
    }

    /// Binds `name` to `id` if it is free or already `id`'s; records the time.
    pub fn bind_name(
        &mut self,
        name: &Name,
        id: &NodeId,
        now_ms: u64,
    ) -> Result<NameBinding, StoreError> {
        Ok(self
            .bind_names(&[(name.clone(), *id)], now_ms)?
            .pop()
            .expect("one binding per request"))
    }

    /// [`Self::bind_name`] for many at once, in one transaction (one sync to
    /// disk for a burst of registrations). Later requests see earlier ones: of
    /// two keys asking for one free name, the first gets it.
    pub fn bind_names(
        &mut self,
        requests: &[(Name, NodeId)],
        now_ms: u64,
    ) -> Result<Vec<NameBinding>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(requests.len());
        for (name, id) in requests {
            out.push(bind_in(&tx, name, id, now_ms)?);
        }
        tx.commit()?;
        Ok(out)
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

    /// Records that `node` offers `files` (after forgetting its earlier offers,
    /// with `replace`). Returns false, writing nothing, when that would make the
    /// node offer more than `max` files.
    pub fn offer(
        &mut self,
        node: &NodeId,
        replace: bool,
        files: &[FileEntry],
        max: usize,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let id = node.as_bytes().as_slice();
        if replace {
            tx.execute("DELETE FROM offers WHERE node_id = ?1", [id])?;
        }
        for f in files {
            tx.execute(
                "INSERT INTO offers (hash, node_id, name, size, offered_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (hash, node_id) DO UPDATE SET name = ?3, size = ?4",
                params![f.hash.0.as_slice(), id, f.name.as_str(), f.size as i64, now_ms as i64],
            )?;
        }
        let count: i64 = tx.query_row(
            "SELECT COUNT(*) FROM offers WHERE node_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if count as usize > max {
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    /// `node` no longer offers `hash`.
    pub fn unoffer(&mut self, node: &NodeId, hash: &BlobHash) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM offers WHERE hash = ?1 AND node_id = ?2",
            params![hash.0.as_slice(), node.as_bytes().as_slice()],
        )?;
        Ok(())
    }

    /// Files whose name (as any provider gives it) contains `text` (ASCII
    /// case-insensitive; shorter than [`MIN_SUBSTRING`]: is `text`), at most
    /// `limit`, most providers first among the first [`MAX_SEARCHED`] offers
    /// that match.
    pub fn search_name(&self, text: &str, limit: usize) -> Result<Vec<Offered>, StoreError> {
        if text.chars().count() < MIN_SUBSTRING {
            return self.offered(
                "SELECT hash, size FROM offers WHERE name = ?1 COLLATE NOCASE
                 GROUP BY hash, size ORDER BY COUNT(*) DESC, MIN(offered_at_ms) LIMIT ?2",
                params![text, limit as i64],
            );
        }
        // The index finds candidates (an FTS5 phrase of the text's trigrams);
        // LIKE keeps the search's meaning exact.
        let phrase = format!("\"{}\"", text.replace('"', "\"\""));
        let pattern = format!(
            "%{}%",
            text.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        self.offered(
            "SELECT hash, size FROM offers
             WHERE rowid IN (SELECT rowid FROM offer_names WHERE offer_names MATCH ?1
                             ORDER BY rowid DESC LIMIT ?2)
               AND name LIKE ?3 ESCAPE '\\'
             GROUP BY hash, size ORDER BY COUNT(*) DESC, MIN(offered_at_ms) LIMIT ?4",
            params![phrase, MAX_SEARCHED as i64, pattern, limit as i64],
        )
    }

    /// The file with `hash`: one entry per size its providers claim, most
    /// providers first (empty if nobody offers it).
    pub fn lookup(&self, hash: &BlobHash) -> Result<Vec<Offered>, StoreError> {
        self.offered(
            "SELECT hash, size FROM offers WHERE hash = ?1
             GROUP BY hash, size ORDER BY COUNT(*) DESC, MIN(offered_at_ms)",
            [hash.0.as_slice()],
        )
    }

    /// Nodes whose offers are all older than `cutoff_ms` (at most `limit`):
    /// the caller forgets those that are not online ([`Self::forget_offers`]).
    /// A node replaces its offers each time it registers, so these are nodes
    /// long gone, or online ever since.
    pub fn stale_offerers(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<NodeId>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT node_id FROM offers GROUP BY node_id HAVING MAX(offered_at_ms) < ?1 LIMIT ?2",
        )?;
        let ids: Vec<Vec<u8>> = stmt
            .query_map(params![cutoff_ms as i64, limit as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        ids.iter().map(|b| node_id("offers", b)).collect()
    }

    /// Drops every offer of `nodes`, in one transaction.
    pub fn forget_offers(&mut self, nodes: &[NodeId]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for n in nodes {
            tx.execute(
                "DELETE FROM offers WHERE node_id = ?1",
                [n.as_bytes().as_slice()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn offered(
        &self,
        entries_sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Offered>, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            table: "offers",
            what,
        };
        let mut stmt = self.conn.prepare(entries_sql)?;
        let entries: Vec<(Vec<u8>, i64)> = stmt
            .query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut rows = self.conn.prepare(
            "SELECT node_id, name FROM offers WHERE hash = ?1 AND size = ?2
             ORDER BY offered_at_ms, rowid",
        )?;
        let mut out = Vec::with_capacity(entries.len());
        for (h, size) in entries {
            let hash = BlobHash(
                h.as_slice()
                    .try_into()
                    .map_err(|_| corrupt(format!("hash of {} bytes", h.len())))?,
            );
            let mut providers = Vec::new();
            let found = rows.query_map(params![h.as_slice(), size], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in found {
                let (node, name) = row?;
                let name: ShareName = name.parse().map_err(|e| corrupt(format!("name: {e}")))?;
                providers.push((node_id("offers", &node)?, name));
            }
            if let Some(name) = usual_name(&providers) {
                out.push(Offered {
                    file: FileEntry {
                        hash,
                        name,
                        size: size as u64,
                    },
                    providers,
                });
            }
        }
        Ok(out)
    }
}

/// The name most providers give a file; the earliest of those on a tie.
fn usual_name(providers: &[(NodeId, ShareName)]) -> Option<ShareName> {
    let mut counts: std::collections::HashMap<&ShareName, (usize, usize)> = Default::default();
    for (i, (_, name)) in providers.iter().enumerate() {
        counts.entry(name).or_insert((0, i)).0 += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, (n, first))| (*n, std::cmp::Reverse(*first)))
        .map(|(name, _)| name.clone())
}

/// One binding inside `tx` (see [`ServerStore::bind_name`]).
fn bind_in(
    tx: &rusqlite::Transaction<'_>,
    name: &Name,
    id: &NodeId,
    now_ms: u64,
) -> Result<NameBinding, StoreError> {
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
    Ok(result)
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
        // A batch binds in order: of two keys asking for one free name, the
        // first gets it.
        let bob: Name = "bob".parse().unwrap();
        let got = s
            .bind_names(
                &[
                    (bob.clone(), id(3)),
                    (bob.clone(), id(4)),
                    (alice.clone(), id(1)),
                ],
                40,
            )
            .unwrap();
        assert_eq!(
            got,
            vec![
                NameBinding::New,
                NameBinding::Taken { owner: id(3) },
                NameBinding::Existing
            ]
        );
    }

    #[test]
    fn the_tracker_finds_files_by_name_and_hash_and_bounds_offers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let file = |n: u8, name: &str| FileEntry {
            hash: BlobHash([n; 32]),
            name: name.parse().unwrap(),
            size: n as u64 * 100,
        };
        {
            let mut s = ServerStore::open(&path).unwrap();
            let a = [file(1, "Holiday.mkv"), file(2, "notes 100%.txt")];
            assert!(s.offer(&id(1), true, &a, 10, 1).unwrap());
            assert!(s
                .offer(&id(2), false, &[file(1, "holiday copy")], 10, 2)
                .unwrap());
            // Past the limit nothing is written.
            let many: Vec<_> = (10..30).map(|n| file(n, "x")).collect();
            assert!(!s.offer(&id(2), false, &many, 10, 3).unwrap());
        }
        let mut s = ServerStore::open(&path).unwrap();
        let found = s.search_name("HOLIDAY", 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].file, file(1, "Holiday.mkv"));
        let names = |o: &Offered| -> Vec<(NodeId, String)> {
            o.providers
                .iter()
                .map(|(id, n)| (*id, n.to_string()))
                .collect()
        };
        assert_eq!(
            names(&found[0]),
            [
                (id(1), "Holiday.mkv".into()),
                (id(2), "holiday copy".into())
            ]
        );
        // LIKE's wildcards are matched literally.
        assert_eq!(s.search_name("100%", 10).unwrap().len(), 1);
        assert_eq!(s.search_name("_", 10).unwrap().len(), 0);
        assert_eq!(
            names(&s.lookup(&BlobHash([2; 32])).unwrap()[0]),
            [(id(1), "notes 100%.txt".into())]
        );
        assert!(s.lookup(&BlobHash([9; 32])).unwrap().is_empty());
        // Replacing forgets the node's old offers; unoffer removes one.
        s.offer(&id(1), true, &[], 10, 4).unwrap();
        assert!(s.lookup(&BlobHash([2; 32])).unwrap().is_empty());
        s.unoffer(&id(2), &BlobHash([1; 32])).unwrap();
        assert!(s.search_name("holiday", 10).unwrap().is_empty());
    }

    #[test]
    fn name_search_finds_substrings_and_a_reader_sees_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = ServerStore::open(&path).unwrap();
        let reader = ServerStore::open_reader(&path).unwrap();
        let file = |n: u8, name: &str| FileEntry {
            hash: BlobHash([n; 32]),
            name: name.parse().unwrap(),
            size: 10,
        };
        s.offer(
            &id(1),
            true,
            &[file(1, "Summer Holiday.mkv"), file(2, "ab")],
            10,
            1,
        )
        .unwrap();
        let hashes =
            |found: Vec<Offered>| -> Vec<u8> { found.iter().map(|o| o.file.hash.0[0]).collect() };
        assert_eq!(hashes(reader.search_name("LIDAY", 10).unwrap()), [1]);
        assert_eq!(hashes(reader.search_name("r hol", 10).unwrap()), [1]);
        // Under three characters: whole names only.
        assert_eq!(hashes(reader.search_name("AB", 10).unwrap()), [2]);
        assert!(reader.search_name("su", 10).unwrap().is_empty());
        // A provider renaming its offer is found by the new name only.
        s.offer(&id(1), false, &[file(1, "Winter.mkv")], 10, 2)
            .unwrap();
        assert!(reader.search_name("holiday", 10).unwrap().is_empty());
        assert_eq!(hashes(reader.search_name("winter", 10).unwrap()), [1]);
        // Quotes and FTS syntax in a search are text, not query language.
        s.offer(&id(2), false, &[file(3, "say \"hi\" OR NOT*")], 10, 3)
            .unwrap();
        assert_eq!(
            hashes(reader.search_name("\"hi\" or not*", 10).unwrap()),
            [3]
        );
        // The reader writes nothing.
        assert!(reader.conn.execute("DELETE FROM offers", []).is_err());
    }

    #[test]
    fn a_claim_of_another_size_gets_its_own_entry_and_long_gone_offerers_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ServerStore::open(&dir.path().join("server.db")).unwrap();
        let entry = |size: u64, name: &str| FileEntry {
            hash: BlobHash([7; 32]),
            name: name.parse().unwrap(),
            size,
        };
        // A liar claims the hash first, with its own size and name; two honest
        // nodes offer the true one later.
        s.offer(&id(9), true, &[entry(1 << 40, "free money")], 10, 1)
            .unwrap();
        s.offer(&id(1), true, &[entry(4096, "photo.jpg")], 10, 2)
            .unwrap();
        s.offer(&id(2), true, &[entry(4096, "photo.jpg")], 10, 3)
            .unwrap();
        let found = s.lookup(&BlobHash([7; 32])).unwrap();
        let got: Vec<(u64, String, usize)> = found
            .iter()
            .map(|o| (o.file.size, o.file.name.to_string(), o.providers.len()))
            .collect();
        assert_eq!(
            got,
            [
                (4096, "photo.jpg".into(), 2),
                (1 << 40, "free money".into(), 1)
            ],
            "the honest size is not overruled, and most providers come first"
        );
        // Offers older than the cutoff name their nodes; forgetting drops them.
        assert_eq!(s.stale_offerers(2, 10).unwrap(), vec![id(9)]);
        s.forget_offers(&[id(9)]).unwrap();
        assert_eq!(s.lookup(&BlobHash([7; 32])).unwrap().len(), 1);
    }
}
