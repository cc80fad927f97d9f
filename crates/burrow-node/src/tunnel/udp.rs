//! UDP through a tunnel: each flow is a stream (its lifetime, and the
//! carrier of payloads too large for a datagram) plus datagrams tagged with
//! its id. The exposing side gives each flow a socket of its own towards the
//! exposed address; the forwarding side keeps one flow per local client
//! address on its listening socket. A flow idle for [`tunnel::UDP_IDLE`]
//! either way ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::tunnel::{self, Refusal, ServiceName, Transport, TunnelFrame};
use burrow_proto::NodeId;
use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::forward::Forward;
use super::{Datagrams, Tunnels};

/// Payloads from the stream (the large ones) queued before the reader waits.
const PACKETS_QUEUED: usize = 16;

/// Where a flow's local datagrams come from.
enum LocalIn<'a> {
    /// A socket of the flow's own, connected to one address.
    Socket(&'a UdpSocket),
    /// The forward's listening socket's datagrams from one client.
    Queue(mpsc::Receiver<Bytes>),
}

impl LocalIn<'_> {
    async fn next(&mut self, buf: &mut [u8]) -> Option<Bytes> {
        match self {
            LocalIn::Socket(s) => loop {
                match s.recv(buf).await {
                    Ok(n) if n > tunnel::MAX_UDP_PAYLOAD => continue,
                    Ok(n) => return Some(Bytes::copy_from_slice(&buf[..n])),
                    // An ICMP unreachable from an earlier send: not fatal.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return None,
                }
            },
            LocalIn::Queue(q) => q.recv().await,
        }
    }
}

/// A flow's side towards the peer: its stream, and its datagrams on the
/// tunnel connection.
struct FlowLink<'a> {
    conn: &'a quinn::Connection,
    /// Its id in datagrams.
    id: u32,
    /// Its datagrams that came in ([`Datagrams`] hands them over).
    from_peer: mpsc::Receiver<Bytes>,
    reader: FrameReader,
    writer: FrameWriter,
}

/// A flow's local side: where its datagrams come from, and the socket (and,
/// unconnected, the address) they go back to.
struct Local<'a> {
    from: LocalIn<'a>,
    to: (&'a UdpSocket, Option<SocketAddr>),
}

/// Carries one flow until it idles, either end finishes it, or `cancel`;
/// counts its bytes in `counted`, if given.
async fn carry(
    link: FlowLink<'_>,
    local: Local<'_>,
    cancel: &CancellationToken,
    counted: Option<&super::splice::Bytes>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let FlowLink {
        conn,
        id: flow,
        mut from_peer,
        reader,
        mut writer,
    } = link;
    let Local {
        from: mut local_in,
        to: local_out,
    } = local;
    // The stream's frames, read apart from the loop (a frame read is not
    // safe to abandon halfway).
    let (packets_tx, mut packets) = mpsc::channel::<Vec<u8>>(PACKETS_QUEUED);
    let stream_read = async move {
        let mut reader = reader;
        while let Ok(Some(TunnelFrame::Packet { data })) = reader.read::<TunnelFrame>().await {
            // One too large for the other end's socket is dropped, not
            // the flow.
            if data.len() <= tunnel::MAX_UDP_PAYLOAD && packets_tx.send(data).await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(stream_read);
    let mut buf = vec![0u8; tunnel::MAX_UDP_PAYLOAD + 1];
    let mut idle_until = tokio::time::Instant::now() + tunnel::UDP_IDLE;
    let send_local = |data: &[u8]| {
        let (sock, to) = local_out;
        match to {
            Some(to) => sock.try_send_to(data, to).map(|_| ()),
            None => sock.try_send(data).map(|_| ()),
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(idle_until) => break,
            _ = &mut stream_read => break,
            d = local_in.next(&mut buf) => {
                let Some(d) = d else { break };
                if let Some(c) = counted {
                    c.out.fetch_add(d.len() as u64, Relaxed);
                }
                idle_until = tokio::time::Instant::now() + tunnel::UDP_IDLE;
                let datagram = tunnel::encode_datagram(flow, &d);
                if conn.max_datagram_size().is_some_and(|m| datagram.len() <= m) {
                    let _ = conn.send_datagram(datagram.into());
                } else if writer.write(&TunnelFrame::Packet { data: d.to_vec() }).await.is_err() {
                    break;
                }
            }
            Some(d) = from_peer.recv() => {
                if let Some(c) = counted {
                    c.back.fetch_add(d.len() as u64, Relaxed);
                }
                idle_until = tokio::time::Instant::now() + tunnel::UDP_IDLE;
                // A full socket buffer drops the datagram, as UDP would.
                let _ = send_local(&d);
            }
            Some(d) = packets.recv() => {
                if let Some(c) = counted {
                    c.back.fetch_add(d.len() as u64, Relaxed);
                }
                idle_until = tokio::time::Instant::now() + tunnel::UDP_IDLE;
                let _ = send_local(&d);
            }
        }
    }
    writer.finish();
}

/// The exposing side of flow `flow`, which `peer` opened to `service` at
/// `addr` on `conn` (whose datagrams `datagrams` hands out), until `cancel`.
pub(crate) async fn serve_flow(
    (tunnels, service, cancel): (&Tunnels, &ServiceName, &CancellationToken),
    (peer, addr): (NodeId, SocketAddr),
    (conn, datagrams, flow): (&quinn::Connection, &Datagrams, u32),
    (reader, mut writer): (FrameReader, FrameWriter),
) {
    let Some(from_peer) = datagrams.accept(flow) else {
        super::expose::refuse(writer, Refusal::Busy).await;
        return;
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) if s.connect(addr).await.is_ok() => s,
        _ => {
            let name = tunnels.link.shown_name(&peer);
            tunnels.refused(
                peer,
                || format!("{name}'s flow to \"{service}\": cannot send to {addr}"),
                false,
            );
            datagrams.close(flow);
            super::expose::refuse(writer, Refusal::Unreachable).await;
            return;
        }
    };
    if writer.write(&TunnelFrame::Opened).await.is_ok() {
        let link = FlowLink {
            conn,
            id: flow,
            from_peer,
            reader,
            writer,
        };
        let local = Local {
            from: LocalIn::Socket(&sock),
            to: (&sock, None),
        };
        carry(link, local, cancel, None).await;
    }
    datagrams.close(flow);
}

/// Serves a UDP forward's listening socket: each client address is a flow.
pub(crate) async fn forward(tunnels: Arc<Tunnels>, fwd: Arc<Forward>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut clients: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = vec![0u8; tunnel::MAX_UDP_PAYLOAD + 1];
    loop {
        let (n, from) = tokio::select! {
            _ = fwd.cancel.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    debug!(error = %e, "UDP forward socket failed");
                    return;
                }
            },
        };
        // Larger than any tunnel carries (an IPv6 jumbo, a truncated read):
        // dropped, as a link with a smaller MTU would.
        if n > tunnel::MAX_UDP_PAYLOAD {
            continue;
        }
        clients.retain(|_, tx| !tx.is_closed());
        if fwd.paused() {
            continue;
        }
        let tx = match clients.get(&from) {
            Some(tx) => tx.clone(),
            None if clients.len() >= tunnel::MAX_FLOWS => continue,
            None => {
                let (tx, rx) = mpsc::channel(super::FLOW_QUEUE);
                clients.insert(from, tx.clone());
                let (t, f, s) = (tunnels.clone(), fwd.clone(), sock.clone());
                tunnels
                    .link
                    .spawn(async move { client_flow(t, f, s, from, rx).await });
                tx
            }
        };
        let _ = tx.try_send(Bytes::copy_from_slice(&buf[..n]));
    }
}

/// One client's flow through a UDP forward.
async fn client_flow(
    tunnels: Arc<Tunnels>,
    fwd: Arc<Forward>,
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
) {
    let c = match tunnels.reach(fwd.stored.peer).await {
        Ok(c) => c,
        Err(e) => {
            fwd.trouble(&tunnels, &e.to_string());
            return;
        }
    };
    let Some((flow, from_peer)) = c.datagrams.open() else {
        fwd.trouble(&tunnels, "too many UDP flows at once");
        return;
    };
    let name = fwd.peer_name(&tunnels);
    let service = &fwd.stored.service;
    let opened =
        super::forward::open_stream(&c.conn, &name, service, (Transport::Udp, flow), |why| {
            fwd.refused(why)
        })
        .await;
    match opened {
        Ok((writer, reader)) => {
            fwd.carried(&tunnels, &c.conn);
            let _live = fwd.live();
            let link = FlowLink {
                conn: &c.conn,
                id: flow,
                from_peer,
                reader,
                writer,
            };
            let local = Local {
                from: LocalIn::Queue(rx),
                to: (&sock, Some(client)),
            };
            carry(link, local, &fwd.cancel, Some(&fwd.bytes)).await;
        }
        Err(e) => fwd.trouble(&tunnels, &e),
    }
    c.datagrams.close(flow);
}
