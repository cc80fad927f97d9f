//! A download's schedule, with no I/O: which chunk groups are verified, which
//! pieces are still to fetch, which provider holds which, and what becomes of
//! a piece when its provider lies or leaves. The node's downloader
//! (`burrow-node`'s `files::fetch`) owns the files and the streams; it asks
//! this what to fetch next and tells it what was verified.
//!
//! A file is cut into 16 KiB chunk groups ([`crate::files::CHUNK_GROUP`],
//! the unit the hash verifies), fetched in pieces of [`PIECE_GROUPS`] groups
//! (2 MiB). The last piece goes first: it proves the file's size (the hash
//! covers it). A piece comes back after its fetch ([`Schedule::done`]) or its
//! provider's failure ([`Schedule::failed`]), and goes to the front of the
//! queue again if any group of it is still missing, for whichever provider
//! asks next. A provider that failed gets nothing more. Progress is a
//! bitmap ([`Bitmap`]) the node stores; a resumed download starts from it
//! (once the node re-checked its claims against the data).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::ops::Range;

use crate::files::{ChunkSpan, CHUNK_GROUP};

/// Chunk groups per piece: 2 MiB. Large enough that a request's overhead (a
/// round trip to start, the hash pairs down to it) is small; small enough that a
/// lost provider costs little.
pub const PIECE_GROUPS: u64 = 128;

/// One bit per chunk group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    groups: u64,
    set: u64,
}

impl Bitmap {
    /// Nothing verified, of `groups` groups.
    pub fn new(groups: u64) -> Self {
        Bitmap {
            bits: vec![0; groups.div_ceil(8) as usize],
            groups,
            set: 0,
        }
    }

    /// A stored bitmap, if it has the right length for `groups`.
    pub fn from_bytes(bits: Vec<u8>, groups: u64) -> Option<Self> {
        if bits.len() as u64 != groups.div_ceil(8) {
            return None;
        }
        let mut b = Bitmap {
            bits,
            groups,
            set: 0,
        };
        // Bits past the end mean nothing; clear them.
        for g in groups..(b.bits.len() as u64 * 8) {
            b.bits[(g / 8) as usize] &= !(1 << (g % 8));
        }
        b.set = b.bits.iter().map(|x| x.count_ones() as u64).sum();
        Some(b)
    }

    /// How many groups it covers.
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// Whether group `g` is verified.
    pub fn get(&self, g: u64) -> bool {
        g < self.groups && self.bits[(g / 8) as usize] & (1 << (g % 8)) != 0
    }

    /// Sets group `g`; true if it was not set.
    pub fn set(&mut self, g: u64) -> bool {
        if g >= self.groups || self.get(g) {
            return false;
        }
        self.bits[(g / 8) as usize] |= 1 << (g % 8);
        self.set += 1;
        true
    }

    /// Whether every group is verified.
    pub fn complete(&self) -> bool {
        self.set == self.groups
    }

    /// The bits, to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }
}

/// The groups of piece `p` in a file of `groups` groups.
pub fn piece_groups(p: u64, groups: u64) -> Range<u64> {
    p * PIECE_GROUPS..((p + 1) * PIECE_GROUPS).min(groups)
}

/// The 1 KiB chunks of group `g` in a file of `chunks` chunks.
pub fn group_chunks(g: u64, chunks: u64) -> Range<u64> {
    let per_group = CHUNK_GROUP / 1024;
    g * per_group..((g + 1) * per_group).min(chunks)
}

/// The length of chunk group `g` of a file of `size` bytes (the last may be short).
pub fn group_len(size: u64, g: u64) -> u64 {
    size.saturating_sub(g * CHUNK_GROUP).min(CHUNK_GROUP)
}

/// What a provider's worker gets from [`Schedule::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Fetch this piece's missing groups.
    Piece(u64),
    /// Nothing free now, but pieces are out: one may come back.
    Wait,
    /// Nothing left for this provider (the file is complete, or nothing is
    /// out and the queue is empty, or the provider failed).
    Done,
}

/// How a provider failed a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It sent data that doesn't match the hash: proven dishonest.
    Lied,
    /// It doesn't have the file (any more).
    Gone,
    /// The connection or stream failed (nobody's fault we can prove).
    Lost,
}

impl Failure {
    /// Whether the provider's connection is cut (it misbehaved, or has
    /// nothing for us), rather than merely lost.
    pub fn cuts(self) -> bool {
        self != Failure::Lost
    }
}

/// A download's schedule, for providers named by `P`.
#[derive(Debug)]
pub struct Schedule<P> {
    size: u64,
    chunks: u64,
    bitmap: Bitmap,
    /// Pieces with groups missing that no provider holds, next first.
    queue: VecDeque<u64>,
    /// Pieces out, and who holds each.
    out: HashMap<u64, P>,
    /// Providers that failed: they get nothing more.
    failed: HashSet<P>,
    /// Bytes verified.
    verified: u64,
    /// Whether the bitmap changed since [`Schedule::progress`] last said.
    dirty: bool,
}

impl<P: Copy + Eq + Hash> Schedule<P> {
    /// The schedule of a file of `size` bytes in `chunks` 1 KiB chunks,
    /// with `bitmap` verified (a fresh one, or a resumed one already
    /// re-checked against the data).
    pub fn new(size: u64, chunks: u64, bitmap: Bitmap) -> Self {
        let groups = bitmap.groups();
        let pieces = groups.div_ceil(PIECE_GROUPS);
        let missing = |p: u64| piece_groups(p, groups).any(|g| !bitmap.get(g));
        // The last piece first: it proves the size.
        let mut queue: VecDeque<u64> = (0..pieces.saturating_sub(1))
            .filter(|&p| missing(p))
            .collect();
        if pieces > 0 && missing(pieces - 1) {
            queue.push_front(pieces - 1);
        }
        let verified = (0..groups)
            .filter(|&g| bitmap.get(g))
            .map(|g| group_len(size, g))
            .sum();
        Schedule {
            size,
            chunks,
            bitmap,
            queue,
            out: HashMap::new(),
            failed: HashSet::new(),
            verified,
            dirty: false,
        }
    }

    /// Whether every group is verified.
    pub fn complete(&self) -> bool {
        self.bitmap.complete()
    }

    /// Bytes verified (those from before a resume too).
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Whether `provider` failed (and gets nothing more).
    pub fn has_failed(&self, provider: &P) -> bool {
        self.failed.contains(provider)
    }

    /// The next piece for `provider` to fetch.
    pub fn take(&mut self, provider: P) -> Take {
        if self.failed.contains(&provider) || self.bitmap.complete() {
            return Take::Done;
        }
        match self.queue.pop_front() {
            Some(p) => {
                self.out.insert(p, provider);
                Take::Piece(p)
            }
            None if self.out.is_empty() => Take::Done,
            None => Take::Wait,
        }
    }

    /// The chunk ranges of `piece`'s missing groups: what to ask for.
    pub fn missing_spans(&self, piece: u64) -> Vec<ChunkSpan> {
        let mut spans: Vec<ChunkSpan> = Vec::new();
        for g in piece_groups(piece, self.bitmap.groups()) {
            if self.bitmap.get(g) {
                continue;
            }
            let Range { start, end } = group_chunks(g, self.chunks);
            match spans.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => spans.push(ChunkSpan { start, end }),
            }
        }
        spans
    }

    /// Marks the chunk groups verified and written at these (offset,
    /// length)s. Only whole groups count (a request always asks for whole
    /// groups). Returns the bytes newly verified.
    pub fn mark(&mut self, written: &[(u64, usize)]) -> u64 {
        let mut added = 0;
        for &(at, len) in written {
            let g = at / CHUNK_GROUP;
            let whole = at.is_multiple_of(CHUNK_GROUP) && len as u64 == group_len(self.size, g);
            if whole && self.bitmap.set(g) {
                added += len as u64;
            }
        }
        if added > 0 {
            self.dirty = true;
            self.verified += added;
        }
        added
    }

    /// A fetch of `piece` ended (whatever it brought is marked): what is
    /// still missing of it goes back to the front of the queue.
    pub fn done(&mut self, piece: u64) {
        if self.out.remove(&piece).is_none() {
            return;
        }
        if piece_groups(piece, self.bitmap.groups()).any(|g| !self.bitmap.get(g)) {
            self.queue.push_front(piece);
        }
    }

    /// `provider` failed `piece`: the piece is free for the others, and the
    /// provider gets nothing more (its other pieces come back as its
    /// workers stop). Returns whether to cut its connection.
    pub fn failed(&mut self, provider: P, piece: u64, how: Failure) -> bool {
        self.failed.insert(provider);
        self.done(piece);
        how.cuts()
    }

    /// The bitmap to store, if it changed since the last call.
    pub fn progress(&mut self) -> Option<Vec<u8>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.bitmap.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `pieces` pieces, the last `short` bytes short of whole.
    fn schedule(pieces: u64, short: u64) -> (Schedule<char>, u64) {
        let size = pieces * PIECE_GROUPS * CHUNK_GROUP - short;
        let groups = size.div_ceil(CHUNK_GROUP);
        let chunks = size.div_ceil(1024);
        (Schedule::new(size, chunks, Bitmap::new(groups)), size)
    }

    /// Marks every group of `piece` verified.
    fn fetch_all(s: &mut Schedule<char>, size: u64, piece: u64) {
        let groups = size.div_ceil(CHUNK_GROUP);
        let written: Vec<(u64, usize)> = piece_groups(piece, groups)
            .map(|g| (g * CHUNK_GROUP, group_len(size, g) as usize))
            .collect();
        s.mark(&written);
    }

    #[test]
    fn a_bitmap_stores_and_loads_and_ignores_what_lies_past_its_end() {
        let mut b = Bitmap::new(10);
        assert!(b.set(3) && !b.set(3) && !b.set(10));
        let again = Bitmap::from_bytes(b.as_bytes().to_vec(), 10).unwrap();
        assert!(again.get(3) && !again.get(4));
        assert!(Bitmap::from_bytes(vec![0; 3], 10).is_none());
        let full = Bitmap::from_bytes(vec![0xff, 0xff], 10).unwrap();
        assert!(full.complete());
    }

    #[test]
    fn the_last_piece_goes_first_and_providers_share_the_rest() {
        let (mut s, size) = schedule(3, 100);
        assert_eq!(s.take('a'), Take::Piece(2), "the last proves the size");
        assert_eq!(s.take('b'), Take::Piece(0));
        assert_eq!(s.take('a'), Take::Piece(1));
        assert_eq!(s.take('b'), Take::Wait, "all out: wait for one back");
        for p in [2, 0, 1] {
            fetch_all(&mut s, size, p);
            s.done(p);
        }
        assert!(s.complete());
        assert_eq!(s.verified(), size);
        assert_eq!(s.take('a'), Take::Done);
    }

    #[test]
    fn a_lying_provider_is_cut_and_its_piece_goes_to_another() {
        let (mut s, size) = schedule(2, 0);
        assert_eq!(s.take('m'), Take::Piece(1));
        assert_eq!(s.take('h'), Take::Piece(0));
        // m verified half its piece, then sent a wrong byte.
        let half: Vec<(u64, usize)> = (PIECE_GROUPS..PIECE_GROUPS + PIECE_GROUPS / 2)
            .map(|g| (g * CHUNK_GROUP, CHUNK_GROUP as usize))
            .collect();
        s.mark(&half);
        assert!(s.failed('m', 1, Failure::Lied), "a liar is cut");
        assert!(s.has_failed(&'m'));
        assert_eq!(s.take('m'), Take::Done, "and gets nothing more");
        // h, honest, finishes its piece and takes m's: only its missing half.
        fetch_all(&mut s, size, 0);
        s.done(0);
        assert_eq!(s.take('h'), Take::Piece(1));
        let spans = s.missing_spans(1);
        assert_eq!(
            spans,
            vec![ChunkSpan {
                start: (PIECE_GROUPS + PIECE_GROUPS / 2) * 16,
                end: 2 * PIECE_GROUPS * 16
            }]
        );
        fetch_all(&mut s, size, 1);
        s.done(1);
        assert!(s.complete());
    }

    #[test]
    fn a_provider_that_leaves_gives_its_piece_back_uncut() {
        let (mut s, _) = schedule(1, 7);
        assert_eq!(s.take('a'), Take::Piece(0));
        assert_eq!(s.take('b'), Take::Wait);
        assert!(!s.failed('a', 0, Failure::Lost), "a lost link is not cut");
        assert_eq!(s.take('b'), Take::Piece(0));
        // One that no longer has the file is cut (it has nothing for us).
        assert!(s.failed('b', 0, Failure::Gone));
        // Nobody left with it: the queue holds it for a provider to come.
        assert_eq!(s.take('a'), Take::Done);
        assert_eq!(s.take('c'), Take::Piece(0));
    }

    #[test]
    fn a_resumed_download_asks_only_for_what_is_missing() {
        let size = 2 * PIECE_GROUPS * CHUNK_GROUP + 5000;
        let groups = size.div_ceil(CHUNK_GROUP);
        let chunks = size.div_ceil(1024);
        let mut stored = Bitmap::new(groups);
        for g in 0..groups {
            if g != 5 && g < groups - 1 {
                stored.set(g);
            }
        }
        let mut s: Schedule<char> = Schedule::new(
            size,
            chunks,
            Bitmap::from_bytes(stored.as_bytes().to_vec(), groups).unwrap(),
        );
        assert_eq!(s.verified(), (groups - 2) * CHUNK_GROUP);
        // The last piece (its last group missing) first, then piece 0 (group
        // 5); piece 1 is whole and never asked for.
        assert_eq!(s.take('a'), Take::Piece(2));
        assert_eq!(s.take('a'), Take::Piece(0));
        assert_eq!(s.missing_spans(0), vec![ChunkSpan { start: 80, end: 96 }]);
        assert_eq!(s.take('a'), Take::Wait);
        assert_eq!(s.progress(), None, "nothing new to store");
        s.mark(&[(5 * CHUNK_GROUP, CHUNK_GROUP as usize)]);
        assert!(s.progress().is_some());
        assert_eq!(s.progress(), None);
        // A short write (not a whole group) is not a group verified.
        assert_eq!(s.mark(&[((groups - 1) * CHUNK_GROUP, 10)]), 0);
    }
}
