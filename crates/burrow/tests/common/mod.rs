//! Test harness: real servers and nodes on 127.0.0.1, in this process or as
//! `burrow` processes. Every wait is bounded.
#![allow(dead_code)]

#[cfg(target_os = "linux")]
pub mod data;
#[cfg(target_os = "linux")]
pub mod lab;
pub mod proc;
pub mod raw;
pub mod tunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow_node::{Node, NodeConfig, NodeEvent};
use burrow_proto::{SecretKey, ServerAddr};
use burrow_server::{BrokerConfig, Server, ServerConfig};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// A server running in this process.
pub struct TestServer {
    pub url: ServerAddr,
    pub addr: SocketAddr,
    pub home: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Stops the server and waits until its socket is closed.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

/// Fast timeouts so that tests of expiry and vanished nodes finish in seconds.
pub fn fast_server_config(home: &Path, listen: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen,
        home: home.to_path_buf(),
        broker: BrokerConfig {
            request_ttl: Duration::from_secs(2),
            ..BrokerConfig::default()
        },
        idle_timeout: Duration::from_millis(1500),
        alt_ip: None,
        admission: burrow_server::AdmissionConfig::default(),
        retry_above: 256,
        https: None,
        https_cert: None,
    }
}

pub fn server_key(home: &Path) -> SecretKey {
    burrow_home::keyfile::load_or_create(&home.join("key"))
        .unwrap()
        .0
}

/// Logs to the test's output when BURROW_LOG is set (e.g. BURROW_LOG=debug).
pub fn init_logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("BURROW_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

pub async fn start_server_with(home: &Path, config: ServerConfig) -> TestServer {
    init_logs();
    // A server restarted in this process on the same port: quinn's endpoint task
    // releases the old socket a moment after the old server is gone.
    let mut tries = 0;
    let server = loop {
        match Server::bind(&server_key(home), config.clone()) {
            Ok(s) => break s,
            Err(e) if tries < 50 && config.listen.port() != 0 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("server binds: {e:?}"),
        }
    };
    let addr = server.local_addr();
    let url = ServerAddr {
        key: Some(server.id()),
        host: "127.0.0.1".into(),
        port: addr.port(),
        https: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    TestServer {
        url,
        addr,
        home: home.to_path_buf(),
        stop,
        task,
    }
}

/// A server on a fixed port below Linux's ephemeral range (32768 and up), for
/// tests that restart it on the same port: ephemeral binds of other sockets in
/// the meantime can't take that port, or the next one (STUN's).
pub async fn start_server_on_fixed_port(home: &Path) -> TestServer {
    for _ in 0..50 {
        let port = 20_000 + 2 * (rand::random::<u16>() % 6_000);
        let config = fast_server_config(home, SocketAddr::from(([127, 0, 0, 1], port)));
        if let Ok(server) = Server::bind(&server_key(home), config) {
            init_logs();
            let addr = server.local_addr();
            let url = ServerAddr {
                key: Some(server.id()),
                host: "127.0.0.1".into(),
                port,
                https: None,
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(server.run(stop.clone()));
            return TestServer {
                url,
                addr,
                home: home.to_path_buf(),
                stop,
                task,
            };
        }
    }
    panic!("no free fixed port pair below the ephemeral range");
}

pub async fn start_server(home: &Path) -> TestServer {
    start_server_with(
        home,
        fast_server_config(home, "127.0.0.1:0".parse().unwrap()),
    )
    .await
}

pub fn node_config(home: &Path, name: &str, server: &ServerAddr) -> NodeConfig {
    let key = burrow_home::keyfile::load_or_create(&home.join("key"))
        .unwrap()
        .0;
    let mut c = NodeConfig::new(
        home.to_path_buf(),
        key,
        Some(server.clone()),
        name.parse().unwrap(),
    );
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.keepalive = Duration::from_millis(300);
    c.idle_timeout = Duration::from_millis(1500);
    c.max_backoff = Duration::from_millis(500);
    c
}

pub async fn start_node(home: &Path, name: &str, server: &ServerAddr) -> Node {
    Node::start(node_config(home, name, server))
        .await
        .expect("node starts")
}

/// Waits for the first event `pick` accepts; panics with `what` after [`WAIT`].
pub async fn wait_event<T>(
    events: &mut broadcast::Receiver<NodeEvent>,
    what: &str,
    mut pick: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) => {
                if let Some(v) = pick(&e) {
                    return v;
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream ended waiting for {what}: {e}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after [`WAIT`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The connection state `node` shows for `peer` (by name), if listed.
pub fn link(node: &Node, peer: &str) -> Option<burrow_node::api::ConnectionState> {
    node.peers()
        .into_iter()
        .find(|p| p.name.as_deref() == Some(peer))
        .map(|p| p.connection)
}

pub fn online(node: &Node, peer: &str) -> bool {
    node.peers()
        .into_iter()
        .any(|p| p.name.as_deref() == Some(peer) && p.online)
}

/// Connects `from` to `to` through the server: request, accept, wait for direct.
pub async fn connect_pair(from: &Node, to: &Node) {
    let (from_name, to_name) = (from.name().to_string(), to.name().to_string());
    wait_until("both see each other online", || {
        online(from, &to_name) && online(to, &from_name)
    })
    .await;
    let mut to_events = to.subscribe();
    from.connect(&to_name)
        .await
        .expect("connect request accepted by the server");
    wait_event(&mut to_events, "the incoming request", |e| {
        matches!(e, NodeEvent::IncomingRequest { name } if *name == from_name).then_some(())
    })
    .await;
    to.accept(&from_name).await.expect("accept");
    use burrow_node::api::ConnectionState::Direct;
    wait_until("both sides are direct", || {
        link(from, &to_name) == Some(Direct) && link(to, &from_name) == Some(Direct)
    })
    .await;
}
