//! burrow-lab: small internets in Linux network namespaces, with the real kernel
//! doing the NAT (nftables), for tests and benchmarks.
//!
//! ```text
//!                      "public" segment 198.51.100.0/24 (a bridge in its own namespace)
//!   server .1 and .2 ──┤
//!   peer (None)  .100+ ┤
//!   router wan   .10+ ─┼── router ── lan 10.0.N.0/24 ── peer .2 (and .3, same NAT)
//!   carrier wan  .10+ ─┴── carrier ── 100.64.N.0/24 ── home router ── 10.0.N.0/24 ── peer
//! ```
//!
//! Every namespace is named `bl<pid>x<lab>-<role>`; a [`Lab`] deletes its own on
//! drop (also when a test panics), and [`Lab::new`] first deletes those left by
//! processes that are gone. Nothing in the lab links to the host's network: the
//! bridge's only ports are the lab's own veths, and traffic stays inside.
//!
//! NAT kinds ([`NatKind`]) are nftables rules on the router's WAN side:
//! - `FullCone`: masquerade (source port kept), plus inbound UDP on any port
//!   forwarded to the peer: endpoint-independent mapping and filtering.
//! - `PortRestricted`: plain masquerade: endpoint-independent mapping,
//!   address-and-port-dependent filtering (conntrack lets in replies only).
//! - `Symmetric`: masquerade `fully-random`: a new random port per destination.
//! - `Sequential`: a new port per destination, one after the other: UDP is
//!   source-NATed to the WAN address and a port looked up by `numgen inc`, a
//!   counter nftables advances once per new mapping (the nat chain sees only a
//!   flow's first packet). Linux's own NAT never allocates sequentially (it
//!   keeps the source port or draws a random one), so this rule makes the
//!   behaviour of routers that do. (The lookup map is needed: the counter's
//!   value used as a port directly lands byte-swapped, counting in steps of 256.)
//!
//! - `UdpBlocked`: `PortRestricted` for TCP, and every UDP datagram from the
//!   LAN dropped.
//!
//! Delay: [`Lab::set_uplink_delay`] gives links to the public segment a fixed
//! one-way delay (the kernel here has no `netem`; see [`delay`]).
//!
//! Routers drop unsolicited packets from their WAN to themselves, as most home
//! routers do, unless the lab is told otherwise ([`Lab::set_router_firewall`]):
//! a router without that firewall (plain masquerade, as on Docker and VPS hosts
//! and many cheap routers) records a peer's early probe as an inbound flow and
//! then maps our side's answer to another port (see `nat_rules`).
//!
//! The public segment is "at least one router deep": a datagram that enters it
//! with TTL 1 dies there, as it would at the first router of a real ISP. A
//! probe sent with TTL 2 from behind one NAT passes that NAT and reaches
//! nobody else.
//!
//! [`Lab::with_routed_server`] builds a server whose two public addresses live
//! on its loopback interface, reached through routes every host on the public
//! segment has to a transit address on the server's `eth0` (as on hosts with
//! floating or secondary addresses): the kernel's own choice of source address
//! for a reply there is the transit address, not the one the client asked.
//!
//! IPv6 ([`Lab::set_family`]): hosts made afterwards get IPv6 as well as
//! (or instead of) IPv4. The public segment is 2001:db8::/64 (the server at
//! ::1 and ::2, the router of LAN N at ::1000+N, public peers at ::2000+),
//! each router's LAN 2001:db8:0:N::/64 (the 10.0.N.0/24 beside it; routers
//! behind a carrier NAT get no IPv6), routed from every host on the public segment to the
//! router's WAN address: no NAT, as IPv6 home networks have none, but the
//! router forwards inbound IPv6 only for flows its LAN started (nftables
//! `ct state established,related`), the stateful firewall such routers run.
//! Hop limits end on the public segment as TTLs do.
//!
//! [`data`] writes seeded test files for tests and benchmarks.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `conntrack`; [`Lab::new`]
//! says which is missing. Tests call [`require_or_skip`] to skip with a printed reason where the
//! lab can't be built, except under `BURROW_LAB=required` (CI), where they fail.

pub mod data;
pub mod delay;
mod ns;
mod rt;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use ns::{enter as enter_namespace, socket_in};
pub use rt::NsRuntime;

/// Why the lab could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// This machine can't run the lab (not root, tools missing, no netns support).
    #[error("the lab can't run here: {0}")]
    Unavailable(String),
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed.
        stderr: String,
    },
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How a peer's router treats UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT: the peer sits on the public segment.
    None,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping with random ports.
    Symmetric,
    /// Endpoint-dependent mapping with sequential ports.
    Sequential,
    /// A firewall that drops all UDP from its LAN (TCP is masqueraded as
    /// `PortRestricted`), as some corporate and guest networks do. Not in
    /// [`NatKind::ALL`], the UDP matrix.
    UdpBlocked,
    /// A firewall that lets nothing from its LAN out but TCP to port 443
    /// (masqueraded as `PortRestricted`), as networks that allow only HTTPS
    /// do. Not in [`NatKind::ALL`].
    HttpsOnly,
    /// A firewall that forwards nothing from its LAN at all: the only way
    /// out is an HTTP proxy on the router ([`Lab::run_http_proxy`]). Not in
    /// [`NatKind::ALL`].
    ProxyOnly,
}

impl NatKind {
    /// Every kind, for matrices.
    pub const ALL: [NatKind; 5] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::PortRestricted,
        NatKind::Symmetric,
        NatKind::Sequential,
    ];
}

/// First port the `Sequential` NAT hands out; it counts up from here and wraps
/// after [`SEQUENTIAL_PORTS`].
pub const SEQUENTIAL_FIRST_PORT: u16 = 20000;
/// Ports the `Sequential` NAT cycles through.
pub const SEQUENTIAL_PORTS: u16 = 2048;

/// Where a program runs in the lab: a namespace and its address there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Namespace name (for `ip netns exec`).
    pub ns: String,
    /// The host's (first) IPv4 address; `0.0.0.0` on an IPv6-only host.
    pub addr: Ipv4Addr,
    /// Its IPv6 address, in a lab with IPv6 ([`Lab::set_family`]).
    pub addr6: Option<Ipv6Addr>,
}

/// The address families hosts get ([`Lab::set_family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 alone (the default).
    V4,
    /// IPv4 and IPv6.
    DualStack,
    /// IPv6 alone (peers; their routers still have IPv4 on the WAN).
    V6Only,
}

/// The public segment's IPv6 network, a /64 of the documentation range.
pub const PUBLIC_NET6: [u16; 4] = [0x2001, 0xdb8, 0, 0];

/// The address `host` on the /64 `net` (four groups).
fn v6(net: [u16; 4], host: u16) -> Ipv6Addr {
    Ipv6Addr::new(net[0], net[1], net[2], net[3], 0, 0, 0, host)
}

impl Host {
    /// A `Command` that runs `program` inside this host's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// A UDP socket bound inside this host's namespace (usable from any thread).
    pub fn udp(&self, port: u16) -> std::io::Result<UdpSocket> {
        socket_in(&self.ns, SocketAddr::from((self.addr, port)))
    }

    /// Runs `f` inside this host's namespace (see [`ns::within`]): e.g. a
    /// TCP listener on its loopback, or a connection from it.
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        ns::within(&self.ns, f)
    }
}

/// A NAT router in front of one or more peers.
#[derive(Clone, Debug)]
pub struct Router {
    /// The router itself (its address is the WAN address).
    pub host: Host,
    /// Its LAN network, e.g. 10.0.3.0/24; the router is .1.
    lan_net: Ipv4Addr,
    /// Its LAN's IPv6 /64 (four groups), with IPv6; the router is ::1.
    lan_net6: Option<[u16; 4]>,
    /// The families its peers get.
    family: Family,
    kind: NatKind,
}

impl Router {
    /// The router's public (WAN) address.
    pub fn wan(&self) -> Ipv4Addr {
        self.host.addr
    }

    /// Its NAT kind.
    pub fn kind(&self) -> NatKind {
        self.kind
    }
}

/// The public segment's network (RFC 5737 documentation range, never routed).
pub const PUBLIC_NET: [u8; 3] = [198, 51, 100];
/// A public segment in a range that is *not* reserved, for labs whose routers
/// run `miniupnpd` ([`Lab::with_public_net`]): miniupnpd refuses to map ports
/// on a WAN address that is private or reserved (198.51.100.0/24 is). Using
/// someone's real addresses is safe only because the lab has no link to the
/// host's network: nothing sent to them can leave the lab's namespaces.
pub const ROUTABLE_NET: [u8; 3] = [11, 0, 0];
/// The server's two public addresses.
pub const SERVER_ADDRS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
/// The server's `eth0` address in a lab [`Lab::with_routed_server`] builds:
/// hosts route [`SERVER_ADDRS`] through it, and it is the kernel's choice of
/// source for the server's replies.
pub const SERVER_TRANSIT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, SERVER_TRANSIT_HOST);
const SERVER_TRANSIT_HOST: u8 = 254;

static LABS: AtomicU32 = AtomicU32::new(0);

/// One lab: its namespaces live as long as it does.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    inet: String,
    server: Host,
    /// The public segment's /24.
    net: [u8; 3],
    next: u8,
    /// Host numbers handed out on each router's LAN.
    lan_hosts: std::collections::HashMap<String, u8>,
    /// One-way delay given to links to the public segment made from now on
    /// (routers' uplinks and public peers; never the server's).
    uplink_delay: Option<Duration>,
    /// The delayed links' relays (stopped before the namespaces go).
    delayed: Vec<delay::DelayLink>,
    /// `miniupnpd` daemons on routers (killed before the namespaces go).
    daemons: Vec<std::process::Child>,
    /// Their configuration files.
    scratch: Option<tempfile::TempDir>,
    /// Where hosts on the public segment route the server's addresses, when
    /// those live on its loopback ([`Lab::with_routed_server`]).
    server_via: Option<Ipv4Addr>,
    /// Whether routers made from now on drop unsolicited packets to themselves.
    router_firewall: bool,
    /// The families hosts made from now on get.
    family: Family,
    /// Namespaces on the public segment with IPv6, and the IPv6 routes each
    /// of them has (to routers' LANs, through their WAN addresses).
    public6: Vec<String>,
    routes6: Vec<(String, Ipv6Addr)>,
}

/// Builds a lab, or explains why not: `Ok(None)` means "skip" (with the reason
/// printed), and under `BURROW_LAB=required` an unavailable lab panics instead.
pub fn require_or_skip(test: &str) -> Option<Lab> {
    require_or_skip_with(test, Lab::new)
}

/// Says why `test` can't run on this machine, for the caller to return early;
/// or fails it when `BURROW_LAB=required` (in CI nothing may skip).
pub fn skip(test: &str, why: &str) {
    let required = std::env::var("BURROW_LAB").is_ok_and(|v| v == "required");
    assert!(!required, "{test}: BURROW_LAB=required, but {why}");
    eprintln!("SKIPPED {test}: {why}");
}

/// Like [`require_or_skip`], building the lab with `build` (another public
/// net, extra tools checked).
pub fn require_or_skip_with(
    test: &str,
    build: impl FnOnce() -> Result<Lab, LabError>,
) -> Option<Lab> {
    match build() {
        Ok(lab) => Some(lab),
        Err(LabError::Unavailable(why)) => {
            skip(test, &format!("the lab can't run here: {why}"));
            None
        }
        Err(e) => panic!("{test}: building the lab failed: {e}"),
    }
}

impl Lab {
    /// Builds the public segment (on [`PUBLIC_NET`]) and the server host.
    pub fn new() -> Result<Lab, LabError> {
        Self::with_public_net(PUBLIC_NET)
    }

    /// Like [`Lab::new`], with the public segment on `net`/24 (the server at
    /// .1 and .2, routers from .11, public peers from .101).
    pub fn with_public_net(net: [u8; 3]) -> Result<Lab, LabError> {
        Self::build(net, false)
    }

    /// Like [`Lab::new`], with the server's two addresses on its loopback
    /// interface and its `eth0` holding only a transit address ([`SERVER_TRANSIT`]
    /// on the default net) that every host on the public segment routes them
    /// through. The server answers no ARP for them on `eth0` (`arp_ignore=1`):
    /// they are reached by route, not by accident.
    pub fn with_routed_server() -> Result<Lab, LabError> {
        Self::build(PUBLIC_NET, true)
    }

    fn build(net: [u8; 3], routed_server: bool) -> Result<Lab, LabError> {
        check_available()?;
        ns::remove_stale_labs();
        let prefix = format!(
            "bl{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            inet: format!("{prefix}-inet"),
            server: Host {
                ns: format!("{prefix}-srv"),
                addr: Ipv4Addr::new(net[0], net[1], net[2], 1),
                addr6: None,
            },
            net,
            prefix,
            namespaces: Vec::new(),
            next: 1,
            lan_hosts: Default::default(),
            uplink_delay: None,
            delayed: Vec::new(),
            daemons: Vec::new(),
            scratch: None,
            server_via: None,
            router_firewall: true,
            family: Family::V4,
            public6: Vec::new(),
            routes6: Vec::new(),
        };
        let inet = lab.inet.clone();
        lab.add_ns(&inet)?;
        run(&["ip", "-n", &inet, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &inet, "link", "set", "br0", "up"])?;
        // The first router of the "internet": what arrives with TTL 1 dies here.
        nft(
            &inet,
            "table bridge core {\n chain forward {\n  type filter hook forward priority filter;\n  ip ttl <= 1 drop\n  ip6 hoplimit <= 1 drop\n }\n}\n",
        )?;
        let srv = lab.server.ns.clone();
        lab.add_ns(&srv)?;
        lab.attach_public(&srv, "eth0")?;
        if !routed_server {
            for a in lab.server_addrs() {
                add_addr(&srv, "eth0", a)?;
            }
            return Ok(lab);
        }
        let transit = Ipv4Addr::new(net[0], net[1], net[2], SERVER_TRANSIT_HOST);
        add_addr(&srv, "eth0", transit)?;
        for a in lab.server_addrs() {
            run(&[
                "ip",
                "-n",
                &srv,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "lo",
            ])?;
        }
        sysctl(&srv, "net.ipv4.conf.eth0.arp_ignore=1")?;
        lab.server_via = Some(transit);
        Ok(lab)
    }

    /// Gives namespace `ns` (on the public segment) routes to the server's
    /// addresses, when they live on its loopback.
    fn route_to_server(&self, ns: &str) -> Result<(), LabError> {
        let Some(via) = self.server_via else {
            return Ok(());
        };
        for a in self.server_addrs() {
            add_route(ns, &format!("{a}/32"), via)?;
        }
        Ok(())
    }

    /// The server's host (its first address; it also has a second, see
    /// [`Lab::server_addrs`]).
    pub fn server(&self) -> &Host {
        &self.server
    }

    /// The server's two public addresses ([`SERVER_ADDRS`] on the default net).
    pub fn server_addrs(&self) -> [Ipv4Addr; 2] {
        let n = self.net;
        [
            Ipv4Addr::new(n[0], n[1], n[2], 1),
            Ipv4Addr::new(n[0], n[1], n[2], 2),
        ]
    }

    fn add_ns(&mut self, name: &str) -> Result<(), LabError> {
        run(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        // Interfaces made here from now on use their IPv6 addresses at once
        // (no duplicate address detection: nothing else is on these links).
        // A kernel without IPv6 has no such setting; IPv4 labs don't need it.
        let _ = sysctl(name, "net.ipv6.conf.default.accept_dad=0");
        Ok(())
    }

    /// From now on, hosts and routers get the address families `family`
    /// says; the first switch to IPv6 gives the server its IPv6 addresses
    /// ([`Lab::server_addrs6`]).
    pub fn set_family(&mut self, family: Family) -> Result<(), LabError> {
        self.family = family;
        if family != Family::V4 && self.server.addr6.is_none() {
            let srv = self.server.ns.clone();
            for a in Self::server_addrs6() {
                add_addr6(&srv, "eth0", a, 64)?;
            }
            self.server.addr6 = Some(Self::server_addrs6()[0]);
            self.join_public6(&srv)?;
        }
        Ok(())
    }

    /// The server's two IPv6 addresses (in a lab with IPv6).
    pub fn server_addrs6() -> [Ipv6Addr; 2] {
        [v6(PUBLIC_NET6, 1), v6(PUBLIC_NET6, 2)]
    }

    /// Gives public-segment namespace `ns` the IPv6 routes to every router's
    /// LAN, and from now on those of routers made later.
    fn join_public6(&mut self, ns: &str) -> Result<(), LabError> {
        for (prefix, via) in &self.routes6 {
            add_route(ns, prefix, *via)?;
        }
        self.public6.push(ns.to_string());
        Ok(())
    }

    /// Routes `prefix` through `via` (router namespace `owner`'s address)
    /// from every IPv6 host on the public segment.
    fn route6_everywhere(
        &mut self,
        owner: &str,
        prefix: String,
        via: Ipv6Addr,
    ) -> Result<(), LabError> {
        for ns in self.public6.iter().filter(|ns| *ns != owner) {
            add_route(ns, &prefix, via)?;
        }
        self.routes6.push((prefix, via));
        Ok(())
    }

    /// From now on, links to the public segment (routers' uplinks, public peers)
    /// hold every frame for `one_way` in each direction: a pair of TAP devices
    /// joined by relay threads ([`delay`]). Two peers are then `4 × one_way`
    /// apart, a peer and the server `2 × one_way`.
    pub fn set_uplink_delay(&mut self, one_way: Duration) {
        self.uplink_delay = (!one_way.is_zero()).then_some(one_way);
    }

    /// From now on, routers drop (`true`, the default) or accept unsolicited
    /// packets from their WAN to themselves. A router that accepts them keeps a
    /// conntrack entry for each, and its masquerade then avoids that entry's
    /// ports when the peer behind it answers the same remote address.
    pub fn set_router_firewall(&mut self, on: bool) {
        self.router_firewall = on;
    }

    /// Connects `ns` to the public bridge with an interface called `ifname`.
    fn attach_public(&mut self, ns: &str, ifname: &str) -> Result<(), LabError> {
        let port = format!("p{}", self.next_port());
        if let Some(d) = self.uplink_delay.filter(|_| ns != self.server.ns) {
            let inner = delay::open_tap(ns, ifname)?;
            let outer = delay::open_tap(&self.inet, &port)?;
            self.delayed.push(delay::join(inner, outer, d)?);
            run(&[
                "ip", "-n", &self.inet, "link", "set", &port, "master", "br0",
            ])?;
            run(&["ip", "-n", &self.inet, "link", "set", &port, "up"])?;
            run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
            return Ok(());
        }
        run(&[
            "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", &port,
            "netns", &self.inet,
        ])?;
        run(&[
            "ip", "-n", &self.inet, "link", "set", &port, "master", "br0",
        ])?;
        run(&["ip", "-n", &self.inet, "link", "set", &port, "up"])?;
        run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    fn next_port(&self) -> usize {
        self.namespaces.len()
    }

    fn take_index(&mut self) -> u8 {
        let i = self.next;
        self.next = self
            .next
            .checked_add(1)
            .expect("at most 254 peers in one lab");
        i
    }

    /// Adds a peer called `name` behind a router of `kind` (or on the public
    /// segment for [`NatKind::None`]). Returns the peer's host and its router.
    pub fn add_peer(
        &mut self,
        name: &str,
        kind: NatKind,
    ) -> Result<(Host, Option<Router>), LabError> {
        let i = self.take_index();
        if kind == NatKind::None {
            let ns = format!("{}-{name}", self.prefix);
            self.add_ns(&ns)?;
            self.attach_public(&ns, "eth0")?;
            let mut addr = Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 100 + i);
            if self.family == Family::V6Only {
                addr = Ipv4Addr::UNSPECIFIED;
            } else {
                add_addr(&ns, "eth0", addr)?;
                self.route_to_server(&ns)?;
            }
            let mut addr6 = None;
            if self.family != Family::V4 {
                let a = v6(PUBLIC_NET6, 0x2000 + u16::from(i));
                add_addr6(&ns, "eth0", a, 64)?;
                self.join_public6(&ns)?;
                addr6 = Some(a);
            }
            return Ok((Host { ns, addr, addr6 }, None));
        }
        let router = self.add_router(&format!("r{i}"), kind, Ipv4Addr::new(10, 0, i, 0), None)?;
        let peer = self.add_peer_behind(&router, name)?;
        Ok((peer, Some(router)))
    }

    /// Adds a peer behind a home router of `kind` that is itself behind a carrier
    /// NAT (port-restricted, like most CGNATs).
    pub fn add_double_nat_peer(
        &mut self,
        name: &str,
        kind: NatKind,
    ) -> Result<(Host, Router, Router), LabError> {
        let i = self.take_index();
        // The carrier's LAN is 100.64.i.0/24 (RFC 6598 shared address space).
        let carrier = self.add_router(
            &format!("c{i}"),
            NatKind::PortRestricted,
            Ipv4Addr::new(100, 64, i, 0),
            None,
        )?;
        let home = self.add_router(
            &format!("h{i}"),
            kind,
            Ipv4Addr::new(10, 0, i, 0),
            Some(&carrier),
        )?;
        let peer = self.add_peer_behind(&home, name)?;
        Ok((peer, home, carrier))
    }

    /// Builds a router namespace `role` with NAT `kind`. Its WAN is on the public
    /// segment, or on `upstream`'s LAN for a double NAT.
    fn add_router(
        &mut self,
        role: &str,
        kind: NatKind,
        lan_net: Ipv4Addr,
        upstream: Option<&Router>,
    ) -> Result<Router, LabError> {
        let ns = format!("{}-{role}", self.prefix);
        self.add_ns(&ns)?;
        let (wan, gw) = match upstream {
            None => {
                self.attach_public(&ns, "wan")?;
                let i = self.take_index();
                (
                    Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 10 + i),
                    None,
                )
            }
            Some(up) => {
                let o = up.lan_net.octets();
                let addr = Ipv4Addr::new(o[0], o[1], o[2], 2);
                run(&[
                    "ip",
                    "link",
                    "add",
                    "wan",
                    "netns",
                    &ns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "lan",
                    "netns",
                    &up.host.ns,
                ])?;
                run(&[
                    "ip",
                    "-n",
                    &up.host.ns,
                    "addr",
                    "add",
                    &format!("{}/24", Ipv4Addr::new(o[0], o[1], o[2], 1)),
                    "dev",
                    "lan",
                ])?;
                run(&["ip", "-n", &up.host.ns, "link", "set", "lan", "up"])?;
                run(&["ip", "-n", &ns, "link", "set", "wan", "up"])?;
                (addr, Some(Ipv4Addr::new(o[0], o[1], o[2], 1)))
            }
        };
        add_addr(&ns, "wan", wan)?;
        match gw {
            Some(gw) => add_default_route(&ns, gw)?,
            None => self.route_to_server(&ns)?,
        }
        sysctl(&ns, "net.ipv4.ip_forward=1")?;
        let o = lan_net.octets();
        nat_rules(
            &ns,
            kind,
            wan,
            Ipv4Addr::new(o[0], o[1], o[2], 2),
            self.router_firewall,
        )?;
        // IPv6 (on a router of the public segment): routed, not NATed, with
        // a stateful firewall in front of the LAN.
        let mut addr6 = None;
        let mut lan_net6 = None;
        if self.family != Family::V4 && upstream.is_none() {
            let a = v6(PUBLIC_NET6, 0x1000 + u16::from(o[2]));
            add_addr6(&ns, "wan", a, 64)?;
            sysctl(&ns, "net.ipv6.conf.all.forwarding=1")?;
            firewall6(&ns)?;
            let lan6 = [PUBLIC_NET6[0], PUBLIC_NET6[1], 0, u16::from(o[2])];
            self.join_public6(&ns)?;
            self.route6_everywhere(&ns, format!("{}/64", v6(lan6, 0)), a)?;
            addr6 = Some(a);
            lan_net6 = Some(lan6);
        }
        Ok(Router {
            host: Host {
                ns,
                addr: wan,
                addr6,
            },
            lan_net,
            lan_net6,
            family: self.family,
            kind,
        })
    }

    /// Whether `miniupnpd` can run here ([`Lab::run_miniupnpd`]).
    pub fn check_miniupnpd() -> Result<(), LabError> {
        match Command::new("miniupnpd").arg("--version").output() {
            Ok(_) => Ok(()),
            Err(_) => Err(LabError::Unavailable(
                "`miniupnpd` is missing (apt-get install miniupnpd-nftables)".into(),
            )),
        }
    }

    /// Runs `miniupnpd` on `router`: UPnP IGD, and NAT-PMP and PCP when `pmp`,
    /// for its LAN, mapping onto its WAN address. It refuses a reserved WAN
    /// address, so the lab must be built on [`ROUTABLE_NET`]
    /// ([`Lab::with_public_net`]). Needs the `miniupnpd-nftables` package; the
    /// daemon stops with the lab.
    pub fn run_miniupnpd(&mut self, router: &Router, pmp: bool) -> Result<(), LabError> {
        Self::check_miniupnpd()?;
        let ns = &router.host.ns;
        // The chains miniupnpd fills in, hooked in without filtering anything
        // else (its own init script would make the forward policy drop).
        nft(
            ns,
            "table inet filter {\n chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n chain miniupnpd { }\n chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }\n chain prerouting_miniupnpd { }\n chain postrouting_miniupnpd { }\n}\n",
        )?;
        let dir = self.scratch_dir()?;
        let name = router.host.ns.rsplit('-').next().unwrap_or("r");
        let conf = dir.join(format!("{name}.conf"));
        let o = router.lan_net.octets();
        std::fs::write(
            &conf,
            format!(
                "ext_ifname=wan\nlistening_ip=lan\nenable_natpmp={}\nenable_upnp=yes\nsecure_mode=yes\nsystem_uptime=yes\n\
                 upnp_table_name=filter\nupnp_nat_table_name=filter\nupnp_forward_chain=miniupnpd\n\
                 upnp_nat_chain=prerouting_miniupnpd\nupnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 lease_file={}\nuuid=3b2d6c1e-0000-4000-8000-{:012x}\n\
                 allow 1024-65535 {}.{}.{}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                if pmp { "yes" } else { "no" },
                dir.join(format!("{name}.leases")).display(),
                u32::from(router.wan()),
                o[0], o[1], o[2],
            ),
        )?;
        let pid = dir.join(format!("{name}.pid"));
        let args = [
            "-d".as_ref(),
            "-f".as_ref(),
            conf.as_os_str(),
            "-P".as_ref(),
            pid.as_os_str(),
        ];
        // Ready once its SSDP port is bound.
        self.start_daemon(
            router,
            "miniupnpd",
            &args,
            &dir.join(format!("{name}.log")),
            ("-lun", 1900),
        )
    }

    /// Runs `program` with `args` on `router` until the lab ends, its output
    /// in `log`, and waits (bounded) until it listens on `ready`'s port
    /// (`ss` flags, port).
    fn start_daemon(
        &mut self,
        router: &Router,
        program: &str,
        args: &[&std::ffi::OsStr],
        log: &std::path::Path,
        ready: (&str, u16),
    ) -> Result<(), LabError> {
        let out = std::fs::File::create(log)?;
        let child = router
            .host
            .command(program)
            .args(args)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.daemons.push(child);
        let ns = &router.host.ns;
        let sport = format!("= :{}", ready.1);
        for _ in 0..50 {
            let out = run(&["ip", "netns", "exec", ns, "ss", ready.0, "sport", &sport])?;
            if out.lines().count() > 1 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LabError::Command {
            cmd: program.into(),
            stderr: std::fs::read_to_string(log).unwrap_or_default(),
        })
    }

    /// The directory for daemons' configuration and logs (made once).
    fn scratch_dir(&mut self) -> Result<std::path::PathBuf, LabError> {
        if let Some(d) = &self.scratch {
            return Ok(d.path().to_path_buf());
        }
        let d = tempfile::tempdir()?;
        let p = d.path().to_path_buf();
        self.scratch = Some(d);
        Ok(p)
    }

    /// Runs an HTTP proxy (Debian's `tinyproxy`) on `router`, listening on
    /// its LAN address port 8888 for its LAN and tunnelling (CONNECT) to
    /// port 443 only, as corporate proxies do; returns its address. With
    /// [`NatKind::ProxyOnly`] it is the LAN's only way out. The daemon stops
    /// with the lab.
    pub fn run_http_proxy(&mut self, router: &Router) -> Result<SocketAddr, LabError> {
        if Command::new("tinyproxy").arg("-v").output().is_err() {
            return Err(LabError::Unavailable(
                "`tinyproxy` is missing (apt-get install tinyproxy)".into(),
            ));
        }
        let dir = self.scratch_dir()?;
        let name = router.host.ns.rsplit('-').next().unwrap_or("r");
        let o = router.lan_net.octets();
        let listen = Ipv4Addr::new(o[0], o[1], o[2], 1);
        let conf = dir.join(format!("{name}-proxy.conf"));
        std::fs::write(
            &conf,
            format!(
                "User nobody\nGroup nogroup\nPort 8888\nListen {listen}\nTimeout 600\nMaxClients 50\n\
                 Allow {}.{}.{}.0/24\nConnectPort 443\nLogLevel Info\n",
                o[0], o[1], o[2]
            ),
        )?;
        let args = ["-d".as_ref(), "-c".as_ref(), conf.as_os_str()];
        let log = dir.join(format!("{name}-proxy.log"));
        self.start_daemon(router, "tinyproxy", &args, &log, ("-ltn", 8888))?;
        Ok(SocketAddr::from((listen, 8888)))
    }

    /// Gives programs run in `host`'s namespace (through `ip netns exec`, as
    /// [`Host::command`] does) a DNS of their own: `names` resolve to their
    /// addresses, and nothing else resolves (the resolver asks 127.0.0.1,
    /// where nothing answers, so a lookup fails at once rather than timing
    /// out). A network whose only way out is a proxy often has no outside
    /// DNS: the proxy resolves for it.
    pub fn set_dns(&self, host: &Host, names: &[(&str, IpAddr)]) -> Result<(), LabError> {
        let dir = std::path::Path::new(ns::ETC).join(&host.ns);
        std::fs::create_dir_all(&dir)?;
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, addr) in names {
            hosts.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
        )?;
        Ok(())
    }

    /// Adds another peer on `router`'s LAN (several peers can share one NAT).
    pub fn add_peer_behind(&mut self, router: &Router, name: &str) -> Result<Host, LabError> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns)?;
        let o = router.lan_net.octets();
        let gw = Ipv4Addr::new(o[0], o[1], o[2], 1);
        let n = self.lan_hosts.entry(router.host.ns.clone()).or_insert(1);
        *n += 1;
        let n = *n;
        let addr = Ipv4Addr::new(o[0], o[1], o[2], n);
        let has_lan = Command::new("ip")
            .args(["-n", &router.host.ns, "link", "show", "lan"])
            .output()?
            .status
            .success();
        if !has_lan {
            run(&[
                "ip",
                "link",
                "add",
                "lan",
                "netns",
                &router.host.ns,
                "type",
                "bridge",
            ])?;
            add_addr(&router.host.ns, "lan", gw)?;
            if let Some(net6) = router.lan_net6 {
                add_addr6(&router.host.ns, "lan", v6(net6, 1), 64)?;
            }
            run(&["ip", "-n", &router.host.ns, "link", "set", "lan", "up"])?;
        }
        let port = format!("l{n}");
        run(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &router.host.ns,
        ])?;
        run(&[
            "ip",
            "-n",
            &router.host.ns,
            "link",
            "set",
            &port,
            "master",
            "lan",
        ])?;
        run(&["ip", "-n", &router.host.ns, "link", "set", &port, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        let addr = if router.family == Family::V6Only && router.lan_net6.is_some() {
            Ipv4Addr::UNSPECIFIED
        } else {
            add_addr(&ns, "eth0", addr)?;
            add_default_route(&ns, gw)?;
            addr
        };
        let addr6 = match router.lan_net6 {
            Some(net6) => {
                let a = v6(net6, u16::from(n));
                add_addr6(&ns, "eth0", a, 64)?;
                add_route(&ns, "default", v6(net6, 1))?;
                Some(a)
            }
            None => None,
        };
        Ok(Host { ns, addr, addr6 })
    }

    /// Drops `percent`% of the packets `router` forwards, both ways.
    pub fn set_loss(&self, router: &Router, percent: u8) -> Result<(), LabError> {
        let rule = format!("numgen random mod 100 < {percent} drop");
        forward_filter(router, "loss", (percent > 0).then_some(rule.as_str()))
    }

    /// Drops (`blocked`) or lets through again everything `router` forwards
    /// to or from `other` (another router's WAN address): the two sites
    /// can't reach each other directly, while both still reach the server.
    pub fn set_blocked(
        &self,
        router: &Router,
        other: Ipv4Addr,
        blocked: bool,
    ) -> Result<(), LabError> {
        let rule = format!("ip daddr {other} drop\n  ip saddr {other} drop");
        forward_filter(router, "block", blocked.then_some(rule.as_str()))
    }

    /// Forgets every NAT mapping on `router`, as if they had all timed out.
    pub fn flush_mappings(&self, router: &Router) -> Result<(), LabError> {
        run(&["ip", "netns", "exec", &router.host.ns, "conntrack", "-F"]).map(|_| ())
    }

    /// Cuts (`up == false`) or restores `router`'s uplink.
    pub fn set_uplink(&self, router: &Router, up: bool) -> Result<(), LabError> {
        run(&[
            "ip",
            "-n",
            &router.host.ns,
            "link",
            "set",
            "wan",
            if up { "up" } else { "down" },
        ])
        .map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        self.delayed.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ns::remove_etc(ns);
        }
    }
}

/// Replaces `router`'s nftables table `table` with a forward-hook filter
/// of `rules` (ahead of the NAT's own filter), or removes it (`None`).
fn forward_filter(router: &Router, table: &str, rules: Option<&str>) -> Result<(), LabError> {
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &router.host.ns,
            "nft",
            "delete",
            "table",
            "inet",
            table,
        ])
        .output();
    let Some(rules) = rules else {
        return Ok(());
    };
    nft(
        &router.host.ns,
        &format!(
            "table inet {table} {{\n chain forward {{\n  type filter hook forward priority -10;\n  {rules}\n }}\n}}\n"
        ),
    )
}

/// Installs `kind`'s NAT rules on router namespace `ns` (WAN address `wan`);
/// `first_peer` receives unsolicited inbound UDP for `FullCone`; `firewall`
/// drops unsolicited packets to the router itself.
fn nat_rules(
    ns: &str,
    kind: NatKind,
    wan: Ipv4Addr,
    first_peer: Ipv4Addr,
    firewall: bool,
) -> Result<(), LabError> {
    let masquerade = match kind {
        NatKind::Symmetric => "masquerade fully-random".to_string(),
        NatKind::Sequential => {
            let ports: Vec<String> = (0..SEQUENTIAL_PORTS)
                .map(|i| format!("{i} : {}", SEQUENTIAL_FIRST_PORT + i))
                .collect();
            format!(
                "meta l4proto udp snat to {wan} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}\n  oifname \"wan\" masquerade",
                ports.join(", ")
            )
        }
        _ => "masquerade".to_string(),
    };
    let inbound = match kind {
        NatKind::FullCone => format!(
            " chain pre {{\n  type nat hook prerouting priority dstnat;\n  iifname \"wan\" udp dport 1024-65535 dnat to {first_peer}\n }}\n"
        ),
        _ => String::new(),
    };
    nft(
        ns,
        &format!(
            "table ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  oifname \"wan\" {masquerade}\n }}\n{inbound}}}\n"
        ),
    )?;
    if kind == NatKind::ProxyOnly {
        nft(
            ns,
            "table inet proxyonly {\n chain forward {\n  type filter hook forward priority filter;\n  oifname \"wan\" drop\n }\n}\n",
        )?;
    }
    if kind == NatKind::HttpsOnly {
        nft(
            ns,
            "table inet httpsonly {\n chain forward {\n  type filter hook forward priority filter;\n  oifname \"wan\" tcp dport 443 accept\n  oifname \"wan\" drop\n }\n}\n",
        )?;
    }
    if kind == NatKind::UdpBlocked {
        nft(
            ns,
            "table inet udpblock {\n chain forward {\n  type filter hook forward priority filter;\n  oifname \"wan\" meta l4proto udp drop\n }\n}\n",
        )?;
    }
    // Like a home router's firewall: unsolicited packets from the WAN to the router
    // itself are dropped. This matters for punching: a dropped packet's conntrack
    // entry is never confirmed, while an accepted one records the peer's early
    // probe as an inbound flow, and masquerade then gives the peer behind it
    // another port toward that peer, turning a port-restricted NAT into a
    // symmetric one for that pair (burrow's opening probes keep that from
    // happening; the lab builds both kinds of router to prove it).
    if !firewall {
        return Ok(());
    }
    nft(
        ns,
        "table inet firewall {\n chain input {\n  type filter hook input priority filter;\n  icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n  iifname \"wan\" ct state new drop\n }\n}\n",
    )
}

/// The IPv6 firewall of a home router: from the WAN, only packets of flows
/// the LAN started (and errors about them) are forwarded.
fn firewall6(ns: &str) -> Result<(), LabError> {
    nft(
        ns,
        "table ip6 firewall6 {\n chain forward {\n  type filter hook forward priority filter;\n  iifname \"wan\" ct state established,related accept\n  iifname \"wan\" drop\n }\n}\n",
    )
}

fn nft(ns: &str, ruleset: &str) -> Result<(), LabError> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(ruleset.as_bytes())?;
            child.wait_with_output()
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("nft -f - <<< {ruleset}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Gives interface `ifname` in namespace `ns` the address `addr`/24.
fn add_addr(ns: &str, ifname: &str, addr: Ipv4Addr) -> Result<(), LabError> {
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        ifname,
    ])
    .map(|_| ())
}

/// Gives interface `ifname` in namespace `ns` the IPv6 address `addr`/`len`.
fn add_addr6(ns: &str, ifname: &str, addr: Ipv6Addr, len: u8) -> Result<(), LabError> {
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/{len}"),
        "dev",
        ifname,
        "nodad",
    ])
    .map(|_| ())
}

/// Sets kernel parameter `setting` (`name=value`) in namespace `ns`.
fn sysctl(ns: &str, setting: &str) -> Result<(), LabError> {
    run(&["ip", "netns", "exec", ns, "sysctl", "-qw", setting]).map(|_| ())
}

/// Routes everything from namespace `ns` through `gw`.
fn add_default_route(ns: &str, gw: Ipv4Addr) -> Result<(), LabError> {
    add_route(ns, "default", gw)
}

/// Routes `dest` (a prefix, or `default`) from namespace `ns` through `via`,
/// in `via`'s family.
fn add_route(ns: &str, dest: &str, via: impl Into<std::net::IpAddr>) -> Result<(), LabError> {
    let via = via.into();
    let family = if via.is_ipv4() { "-4" } else { "-6" };
    run(&[
        "ip",
        "-n",
        ns,
        family,
        "route",
        "add",
        dest,
        "via",
        &via.to_string(),
    ])
    .map(|_| ())
}

/// Runs a command, failing with its stderr.
fn run(args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_available() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::Unavailable(
            "needs root (network namespaces and nftables)".into(),
        ));
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
    ] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Err(LabError::Unavailable(format!(
                "`{tool}` is missing (apt-get install {pkg})"
            )));
        }
    }
    Ok(())
}
