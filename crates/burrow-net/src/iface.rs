//! The machine's own addresses, offered to peers as LAN candidates.

use std::net::{IpAddr, SocketAddr};

/// Most LAN candidates offered (a machine with many interfaces offers the first ones).
pub const MAX_LAN_CANDIDATES: usize = 8;

/// Candidate addresses for a socket bound to `local`: the address itself when it is
/// a specific one, or every usable interface address with its port when it is a
/// wildcard (IPv4's: IPv4 addresses; IPv6's, which burrow binds for both
/// families: IPv4 ones first, then IPv6). Loopback is offered only when bound to
/// loopback, since a peer on another machine can't use it; link-local IPv6 never
/// (it needs an interface to be named, which means nothing on the peer's machine).
pub fn lan_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = ifaces
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| (local.is_ipv6() || ip.is_ipv4()) && usable_elsewhere(ip))
        .collect();
    ips.dedup();
    // IPv4 first, and room for IPv6 however many IPv4 addresses there are
    // (a host with a dozen container bridges).
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = ips.into_iter().partition(|ip| ip.is_ipv4());
    let v4_room = if v6.is_empty() {
        MAX_LAN_CANDIDATES
    } else {
        MAX_LAN_CANDIDATES - MAX_LAN_CANDIDATES / 4
    };
    let v4_taken = v4.len().min(v4_room);
    v4.into_iter()
        .take(v4_room)
        .chain(v6.into_iter().take(MAX_LAN_CANDIDATES - v4_taken))
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect()
}

/// Whether `ip` is an address on the internet: usable elsewhere, and not a
/// private, shared (carrier) or unique-local one.
pub fn is_global(ip: &IpAddr) -> bool {
    usable_elsewhere(ip)
        && match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                !(v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) || v4.is_broadcast())
            }
            IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) != 0xfc00,
        }
}

/// Whether another machine could reach us at `ip`: not loopback, link-local,
/// multicast or unspecified (an address of ours, or one a peer offers us).
pub fn usable_elsewhere(ip: &IpAddr) -> bool {
    let ip = ip.to_canonical();
    !ip.is_loopback() && !ip.is_multicast() && !ip.is_unspecified() && !is_link_local(&ip)
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

/// Whether this machine has a route to `to` (a UDP socket connects without
/// sending anything: it fails at once without one).
pub fn has_route(to: SocketAddr) -> bool {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(any).is_ok_and(|s| s.connect(to).is_ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_addresses_another_machine_can_reach_are_usable() {
        let usable = |s: &str| super::usable_elsewhere(&s.parse().unwrap());
        for ok in ["192.168.1.2", "198.51.100.7", "2001:db8::5", "fd12:3456::1"] {
            assert!(usable(ok), "{ok}");
        }
        assert!(super::is_global(&"2001:db8::5".parse().unwrap()));
        assert!(super::is_global(&"198.51.100.7".parse().unwrap()));
        for private in [
            "10.1.2.3",
            "192.168.1.2",
            "100.64.0.9",
            "fd12::1",
            "fe80::1",
        ] {
            assert!(!super::is_global(&private.parse().unwrap()), "{private}");
        }
        for no in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "169.254.3.4",
            "ff02::1",
            "224.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!usable(no), "{no}");
        }
    }

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
