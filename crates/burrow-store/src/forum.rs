//! Forum posts, followed topics and small settings in the node's store.
//!
//! Posts are stored whole (their signed postcard form) with the columns queries
//! need beside them; they were verified before they got here. A batch of posts
//! (a reconciliation's worth) is written in one transaction.

use std::collections::HashMap;

use burrow_proto::forum::{Hlc, Post, PostId, Topic};
use burrow_proto::NodeId;
use rusqlite::{params, OptionalExtension};

use crate::{NodeStore, StoreError};

/// A post as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPost {
    /// The signed post.
    pub post: Post,
    /// When it reached this node, Unix ms.
    pub received_at_ms: u64,
}

/// How many posts of one topic the store keeps from whom: valid posts cost a
/// throwaway key nothing, so what one author, and everyone together, may add
/// is bounded. Authors the node vouches for (itself, contacts, the server's
/// bindings) are exempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostQuota {
    /// Posts of one author in one topic.
    pub per_author: u64,
    /// Posts in one topic (every author's counted), past which only exempt
    /// authors' posts are kept.
    pub per_topic: u64,
}

impl Default for PostQuota {
    fn default() -> Self {
        PostQuota {
            per_author: 10_000,
            per_topic: 100_000,
        }
    }
}

/// What became of a post offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now.
    New,
    /// Already there.
    Known,
    /// Not stored: its author's share of the topic, or the topic, is full.
    OverQuota,
}

impl NodeStore {
    /// Stores the posts that are new, within `quota` (none for our own) unless
    /// `exempt` says the author is vouched for; says what became of each (in
    /// order).
    pub fn insert_posts(
        &mut self,
        posts: &[Post],
        now_ms: u64,
        quota: Option<PostQuota>,
        exempt: impl Fn(&NodeId) -> bool,
    ) -> Result<Vec<Stored>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(posts.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO posts (id, topic, parent, created, body, received_at_ms, author)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut exists = tx.prepare_cached("SELECT 1 FROM posts WHERE id = ?1")?;
            let mut by_topic = tx.prepare_cached("SELECT COUNT(*) FROM posts WHERE topic = ?1")?;
            let mut by_author =
                tx.prepare_cached("SELECT COUNT(*) FROM posts WHERE topic = ?1 AND author = ?2")?;
            // Counted once per batch, then kept up to date here.
            let mut topics: HashMap<Topic, u64> = HashMap::new();
            let mut authors: HashMap<(Topic, NodeId), u64> = HashMap::new();
            for p in posts {
                if exists.exists([p.id.0.as_slice()])? {
                    out.push(Stored::Known);
                    continue;
                }
                let limited = quota.filter(|_| !exempt(&p.author));
                if let Some(q) = limited {
                    let topic = match topics.get(&p.topic) {
                        Some(n) => *n,
                        None => {
                            let n: i64 = by_topic.query_row([p.topic.as_str()], |r| r.get(0))?;
                            *topics.entry(p.topic.clone()).or_insert(n as u64)
                        }
                    };
                    let key = (p.topic.clone(), p.author);
                    let author = match authors.get(&key) {
                        Some(n) => *n,
                        None => {
                            let n: i64 = by_author.query_row(
                                params![p.topic.as_str(), p.author.as_bytes().as_slice()],
                                |r| r.get(0),
                            )?;
                            *authors.entry(key.clone()).or_insert(n as u64)
                        }
                    };
                    if topic >= q.per_topic || author >= q.per_author {
                        out.push(Stored::OverQuota);
                        continue;
                    }
                }
                let body = postcard::to_stdvec(p).map_err(|e| StoreError::Corrupt {
                    table: "posts",
                    what: e.to_string(),
                })?;
                let n = insert.execute(params![
                    p.id.0.as_slice(),
                    p.topic.as_str(),
                    p.parent.map(|id| id.0.to_vec()),
                    p.created.0 as i64,
                    body,
                    now_ms as i64,
                    p.author.as_bytes().as_slice()
                ])?;
                if n == 1 {
                    // Only counts read from the table are kept up to date: one
                    // not read yet is read (with this post in it) when needed.
                    if let Some(n) = topics.get_mut(&p.topic) {
                        *n += 1;
                    }
                    if let Some(n) = authors.get_mut(&(p.topic.clone(), p.author)) {
                        *n += 1;
                    }
                    out.push(Stored::New);
                } else {
                    out.push(Stored::Known);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Fills in the author column of posts stored before it existed.
    pub(crate) fn fill_post_authors(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut missing = tx.prepare("SELECT id, body FROM posts WHERE author IS NULL")?;
            let rows: Vec<(Vec<u8>, Vec<u8>)> = missing
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut set = tx.prepare("UPDATE posts SET author = ?1 WHERE id = ?2")?;
            for (id, body) in rows {
                // A corrupt body is reported where it is read, not here.
                if let Ok(post) = decode(&body) {
                    set.execute(params![post.author.as_bytes().as_slice(), id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every post of `topic` (all topics when `None`), oldest first.
    pub fn posts(&self, topic: Option<&Topic>) -> Result<Vec<StoredPost>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT body, received_at_ms FROM posts WHERE ?1 IS NULL OR topic = ?1
             ORDER BY created, id",
        )?;
        let rows = stmt.query_map([topic.map(|t| t.as_str())], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        rows.map(|row| {
            let (body, received) = row?;
            Ok(StoredPost {
                post: decode(&body)?,
                received_at_ms: received as u64,
            })
        })
        .collect()
    }

    /// The newest post's clock reading.
    pub fn latest_post_time(&self) -> Result<Option<Hlc>, StoreError> {
        let t: Option<i64> = self
            .conn
            .query_row("SELECT MAX(created) FROM posts", [], |r| r.get(0))?;
        Ok(t.map(|t| Hlc(t as u64)))
    }

    /// The `(created, id)` of every post of `topic`: the set reconciliation works on.
    pub fn post_items(&self, topic: &Topic) -> Result<Vec<(Hlc, PostId)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT created, id FROM posts WHERE topic = ?1")?;
        let rows = stmt.query_map([topic.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        rows.map(|row| {
            let (created, id) = row?;
            Ok((Hlc(created as u64), post_id(&id)?))
        })
        .collect()
    }

    /// The posts with these ids that we have.
    pub fn posts_by_id(&self, ids: &[PostId]) -> Result<Vec<Post>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM posts WHERE id = ?1")?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(body) = stmt
                .query_row([id.0.as_slice()], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
            {
                out.push(decode(&body)?);
            }
        }
        Ok(out)
    }

    /// Which of `ids` we have.
    pub fn have_posts(&self, ids: &[PostId]) -> Result<Vec<bool>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM posts WHERE id = ?1")?;
        ids.iter()
            .map(|id| Ok(stmt.exists([id.0.as_slice()])?))
            .collect()
    }

    /// The ids of posts whose hex id starts with `prefix` (lowercase hex), at
    /// most 10 (enough to say a prefix is ambiguous).
    pub fn find_posts(&self, prefix: &str) -> Result<Vec<PostId>, StoreError> {
        // Hex ids sort like their bytes: the prefix padded with 0s and with fs
        // bounds the ids it covers.
        let bound = |fill: char| -> Option<Vec<u8>> {
            let mut full: String = prefix.chars().take(64).collect();
            while full.len() < 64 {
                full.push(fill);
            }
            hex::decode(full).ok()
        };
        let (Some(low), Some(high)) = (bound('0'), bound('f')) else {
            return Ok(Vec::new());
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM posts WHERE id BETWEEN ?1 AND ?2 ORDER BY id LIMIT 10",
        )?;
        let rows = stmt.query_map([low, high], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|row| post_id(&row?)).collect()
    }

    /// The topics this node follows, by name.
    pub fn topics(&self) -> Result<Vec<Topic>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT topic FROM topics ORDER BY topic")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|row| {
            row?.parse()
                .map_err(|e: burrow_proto::forum::TopicError| StoreError::Corrupt {
                    table: "topics",
                    what: e.to_string(),
                })
        })
        .collect()
    }

    /// Follows `topic`; false if it was followed already.
    pub fn follow(&mut self, topic: &Topic) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO topics (topic) VALUES (?1)",
            [topic.as_str()],
        )?;
        Ok(n == 1)
    }

    /// A setting's value.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a setting.
    pub fn set_setting(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }
}

fn decode(body: &[u8]) -> Result<Post, StoreError> {
    postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
        table: "posts",
        what: e.to_string(),
    })
}

fn post_id(bytes: &[u8]) -> Result<PostId, StoreError> {
    Ok(PostId(bytes.try_into().map_err(|_| {
        StoreError::Corrupt {
            table: "posts",
            what: format!("id of {} bytes", bytes.len()),
        }
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn post(text: &str, parent: Option<PostId>, t: u64) -> Post {
        by(1, text, parent, t)
    }

    fn by(author: u64, text: &str, parent: Option<PostId>, t: u64) -> Post {
        let key = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(author));
        Post::create(
            &key,
            "alice".parse().unwrap(),
            Topic::default_topic(),
            parent,
            Hlc(t),
            text.into(),
        )
    }

    #[test]
    fn posts_persist_once_and_come_back_in_clock_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let a = post("first", None, 200);
        let b = post("reply", Some(a.id), 100);
        {
            let mut s = NodeStore::open(&path).unwrap();
            assert_eq!(
                s.insert_posts(&[b.clone(), a.clone()], 5, None, |_| false)
                    .unwrap(),
                [Stored::New, Stored::New]
            );
            assert_eq!(
                s.insert_posts(std::slice::from_ref(&a), 6, None, |_| false)
                    .unwrap(),
                [Stored::Known]
            );
            assert!(s.follow(&"games".parse().unwrap()).unwrap());
            s.set_setting("k", b"v").unwrap();
        }
        let s = NodeStore::open(&path).unwrap();
        let all: Vec<Post> = s.posts(None).unwrap().into_iter().map(|p| p.post).collect();
        assert_eq!(all, [b.clone(), a.clone()]);
        assert_eq!(s.post_items(&Topic::default_topic()).unwrap().len(), 2);
        assert!(s.posts(Some(&"games".parse().unwrap())).unwrap().is_empty());
        assert_eq!(
            s.posts_by_id(&[a.id, PostId([9; 32])]).unwrap(),
            vec![a.clone()]
        );
        assert_eq!(
            s.have_posts(&[a.id, PostId([9; 32])]).unwrap(),
            [true, false]
        );
        assert_eq!(s.find_posts(&a.id.to_string()[..7]).unwrap(), [a.id]);
        assert_eq!(s.find_posts(&b.id.short()).unwrap(), [b.id]);
        assert!(s.find_posts("").unwrap().len() == 2);
        let one_digit = &a.id.to_string()[..1];
        assert!(s.find_posts(one_digit).unwrap().contains(&a.id));
        assert!(s.find_posts("xyz").unwrap().is_empty());
        assert_eq!(s.topics().unwrap(), ["games".parse().unwrap()]);
        assert_eq!(s.setting("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn quotas_bound_each_author_and_the_topic_but_not_the_vouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = NodeStore::open(&dir.path().join("node.db")).unwrap();
        let quota = Some(PostQuota {
            per_author: 3,
            per_topic: 5,
        });
        let posts: Vec<Post> = (0..4).map(|i| by(1, &format!("a{i}"), None, i)).collect();
        let got = s.insert_posts(&posts, 1, quota, |_| false).unwrap();
        assert_eq!(
            got,
            [Stored::New, Stored::New, Stored::New, Stored::OverQuota]
        );
        // A second author fills the topic; a third finds it full.
        let more: Vec<Post> = (0..3).map(|i| by(2, &format!("b{i}"), None, i)).collect();
        let got = s.insert_posts(&more, 2, quota, |_| false).unwrap();
        assert_eq!(got, [Stored::New, Stored::New, Stored::OverQuota]);
        let late = by(3, "c", None, 9);
        let got = s.insert_posts(std::slice::from_ref(&late), 3, quota, |_| false);
        assert_eq!(got.unwrap(), [Stored::OverQuota]);
        // A vouched author is stored still; a known post stays known.
        let vouched = late.author;
        let got = s.insert_posts(&[late, posts[0].clone()], 4, quota, |a| *a == vouched);
        assert_eq!(got.unwrap(), [Stored::New, Stored::Known]);
        assert_eq!(s.posts(None).unwrap().len(), 6);
    }

    #[test]
    fn a_vouched_post_first_in_a_batch_does_not_open_the_full_topic() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = NodeStore::open(&dir.path().join("node.db")).unwrap();
        let quota = Some(PostQuota {
            per_author: 100,
            per_topic: 3,
        });
        let first: Vec<Post> = (0..3).map(|i| by(1, &format!("a{i}"), None, i)).collect();
        s.insert_posts(&first, 1, quota, |_| false).unwrap();
        let friend = by(2, "from a contact", None, 10);
        let vouched = friend.author;
        let batch = [friend, by(3, "a stranger", None, 11)];
        let got = s.insert_posts(&batch, 2, quota, |a| *a == vouched).unwrap();
        assert_eq!(got, [Stored::New, Stored::OverQuota]);
    }

    #[test]
    fn posts_stored_before_the_author_column_count_against_their_author() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        {
            let mut s = NodeStore::open(&path).unwrap();
            let posts: Vec<Post> = (0..2).map(|i| by(1, &format!("a{i}"), None, i)).collect();
            s.insert_posts(&posts, 1, None, |_| false).unwrap();
            s.conn
                .execute("UPDATE posts SET author = NULL", [])
                .unwrap();
        }
        let mut s = NodeStore::open(&path).unwrap();
        let quota = Some(PostQuota {
            per_author: 2,
            per_topic: 10,
        });
        let got = s.insert_posts(&[by(1, "a2", None, 2)], 2, quota, |_| false);
        assert_eq!(got.unwrap(), [Stored::OverQuota]);
    }
}
