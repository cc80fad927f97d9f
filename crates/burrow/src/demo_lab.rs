//! `burrow demo --lab`: the demo behind real NATs. A small internet in network
//! namespaces on this machine (root needed): a server on a "public" segment,
//! alice and bob behind two home routers (port-restricted NATs), carol behind a
//! carrier's symmetric NAT, 10 ms one-way on every uplink. Each node runs in its
//! own namespace, in this process; the transcript says how each connection was
//! made. Nothing leaves the namespaces, and they are removed at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burrow_lab::{Lab, NatKind, NsRuntime, SERVER_ADDRS};
use burrow_node::api::ConnectionState;
use burrow_node::{Node, NodeConfig, NodeEvent};
use burrow_proto::punch::Method;
use burrow_proto::{SecretKey, ServerAddr};
use burrow_server::{Server, ServerConfig};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::CliError;

/// One-way delay on every uplink: peers are 40 ms apart.
const DELAY: Duration = Duration::from_millis(10);
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Past the punch's 10 s deadline.
const DIRECT_WAIT: Duration = Duration::from_secs(11);

struct LabNode {
    name: &'static str,
    rt: NsRuntime,
    node: Node,
    events: broadcast::Receiver<NodeEvent>,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::new(format!("demo: {e}"), None)
}

/// Waits for the first event of `n` that `pick` accepts.
async fn wait_for<T>(
    n: &mut LabNode,
    limit: Duration,
    what: &str,
    mut pick: impl FnMut(&NodeEvent) -> Option<T>,
) -> Result<T, CliError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, n.events.recv()).await {
            Ok(Ok(e)) => {
                if let Some(v) = pick(&e) {
                    return Ok(v);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => return Err(fail(format!("{what}: {e}"))),
            Err(_) => return Err(fail(format!("timed out waiting for {what}"))),
        }
    }
}

pub async fn run() -> Result<(), CliError> {
    let started = Instant::now();
    let mut lab = Lab::new().map_err(|e| {
        CliError::new(
            e,
            Some("the lab needs root, iproute2, nftables and conntrack: sudo burrow demo --lab (or run `burrow demo` without it)".into()),
        )
    })?;
    lab.set_uplink_delay(DELAY);
    let dir = tempfile::Builder::new()
        .prefix("burrow-demo-lab-")
        .tempdir()?;
    println!("burrow demo --lab: a small internet on this machine, with real kernel NATs");
    println!(
        "  every uplink delays packets {} each way: peers are {} apart\n",
        ms(DELAY),
        ms(DELAY * 4)
    );

    let server_rt = NsRuntime::start(&lab.server().ns)?;
    let server_home = dir.path().join("server");
    let (url, stop_server) = server_rt
        .call(async move {
            let key = SecretKey::generate(&mut rand::rngs::OsRng);
            let mut config = ServerConfig::new(server_home);
            config.listen = SocketAddr::from((SERVER_ADDRS[0], 7700));
            config.alt_ip = Some(SERVER_ADDRS[1].into());
            let server = Server::bind(&key, config)?;
            let url = ServerAddr {
                key: Some(server.id()),
                host: SERVER_ADDRS[0].to_string(),
                port: 7700,
                https: None,
            };
            let stop = CancellationToken::new();
            tokio::spawn(server.run(stop.clone()));
            Ok::<_, burrow_server::ServerError>((url, stop))
        })
        .await?;
    println!(
        "  server  on the public segment at {}:7700, STUN also on {} (for NAT diagnosis)",
        SERVER_ADDRS[0], SERVER_ADDRS[1]
    );

    let mut nodes = Vec::new();
    for (name, kind, what) in [
        ("alice", NatKind::PortRestricted, "a home router"),
        ("bob", NatKind::PortRestricted, "another home router"),
        ("carol", NatKind::Symmetric, "a carrier's symmetric NAT"),
    ] {
        let (host, _router) = lab.add_peer(name, kind)?;
        let rt = NsRuntime::start(&host.ns)?;
        let config = NodeConfig::new(
            dir.path().join(name),
            SecretKey::generate(&mut rand::rngs::OsRng),
            Some(url.clone()),
            name.parse().expect("demo names are valid"),
        );
        let node = rt
            .call(async move { Node::start(config).await })
            .await
            .map_err(fail)?;
        let events = node.subscribe();
        let n2 = node.clone();
        let report = rt.call(async move { n2.nat().await }).await.map_err(fail)?;
        println!(
            "  {name:<7} up at {} behind {what}; burrow nat: {}",
            host.addr, report.summary
        );
        nodes.push(LabNode {
            name,
            rt,
            node,
            events,
        });
    }
    println!();

    let [alice, bob, carol] = &mut nodes[..] else {
        unreachable!("three nodes")
    };
    link(bob, alice).await?;
    chat(
        bob,
        alice,
        "hi alice, bob here: straight through both our routers",
    )
    .await?;
    link(carol, alice).await?;
    chat(carol, alice, "hi alice, carol here, on my phone's network").await?;
    chat(
        alice,
        carol,
        "hello carol, straight through your carrier's NAT too",
    )
    .await?;

    for n in &nodes {
        let node = n.node.clone();
        n.rt.call(async move { node.shutdown().await }).await;
    }
    stop_server.cancel();
    drop(nodes);
    drop(server_rt);
    drop(lab);
    println!(
        "\ndone in {:.1} s; the lab's namespaces are gone.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `from` asks `to`, `to` accepts; prints how the connection was made and,
/// if it started on the relay, when (and whether) it went direct.
async fn link(from: &mut LabNode, to: &mut LabNode) -> Result<(), CliError> {
    let (a, b) = (from.name, to.name);
    let node = from.node.clone();
    let online = from
        .rt
        .call(async move {
            let deadline = Instant::now() + STEP_TIMEOUT;
            while Instant::now() < deadline {
                if node
                    .peers()
                    .iter()
                    .any(|p| p.name.as_deref() == Some(b) && p.online)
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        })
        .await;
    if !online {
        return Err(fail(format!("{a} never saw {b} online")));
    }
    let asked = Instant::now();
    let node = from.node.clone();
    from.rt
        .call(async move { node.connect(b).await })
        .await
        .map_err(fail)?;
    println!("  {a:<7} $ burrow connect {b}");
    wait_for(to, STEP_TIMEOUT, "the request", |e| {
        matches!(e, NodeEvent::IncomingRequest { name } if name == a).then_some(())
    })
    .await?;
    let node = to.node.clone();
    to.rt
        .call(async move { node.accept(a).await })
        .await
        .map_err(fail)?;
    println!("  {b:<7} $ burrow accept {a}");
    let (path, remote) = wait_for(from, STEP_TIMEOUT, "the connection", |e| match e {
        NodeEvent::Connected {
            name, path, remote, ..
        } if name == b => Some((*path, remote.clone())),
        NodeEvent::ConnectFailed { name, error } if name == b => {
            Some((ConnectionState::None, error.clone()))
        }
        _ => None,
    })
    .await?;
    if path == ConnectionState::None {
        return Err(fail(format!("{a} could not connect to {b}: {remote}")));
    }
    println!(
        "  {a:<7} connected to {b} {} after asking: {path} ({remote}); QUIC, TLS 1.3 with raw Ed25519 keys",
        ms(asked.elapsed())
    );
    if path == ConnectionState::Direct {
        return Ok(());
    }
    // The punch runs for up to 10 s; the connection moves when it succeeds.
    let moved = wait_for(from, DIRECT_WAIT, "the direct path", |e| match e {
        NodeEvent::PathChanged {
            name,
            path: ConnectionState::Direct,
            remote,
            method,
        } if name == b => Some((remote.clone(), *method)),
        _ => None,
    })
    .await;
    match moved {
        Ok((remote, Some(Method::Birthday))) => println!(
            "  {a:<7} birthday probing worked: 256 extra sockets behind the symmetric NAT, random ports probed from the other side, until one met; the connection moved to that direct path ({remote}), {} after asking",
            ms(asked.elapsed())
        ),
        Ok((remote, method)) => println!(
            "  {a:<7} {} worked: the connection moved to a direct path ({remote}), {} after asking",
            method.unwrap_or(Method::Probe).words(),
            ms(asked.elapsed())
        ),
        Err(_) => println!(
            "  {a:<7} no direct path found (two NATs that both pick a new port per destination): the connection stays on the relay, and keeps trying"
        ),
    }
    Ok(())
}

async fn chat(from: &mut LabNode, to: &mut LabNode, text: &'static str) -> Result<(), CliError> {
    let (a, b) = (from.name, to.name);
    let sent = Instant::now();
    let node = from.node.clone();
    from.rt
        .call(async move { node.send(b, text).await })
        .await
        .map_err(fail)?;
    println!("  {a:<7} $ burrow send {b} \"{text}\"");
    println!(
        "          stored by {b} and acknowledged in {}",
        ms(sent.elapsed())
    );
    Ok(())
}
