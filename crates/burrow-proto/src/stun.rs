//! STUN Binding (RFC 8489) on top of `stun_codec`: just what burrow needs.
//!
//! A node learns its public address by sending a Binding request to the server's
//! QUIC port from its one UDP socket; the server answers with the source address it
//! saw in XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS, for RFC 3489 clients). STUN and QUIC
//! share the port: [`looks_like_stun`] tells them apart by the first byte (STUN clears
//! the top two bits; burrow's QUIC always sets the fixed bit) and the magic cookie.
//!
//! For NAT diagnosis (RFC 5780) a request may carry CHANGE-REQUEST (answer me from
//! your other address and/or port), and a response carries OTHER-ADDRESS (where the
//! server's other address and port are) and RESPONSE-ORIGIN (where it was sent from).

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, Software, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress, ResponseOrigin};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder};

// The attributes burrow reads; any others are kept raw. CHANGE-REQUEST is read from
// its raw bytes: stun_codec 0.4.0 decodes its flags from the wrong bits (0x2 and
// 0x1 where RFC 5780 §7.2 puts them at 0x4 and 0x2); its encoder is right.
stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        Software,
        OtherAddress,
        ResponseOrigin
    ]
);

// What burrow writes in requests.
stun_codec::define_attribute_enums!(
    RequestAttribute,
    RequestAttributeDecoder,
    RequestAttributeEncoder,
    [Software, ChangeRequest]
);

/// CHANGE-REQUEST's attribute type (RFC 5780 §7.2).
const CHANGE_REQUEST: u16 = 0x0003;
/// RESPONSE-PORT's attribute type (RFC 5780 §7.5): a port, then two padding bytes.
const RESPONSE_PORT: u16 = 0x0027;
/// Its "change IP" flag.
const CHANGE_IP: u32 = 0x4;
/// Its "change port" flag.
const CHANGE_PORT: u32 = 0x2;

/// What a request asks the server to change when it answers (RFC 5780 §7.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Answer from the other IP address.
    pub ip: bool,
    /// Answer from the other port.
    pub port: bool,
}

/// A Binding request as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Transaction id, echoed in the answer.
    pub tx: TransactionId,
    /// Where the client wants the answer to come from.
    pub change: Change,
    /// RESPONSE-PORT (RFC 5780 §7.5): answer to this port of the client's IP
    /// instead of the request's source port.
    pub response_port: Option<u16>,
    /// The request's length in bytes: a server answers a stranger in full
    /// only when the request is at least as large as the answer
    /// ([`MAX_ANSWER`]), so a spoofed request gains an attacker nothing.
    pub size: usize,
}

/// The largest answer [`binding_response`] makes (IPv6 addresses in all four
/// attributes).
pub const MAX_ANSWER: usize = 20 + 4 * (4 + 20);

/// A Binding success response as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Transaction id of the request.
    pub tx: TransactionId,
    /// The client's address as the server saw it.
    pub mapped: SocketAddr,
    /// The server's other address and port, if it has them. An unspecified IP
    /// means "the same IP, the other port" (a server with one address).
    pub other: Option<SocketAddr>,
    /// The address the response was sent from, when the server knows it.
    pub origin: Option<SocketAddr>,
}

pub use stun_codec::TransactionId;

/// The STUN magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Size of a STUN header.
pub const HEADER_LEN: usize = 20;
/// Largest STUN message burrow reads; longer datagrams are dropped unread. RFC 5780
/// clients pad requests with 1500 bytes (PADDING) to test fragmentation, so that
/// must fit. Answers stay small and carry no padding, so they never amplify.
pub const MAX_MESSAGE: usize = 2048;

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
    binding_request_with(tx, Change::default())
}

/// A Binding request asking for the answer from another address and/or port.
pub fn binding_request_with(tx: TransactionId, change: Change) -> Vec<u8> {
    let mut msg = Message::<RequestAttribute>::new(MessageClass::Request, BINDING, tx);
    if let Ok(sw) = Software::new("burrow".to_owned()) {
        msg.add_attribute(RequestAttribute::Software(sw));
    }
    if change != Change::default() {
        msg.add_attribute(RequestAttribute::ChangeRequest(ChangeRequest::new(
            change.ip,
            change.port,
        )));
    }
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .expect("encoding a Binding request with valid attributes cannot fail")
}

/// The success response to request `tx`, telling the client it was seen at
/// `observed`; `origin` is where it is sent from and `other` the server's other
/// address, when known.
pub fn binding_response(
    tx: TransactionId,
    observed: SocketAddr,
    origin: Option<SocketAddr>,
    other: Option<SocketAddr>,
) -> Vec<u8> {
    let mut msg = Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, tx);
    msg.add_attribute(Attribute::XorMappedAddress(XorMappedAddress::new(observed)));
    msg.add_attribute(Attribute::MappedAddress(MappedAddress::new(observed)));
    if let Some(o) = origin {
        msg.add_attribute(Attribute::ResponseOrigin(ResponseOrigin::new(o)));
    }
    if let Some(o) = other {
        msg.add_attribute(Attribute::OtherAddress(OtherAddress::new(o)));
    }
    encode(msg)
}

/// The least answer to request `tx`: only XOR-MAPPED-ADDRESS (32 bytes for
/// IPv4, 44 for IPv6), what a plain Binding request from a stranger gets.
pub fn plain_response(tx: TransactionId, observed: SocketAddr) -> Vec<u8> {
    let mut msg = Message::<Attribute>::new(MessageClass::SuccessResponse, BINDING, tx);
    msg.add_attribute(Attribute::XorMappedAddress(XorMappedAddress::new(observed)));
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

/// Reads a Binding request.
pub fn parse_request(datagram: &[u8]) -> Result<Request, StunError> {
    let msg = decode(datagram)?;
    if msg.class() != MessageClass::Request || msg.method() != BINDING {
        return Err(StunError::Unexpected(format!("{:?}", msg.class())));
    }
    let raw = |kind: u16| {
        msg.unknown_attributes()
            .find(|a| stun_codec::Attribute::get_type(*a).as_u16() == kind)
            .and_then(|a| <[u8; 4]>::try_from(a.value()).ok())
    };
    let response_port = raw(RESPONSE_PORT)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .filter(|p| *p != 0);
    let change = raw(CHANGE_REQUEST)
        .map(|v| {
            let v = u32::from_be_bytes(v);
            Change {
                ip: v & CHANGE_IP != 0,
                port: v & CHANGE_PORT != 0,
            }
        })
        .unwrap_or_default();
    Ok(Request {
        tx: msg.transaction_id(),
        change,
        response_port,
        size: datagram.len(),
    })
}

/// Reads a Binding success response.
pub fn parse_response(datagram: &[u8]) -> Result<Response, StunError> {
    let msg = decode(datagram)?;
    if msg.class() != MessageClass::SuccessResponse || msg.method() != BINDING {
        return Err(StunError::Unexpected(format!("{:?}", msg.class())));
    }
    let addr = msg
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| msg.get_attribute::<MappedAddress>().map(|a| a.address()))
        .ok_or(StunError::NoAddress)?;
    Ok(Response {
        tx: msg.transaction_id(),
        mapped: addr,
        other: msg.get_attribute::<OtherAddress>().map(|a| a.address()),
        origin: msg.get_attribute::<ResponseOrigin>().map(|a| a.address()),
    })
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
        assert_eq!(
            parse_request(&req),
            Ok(Request {
                tx,
                change: Change::default(),
                response_port: None,
                size: req.len(),
            })
        );
        let change = Change {
            ip: true,
            port: false,
        };
        assert_eq!(
            parse_request(&binding_request_with(tx, change))
                .unwrap()
                .change,
            change
        );
        let seen: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let origin: SocketAddr = "198.51.100.1:7700".parse().unwrap();
        let other: SocketAddr = "198.51.100.2:7701".parse().unwrap();
        let resp = binding_response(tx, seen, Some(origin), Some(other));
        assert_eq!(
            parse_response(&resp),
            Ok(Response {
                tx,
                mapped: seen,
                other: Some(other),
                origin: Some(origin)
            })
        );
        assert!(parse_request(&resp).is_err());
        assert!(parse_response(&req).is_err());
    }

    #[test]
    fn change_request_flags_sit_where_rfc_5780_puts_them() {
        let req = binding_request_with(
            TransactionId::new([1; 12]),
            Change {
                ip: true,
                port: false,
            },
        );
        // Header, SOFTWARE ("burrow": 4 + 8 bytes), then CHANGE-REQUEST.
        let attr = &req[HEADER_LEN + 12..];
        assert_eq!(&attr[..4], &[0x00, 0x03, 0x00, 0x04]);
        assert_eq!(
            u32::from_be_bytes(attr[4..8].try_into().unwrap()),
            CHANGE_IP
        );
        let port_only = binding_request_with(
            TransactionId::new([1; 12]),
            Change {
                ip: false,
                port: true,
            },
        );
        assert_eq!(
            parse_request(&port_only).unwrap().change,
            Change {
                ip: false,
                port: true
            }
        );
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
            let r = parse_response(&binding_response(tx, addr, None, None)).unwrap();
            prop_assert_eq!((r.tx, r.mapped, r.other, r.origin), (tx, addr, None, None));
        }
    }

    #[test]
    fn answers_stay_within_their_bounds() {
        let tx = TransactionId::new([3; 12]);
        let v6: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
        let full = binding_response(tx, v6, Some(v6), Some(v6));
        assert_eq!(full.len(), MAX_ANSWER);
        let plain = plain_response(tx, v6);
        assert_eq!(plain.len(), 44);
        assert_eq!(parse_response(&plain).unwrap().mapped, v6);
        let v4: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        assert_eq!(plain_response(tx, v4).len(), 32);
    }
}
