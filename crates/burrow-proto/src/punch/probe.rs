//! The probe datagram: `MAGIC | kind<<4 | role | session id | nonce | tag`, the
//! tag a BLAKE3 MAC keyed with the session secret over everything before it.

use super::{Kind, PunchTicket, Role, DATAGRAM_LEN, MAGIC};

/// The session id of a punch datagram, if `data` is one (checked before routing).
pub fn session_of(data: &[u8]) -> Option<[u8; 16]> {
    if data.len() != DATAGRAM_LEN || data[..4] != MAGIC {
        return None;
    }
    data[5..21].try_into().ok()
}

fn tag(ticket: &PunchTicket, body: &[u8]) -> [u8; 16] {
    let full = blake3::keyed_hash(&ticket.secret, body);
    full.as_bytes()[..16]
        .try_into()
        .expect("a BLAKE3 hash has 32 bytes")
}

pub(super) fn encode(ticket: &PunchTicket, kind: Kind, role: Role, nonce: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(DATAGRAM_LEN);
    d.extend_from_slice(&MAGIC);
    d.push((kind as u8) << 4 | role.byte());
    d.extend_from_slice(&ticket.session);
    d.extend_from_slice(&nonce.to_be_bytes());
    let t = tag(ticket, &d);
    d.extend_from_slice(&t);
    d
}

pub(super) fn decode(ticket: &PunchTicket, data: &[u8]) -> Option<(Kind, Role, u64)> {
    if session_of(data)? != ticket.session {
        return None;
    }
    let (body, t) = data.split_at(DATAGRAM_LEN - 16);
    // Constant-time comparison: the tag is a MAC.
    if !constant_time_eq(&tag(ticket, body), t) {
        return None;
    }
    let kind = match body[4] >> 4 {
        1 => Kind::Probe,
        2 => Kind::Ack,
        _ => return None,
    };
    let role = match body[4] & 0x0f {
        1 => Role::Requester,
        2 => Role::Acceptor,
        _ => return None,
    };
    let nonce = u64::from_be_bytes(body[21..29].try_into().ok()?);
    Some((kind, role, nonce))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What each side of a TCP simultaneous open sends first on the new stream:
/// proof that it holds this punch's secret, for its role. The stream carries
/// the link's QUIC packets only after both proofs check out, so a stranger
/// who connects to our port can't pose as the peer.
pub fn stream_proof(ticket: &PunchTicket, role: Role) -> [u8; 32] {
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(b"burrow tcp punch");
    body.extend_from_slice(&ticket.session);
    body.push(role.byte());
    *blake3::keyed_hash(&ticket.secret, &body).as_bytes()
}

/// Whether `proof` is [`stream_proof`] for `ticket` and the sender's `role`.
pub fn check_stream_proof(ticket: &PunchTicket, role: Role, proof: &[u8]) -> bool {
    constant_time_eq(&stream_proof(ticket, role), proof)
}
