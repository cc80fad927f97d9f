//! Port mapping: asking the router in front of us to forward a public port to
//! our UDP socket, with whichever protocol it speaks: PCP (RFC 6887), NAT-PMP
//! (RFC 6886), both through `crab_nat`, or UPnP IGD through `igd-next`.
//!
//! A mapped port is a candidate address like any other; its worth is that it
//! gets through whatever the router's NAT does to ordinary traffic (a
//! symmetric NAT included), so a peer reaches us even when neither hole
//! punching nor birthday probing can. Mappings are leased: [`PortMap::renew`]
//! before half the lease has passed, [`PortMap::remove`] on the way out.
//!
//! The attempts are quick and quiet: a router that speaks none of the three
//! costs about three seconds once, and nothing is sent beyond the gateway and
//! the LAN's SSDP multicast group.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::num::NonZeroU16;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The protocol a mapping was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMapProtocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device.
    Upnp,
}

impl fmt::Display for PortMapProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortMapProtocol::Pcp => "PCP",
            PortMapProtocol::NatPmp => "NAT-PMP",
            PortMapProtocol::Upnp => "UPnP",
        })
    }
}

/// Why no mapping was made.
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    /// No IPv4 default gateway to ask.
    #[error("no IPv4 default route, so no router to ask")]
    NoGateway,
    /// The router answered none of the protocols (or refused).
    #[error("the router at {gateway} granted no mapping (PCP/NAT-PMP: {pmp}; UPnP: {upnp})")]
    Refused {
        /// The router asked.
        gateway: Ipv4Addr,
        /// What PCP and NAT-PMP said.
        pmp: String,
        /// What UPnP said.
        upnp: String,
    },
    /// Renewing failed (the router forgot us, or went away).
    #[error("renewing the mapping failed: {0}")]
    Renew(String),
}

/// The lease asked for: an hour, renewed at half time.
pub const LEASE: Duration = Duration::from_secs(3600);
/// How long each protocol may take to answer.
const PMP_TIMEOUT: Duration = Duration::from_millis(300);
const UPNP_TIMEOUT: Duration = Duration::from_secs(2);

enum Held {
    Pmp(crab_nat::PortMapping),
    Upnp {
        gateway: Box<igd_next::Gateway>,
        port: u16,
        local: SocketAddr,
    },
}

/// A port the router forwards to us.
pub struct PortMap {
    /// The public address peers reach us at.
    pub external: SocketAddr,
    /// How it was made.
    pub protocol: PortMapProtocol,
    /// How long the router keeps it without a renewal.
    pub lease: Duration,
    held: Held,
}

impl fmt::Debug for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortMap")
            .field("external", &self.external)
            .field("protocol", &self.protocol)
            .field("lease", &self.lease)
            .finish()
    }
}

fn pmp_options(lease: Duration) -> crab_nat::PortMappingOptions {
    crab_nat::PortMappingOptions {
        external_port: None,
        lifetime_seconds: Some(lease.as_secs().min(u32::MAX.into()) as u32),
        timeout_config: Some(crab_nat::TimeoutConfig {
            initial_timeout: PMP_TIMEOUT,
            max_retries: 1,
            max_retry_timeout: Some(PMP_TIMEOUT * 2),
        }),
    }
}

/// Asks the default gateway to forward a public UDP port to `local_port` on
/// this machine: PCP, then NAT-PMP, then UPnP.
pub async fn map(local_port: u16) -> Result<PortMap, PortMapError> {
    let gateway = crate::iface::default_gateway_v4().ok_or(PortMapError::NoGateway)?;
    let internal = NonZeroU16::new(local_port).ok_or(PortMapError::NoGateway)?;
    let client = client_addr(gateway)
        .map(|a| IpAddr::V4(*a.ip()))
        .ok_or(PortMapError::NoGateway)?;
    let pmp = match crab_nat::PortMapping::new(
        IpAddr::V4(gateway).into(),
        client,
        crab_nat::InternetProtocol::Udp,
        internal,
        pmp_options(LEASE),
    )
    .await
    {
        Ok(m) => match pmp_external(gateway, &m).await {
            Some(ip) => {
                let protocol = match m.mapping_type() {
                    crab_nat::PortMappingType::Pcp { .. } => PortMapProtocol::Pcp,
                    crab_nat::PortMappingType::NatPmp => PortMapProtocol::NatPmp,
                };
                return Ok(PortMap {
                    external: SocketAddr::new(ip, m.external_port().get()),
                    protocol,
                    lease: Duration::from_secs(m.lifetime().into()),
                    held: Held::Pmp(m),
                });
            }
            None => "no external address".to_string(),
        },
        Err(e) => e.to_string(),
    };
    let local = SocketAddr::new(client, local_port);
    let upnp = tokio::task::spawn_blocking(move || upnp_map(gateway, local))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match upnp {
        Ok((gateway, external)) => Ok(PortMap {
            external,
            protocol: PortMapProtocol::Upnp,
            lease: LEASE,
            held: Held::Upnp {
                gateway: Box::new(gateway),
                port: external.port(),
                local,
            },
        }),
        Err(upnp) => Err(PortMapError::Refused { gateway, pmp, upnp }),
    }
}

/// The external address of a PCP or NAT-PMP mapping (PCP says it; NAT-PMP
/// needs a question of its own).
async fn pmp_external(gateway: Ipv4Addr, m: &crab_nat::PortMapping) -> Option<IpAddr> {
    match m.mapping_type() {
        crab_nat::PortMappingType::Pcp { external_ip, .. } => Some(external_ip),
        crab_nat::PortMappingType::NatPmp => crab_nat::natpmp::external_address(
            IpAddr::V4(gateway).into(),
            pmp_options(LEASE).timeout_config,
        )
        .await
        .ok()
        .map(IpAddr::V4),
    }
}

/// UPnP IGD: find the gateway on the LAN (SSDP), ask for any external port.
fn upnp_map(
    gateway: Ipv4Addr,
    local: SocketAddr,
) -> Result<(igd_next::Gateway, SocketAddr), String> {
    let mut options = igd_next::SearchOptions::default();
    options.bind_addr = SocketAddr::new(local.ip(), 0);
    options.timeout = Some(UPNP_TIMEOUT);
    options.single_search_timeout = Some(UPNP_TIMEOUT);
    let gw = igd_next::search_gateway(options).map_err(|e| e.to_string())?;
    // Only the router we route through: another device answering SSDP on the
    // LAN can't forward our traffic.
    if gw.addr.ip() != IpAddr::V4(gateway) {
        return Err(format!("the UPnP gateway {} is not our router", gw.addr));
    }
    let port = gw
        .add_any_port(
            igd_next::PortMappingProtocol::UDP,
            local,
            LEASE.as_secs() as u32,
            "burrow",
        )
        .map_err(|e| e.to_string())?;
    let ip = gw.get_external_ip().map_err(|e| e.to_string())?;
    Ok((gw, SocketAddr::new(ip, port)))
}

impl PortMap {
    /// Renews the lease (call before half of it has passed).
    pub async fn renew(&mut self) -> Result<(), PortMapError> {
        match &mut self.held {
            Held::Pmp(m) => m
                .renew()
                .await
                .map_err(|e| PortMapError::Renew(e.to_string())),
            Held::Upnp {
                gateway,
                port,
                local,
            } => {
                let (gw, port, local) = (gateway.clone(), *port, *local);
                tokio::task::spawn_blocking(move || {
                    gw.add_port(
                        igd_next::PortMappingProtocol::UDP,
                        port,
                        local,
                        LEASE.as_secs() as u32,
                        "burrow",
                    )
                })
                .await
                .map_err(|e| PortMapError::Renew(e.to_string()))?
                .map_err(|e| PortMapError::Renew(e.to_string()))
            }
        }
    }

    /// Asks the router to delete the mapping (best effort: it expires anyway).
    pub async fn remove(self) {
        match self.held {
            Held::Pmp(m) => {
                if let Err((e, _)) = m.try_drop().await {
                    tracing::debug!(error = %e, "port mapping not deleted");
                }
            }
            Held::Upnp { gateway, port, .. } => {
                let _ = tokio::task::spawn_blocking(move || {
                    gateway.remove_port(igd_next::PortMappingProtocol::UDP, port)
                })
                .await;
            }
        }
    }
}

/// The address the gateway sees us at: the source of a socket routed to it.
fn client_addr(gateway: Ipv4Addr) -> Option<SocketAddrV4> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((gateway, crab_nat::GATEWAY_PORT)).ok()?;
    match s.local_addr().ok()? {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}
