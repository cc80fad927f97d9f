//! The chat service (ALPN [`ALPN`]).
//!
//! ```text
//! sender                                 receiver
//!  |== open bidirectional stream =========>|
//!  |-- ChatFrame::Message{id, text, ..} -->|  stores it, then
//!  |<---------------- ChatFrame::Ack{id} --|  acknowledges
//! ```
//!
//! One stream per message. The sender reports success, and stores the message as
//! sent, only after the ack: an acknowledged message is on the receiver's disk.
//! Message ids are random, so a resend after a lost ack is stored once.

use std::fmt;

use serde::{Deserialize, Serialize};

/// ALPN of peer ↔ peer chat connections.
pub const ALPN: &[u8] = b"burrow/chat/1";
/// Version byte of chat frames.
pub const VERSION: u8 = 1;
/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 16 * 1024;
/// Largest chat frame.
pub const MAX_FRAME: usize = MAX_TEXT + 256;

/// A message's id: 16 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random<R: rand::RngCore>(rng: &mut R) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        MessageId(b)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl std::str::FromStr for MessageId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b)?;
        Ok(MessageId(b))
    }
}

/// A frame on a chat stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatFrame {
    /// A message from the connection's other end.
    Message {
        /// Random id, the same on both sides.
        id: MessageId,
        /// The text (at most [`MAX_TEXT`] bytes).
        text: String,
        /// When the sender sent it, in Unix milliseconds (sender's clock).
        sent_at_ms: u64,
    },
    /// The receiver stored message `id`.
    Ack {
        /// The stored message.
        id: MessageId,
    },
}

/// Encodes a chat frame.
pub fn encode(frame: &ChatFrame) -> Result<Vec<u8>, crate::frame::EncodeError> {
    crate::frame::encode(VERSION, frame, MAX_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chat_frames_round_trip(id in any::<[u8; 16]>(), text in ".{0,200}", t in any::<u64>(), ack in any::<bool>()) {
            let f = if ack { ChatFrame::Ack { id: MessageId(id) } }
                    else { ChatFrame::Message { id: MessageId(id), text, sent_at_ms: t } };
            prop_assert_eq!(decode::<ChatFrame>(VERSION, &encode(&f).unwrap(), MAX_FRAME), Ok(f));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ChatFrame>(VERSION, &bytes, MAX_FRAME);
        }
    }

    #[test]
    fn message_id_text_round_trip() {
        let id = MessageId([0xab; 16]);
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
    }
}
