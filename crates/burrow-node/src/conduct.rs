//! What a node does about peers that misbehave: its own, smaller version of the
//! server's intrusion detection.
//!
//! - **Strikes.** Each thing no honest peer does counts one: a forum post that
//!   is altered, forged or over its limits, a membership proof that fails, a mesh
//!   frame over its limits, file data that doesn't match its hash, a chat
//!   message of a bad length. At [`STRIKE_LIMIT`] the peer is refused: its links
//!   are closed, and its connections and connect requests are turned away until
//!   this node restarts.
//! - **Requests.** A peer may ask to connect [`REQUESTS_PER_WINDOW`] times in
//!   [`REQUEST_WINDOW`]; further requests are rejected without asking the user.
//!
//! Both tables are bounded ([`MAX_TRACKED`]): a full table forgets the peers
//! with the least against them first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burrow_proto::NodeId;

/// Strikes after which a peer is refused.
pub(crate) const STRIKE_LIMIT: u32 = 3;
/// Connect requests one peer may make per [`REQUEST_WINDOW`]: a person retrying
/// a few times; a script, no.
pub(crate) const REQUESTS_PER_WINDOW: u32 = 5;
/// The window for [`REQUESTS_PER_WINDOW`].
pub(crate) const REQUEST_WINDOW: Duration = Duration::from_secs(600);
/// Most peers each table remembers.
pub(crate) const MAX_TRACKED: usize = 4096;

/// Strikes and request counts per peer.
#[derive(Debug, Default)]
pub(crate) struct Conduct {
    strikes: HashMap<NodeId, u32>,
    requests: HashMap<NodeId, (Instant, u32)>,
}

impl Conduct {
    /// Counts a strike against `peer`; true once it is refused.
    pub fn strike(&mut self, peer: NodeId) -> bool {
        if !self.strikes.contains_key(&peer) && self.strikes.len() >= MAX_TRACKED {
            // Forget those with one strike first: they may have been unlucky.
            self.strikes.retain(|_, n| *n > 1);
            if self.strikes.len() >= MAX_TRACKED {
                return false;
            }
        }
        let n = self.strikes.entry(peer).or_default();
        *n = n.saturating_add(1);
        *n >= STRIKE_LIMIT
    }

    /// Whether `peer` is refused.
    pub fn refused(&self, peer: &NodeId) -> bool {
        self.strikes.get(peer).is_some_and(|n| *n >= STRIKE_LIMIT)
    }

    /// Counts a connect request from `peer`; false when it is over its rate.
    pub fn request(&mut self, peer: NodeId, now: Instant) -> bool {
        if !self.requests.contains_key(&peer) && self.requests.len() >= MAX_TRACKED {
            self.requests
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < REQUEST_WINDOW);
            if self.requests.len() >= MAX_TRACKED {
                return true;
            }
        }
        let (start, n) = self.requests.entry(peer).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= REQUEST_WINDOW {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= REQUESTS_PER_WINDOW
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
    fn three_strikes_refuse_a_peer() {
        let mut c = Conduct::default();
        assert!(!c.strike(id(1)));
        assert!(!c.strike(id(1)));
        assert!(!c.refused(&id(1)));
        assert!(c.strike(id(1)));
        assert!(c.refused(&id(1)));
        assert!(!c.refused(&id(2)));
    }

    #[test]
    fn requests_are_limited_per_window_and_tables_stay_bounded() {
        let mut c = Conduct::default();
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| c.request(id(1), t0)).count();
        assert_eq!(allowed, REQUESTS_PER_WINDOW as usize);
        assert!(c.request(id(1), t0 + REQUEST_WINDOW));
        for n in 0..(MAX_TRACKED as u64 + 100) {
            c.strike(id(n + 10));
            c.request(id(n + 10), t0);
        }
        assert!(c.strikes.len() <= MAX_TRACKED);
        assert!(c.requests.len() <= MAX_TRACKED);
    }
}
