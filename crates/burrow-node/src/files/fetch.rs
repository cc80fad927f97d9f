//! The downloader: many providers, one verified partial file, resumable.
//!
//! A download is a [`Plan`]: the partial file and its outboard in the node's home,
//! a bitmap of verified chunk groups, and a queue of pieces (2 MiB: 128 groups)
//! still missing. Each provider gets [`STREAMS_PER_PROVIDER`] workers; a worker
//! takes a piece, asks its provider for the piece's missing groups on a fresh
//! stream, and verifies what arrives with bao-tree as it arrives: every hash pair
//! against its parent, every chunk group against its hash pair. A verified group
//! is written in place, then marked; nothing unverified is ever marked.
//!
//! A provider that sends one wrong byte is caught at that group, named, and
//! dropped: its piece goes back in the queue for the others. One that leaves
//! gives its piece back the same way.
//!
//! What arrives is written through the download's [`Plan`] (see
//! [`super::plan`]): gathered into runs, written, then marked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bao_tree::io::fsm::{ResponseDecoder, ResponseDecoderNext};
use bao_tree::io::{BaoContentItem, DecodeError};
use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::files::{self, BlobHash, ChunkSpan, FilesRequest, FilesResponse};
use burrow_proto::schedule::group_chunks;
pub(crate) use burrow_proto::schedule::Take;
use tokio::task::JoinHandle;

use super::plan::{Plan, Run};
use super::quic_io::{StreamReader, STALL};

/// Pieces each provider works on at once: keeps the path busy across the gap
/// between one piece's end and the next one's first byte.
pub(crate) const STREAMS_PER_PROVIDER: usize = 4;

/// Why a provider's piece failed.
#[derive(Debug)]
pub(crate) enum PieceError {
    /// The provider sent data that does not match the hash: the one thing
    /// that proves a provider dishonest (a strike).
    Lied(String),
    /// The provider doesn't have the file (any more).
    Gone(String),
    /// The connection or stream failed.
    Lost(String),
    /// We could not write what we received: the download can't go on.
    Disk(std::io::Error),
}

/// Verified hash pairs and chunk groups on their way to the partial files.
///
/// Hash pairs, 64 bytes each, are gathered while consecutive in the
/// outboard; groups while consecutive in the file, up to [`RUN_BYTES`]. A
/// full run is written on a blocking thread while the next one fills (a
/// direct write waits for the disk; the runtime must not). Once a run is
/// written, the hash pairs that prove it are, then its groups are marked
/// verified. A stream holds two runs at most, and only while the download's
/// budget ([`RUNS_MAX`]) allows; without one, each group is written through
/// the page cache as it comes.
struct Pending {
    plan: Arc<Plan>,
    /// Hash pairs, consecutive in the outboard from `parents_at`.
    parents: Vec<u8>,
    parents_at: u64,
    /// The run being gathered.
    run: Option<Run>,
    /// The run before it, being written; the task hands it back.
    writing: Option<JoinHandle<(std::io::Result<()>, Run)>>,
    /// A written run, to gather the next one in.
    spare: Option<Run>,
}

impl Pending {
    fn new(plan: &Arc<Plan>) -> Pending {
        Pending {
            plan: plan.clone(),
            parents: Vec::new(),
            parents_at: 0,
            run: None,
            writing: None,
            spare: None,
        }
    }

    fn parent(&mut self, at: u64, pair: &(blake3::Hash, blake3::Hash)) -> std::io::Result<()> {
        if !self.parents.is_empty() && self.parents_at + self.parents.len() as u64 != at {
            self.write_parents()?;
        }
        if self.parents.is_empty() {
            self.parents_at = at;
        }
        self.parents.extend_from_slice(pair.0.as_bytes());
        self.parents.extend_from_slice(pair.1.as_bytes());
        Ok(())
    }

    /// Adds a verified group to the run; returns the bytes newly marked.
    async fn leaf(&mut self, offset: u64, data: &[u8]) -> std::io::Result<u64> {
        let mut added = 0;
        if self.run.as_ref().is_some_and(|r| !r.takes(offset)) {
            added += self.write_run().await?;
        }
        if self.run.is_none() {
            self.run = match self.spare.take().or_else(|| self.plan.take_run()) {
                Some(run) => Some(run),
                // Over budget: wait for our own run being written, if any.
                None => {
                    added += self.written().await?;
                    self.spare.take()
                }
            };
            if let Some(run) = self.run.as_mut() {
                run.restart(offset);
            }
        }
        let Some(run) = self.run.as_mut() else {
            // No run to gather into: this group alone, through the page cache.
            self.plan.write_run(offset, data)?;
            self.write_parents()?;
            return Ok(added + self.plan.mark(&[(offset, data.len())]));
        };
        run.bytes.extend_from_slice(data);
        run.groups.push((offset, data.len()));
        Ok(added)
    }

    fn write_parents(&mut self) -> std::io::Result<()> {
        if !self.parents.is_empty() {
            self.plan.write_parents(self.parents_at, &self.parents)?;
            self.parents.clear();
        }
        Ok(())
    }

    /// Starts writing the run, after the one before it is written (and
    /// marked). Returns the bytes newly verified.
    async fn write_run(&mut self) -> std::io::Result<u64> {
        let added = self.written().await?;
        if let Some(run) = self.run.take() {
            let plan = self.plan.clone();
            self.writing = Some(tokio::task::spawn_blocking(move || {
                let result = plan.write_run(run.at, run.data());
                (result, run)
            }));
        }
        Ok(added)
    }

    /// Waits for the run being written, then writes the gathered hash pairs
    /// and marks its groups. Returns the bytes newly verified.
    async fn written(&mut self) -> std::io::Result<u64> {
        let Some(task) = self.writing.take() else {
            return Ok(0);
        };
        let (result, run) = task.await.map_err(|e| {
            std::io::Error::other(format!("the write of a verified run was lost: {e}"))
        })?;
        let marked = result
            .and_then(|()| self.write_parents())
            .map(|()| self.plan.mark(&run.groups));
        if let Some(extra) = self.spare.replace(run) {
            self.plan.give_back(extra);
        }
        marked
    }

    /// Writes everything gathered and marks it. Returns the bytes newly
    /// verified.
    async fn flush(&mut self) -> std::io::Result<u64> {
        let added = self.write_run().await? + self.written().await?;
        self.write_parents()?;
        Ok(added)
    }
}

impl Drop for Pending {
    /// Gives the runs back to the download. A run still being written (a
    /// piece that failed on a write, or a cancelled `get`) finishes on its
    /// own thread and is never marked: its bytes are verified and land where
    /// they belong, and a resume checks them again.
    fn drop(&mut self) {
        for run in [self.run.take(), self.spare.take()].into_iter().flatten() {
            self.plan.give_back(run);
        }
        if let (Some(task), Ok(rt)) = (self.writing.take(), tokio::runtime::Handle::try_current()) {
            let plan = self.plan.clone();
            rt.spawn(async move {
                if let Ok((_, run)) = task.await {
                    plan.give_back(run);
                }
            });
        }
    }
}

/// Asks `conn` for `spans` of `hash` on a fresh stream and reads the answer:
/// the stream to decode the data from once the provider says it has the file
/// with `size` bytes. A provider that gives another size is dropped, not
/// struck: the size only a download's data proves, and the data decides who
/// lied.
async fn ask(
    conn: &quinn::Connection,
    hash: BlobHash,
    size: u64,
    spans: &[ChunkSpan],
) -> Result<FrameReader, PieceError> {
    let lost = |e: &dyn std::fmt::Display| PieceError::Lost(e.to_string());
    let (send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let mut writer = FrameWriter::new(send, files::VERSION, files::MAX_FRAME);
    let mut reader = FrameReader::new(recv, files::VERSION, files::MAX_FRAME);
    writer
        .write(&FilesRequest::Get {
            hash,
            ranges: spans.to_vec(),
        })
        .await
        .map_err(|e| lost(&e))?;
    writer.finish();
    let answer = tokio::time::timeout(STALL, reader.read::<FilesResponse>())
        .await
        .map_err(|_| PieceError::Lost(format!("no answer within {STALL:?}")))?
        .map_err(|e| lost(&e))?;
    match answer {
        Some(FilesResponse::Found { size: s }) if s == size => Ok(reader),
        Some(FilesResponse::Found { size: s }) => Err(PieceError::Gone(format!(
            "offers it as {s} bytes, where the file has {size}"
        ))),
        Some(FilesResponse::NotFound) => Err(PieceError::Gone(
            "does not have this file (any more)".into(),
        )),
        Some(FilesResponse::Changed) => Err(PieceError::Gone(
            "its copy changed on disk since it was shared".into(),
        )),
        other => Err(PieceError::Lost(format!("answered {other:?}"))),
    }
}

/// Proves that `hash` is a file of `size` bytes before anything is allocated
/// for it: asks `conn` for the last chunk group and checks it, with its hash
/// pairs, against the hash (the tree's shape, and so the hash, depends on the
/// size). A claimed size is only a claim until this holds. `Lied` means the
/// provider sent data that doesn't match; nothing is written anywhere.
pub(crate) async fn prove_size(
    conn: &quinn::Connection,
    hash: BlobHash,
    size: u64,
) -> Result<(), PieceError> {
    if size == 0 {
        // The empty file's hash is known: nothing to ask.
        return if hash.0 == *blake3::hash(b"").as_bytes() {
            Ok(())
        } else {
            Err(PieceError::Gone(
                "claims it is empty, which its hash says it is not".into(),
            ))
        };
    }
    let tree = super::tree(size);
    let chunks = tree.chunks().0;
    let last = group_chunks(tree.blocks() - 1, chunks);
    let spans = [ChunkSpan {
        start: last.start,
        end: last.end,
    }];
    let reader = ask(conn, hash, size, &spans).await?;
    let ranges = super::chunk_ranges([last]);
    let reader = StreamReader::new(reader.into_inner());
    let mut decoder = ResponseDecoder::new(hash.into(), ranges, tree, reader);
    loop {
        match decoder.next().await {
            ResponseDecoderNext::More((next, item)) => {
                decoder = next;
                match item {
                    Ok(_) => {}
                    Err(DecodeError::LeafHashMismatch(_) | DecodeError::ParentHashMismatch(_)) => {
                        return Err(PieceError::Lied(format!(
                            "sent an end of the file that does not match its hash for {size} bytes"
                        )))
                    }
                    Err(DecodeError::Io(e)) => return Err(PieceError::Lost(e.to_string())),
                    Err(_) => return Err(PieceError::Lost("ended the transfer early".into())),
                }
            }
            ResponseDecoderNext::Done(_) => return Ok(()),
        }
    }
}

/// Fetches the missing groups of one piece from the provider on `conn`,
/// verifying as it reads. Counts what it verified into `counted`.
pub(crate) async fn fetch_piece(
    plan: &Arc<Plan>,
    conn: &quinn::Connection,
    spans: Vec<ChunkSpan>,
    counted: &Arc<AtomicU64>,
) -> Result<(), PieceError> {
    let reader = ask(conn, plan.hash, plan.size, &spans).await?;
    let ranges = super::chunk_ranges(spans.iter().map(|s| s.start..s.end));
    let reader = StreamReader::new(reader.into_inner());
    let mut decoder = ResponseDecoder::new(plan.hash.into(), ranges, plan.tree, reader);
    let mut pending = Pending::new(plan);
    let result = loop {
        if plan.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let item = match decoder.next().await {
            ResponseDecoderNext::More((next, item)) => {
                decoder = next;
                item
            }
            ResponseDecoderNext::Done(_) => break Ok(()),
        };
        let written = match item {
            Ok(BaoContentItem::Parent(p)) => match plan.tree.pre_order_offset(p.node) {
                Some(i) => pending.parent(i * 64, &p.pair).map(|()| 0),
                None => Ok(0),
            },
            Ok(BaoContentItem::Leaf(l)) => pending.leaf(l.offset, &l.data).await,
            Err(DecodeError::LeafHashMismatch(c)) => {
                break Err(PieceError::Lied(format!(
                    "sent data at byte {} that does not match the file's hash",
                    c.to_bytes()
                )))
            }
            Err(DecodeError::ParentHashMismatch(n)) => {
                break Err(PieceError::Lied(format!(
                    "sent hashes for bytes from {} that do not match the file's hash",
                    n.chunk_range().start.to_bytes()
                )))
            }
            Err(DecodeError::ParentNotFound(_) | DecodeError::LeafNotFound(_)) => {
                break Err(PieceError::Lost("ended the transfer early".into()))
            }
            Err(DecodeError::Io(e)) => break Err(PieceError::Lost(e.to_string())),
        };
        match written {
            Ok(n) => counted.fetch_add(n, Ordering::Relaxed),
            Err(e) => break Err(PieceError::Disk(e)),
        };
    };
    // What was verified before the piece ended (or failed) is kept.
    if !matches!(result, Err(PieceError::Disk(_))) {
        match pending.flush().await {
            Ok(n) => counted.fetch_add(n, Ordering::Relaxed),
            Err(e) => return Err(PieceError::Disk(e)),
        };
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::plan::{RUNS_MAX, RUN_BYTES};
    use super::*;
    use burrow_proto::files::CHUNK_GROUP;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn groups_are_marked_once_their_run_is_written_and_a_full_budget_writes_them_one_by_one()
    {
        let dir = tempfile::tempdir().unwrap();
        let per_run = RUN_BYTES as u64 / CHUNK_GROUP;
        let size = 4 * RUN_BYTES as u64;
        let content: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let plan = Arc::new(Plan::open(dir.path(), BlobHash([3; 32]), size, None).unwrap());
        let group = |g: u64| &content[(g * CHUNK_GROUP) as usize..((g + 1) * CHUNK_GROUP) as usize];
        let mut pending = Pending::new(&plan);
        // A run's worth of groups is gathered, not yet written or marked.
        let mut marked = 0;
        for g in 0..per_run {
            marked += pending.leaf(g * CHUNK_GROUP, group(g)).await.unwrap();
        }
        assert_eq!(marked, 0);
        assert!(
            plan.progress().is_none(),
            "nothing is marked before it is written"
        );
        // The next group sends the full run off; it is marked once written,
        // and the stream gathers its third run in its first one's buffer.
        for g in per_run..3 * per_run {
            marked += pending.leaf(g * CHUNK_GROUP, group(g)).await.unwrap();
        }
        marked += pending.written().await.unwrap();
        assert_eq!(marked, 2 * RUN_BYTES as u64);
        assert_eq!(
            plan.runs_out.load(Ordering::Relaxed),
            2,
            "a stream holds two runs"
        );
        // With the download's budget spent, groups are written one by one.
        let taken: Vec<Run> = std::iter::from_fn(|| plan.take_run()).collect();
        assert_eq!(plan.runs_out.load(Ordering::Relaxed), RUNS_MAX);
        let mut alone = Pending::new(&plan);
        for g in 3 * per_run..4 * per_run {
            marked += alone.leaf(g * CHUNK_GROUP, group(g)).await.unwrap();
        }
        assert_eq!(
            marked,
            3 * RUN_BYTES as u64,
            "each group marked once written"
        );
        // The third run is marked at the flush.
        marked += pending.flush().await.unwrap() + alone.flush().await.unwrap();
        assert_eq!(marked, size);
        assert!(plan.complete());
        drop((pending, alone));
        taken.into_iter().for_each(|r| plan.give_back(r));
        assert_eq!(
            plan.runs_out.load(Ordering::Relaxed),
            0,
            "every run given back"
        );
        plan.sync().unwrap();
        assert_eq!(std::fs::read(&plan.data_path).unwrap(), content);
    }
}
