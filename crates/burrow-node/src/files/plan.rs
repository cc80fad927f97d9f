//! A download's [`Plan`]: the partial file and its outboard in the node's
//! home, the schedule of pieces still missing, and how verified bytes reach
//! the disk.
//!
//! Verified groups that follow each other are gathered into runs of up to
//! 1 MiB, and each run is written on a blocking thread while the next one
//! fills: with direct I/O (`O_DIRECT`, see [`super::disk`] for other
//! systems) where the file system allows it, so
//! the bytes go from the run's buffer to the disk without passing through
//! the page cache. That costs the receiver a fraction of the CPU (0.15
//! against 0.7 CPU-seconds per GiB here), and a download doesn't evict what
//! the rest of the machine has cached. Where direct I/O is refused or a
//! direct write fails, the same bytes go through the page cache in 16 KiB
//! writes. A download holds at most [`RUNS_MAX`] runs over all its streams.
//!
//! Every second the bitmap is stored. A group is marked only after its run
//! was written, so after a kill the next `get` asks only for what was not yet
//! verified (at most a second's work is redone). The bitmap is a claim, not
//! proof: on resume the claimed groups are hashed again against the outboard
//! (bao-tree's `valid_ranges`, BLAKE3 speed) and any that don't hold (a power
//! loss before the disk kept them) are fetched again. That is why the
//! partial file needs no `fdatasync` for safety while the transfer runs; the
//! finished file is synced once, before it gets its name. So that this last
//! sync has little left to wait for when writes go through the page cache,
//! the partial file is also synced in the background every 64 MiB
//! ([`Plan::write_back`], on a blocking thread).
//!
//! The partial file's blocks are reserved when the download starts
//! (`fallocate`): a disk too small for the file says so before anything is
//! fetched.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::{BaoTree, ChunkRanges};
use burrow_proto::files::{BlobHash, ChunkSpan, CHUNK_GROUP};
use burrow_proto::schedule::{group_chunks, Bitmap, Failure, Schedule, Take};
use burrow_proto::NodeId;
use tokio::sync::Notify;

use super::disk;

/// Verified bytes between background syncs of a download.
const WRITE_BACK_EVERY: u64 = 64 << 20;
/// The most verified bytes gathered before they are written (and marked).
pub(super) const RUN_BYTES: usize = 1 << 20;
/// Runs one download holds at once over all its streams (32 MiB): each
/// stream fills one while another is written, up to this; past it, groups
/// are written one by one as they are verified.
pub(super) const RUNS_MAX: usize = 32;
/// Memory and file alignment that direct I/O needs: the largest logical
/// block size in common use.
pub(super) const DIRECT_ALIGN: usize = 4096;
/// Write size through the page cache: small writes keep its folios small
/// (see [`Plan::write_run`]).
const CACHED_WRITE: usize = CHUNK_GROUP as usize;

/// A download's shared state.
pub(crate) struct Plan {
    pub hash: BlobHash,
    pub size: u64,
    pub(super) tree: BaoTree,
    data: File,
    /// The partial file opened for direct I/O, while the file system takes it.
    direct: Option<File>,
    direct_refused: AtomicBool,
    outboard: File,
    /// Runs no worker holds now, kept for the next.
    spare: Mutex<Vec<Run>>,
    /// Runs handed out and not given back (at most [`RUNS_MAX`]).
    pub(super) runs_out: AtomicUsize,
    /// Bytes written with direct I/O (the rest went through the page cache).
    pub written_direct: AtomicU64,
    pub data_path: PathBuf,
    pub outboard_path: PathBuf,
    /// What to fetch next, from whom ([`Schedule`]).
    schedule: Mutex<Schedule<NodeId>>,
    /// Bytes verified, including those verified before a resume: the
    /// schedule's count, kept here too for readers that don't take its lock
    /// (progress, write-back).
    pub verified: AtomicU64,
    /// Bytes verified before this run started.
    pub resumed: u64,
    /// Verified bytes when the last background sync started, and whether one runs.
    written_back: AtomicU64,
    writing_back: AtomicBool,
    /// Set by a worker that could not write: every worker stops.
    pub fatal: Mutex<Option<String>>,
    pub stop: AtomicBool,
    changed: Notify,
}

impl Plan {
    /// Opens (or creates) the partial file and outboard of `hash` in `dir`,
    /// continuing from `bitmap` when the files still match it.
    pub fn open(
        dir: &Path,
        hash: BlobHash,
        size: u64,
        bitmap: Option<Vec<u8>>,
    ) -> std::io::Result<Plan> {
        std::fs::create_dir_all(dir)?;
        let tree = super::tree(size);
        let groups = tree.blocks().max(1);
        let chunks = tree.chunks().0.max(1);
        let data_path = dir.join(format!("{hash}.part"));
        let outboard_path = dir.join(format!("{hash}.obao.part"));
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let data = open(&data_path)?;
        let outboard = open(&outboard_path)?;
        let fits =
            data.metadata()?.len() == size && outboard.metadata()?.len() == tree.outboard_size();
        let claimed = bitmap.and_then(|b| Bitmap::from_bytes(b, groups));
        let bitmap = match claimed {
            Some(b) if fits => recheck(hash, tree, &data, &outboard, b)?,
            _ => {
                // Start over: whatever is in the files was never verified.
                for (f, len) in [(&data, size), (&outboard, tree.outboard_size())] {
                    f.set_len(0)?;
                    f.set_len(len).map_err(|e| disk::no_space(e, dir, len))?;
                }
                Bitmap::new(groups)
            }
        };
        disk::preallocate(&data, size, dir)?;
        let direct = disk::open_uncached(&data_path);
        let schedule = Schedule::new(size, chunks, bitmap);
        let verified = schedule.verified();
        Ok(Plan {
            hash,
            size,
            tree,
            data,
            direct,
            direct_refused: AtomicBool::new(false),
            outboard,
            spare: Mutex::new(Vec::new()),
            runs_out: AtomicUsize::new(0),
            written_direct: AtomicU64::new(0),
            data_path,
            outboard_path,
            schedule: Mutex::new(schedule),
            verified: AtomicU64::new(verified),
            resumed: verified,
            written_back: AtomicU64::new(verified),
            writing_back: AtomicBool::new(false),
            fatal: Mutex::new(None),
            stop: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    pub(super) fn schedule(&self) -> MutexGuard<'_, Schedule<NodeId>> {
        self.schedule.lock().expect("plan lock is never poisoned")
    }

    pub fn complete(&self) -> bool {
        self.schedule().complete()
    }

    /// The next piece for `provider` to fetch, or whether to wait for one to
    /// come back.
    pub fn take(&self, provider: NodeId) -> Take {
        if self.stop.load(Ordering::Relaxed) {
            return Take::Done;
        }
        self.schedule().take(provider)
    }

    /// Waits until a piece comes back or the plan changes (at most `max`).
    pub async fn wait(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.changed.notified()).await;
    }

    /// A worker is done with `piece`; what is still missing goes back in the queue.
    pub fn put_back(&self, piece: u64) {
        self.schedule().done(piece);
        self.changed.notify_waiters();
    }

    /// `provider` failed `piece` `how`: the piece is free for the others,
    /// and the provider gets nothing more. Returns whether to cut its
    /// connection.
    pub fn failed(&self, provider: NodeId, piece: u64, how: Failure) -> bool {
        let cut = self.schedule().failed(provider, piece, how);
        self.changed.notify_waiters();
        cut
    }

    /// The chunk ranges of `piece`'s missing groups.
    pub fn missing_spans(&self, piece: u64) -> Vec<ChunkSpan> {
        self.schedule().missing_spans(piece)
    }

    /// Writes verified hash pairs (consecutive in the outboard) at `at`.
    pub(super) fn write_parents(&self, at: u64, pairs: &[u8]) -> std::io::Result<()> {
        disk::write_all_at(&self.outboard, pairs, at)
    }

    /// Writes verified bytes at `at` (a group boundary): directly to the
    /// disk where the file system allows it, else through the page cache in
    /// 16 KiB writes. (Larger writes get large page-cache folios, which on a
    /// VM whose free memory goes back to the host cost several times the
    /// copy: 0.4 to 6 s per GiB in 256 KiB writes, 0.6 to 0.8 s in 16 KiB
    /// ones, against 0.15 s for 1 MiB direct writes.) `bytes` must start at
    /// a [`DIRECT_ALIGN`] boundary in memory to go direct.
    pub(super) fn write_run(&self, at: u64, bytes: &[u8]) -> std::io::Result<()> {
        let mut cached = bytes;
        let aligned = bytes.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && at.is_multiple_of(DIRECT_ALIGN as u64);
        let direct_len = bytes.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if let Some(direct) = self.direct_file().filter(|_| aligned && direct_len > 0) {
            match disk::write_all_at(direct, &bytes[..direct_len], at) {
                Ok(()) => {
                    cached = &bytes[direct_len..];
                    self.written_direct
                        .fetch_add(direct_len as u64, Ordering::Relaxed);
                }
                // Whatever went wrong, the page cache gets the whole run. A
                // file system that opened the file but won't write it this
                // way gets no more direct writes.
                Err(e) => {
                    let refused = disk::refused(&e);
                    tracing::debug!(error = %e, refused, "a direct write failed; writing through the page cache");
                    if refused {
                        self.direct_refused.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        let mut offset = at + (bytes.len() - cached.len()) as u64;
        for piece in cached.chunks(CACHED_WRITE) {
            disk::write_all_at(&self.data, piece, offset)?;
            offset += piece.len() as u64;
        }
        Ok(())
    }

    /// The partial file opened for direct I/O, unless the file system
    /// refused it.
    pub(super) fn direct_file(&self) -> Option<&File> {
        self.direct
            .as_ref()
            .filter(|_| !self.direct_refused.load(Ordering::Relaxed))
    }

    /// An empty run, with room for [`RUN_BYTES`] after its alignment
    /// padding, unless the download holds [`RUNS_MAX`] already.
    pub(super) fn take_run(&self) -> Option<Run> {
        if self.runs_out.fetch_add(1, Ordering::AcqRel) >= RUNS_MAX {
            self.runs_out.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let spare = self
            .spare
            .lock()
            .expect("spare lock is never poisoned")
            .pop();
        Some(spare.unwrap_or_else(|| Run {
            bytes: Vec::with_capacity(RUN_BYTES + DIRECT_ALIGN),
            start: 0,
            at: 0,
            groups: Vec::new(),
        }))
    }

    /// Takes back a run from [`Self::take_run`], to hand out again.
    pub(super) fn give_back(&self, run: Run) {
        self.spare
            .lock()
            .expect("spare lock is never poisoned")
            .push(run);
        self.runs_out.fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks chunk groups written at these (offset, length)s as verified.
    /// Returns the bytes newly verified.
    pub(super) fn mark(&self, written: &[(u64, usize)]) -> u64 {
        let added = self.schedule().mark(written);
        if added > 0 {
            self.verified.fetch_add(added, Ordering::Relaxed);
        }
        added
    }

    /// The bitmap to store, if it changed since the last call.
    pub fn progress(&self) -> Option<Vec<u8>> {
        self.schedule().progress()
    }

    /// Whether enough was verified since the last background sync to start
    /// another ([`WRITE_BACK_EVERY`]), none running, while writes go through
    /// the page cache (direct writes leave it nothing to do). The caller then runs
    /// [`Self::write_back`] off the runtime.
    pub fn write_back_due(&self) -> bool {
        if self.direct_file().is_some() {
            return false;
        }
        let verified = self.verified.load(Ordering::Relaxed);
        verified >= self.written_back.load(Ordering::Relaxed) + WRITE_BACK_EVERY
            && !self.writing_back.swap(true, Ordering::AcqRel)
    }

    /// Writes what the partial file holds to disk now, so that the sync at
    /// the end has little left to wait for (the disk works while the network
    /// does). Writers go on meanwhile: nothing is rewritten, so no page waits.
    pub fn write_back(&self) {
        let verified = self.verified.load(Ordering::Relaxed);
        if let Err(e) = self.data.sync_data() {
            tracing::debug!(error = %e, "background sync of a download failed");
        }
        self.written_back.store(verified, Ordering::Relaxed);
        self.writing_back.store(false, Ordering::Release);
    }

    /// Syncs the finished file and its outboard to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.data.sync_data()?;
        self.outboard.sync_data()
    }

    /// Records a fatal error: every worker stops.
    pub fn fail(&self, error: String) {
        self.fatal
            .lock()
            .expect("fatal lock is never poisoned")
            .get_or_insert(error);
        self.stop.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// Groups consecutive in the file from `at`, in `bytes[start..]` (the
/// padding before `start` aligns them in memory for direct I/O).
pub(super) struct Run {
    pub bytes: Vec<u8>,
    pub start: usize,
    pub at: u64,
    /// The (offset, length) of each group in the run.
    pub groups: Vec<(u64, usize)>,
}

impl Run {
    pub(super) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// Whether a group at `offset` continues the run (which has room).
    pub(super) fn takes(&self, offset: u64) -> bool {
        self.at + self.len() as u64 == offset && self.len() < RUN_BYTES
    }

    /// Empties the run; the next group starts it at `at`.
    pub(super) fn restart(&mut self, at: u64) {
        self.bytes.clear();
        self.start = self.bytes.as_ptr().align_offset(DIRECT_ALIGN);
        self.bytes.resize(self.start, 0);
        self.at = at;
        self.groups.clear();
    }
}

/// Keeps the groups `claimed` marks whose bytes still match the outboard.
fn recheck(
    hash: BlobHash,
    tree: BaoTree,
    data: &File,
    outboard: &File,
    claimed: Bitmap,
) -> std::io::Result<Bitmap> {
    let chunks = tree.chunks().0.max(1);
    let claimed_groups = || (0..claimed.groups()).filter(|&g| claimed.get(g));
    let ranges = super::chunk_ranges(claimed_groups().map(|g| group_chunks(g, chunks)));
    let outboard = PreOrderOutboard {
        root: hash.into(),
        tree,
        data: outboard,
    };
    let mut valid = ChunkRanges::empty();
    for r in bao_tree::io::sync::valid_ranges(outboard, data, &ranges) {
        valid |= ChunkRanges::from(r?);
    }
    let mut kept = Bitmap::new(claimed.groups());
    for g in claimed_groups() {
        let group = super::chunk_ranges([group_chunks(g, chunks)]);
        if (group.clone() & valid.clone()) == group {
            kept.set(g);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::schedule::PIECE_GROUPS;

    /// A provider's id, for the schedule.
    fn provider() -> NodeId {
        burrow_proto::SecretKey::from_bytes(&[7; 32]).public()
    }

    #[test]
    fn a_plan_asks_for_the_last_piece_first_and_only_for_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * PIECE_GROUPS * CHUNK_GROUP - 100;
        let plan = Plan::open(dir.path(), BlobHash([1; 32]), size, None).unwrap();
        let Take::Piece(first) = plan.take(provider()) else {
            panic!("a fresh plan has pieces")
        };
        assert_eq!(first, 2);
        let spans = plan.missing_spans(2);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].start, 2 * PIECE_GROUPS * 16);
        assert_eq!(spans[0].end, size.div_ceil(1024));
        // Mark one group of piece 0 as verified: its spans skip it.
        let group = vec![0; CHUNK_GROUP as usize];
        plan.write_run(CHUNK_GROUP, &group).unwrap();
        assert_eq!(plan.mark(&[(CHUNK_GROUP, group.len())]), CHUNK_GROUP);
        let spans = plan.missing_spans(0);
        assert_eq!(
            spans,
            vec![
                ChunkSpan { start: 0, end: 16 },
                ChunkSpan {
                    start: 32,
                    end: PIECE_GROUPS * 16
                }
            ]
        );
        // A piece given back unfinished is asked for again, first.
        plan.put_back(2);
        assert!(matches!(plan.take(provider()), Take::Piece(2)));
        assert!(plan.progress().is_some());
        assert!(plan.progress().is_none(), "only what changed is stored");
        // Without a stored bitmap, the files are reset.
        let fresh = Plan::open(dir.path(), BlobHash([1; 32]), size, None).unwrap();
        assert_eq!(fresh.resumed, 0);
    }

    #[test]
    fn runs_land_byte_for_byte_direct_or_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let group = CHUNK_GROUP as usize;
        // The last group is short: its bytes past the last 4 KiB boundary
        // can't be written direct.
        let size = 5 * CHUNK_GROUP + 100;
        let content: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
        let plan = Plan::open(dir.path(), BlobHash([2; 32]), size, None).unwrap();
        // Aligned in memory: direct where the file system takes it.
        let mut run = plan.take_run().unwrap();
        run.restart(0);
        run.bytes.extend_from_slice(&content[..3 * group]);
        assert_eq!(run.data().as_ptr().align_offset(DIRECT_ALIGN), 0);
        plan.write_run(0, run.data()).unwrap();
        // Off alignment in memory: through the page cache, with the short tail.
        let rest = &content[3 * group..];
        let mut buffer = vec![0u8; rest.len() + 1];
        let off = usize::from(buffer.as_ptr().align_offset(DIRECT_ALIGN) == 0);
        buffer[off..off + rest.len()].copy_from_slice(rest);
        plan.write_run(3 * CHUNK_GROUP, &buffer[off..off + rest.len()])
            .unwrap();
        plan.sync().unwrap();
        assert_eq!(std::fs::read(&plan.data_path).unwrap(), content);
        let direct = plan.written_direct.load(Ordering::Relaxed);
        if plan.direct.is_some() && !plan.direct_refused.load(Ordering::Relaxed) {
            assert_eq!(direct, 3 * CHUNK_GROUP, "only the aligned run went direct");
        } else {
            assert_eq!(direct, 0);
            eprintln!(
                "{}: this file system refuses direct I/O; only the page-cache path ran",
                dir.path().display()
            );
        }
    }

    #[test]
    fn a_resume_keeps_only_claimed_groups_whose_bytes_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * PIECE_GROUPS * CHUNK_GROUP + 5000;
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let tree = crate::files::tree(size);
        // A complete partial download: the data and its outboard, every group claimed.
        let mut ob = PreOrderOutboard {
            root: blake3::Hash::from_bytes([0; 32]),
            tree,
            data: vec![0u8; tree.outboard_size() as usize],
        };
        let root = bao_tree::io::sync::outboard(&content[..], tree, &mut ob).unwrap();
        let hash = BlobHash::from(root);
        std::fs::write(dir.path().join(format!("{hash}.part")), &content).unwrap();
        std::fs::write(dir.path().join(format!("{hash}.obao.part")), &ob.data).unwrap();
        let groups = tree.blocks();
        let mut all = Bitmap::new(groups);
        (0..groups).for_each(|g| {
            all.set(g);
        });
        let plan = Plan::open(dir.path(), hash, size, Some(all.as_bytes().to_vec())).unwrap();
        assert_eq!(plan.resumed, size);
        assert!(plan.complete());
        drop(plan);
        // Bytes lost in group 3 (as after a power loss): that group is fetched again.
        let mut damaged = content.clone();
        damaged[3 * CHUNK_GROUP as usize + 10] ^= 1;
        std::fs::write(dir.path().join(format!("{hash}.part")), &damaged).unwrap();
        let plan = Plan::open(dir.path(), hash, size, Some(all.as_bytes().to_vec())).unwrap();
        assert_eq!(plan.resumed, size - CHUNK_GROUP);
        assert!(matches!(plan.take(provider()), Take::Piece(0)));
        assert_eq!(
            plan.missing_spans(0),
            vec![ChunkSpan {
                start: 3 * 16,
                end: 4 * 16
            }]
        );
    }
}
