//! The bounded tables intrusion detection keeps per address, key or name:
//! token buckets, failed-login counts with their growing blocks, the recent
//! failures on each name, and decaying misbehaviour scores.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use burrow_proto::limit::RateLimit;

/// A bounded map: at most `cap` entries.
#[derive(Debug)]
pub(super) struct Bounded<K, V> {
    pub(super) map: HashMap<K, V>,
    cap: usize,
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            cap,
        }
    }

    pub(super) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// The entry for `k`, made with `new` if there is room; `None` when full.
    pub(super) fn entry(&mut self, k: K, new: impl FnOnce() -> V) -> Option<&mut V> {
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            return None;
        }
        Some(self.map.entry(k).or_insert_with(new))
    }

    pub(super) fn remove(&mut self, k: &K) {
        self.map.remove(k);
    }

    pub(super) fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        self.map.retain(|_, v| keep(v));
    }
}

/// Token buckets per key, bounded.
#[derive(Debug)]
pub(super) struct Limiters<K> {
    pub(super) map: HashMap<K, RateLimit>,
    rate: f64,
    burst: f64,
    cap: usize,
}

impl<K: Hash + Eq> Limiters<K> {
    pub(super) fn new(rate: f64, burst: f64, cap: usize) -> Self {
        Limiters {
            map: HashMap::new(),
            rate,
            burst,
            cap,
        }
    }

    /// Takes a token from `key`'s bucket; with the table full (after
    /// pruning) and no bucket for `key`, lets it through.
    pub(super) fn allow(&mut self, now: Instant, key: K) -> bool {
        self.allow_or(now, key, true)
    }

    /// Like [`Self::allow`], answering `when_full` when the table is full and
    /// has no bucket for `key`.
    pub(super) fn allow_or(&mut self, now: Instant, key: K, when_full: bool) -> bool {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.prune(now);
            if self.map.len() >= self.cap {
                return when_full;
            }
        }
        self.map
            .entry(key)
            .or_insert_with(|| RateLimit::new(self.rate, self.burst, now))
            .allow(now)
    }

    /// Drops buckets that are full again: a fresh one would be the same.
    pub(super) fn prune(&mut self, now: Instant) {
        self.map.retain(|_, l| !l.idle(now));
    }
}

/// Failed logins for one name or address.
#[derive(Debug, Default)]
pub(super) struct Failures {
    count: u32,
    window_start: Option<Instant>,
    /// How many times it was blocked (each block is twice the last).
    blocks: u32,
    pub(super) until: Option<Instant>,
    last: Option<Instant>,
}

impl Failures {
    /// Counts a failure; returns the block's length if this one starts a block.
    pub(super) fn add(
        &mut self,
        now: Instant,
        max: u32,
        window: Duration,
        base: Duration,
        cap: Duration,
    ) -> Option<Duration> {
        self.last = Some(now);
        if self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) > window)
        {
            self.window_start = Some(now);
            self.count = 0;
        }
        self.count += 1;
        if self.count < max {
            return None;
        }
        self.count = 0;
        self.window_start = None;
        self.blocks += 1;
        let d = base.saturating_mul(1 << (self.blocks - 1).min(16)).min(cap);
        self.until = Some(now + d);
        Some(d)
    }

    /// Nothing happened for `keep` and no block is in force: it can go (and with
    /// it the memory of earlier blocks).
    pub(super) fn forgotten(&self, now: Instant, keep: Duration) -> bool {
        self.until.is_none_or(|u| u <= now)
            && self
                .last
                .is_none_or(|l| now.saturating_duration_since(l) > keep)
    }
}

/// Failed logins for one name from every address: how hard it is being
/// guessed, and from how many places.
#[derive(Debug, Default)]
pub(super) struct NameFailures {
    /// The latest failures (time, address group), oldest first, at most
    /// [`NameFailures::RECENT`].
    recent: VecDeque<(Instant, IpAddr)>,
}

impl NameFailures {
    /// Failures remembered per name: past this many in one window the delay
    /// they earn is at its longest anyway.
    const RECENT: usize = 64;

    /// Counts a failure from `group`, forgetting those older than `window`.
    pub(super) fn add(&mut self, now: Instant, group: IpAddr, window: Duration) {
        self.expire(now, window);
        if self.recent.len() == Self::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((now, group));
    }

    /// Failures within `window`, and how many address groups they came from.
    pub(super) fn pressure(&self, now: Instant, window: Duration) -> (usize, usize) {
        let live: Vec<IpAddr> = self
            .recent
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
            .map(|(_, g)| *g)
            .collect();
        let groups: HashSet<IpAddr> = live.iter().copied().collect();
        (live.len(), groups.len())
    }

    fn expire(&mut self, now: Instant, window: Duration) {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
        {
            self.recent.pop_front();
        }
    }

    /// Nothing within `keep`: it can go.
    pub(super) fn forgotten(&self, now: Instant, keep: Duration) -> bool {
        self.recent
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) > keep)
    }
}

/// Misbehaviour points for one address, decaying by one every 10 s.
#[derive(Debug)]
pub(super) struct Score {
    pub(super) points: f64,
    last: Instant,
    pub(super) offences: u32,
}

impl Score {
    const DECAY_PER_SEC: f64 = 0.1;

    pub(super) fn new(now: Instant) -> Self {
        Score {
            points: 0.0,
            last: now,
            offences: 0,
        }
    }

    pub(super) fn add(&mut self, now: Instant, points: u32) -> u32 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.points = (self.points - elapsed * Self::DECAY_PER_SEC).max(0.0) + points as f64;
        self.last = now;
        self.points as u32
    }

    pub(super) fn forgotten(&self, now: Instant, keep: Duration) -> bool {
        now.saturating_duration_since(self.last) > keep
    }
}
