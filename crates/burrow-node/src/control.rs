//! The local control API (see [`crate::api`] for the format), on the home's
//! control connection ([`burrow_home::control`]: `home/control.sock` or a
//! named pipe), which only the home's owner can reach. Request lines are
//! bounded ([`MAX_LINE`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burrow_home::control::{Listener, ReadHalf, Stream, WriteHalf};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{debug, warn};

use crate::api::{Reply, Request};
use crate::error::Hinted;
use crate::event::NodeEvent;
use crate::node::Node;

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// Default number of messages `messages` returns.
pub const DEFAULT_MESSAGES: usize = 100;

pub use burrow_home::control::{address, bind, unlink};

impl Node {
    /// Starts a node: locks the home directory, opens the store, binds the socket,
    /// registers with the server (failing if that is refused), and opens the
    /// control socket.
    pub async fn start(config: crate::NodeConfig) -> Result<Node, crate::StartError> {
        let (node, listener) = Node::launch(config).await?;
        node.inner.spawn(serve(node.clone(), listener));
        Ok(node)
    }
}

/// Serves control clients until shutdown.
pub(crate) async fn serve(node: Node, mut listener: Listener) {
    loop {
        let stream = tokio::select! {
            _ = node.inner.shutdown.cancelled() => return,
            s = listener.accept() => s,
        };
        match stream {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                warn!("refused a control connection from {e}");
            }
            Ok(stream) => {
                let node = node.clone();
                tokio::spawn(tracing::Instrument::in_current_span(async move {
                    if let Err(e) = client(node, stream).await {
                        debug!(error = %e, "control client ended");
                    }
                }));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn ok<T: Serialize>(data: T) -> Reply {
    Reply::ok(serde_json::to_value(data).expect("API views serialize to JSON"))
}

fn err(e: impl Hinted) -> Reply {
    Reply::err(e.to_string(), e.hint())
}

fn reply<T: Serialize>(r: Result<T, impl Hinted>) -> Reply {
    r.map(ok).unwrap_or_else(err)
}

fn done(r: Result<(), impl Hinted>) -> Reply {
    r.map(|()| ok(serde_json::Value::Null)).unwrap_or_else(err)
}

async fn write_reply(
    stream: &mut (impl AsyncWriteExt + Unpin),
    reply: &Reply,
) -> std::io::Result<()> {
    reply.write_to(stream).await
}

/// The reply to a request answered in one line.
async fn answer(node: &Node, request: Request) -> Reply {
    match request {
        Request::Status => ok(node.status()),
        Request::Peers => ok(node.peers()),
        Request::Connect { peer } => done(node.connect(&peer).await),
        Request::Accept { peer } => done(node.accept(&peer).await),
        Request::Reject { peer } => done(node.reject(&peer).await),
        Request::Cancel { peer } => done(node.cancel(&peer).await),
        Request::Nat => reply(node.nat().await),
        Request::Contacts { add, remove } => {
            reply(node.contacts(add.as_deref(), remove.as_deref()).await)
        }
        Request::Settings { incoming } => reply(node.settings(incoming.as_deref()).await),
        Request::Post {
            text,
            reply_to,
            topic,
        } => reply(
            node.post(&text, reply_to.as_deref(), topic.as_deref())
                .await,
        ),
        Request::Forum { topic, thread } => {
            reply(node.forum(topic.as_deref(), thread.as_deref()).await)
        }
        Request::Ticket => reply(node.ticket()),
        Request::Send { peer, text } => reply(node.send(&peer, &text).await),
        Request::Share { path, name } => reply(node.share(&path, name.as_deref()).await),
        Request::Unshare { file } => reply(node.unshare(&file).await),
        Request::Shares => reply(node.shares().await),
        Request::Search { query } => reply(node.search(&query).await),
        Request::Files { peer } => reply(node.files(&peer).await),
        Request::Messages { limit, .. } => {
            reply(node.messages(limit.unwrap_or(DEFAULT_MESSAGES)).await)
        }
        Request::Expose {
            name,
            addr,
            udp,
            allow,
        } => reply(node.expose(&name, &addr, udp, &allow).await),
        Request::Unexpose { name } => done(node.unexpose(&name).await),
        Request::Exposed => ok(node.exposed()),
        Request::Services { peer } => reply(node.services(&peer).await),
        Request::Forward { target, listen } => reply(node.forward(&target, &listen).await),
        Request::Unforward { listen } => done(node.unforward(&listen).await),
        Request::Forwards => ok(node.forwards()),
        // Streams: `client` answers them itself.
        Request::Get { .. } => Reply::err("get is answered as a stream".into(), None),
        Request::Pipe { .. } => Reply::err("pipe is answered as a stream".into(), None),
    }
}

async fn client(node: Node, stream: Stream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 64));
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let reply = Reply {
                    ok: false,
                    data: None,
                    error: Some(format!("bad request: {e}")),
                    hint: Some("the CLI and the node may be different versions".into()),
                };
                write_reply(&mut write, &reply).await?;
                return Ok(());
            }
        };
        let reply = match request {
            Request::Get { file, dir, force } => {
                return get(node, &file, &dir, force, &mut write, hung_up(lines)).await;
            }
            Request::Pipe { target } => {
                // The rest of the connection is the stream's: no line limit.
                lines.get_mut().set_limit(u64::MAX);
                return pipe(node, &target, lines, write).await;
            }
            Request::Messages {
                limit,
                follow: true,
            } => {
                let limit = limit.unwrap_or(DEFAULT_MESSAGES);
                return follow_messages(node, limit, &mut write, hung_up(lines)).await;
            }
            other => answer(&node, other).await,
        };
        write_reply(&mut write, &reply).await?;
    }
}

/// Resolves when the client of a streaming request hangs up: a `get` or a
/// follow has the connection to itself, so anything the client sends after
/// the request, or its close, ends it (a named pipe has no half-close to
/// say so with).
async fn hung_up(mut read: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 1];
    let _ = read.read(&mut buf).await;
}

/// Runs a download, sending its progress lines, then its result. When the
/// client hangs up (Ctrl-C on `get`), the download stops at once, saving what
/// was verified for the next `get` of the same file, before the connection
/// closes: a client that waits for the close knows the next `get` can start.
async fn get(
    node: Node,
    file: &str,
    dir: &str,
    force: bool,
    write: &mut WriteHalf,
    hung_up: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let download = node.get(file, dir, force, tx);
    tokio::pin!(download, hung_up);
    let result = loop {
        tokio::select! {
            _ = &mut hung_up => return Ok(()),
            r = &mut download => break r,
            Some(update) = rx.recv() => write_reply(write, &ok(update)).await?,
        }
    };
    while let Ok(update) = rx.try_recv() {
        write_reply(write, &ok(update)).await?;
    }
    write_reply(write, &result.map(ok).unwrap_or_else(err)).await
}

/// Opens a stream to a peer's service and, once it answered, carries the
/// connection's bytes over it both ways (`burrow pipe`).
async fn pipe(
    node: Node,
    target: &str,
    mut read: impl tokio::io::AsyncRead + Unpin,
    mut write: WriteHalf,
) -> std::io::Result<()> {
    let (send, recv) = match node.pipe(target).await {
        Ok(s) => s,
        Err(e) => return write_reply(&mut write, &err(e)).await,
    };
    write_reply(&mut write, &ok(serde_json::Value::Null)).await?;
    let bytes = crate::tunnel::splice::Bytes::default();
    let recv = std::future::ready(Ok(recv));
    let cancel = node.inner.shutdown.clone();
    let ended =
        crate::tunnel::splice::splice(&mut read, &mut write, send, recv, &bytes, &cancel).await;
    debug!(?ended, "pipe ended");
    Ok(())
}

/// Sends the history, then every new message, until the client or node goes away.
async fn follow_messages(
    node: Node,
    limit: usize,
    write: &mut WriteHalf,
    hung_up: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(hung_up);
    let mut events = node.subscribe();
    let history = match node.messages(limit).await {
        Ok(h) => h,
        Err(e) => return write_reply(write, &err(e)).await,
    };
    let seen: HashSet<String> = history.iter().map(|m| m.id.clone()).collect();
    write_reply(write, &ok(history)).await?;
    loop {
        let event = tokio::select! {
            _ = node.inner.shutdown.cancelled() => return Ok(()),
            _ = &mut hung_up => return Ok(()),
            e = events.recv() => e,
        };
        match event {
            Ok(NodeEvent::Message(m)) if !seen.contains(&m.id) => {
                write_reply(write, &ok(m)).await?
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!(missed = n, "a follower fell behind");
            }
            Err(_) => return Ok(()),
        }
    }
}

/// Why the CLI could not talk to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no node is running in {0}")]
    NoNode(PathBuf),
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The node's reply was not valid.
    #[error("bad reply from the node: {0}")]
    BadReply(String),
}

/// A connection to a running node's control socket.
pub struct ControlClient {
    lines: tokio::io::Lines<BufReader<ReadHalf>>,
    write: WriteHalf,
}

impl ControlClient {
    /// Connects to the node in `home`.
    pub async fn connect(home: &Path) -> Result<Self, ClientError> {
        let stream = match burrow_home::control::connect(home).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ClientError::NoNode(home.to_path_buf()))
            }
            Err(e) => return Err(e.into()),
        };
        let (read, write) = stream.into_split();
        Ok(ControlClient {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Sends `request` and reads the first reply. (Any serializable request: the
    /// server's admin socket speaks the same line protocol.)
    pub async fn request(&mut self, request: &impl Serialize) -> Result<Reply, ClientError> {
        let mut line = serde_json::to_vec(request).expect("requests serialize to JSON");
        line.push(b'\n');
        self.write.write_all(&line).await?;
        self.next_reply()
            .await?
            .ok_or_else(|| ClientError::BadReply("the node closed the connection".into()))
    }

    /// Ends a streaming request: closes our side and waits, up to `limit`,
    /// for the node to close its own once it has let go of the request (a
    /// stopped `get` has saved its progress by then). Whatever the node still
    /// sends is dropped.
    pub async fn hang_up(mut self, limit: std::time::Duration) {
        // A byte, then the close: a named pipe's client has no half-close.
        let _ = self.write.write_all(b"\n").await;
        let _ = self.write.shutdown().await;
        let _ = tokio::time::timeout(limit, async {
            while let Ok(Some(_)) = self.lines.next_line().await {}
        })
        .await;
    }

    /// The connection itself, after a `pipe` request's reply: what the node
    /// sends (the peer's bytes, some perhaps read already), and our side.
    pub fn into_stream(self) -> (BufReader<ReadHalf>, WriteHalf) {
        (self.lines.into_inner(), self.write)
    }

    /// The next reply line (for `follow` streams); `None` when the node hung up.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        match self.lines.next_line().await? {
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| ClientError::BadReply(e.to_string())),
            None => Ok(None),
        }
    }
}
