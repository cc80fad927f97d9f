//! Frames ([`burrow_proto::frame`]) on QUIC streams.

use burrow_proto::frame::{self, DecodeError, EncodeError, LEN_PREFIX};

/// What a frame's body gets up front; it grows as its bytes arrive.
const FIRST_ALLOCATION: usize = 16 * 1024;
use serde::{de::DeserializeOwned, Serialize};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// The stream failed while reading.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream failed while writing.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The peer sent a frame we can't decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// We tried to send a frame that is too large (a local bug).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Reads frames of one protocol version, each at most `max` bytes.
#[derive(Debug)]
pub struct FrameReader {
    stream: quinn::RecvStream,
    version: u8,
    max: usize,
}

impl FrameReader {
    /// Reads frames of `version` from `stream`, refusing any larger than `max`.
    pub fn new(stream: quinn::RecvStream, version: u8, max: usize) -> Self {
        FrameReader {
            stream,
            version,
            max,
        }
    }

    /// The next message, or `None` when the peer finished the stream cleanly
    /// between frames.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FramedError> {
        let mut prefix = [0u8; LEN_PREFIX];
        match self.stream.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FramedError::Truncated),
            Err(e) => return Err(e.into()),
        }
        let len = frame::decode_len(prefix, self.max)?;
        // Memory follows the bytes that came, not the length a peer claimed:
        // a prefix alone doesn't get it `max` bytes of ours.
        let mut body = Vec::with_capacity(len.min(FIRST_ALLOCATION));
        let mut chunk = [0u8; 4096];
        while body.len() < len {
            let want = (len - body.len()).min(chunk.len());
            let read = self.stream.read(&mut chunk[..want]).await;
            match read.map_err(|e| FramedError::Read(quinn::ReadExactError::ReadError(e)))? {
                Some(n) => body.extend_from_slice(&chunk[..n]),
                None => return Err(FramedError::Truncated),
            }
        }
        Ok(Some(frame::decode_body(self.version, &body)?))
    }

    /// The stream, for what follows the frames (it reads no further than the
    /// frames it returned).
    pub fn into_inner(self) -> quinn::RecvStream {
        self.stream
    }
}

/// Writes frames of one protocol version.
#[derive(Debug)]
pub struct FrameWriter {
    stream: quinn::SendStream,
    version: u8,
    max: usize,
}

impl FrameWriter {
    /// Writes frames of `version` to `stream`, each at most `max` bytes.
    pub fn new(stream: quinn::SendStream, version: u8, max: usize) -> Self {
        FrameWriter {
            stream,
            version,
            max,
        }
    }

    /// Encodes and sends one message.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), FramedError> {
        let bytes = frame::encode(self.version, msg, self.max)?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// Finishes the stream: the peer's reader sees a clean end.
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }

    /// The stream, to send what follows the frames.
    pub fn into_inner(self) -> quinn::SendStream {
        self.stream
    }
}
