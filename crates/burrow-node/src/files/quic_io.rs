//! The adapters bao-tree's async codec reads and writes through: QUIC streams
//! and files.
//!
//! - [`StreamReader`]: a receive stream as iroh-io's `AsyncStreamReader`. It
//!   takes quinn's chunks (one STREAM frame each, about a packet) up to 32 at a
//!   time, under one lock of the connection. A read that fits in the next chunk
//!   is a slice of it (no copy); a longer one (a 16 KiB group spans a dozen
//!   packets) is gathered into one buffer.
//! - [`StreamWriter`]: a send stream as `AsyncStreamWriter`. Chunk groups (16 KiB)
//!   are queued as they are (no copy), hash pairs gathered, and the queue is
//!   handed to quinn 256 KiB at a time: each hand-over locks the connection and
//!   wakes its driver.
//! - [`FileSlice`]: a file as `AsyncSliceReader`, read ahead in blocks (256 KiB
//!   of a shared file, 16 KiB of an outboard) that the next reads slice.
//!
//! A provider's file reads are made inline on the runtime thread: they are
//! page-cache copies (microseconds), and handing each to a blocking thread
//! cost more in wake-ups than the copy itself (the transfer benchmark
//! measured a third of the throughput that way). A cold read from a slow
//! disk does hold one runtime thread for its duration. The downloader's
//! file writes are different: they go to a blocking thread 1 MiB at a time
//! (see `fetch`), because a direct write waits for the disk; only its small
//! outboard writes (hash pairs) stay inline.
//!
//! Every stream read or write has a deadline ([`STALL`]): a peer that stops
//! sending, or stops granting credit, can't hold a transfer forever.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iroh_io::{AsyncSliceReader, AsyncStreamReader, AsyncStreamWriter};

/// How long one read or write may wait for the peer.
pub(crate) const STALL: Duration = Duration::from_secs(20);
/// Hash pairs gathered into one chunk (a piece has a few dozen).
const GATHER: usize = 16 * 1024;
/// Bytes handed to quinn at once: each hand-over locks the connection and
/// wakes its driver, so it is not done per 16 KiB group.
const WRITE_BATCH: usize = 256 * 1024;
/// Chunks taken from quinn at once (each is one STREAM frame, about a packet).
const READ_BATCH: usize = 32;
/// How much the provider reads from a shared file at once.
pub(crate) const READ_AHEAD: usize = 256 * 1024;
/// How much it reads from an outboard at once: a piece's hash pairs lie
/// together in pre-order (127 pairs, 8 KiB), read 64 bytes at a time.
pub(crate) const OUTBOARD_READ_AHEAD: usize = 16 * 1024;

fn stalled(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the peer {what} for {STALL:?}"),
    )
}

/// A receive stream for bao-tree's decoder.
pub(crate) struct StreamReader {
    stream: quinn::RecvStream,
    /// Chunks received and not yet used, in order.
    chunks: VecDeque<Bytes>,
}

impl StreamReader {
    pub fn new(stream: quinn::RecvStream) -> Self {
        StreamReader {
            stream,
            chunks: VecDeque::new(),
        }
    }

    /// Takes what quinn holds for the stream (at least one chunk, up to
    /// [`READ_BATCH`], under one lock of the connection). False at the end
    /// of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut batch: [Bytes; READ_BATCH] = Default::default();
        match tokio::time::timeout(STALL, self.stream.read_chunks(&mut batch)).await {
            Ok(Ok(Some(n))) => {
                self.chunks.extend(batch.into_iter().take(n));
                Ok(true)
            }
            Ok(Ok(None)) => Ok(false),
            Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => Err(stalled("sent nothing")),
        }
    }

    /// Up to `len` bytes; fewer only at the end of the stream. A read that
    /// fits in the next chunk is a slice of it; a longer one is gathered
    /// into one buffer (one copy).
    async fn take(&mut self, len: usize) -> io::Result<Bytes> {
        if self.chunks.is_empty() && !self.fill().await? {
            return Ok(Bytes::new());
        }
        if let Some(front) = self.chunks.front_mut().filter(|f| f.len() >= len) {
            let b = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return Ok(b);
        }
        let mut out = BytesMut::with_capacity(len);
        while out.len() < len {
            let Some(mut chunk) = self.chunks.pop_front() else {
                if self.fill().await? {
                    continue;
                }
                break;
            };
            let want = len - out.len();
            if chunk.len() > want {
                out.extend_from_slice(&chunk.split_to(want));
                self.chunks.push_front(chunk);
            } else {
                out.extend_from_slice(&chunk);
            }
        }
        Ok(out.freeze())
    }
}

impl AsyncStreamReader for StreamReader {
    async fn read_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        self.take(len).await
    }

    async fn read<const L: usize>(&mut self) -> io::Result<[u8; L]> {
        let b = self.take(L).await?;
        b.as_ref()
            .try_into()
            .map_err(|_| io::ErrorKind::UnexpectedEof.into())
    }
}

/// A send stream for bao-tree's encoder.
pub(crate) struct StreamWriter {
    pub stream: quinn::SendStream,
    /// Chunks not yet handed to quinn, in order.
    pending: Vec<Bytes>,
    /// Small writes (hash pairs) gathered into one chunk.
    small: BytesMut,
}

impl StreamWriter {
    pub fn new(stream: quinn::SendStream) -> Self {
        StreamWriter {
            stream,
            pending: Vec::new(),
            small: BytesMut::new(),
        }
    }

    /// Moves the gathered small writes behind the pending chunks.
    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.pending.push(self.small.split().freeze());
        }
    }

    /// Hands the pending chunks to quinn once they reach [`WRITE_BATCH`].
    async fn flush_if_full(&mut self) -> io::Result<()> {
        if self.pending.iter().map(Bytes::len).sum::<usize>() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands everything pending to quinn (one lock of the connection for as
    /// much as its send buffer takes).
    async fn flush(&mut self) -> io::Result<()> {
        self.seal();
        let write = self.stream.write_all_chunks(&mut self.pending);
        match tokio::time::timeout(STALL, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => return Err(stalled("took nothing")),
        }
        self.pending.clear();
        Ok(())
    }
}

impl AsyncStreamWriter for StreamWriter {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.small.extend_from_slice(data);
        if self.small.len() >= GATHER {
            self.seal();
        }
        self.flush_if_full().await
    }

    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() < 4096 {
            return self.write(&data).await;
        }
        self.seal();
        self.pending.push(data);
        self.flush_if_full().await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.flush().await
    }
}

/// A file read at offsets, with read-ahead for sequential reads.
pub(crate) struct FileSlice {
    file: File,
    size: u64,
    /// How much one read from the file takes at least.
    read_ahead: usize,
    /// The last block read, and where in the file it starts.
    block: Bytes,
    block_at: u64,
}

impl FileSlice {
    /// Opens `path`; each read from the file takes at least `read_ahead` bytes
    /// (0 for exact reads), so the next sequential reads are slices of it.
    pub fn open(path: &Path, read_ahead: usize) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSlice {
            file,
            size,
            read_ahead,
            block: Bytes::new(),
            block_at: 0,
        })
    }
}

impl AsyncSliceReader for FileSlice {
    async fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let block_end = self.block_at + self.block.len() as u64;
        if offset >= self.block_at && end <= block_end {
            let start = (offset - self.block_at) as usize;
            return Ok(self.block.slice(start..start + (end - offset) as usize));
        }
        let want = ((end - offset) as usize)
            .max(self.read_ahead)
            .min((self.size - offset) as usize);
        // Read into spare capacity (nothing is zeroed first), in one call
        // unless the kernel returns less.
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let at = offset + buf.len() as u64;
            if super::disk::read_at_into(&self.file, &mut buf, at)? == 0 {
                break;
            }
        }
        if buf.len() < (end - offset) as usize {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.block = Bytes::from(buf);
        self.block_at = offset;
        Ok(self.block.slice(..(end - offset) as usize))
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.size)
    }
}
