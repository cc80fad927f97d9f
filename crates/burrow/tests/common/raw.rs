//! Hand-driven clients for attack tests: they speak burrow's protocols but
//! are no node, so a test can send what no honest node would.

use std::net::SocketAddr;
use std::time::Duration;

use burrow_net::{Endpoint, EndpointConfig, FrameReader, FrameWriter};
use burrow_proto::forum::Topic;
use burrow_proto::mesh::{self, MeshFrame, MeshSecret, Ticket};
use burrow_proto::rendezvous::{self, ClientMsg, ServerMsg};
use burrow_proto::{SecretKey, ServerAddr};

/// An endpoint of `key`'s on `bind`.
pub fn endpoint(key: &SecretKey, bind: &str) -> Endpoint {
    endpoint_with(key, bind, EndpointConfig::default())
}

fn endpoint_with(key: &SecretKey, bind: &str, config: EndpointConfig) -> Endpoint {
    Endpoint::bind(
        key,
        EndpointConfig {
            bind: bind.parse().unwrap(),
            ..config
        },
    )
    .unwrap()
}

/// A rendezvous client: registered with a server, sending what it is told.
pub struct RawClient {
    _ep: Endpoint,
    _conn: quinn::Connection,
    reader: FrameReader,
    writer: FrameWriter,
}

impl RawClient {
    /// Registers as `name` from `bind`, claiming `lan_addrs` as its own.
    pub async fn register(
        bind: &str,
        server: &ServerAddr,
        name: &str,
        lan_addrs: Vec<SocketAddr>,
    ) -> RawClient {
        Self::register_with(bind, server, name, lan_addrs, EndpointConfig::default()).await
    }

    /// Like [`Self::register`], for a node on a slow link: the server may
    /// have at most 2 KiB unread on its way (QUIC flow control), so what it
    /// sends past that waits on the server while this client doesn't read
    /// (it keeps its connection alive all the same).
    pub async fn register_slow_reader(bind: &str, server: &ServerAddr, name: &str) -> RawClient {
        let config = EndpointConfig {
            stream_window: 2048,
            receive_window: 4096,
            // Not silent meanwhile: QUIC keepalives reach the server.
            keepalive: Some(std::time::Duration::from_millis(300)),
            ..EndpointConfig::default()
        };
        Self::register_with(bind, server, name, vec![], config).await
    }

    async fn register_with(
        bind: &str,
        server: &ServerAddr,
        name: &str,
        lan_addrs: Vec<SocketAddr>,
        config: EndpointConfig,
    ) -> RawClient {
        let ep = endpoint_with(&SecretKey::generate(&mut rand::rngs::OsRng), bind, config);
        let addr: SocketAddr = server.host_port().parse().unwrap();
        let (conn, _) = ep
            .connect(addr, rendezvous::ALPN, server.key)
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut c = RawClient {
            _ep: ep,
            _conn: conn,
            reader: FrameReader::new(recv, rendezvous::VERSION, rendezvous::MAX_FRAME),
            writer: FrameWriter::new(send, rendezvous::VERSION, rendezvous::MAX_FRAME),
        };
        c.send(ClientMsg::Hello {
            name: name.parse().unwrap(),
            lan_addrs,
            credentials: Default::default(),
        })
        .await;
        let welcome = c.next(|m| matches!(m, ServerMsg::Welcome { .. })).await;
        assert!(welcome.is_some(), "no Welcome");
        c
    }

    /// Its endpoint (to dial the peers the server links it with).
    pub fn endpoint(&self) -> &Endpoint {
        &self._ep
    }

    pub async fn send(&mut self, msg: ClientMsg) {
        self.writer.write(&msg).await.unwrap();
    }

    /// The next message `pick` accepts (others are skipped); `None` if the
    /// session ends first or nothing comes within the test's wait.
    pub async fn next(&mut self, pick: impl Fn(&ServerMsg) -> bool) -> Option<ServerMsg> {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read::<ServerMsg>()).await {
                Ok(Ok(Some(m))) if pick(&m) => return Some(m),
                Ok(Ok(Some(_))) => {}
                _ => return None,
            }
        }
    }
}

/// A member of a serverless network as a test drives it: a mesh session to
/// one node, proving `secret` (the right one or not).
pub struct Member {
    pub key: SecretKey,
    pub writer: FrameWriter,
    pub reader: FrameReader,
    pub conn: quinn::Connection,
    _endpoint: Endpoint,
}

impl Member {
    /// Dials `t`'s node and says Hello as "mallory"; `None` if the node
    /// doesn't answer with its own Hello within 10 s.
    pub async fn dial(t: &Ticket, secret: MeshSecret, key: SecretKey) -> Option<Member> {
        let endpoint = endpoint(&key, "127.0.0.1:0");
        let (conn, _) = endpoint
            .connect(t.addrs[0], mesh::ALPN, Some(t.id))
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut writer = FrameWriter::new(send, mesh::VERSION, mesh::MAX_FRAME);
        let mut reader = FrameReader::new(recv, mesh::VERSION, mesh::MAX_FRAME);
        writer
            .write(&MeshFrame::Hello {
                name: "mallory".parse().unwrap(),
                topics: vec![Topic::default_topic()],
                addrs: vec![],
                observed: None,
                proof: Some(mesh::membership_proof(&secret, &key.public(), &t.id)),
            })
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), reader.read::<MeshFrame>()).await {
            Ok(Ok(Some(MeshFrame::Hello { .. }))) => Some(Member {
                key,
                writer,
                reader,
                conn,
                _endpoint: endpoint,
            }),
            _ => None,
        }
    }
}
