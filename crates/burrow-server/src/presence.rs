//! Who hears about whom: the presence scope, watch lists and the name index.
//!
//! With [`PresenceScope::Everyone`] every join and leave goes to every node
//! online: simple, and what a community server wants (`burrow peers` lists
//! everyone), but it costs the square of the nodes online, in messages and in
//! the snapshot each newcomer gets. With [`PresenceScope::Watched`] a node hears
//! only about the nodes it watches: those it names in `Watch` (its contacts),
//! those it looked up by name, and its links (watched both ways for it). Then a
//! join or leave costs what its watchers number, and a Welcome is empty.
//!
//! Watch lists belong to a session: they are dropped when the watcher leaves,
//! and a node sends its list again after each Welcome. Each node watches at most
//! [`MAX_WATCHES`] nodes.

use std::collections::{HashMap, HashSet};

use burrow_proto::rendezvous::{PresenceScope, MAX_WATCHES};
use burrow_proto::{Name, NodeId};

/// Presence state, kept by the [`crate::broker::Registry`].
#[derive(Debug, Default)]
pub struct Presence {
    scope: PresenceScope,
    /// Online nodes by name.
    by_name: HashMap<Name, NodeId>,
    /// Watcher → the nodes it watches.
    watching: HashMap<NodeId, HashSet<NodeId>>,
    /// Watched node → who watches it (online or not).
    watchers: HashMap<NodeId, HashSet<NodeId>>,
}

impl Presence {
    /// Empty, with `scope`.
    pub fn new(scope: PresenceScope) -> Self {
        Presence {
            scope,
            ..Presence::default()
        }
    }

    /// The scope in force.
    pub fn scope(&self) -> PresenceScope {
        self.scope
    }

    /// `id` came online as `name` (a new session drops its old watch list).
    pub fn joined(&mut self, id: NodeId, name: &Name) {
        self.by_name.insert(name.clone(), id);
        self.drop_watches_of(id);
    }

    /// `id`, online as `name`, left.
    pub fn left(&mut self, id: NodeId, name: &Name) {
        if self.by_name.get(name) == Some(&id) {
            self.by_name.remove(name);
        }
        self.drop_watches_of(id);
    }

    /// Who hears that `id` came or went, given everyone online (under
    /// `Everyone`, all of them but `id`).
    pub fn audience<'a>(
        &'a self,
        id: NodeId,
        online: impl Iterator<Item = &'a NodeId> + 'a,
    ) -> Vec<NodeId> {
        match self.scope {
            PresenceScope::Everyone => online.filter(|o| **o != id).copied().collect(),
            PresenceScope::Watched => self
                .watchers
                .get(&id)
                .map(|w| w.iter().copied().collect())
                .unwrap_or_default(),
        }
    }

    /// `watcher` watches `ids` (up to its limit); returns those now watched.
    /// Under `Everyone` nothing is kept: everyone hears about everyone.
    pub fn watch(&mut self, watcher: NodeId, ids: &[NodeId]) -> Vec<NodeId> {
        if self.scope == PresenceScope::Everyone {
            return Vec::new();
        }
        let mut added = Vec::new();
        for &id in ids {
            if id == watcher {
                continue;
            }
            let mine = self.watching.entry(watcher).or_default();
            if mine.len() >= MAX_WATCHES && !mine.contains(&id) {
                break;
            }
            mine.insert(id);
            self.watchers.entry(id).or_default().insert(watcher);
            added.push(id);
        }
        added
    }

    /// `watcher` no longer watches `ids`.
    pub fn unwatch(&mut self, watcher: NodeId, ids: &[NodeId]) {
        for id in ids {
            if let Some(mine) = self.watching.get_mut(&watcher) {
                mine.remove(id);
            }
            self.forget_watcher(*id, watcher);
        }
    }

    /// The node online under `name`.
    pub fn lookup(&self, name: &Name) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// How many watch entries are kept (for tests and the load benchmark).
    pub fn watch_entries(&self) -> usize {
        self.watching.values().map(HashSet::len).sum()
    }

    fn drop_watches_of(&mut self, watcher: NodeId) {
        for id in self.watching.remove(&watcher).unwrap_or_default() {
            self.forget_watcher(id, watcher);
        }
    }

    fn forget_watcher(&mut self, id: NodeId, watcher: NodeId) {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.remove(&watcher);
            if w.is_empty() {
                self.watchers.remove(&id);
            }
        }
    }
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
    fn watchers_alone_hear_about_a_node_and_lose_their_lists_when_they_leave() {
        let mut p = Presence::new(PresenceScope::Watched);
        let (a, b, c) = (id(1), id(2), id(3));
        let names: Vec<Name> = ["a", "b", "c"].iter().map(|n| n.parse().unwrap()).collect();
        for (n, i) in names.iter().zip([a, b, c]) {
            p.joined(i, n);
        }
        assert_eq!(p.watch(a, &[b, a]), vec![b]);
        let online = [a, b, c];
        assert_eq!(p.audience(b, online.iter()), vec![a]);
        assert!(p.audience(c, online.iter()).is_empty());
        assert_eq!(p.lookup(&names[2]), Some(c));
        // a leaves: its list goes; b is watched by nobody.
        p.left(a, &names[0]);
        assert!(p.audience(b, online.iter()).is_empty());
        assert_eq!(p.lookup(&names[0]), None);
        assert_eq!(p.watch_entries(), 0);
        p.watch(c, &[b]);
        p.unwatch(c, &[b]);
        assert!(p.audience(b, online.iter()).is_empty());
    }

    #[test]
    fn everyone_hears_about_everyone_and_watch_lists_are_bounded() {
        let mut e = Presence::new(PresenceScope::Everyone);
        let online: Vec<NodeId> = (0..4).map(id).collect();
        assert_eq!(e.audience(online[0], online.iter()).len(), 3);
        assert!(e.watch(online[0], &online).is_empty());

        let mut w = Presence::new(PresenceScope::Watched);
        let many: Vec<NodeId> = (10..10 + MAX_WATCHES as u64 + 5).map(id).collect();
        assert_eq!(w.watch(online[0], &many).len(), MAX_WATCHES);
        assert_eq!(w.watch_entries(), MAX_WATCHES);
    }
}
