//! Datagrams with a chosen TTL, and how many hops away our NATs are.
//!
//! An opening probe ([`burrow_proto::punch`]) must pass our own NATs and die
//! before it reaches the peer's. Its TTL is one more than the hops that belong
//! to our side: [`nat_hops`] sends a datagram toward the server with TTL 1, 2,
//! … and reads the ICMP "time exceeded" each hop answers with (Linux's
//! `IP_RECVERR`, no privileges needed, as `tracepath` does). Hops that answer
//! from a private or shared address (RFC 1918, RFC 6598's carrier-grade NAT
//! range) are inside our home or carrier network; the first that answers from
//! a public address, or not at all, is past every NAT of ours.
//!
//! On a socket others send from too (quinn sends from the node's socket at any
//! moment), the TTL goes with the one datagram, as an `IP_TTL` or
//! `IPV6_HOPLIMIT` control message; it never changes the socket's own. That
//! is Linux. Elsewhere (macOS, Windows) the socket's TTL is lowered for the
//! one send and put back: a QUIC packet quinn sends in that instant leaves
//! with the low TTL too, dies on the way, and is sent again as any lost
//! packet is. The hop measurement is Linux's alone; other systems assume
//! one NAT ([`open_ttl`]).
//!
//! This module and [`crate::socket`] are burrow-net's only platform code.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;
use std::time::Duration;
#[cfg(target_os = "linux")]
use std::time::Instant;

use socket2::SockRef;

/// The most hops [`nat_hops`] looks at (a home router behind a carrier NAT
/// behind another is three).
pub const MAX_NAT_HOPS: u8 = 3;

/// Sends `data` to `to` from `socket` with IP TTL (or IPv6 hop limit) `ttl`,
/// for this datagram only. An IPv4 destination on an IPv6 socket must come
/// IPv4-mapped ([`crate::socket::on_wire`]).
pub fn send_with_ttl(socket: SockRef<'_>, to: SocketAddr, data: &[u8], ttl: u8) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return send_with_ttl_cmsg(socket.as_raw_fd(), to, data, ttl);
    #[cfg(not(target_os = "linux"))]
    {
        // One at a time: two probes interleaving could each put back the
        // other's low TTL for good.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let ipv6 = crate::paths::canonical(to).is_ipv6();
        let usual = ttl_of(&socket, ipv6)?;
        set_ttl(&socket, ipv6, ttl)?;
        let sent = socket.send_to(data, &to.into());
        set_ttl(&socket, ipv6, usual)?;
        sent.map(|_| ())
    }
}

/// [`send_with_ttl`] with the TTL in a control message: this datagram's alone.
#[cfg(target_os = "linux")]
fn send_with_ttl_cmsg(fd: i32, to: SocketAddr, data: &[u8], ttl: u8) -> io::Result<()> {
    let (mut storage, len) = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let value = libc::c_int::from(ttl);
    // An IPv4-mapped destination (an IPv4 peer of a dual-stack socket) goes
    // out as IPv4: its TTL is IPv4's (the kernel ignores a hop limit there).
    let (level, kind) = match crate::paths::canonical(to) {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TTL),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT),
    };
    // Room for one control message holding a c_int, aligned as cmsghdr is.
    let mut control = [0u64; 8];
    // SAFETY: `msg` points at live buffers for the duration of the call:
    // the address, one iovec over `data`, and `control`, which is large and
    // aligned enough for one cmsghdr and a c_int (CMSG_SPACE is checked).
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        assert!(space <= std::mem::size_of_val(&control));
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &mut storage as *mut libc::sockaddr_storage as *mut libc::c_void;
        msg.msg_namelen = len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, value);
        if libc::sendmsg(fd, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the TTL of every packet `socket` (a TCP socket of ours, not shared)
/// sends from now on: IPv4's TTL, or IPv6's hop limit when `ipv6`. An IPv6
/// socket sending IPv4 (mapped) takes IPv4's option where the system has it
/// on such sockets (Linux, Windows), else its hop limit.
pub fn set_ttl(socket: &socket2::Socket, ipv6: bool, ttl: u8) -> io::Result<()> {
    let ttl = u32::from(ttl);
    if ipv6 {
        return socket.set_unicast_hops_v6(ttl);
    }
    socket.set_ttl_v4(ttl).or_else(|e| match is_v6(socket) {
        true => socket.set_unicast_hops_v6(ttl),
        false => Err(e),
    })
}

/// The TTL `socket` sends with now (for `ipv6` or not, as [`set_ttl`]).
pub fn ttl_of(socket: &socket2::Socket, ipv6: bool) -> io::Result<u8> {
    let ttl = if ipv6 {
        socket.unicast_hops_v6()?
    } else {
        match socket.ttl_v4() {
            Ok(t) => t,
            Err(_) if is_v6(socket) => socket.unicast_hops_v6()?,
            Err(e) => return Err(e),
        }
    };
    Ok(ttl.clamp(1, 255) as u8)
}

fn is_v6(socket: &socket2::Socket) -> bool {
    socket
        .local_addr()
        .is_ok_and(|a| a.as_socket().is_some_and(|a| a.is_ipv6()))
}

/// A socket as the system names it (a descriptor, or a Windows `SOCKET`):
/// how a socket that a pending connect owns is reached ([`set_ttl_raw`]).
#[cfg(unix)]
pub type RawSocket = std::os::fd::RawFd;
/// A socket as the system names it (a descriptor, or a Windows `SOCKET`):
/// how a socket that a pending connect owns is reached ([`set_ttl_raw`]).
#[cfg(windows)]
pub type RawSocket = std::os::windows::io::RawSocket;

/// The system's name for `socket`.
pub fn raw_socket(socket: &tokio::net::TcpSocket) -> RawSocket {
    #[cfg(unix)]
    return std::os::fd::AsRawFd::as_raw_fd(socket);
    #[cfg(windows)]
    return std::os::windows::io::AsRawSocket::as_raw_socket(socket);
}

/// [`set_ttl`] on a socket known by its system name (one a pending connect
/// owns); `raw` must stay open for the call.
pub fn set_ttl_raw(raw: RawSocket, ipv6: bool, ttl: u8) -> io::Result<()> {
    // SAFETY: the caller keeps the socket open for the call.
    #[cfg(unix)]
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    // SAFETY: as above.
    #[cfg(windows)]
    let borrowed = unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(raw) };
    set_ttl(&SockRef::from(&borrowed), ipv6, ttl)
}

#[cfg(target_os = "linux")]
fn setsockopt_int(fd: i32, level: i32, kind: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live c_int of the length given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            kind,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; we fill in one family's
    // fields, within its size.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let sin = &mut s as *mut libc::sockaddr_storage as *mut libc::sockaddr_in;
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (
                    s,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut s as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6;
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr.s6_addr = v6.ip().octets();
                (*sin6).sin6_scope_id = v6.scope_id();
                (
                    s,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    }
}

/// Whether a hop answering from `ip` is inside a home or carrier network.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn is_inside(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || ip.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

/// A measurement of how many hops our NATs reach: its datagrams are sent when
/// it is made ([`HopProbe::send`]), its answers read later
/// ([`HopProbe::collect`]). Sending first matters on a sequential NAT: the
/// probe's one new mapping must come before the node measures its mapping,
/// not between that measurement and a punch.
#[derive(Debug)]
pub struct HopProbe {
    socket: Option<std::net::UdpSocket>,
}

impl HopProbe {
    /// Sends a datagram toward `server` with TTL 1, 2, … (at once, from a
    /// socket of its own). Sends nothing for IPv6 (no NAT of ours to pass) or
    /// where `IP_RECVERR` doesn't exist.
    pub fn send(server: SocketAddr) -> HopProbe {
        HopProbe {
            socket: Self::try_send(server),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn try_send(_server: SocketAddr) -> Option<std::net::UdpSocket> {
        None
    }

    #[cfg(target_os = "linux")]
    fn try_send(server: SocketAddr) -> Option<std::net::UdpSocket> {
        let SocketAddr::V4(_) = crate::paths::canonical(server) else {
            return None;
        };
        let server = crate::paths::canonical(server);
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        socket.set_nonblocking(true).ok()?;
        setsockopt_int(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVERR, 1).ok()?;
        for ttl in 1..=MAX_NAT_HOPS + 1 {
            // Two bytes no server reads as anything; the second says which hop.
            // A send that reports an earlier hop's ICMP error (the socket's
            // pending error) sent nothing: send again (bounded).
            for _ in 0..3 {
                if send_with_ttl((&socket).into(), server, &[0, ttl], ttl).is_ok() {
                    break;
                }
            }
        }
        Some(socket)
    }

    /// How many hops from us our NATs reach (1 behind a home router, 2
    /// behind a carrier NAT too), from the answers that came within `wait`;
    /// `None` when no hop answered (routers that send no ICMP, or nothing was
    /// sent). Blocking: run it off the async threads.
    pub fn collect(self, wait: Duration) -> Option<u8> {
        let socket = self.socket?;
        Self::read_hops(&socket, wait)
    }

    #[cfg(not(target_os = "linux"))]
    fn read_hops(_socket: &std::net::UdpSocket, _wait: Duration) -> Option<u8> {
        None
    }

    #[cfg(target_os = "linux")]
    fn read_hops(socket: &std::net::UdpSocket, wait: Duration) -> Option<u8> {
        let mut answered: [Option<Ipv4Addr>; MAX_NAT_HOPS as usize + 2] = Default::default();
        let end = Instant::now() + wait;
        // Bounded: a few reads per hop we sent to, and the deadline.
        for _ in 0..(4 * (MAX_NAT_HOPS as usize + 1)) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some((ttl, from)) = read_time_exceeded(socket, left) {
                if let Some(slot) = answered.get_mut(usize::from(ttl)) {
                    *slot = Some(from);
                }
                if answered[1..]
                    .iter()
                    .any(|a| a.is_some_and(|ip| !is_inside(ip)))
                {
                    break;
                }
            }
        }
        answered[1]?;
        let inside = answered[1..]
            .iter()
            .take_while(|a| a.is_some_and(is_inside))
            .count();
        Some(inside.clamp(1, MAX_NAT_HOPS.into()) as u8)
    }
}

/// Waits up to `wait` for one ICMP "time exceeded" on `socket`'s error queue:
/// the hop number our datagram carried and the address of the router that
/// dropped it.
#[cfg(target_os = "linux")]
fn read_time_exceeded(socket: &std::net::UdpSocket, wait: Duration) -> Option<(u8, Ipv4Addr)> {
    let fd = socket.as_raw_fd();
    let mut pfd = libc::pollfd {
        fd,
        events: 0, // errors are always reported as POLLERR
        revents: 0,
    };
    let ms = wait.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one live pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready <= 0 {
        return None;
    }
    let mut data = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u64; 64];
    // SAFETY: msg points at live buffers; the kernel writes at most their
    // lengths; the control messages are walked with the CMSG macros within
    // msg_controllen, and the offender address follows the extended error in
    // the same message (as ip(7) documents for SO_EE_OFFENDER).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE);
        if n < 2 {
            return None;
        }
        let hop = data[1];
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                let ee = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                let e = std::ptr::read_unaligned(ee);
                const ICMP_TIME_EXCEEDED: u8 = 11;
                if e.ee_origin == libc::SO_EE_ORIGIN_ICMP && e.ee_type == ICMP_TIME_EXCEEDED {
                    let sin = std::ptr::read_unaligned(ee.add(1) as *const libc::sockaddr_in);
                    if i32::from(sin.sin_family) == libc::AF_INET {
                        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        return Some((hop, ip));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    None
}

/// The TTL of opening probes for a node whose NATs are `hops` deep (measured
/// or not): one hop past them.
pub fn open_ttl(hops: Option<u8>) -> u8 {
    hops.unwrap_or(1).clamp(1, MAX_NAT_HOPS) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_sent_with_a_ttl_arrives_on_loopback() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        send_with_ttl((&tx).into(), rx.local_addr().unwrap(), b"opening", 2).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"opening"[..], tx.local_addr().unwrap())
        );
    }

    /// Reads one datagram and the TTL it arrived with (`IP_RECVTTL`).
    #[cfg(target_os = "linux")]
    fn recv_with_ttl(socket: &std::net::UdpSocket) -> (Vec<u8>, u8) {
        setsockopt_int(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTTL, 1).unwrap();
        let mut buf = [0u8; 64];
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: the buffers outlive the call; the control messages are read
        // only within the length the kernel reports.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
            assert!(n >= 0, "{}", io::Error::last_os_error());
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_TTL {
                    let ttl = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                    return (buf[..n as usize].to_vec(), ttl as u8);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        panic!("no TTL came with the datagram");
    }

    /// From a dual-stack socket to an IPv4 peer (mapped, as burrow sends),
    /// the datagram leaves as IPv4 with the TTL asked for, not the default.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_dual_stack_socket_sends_ipv4_with_the_ttl_asked() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = crate::socket::bind_udp("[::]:0".parse().unwrap()).unwrap();
        if !tx.local_addr().unwrap().is_ipv6() {
            eprintln!("SKIPPED: this machine has no IPv6 to make a dual-stack socket with");
            return;
        }
        let to = crate::socket::on_wire(true, rx.local_addr().unwrap());
        send_with_ttl((&tx).into(), to, b"opening", 3).unwrap();
        assert_eq!(recv_with_ttl(&rx), (b"opening".to_vec(), 3));
    }

    #[test]
    fn private_and_carrier_hops_are_inside() {
        for ip in ["10.0.3.1", "192.168.1.1", "100.64.7.1", "172.16.0.1"] {
            assert!(is_inside(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.51.100.1", "100.128.0.1", "8.8.8.8"] {
            assert!(!is_inside(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(open_ttl(None), 2);
        assert_eq!(open_ttl(Some(2)), 3);
        assert_eq!(open_ttl(Some(9)), MAX_NAT_HOPS + 1);
    }
}
