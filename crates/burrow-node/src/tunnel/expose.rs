//! The exposing side: the services we offer and to whom, and serving the
//! tunnel connections peers open to reach them. A peer names a service,
//! never an address: we connect only to the address it was exposed with,
//! and only once the peer is allowed.

use std::collections::{BTreeMap, HashMap};
use std::future::ready;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_net::{FrameReader, FrameWriter, FramedError};
use burrow_proto::tunnel::{
    self, Allow, Offered, Refusal, ServiceName, Transport, TunnelFrame, MAX_SERVICES,
};
use burrow_proto::NodeId;
use burrow_store::StoredExposure;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::splice::{self, Ended};
use super::{Datagrams, Tunnels};
use crate::api::ExposureView;
use crate::error::ExposeError;
use crate::event::NodeEvent;

/// How long a peer has to send a stream's first frame.
const FIRST_FRAME: Duration = Duration::from_secs(10);
/// How long we try to reach an exposed TCP address.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnel connections one peer may have open to us at once (one is the
/// rule; a few cover a reconnect racing the old one's close).
const CONNS_PER_PEER: usize = 4;
/// TCP connections and UDP flows into our services at once, from everyone:
/// each holds a socket, and the node's own file descriptors must not run out.
const MAX_LIVE: usize = 512;

/// What we expose, with the connections into each.
pub(crate) struct Exposed {
    services: BTreeMap<ServiceName, Entry>,
    /// The tunnel connections each peer opened to us (closed with its link).
    conns: HashMap<NodeId, Vec<quinn::Connection>>,
    next: u64,
}

struct Entry {
    stored: StoredExposure,
    /// Connections and flows in, by id: who, and how to end it.
    live: HashMap<u64, (NodeId, CancellationToken)>,
}

/// A connection into a service, counted while it lives.
struct Ticket {
    tunnels: Arc<Tunnels>,
    service: ServiceName,
    id: u64,
    cancel: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(e) = self.tunnels.exposed().services.get_mut(&self.service) {
            e.live.remove(&self.id);
        }
    }
}

impl Exposed {
    pub(crate) fn new(list: Vec<StoredExposure>) -> Exposed {
        Exposed {
            services: list
                .into_iter()
                .map(|stored| {
                    let entry = Entry {
                        stored,
                        live: HashMap::new(),
                    };
                    (entry.stored.name.clone(), entry)
                })
                .collect(),
            conns: HashMap::new(),
            next: 0,
        }
    }

    /// What `peer` may reach.
    fn offered_to(&self, peer: &NodeId, contact: bool) -> Vec<Offered> {
        self.services
            .values()
            .filter(|e| e.stored.allow.admits(peer, contact))
            .map(|e| Offered {
                name: e.stored.name.clone(),
                transport: e.stored.transport,
            })
            .collect()
    }

    /// Lets `peer` into `service` over `transport`: the address to reach and
    /// the connection's id and cancellation.
    fn admit(
        &mut self,
        peer: NodeId,
        service: &ServiceName,
        transport: Transport,
        contact: bool,
    ) -> Result<(SocketAddr, u64, CancellationToken), Refusal> {
        let e = self
            .services
            .get(service)
            .filter(|e| e.stored.allow.admits(&peer, contact))
            .ok_or(Refusal::NotExposed)?;
        if e.stored.transport != transport {
            return Err(Refusal::WrongTransport);
        }
        let udp = transport == Transport::Udp;
        let (mut all, mut theirs, mut their_flows) = (0, 0, 0);
        for s in self.services.values() {
            for (p, _) in s.live.values() {
                all += 1;
                if *p == peer {
                    theirs += 1;
                    their_flows += usize::from(s.stored.transport == Transport::Udp);
                }
            }
        }
        let full = all >= MAX_LIVE
            || theirs >= tunnel::MAX_STREAMS as usize
            || (udp && their_flows >= tunnel::MAX_FLOWS);
        if full {
            return Err(Refusal::Busy);
        }
        let Some(e) = self.services.get_mut(service) else {
            return Err(Refusal::NotExposed);
        };
        self.next += 1;
        let cancel = CancellationToken::new();
        e.live.insert(self.next, (peer, cancel.clone()));
        Ok((e.stored.addr, self.next, cancel))
    }

    /// Exposes `stored` (or changes it); returns the connections to end:
    /// those of peers it no longer allows, or all if its address or
    /// transport changed.
    fn set(
        &mut self,
        stored: StoredExposure,
        contact: impl Fn(&NodeId) -> bool,
    ) -> Vec<CancellationToken> {
        let name = stored.name.clone();
        let Some(e) = self.services.get_mut(&name) else {
            self.services.insert(
                name,
                Entry {
                    stored,
                    live: HashMap::new(),
                },
            );
            return Vec::new();
        };
        let moved = e.stored.addr != stored.addr || e.stored.transport != stored.transport;
        let ended = e
            .live
            .values()
            .filter(|(peer, _)| moved || !stored.allow.admits(peer, contact(peer)))
            .map(|(_, c)| c.clone())
            .collect();
        e.stored = StoredExposure {
            added_at_ms: e.stored.added_at_ms,
            ..stored
        };
        ended
    }

    fn view(&self, e: &Entry, name_of: &impl Fn(&NodeId) -> String) -> ExposureView {
        ExposureView {
            name: e.stored.name.to_string(),
            addr: e.stored.addr.to_string(),
            transport: e.stored.transport.to_string(),
            allow: e.stored.allow.peers.iter().map(name_of).collect(),
            contacts: e.stored.allow.contacts,
            connections: e.live.len() as u64,
        }
    }
}

impl Tunnels {
    /// Exposes the local service at `addr` as `name` to the peers `allow`
    /// names (`contacts` for the contacts list). Exposing a name again
    /// changes it: allowed peers' connections stay, others' end.
    pub(crate) async fn expose(
        self: &Arc<Self>,
        name: &str,
        addr: &str,
        udp: bool,
        allow: &[String],
    ) -> Result<ExposureView, ExposeError> {
        let name: ServiceName = name.parse().map_err(ExposeError::BadName)?;
        let addr = local_addr(addr).await?;
        if allow.is_empty() {
            return Err(ExposeError::NobodyAllowed);
        }
        let mut rule = Allow::default();
        for who in allow {
            if who == "contacts" {
                rule.contacts = true;
            } else {
                let id = self.link.resolve(who).await?;
                if !rule.peers.contains(&id) {
                    rule.peers.push(id);
                }
            }
        }
        let stored = StoredExposure {
            name: name.clone(),
            addr,
            transport: if udp { Transport::Udp } else { Transport::Tcp },
            allow: rule,
            added_at_ms: self.link.wall_ms(),
        };
        {
            let ex = self.exposed();
            if !ex.services.contains_key(&name) && ex.services.len() >= MAX_SERVICES {
                return Err(ExposeError::TooMany);
            }
        }
        let kept = stored.clone();
        self.link.with_store(move |s| s.put_exposure(&kept)).await?;
        let ended = self.exposed().set(stored, |p| self.link.is_contact(p));
        for c in ended {
            c.cancel();
        }
        info!(service = %name, %addr, "exposed");
        self.exposure(&name)
            .ok_or(ExposeError::NoSuchService(name.to_string()))
    }

    /// Stops exposing `name`; its connections end.
    pub(crate) async fn unexpose(&self, name: &str) -> Result<(), ExposeError> {
        let name: ServiceName = name
            .parse()
            .map_err(|_| ExposeError::NoSuchService(name.to_string()))?;
        let kept = name.clone();
        if !self
            .link
            .with_store(move |s| s.remove_exposure(&kept))
            .await?
        {
            return Err(ExposeError::NoSuchService(name.to_string()));
        }
        if let Some(e) = self.exposed().services.remove(&name) {
            for (_, c) in e.live.values() {
                c.cancel();
            }
        }
        Ok(())
    }

    /// What we expose, by name, with live connection counts.
    pub(crate) fn exposures(&self) -> Vec<ExposureView> {
        let name_of = |p: &NodeId| self.link.shown_name(p);
        let ex = self.exposed();
        ex.services.values().map(|e| ex.view(e, &name_of)).collect()
    }

    fn exposure(&self, name: &ServiceName) -> Option<ExposureView> {
        let name_of = |p: &NodeId| self.link.shown_name(p);
        let ex = self.exposed();
        ex.services.get(name).map(|e| ex.view(e, &name_of))
    }

    /// Says (once a minute per peer) that `peer` was refused, and strikes a
    /// flood of refusals.
    pub(crate) fn refused(&self, peer: NodeId, text: impl FnOnce() -> String, abuse: bool) {
        let verdict = self
            .refusals
            .lock()
            .expect("refusals lock is never poisoned")
            .refused(peer, Instant::now());
        if verdict.log {
            let text = text();
            info!(peer = %peer.short(), "{text}");
            self.link.emit(NodeEvent::TunnelTrouble { text });
        }
        if abuse && verdict.strike {
            self.link.strike(peer, "a flood of refused tunnel streams");
        }
    }
}

/// The address a service is exposed at: `host:port`, or a bare port on
/// this machine's loopback.
async fn local_addr(addr: &str) -> Result<SocketAddr, ExposeError> {
    let bad = |why: &str| ExposeError::BadAddr(format!("{addr:?}: {why}"));
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A name is resolved once, now. IPv4 first: `localhost` often gives
    // ::1 first, where many a local service (python's http.server) isn't.
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| bad(&e.to_string()))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| bad("the name has no address"))
}

/// Serves a tunnel connection `peer` opened, until it closes.
pub(crate) async fn serve(tunnels: Arc<Tunnels>, peer: NodeId, conn: quinn::Connection) {
    {
        let mut ex = tunnels.exposed();
        let open = ex.conns.entry(peer).or_default();
        if open.len() >= CONNS_PER_PEER {
            drop(ex);
            conn.close(
                burrow_net::Close::TooManyConnections.code(),
                b"too many tunnel connections",
            );
            return;
        }
        open.push(conn.clone());
    }
    conn.set_max_concurrent_bi_streams(tunnel::MAX_STREAMS.into());
    let datagrams = Arc::new(Datagrams::default());
    let (d, c) = (datagrams.clone(), conn.clone());
    tunnels.link.spawn(async move { d.run(&c).await });
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (t, c, d) = (tunnels.clone(), conn.clone(), datagrams.clone());
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            stream(t, peer, c, d, send, recv).await;
        }));
    }
    let mut ex = tunnels.exposed();
    if let Some(open) = ex.conns.get_mut(&peer) {
        open.retain(|c| c.stable_id() != conn.stable_id());
        if open.is_empty() {
            ex.conns.remove(&peer);
        }
    }
}

impl Exposed {
    /// The tunnel connections `peer` opened, taken (its link went down).
    pub(crate) fn take_conns(&mut self, peer: &NodeId) -> Vec<quinn::Connection> {
        self.conns.remove(peer).unwrap_or_default()
    }
}

/// One stream a peer opened: a list, a TCP connection or a UDP flow.
async fn stream(
    tunnels: Arc<Tunnels>,
    peer: NodeId,
    conn: quinn::Connection,
    datagrams: Arc<Datagrams>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut reader = FrameReader::new(recv, tunnel::VERSION, tunnel::MAX_FRAME);
    let mut writer = FrameWriter::new(send, tunnel::VERSION, tunnel::MAX_FRAME);
    // A peer refused for misbehaving since its connection came in gets
    // nothing more on it.
    if tunnels.link.refused(&peer) {
        return;
    }
    let first = match tokio::time::timeout(FIRST_FRAME, reader.read::<TunnelFrame>()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Err(FramedError::Decode(e))) => {
            debug!(peer = %peer.short(), error = %e, "bad tunnel stream");
            tunnels.link.strike(peer, "a malformed tunnel frame");
            return;
        }
        // The stream or connection ended early: no fault of the frames.
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
    };
    let contact = tunnels.link.is_contact(&peer);
    let (service, transport, flow) = match first {
        TunnelFrame::List => {
            let offered = tunnels.exposed().offered_to(&peer, contact);
            let _ = writer.write(&TunnelFrame::Services { offered }).await;
            writer.finish();
            return;
        }
        TunnelFrame::Open {
            service,
            transport,
            flow,
        } if flow <= tunnel::MAX_FLOW => (service, transport, flow),
        other => {
            debug!(peer = %peer.short(), frame = ?other, "tunnel stream opened with a wrong frame");
            tunnels
                .link
                .strike(peer, "a tunnel stream opened with a wrong frame");
            return;
        }
    };
    let admitted = tunnels.exposed().admit(peer, &service, transport, contact);
    let (addr, id, cancel) = match admitted {
        Ok(a) => a,
        Err(why) => {
            tunnels.not_admitted(peer, &service, why);
            refuse(writer, why).await;
            return;
        }
    };
    let ticket = Ticket {
        tunnels: tunnels.clone(),
        service: service.clone(),
        id,
        cancel,
    };
    match transport {
        Transport::Tcp => tcp(&ticket, peer, addr, reader, writer).await,
        Transport::Udp => {
            super::udp::serve_flow(
                (&ticket.tunnels, &service, &ticket.cancel),
                (peer, addr),
                (&conn, &datagrams, flow),
                (reader, writer),
            )
            .await
        }
    }
}

impl Tunnels {
    /// Says `peer` was not let into `service`, for `why`. Asking for what one
    /// may not have is abuse only in a flood; a busy or mistaken open is not.
    fn not_admitted(&self, peer: NodeId, service: &ServiceName, why: Refusal) {
        let name = self.link.shown_name(&peer);
        let said = match why {
            Refusal::WrongTransport => "the service carries the other transport",
            Refusal::Busy => "too many of theirs open",
            _ => "not exposed to them",
        };
        self.refused(
            peer,
            || format!("refused {name}'s connection to \"{service}\": {said}"),
            why == Refusal::NotExposed,
        );
    }
}

/// Answers an `Open` with a refusal, and ends the stream.
pub(super) async fn refuse(mut writer: FrameWriter, why: Refusal) {
    let _ = writer.write(&TunnelFrame::Refused { why }).await;
    writer.finish();
}

/// Connects a peer's TCP stream to `addr`.
async fn tcp(
    ticket: &Ticket,
    peer: NodeId,
    addr: SocketAddr,
    reader: FrameReader,
    mut writer: FrameWriter,
) {
    let tunnels = &ticket.tunnels;
    let dialed = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
    let tcp = match dialed {
        Ok(Ok(tcp)) => tcp,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {DIAL_TIMEOUT:?}"),
            };
            let (name, service) = (tunnels.link.shown_name(&peer), &ticket.service);
            tunnels.refused(
                peer,
                || format!("{name}'s connection to \"{service}\" reset: nothing answers at {addr} ({why})"),
                false,
            );
            refuse(writer, Refusal::Unreachable).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if writer.write(&TunnelFrame::Opened).await.is_err() {
        return;
    }
    let (send, recv) = (writer.into_inner(), reader.into_inner());
    let (mut rd, mut wr) = tcp.into_split();
    let bytes = splice::Bytes::default();
    let recv = ready(Ok(recv));
    let ended = splice::splice(&mut rd, &mut wr, send, recv, &bytes, &ticket.cancel).await;
    if let Ended::Reset(why) = ended {
        debug!(peer = %peer.short(), service = %ticket.service, ?why, "tunnel connection reset");
        splice::reset_halves(rd, wr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> NodeId {
        burrow_proto::SecretKey::from_bytes(&[n; 32]).public()
    }

    fn web(allow: Vec<NodeId>) -> StoredExposure {
        StoredExposure {
            name: "web".parse().unwrap(),
            addr: "127.0.0.1:8080".parse().unwrap(),
            transport: Transport::Tcp,
            allow: Allow {
                peers: allow,
                contacts: false,
            },
            added_at_ms: 1,
        }
    }

    #[test]
    fn only_allowed_peers_are_let_in_or_told_of_a_service() {
        let mut ex = Exposed::new(vec![web(vec![key(1)])]);
        let name: ServiceName = "web".parse().unwrap();
        assert_eq!(ex.offered_to(&key(1), false).len(), 1);
        assert!(ex.offered_to(&key(2), true).is_empty());
        assert!(ex.admit(key(1), &name, Transport::Tcp, false).is_ok());
        assert_eq!(
            ex.admit(key(2), &name, Transport::Tcp, false).err(),
            Some(Refusal::NotExposed)
        );
        assert_eq!(
            ex.admit(key(2), &"nope".parse().unwrap(), Transport::Tcp, false)
                .err(),
            Some(Refusal::NotExposed),
            "a missing service reads the same as a refused one"
        );
        assert_eq!(
            ex.admit(key(1), &name, Transport::Udp, false).err(),
            Some(Refusal::WrongTransport)
        );
    }

    #[test]
    fn one_peer_cannot_hold_more_than_its_share() {
        let mut ex = Exposed::new(vec![web(vec![key(1), key(2)])]);
        let name: ServiceName = "web".parse().unwrap();
        for _ in 0..tunnel::MAX_STREAMS {
            assert!(ex.admit(key(1), &name, Transport::Tcp, false).is_ok());
        }
        assert_eq!(
            ex.admit(key(1), &name, Transport::Tcp, false).err(),
            Some(Refusal::Busy)
        );
        assert!(
            ex.admit(key(2), &name, Transport::Tcp, false).is_ok(),
            "another peer still gets in"
        );
    }

    #[test]
    fn changing_allow_ends_only_the_connections_no_longer_allowed() {
        let mut ex = Exposed::new(vec![web(vec![key(1), key(2)])]);
        let name: ServiceName = "web".parse().unwrap();
        let (_, _, one) = ex.admit(key(1), &name, Transport::Tcp, false).unwrap();
        let (_, _, two) = ex.admit(key(2), &name, Transport::Tcp, false).unwrap();
        let ended = ex.set(web(vec![key(1)]), |_| false);
        assert_eq!(ended.len(), 1);
        ended[0].cancel();
        assert!(two.is_cancelled() && !one.is_cancelled());
        // A new address ends everything.
        let mut moved = web(vec![key(1)]);
        moved.addr = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(
            ex.set(moved, |_| false).len(),
            2,
            "a new address ends every connection open"
        );
    }
}
