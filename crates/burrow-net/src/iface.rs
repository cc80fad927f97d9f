//! The machine's own addresses, offered to peers as LAN candidates.

use std::net::{IpAddr, SocketAddr};

/// Most LAN candidates offered (a machine with many interfaces offers the first ones).
pub const MAX_LAN_CANDIDATES: usize = 8;

/// Candidate addresses for a socket bound to `local`: the address itself when it is
/// a specific one, or every usable interface address (same family) with its port
/// when it is a wildcard. Loopback is offered only when bound to loopback, since a
/// peer on another machine can't use it.
pub fn lan_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    ifaces
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == local.is_ipv4() && !ip.is_loopback() && !is_link_local(ip))
        .take(MAX_LAN_CANDIDATES)
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect()
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}
