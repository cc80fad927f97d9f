//! The framing every burrow stream uses.
//!
//! ```text
//! +----------------+---------+---------------------------+
//! | length: u32 BE | version | postcard-encoded message  |
//! +----------------+---------+---------------------------+
//!                  \______ length bytes ________________/
//! ```
//!
//! The length covers the version byte and the body and is checked against the
//! stream's maximum before a buffer is allocated. The version byte lets a peer tell
//! "a newer protocol I don't speak" from "garbage".

use serde::{de::DeserializeOwned, Serialize};

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be decoded. Every variant is the peer's fault (or the
/// network's): the reader logs it and closes the stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The frame announced more bytes than this stream allows.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The stream's limit.
        max: usize,
    },
    /// The frame has no version byte.
    #[error("empty frame")]
    Empty,
    /// The version byte names a protocol version this build does not speak.
    #[error("unsupported protocol version {got} (this build speaks {expected})")]
    UnknownVersion {
        /// What the peer sent.
        got: u8,
        /// What we speak.
        expected: u8,
    },
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Why a message could not be encoded. Only a local bug causes this.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed the stream's limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The stream's limit.
        max: usize,
    },
    /// The serializer failed.
    #[error("cannot encode message: {0}")]
    Serialize(String),
}

/// Encodes `msg` as one frame (length prefix included), refusing to exceed `max`.
pub fn encode<T: Serialize>(version: u8, msg: &T, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; LEN_PREFIX];
    out.push(version);
    let mut out =
        postcard::to_extend(msg, out).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > max {
        return Err(EncodeError::TooLarge { len, max });
    }
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads the length prefix and checks it against `max`: how many bytes to read next.
pub fn decode_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    Ok(len)
}

/// Decodes a frame body (what follows the length prefix).
pub fn decode_body<T: DeserializeOwned>(version: u8, body: &[u8]) -> Result<T, DecodeError> {
    let (&got, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    if got != version {
        return Err(DecodeError::UnknownVersion {
            got,
            expected: version,
        });
    }
    let (msg, trailing) =
        postcard::take_from_bytes(rest).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes",
            trailing.len()
        )));
    }
    Ok(msg)
}

/// Decodes one whole frame, prefix included, from a buffer (used by tests and fuzzers;
/// streams read the prefix and body separately).
pub fn decode<T: DeserializeOwned>(
    version: u8,
    frame: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    let prefix: [u8; LEN_PREFIX] = frame
        .get(..LEN_PREFIX)
        .and_then(|p| p.try_into().ok())
        .ok_or(DecodeError::Empty)?;
    let len = decode_len(prefix, max)?;
    let body = &frame[LEN_PREFIX..];
    if body.len() != len {
        return Err(DecodeError::Malformed(format!(
            "frame announced {len} bytes, carried {}",
            body.len()
        )));
    }
    decode_body(version, body)
}
