//! NAT diagnosis (RFC 5780 style), from the node's one UDP socket, against the
//! server's STUN grid.
//!
//! Filtering is tested first, while only the server's main address has been sent
//! to: an answer from the other address and port gets through only an
//! endpoint-independent filter; one from the other port only, an
//! address-dependent one. Mapping is tested next: the public address seen at the
//! main address, at the other address, and at the other address's other port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use burrow_net::Endpoint;
use burrow_proto::punch::Mapping;
use burrow_proto::rendezvous::ClientMsg;
use burrow_proto::stun::Change;

use crate::error::NatError;
use crate::link::Inner;
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
    /// How new public ports are chosen, in words: `preserved` (one port for
    /// every destination), `sequential (step N)`, `random` or `unknown`.
    pub ports: String,
    /// The protocol our router granted a port mapping with (`pcp`, `nat_pmp`,
    /// `upnp`), if any.
    pub port_mapping: Option<burrow_net::portmap::PortMapProtocol>,
    /// The public address of that mapping.
    pub mapped_addr: Option<SocketAddr>,
    /// The server's other address and port used for the tests, if any.
    pub server_other: Option<SocketAddr>,
    /// How many router hops from us our NATs reach (1 behind a home router, 2
    /// with a carrier NAT behind it), from the ICMP answers of the hops toward
    /// the server; `None` when no hop answered. Opening probes go one hop
    /// further.
    #[serde(default)]
    pub nat_hops: Option<u8>,
    /// The verdict, in plain words.
    pub summary: String,
    /// The other address family than the tests above (IPv6 when those ran
    /// over IPv4): where the server's STUN sees us there, or why nothing.
    #[serde(default)]
    pub other_family: Option<FamilyReport>,
}

/// What `burrow nat` knows of the address family the full tests didn't run
/// in (the server has RFC 5780's alternates in one family only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FamilyReport {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// Our address there as the server sees it; `None`: no answer (no route
    /// in that family, or a network that drops it).
    pub public_addr: Option<SocketAddr>,
    /// Whether that differs from every address of our own (a NAT, e.g. NAT66).
    pub behind_nat: bool,
    /// In plain words.
    pub summary: String,
}

/// Asks the server's STUN at `servers` (its addresses in one family) where
/// we appear there; `own` are our own addresses.
pub async fn other_family(
    ep: &Endpoint,
    servers: &[SocketAddr],
    own: &[SocketAddr],
) -> Option<FamilyReport> {
    let first = servers.first()?;
    let family = if first.is_ipv4() { "ipv4" } else { "ipv6" };
    let name = if first.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut seen = None;
    for server in servers {
        if let Ok(r) = ep.stun(*server, Duration::from_secs(2)).await {
            seen = Some(burrow_net::paths::canonical(r));
            break;
        }
    }
    let behind_nat = seen.is_some_and(|a| !own.iter().any(|o| o.ip() == a.ip()));
    let summary = match seen {
        None => format!("No {name} path to the server (this network has no {name} route, or drops it): peers are reached over the other family."),
        Some(a) if behind_nat => format!("Over {name} the internet sees you at {a}, behind a NAT."),
        Some(a) => format!("Over {name} you are at {a}, with no NAT: a firewall may still drop what you didn't ask for, and punching opens it as it opens a NAT."),
    };
    Some(FamilyReport {
        family: family.into(),
        public_addr: seen,
        behind_nat,
        summary,
    })
}

/// Runs the tests against the server at `server` (its main address).
pub async fn diagnose(
    ep: &Endpoint,
    server: SocketAddr,
    own: &[SocketAddr],
) -> Result<NatReport, NatError> {
    let first = ep
        .stun_query(server, Change::default(), TEST_DEADLINE)
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
    let filtering = filtering(ep, server, other, other_ip).await;
    let mapping = mapping_behaviour(ep, server, public, other, other_ip).await;
    let behind_nat = !own.contains(&public);
    let ports = self::mapping(ep, server)
        .await
        .map_or(Mapping::Unknown, |(_, m)| m);
    // After the port measurement: on a sequential NAT its one flow takes a port.
    let probe = burrow_net::ttl::HopProbe::send(server);
    let nat_hops = tokio::task::spawn_blocking(move || probe.collect(HOPS_WAIT))
        .await
        .ok()
        .flatten()
        .filter(|_| behind_nat);
    Ok(NatReport {
        public_addr: public,
        behind_nat,
        mapping,
        filtering,
        ports: ports_words(ports),
        port_mapping: None,
        mapped_addr: None,
        server_other: other,
        nat_hops,
        summary: summary(behind_nat, public, mapping, filtering, ports),
        other_family: None,
    })
}

/// How our NAT filters: whether answers from the server's other address and
/// port, or its other port, come through (RFC 5780, section 4.4).
async fn filtering(
    ep: &Endpoint,
    server: SocketAddr,
    other: Option<SocketAddr>,
    other_ip: Option<IpAddr>,
) -> Behaviour {
    let query = |ip, port| ep.stun_query(server, Change { ip, port }, TEST_DEADLINE);
    // An answer counts only if it really came from where we asked.
    let changed = |resp: Result<burrow_proto::stun::Response, _>, expect: SocketAddr| {
        resp.ok()
            .is_some_and(|r| r.origin.is_none_or(|o| o == expect))
    };
    match (other, other_ip) {
        (Some(o), Some(_)) => {
            if changed(query(true, true).await, o) {
                Behaviour::EndpointIndependent
            } else if changed(
                query(false, true).await,
                SocketAddr::new(server.ip(), o.port()),
            ) {
                Behaviour::AddressDependent
            } else {
                Behaviour::AddressAndPortDependent
            }
        }
        (Some(o), None) => {
            if changed(
                query(false, true).await,
                SocketAddr::new(server.ip(), o.port()),
            ) {
                Behaviour::AtMostAddressDependent
            } else {
                Behaviour::AddressAndPortDependent
            }
        }
        (None, _) => Behaviour::Unknown,
    }
}

/// How our NAT maps: whether the server's other address and port see the
/// `public` mapping the main one saw (RFC 5780, section 4.3).
async fn mapping_behaviour(
    ep: &Endpoint,
    server: SocketAddr,
    public: SocketAddr,
    other: Option<SocketAddr>,
    other_ip: Option<IpAddr>,
) -> Behaviour {
    let mapped = |to| async move {
        ep.stun_query(to, Change::default(), TEST_DEADLINE)
            .await
            .ok()
            .map(|r| r.mapped)
    };
    match (other, other_ip) {
        (Some(o), Some(ip)) => {
            let m2 = mapped(SocketAddr::new(ip, server.port())).await;
            let m3 = mapped(SocketAddr::new(ip, o.port())).await;
            match (m2, m3) {
                (Some(m2), _) if m2 == public => Behaviour::EndpointIndependent,
                (Some(m2), Some(m3)) if m3 == m2 => Behaviour::AddressDependent,
                (Some(_), Some(_)) => Behaviour::AddressAndPortDependent,
                _ => Behaviour::Unknown,
            }
        }
        (Some(o), None) => match mapped(SocketAddr::new(server.ip(), o.port())).await {
            Some(m) if m == public => Behaviour::EndpointIndependent,
            Some(_) => Behaviour::AddressAndPortDependent,
            None => Behaviour::Unknown,
        },
        (None, _) => Behaviour::Unknown,
    }
}

fn ports_words(m: Mapping) -> String {
    match m {
        Mapping::Unknown => "unknown".into(),
        Mapping::Independent => "preserved".into(),
        Mapping::Sequential { step, .. } => format!("sequential (step {step})"),
        Mapping::Random => "random".into(),
    }
}

fn summary(
    behind_nat: bool,
    public: SocketAddr,
    mapping: Behaviour,
    filtering: Behaviour,
    ports: Mapping,
) -> String {
    let place = if behind_nat {
        format!("You are behind a NAT; the internet sees you at {public}.")
    } else {
        format!("No NAT: your address {public} is reachable as it is.")
    };
    let map = match mapping {
        Behaviour::EndpointIndependent => {
            "It keeps the same public port whatever you send to (easy to punch through)."
                .to_string()
        }
        Behaviour::Unknown => {
            "Whether it keeps the same public port could not be tested.".to_string()
        }
        m => {
            let how = match ports {
                Mapping::Sequential { .. } => "Its ports come one after the other: a peer with an easier NAT predicts the next one and connects directly; with another hard NAT, the relay carries the connection.",
                Mapping::Random => "Its ports are random: a peer with an easier NAT still connects directly by birthday probing (256 extra sockets here, random ports there); with another hard NAT, the relay carries the connection.",
                _ => "Direct connections need a peer with an easier NAT, otherwise the relay.",
            };
            format!(
                "It picks a new public port per destination ({}): a 'symmetric' NAT, the hard kind. {how}",
                m.words()
            )
        }
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

/// How long the NAT depth measurement waits for the hops' answers.
pub(crate) const HOPS_WAIT: Duration = Duration::from_millis(500);

/// How long the mapping measurement waits for each answer.
const MAPPING_DEADLINE: Duration = Duration::from_secs(2);

/// Measures how our NAT maps ports: our public address as the server's main
/// port P sees it (the mapping our server connection already made), then as
/// its measurement port P+2 sees it (a new destination, so a new mapping on a
/// NAT whose mapping depends on it; see `burrow_net::stun_server`). Returns
/// the first address and the mapping; `None` when the main port did not answer.
pub async fn mapping(ep: &Endpoint, server: SocketAddr) -> Option<(SocketAddr, Mapping)> {
    let first = ep
        .stun_query(server, Change::default(), MAPPING_DEADLINE)
        .await
        .ok()?
        .mapped;
    let next = server
        .port()
        .checked_add(2)
        .map(|p| SocketAddr::new(server.ip(), p))?;
    let mapping = match ep
        .stun_query(next, Change::default(), MAPPING_DEADLINE)
        .await
    {
        Ok(r) if r.mapped.ip() == first.ip() => Mapping::from_ports(first.port(), r.mapped.port()),
        // Another public address per destination: ports can't be predicted.
        Ok(_) => Mapping::Random,
        Err(_) => Mapping::Unknown,
    };
    Some((first, mapping))
}

/// Measures our mapping again in the background (a sequential NAT's ports
/// move on with every punch) and tells the server when it changed. The first
/// measurement is made while the session connects (`session::connect`).
pub(crate) fn refresh_mapping(inner: &Arc<Inner>) {
    let Some(server) = inner.state().server_addr else {
        return;
    };
    if burrow_net::tcp::is_link(server) {
        return; // no UDP mapping to measure: UDP is what failed
    }
    let inner2 = inner.clone();
    inner.spawn(async move {
        let Some((_, mapping)) = mapping(&inner2.endpoint, server).await else {
            return;
        };
        let mut st = inner2.state();
        if st.mapping != mapping {
            st.mapping = mapping;
            tracing::debug!(?mapping, "our NAT's mapping");
            report(&st);
        }
    });
}

/// Tells the server what we know of our NAT now (its mapping, our port mapping).
pub(crate) fn report(st: &crate::state::State) {
    if let Some(tx) = &st.server_tx {
        let _ = tx.try_send(ClientMsg::Nat { nat: st.nat_info() });
    }
}
