//! The server's STUN grid for NAT diagnosis (RFC 5780). The endpoint hands
//! it the Binding requests of the main socket (its STUN hook,
//! `burrow_net::Endpoint::set_stun_hook`); the alternates are its own sockets.
//!
//! The main socket (shared with QUIC) is the primary address A1:P1. The alternates
//! are A1:P2 (P2 = P1 + 1), and, when the server has a second address A2, A2:P1 and
//! A2:P2. A Binding request may ask (CHANGE-REQUEST) to be answered from the other
//! IP and/or port; the answer names where it came from (RESPONSE-ORIGIN, when the
//! socket's address is specific) and where the other address is (OTHER-ADDRESS; an
//! unspecified IP there means "this IP, the other port").
//!
//! Whether such an answer gets through tells the client how its NAT filters; where
//! its mapping changes between A1:P1, A2:P1 and A2:P2 tells how it maps.
//!
//! One more socket, A1:P3 (P3 = P1 + 2), answers plain Binding requests from
//! itself: a running node measures there how its NAT allocates ports (the
//! public port toward P1 against the one toward P3). It is apart from the
//! RFC 5780 sockets so that measuring opens no filter those tests look at.
//!
//! Every answer leaves from the address its request arrived at. A server bound
//! to every address learns that address from the kernel (IP_PKTINFO /
//! IPV6_PKTINFO, through quinn's UDP layer, as QUIC does) and sends from it:
//! otherwise the kernel picks the outgoing interface's primary address, which on
//! a host whose public address is secondary, floating or on a loopback
//! interface is not the one the client asked, and a NAT in front of the client
//! drops the answer.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use burrow_proto::stun::{self, Request};
use quinn::udp::{RecvMeta, Transmit};
use quinn::AsyncUdpSocket;
use tokio::task::JoinHandle;

use burrow_net::socket::RawSender;
use burrow_net::Endpoint;

/// Decides whether a STUN request from an address is answered, and how (see
/// [`StunGrid::set_gate`]): a server's rate limits and bans, and whether the
/// address is one of its registered nodes'. `None`: not answered.
pub type StunGate = Arc<dyn Fn(SocketAddr) -> Option<Caller> + Send + Sync>;

/// Told of each Binding request the grid answers on its main socket (its
/// transaction id and source): a server learns there where a node it knows
/// appears in the other address family (see [`StunGrid::set_witness`]).
pub type StunWitness = Arc<dyn Fn(&[u8; 12], SocketAddr) + Send + Sync>;

/// Who sent a STUN request, as far as answering goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An address with a node registered: answered in full (RFC 5780).
    Known,
    /// Anyone else, whose source address may be spoofed: answered in full only
    /// when the request is at least as large as the answer
    /// ([`stun::MAX_ANSWER`]), else with XOR-MAPPED-ADDRESS alone, and always
    /// at the port it came from (RESPONSE-PORT ignored). A spoofed request
    /// then draws no more than it cost, and only at the spoofed source.
    Stranger,
}

/// The alternate STUN sockets and the rules for answering from them.
pub struct StunGrid {
    gate: std::sync::OnceLock<StunGate>,
    witness: std::sync::OnceLock<StunWitness>,
    primary: SocketAddr,
    main: RawSender,
    alt_ip: Option<IpAddr>,
    alt_port: u16,
    /// P3: answers from itself, ignoring CHANGE-REQUEST.
    mapping_port: u16,
    alts: Vec<(SocketAddr, Arc<dyn AsyncUdpSocket>)>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for StunGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StunGrid")
            .field("primary", &self.primary)
            .field("alternates", &self.alternates())
            .finish()
    }
}

impl Drop for StunGrid {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .expect("tasks lock is never poisoned")
            .iter()
        {
            t.abort();
        }
    }
}

/// Why the grid could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// An alternate socket could not be bound.
    #[error("cannot bind STUN alternate {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A second address needs a specific primary address.
    #[error("a second address needs a specific listen address, not {0}")]
    WildcardPrimary(SocketAddr),
    /// The primary port has no next port.
    #[error("no port after {0} for the alternate STUN socket")]
    NoAltPort(u16),
}

impl StunGrid {
    /// Binds the alternates around `primary` (the main socket's address, sending
    /// through `main`) and starts answering on them. Call inside a tokio runtime.
    pub fn start(
        primary: SocketAddr,
        main: RawSender,
        alt_ip: Option<IpAddr>,
    ) -> Result<Arc<Self>, GridError> {
        let alt_port = primary
            .port()
            .checked_add(1)
            .ok_or(GridError::NoAltPort(primary.port()))?;
        let mapping_port = alt_port
            .checked_add(1)
            .ok_or(GridError::NoAltPort(primary.port()))?;
        if alt_ip.is_some() && primary.ip().is_unspecified() {
            return Err(GridError::WildcardPrimary(primary));
        }
        let mut addrs = vec![
            SocketAddr::new(primary.ip(), alt_port),
            SocketAddr::new(primary.ip(), mapping_port),
        ];
        if let Some(ip) = alt_ip {
            addrs.push(SocketAddr::new(ip, primary.port()));
            addrs.push(SocketAddr::new(ip, alt_port));
        }
        let mut alts = Vec::new();
        for addr in addrs {
            let bind = |addr| -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
                burrow_net::socket::for_quic(burrow_net::socket::bind_udp(addr)?)
            };
            let socket = bind(addr).map_err(|source| GridError::Bind { addr, source })?;
            alts.push((addr, socket));
        }
        let grid = Arc::new_cyclic(|weak: &std::sync::Weak<StunGrid>| {
            let tasks = alts
                .iter()
                .map(|(addr, socket)| tokio::spawn(serve(*addr, socket.clone(), weak.clone())))
                .collect();
            let tasks = std::sync::Mutex::new(tasks);
            StunGrid {
                gate: std::sync::OnceLock::new(),
                witness: std::sync::OnceLock::new(),
                primary,
                main,
                alt_ip,
                alt_port,
                mapping_port,
                alts,
                tasks,
            }
        });
        Ok(grid)
    }

    /// Stops answering and waits until the alternate sockets are closed (their
    /// ports can be bound again once this returns and the grid is dropped).
    pub async fn close(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock is never poisoned"));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// The alternate sockets' addresses.
    pub fn alternates(&self) -> Vec<SocketAddr> {
        self.alts.iter().map(|(a, _)| *a).collect()
    }

    fn other_ip(&self, ip: IpAddr) -> IpAddr {
        match self.alt_ip {
            Some(alt) if ip == alt => self.primary.ip(),
            Some(alt) => alt,
            None if ip.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    fn other_port(&self, port: u16) -> u16 {
        if port == self.alt_port {
            self.primary.port()
        } else {
            self.alt_port
        }
    }

    /// Answers only the requests `gate` lets through, as it says (on every
    /// socket of the grid); without a gate every caller is [`Caller::Known`].
    /// Set once; later calls are ignored.
    pub fn set_gate(&self, gate: StunGate) {
        let _ = self.gate.set(gate);
    }

    /// Tells `witness` of every request answered on the main socket. Set
    /// once; later calls are ignored.
    pub fn set_witness(&self, witness: StunWitness) {
        let _ = self.witness.set(witness);
    }

    /// Answers `req` from `from`, which arrived on our socket `arrived_on` at
    /// local address `to_ip` (when the socket could tell), unless the gate says
    /// no.
    pub fn answer(
        &self,
        arrived_on: SocketAddr,
        to_ip: Option<IpAddr>,
        from: SocketAddr,
        req: Request,
    ) {
        let caller = match self.gate.get() {
            Some(gate) => gate(from),
            None => Some(Caller::Known),
        };
        let Some(caller) = caller else {
            tracing::trace!(%from, "STUN request not answered (gate)");
            return;
        };
        if arrived_on == self.primary {
            if let Some(witness) = self.witness.get() {
                witness(req.tx.as_bytes(), from);
            }
        }
        let known = caller == Caller::Known;
        if !known && req.size < stun::MAX_ANSWER && (req.change.ip || req.change.port) {
            // A plain answer carries no RESPONSE-ORIGIN, and a client would
            // read it as changed as asked: better no answer than a wrong one.
            tracing::trace!(%from, "a stranger's unpadded CHANGE-REQUEST: not answered");
            return;
        }
        if !known && req.size < stun::MAX_ANSWER {
            let reply = stun::plain_response(req.tx, from);
            if let Some(Err(e)) = self.send_at(arrived_on, to_ip, from, &reply) {
                tracing::debug!(%from, error = %e, "STUN answer not sent");
            }
            return;
        }
        // The mapped address is where it came from; a known node's answer may
        // go to another port of its IP (RESPONSE-PORT), never to another IP.
        let port = req.response_port.filter(|_| known).unwrap_or(from.port());
        let to = SocketAddr::new(from.ip(), port);
        let other = SocketAddr::new(
            self.other_ip(arrived_on.ip()),
            self.other_port(arrived_on.port()),
        );
        let mut want = arrived_on;
        // P3 only measures mappings: it answers from itself, as asked or not.
        if arrived_on.port() != self.mapping_port {
            if req.change.ip && !other.ip().is_unspecified() {
                want.set_ip(other.ip());
            }
            if req.change.port {
                want.set_port(other.port());
            }
        }
        tracing::debug!(%arrived_on, %from, change_ip = req.change.ip, change_port = req.change.port, %want, "STUN request");
        let origin = |a: SocketAddr| (!a.ip().is_unspecified()).then_some(a);
        let advertised = self.alt_ip.map(|_| other);
        let reply = |at: SocketAddr| stun::binding_response(req.tx, from, origin(at), advertised);
        let from_socket = |at: SocketAddr| self.send_at(at, to_ip, to, &reply(at));
        // When we can't change as asked, we answer from where it arrived; the
        // client sees from RESPONSE-ORIGIN that nothing changed.
        let sent = from_socket(want).or_else(|| from_socket(arrived_on));
        if let Some(Err(e)) = sent {
            tracing::debug!(%want, %to, error = %e, "STUN answer not sent");
        }
    }

    /// Sends `data` to `to` from our socket `at`; a socket bound to every
    /// address sends from `to_ip`, the one the request reached (so changing
    /// the port, never the IP, on such a socket). `None` if `at` isn't ours.
    fn send_at(
        &self,
        at: SocketAddr,
        to_ip: Option<IpAddr>,
        to: SocketAddr,
        data: &[u8],
    ) -> Option<std::io::Result<()>> {
        let src = if at.ip().is_unspecified() {
            to_ip
        } else {
            None
        };
        if at == self.primary {
            return Some(self.main.send_from(to, src, data));
        }
        let (_, socket) = self.alts.iter().find(|(a, _)| *a == at)?;
        Some(socket.try_send(&Transmit {
            destination: burrow_net::socket::on_wire(at.is_ipv6(), to),
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: src,
        }))
    }
}

/// Answers Binding requests arriving on one alternate socket.
async fn serve(addr: SocketAddr, socket: Arc<dyn AsyncUdpSocket>, grid: std::sync::Weak<StunGrid>) {
    // Room for a batch the kernel coalesced (GRO: one source, equal sizes).
    let mut buf = vec![0u8; u16::MAX as usize];
    let mut meta = [RecvMeta::default()];
    loop {
        let received = std::future::poll_fn(|cx| {
            socket.poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta)
        })
        .await;
        if received.is_err() {
            // ICMP-born errors (a client gone) are routine; keep serving.
            tokio::task::yield_now().await;
            continue;
        }
        let m = meta[0];
        for datagram in buf[..m.len].chunks(m.stride.max(1)) {
            let Ok(req) = stun::parse_request(datagram) else {
                continue;
            };
            let Some(grid) = grid.upgrade() else { return };
            // A dual-stack socket's IPv4 callers are IPv4 to the answer (a
            // mapped address in XOR-MAPPED-ADDRESS would read as another one).
            let from = burrow_net::paths::canonical(m.addr);
            grid.answer(addr, m.dst_ip.map(|ip| ip.to_canonical()), from, req);
        }
    }
}

/// Starts the grid around `endpoint`'s socket (which must answer STUN) and
/// hands it the main socket's Binding requests. The alternates are the
/// main port + 1 and + 2, and with `alt_ip` those two ports and the main one
/// there.
pub fn start(endpoint: &Endpoint, alt_ip: Option<IpAddr>) -> Result<Arc<StunGrid>, GridError> {
    let primary = endpoint
        .local_addr()
        .expect("a bound socket has a local address");
    let grid = StunGrid::start(primary, endpoint.raw_sender().clone(), alt_ip)?;
    let weak = Arc::downgrade(&grid);
    endpoint.set_stun_hook(Arc::new(move |arrived_on, to_ip, from, req| {
        if let Some(grid) = weak.upgrade() {
            grid.answer(arrived_on, to_ip, from, req);
        }
    }));
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_net::EndpointConfig;
    use burrow_proto::stun::Change;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;
    use std::time::Duration;

    fn key(seed: u64) -> SecretKey {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn local() -> EndpointConfig {
        EndpointConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..EndpointConfig::default()
        }
    }

    #[tokio::test]
    async fn the_stun_grid_answers_from_where_it_is_asked_to() {
        // The alternate port is the main port + 1: retry if that one is taken.
        let (server, _grid) = (0..10)
            .find_map(|_| {
                let ep = Endpoint::bind(
                    &key(1),
                    EndpointConfig {
                        answer_stun: true,
                        ..local()
                    },
                )
                .ok()?;
                let grid = start(&ep, Some("127.0.0.2".parse().unwrap())).ok()?;
                Some((ep, grid))
            })
            .expect("a free pair of ports");
        let main = server.local_addr().unwrap();
        let alt_port = main.port() + 1;
        let client = Endpoint::bind(&key(2), local()).unwrap();
        let t = Duration::from_secs(2);
        let q =
            |to: SocketAddr, ip: bool, port: bool| client.stun_query(to, Change { ip, port }, t);

        let plain = q(main, false, false).await.unwrap();
        assert_eq!(plain.mapped, client.local_addr().unwrap());
        assert_eq!(plain.origin, Some(main));
        assert_eq!(
            plain.other,
            Some(SocketAddr::from(([127, 0, 0, 2], alt_port)))
        );
        let both = q(main, true, true).await.unwrap();
        assert_eq!(
            both.origin,
            Some(SocketAddr::from(([127, 0, 0, 2], alt_port)))
        );
        let port = q(main, false, true).await.unwrap();
        assert_eq!(
            port.origin,
            Some(SocketAddr::from(([127, 0, 0, 1], alt_port)))
        );
        // Asked on an alternate, answering from the main socket.
        let back = q(SocketAddr::from(([127, 0, 0, 2], alt_port)), true, true)
            .await
            .unwrap();
        assert_eq!(back.origin, Some(main));
        assert_eq!(back.mapped, plain.mapped);
    }
}
