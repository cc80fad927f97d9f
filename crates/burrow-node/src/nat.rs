//! NAT diagnosis (RFC 5780 style), from the node's one UDP socket, against the
//! server's STUN grid.
//!
//! Filtering is tested first, while only the server's main address has been sent
//! to: an answer from the other address and port gets through only an
//! endpoint-independent filter; one from the other port only, an
//! address-dependent one. Mapping is tested next: the public address seen at the
//! main address, at the other address, and at the other address's other port.

use std::net::SocketAddr;
use std::time::Duration;

use burrow_net::Endpoint;
use burrow_proto::stun::Change;
use serde::{Deserialize, Serialize};

/// How long one test waits for its answer. A missing answer is the result of a
/// filtering test, so this bounds how long `burrow nat` takes (about 4 s at most).
const TEST_DEADLINE: Duration = Duration::from_millis(1500);

/// Mapping or filtering behaviour, in RFC 4787's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// The same for every remote address and port.
    EndpointIndependent,
    /// Depends on the remote address only.
    AddressDependent,
    /// Depends on the remote address and port.
    AddressAndPortDependent,
    /// Endpoint-independent or address-dependent: the server has one address, so
    /// the two can't be told apart.
    AtMostAddressDependent,
    /// The server gave no way to tell (no alternate address or port).
    Unknown,
}

impl Behaviour {
    fn words(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::AtMostAddressDependent => "endpoint-independent or address-dependent",
            Behaviour::Unknown => "unknown",
        }
    }
}

/// What `burrow nat` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatReport {
    /// Our address as the server sees it.
    pub public_addr: SocketAddr,
    /// Whether that differs from every address of our own (a NAT is in the way).
    pub behind_nat: bool,
    /// Whether the public port depends on where we send.
    pub mapping: Behaviour,
    /// Who may send to our public address.
    pub filtering: Behaviour,
    /// The server's other address and port used for the tests, if any.
    pub server_other: Option<SocketAddr>,
    /// The verdict, in plain words.
    pub summary: String,
}

/// Why the diagnosis could not run.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The server's main STUN address did not answer.
    #[error("the server did not answer STUN at {0}")]
    NoAnswer(SocketAddr),
}

/// Runs the tests against the server at `server` (its main address).
pub async fn diagnose(
    ep: &Endpoint,
    server: SocketAddr,
    own: &[SocketAddr],
) -> Result<NatReport, NatError> {
    let query = |to, ip, port| ep.stun_query(to, Change { ip, port }, TEST_DEADLINE);
    let first = query(server, false, false)
        .await
        .map_err(|_| NatError::NoAnswer(server))?;
    let public = first.mapped;
    // A server with one address advertises no OTHER-ADDRESS but answers on the
    // next port too (burrow's convention); a full RFC 5780 server names both.
    let other = first.other.or_else(|| {
        server
            .port()
            .checked_add(1)
            .map(|p| SocketAddr::new(server.ip(), p))
    });
    let other_ip = first.other.map(|o| o.ip()).filter(|ip| *ip != server.ip());

    // An answer counts only if it really came from where we asked.
    let changed = |resp: Result<burrow_proto::stun::Response, _>, expect: SocketAddr| {
        resp.ok()
            .is_some_and(|r| r.origin.is_none_or(|o| o == expect))
    };
    let filtering = match (other, other_ip) {
        (Some(o), Some(_)) => {
            if changed(query(server, true, true).await, o) {
                Behaviour::EndpointIndependent
            } else if changed(
                query(server, false, true).await,
                SocketAddr::new(server.ip(), o.port()),
            ) {
                Behaviour::AddressDependent
            } else {
                Behaviour::AddressAndPortDependent
            }
        }
        (Some(o), None) => {
            if changed(
                query(server, false, true).await,
                SocketAddr::new(server.ip(), o.port()),
            ) {
                Behaviour::AtMostAddressDependent
            } else {
                Behaviour::AddressAndPortDependent
            }
        }
        (None, _) => Behaviour::Unknown,
    };

    let mapping = match (other, other_ip) {
        (Some(o), Some(ip)) => {
            let m2 = query(SocketAddr::new(ip, server.port()), false, false)
                .await
                .ok()
                .map(|r| r.mapped);
            let m3 = query(SocketAddr::new(ip, o.port()), false, false)
                .await
                .ok()
                .map(|r| r.mapped);
            match (m2, m3) {
                (Some(m2), _) if m2 == public => Behaviour::EndpointIndependent,
                (Some(m2), Some(m3)) if m3 == m2 => Behaviour::AddressDependent,
                (Some(_), Some(_)) => Behaviour::AddressAndPortDependent,
                _ => Behaviour::Unknown,
            }
        }
        (Some(o), None) => {
            match query(SocketAddr::new(server.ip(), o.port()), false, false).await {
                Ok(r) if r.mapped == public => Behaviour::EndpointIndependent,
                Ok(_) => Behaviour::AddressAndPortDependent,
                Err(_) => Behaviour::Unknown,
            }
        }
        (None, _) => Behaviour::Unknown,
    };

    let behind_nat = !own.contains(&public);
    Ok(NatReport {
        public_addr: public,
        behind_nat,
        mapping,
        filtering,
        server_other: other,
        summary: summary(behind_nat, public, mapping, filtering),
    })
}

fn summary(
    behind_nat: bool,
    public: SocketAddr,
    mapping: Behaviour,
    filtering: Behaviour,
) -> String {
    let place = if behind_nat {
        format!("You are behind a NAT; the internet sees you at {public}.")
    } else {
        format!("No NAT: your address {public} is reachable as it is.")
    };
    let map = match mapping {
        Behaviour::EndpointIndependent => "It keeps the same public port whatever you send to (easy to punch through).".to_string(),
        Behaviour::Unknown => "Whether it keeps the same public port could not be tested.".to_string(),
        m => format!(
            "It picks a new public port per destination ({}): a 'symmetric' NAT, the hard kind; direct connections need a peer with an easier NAT, otherwise the relay.",
            m.words()
        ),
    };
    let filter = match filtering {
        Behaviour::EndpointIndependent => "Anyone can send to that port once it is open (full cone).".to_string(),
        Behaviour::Unknown => "Its filtering could not be tested.".to_string(),
        f => format!(
            "Only hosts you have sent to get through ({} filtering): peers reach you by hole punching.",
            f.words()
        ),
    };
    match (behind_nat, filtering) {
        (true, _) => format!("{place} {map} {filter}"),
        (false, Behaviour::EndpointIndependent) => format!("{place} Nothing filters incoming UDP."),
        (false, _) => format!("{place} A firewall lets in only hosts you have sent to: peers reach you by hole punching."),
    }
}
