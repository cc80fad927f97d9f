//! Server addresses as people write them.
//!
//! `burrow://<server-id>@host:port` pins the server's key: a server presenting any
//! other key is refused. A bare `host:port` (or `burrow://host:port`) is trusted on
//! first use; the node remembers the key and refuses a different one afterwards.

use std::fmt;
use std::str::FromStr;

use crate::id::NodeId;

/// The URL scheme of a server address.
pub const SCHEME: &str = "burrow://";

/// A rendezvous server's address, optionally pinning its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    /// The key the server must present, when the address pins one.
    pub key: Option<NodeId>,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// The server's HTTPS port (`?https=443`), for networks that pass
    /// nothing else, when it listens there.
    pub https: Option<u16>,
}

/// Why a server address could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerAddrError {
    /// No `:port` at the end.
    #[error("missing port: write host:port, e.g. example.org:7700")]
    MissingPort,
    /// The port is not a number from 1 to 65535.
    #[error("bad port {0:?}: a port is a number from 1 to 65535")]
    BadPort(String),
    /// Nothing before the port.
    #[error("missing host")]
    MissingHost,
    /// The part before `@` is not a server id.
    #[error("bad server id before '@': {0}")]
    BadKey(crate::id::NodeIdError),
}

impl FromStr for ServerAddr {
    type Err = ServerAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(SCHEME).unwrap_or(s.trim());
        let rest = rest.trim_end_matches('/');
        let (rest, https) = match rest.split_once("?https=") {
            Some((r, p)) => match p.parse::<u16>() {
                Ok(p) if p != 0 => (r.trim_end_matches('/'), Some(p)),
                _ => return Err(ServerAddrError::BadPort(p.to_string())),
            },
            None => (rest, None),
        };
        let (key, hostport) = match rest.split_once('@') {
            Some((k, hp)) => (Some(k.parse().map_err(ServerAddrError::BadKey)?), hp),
            None => (None, rest),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or(ServerAddrError::MissingPort)?;
        let port: u16 = match port.parse() {
            Ok(p) if p != 0 => p,
            _ => return Err(ServerAddrError::BadPort(port.to_string())),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ServerAddrError::MissingHost);
        }
        Ok(ServerAddr {
            key,
            host: host.to_string(),
            port,
            https,
        })
    }
}

impl ServerAddr {
    /// `host:port`, with brackets around an IPv6 host: the form socket APIs resolve.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{SCHEME}{k}@{}", self.host_port())?,
            None => write!(f, "{SCHEME}{}", self.host_port())?,
        }
        match self.https {
            Some(p) => write!(f, "?https={p}"),
            None => Ok(()),
        }
    }
}

/// The part of an address that one party controls, for rate limits and bans:
/// an IPv4 address as it is, an IPv6 address cut to its /64 (one home or
/// phone usually gets a whole /64, so single v6 addresses cost an attacker
/// nothing), an IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn ip_group(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_groups_are_v4_addresses_and_v6_slash_64s() {
        use super::ip_group;
        let g = |s: &str| ip_group(s.parse().unwrap()).to_string();
        assert_eq!(g("203.0.113.7"), "203.0.113.7");
        assert_eq!(g("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(g("2001:db8:1:2:ffff::9"), "2001:db8:1:2::");
        assert_eq!(g("::ffff:198.51.100.4"), "198.51.100.4");
    }

    use super::*;
    use crate::id::SecretKey;
    use rand::SeedableRng;

    #[test]
    fn parses_pinned_and_bare_addresses() {
        let id = SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(7)).public();
        let a: ServerAddr = format!("burrow://{id}@example.org:7700").parse().unwrap();
        assert_eq!(a.key, Some(id));
        assert_eq!((a.host.as_str(), a.port), ("example.org", 7700));
        assert_eq!(a.to_string().parse::<ServerAddr>(), Ok(a));

        let b: ServerAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!((b.key, b.host_port()), (None, "127.0.0.1:9".to_string()));
        let c: ServerAddr = "burrow://[::1]:7700".parse().unwrap();
        assert_eq!(c.host_port(), "[::1]:7700");
        let d: ServerAddr = "burrow://example.org:7700?https=443".parse().unwrap();
        assert_eq!((d.port, d.https), (7700, Some(443)));
        assert_eq!(d.to_string(), "burrow://example.org:7700?https=443");
        assert!("example.org:7700?https=0".parse::<ServerAddr>().is_err());
    }

    #[test]
    fn bad_addresses_say_why() {
        assert_eq!(
            "host".parse::<ServerAddr>(),
            Err(ServerAddrError::MissingPort)
        );
        assert_eq!(
            "host:0".parse::<ServerAddr>(),
            Err(ServerAddrError::BadPort("0".into()))
        );
        assert_eq!(
            ":7700".parse::<ServerAddr>(),
            Err(ServerAddrError::MissingHost)
        );
        assert!(matches!(
            "burrow://zz@h:1".parse::<ServerAddr>(),
            Err(ServerAddrError::BadKey(_))
        ));
    }
}
