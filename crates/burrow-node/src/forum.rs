//! The forum as a person sees it: writing posts, reading topics and threads.
//!
//! Posts spread by the mesh service ([`crate::mesh`]); here they are written
//! (signed, stamped by the node's hybrid logical clock, stored, gossiped) and
//! read back from the store. Reading needs no running node: [`list`] takes the
//! store, so `burrow forum` works while the daemon is stopped.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use burrow_proto::forum::{Post, PostId, Topic, MAX_TEXT};
use burrow_proto::mesh::MeshFrame;
use burrow_proto::NodeId;
use burrow_store::NodeStore;

use crate::error::{ForumError, TicketError};
use crate::event::NodeEvent;
use crate::mesh::Mesh;

pub use crate::api::PostView;
pub use crate::names::{shown, vouched};

/// The posts `forum` shows: [`list`], each author's name marked as vouched
/// for or not by `vouched`. The one read of the forum, for a running node
/// ([`Mesh::forum`]) and a stopped one ([`read_stopped`]).
pub fn read(
    store: &NodeStore,
    topic: &Topic,
    thread: Option<&str>,
    vouched: impl Fn(&NodeId, &str) -> bool,
) -> Result<Vec<PostView>, ForumError> {
    let mut posts = list(store, topic, thread)?;
    mark_vouched(&mut posts, vouched);
    Ok(posts)
}

/// The forum of the node at `home` while none runs there (`me`: its key, if
/// it has one): its store opened read-only, names vouched for as the node
/// would with no server to ask (ours, and our contacts').
pub fn read_stopped(
    home: &Path,
    me: Option<NodeId>,
    topic: Option<&str>,
    thread: Option<&str>,
) -> Result<Vec<PostView>, ForumError> {
    let topic = self::topic(topic)?;
    let store = NodeStore::open_read_only(&home.join("node.db"))?;
    let contacts = store.contacts()?;
    read(&store, &topic, thread, |id, name| {
        let contact = contacts
            .iter()
            .find(|c| c.id == *id)
            .map(|c| c.name.as_str());
        vouched(id, name, me.as_ref(), contact, None)
    })
}

/// Sets [`PostView::author_verified`] on `posts` by `vouched(author, name)`.
pub fn mark_vouched(posts: &mut [PostView], vouched: impl Fn(&NodeId, &str) -> bool) {
    for p in posts {
        p.author_verified = p
            .author
            .parse()
            .is_ok_and(|id| vouched(&id, &p.author_name));
    }
}

/// A post as the API shows it (its author not yet vouched for).
pub fn view(p: &Post) -> PostView {
    PostView::of(p)
}

/// Reads a topic name, or the default topic.
pub fn topic(name: Option<&str>) -> Result<Topic, ForumError> {
    match name {
        None => Ok(Topic::default_topic()),
        Some(t) => Topic::from_str(t).map_err(|e| ForumError::BadTopic(e.to_string())),
    }
}

/// The post an id prefix (8 hex digits or more is usual) names.
pub fn find(store: &NodeStore, prefix: &str) -> Result<Post, ForumError> {
    let wanted = prefix.trim().to_ascii_lowercase();
    if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ForumError::NoSuchPost(prefix.to_string()));
    }
    let ids = store.find_posts(&wanted)?;
    match ids.as_slice() {
        [id] => Ok(store
            .posts_by_id(&[*id])?
            .pop()
            .ok_or_else(|| ForumError::NoSuchPost(prefix.to_string()))?),
        [] => Err(ForumError::NoSuchPost(prefix.to_string())),
        many => Err(ForumError::AmbiguousPost(
            prefix.to_string(),
            many.iter()
                .take(5)
                .map(|id| id.short())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The posts of `topic`, oldest first; with `thread`, only that post and the
/// replies under it (the thread's topic, whatever `topic` says).
pub fn list(
    store: &NodeStore,
    topic: &Topic,
    thread: Option<&str>,
) -> Result<Vec<PostView>, ForumError> {
    let Some(prefix) = thread else {
        let posts = store.posts(Some(topic))?;
        return Ok(posts.iter().map(|p| view(&p.post)).collect());
    };
    let root = find(store, prefix)?;
    let posts = store.posts(Some(&root.topic))?;
    let mut children: HashMap<PostId, Vec<&Post>> = HashMap::new();
    for p in &posts {
        if let Some(parent) = p.post.parent {
            children.entry(parent).or_default().push(&p.post);
        }
    }
    let mut keep: HashSet<PostId> = HashSet::from([root.id]);
    let mut todo = vec![root.id];
    while let Some(id) = todo.pop() {
        for c in children.get(&id).into_iter().flatten() {
            if keep.insert(c.id) {
                todo.push(c.id);
            }
        }
    }
    Ok(posts
        .iter()
        .filter(|p| keep.contains(&p.post.id))
        .map(|p| view(&p.post))
        .collect())
}

/// A post with the replies under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The post.
    pub post: PostView,
    /// Its replies, oldest first.
    pub replies: Vec<Branch>,
}

/// Posts arranged as people read them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Threads, newest first (a thread is as new as its newest post).
    pub threads: Vec<Branch>,
    /// Replies whose parent hasn't arrived (with their own replies), oldest
    /// first. Each moves into its thread when its parent comes.
    pub lost: Vec<Branch>,
}

/// How deep replies nest in a [`Tree`]: replies below this depth are listed
/// at it, in reading order. Building, ordering, showing and dropping a branch
/// all recurse over its depth, so a chain of 10 000 replies (valid posts cost
/// a member nothing) would otherwise exhaust a thread's stack and indent its
/// last line by 20 000 spaces; 32 levels is deeper than people follow.
pub const MAX_DEPTH: usize = 32;

/// Arranges `posts` (a [`list`]) into threads, at most [`MAX_DEPTH`] deep.
/// With `root`, that post heads the one thread even though its parent isn't
/// in the list.
pub fn tree(posts: Vec<PostView>, root: Option<&str>) -> Tree {
    let present: HashSet<String> = posts.iter().map(|p| p.id.clone()).collect();
    let mut children: HashMap<String, Vec<PostView>> = HashMap::new();
    let mut tops = Vec::new();
    let mut lost = Vec::new();
    for p in posts {
        match &p.parent {
            _ if root.is_some_and(|r| p.id.starts_with(r)) => tops.push(p),
            None => tops.push(p),
            Some(parent) if present.contains(parent) => {
                children.entry(parent.clone()).or_default().push(p)
            }
            Some(_) => lost.push(p),
        }
    }
    fn grow(p: PostView, children: &mut HashMap<String, Vec<PostView>>, depth: usize) -> Branch {
        let kids = children.remove(&p.id).unwrap_or_default();
        if depth + 1 < MAX_DEPTH {
            let replies = kids
                .into_iter()
                .map(|k| grow(k, children, depth + 1))
                .collect();
            return Branch { post: p, replies };
        }
        // At the limit: the rest of the branch, in reading order (each reply
        // after the one it answers), one level.
        let mut replies = Vec::new();
        let mut stack: Vec<PostView> = kids.into_iter().rev().collect();
        while let Some(k) = stack.pop() {
            if let Some(grand) = children.remove(&k.id) {
                stack.extend(grand.into_iter().rev());
            }
            replies.push(Branch {
                post: k,
                replies: Vec::new(),
            });
        }
        Branch { post: p, replies }
    }
    fn newest(b: &Branch) -> u64 {
        b.replies
            .iter()
            .map(newest)
            .max()
            .unwrap_or(0)
            .max(b.post.hlc)
    }
    let mut threads: Vec<Branch> = tops
        .into_iter()
        .map(|p| grow(p, &mut children, 0))
        .collect();
    threads.sort_by_key(|b| std::cmp::Reverse(newest(b)));
    let lost = lost
        .into_iter()
        .map(|p| grow(p, &mut children, 0))
        .collect();
    Tree { threads, lost }
}

impl Mesh {
    /// Writes a post (a reply when `reply_to` names a post by id prefix), stores
    /// it and gossips it to every linked member following its topic.
    pub async fn post(
        self: &Arc<Self>,
        text: &str,
        reply_to: Option<&str>,
        topic: Option<&str>,
    ) -> Result<PostView, ForumError> {
        if text.trim().is_empty() || text.len() > MAX_TEXT {
            return Err(ForumError::BadText);
        }
        let mesh = self;
        let parent = match reply_to {
            Some(prefix) => {
                let prefix = prefix.to_string();
                Some(mesh.link.with_store_op(move |s| find(s, &prefix)).await?)
            }
            None => None,
        };
        let topic = match (&parent, topic) {
            (Some(p), Some(t)) if self::topic(Some(t))? != p.topic => {
                return Err(ForumError::BadTopic(format!(
                    "the post you answer is in {}; a reply goes in its parent's topic",
                    p.topic
                )))
            }
            (Some(p), _) => p.topic.clone(),
            (None, t) => self::topic(t)?,
        };
        self.follow(&topic).await?;
        let now = mesh.link.wall_ms();
        let created = {
            let mut st = mesh.state();
            match &parent {
                Some(p) => st.hlc.after(p.created, now),
                None => st.hlc.now(now),
            }
        };
        let post = Post::create(
            &mesh.link.config().secret,
            mesh.link.config().name.clone(),
            topic,
            parent.map(|p| p.id),
            created,
            text.to_string(),
        );
        let stored = post.clone();
        mesh.link
            .with_store(move |s| s.insert_posts(&[stored], now, None, |_| true))
            .await?;
        crate::mesh::gossip::broadcast(mesh, &post, None);
        let v = view(&post);
        mesh.link.emit(NodeEvent::Post(v.clone()));
        Ok(v)
    }

    /// The posts of a topic (default: the forum), or of one thread, oldest
    /// first. Reading a topic follows it.
    pub async fn forum(
        self: &Arc<Self>,
        topic: Option<&str>,
        thread: Option<&str>,
    ) -> Result<Vec<PostView>, ForumError> {
        let topic = self::topic(topic)?;
        self.follow(&topic).await?;
        let thread = thread.map(str::to_string);
        let link = self.link.clone();
        self.link
            .with_store_op(move |s| {
                read(s, &topic, thread.as_deref(), |id, name| {
                    link.vouched_name(id, name)
                })
            })
            .await
    }

    /// Follows `topic`: stores it, tells the links, and reconciles it with those
    /// that follow it too.
    pub async fn follow(self: &Arc<Self>, topic: &Topic) -> Result<(), ForumError> {
        if self.state().topics.contains(topic) {
            return Ok(());
        }
        let t = topic.clone();
        self.link.with_store(move |s| s.follow(&t)).await?;
        let topics = {
            let mut st = self.state();
            st.topics.insert(topic.clone());
            let topics: Vec<Topic> = st.topics.iter().cloned().collect();
            for l in st.links.values() {
                let _ = l.tx.try_send(MeshFrame::Topics(topics.clone()));
            }
            topics
        };
        tracing::info!(%topic, following = topics.len(), "following a topic");
        crate::mesh::gossip::sync_everyone(self, topic);
        Ok(())
    }

    /// This node's ticket (serverless only): what a friend passes to `up --join`.
    pub fn ticket(&self) -> Result<String, TicketError> {
        Ok(crate::mesh::join::ticket(self)?.to_string())
    }

    /// The mesh's counters (posts gossiped, duplicates, reconciliation bytes).
    pub fn mesh_stats(&self) -> crate::mesh::MeshStats {
        self.state().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(id: &str, parent: Option<&str>, hlc: u64) -> PostView {
        PostView {
            id: id.into(),
            parent: parent.map(Into::into),
            author: "a".into(),
            author_name: "alice".into(),
            author_verified: true,
            topic: "forum".into(),
            text: id.into(),
            created_at: String::new(),
            hlc,
        }
    }

    #[test]
    fn threads_newest_first_and_orphans_lost_until_their_parent_comes() {
        let posts = vec![
            pv("a1", None, 1),
            pv("b1", None, 2),
            pv("a2", Some("a1"), 3),
            pv("x2", Some("x1"), 4),
            pv("x3", Some("x2"), 5),
        ];
        let t = tree(posts.clone(), None);
        // a1's thread has the newest post (a2 at 3), so it comes before b1.
        assert_eq!(t.threads.len(), 2);
        assert_eq!(t.threads[0].post.id, "a1");
        assert_eq!(t.threads[0].replies[0].post.id, "a2");
        assert_eq!(t.threads[1].post.id, "b1");
        assert_eq!(t.lost.len(), 1);
        assert_eq!(t.lost[0].post.id, "x2");
        assert_eq!(t.lost[0].replies[0].post.id, "x3");

        let mut with_parent = posts;
        with_parent.push(pv("x1", None, 0));
        let t = tree(with_parent, None);
        assert!(t.lost.is_empty());
        assert_eq!(t.threads[0].post.id, "x1");
        assert_eq!(t.threads[0].replies[0].replies[0].post.id, "x3");
    }

    #[test]
    fn a_chain_of_a_hundred_thousand_replies_is_shown_whole_and_at_most_max_depth_deep() {
        let n = 100_000;
        let mut posts = vec![pv("p0", None, 0)];
        for i in 1..n {
            posts.push(pv(&format!("p{i}"), Some(&format!("p{}", i - 1)), i));
        }
        let t = tree(posts, None);
        assert_eq!(t.threads.len(), 1);
        // Walk it without recursion: depth and count.
        let (mut seen, mut deepest) = (0, 0);
        let mut stack = vec![(&t.threads[0], 0usize)];
        let mut order = Vec::new();
        while let Some((b, d)) = stack.pop() {
            seen += 1;
            deepest = deepest.max(d);
            order.push(b.post.hlc);
            stack.extend(b.replies.iter().rev().map(|r| (r, d + 1)));
        }
        assert_eq!(seen, n as usize, "every post is in the tree");
        assert_eq!(deepest, MAX_DEPTH);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in reading order");
    }
}
