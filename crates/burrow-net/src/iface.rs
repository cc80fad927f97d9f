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

/// The IPv4 default gateway, from the kernel's routing table
/// (`/proc/net/route`: interface, destination, gateway, flags, ... in hex).
pub fn default_gateway_v4() -> Option<std::net::Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_gateway(&table)
}

fn parse_default_gateway(table: &str) -> Option<std::net::Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let up_gateway = u16::from_str_radix(flags, 16).ok()? & 0x3 == 0x3; // RTF_UP | RTF_GATEWAY
        if *dest != "00000000" || !up_gateway {
            return None;
        }
        // Little-endian hex of the address in network order.
        let raw = u32::from_str_radix(gw, 16).ok()?;
        Some(std::net::Ipv4Addr::from(raw.swap_bytes()))
    })
}

#[cfg(test)]
mod gateway_tests {
    #[test]
    fn the_default_route_names_the_gateway() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            super::parse_default_gateway(table),
            Some(std::net::Ipv4Addr::new(10, 0, 2, 1))
        );
        assert_eq!(super::parse_default_gateway("Iface\tDestination\n"), None);
    }
}
