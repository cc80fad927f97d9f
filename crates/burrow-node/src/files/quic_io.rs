//! The adapters bao-tree's async codec reads and writes through: QUIC streams
//! and files.
//!
//! - [`StreamReader`]: a receive stream as iroh-io's `AsyncStreamReader`. A read
//!   that fits in what quinn holds in one chunk is a slice of it (no copy);
//!   a longer one (a 16 KiB group spans a dozen packets) is read straight into
//!   its buffer.
//! - [`StreamWriter`]: a send stream as `AsyncStreamWriter`. Chunk groups (16 KiB)
//!   go to quinn as they are (`write_chunk`, no copy); hash pairs are gathered.
//! - [`FileSlice`]: a file as `AsyncSliceReader`, read with `pread`.
//!
//! File reads and writes are made inline on the runtime thread: they are page-cache
//! copies of 16 KiB (microseconds), and handing each to a blocking thread cost
//! more in wake-ups than the copy itself (the transfer benchmark measured a
//! third of the throughput that way). A cold read from a slow disk does hold
//! one runtime thread for its duration.
//!
//! Every stream read or write has a deadline ([`STALL`]): a peer that stops
//! sending, or stops granting credit, can't hold a transfer forever.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iroh_io::{AsyncSliceReader, AsyncStreamReader, AsyncStreamWriter};

/// How long one read or write may wait for the peer.
pub(crate) const STALL: Duration = Duration::from_secs(20);
/// Hash pairs gathered before they go out (a piece has a few dozen).
const GATHER: usize = 16 * 1024;

fn stalled(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the peer {what} for {STALL:?}"),
    )
}

/// A receive stream for bao-tree's decoder.
pub(crate) struct StreamReader {
    stream: quinn::RecvStream,
    /// What is left of the last chunk.
    rest: Bytes,
}

impl StreamReader {
    pub fn new(stream: quinn::RecvStream) -> Self {
        StreamReader {
            stream,
            rest: Bytes::new(),
        }
    }

    async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        match tokio::time::timeout(STALL, self.stream.read_chunk(usize::MAX, true)).await {
            Ok(Ok(c)) => Ok(c.map(|c| c.bytes)),
            Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => Err(stalled("sent nothing")),
        }
    }

    /// Up to `len` bytes; fewer only at the end of the stream. What the last
    /// chunk left over is used first; the rest is read straight into the
    /// result (one copy, one deadline per call).
    async fn take(&mut self, len: usize) -> io::Result<Bytes> {
        if self.rest.len() >= len {
            return Ok(self.rest.split_to(len));
        }
        if self.rest.is_empty() {
            match self.chunk().await? {
                Some(c) if c.len() >= len => {
                    self.rest = c;
                    return Ok(self.rest.split_to(len));
                }
                Some(c) => self.rest = c,
                None => return Ok(Bytes::new()),
            }
        }
        let have = self.rest.len();
        let mut out = BytesMut::zeroed(len.min(1 << 20));
        out[..have].copy_from_slice(&std::mem::take(&mut self.rest));
        let read = tokio::time::timeout(STALL, self.stream.read_exact(&mut out[have..])).await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(quinn::ReadExactError::FinishedEarly(n))) => out.truncate(have + n),
            Ok(Err(quinn::ReadExactError::ReadError(e))) => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e))
            }
            Err(_) => return Err(stalled("sent nothing")),
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
    gathered: BytesMut,
}

impl StreamWriter {
    pub fn new(stream: quinn::SendStream) -> Self {
        StreamWriter {
            stream,
            gathered: BytesMut::new(),
        }
    }

    async fn send(&mut self, b: Bytes) -> io::Result<()> {
        match tokio::time::timeout(STALL, self.stream.write_chunk(b)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => Err(stalled("took nothing")),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.gathered.is_empty() {
            let b = self.gathered.split().freeze();
            self.send(b).await?;
        }
        Ok(())
    }
}

impl AsyncStreamWriter for StreamWriter {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.gathered.extend_from_slice(data);
        if self.gathered.len() >= GATHER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() < 4096 {
            return self.write(&data).await;
        }
        self.flush().await?;
        self.send(data).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.flush().await
    }
}

/// A file read at offsets.
pub(crate) struct FileSlice {
    file: File,
    size: u64,
}

impl FileSlice {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSlice { file, size })
    }
}

impl AsyncSliceReader for FileSlice {
    async fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut buf = BytesMut::zeroed((end - offset) as usize);
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf.freeze())
    }

    async fn size(&mut self) -> io::Result<u64> {
        Ok(self.size)
    }
}
