//! Tunnels (ALPN [`ALPN`]): TCP and UDP to a service a peer exposes.
//!
//! The forwarding side opens one tunnel connection to the exposing side, and
//! on it one bidirectional stream per TCP connection or UDP flow. Each stream
//! starts with one frame each way; what follows depends on the transport:
//!
//! ```text
//! forwarder (bob)                              exposer (alice)
//!  |== open bidirectional stream ================>|
//!  |-- Open{service, Tcp} ----------------------->|  bob allowed? connect to the
//!  |-- bytes of the TCP connection (pipelined) -->|  exposed address, then
//!  |<------------------------------------ Opened -|
//!  |<============ bytes, both ways; FIN = half-close, RESET = reset ==========>|
//!
//!  |-- Open{service, Udp, flow} ----------------->|  a socket towards the exposed
//!  |<------------------------------------ Opened -|  address, for this flow
//!  |<~~ datagrams: varint(flow) ++ payload, both ways ~~>|
//!  |<-- Packet{data}, both ways, for payloads no datagram can carry -->|
//!  |-- FIN (the flow went idle) ----------------->|
//!
//!  |-- List -------------------------------------->|
//!  |<-------------------- Services{what bob may reach} -|
//! ```
//!
//! Refusals end the stream with [`TunnelFrame::Refused`], whose [`Refusal`]
//! says why in words the forwarding side shows its user. The exposing side
//! says "not exposed to you" for a service it has but doesn't offer to this
//! peer, as for one it doesn't have: a peer learns nothing by guessing names.
//! It dials only the address the service was exposed with: nothing in these
//! frames names an address.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// ALPN of tunnel connections.
pub const ALPN: &[u8] = b"burrow/tunnel/1";
/// Version byte of tunnel frames.
pub const VERSION: u8 = 1;
/// The largest UDP payload carried (IPv4's limit: 65 535 less the headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Largest tunnel frame: a [`TunnelFrame::Packet`] of the largest payload, or
/// a [`TunnelFrame::Services`] of [`MAX_SERVICES`].
pub const MAX_FRAME: usize = MAX_UDP_PAYLOAD + 64;
/// Most services one node exposes.
pub const MAX_SERVICES: usize = 64;
/// Most streams (TCP connections and UDP flows) one peer may have open to us
/// at once; the next open waits for QUIC's stream credit.
pub const MAX_STREAMS: u32 = 256;
/// Most UDP flows one peer may have open to us at once (and on one tunnel
/// connection).
pub const MAX_FLOWS: usize = 64;
/// A UDP flow that carried nothing either way for this long is closed (and
/// its client's next datagram opens a new one). Two minutes: conntrack's
/// default for an assured UDP flow, longer than any game's or VPN's keepalive.
pub const UDP_IDLE: Duration = Duration::from_secs(120);
/// QUIC stream error code for a TCP connection reset at either end.
pub const RESET: u32 = 1;
/// Largest flow id (a 30-bit varint).
pub const MAX_FLOW: u32 = (1 << 30) - 1;
/// Longest service name.
pub const MAX_SERVICE_NAME: usize = 32;

/// A service's name: 1 to [`MAX_SERVICE_NAME`] of `a-z`, `0-9`, `-`, `_`,
/// starting with a letter or digit (it is typed in `alice/web`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

/// Why a service name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a service name is 1 to {MAX_SERVICE_NAME} of a-z, 0-9, '-' and '_', starting with a letter or digit")]
pub struct ServiceNameError;

impl ServiceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = ServiceNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_SERVICE_NAME
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        ok.then(|| ServiceName(s.to_string()))
            .ok_or(ServiceNameError)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ServiceNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ServiceName> for String {
    fn from(n: ServiceName) -> String {
        n.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceName({})", self.0)
    }
}

/// What a service carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// TCP connections, one stream each.
    Tcp,
    /// UDP datagrams, in flows.
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// A service as a peer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offered {
    /// Its name.
    pub name: ServiceName,
    /// What it carries.
    pub transport: Transport,
}

/// Why a stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No such service for this peer (there is none by that name, or it isn't
    /// offered to this peer: the two are not told apart).
    NotExposed,
    /// The service carries the other transport.
    WrongTransport,
    /// Nothing answered at the exposed address.
    Unreachable,
    /// The peer has [`MAX_FLOWS`] flows open already.
    Busy,
}

impl Refusal {
    /// The refusal in words, as the forwarding side shows it: `peer` is the
    /// exposing side's name.
    pub fn explain(self, peer: &str, service: &ServiceName) -> String {
        match self {
            Refusal::NotExposed => format!("{peer} does not expose \"{service}\" to you"),
            Refusal::WrongTransport => {
                format!("{peer}'s \"{service}\" carries the other transport (tcp or udp)")
            }
            Refusal::Unreachable => {
                format!("nothing answers at {peer}'s \"{service}\" (its program isn't running?)")
            }
            Refusal::Busy => format!("{peer} has too many of our flows open"),
        }
    }
}

/// A frame on a tunnel stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelFrame {
    /// What may I reach?
    List,
    /// The services the asker may reach.
    Services {
        /// At most [`MAX_SERVICES`].
        offered: Vec<Offered>,
    },
    /// Open a connection (TCP) or a flow (UDP, with the opener's flow id, at
    /// most [`MAX_FLOW`]; 0 for TCP) to `service`.
    Open {
        /// The service.
        service: ServiceName,
        /// What the opener carries.
        transport: Transport,
        /// The flow's id in datagrams.
        flow: u32,
    },
    /// The target answered: bytes (or datagrams) follow.
    Opened,
    /// Not opened, and why. The stream ends.
    Refused {
        /// Why.
        why: Refusal,
    },
    /// A UDP payload on its flow's stream (one no datagram could carry).
    Packet {
        /// At most [`MAX_UDP_PAYLOAD`] bytes.
        data: Vec<u8>,
    },
}

/// A datagram on a flow: its id as a QUIC-style varint (1, 2 or 4 bytes),
/// then the payload.
pub fn encode_datagram(flow: u32, payload: &[u8]) -> Vec<u8> {
    debug_assert!(flow <= MAX_FLOW, "flow ids fit 30 bits");
    let mut out = Vec::with_capacity(payload.len() + 4);
    match flow {
        0..=0x3f => out.push(flow as u8),
        0x40..=0x3fff => out.extend_from_slice(&((flow as u16) | 0x4000).to_be_bytes()),
        _ => out.extend_from_slice(&((flow & MAX_FLOW) | 0x8000_0000).to_be_bytes()),
    }
    out.extend_from_slice(payload);
    out
}

/// Splits a datagram into its flow id and payload; `None` when it is too
/// short or uses the 8-byte form (never sent).
pub fn decode_datagram(buf: &[u8]) -> Option<(u32, &[u8])> {
    let first = *buf.first()?;
    let (len, flow) = match first >> 6 {
        0 => (1, u32::from(first)),
        1 => (
            2,
            u32::from(u16::from_be_bytes([first, *buf.get(1)?]) & 0x3fff),
        ),
        2 => {
            let b: [u8; 4] = buf.get(..4)?.try_into().ok()?;
            (4, u32::from_be_bytes(b) & MAX_FLOW)
        }
        _ => return None,
    };
    Some((flow, &buf[len..]))
}

/// Who may reach a service: the peers named, and the contacts if `contacts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allow {
    /// Peers allowed by key.
    pub peers: Vec<NodeId>,
    /// Everyone in the contacts list, as it is when they connect.
    pub contacts: bool,
}

impl Allow {
    /// Whether `peer` (a contact or not) may reach the service.
    pub fn admits(&self, peer: &NodeId, is_contact: bool) -> bool {
        (self.contacts && is_contact) || self.peers.contains(peer)
    }
}

/// How often refusals are logged and when they become abuse.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Refused opens within [`REFUSAL_WINDOW`] past which each one is a strike: a
/// person retrying a wrong name makes a few, a scanner many.
pub const REFUSALS_BEFORE_STRIKES: u32 = 30;
/// Peers remembered in [`Refusals`] at once.
const REFUSALS_KEPT: usize = 1024;

/// What to do about one refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Log it: the first refusal of this peer within a minute.
    pub log: bool,
    /// Count a strike: the peer is past [`REFUSALS_BEFORE_STRIKES`] in a minute.
    pub strike: bool,
}

/// Refusals per peer, to log each peer once a minute and to tell a flood
/// from a mistake. Sans-IO: the caller passes the time.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Per peer: when its window began, and its refusals in it.
    peers: HashMap<NodeId, (Instant, u32)>,
}

impl Refusals {
    /// Counts a refusal of `peer` at `now`.
    pub fn refused(&mut self, peer: NodeId, now: Instant) -> Verdict {
        if self.peers.len() >= REFUSALS_KEPT && !self.peers.contains_key(&peer) {
            self.peers
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < REFUSAL_WINDOW);
        }
        let (since, count) = self.peers.entry(peer).or_insert((now, 0));
        if now.saturating_duration_since(*since) >= REFUSAL_WINDOW {
            (*since, *count) = (now, 0);
        }
        *count += 1;
        Verdict {
            log: *count == 1,
            strike: *count > REFUSALS_BEFORE_STRIKES,
        }
    }
}

/// Encodes a tunnel frame.
pub fn encode(frame: &TunnelFrame) -> Result<Vec<u8>, crate::frame::EncodeError> {
    crate::frame::encode(VERSION, frame, MAX_FRAME)
}

/// Decodes a tunnel frame's body (after the length prefix).
pub fn decode(body: &[u8]) -> Result<TunnelFrame, crate::DecodeError> {
    crate::frame::decode_body(VERSION, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        crate::SecretKey::from_bytes(&[n; 32]).public()
    }

    #[test]
    fn service_names_are_short_lowercase_words() {
        for good in ["ssh", "web", "game-1", "a_b", "9p"] {
            assert!(good.parse::<ServiceName>().is_ok(), "{good}");
        }
        for bad in ["", "Web", "-x", "a/b", "a b", "ä", &"x".repeat(33)] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad:?}");
        }
        // A peer can't smuggle a bad name past the decoder: the same frame
        // with the name as a plain string decodes only when the name is good.
        #[derive(Serialize)]
        #[allow(dead_code)]
        enum Raw {
            List,
            Services {
                offered: Vec<Offered>,
            },
            Open {
                service: String,
                transport: Transport,
                flow: u32,
            },
        }
        let raw = |name: &str| {
            let open = Raw::Open {
                service: name.into(),
                transport: Transport::Tcp,
                flow: 0,
            };
            let bytes = crate::frame::encode(VERSION, &open, MAX_FRAME).unwrap();
            decode(&bytes[crate::frame::LEN_PREFIX..])
        };
        assert!(matches!(raw("web"), Ok(TunnelFrame::Open { .. })));
        assert!(raw("../etc").is_err());
    }

    #[test]
    fn frames_round_trip() {
        let frames = [
            TunnelFrame::List,
            TunnelFrame::Services {
                offered: vec![Offered {
                    name: "web".parse().unwrap(),
                    transport: Transport::Tcp,
                }],
            },
            TunnelFrame::Open {
                service: "game".parse().unwrap(),
                transport: Transport::Udp,
                flow: 70_000,
            },
            TunnelFrame::Opened,
            TunnelFrame::Refused {
                why: Refusal::NotExposed,
            },
            TunnelFrame::Packet {
                data: vec![7; MAX_UDP_PAYLOAD],
            },
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            assert_eq!(decode(&bytes[crate::frame::LEN_PREFIX..]).unwrap(), f);
        }
    }

    #[test]
    fn datagram_flow_ids_take_one_two_or_four_bytes() {
        for (flow, len) in [
            (0, 1),
            (63, 1),
            (64, 2),
            (16_383, 2),
            (16_384, 4),
            (MAX_FLOW, 4),
        ] {
            let d = encode_datagram(flow, b"hi");
            assert_eq!(d.len(), len + 2, "flow {flow}");
            assert_eq!(decode_datagram(&d), Some((flow, &b"hi"[..])));
        }
        assert_eq!(decode_datagram(&[]), None);
        assert_eq!(decode_datagram(&[0x40]), None, "a 2-byte id cut short");
        assert_eq!(decode_datagram(&[0x80, 0, 1]), None);
        assert_eq!(decode_datagram(&[0xc0; 9]), None, "8-byte ids aren't used");
        assert_eq!(
            decode_datagram(&[5]),
            Some((5, &[][..])),
            "an empty payload"
        );
    }

    #[test]
    fn allow_admits_named_peers_and_contacts_when_asked() {
        let named = Allow {
            peers: vec![id(1)],
            contacts: false,
        };
        assert!(named.admits(&id(1), false));
        assert!(
            !named.admits(&id(2), true),
            "a contact, but contacts aren't allowed"
        );
        let contacts = Allow {
            peers: vec![],
            contacts: true,
        };
        assert!(contacts.admits(&id(2), true));
        assert!(!contacts.admits(&id(2), false));
        assert!(!Allow::default().admits(&id(1), true), "nobody");
    }

    #[test]
    fn refusals_log_once_a_minute_and_strike_a_flood() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let first = r.refused(id(1), t0);
        assert_eq!(
            first,
            Verdict {
                log: true,
                strike: false
            }
        );
        let mut strikes = 0;
        for i in 1..40u64 {
            let v = r.refused(id(1), t0 + Duration::from_millis(i * 100));
            assert!(!v.log, "logged once within the minute");
            strikes += u32::from(v.strike);
        }
        assert_eq!(
            strikes,
            40 - REFUSALS_BEFORE_STRIKES,
            "past the allowance, each is a strike"
        );
        assert!(
            r.refused(id(2), t0).log,
            "another peer is logged on its own"
        );
        let later = r.refused(id(1), t0 + Duration::from_secs(61));
        assert!(later.log && !later.strike, "a new minute starts afresh");
    }

    #[test]
    fn refusals_stay_bounded() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        for n in 0..(REFUSALS_KEPT as u32 + 10) {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.to_be_bytes());
            let peer = crate::SecretKey::from_bytes(&b).public();
            r.refused(
                peer,
                t0 + Duration::from_secs(u64::from(n) * 61 / REFUSALS_KEPT as u64),
            );
        }
        assert!(r.peers.len() <= REFUSALS_KEPT + 1, "{}", r.peers.len());
    }
}
