//! The relay's datagram format: how two nodes that have no direct path send each
//! other QUIC packets through the server.
//!
//! ```text
//! alice ── [MAGIC | channel | QUIC packet] ──> server ── same bytes ──> bob
//! ```
//!
//! When the server brokers a connection it draws a random [`Channel`] id and
//! hands it to both sides (over their TLS sessions). A relay datagram is the
//! 4-byte magic, the channel id, and one QUIC packet of the two nodes' own
//! connection, which stays encrypted end to end: the server sees only which
//! channel a packet belongs to. It forwards the datagram unchanged to the other
//! end of the channel, and only when it came from one of the two ends' registered
//! addresses; the channel id is unguessable, so a stranger can't use a channel
//! either way.
//!
//! The magic's first byte clears QUIC's fixed bit, and bytes 4..8 are channel
//! bytes, which a STUN parser would have to mistake for its cookie and length:
//! [`parse`] is checked before STUN by every reader.

use serde::{Deserialize, Serialize};

/// First bytes of every relay datagram.
pub const MAGIC: [u8; 4] = [0x00, b'b', b'r', b'l'];
/// Bytes before the payload: magic and channel id.
pub const HEADER_LEN: usize = 4 + 16;
/// Largest payload relayed: a QUIC packet of up to 1452 bytes (quinn's largest
/// by default), so that a relay datagram fits a 1500-byte IPv4 MTU.
pub const MAX_PAYLOAD: usize = 1452;

/// Names one relayed link between two nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Channel(pub [u8; 16]);

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel({})", hex::encode(&self.0[..4]))
    }
}

impl Channel {
    /// A fresh random channel id.
    pub fn random<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut c = [0u8; 16];
        rng.fill_bytes(&mut c);
        Channel(c)
    }
}

/// Writes the relay datagram carrying `payload` on `channel` into `out`.
pub fn wrap(channel: &Channel, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&channel.0);
    out.extend_from_slice(payload);
}

/// Appends the relay datagram carrying `payload` on `channel` to `out` (one
/// segment of a batch sent at once).
pub fn wrap_onto(channel: &Channel, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&channel.0);
    out.extend_from_slice(payload);
}

/// The channel and payload of a relay datagram, or `None` if `data` is not one
/// (or carries nothing, or more than [`MAX_PAYLOAD`]).
pub fn parse(data: &[u8]) -> Option<(Channel, &[u8])> {
    if data.len() <= HEADER_LEN || data.len() > HEADER_LEN + MAX_PAYLOAD || data[..4] != MAGIC {
        return None;
    }
    let channel = Channel(data[4..HEADER_LEN].try_into().ok()?);
    Some((channel, &data[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn wrap_then_parse_round_trips(c in any::<[u8; 16]>(), payload in proptest::collection::vec(any::<u8>(), 1..=MAX_PAYLOAD)) {
            let mut d = Vec::new();
            wrap(&Channel(c), &payload, &mut d);
            let (ch, p) = parse(&d).unwrap();
            prop_assert_eq!(ch, Channel(c));
            prop_assert_eq!(p, &payload[..]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn empty_oversized_and_foreign_datagrams_are_not_relay_datagrams() {
        let c = Channel([7; 16]);
        let mut d = Vec::new();
        wrap(&c, &[], &mut d);
        assert!(parse(&d).is_none(), "nothing to relay");
        wrap(&c, &[1; MAX_PAYLOAD + 1], &mut d);
        assert!(parse(&d).is_none(), "over the MTU budget");
        wrap(&c, &[1; 10], &mut d);
        d[3] = b'w';
        assert!(parse(&d).is_none(), "a punch probe's magic");
        let stun = crate::stun::binding_request(crate::stun::TransactionId::new([1; 12]));
        assert!(parse(&stun).is_none());
    }
}
