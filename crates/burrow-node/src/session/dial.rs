//! Reaching the server: its name resolved to an address our socket can use,
//! then UDP, TCP and HTTPS raced (or, where the name resolves only on a
//! proxy's side, HTTPS through the proxy by name).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use burrow_net::https::Via;
use burrow_net::ConnectError;
use burrow_proto::addr::ServerAddr;
use burrow_proto::rendezvous;
use burrow_proto::NodeId;
use tracing::{debug, info};

use super::SessionError;
use crate::link::Inner;

/// How long UDP has the server to itself before TCP is tried beside it: a
/// handshake that works takes one round trip; one that hasn't answered by now
/// may be on a network that drops UDP.
const UDP_HEAD_START: Duration = Duration::from_secs(2);
/// How long a TCP connection to the server may take.
const TCP_CONNECT: Duration = Duration::from_secs(5);

/// How long UDP and TCP have the server to themselves before HTTPS is tried
/// beside them (a network that passes nothing else).
const HTTPS_HEAD_START: Duration = Duration::from_secs(4);
/// The HTTPS port tried when the server's address names none.
const DEFAULT_HTTPS_PORT: u16 = 443;

/// A connection to the server and its key, or why not.
pub(super) type Dialed = Result<(quinn::Connection, NodeId), ConnectError>;

/// Dials the server over UDP; when that has not answered within
/// [`UDP_HEAD_START`], over TCP beside it (QUIC over a TCP link, see
/// `burrow_net::tcp`); and after [`HTTPS_HEAD_START`], over HTTPS (a
/// WebSocket over TLS on the server's HTTPS port, through the proxy when one
/// is set: `burrow_net::https`). The first to connect wins. Returns the
/// address the session runs to (a link's virtual address over TCP or HTTPS)
/// and the outcome; when all fail, UDP's error.
pub(super) async fn dial(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    expected: Option<NodeId>,
) -> (SocketAddr, Dialed) {
    let ep = &inner.endpoint;
    let udp = ep.connect(addr, rendezvous::ALPN, expected);
    tokio::pin!(udp);
    tokio::select! {
        r = &mut udp => return (addr, r),
        _ = tokio::time::sleep(UDP_HEAD_START) => {}
    }
    // QUIC over a link once it is made; a wrong key is the answer, whichever
    // way it came. The links made are noted: those that lose the race are
    // closed (a server holds only a few per address).
    let made = std::sync::Mutex::new(Vec::new());
    let over = |link: Option<SocketAddr>, how: &'static str| {
        let made = &made;
        async move {
            let link = link?;
            made.lock().expect("never poisoned").push(link);
            match ep.connect(link, rendezvous::ALPN, expected).await {
                Ok(c) => Some((link, Ok(c))),
                Err(e @ ConnectError::WrongKey { .. }) => Some((link, Err(e))),
                Err(e) => {
                    debug!(%addr, error = %e, "QUIC over {how} failed");
                    None
                }
            }
        }
    };
    let tcp = async {
        let link = ep
            .dial_tcp(addr, TCP_CONNECT)
            .await
            .inspect_err(|e| debug!(%addr, error = %e, "no TCP either"))
            .ok();
        over(link, "TCP").await
    };
    // Only where the server says it listens there, or a proxy is the way
    // out (then its usual port): not at every web server on 443 whenever
    // a server is merely down.
    let https_port = inner.config.server.as_ref().and_then(|s| s.https).or(inner
        .config
        .proxy
        .is_some()
        .then_some(DEFAULT_HTTPS_PORT));
    let https = async {
        let port = https_port?;
        tokio::time::sleep(HTTPS_HEAD_START - UDP_HEAD_START).await;
        over(https_link(inner, addr, port).await, "HTTPS").await
    };
    tokio::pin!(tcp);
    tokio::pin!(https);
    let result = first_connected(addr, https_port, udp, tcp, https).await;
    let made: Vec<SocketAddr> = made.lock().expect("never poisoned").drain(..).collect();
    for link in made {
        if link != result.0 || result.1.is_err() {
            ep.close_link(link);
        }
    }
    result
}

/// The first of the ways to the server to connect (UDP's error when none does).
async fn first_connected(
    addr: SocketAddr,
    https_port: Option<u16>,
    mut udp: Pin<&mut impl Future<Output = Dialed>>,
    mut tcp: Pin<&mut impl Future<Output = Option<(SocketAddr, Dialed)>>>,
    mut https: Pin<&mut impl Future<Output = Option<(SocketAddr, Dialed)>>>,
) -> (SocketAddr, Dialed) {
    let (mut tcp_done, mut https_done) = (false, false);
    let mut udp_failed = None;
    loop {
        tokio::select! {
            r = &mut udp, if udp_failed.is_none() => {
                if r.is_ok() {
                    break (addr, r);
                }
                udp_failed = Some(r);
            }
            t = &mut tcp, if !tcp_done => match t {
                Some(t) => {
                    info!(server = %addr, "reaching the server over TCP (no answer over UDP)");
                    break t;
                }
                None => tcp_done = true,
            },
            h = &mut https, if !https_done => match h {
                Some(h) => {
                    info!(server = %addr, port = ?https_port, "reaching the server over HTTPS (no answer over UDP or TCP)");
                    break h;
                }
                None => https_done = true,
            },
        }
        if tcp_done && https_done {
            if let Some(r) = udp_failed {
                break (addr, r);
            }
        }
    }
}

/// Makes a link to the server over HTTPS on `port` (through the proxy when
/// one is set); `None` when that fails (logged).
async fn https_link(inner: &Inner, addr: SocketAddr, port: u16) -> Option<SocketAddr> {
    let proxy = inner.config.proxy.as_deref();
    let host = inner
        .config
        .server
        .as_ref()
        .map_or_else(|| addr.ip().to_string(), |s| s.host.clone());
    let to = SocketAddr::new(addr.ip(), port);
    let via = proxy.map_or(Via::Direct(to), |proxy| Via::Proxy {
        proxy,
        server: Some(to),
    });
    match inner.endpoint.dial_https(&host, port, via).await {
        Ok(link) => Some(link),
        Err(e) => {
            let via = proxy
                .map(|p| format!(" through the proxy {p}"))
                .unwrap_or_default();
            info!(%to, error = %e, "no HTTPS to the server{via}");
            None
        }
    }
}

/// Resolves `host` (host:port) to the address to dial from our socket at
/// `local`.
pub(super) async fn server_addr(host: &str, local: SocketAddr) -> Result<SocketAddr, SessionError> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(host)
        .await
        .map_err(|e| SessionError::Resolve {
            host: host.into(),
            reason: e.to_string(),
        })?
        .map(burrow_net::paths::canonical)
        .collect();
    pick_server_addr(local, &resolved).ok_or_else(|| SessionError::Resolve {
        host: host.into(),
        reason: if resolved.is_empty() {
            "no address".into()
        } else {
            format!(
                "no route from here to {} (is this machine online, and in that address family?)",
                resolved
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    })
}

/// Dials the server by name through the proxy (its HTTPS port, or 443):
/// for a name that resolves only on the proxy's side. Returns the link's
/// address and the QUIC outcome over it, or why no link was made.
pub(super) async fn dial_by_name(
    inner: &Arc<Inner>,
    server: &ServerAddr,
    expected: Option<NodeId>,
) -> Result<
    (
        SocketAddr,
        Result<(quinn::Connection, NodeId), ConnectError>,
    ),
    SessionError,
> {
    let ep = &inner.endpoint;
    let proxy = inner.config.proxy.as_deref().unwrap_or_default();
    let port = server.https.unwrap_or(DEFAULT_HTTPS_PORT);
    let via = Via::Proxy {
        proxy,
        server: None,
    };
    let link = ep
        .dial_https(&server.host, port, via)
        .await
        .map_err(|e| SessionError::Proxy {
            host: format!("{}:{port}", server.host),
            proxy: proxy.into(),
            reason: e.to_string(),
        })?;
    info!(server = %server.host, port, "reaching the server over HTTPS, by name through the proxy");
    let dialed = ep.connect(link, rendezvous::ALPN, expected).await;
    if dialed.is_err() {
        ep.close_link(link);
    }
    Ok((link, dialed))
}

/// The server address to dial of those `host` resolved to: one our socket
/// (bound at `local`) can send to and this machine has a route to, IPv4 first
/// (NAT measurements and port mappings are IPv4's; a dual-stack node finds
/// its IPv6 address through the server's Welcome).
fn pick_server_addr(local: SocketAddr, resolved: &[SocketAddr]) -> Option<SocketAddr> {
    let fits = |a: &SocketAddr| burrow_net::socket::takes(local, *a);
    let mut usable: Vec<SocketAddr> = resolved.iter().copied().filter(fits).collect();
    usable.sort_by_key(|a| a.is_ipv6());
    usable
        .iter()
        .copied()
        .find(|a| burrow_net::iface::has_route(*a))
        .or_else(|| usable.first().copied())
}
