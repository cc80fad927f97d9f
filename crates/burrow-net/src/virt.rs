//! burrow's virtual addresses: 240.0.0.0/4, reserved and never routed, so
//! nothing real can have one. quinn is given a virtual address where the
//! real way to a peer or a server can change underneath it: a linked peer's
//! ([`crate::paths`]: relay or direct, decided per packet) and a TCP or
//! HTTPS link's ([`crate::tcp`]). The port says which kind an address is.

use std::net::{Ipv4Addr, SocketAddr};

/// What a virtual address stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A linked peer (see [`crate::paths::PathTable`]).
    Peer,
    /// A TCP or HTTPS link (see [`crate::tcp::Links`]).
    Link,
}

impl Kind {
    /// The port every address of this kind has (quinn refuses port 0).
    const fn port(self) -> u16 {
        match self {
            Kind::Peer => 1,
            Kind::Link => 2,
        }
    }
}

/// The first octet's high nibble: 240.0.0.0/4.
const NET: u32 = 240 << 24;
/// The bits below the /4: how many addresses of each kind there are.
const HOST_BITS: u32 = 0x0fff_ffff;

/// The `n`th virtual address of `kind` (wrapping within the /4).
pub(crate) fn addr(kind: Kind, n: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(NET | (n & HOST_BITS)).into(), kind.port())
}

/// What `addr` stands for, if it is a virtual address (an IPv4-mapped one
/// too).
pub fn kind(addr: SocketAddr) -> Option<Kind> {
    let SocketAddr::V4(a) = crate::paths::canonical(addr) else {
        return None;
    };
    if u32::from(*a.ip()) & !HOST_BITS != NET {
        return None;
    }
    [Kind::Peer, Kind::Link]
        .into_iter()
        .find(|k| k.port() == a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_back_and_nothing_real_passes_for_one() {
        for kind in [Kind::Peer, Kind::Link] {
            for n in [0, 1, 7, HOST_BITS, HOST_BITS + 5] {
                assert_eq!(super::kind(addr(kind, n)), Some(kind));
            }
        }
        assert_ne!(addr(Kind::Peer, 3), addr(Kind::Link, 3));
        for real in ["240.0.0.1:80", "239.255.255.255:1", "10.0.0.1:1", "[::1]:1"] {
            assert_eq!(kind(real.parse().unwrap()), None, "{real}");
        }
        assert_eq!(
            kind("[::ffff:240.0.0.9]:2".parse().unwrap()),
            Some(Kind::Link)
        );
    }
}
