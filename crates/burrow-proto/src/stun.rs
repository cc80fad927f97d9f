//! STUN Binding (RFC 8489) on top of `stun_codec`: just what burrow needs.
//!
//! A node learns its public address by sending a Binding request to the server's
//! QUIC port from its one UDP socket; the server answers with the source address it
//! saw in XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS, for RFC 3489 clients). STUN and QUIC
//! share the port: [`looks_like_stun`] tells them apart by the first byte (QUIC always
//! sets the second-highest bit, STUN never does) and the magic cookie.

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, Software, XorMappedAddress};
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder};

pub use stun_codec::TransactionId;

/// The STUN magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Size of a STUN header.
pub const HEADER_LEN: usize = 20;
/// Largest STUN message burrow reads; longer datagrams are dropped unread.
pub const MAX_MESSAGE: usize = 548;

/// Why a datagram is not a STUN message burrow can use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StunError {
    /// Not STUN at all, or too long.
    #[error("not a STUN message")]
    NotStun,
    /// STUN, but malformed.
    #[error("malformed STUN message: {0}")]
    Malformed(String),
    /// A valid message of a kind burrow does not handle.
    #[error("unexpected STUN message (class {0})")]
    Unexpected(String),
    /// A Binding response without a mapped address.
    #[error("binding response carries no mapped address")]
    NoAddress,
}

/// Cheap check on a datagram's first bytes: could this be STUN (rather than QUIC)?
pub fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] & 0xc0 == 0 && datagram[4..8] == MAGIC_COOKIE
}

/// A Binding request with transaction id `tx`.
pub fn binding_request(tx: TransactionId) -> Vec<u8> {
    let mut msg = Message::<Attribute>::new(MessageClass::Request, BINDING, tx);
    if let Ok(sw) = Software::new("burrow".to_owned()) {
        msg.add_attribute(Attribute::Software(sw));
    }
    encode(msg)
}

/// The success response to request `tx`, telling the client it was seen at `observed`.
pub fn binding_response(tx: TransactionId, observed: SocketAddr) -> Vec<u8> {
    let mut msg = Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, tx);
    msg.add_attribute(Attribute::XorMappedAddress(XorMappedAddress::new(observed)));
    msg.add_attribute(Attribute::MappedAddress(MappedAddress::new(observed)));
    encode(msg)
}

fn encode(msg: Message<Attribute>) -> Vec<u8> {
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .expect("encoding a Binding message with valid attributes cannot fail")
}

fn decode(datagram: &[u8]) -> Result<Message<Attribute>, StunError> {
    if !looks_like_stun(datagram) || datagram.len() > MAX_MESSAGE {
        return Err(StunError::NotStun);
    }
    MessageDecoder::<Attribute>::new()
        .decode_from_bytes(datagram)
        .map_err(|e| StunError::Malformed(e.to_string()))?
        .map_err(|broken| StunError::Malformed(format!("{broken:?}")))
}

/// Reads a Binding request: its transaction id.
pub fn parse_request(datagram: &[u8]) -> Result<TransactionId, StunError> {
    let msg = decode(datagram)?;
    if msg.class() != MessageClass::Request || msg.method() != BINDING {
        return Err(StunError::Unexpected(format!("{:?}", msg.class())));
    }
    Ok(msg.transaction_id())
}

/// Reads a Binding success response: its transaction id and the mapped address.
pub fn parse_response(datagram: &[u8]) -> Result<(TransactionId, SocketAddr), StunError> {
    let msg = decode(datagram)?;
    if msg.class() != MessageClass::SuccessResponse || msg.method() != BINDING {
        return Err(StunError::Unexpected(format!("{:?}", msg.class())));
    }
    let addr = msg
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| msg.get_attribute::<MappedAddress>().map(|a| a.address()))
        .ok_or(StunError::NoAddress)?;
    Ok((msg.transaction_id(), addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_and_response_round_trip() {
        let tx = TransactionId::new([7; 12]);
        let req = binding_request(tx);
        assert!(looks_like_stun(&req));
        assert_eq!(parse_request(&req), Ok(tx));
        let seen: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let resp = binding_response(tx, seen);
        assert_eq!(parse_response(&resp), Ok((tx, seen)));
        assert!(parse_request(&resp).is_err());
        assert!(parse_response(&req).is_err());
    }

    #[test]
    fn quic_packets_are_not_stun() {
        let mut quic = vec![0xc3u8; 1200];
        quic[4..8].copy_from_slice(&MAGIC_COOKIE);
        assert!(!looks_like_stun(&quic));
        assert!(!looks_like_stun(&[0u8; 10]));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..600), as_stun in any::<bool>()) {
            if as_stun && bytes.len() >= HEADER_LEN {
                bytes[0] &= 0x3f;
                bytes[4..8].copy_from_slice(&MAGIC_COOKIE);
            }
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes);
        }

        #[test]
        fn any_address_round_trips(tx in any::<[u8; 12]>(), addr in any::<SocketAddr>()) {
            let tx = TransactionId::new(tx);
            // STUN carries no IPv6 flow info or scope id.
            let addr = SocketAddr::new(addr.ip(), addr.port());
            prop_assert_eq!(parse_response(&binding_response(tx, addr)), Ok((tx, addr)));
        }
    }
}
