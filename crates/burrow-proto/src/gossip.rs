//! Plumtree broadcast (Leitão, Pereira and Rodrigues, "Epidemic Broadcast
//! Trees", 2007), as a sans-IO machine: it decides whom to send what, the
//! caller sends it and tells it what came back. Time comes in as `now`.
//!
//! Every link starts *eager*. A message seen for the first time goes in full
//! to the eager links and as an id (`IHave`) to the lazy ones, except back to
//! the link it came on. A message that arrives again turns the link it came
//! on lazy and tells the other side so (`Prune`): after the first few
//! messages the eager links form a spanning tree, and each message crosses
//! each link about once. An id announced by a lazy link whose message hasn't
//! come by the tree within `graft_after` is asked for from that link
//! (`Graft`), which makes the link eager again: the tree heals around a
//! link that went away.
//!
//! `P` names a link (burrow's: the peer's [`crate::NodeId`]), `M` a message
//! (a [`crate::forum::PostId`]). Which links a message goes to at all (the
//! topics a link follows) is the caller's to say.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What to send on a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out<P, M> {
    /// The message in full.
    Message {
        /// The link.
        to: P,
        /// The message.
        id: M,
    },
    /// The ids of messages we have (to a lazy link).
    IHave {
        /// The link.
        to: P,
        /// The messages.
        ids: Vec<M>,
    },
    /// "You sent me a message I had: send me ids only from now on."
    Prune {
        /// The link.
        to: P,
    },
    /// "Send me these in full, and everything in full from now on."
    Graft {
        /// The link.
        to: P,
        /// The messages it announced that never came.
        ids: Vec<M>,
    },
}

/// One node's Plumtree state: its links' modes and the announced messages
/// it waits for.
#[derive(Debug)]
pub struct Plumtree<P, M> {
    /// Each link, eager (`true`) or lazy.
    links: HashMap<P, bool>,
    /// Announced messages not yet here: who announced, and when to graft.
    missing: HashMap<M, (P, Instant)>,
    graft_after: Duration,
    max_missing: usize,
    max_ids: usize,
}

impl<P: Copy + Eq + Hash, M: Copy + Eq + Hash> Plumtree<P, M> {
    /// A tree that grafts after `graft_after`, waits for at most
    /// `max_missing` announced messages at once (announcing costs a peer
    /// nothing: past that, announcements are not tracked) and asks for at
    /// most `max_ids` per `Graft`.
    pub fn new(graft_after: Duration, max_missing: usize, max_ids: usize) -> Self {
        Plumtree {
            links: HashMap::new(),
            missing: HashMap::new(),
            graft_after,
            max_missing,
            max_ids: max_ids.max(1),
        }
    }

    /// A link came up (or was made again): it starts eager.
    pub fn link_up(&mut self, link: P) {
        self.links.insert(link, true);
    }

    /// A link went away. What it announced is still awaited; if nobody else
    /// brings it, its graft finds no link and is dropped.
    pub fn link_down(&mut self, link: &P) {
        self.links.remove(link);
    }

    /// Whether `link` gets messages in full.
    pub fn is_eager(&self, link: &P) -> bool {
        self.links.get(link).copied().unwrap_or(false)
    }

    /// How many announced messages are awaited.
    pub fn awaited(&self) -> usize {
        self.missing.len()
    }

    /// A message to spread: ours, or one seen for the first time, which came
    /// on `from`. `targets` are the links that take it (those following its
    /// topic); it goes to each but `from`, in full or as an id.
    pub fn broadcast(
        &mut self,
        id: M,
        from: Option<P>,
        targets: impl IntoIterator<Item = P>,
    ) -> Vec<Out<P, M>> {
        self.missing.remove(&id);
        targets
            .into_iter()
            .filter(|t| Some(*t) != from)
            .filter_map(|to| match self.links.get(&to)? {
                true => Some(Out::Message { to, id }),
                false => Some(Out::IHave { to, ids: vec![id] }),
            })
            .collect()
    }

    /// A message came on `from` that we had: `from` is not on our tree.
    /// Pruned again even when lazy already (the first `Prune` may have been
    /// lost).
    pub fn duplicate(&mut self, id: M, from: P) -> Option<Out<P, M>> {
        self.missing.remove(&id);
        let eager = self.links.get_mut(&from)?;
        *eager = false;
        Some(Out::Prune { to: from })
    }

    /// A message arrived some other way (reconciliation): nothing to graft.
    pub fn arrived(&mut self, id: &M) {
        self.missing.remove(id);
    }

    /// `from` announced messages; `lacking` are those of them we don't have.
    /// Each is awaited until `now + graft_after` (the first announcer's
    /// deadline stands). Returns how many were not tracked (the table is
    /// full).
    pub fn announced(
        &mut self,
        from: P,
        lacking: impl IntoIterator<Item = M>,
        now: Instant,
    ) -> usize {
        let due = now + self.graft_after;
        let mut dropped = 0;
        for id in lacking {
            if self.missing.len() >= self.max_missing && !self.missing.contains_key(&id) {
                dropped += 1;
                continue;
            }
            self.missing.entry(id).or_insert((from, due));
        }
        dropped
    }

    /// The grafts due by `now`: each announcer that still has a link is
    /// asked for what it announced, and is eager from now on.
    pub fn overdue(&mut self, now: Instant) -> Vec<Out<P, M>> {
        let mut by_link: HashMap<P, Vec<M>> = HashMap::new();
        self.missing.retain(|id, (link, due)| {
            if *due > now {
                return true;
            }
            by_link.entry(*link).or_default().push(*id);
            false
        });
        let mut out = Vec::new();
        for (to, ids) in by_link {
            let Some(eager) = self.links.get_mut(&to) else {
                continue;
            };
            *eager = true;
            out.extend(ids.chunks(self.max_ids).map(|c| Out::Graft {
                to,
                ids: c.to_vec(),
            }));
        }
        out
    }

    /// When the next graft falls due, if any is awaited.
    pub fn next_due(&self) -> Option<Instant> {
        self.missing.values().map(|(_, due)| *due).min()
    }

    /// `from` grafted: it wants messages in full again.
    pub fn grafted(&mut self, from: &P) {
        if let Some(eager) = self.links.get_mut(from) {
            *eager = true;
        }
    }

    /// `from` pruned: it wants ids only.
    pub fn pruned(&mut self, from: &P) {
        if let Some(eager) = self.links.get_mut(from) {
            *eager = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};

    use super::*;

    const GRAFT: Duration = Duration::from_millis(1000);

    fn tree() -> Plumtree<u8, u32> {
        Plumtree::new(GRAFT, 8, 1024)
    }

    /// A network of `n` nodes, linked as `edges`, each with its own tree,
    /// passing frames through a queue (no sockets, no clock but `now`).
    struct Net {
        trees: Vec<Plumtree<u8, u32>>,
        links: Vec<Vec<u8>>,
        have: Vec<HashSet<u32>>,
        /// (from, frame) in flight.
        wire: VecDeque<(u8, Out<u8, u32>)>,
        /// Messages sent in full, per (from, to).
        full: HashMap<(u8, u8), usize>,
    }

    impl Net {
        fn new(n: usize, edges: &[(u8, u8)]) -> Net {
            let mut net = Net {
                trees: (0..n).map(|_| tree()).collect(),
                links: vec![Vec::new(); n],
                have: vec![HashSet::new(); n],
                wire: VecDeque::new(),
                full: HashMap::new(),
            };
            for &(a, b) in edges {
                net.connect(a, b);
            }
            net
        }

        fn connect(&mut self, a: u8, b: u8) {
            self.trees[a as usize].link_up(b);
            self.trees[b as usize].link_up(a);
            self.links[a as usize].push(b);
            self.links[b as usize].push(a);
        }

        fn cut(&mut self, a: u8, b: u8) {
            self.trees[a as usize].link_down(&b);
            self.trees[b as usize].link_down(&a);
            self.links[a as usize].retain(|x| *x != b);
            self.links[b as usize].retain(|x| *x != a);
        }

        fn publish(&mut self, at: u8, id: u32) {
            self.have[at as usize].insert(id);
            let targets = self.links[at as usize].clone();
            for s in self.trees[at as usize].broadcast(id, None, targets) {
                self.wire.push_back((at, s));
            }
        }

        /// Delivers everything in flight (and what it causes), bounded.
        fn settle(&mut self, now: Instant) {
            for _ in 0..10_000 {
                let Some((from, s)) = self.wire.pop_front() else {
                    return;
                };
                self.deliver(from, s, now);
            }
            panic!("the network never settled");
        }

        fn deliver(&mut self, from: u8, s: Out<u8, u32>, now: Instant) {
            let to = match &s {
                Out::Message { to, .. }
                | Out::IHave { to, .. }
                | Out::Prune { to }
                | Out::Graft { to, .. } => *to,
            };
            if !self.links[to as usize].contains(&from) {
                return; // the link is gone: lost
            }
            let t = to as usize;
            match s {
                Out::Message { id, .. } => {
                    *self.full.entry((from, to)).or_default() += 1;
                    if self.have[t].insert(id) {
                        let targets = self.links[t].clone();
                        for s in self.trees[t].broadcast(id, Some(from), targets) {
                            self.wire.push_back((to, s));
                        }
                    } else if let Some(s) = self.trees[t].duplicate(id, from) {
                        self.wire.push_back((to, s));
                    }
                }
                Out::IHave { ids, .. } => {
                    let lacking: Vec<u32> = ids
                        .into_iter()
                        .filter(|i| !self.have[t].contains(i))
                        .collect();
                    self.trees[t].announced(from, lacking, now);
                }
                Out::Prune { .. } => self.trees[t].pruned(&from),
                Out::Graft { ids, .. } => {
                    self.trees[t].grafted(&from);
                    for id in ids {
                        if self.have[t].contains(&id) {
                            self.wire.push_back((to, Out::Message { to: from, id }));
                        }
                    }
                }
            }
        }

        fn tick(&mut self, now: Instant) {
            for i in 0..self.trees.len() {
                for s in self.trees[i].overdue(now) {
                    self.wire.push_back((i as u8, s));
                }
            }
        }

        fn eager_edges(&self) -> usize {
            let mut n = 0;
            for (a, links) in self.links.iter().enumerate() {
                for b in links {
                    if (a as u8) < *b
                        && self.trees[a].is_eager(b)
                        && self.trees[*b as usize].is_eager(&(a as u8))
                    {
                        n += 1;
                    }
                }
            }
            n
        }
    }

    /// A ring with chords: more links than a tree needs.
    fn mesh() -> Net {
        let mut edges: Vec<(u8, u8)> = (0..8).map(|i| (i, (i + 1) % 8)).collect();
        edges.extend([(0, 4), (1, 5), (2, 6), (3, 7)]);
        Net::new(8, &edges)
    }

    #[test]
    fn duplicates_prune_the_links_down_to_a_spanning_tree() {
        let mut net = mesh();
        let now = Instant::now();
        for id in 0..20 {
            net.publish((id % 8) as u8, id);
            net.settle(now);
        }
        for have in &net.have {
            assert_eq!(have.len(), 20, "everyone has every message");
        }
        // 8 nodes: a spanning tree has 7 edges; the 12 links left some eager
        // only where both sides happened to push at once.
        assert!(
            net.eager_edges() <= 8,
            "{} eager links left of 12",
            net.eager_edges()
        );
        // Once pruned, a new message crosses about one link per node.
        net.full.clear();
        net.publish(0, 100);
        net.settle(now);
        let sent: usize = net.full.values().sum();
        assert!((7..=9).contains(&sent), "{sent} full sends for 8 nodes");
        assert!(net.have.iter().all(|h| h.contains(&100)));
    }

    #[test]
    fn a_duplicate_prunes_the_link_it_came_on_and_says_so() {
        let mut t = tree();
        t.link_up(1);
        t.link_up(2);
        assert!(t.is_eager(&1));
        assert_eq!(t.duplicate(7, 1), Some(Out::Prune { to: 1 }));
        assert!(!t.is_eager(&1) && t.is_eager(&2));
        // Again, though lazy already: the first Prune may have been lost.
        assert_eq!(t.duplicate(8, 1), Some(Out::Prune { to: 1 }));
        // From a link we don't have: nothing.
        assert_eq!(t.duplicate(9, 5), None);
        // Lazy links get ids, eager ones the message; never the sender.
        let sent = t.broadcast(10, Some(2), [1, 2]);
        assert_eq!(
            sent,
            vec![Out::IHave {
                to: 1,
                ids: vec![10]
            }]
        );
    }

    #[test]
    fn a_missing_message_is_grafted_from_its_announcer_after_the_wait() {
        let mut t = tree();
        let t0 = Instant::now();
        t.link_up(1);
        t.link_up(2);
        t.pruned(&1);
        assert_eq!(t.announced(1, [5, 6], t0), 0);
        // A second announcer doesn't move the deadline.
        t.announced(2, [5], t0 + Duration::from_millis(500));
        assert_eq!(t.next_due(), Some(t0 + GRAFT));
        assert!(t.overdue(t0 + GRAFT - Duration::from_millis(1)).is_empty());
        // 6 came some other way meanwhile.
        t.arrived(&6);
        let grafts = t.overdue(t0 + GRAFT);
        assert_eq!(
            grafts,
            vec![Out::Graft {
                to: 1,
                ids: vec![5]
            }]
        );
        assert!(t.is_eager(&1), "grafting makes the link eager again");
        assert_eq!(t.awaited(), 0);
        assert!(t.overdue(t0 + GRAFT * 10).is_empty(), "asked once");
    }

    #[test]
    fn the_tree_heals_when_a_link_on_it_goes() {
        let mut net = mesh();
        let t0 = Instant::now();
        for id in 0..20 {
            net.publish((id % 8) as u8, id);
            net.settle(t0);
        }
        // Cut every link that pushes to node 4 in full: its other links
        // only announce, so 4 hears a new message only by grafting it.
        let pushers: Vec<u8> = net.links[4]
            .clone()
            .into_iter()
            .filter(|b| net.trees[*b as usize].is_eager(&4))
            .collect();
        assert!(!pushers.is_empty(), "4 is on the tree");
        for b in pushers {
            net.cut(4, b);
        }
        if net.links[4].is_empty() {
            // Keep 4 reachable, by a lazy link.
            net.connect(4, 2);
            net.trees[2].pruned(&4);
        }
        net.publish(0, 200);
        net.settle(t0);
        assert!(!net.have[4].contains(&200), "no eager link reaches 4");
        assert!(
            net.trees[4].next_due().is_some(),
            "4 awaits what was announced"
        );
        net.tick(t0 + GRAFT);
        net.settle(t0 + GRAFT);
        assert!(net.have[4].contains(&200), "4 grafted it from an announcer");
        assert!(net.have.iter().all(|h| h.contains(&200)));
        // And the link it grafted on pushes in full now.
        let pushing = net.links[4]
            .iter()
            .filter(|b| net.trees[**b as usize].is_eager(&4))
            .count();
        assert!(pushing >= 1);
    }

    #[test]
    fn announcements_past_the_bound_are_not_tracked() {
        let mut t = tree();
        t.link_up(1);
        let now = Instant::now();
        assert_eq!(t.announced(1, 0..8, now), 0);
        assert_eq!(t.announced(1, 8..20, now), 12);
        assert_eq!(t.awaited(), 8);
        // One already awaited costs nothing.
        assert_eq!(t.announced(1, [3], now), 0);
    }

    #[test]
    fn grafts_are_split_to_the_frame_limit_and_skip_links_that_left() {
        let mut t: Plumtree<u8, u32> = Plumtree::new(GRAFT, 100, 4);
        t.link_up(1);
        t.link_up(2);
        let now = Instant::now();
        t.announced(1, 0..10, now);
        t.announced(2, 10..12, now);
        t.link_down(&2);
        let grafts = t.overdue(now + GRAFT);
        let sizes: Vec<usize> = grafts
            .iter()
            .map(|g| match g {
                Out::Graft { to: 1, ids } => ids.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|n| *n <= 4));
    }
}
