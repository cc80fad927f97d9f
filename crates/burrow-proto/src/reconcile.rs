//! Range-based set reconciliation of post sets (negentropy, sans-IO).
//!
//! Two members who meet each hold a set of `(created, id)` items for a topic. The
//! initiator sends fingerprints of ranges of its set; the responder answers with
//! the ranges whose fingerprints differ, split finer; after a few rounds the
//! initiator knows which ids it has that the other lacks and which it needs. The
//! bytes exchanged grow with the size of the difference (and the logarithm of the
//! set), not with the set: 100 000 posts in common and 10 different take a few
//! kilobytes.
//!
//! Every message is at most [`FRAME_LIMIT`] bytes; a large difference takes more
//! rounds rather than larger messages.

use negentropy::{Id, Negentropy, NegentropyStorageVector};

use crate::forum::{Hlc, PostId};

/// Largest reconciliation message.
pub const FRAME_LIMIT: usize = 32 * 1024;

/// Why reconciliation failed (the peer sent something that isn't a valid
/// negentropy message, or used the protocol out of order).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("set reconciliation failed: {0}")]
pub struct ReconcileError(String);

impl From<negentropy::Error> for ReconcileError {
    fn from(e: negentropy::Error) -> Self {
        ReconcileError(e.to_string())
    }
}

/// One side of one reconciliation.
pub struct Reconciler {
    neg: Negentropy<'static, NegentropyStorageVector>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconciler")
    }
}

/// What the initiator learned from one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The next message to send, or `None` when reconciliation is complete.
    pub next: Option<Vec<u8>>,
    /// Ids we have and the peer lacks.
    pub have: Vec<PostId>,
    /// Ids the peer has and we lack.
    pub need: Vec<PostId>,
}

impl Reconciler {
    /// Builds our side from the items we hold.
    pub fn new(items: impl IntoIterator<Item = (Hlc, PostId)>) -> Result<Self, ReconcileError> {
        let mut storage = NegentropyStorageVector::new();
        for (created, id) in items {
            storage.insert(created.0, Id::from_byte_array(id.0))?;
        }
        storage.seal()?;
        Ok(Reconciler {
            neg: Negentropy::owned(storage, FRAME_LIMIT as u64)?,
        })
    }

    /// The initiator's first message.
    pub fn initiate(&mut self) -> Result<Vec<u8>, ReconcileError> {
        Ok(self.neg.initiate()?)
    }

    /// The initiator reads the responder's answer.
    pub fn step(&mut self, answer: &[u8]) -> Result<Round, ReconcileError> {
        let (mut have, mut need) = (Vec::new(), Vec::new());
        let next = self.neg.reconcile_with_ids(answer, &mut have, &mut need)?;
        let ids = |v: Vec<Id>| v.into_iter().map(|id| PostId(id.to_bytes())).collect();
        Ok(Round {
            next,
            have: ids(have),
            need: ids(need),
        })
    }

    /// The responder answers one of the initiator's messages.
    pub fn respond(&mut self, query: &[u8]) -> Result<Vec<u8>, ReconcileError> {
        Ok(self.neg.reconcile(query)?)
    }
}

/// Runs a whole reconciliation in memory; returns what the initiator has that the
/// responder lacks, what it needs, the bytes sent both ways and the round trips.
/// For tests and the benchmark.
pub fn reconcile_in_memory(
    initiator: &[(Hlc, PostId)],
    responder: &[(Hlc, PostId)],
) -> Result<(Vec<PostId>, Vec<PostId>, usize, usize), ReconcileError> {
    let mut a = Reconciler::new(initiator.iter().copied())?;
    let mut b = Reconciler::new(responder.iter().copied())?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut msg = a.initiate()?;
    let (mut bytes, mut rounds) = (0, 0);
    loop {
        bytes += msg.len();
        let answer = b.respond(&msg)?;
        bytes += answer.len();
        rounds += 1;
        let round = a.step(&answer)?;
        have.extend(round.have);
        need.extend(round.need);
        match round.next {
            Some(next) => msg = next,
            None => return Ok((have, need, bytes, rounds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn item(n: u64) -> (Hlc, PostId) {
        let h = blake3::hash(&n.to_le_bytes());
        (
            Hlc::from_ms(1_700_000_000_000 + n * 7),
            PostId(*h.as_bytes()),
        )
    }

    /// `common` shared items, then `only_a` and `only_b` items each side alone has.
    type Set = Vec<(Hlc, PostId)>;

    fn sets(common: u64, only_a: u64, only_b: u64) -> (Set, Set) {
        let mut a: Vec<_> = (0..common).map(item).collect();
        let mut b = a.clone();
        a.extend((0..only_a).map(|i| item(10_000_000 + i)));
        b.extend((0..only_b).map(|i| item(20_000_000 + i)));
        (a, b)
    }

    fn check_ends_equal(a: &[(Hlc, PostId)], b: &[(Hlc, PostId)]) -> usize {
        let (have, need, bytes, _) = reconcile_in_memory(a, b).unwrap();
        let ids = |s: &[(Hlc, PostId)]| s.iter().map(|i| i.1).collect::<BTreeSet<_>>();
        let (sa, sb) = (ids(a), ids(b));
        let mut a_after = sa.clone();
        a_after.extend(need.iter().copied());
        let mut b_after = sb.clone();
        b_after.extend(have.iter().copied());
        assert_eq!(a_after, b_after, "both sides end with the union");
        assert_eq!(have.iter().copied().collect::<BTreeSet<_>>(), &sa - &sb);
        assert_eq!(need.iter().copied().collect::<BTreeSet<_>>(), &sb - &sa);
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        #[test]
        fn random_sets_always_end_equal(common in 0u64..3000, only_a in 0u64..200, only_b in 0u64..200) {
            let (a, b) = sets(common, only_a, only_b);
            check_ends_equal(&a, &b);
        }

        /// The bytes grow with the difference: with 10 items different, the
        /// exchange stays small whether 1 000 or 30 000 are shared.
        #[test]
        fn bytes_follow_the_difference_not_the_set(common in 1_000u64..30_000, diff in 0u64..20) {
            let (a, b) = sets(common, diff, diff);
            let bytes = check_ends_equal(&a, &b);
            // Fingerprint rounds (about 16 × 17 bytes per level, log16 levels)
            // plus the differing ids, in a handful of ranges each way.
            let bound = 4 * 1024 + (2 * diff as usize) * 3 * 1024;
            prop_assert!(bytes <= bound, "{bytes} bytes for {common} shared, {diff}+{diff} different");
        }

        #[test]
        fn garbage_from_a_peer_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (a, _) = sets(300, 0, 0);
            let mut responder = Reconciler::new(a.iter().copied()).unwrap();
            let _ = responder.respond(&bytes);
            let mut initiator = Reconciler::new(a.iter().copied()).unwrap();
            initiator.initiate().unwrap();
            let _ = initiator.step(&bytes);
        }
    }

    #[test]
    fn a_hundred_thousand_in_common_and_ten_different_take_a_few_kilobytes() {
        let (a, b) = sets(100_000, 5, 5);
        let bytes = check_ends_equal(&a, &b);
        let naive = 100_005 * 40;
        assert!(bytes < 16 * 1024, "{bytes} bytes (naive exchange: {naive})");
    }

    #[test]
    fn large_differences_take_more_rounds_of_bounded_messages() {
        let (a, b) = sets(20_000, 3_000, 2_000);
        let mut ra = Reconciler::new(a.iter().copied()).unwrap();
        let mut rb = Reconciler::new(b.iter().copied()).unwrap();
        let mut msg = ra.initiate().unwrap();
        for _ in 0..100 {
            assert!(msg.len() <= FRAME_LIMIT);
            let answer = rb.respond(&msg).unwrap();
            assert!(answer.len() <= FRAME_LIMIT);
            match ra.step(&answer).unwrap().next {
                Some(next) => msg = next,
                None => return,
            }
        }
        panic!("reconciliation did not finish in 100 rounds");
    }
}
