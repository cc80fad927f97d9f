//! Attackers against a real server on loopback, each from an address of its
//! own, while honest nodes go about their business: the honest side is
//! measured and must succeed.
//!
//! - forged and replayed answers to connect requests are refused, and enough
//!   of them get the forger's address banned;
//! - a flood of random datagrams and of half-open QUIC handshakes (real
//!   Initial packets from many addresses, never answered) leaves honest nodes
//!   able to register, connect and chat in normal time.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burrow_net::{Endpoint, EndpointConfig, FrameReader, FrameWriter};
use burrow_proto::rendezvous::{self, ClientMsg, CloseReason, LinkOffer, Refusal, ServerMsg};
use burrow_proto::{NodeId, SecretKey, ServerAddr};
use common::proc::*;
use common::raw::{Member, RawClient};
use rand::{Rng, RngCore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_answers_are_refused_and_the_forger_is_banned() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let alice = common::start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let mut mallory = RawClient::register("127.0.0.5:0", &server.url, "mallory", vec![]).await;
    common::wait_until("alice sees mallory", || common::online(&alice, "mallory")).await;
    let alice_id: NodeId = alice.id();
    let refused_no_request = |m: &ServerMsg| {
        matches!(
            m,
            ServerMsg::Refused {
                reason: Refusal::NoSuchRequest,
                ..
            }
        )
    };

    // An answer to a request nobody made.
    mallory.send(ClientMsg::Accept { peer: alice_id }).await;
    assert!(mallory.next(refused_no_request).await.is_some());

    // A real request, withdrawn; mallory's accept replayed after it.
    alice.connect("mallory").await.unwrap();
    let incoming = mallory
        .next(|m| matches!(m, ServerMsg::Incoming { .. }))
        .await;
    assert!(incoming.is_some());
    alice.cancel("mallory").await.unwrap();
    let closed = mallory
        .next(|m| matches!(m, ServerMsg::Closed { .. }))
        .await;
    assert!(matches!(
        closed,
        Some(ServerMsg::Closed {
            reason: CloseReason::Cancelled,
            ..
        })
    ));
    mallory.send(ClientMsg::Accept { peer: alice_id }).await;
    assert!(mallory.next(refused_no_request).await.is_some());
    assert_eq!(
        common::link(&alice, "mallory"),
        Some(burrow_node::api::ConnectionState::None),
        "a replayed accept must not link anyone"
    );

    // Forging on and on: the address is banned and the session closed.
    let mut banned = None;
    for _ in 0..30 {
        mallory.send(ClientMsg::Reject { peer: alice_id }).await;
        if let Some(m) = mallory
            .next(|m| {
                refused_no_request(m)
                    || matches!(
                        m,
                        ServerMsg::Refused {
                            reason: Refusal::Banned { .. },
                            ..
                        }
                    )
            })
            .await
        {
            if !refused_no_request(&m) {
                banned = Some(m);
                break;
            }
        }
    }
    assert!(banned.is_some(), "30 forged answers and no ban");
    let again = Endpoint::bind(
        &SecretKey::generate(&mut rand::rngs::OsRng),
        EndpointConfig {
            bind: "127.0.0.5:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        again
            .connect(server.addr, rendezvous::ALPN, server.url.key)
            .await
            .is_err(),
        "a banned address got a new connection"
    );
    // alice, elsewhere, carries on.
    common::wait_until("mallory gone", || !common::online(&alice, "mallory")).await;
    let bob = common::start_node(&dir.path().join("bob"), "bob", &server.url).await;
    common::connect_pair(&bob, &alice).await;
    bob.shutdown().await;
    alice.shutdown().await;
    server.stop().await;
}

/// Real QUIC Initial packets, each opening a different connection: made by a
/// client dialing a socket that never answers.
async fn capture_initials(n: usize) -> Vec<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = sink.local_addr().unwrap();
    let client = Arc::new(
        Endpoint::bind(
            &SecretKey::generate(&mut rand::rngs::OsRng),
            EndpointConfig {
                bind: "127.0.0.1:0".parse().unwrap(),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let dials: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                let _ = c.connect(to, rendezvous::ALPN, None).await;
            })
        })
        .collect();
    let packets = tokio::task::spawn_blocking(move || {
        let mut seen = std::collections::HashSet::new();
        let mut packets = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(len) = sink.recv(&mut buf) {
            // One per connection (retransmissions repeat the destination
            // connection id, which follows the first byte, version and length).
            let dcid = buf[6..6 + (buf[5] as usize).min(20)].to_vec();
            if len >= 1200 && seen.insert(dcid) {
                packets.push(buf[..len].to_vec());
            }
            if packets.len() >= n {
                break;
            }
        }
        packets
    })
    .await
    .unwrap();
    for d in dials {
        d.abort();
    }
    packets
}

/// `burrow up` with a node's real idle timeout (30 s). The flood fills
/// loopback's socket buffers, so a handshake packet may be lost and resent
/// after QUIC's ~1 s timer: the harness's 1.5 s test timeout would give up on
/// it, where a real node waits.
fn honest_up(home: &std::path::Path, url: &str, name: &str) -> Proc {
    let mut p = Proc::spawn(&[
        "--home",
        home.to_str().expect("a UTF-8 temp path"),
        "up",
        "--server",
        url,
        "--name",
        name,
        "--bind",
        "127.0.0.1:0",
    ]);
    p.expect_line("is up");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_junk_and_half_open_handshakes_leave_honest_nodes_working() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    let (mut server, url) = loopback_server(&srv, &[]);
    let server_addr: SocketAddr = url
        .parse::<ServerAddr>()
        .unwrap()
        .host_port()
        .parse()
        .unwrap();
    let initials = Arc::new(capture_initials(400).await);
    assert!(
        initials.len() >= 100,
        "captured {} Initials",
        initials.len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (junk_sent, initials_sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(20);
    // Random datagrams, some dressed as STUN, from 127.0.0.3.
    let junk = {
        let (stop, sent) = (stop.clone(), junk_sent.clone());
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.3:0").unwrap();
            let mut rng = rand::thread_rng();
            let mut d = [0u8; 1400];
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for _ in 0..1000 {
                    let len = rng.gen_range(1..1400);
                    rng.fill_bytes(&mut d[..len]);
                    if len > 20 && rng.gen_bool(0.25) {
                        d[0] &= 0x3f;
                        d[4..8].copy_from_slice(&burrow_proto::stun::MAGIC_COOKIE);
                    }
                    let _ = s.send_to(&d[..len], server_addr);
                }
                sent.fetch_add(1000, Ordering::Relaxed);
            }
        })
    };
    // Half-open handshakes: Initials from 64 ports of 127.0.0.4 and from 256
    // addresses 127.0.1.x, never answered.
    let half_open = {
        let (stop, sent, initials) = (stop.clone(), initials_sent.clone(), initials.clone());
        std::thread::spawn(move || {
            let mut sockets: Vec<UdpSocket> = (0..64)
                .map(|_| UdpSocket::bind("127.0.0.4:0").unwrap())
                .collect();
            sockets.extend((0..=255).map(|x| UdpSocket::bind(format!("127.0.1.{x}:0")).unwrap()));
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for s in &sockets {
                    let _ = s.send_to(&initials[i % initials.len()], server_addr);
                    i += 1;
                }
                sent.fetch_add(sockets.len() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Honest users, measured while it goes on.
    let (ah, bh) = (dir.path().join("alice"), dir.path().join("bob"));
    let (registered, linked) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let alice = honest_up(&ah, &url, "alice");
        let bob = honest_up(&bh, &url, "bob");
        let registered = t.elapsed();
        let t = Instant::now();
        link((&bh, "bob"), (&ah, "alice"));
        let (ok, out, err) = run(&bh, &["send", "alice", "hello under fire"]);
        assert!(ok, "{out}{err}");
        let linked = t.elapsed();
        drop((alice, bob));
        (registered, linked)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    junk.join().unwrap();
    half_open.join().unwrap();
    println!(
        "under {} junk datagrams and {} half-open handshakes: two nodes registered in {:?}, connected and chatted in {:?}",
        junk_sent.load(Ordering::Relaxed),
        initials_sent.load(Ordering::Relaxed),
        registered,
        linked
    );
    assert!(junk_sent.load(Ordering::Relaxed) > 10_000);
    assert!(initials_sent.load(Ordering::Relaxed) > 1_000);
    assert!(registered < Duration::from_secs(5), "{registered:?}");
    assert!(linked < Duration::from_secs(5), "{linked:?}");
    // The server still answers its operator, and is still running.
    let status = json(&srv, &["admin", "status"]);
    assert_eq!(status["policy"], "open");
    assert!(server.child.try_wait().unwrap().is_none(), "server died");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_others_punch_or_dial_addresses_by_introducing_strangers() {
    use burrow_proto::mesh::MeshFrame;
    use burrow_proto::punch::PunchTicket;
    let dir = tempfile::tempdir().unwrap();
    let ch = dir.path().join("carol");
    let (_carol, ticket) = tokio::task::spawn_blocking(move || {
        let p = serverless_up(&ch, "carol", None, &[]);
        let t = ticket(&ch);
        (p, t)
    })
    .await
    .unwrap();
    let ticket: burrow_proto::mesh::Ticket = ticket.parse().unwrap();
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let mut mallory = Member::dial(&ticket, ticket.secret, key)
        .await
        .expect("carol takes a member with the secret");

    // Twenty addresses mallory wants carol to send to.
    let (targets, hits, _listening) = counting_targets(9).await;
    // Introductions nobody asked for: to fake peers, at those addresses, some
    // telling carol to wait to be dialed, some telling her to dial.
    let mut rng = rand::rngs::OsRng;
    for (i, to) in targets.iter().enumerate() {
        let stranger = SecretKey::generate(&mut rng).public();
        mallory
            .writer
            .write(&MeshFrame::Introduction {
                peer: stranger,
                name: format!("stranger{i}").parse().unwrap(),
                candidates: vec![*to],
                punch: PunchTicket::random(&mut rng),
                dial: i % 2 == 0,
            })
            .await
            .unwrap();
    }
    // An honest punch probes at once and keeps at it for seconds, then tries
    // TCP: give it time to show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "carol sent packets or connections to addresses a member chose for her"
    );
}

/// Twenty addresses in 127.0.`net`.0/24, each a UDP socket and a TCP listener
/// of the test's own that count what reaches them; the counting stops when
/// the returned guard is dropped.
async fn counting_targets(net: u8) -> (Vec<SocketAddr>, Arc<AtomicU64>, AbortOnDrop) {
    let hits = Arc::new(AtomicU64::new(0));
    let mut targets = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let ip = std::net::Ipv4Addr::new(127, 0, net, 10 + i);
        let udp = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
        let h = hits.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                tokio::select! {
                    r = udp.recv_from(&mut buf) => if r.is_ok() { h.fetch_add(1, Ordering::Relaxed); },
                    c = tcp.accept() => if c.is_ok() { h.fetch_add(1, Ordering::Relaxed); },
                }
            }
        }));
        targets.push(addr);
    }
    (targets, hits, AbortOnDrop(tasks))
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_make_a_node_probe_addresses_it_claims_as_its_own() {
    use burrow_proto::punch::{Mapping, NatInfo};
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let alice = common::start_node(&dir.path().join("alice"), "alice", &server.url).await;
    alice.settings(Some("anyone")).await.unwrap();
    // mallory, from another address than alice's, claims twenty addresses
    // as its LAN ones and one of them as its router's port mapping, then
    // asks alice for a connection, which she accepts.
    let (targets, hits, _listening) = counting_targets(8).await;
    let mut mallory =
        RawClient::register("127.0.0.2:0", &server.url, "mallory", targets.clone()).await;
    mallory
        .send(ClientMsg::Nat {
            nat: NatInfo {
                mapping: Mapping::Independent,
                mapped: Some(targets[0]),
                no_udp: false,
                relay_only: false,
            },
        })
        .await;
    mallory.send(ClientMsg::Connect { peer: alice.id() }).await;
    let accepted = mallory
        .next(|m| matches!(m, ServerMsg::Accepted(LinkOffer { .. })))
        .await;
    assert!(accepted.is_some(), "alice accepts anyone");
    // alice punches toward mallory for seconds, then tries TCP.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "alice sent packets or connections to addresses mallory chose for her"
    );
    alice.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_a_bounded_number_of_files_connections() {
    use burrow_proto::files::{self, FilesRequest, FilesResponse};
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let alice = common::start_node(&dir.path().join("alice"), "alice", &server.url).await;
    alice.settings(Some("anyone")).await.unwrap();
    let mut mallory = RawClient::register("127.0.0.1:0", &server.url, "mallory", vec![]).await;
    mallory.send(ClientMsg::Connect { peer: alice.id() }).await;
    let Some(ServerMsg::Accepted(LinkOffer { candidates, .. })) = mallory
        .next(|m| matches!(m, ServerMsg::Accepted(LinkOffer { .. })))
        .await
    else {
        panic!("alice accepts anyone");
    };
    // Twenty files connections at once, each asking for the list.
    let mut answered = 0;
    let mut conns = Vec::new();
    for _ in 0..20 {
        let Ok((conn, _)) = mallory
            .endpoint()
            .connect(candidates[0], files::ALPN, Some(alice.id()))
            .await
        else {
            continue;
        };
        let asked = async {
            let (send, recv) = conn.open_bi().await.ok()?;
            let mut w = FrameWriter::new(send, files::VERSION, files::MAX_FRAME);
            let mut r = FrameReader::new(recv, files::VERSION, files::MAX_FRAME);
            w.write(&FilesRequest::List).await.ok()?;
            w.finish();
            r.read::<FilesResponse>().await.ok()?
        };
        if tokio::time::timeout(Duration::from_secs(5), asked)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            answered += 1;
        }
        conns.push(conn); // kept open
    }
    assert_eq!(answered, 8, "alice serves 8 files connections per peer");
    drop(conns);
    alice.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_the_servers_tcp_links_open() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    // Eighteen TCP connections from one address (within its connection
    // burst), each sending nothing but empty frames, twice a second.
    let mut links = Vec::new();
    for _ in 0..18 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.7:0".parse().unwrap()).unwrap();
        links.push(socket.connect(server.addr).await.unwrap());
    }
    let open = |links: &mut Vec<tokio::net::TcpStream>| {
        let mut n = 0;
        for l in links.iter_mut() {
            let mut b = [0u8; 1];
            match l.try_read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => n += 1,
                _ => {}
            }
        }
        n
    };
    let started = Instant::now();
    let mut after_a_second = None;
    while started.elapsed() < Duration::from_secs(7) {
        for l in &mut links {
            let _ = l.write_all(&[0, 0]).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if after_a_second.is_none() && started.elapsed() >= Duration::from_secs(1) {
            after_a_second = Some(open(&mut links));
        }
    }
    assert_eq!(
        after_a_second,
        Some(16),
        "one address holds at most 16 links"
    );
    assert_eq!(
        open(&mut links),
        0,
        "links that send no QUIC Initial are closed"
    );
    server.stop().await;
}

/// A node searching the tracker without pause is answered at the search rate
/// (a burst of ten, then two a second), every search in turn, its session
/// kept; a node that registers meanwhile is answered at once, searches
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_searcher_is_slowed_to_its_rate_while_others_are_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let mut seeker = RawClient::register("127.0.0.6:0", &server.url, "seeker", vec![]).await;
    let started = Instant::now();
    for query_id in 0..16 {
        seeker
            .send(ClientMsg::Search {
                query_id,
                query: rendezvous::Query::Name(format!("anything {query_id}")),
            })
            .await;
    }
    // Ten answered at once, the other six at two a second.
    let mut answered = Vec::new();
    for _ in 0..10 {
        let m = seeker
            .next(|m| matches!(m, ServerMsg::SearchResults { .. }))
            .await;
        let Some(ServerMsg::SearchResults { query_id, .. }) = m else {
            panic!("the burst is answered");
        };
        answered.push(query_id);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the burst waits for nothing"
    );

    let mut honest = RawClient::register("127.0.0.7:0", &server.url, "honest", vec![]).await;
    honest
        .send(ClientMsg::Search {
            query_id: 99,
            query: rendezvous::Query::Name("holiday".into()),
        })
        .await;
    let m = honest
        .next(|m| matches!(m, ServerMsg::SearchResults { .. }))
        .await;
    assert!(
        matches!(m, Some(ServerMsg::SearchResults { query_id: 99, .. })),
        "another node's search is answered"
    );
    let honest_at = started.elapsed();

    for _ in 10..16 {
        let m = seeker
            .next(|m| matches!(m, ServerMsg::SearchResults { .. }))
            .await;
        let Some(ServerMsg::SearchResults { query_id, .. }) = m else {
            panic!("every search is answered in turn; the session stays");
        };
        answered.push(query_id);
    }
    assert_eq!(answered, (0..16).collect::<Vec<u32>>());
    let seeker_done = started.elapsed();
    assert!(
        seeker_done >= Duration::from_millis(2500),
        "six searches past the burst took {seeker_done:?}: not slowed to two a second"
    );
    assert!(
        honest_at < seeker_done,
        "the honest node ({honest_at:?}) waited behind the searcher ({seeker_done:?})"
    );
}

/// A Binding request by hand: RESPONSE-PORT `port`, and PADDING to `pad`
/// bytes of attribute when asked.
fn stun_request(tx: [u8; 12], response_port: Option<u16>, pad: usize) -> Vec<u8> {
    let mut attrs = Vec::new();
    if let Some(p) = response_port {
        attrs.extend([0x00, 0x27, 0x00, 0x04]);
        attrs.extend(p.to_be_bytes());
        attrs.extend([0, 0]);
    }
    if pad > 0 {
        attrs.extend([0x00, 0x26]);
        attrs.extend((pad as u16).to_be_bytes());
        attrs.extend(vec![0u8; pad]);
    }
    let mut m = vec![0x00, 0x01];
    m.extend((attrs.len() as u16).to_be_bytes());
    m.extend([0x21, 0x12, 0xA4, 0x42]);
    m.extend(tx);
    m.extend(attrs);
    m
}

/// What arrives on `socket` within half a second.
fn stun_answer(socket: &UdpSocket) -> Option<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// A request whose source may be spoofed can't be turned into a bigger
/// answer, nor an answer to another port: from an address with no node
/// registered, a plain 20-byte request draws the 32-byte reflexive address
/// alone, at its own source port whatever RESPONSE-PORT says; only a request
/// padded to the answer's size is answered in full. A registered node's
/// address keeps the whole of RFC 5780, RESPONSE-PORT included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_from_a_stranger_draws_no_more_than_it_sent_and_only_to_its_source() {
    use burrow_proto::stun::{parse_response, MAX_ANSWER};
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let to = server.addr;
    let (asker, victim) = (
        UdpSocket::bind("127.0.0.8:0").unwrap(),
        UdpSocket::bind("127.0.0.8:0").unwrap(),
    );
    let victim_port = victim.local_addr().unwrap().port();

    let plain = stun_request([1; 12], Some(victim_port), 0);
    assert!(plain.len() < 32);
    asker.send_to(&plain, to).unwrap();
    let got = stun_answer(&asker).expect("a stranger's plain request is answered");
    assert_eq!(got.len(), 32, "the reflexive address alone");
    let r = parse_response(&got).unwrap();
    assert_eq!(r.mapped, asker.local_addr().unwrap());
    assert_eq!((r.origin, r.other), (None, None));
    assert!(stun_answer(&victim).is_none(), "nothing to RESPONSE-PORT");

    let padded = stun_request([2; 12], Some(victim_port), MAX_ANSWER);
    asker.send_to(&padded, to).unwrap();
    let got = stun_answer(&asker).expect("a padded request is answered");
    assert!(
        got.len() > 32 && got.len() <= padded.len(),
        "{} bytes",
        got.len()
    );
    assert_eq!(parse_response(&got).unwrap().origin, Some(to));
    assert!(
        stun_answer(&victim).is_none(),
        "still nothing to RESPONSE-PORT"
    );

    // A node registered from 127.0.0.9: that address is answered in full.
    let _member = RawClient::register("127.0.0.9:0", &server.url, "member", vec![]).await;
    let (asker, other_port) = (
        UdpSocket::bind("127.0.0.9:0").unwrap(),
        UdpSocket::bind("127.0.0.9:0").unwrap(),
    );
    let req = stun_request([3; 12], Some(other_port.local_addr().unwrap().port()), 0);
    asker.send_to(&req, to).unwrap();
    let got = stun_answer(&other_port).expect("a known address's RESPONSE-PORT is honoured");
    let r = parse_response(&got).unwrap();
    assert_eq!(
        (r.mapped, r.origin),
        (asker.local_addr().unwrap(), Some(to))
    );
    server.stop().await;
}

/// Past `retry_above` handshakes in progress a new connection must prove its
/// address with a QUIC Retry before the server keeps any state for it; an
/// honest node does so without noticing (here every connection is asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_connections_prove_their_address_and_honest_nodes_still_register() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("srv");
    let mut config = common::fast_server_config(&home, "127.0.0.1:0".parse().unwrap());
    config.retry_above = 0;
    let server = common::start_server_with(&home, config).await;
    let _alice = RawClient::register("127.0.0.10:0", &server.url, "alice", vec![]).await;
    let home2 = home.clone();
    let status = tokio::task::spawn_blocking(move || json(&home2, &["admin", "status"]))
        .await
        .unwrap();
    assert_eq!(status["online"], 1, "{status}");
    assert!(status["retries"].as_u64() >= Some(1), "{status}");
    server.stop().await;
}

/// Under `--presence everyone` every join and leave goes to every node. Nodes
/// that come and go by the hundred, while an honest node on a slow link reads
/// nothing, used to fill its queue and get it disconnected ("too slow"); now
/// each peer's latest news waits for it, and it reads the final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_churn_does_not_drop_a_node_that_reads_slowly() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(&dir.path().join("srv")).await;
    let mut slow = RawClient::register_slow_reader("127.0.0.11:0", &server.url, "slow").await;
    // 300 nodes join and leave (600 messages for the slow node, past its
    // queue of 256): 20 from each of 15 addresses, within their limits.
    let mut churners = Vec::new();
    for a in 0..15u8 {
        for i in 0..20 {
            let bind = format!("127.0.2.{}:0", a + 1);
            let c = RawClient::register(&bind, &server.url, &format!("churn{a}x{i}"), vec![]).await;
            churners.push(c);
        }
        // Leaving: their connections close.
        churners.clear();
    }
    let stayer = RawClient::register("127.0.0.12:0", &server.url, "stayer", vec![]).await;
    // Now the slow node reads: its session is alive, and what it learns ends
    // with the stayer online and no churner.
    let mut online: std::collections::HashMap<NodeId, String> = Default::default();
    while online.values().collect::<Vec<_>>() != ["stayer"] {
        match slow.next(|_| true).await {
            Some(ServerMsg::PeerJoined(p)) => {
                online.insert(p.id, p.name.to_string());
            }
            Some(ServerMsg::PeerLeft { id }) => {
                online.remove(&id);
            }
            Some(_) => {}
            None => panic!("the slow node was disconnected, or never learned the end: {online:?}"),
        }
    }
    drop(stayer);
    server.stop().await;
}
