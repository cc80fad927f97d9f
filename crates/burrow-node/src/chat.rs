//! The chat service: one bidirectional stream per message, acknowledged once the
//! receiver has stored it (see [`burrow_proto::chat`] for the flow).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use burrow_net::{FrameReader, FrameWriter, FramedError};
use burrow_proto::chat::{self, ChatFrame, MessageId};
use burrow_proto::NodeId;
use burrow_store::{MessageKind, StoredMessage};
use tracing::{debug, warn};

use crate::api::MessageView;
use crate::error::{SendError, StoreFailure};
use crate::event::NodeEvent;
use crate::handle::LinkHandle;
use crate::service::{LinkEvent, Service, Serving};

/// How long a sender waits for the ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream failed.
    #[error("{0}")]
    Framed(#[from] FramedError),
    /// No ack in time.
    #[error("no acknowledgement within {ACK_TIMEOUT:?}")]
    Timeout,
    /// The peer answered something other than our ack.
    #[error("the peer answered with something other than an ack")]
    BadAck,
}

/// The chat service (`burrow/chat/1`): one connection of its own with each
/// linked peer, beside the link's. The dialing side opens it with the link
/// (so the first message waits for no handshake), either side otherwise with
/// its first message; both send on whichever came first, and it goes with the
/// link.
pub(crate) struct Chat {
    link: LinkHandle,
    /// The chat connection with each peer (ours or theirs), or the one being
    /// opened.
    conns: Mutex<HashMap<NodeId, Slot>>,
}

/// A peer's chat connection, once open (opened once, however many want it).
type Slot = Arc<tokio::sync::OnceCell<quinn::Connection>>;

impl Service for Chat {
    fn alpn(&self) -> &'static [u8] {
        chat::ALPN
    }

    fn accept(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) -> Serving {
        // Ours to send on too, unless we have one already.
        let slot = self.conns().entry(peer).or_default().clone();
        let _ = slot.set(conn.clone());
        Box::pin(async move { serve(&self.link, peer, &conn).await })
    }

    fn on_link(self: Arc<Self>, event: &LinkEvent) {
        match event {
            LinkEvent::Notice { text, everyone } => self.notice(text.clone(), *everyone),
            LinkEvent::Dialing { peer } => {
                let (chat, peer) = (self.clone(), *peer);
                self.link.spawn(async move {
                    if let Err(e) = chat.conn_to(peer).await {
                        debug!(peer = %peer.short(), error = %e, "no chat connection yet");
                    }
                });
            }
            // A chat connection outlives no link: the next one opens a new one.
            LinkEvent::Down { peer } => {
                let slot = self.conns().remove(peer);
                if let Some(c) = slot.as_ref().and_then(|s| s.get()) {
                    c.close(burrow_net::Close::Done.code(), b"link closed");
                }
            }
            _ => {}
        }
    }
}

impl Chat {
    pub(crate) fn new(link: LinkHandle) -> Arc<Chat> {
        Arc::new(Chat {
            link,
            conns: Mutex::default(),
        })
    }

    /// Our chat connection with `peer` (linked): the one we have (or are
    /// opening), or a new one on the link's path.
    async fn conn_to(self: &Arc<Self>, peer: NodeId) -> Result<quinn::Connection, String> {
        for _ in 0..2 {
            let slot = self.conns().entry(peer).or_default().clone();
            let conn = slot.get_or_try_init(|| self.open(peer)).await?.clone();
            if conn.close_reason().is_none() {
                return Ok(conn);
            }
            // Closed since: forget it (unless another replaced it already).
            let mut conns = self.conns();
            if conns.get(&peer).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                conns.remove(&peer);
            }
        }
        Err("the chat connection closed as it opened".into())
    }

    /// Opens a chat connection to `peer`, and serves what it sends on it.
    async fn open(self: &Arc<Self>, peer: NodeId) -> Result<quinn::Connection, String> {
        let conn = self
            .link
            .connect(peer, chat::ALPN)
            .await
            .map_err(|e| e.to_string())?;
        let (link, c) = (self.link.clone(), conn.clone());
        self.link.spawn(async move { serve(&link, peer, &c).await });
        Ok(conn)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<NodeId, Slot>> {
        self.conns.lock().expect("chat lock is never poisoned")
    }

    /// Sends `text` to `peer` over our connection. Returns once the peer has
    /// stored it; only then is it stored here as sent.
    pub async fn send(self: &Arc<Self>, peer: &str, text: &str) -> Result<MessageView, SendError> {
        if text.is_empty() || text.len() > chat::MAX_TEXT {
            return Err(SendError::BadText);
        }
        let id = self.link.resolve(peer).await?;
        let name = self.link.shown_name(&id);
        if !self.link.linked(&id) {
            return Err(SendError::NotConnected(name));
        }
        let mut msg = StoredMessage {
            id: MessageId::random(&mut rand::thread_rng()),
            from: self.link.id(),
            from_name: self.link.config().name.to_string(),
            from_verified: true,
            to: id,
            text: text.to_string(),
            sent_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
            received_at_ms: 0,
            kind: burrow_store::MessageKind::Chat,
        };
        let delivered = match self.conn_to(id).await {
            Ok(conn) => send(&conn, &msg).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        delivered.map_err(|reason| SendError::NotDelivered { name, reason })?;
        msg.received_at_ms = burrow_proto::time::unix_ms(SystemTime::now());
        let stored = msg.clone();
        self.link
            .with_store(move |s| s.insert_message(&stored))
            .await?;
        let shown = view(&self.link, &msg);
        self.link.emit(NodeEvent::Message(shown.clone()));
        Ok(shown)
    }

    /// The newest `limit` messages, oldest first.
    pub async fn messages(&self, limit: usize) -> Result<Vec<MessageView>, StoreFailure> {
        let stored = self.link.with_store(move |s| s.messages(limit)).await?;
        Ok(stored.iter().map(|m| view(&self.link, m)).collect())
    }

    /// Stores a notice from the server's operator in the chat history (from the
    /// server's key, named "server") and shows it like a message.
    fn notice(&self, text: String, everyone: bool) {
        if text.is_empty() || text.len() > burrow_proto::rendezvous::MAX_NOTICE {
            warn!(len = text.len(), "ignoring a server notice of bad length");
            return;
        }
        let Some(server) = self.link.server_id() else {
            return;
        };
        let now = burrow_proto::time::unix_ms(SystemTime::now());
        let m = StoredMessage {
            id: burrow_proto::chat::MessageId::random(&mut rand::thread_rng()),
            from: server,
            from_name: "server".into(),
            from_verified: true,
            to: self.link.id(),
            text,
            sent_at_ms: now,
            received_at_ms: now,
            kind: if everyone {
                MessageKind::NoticeToAll
            } else {
                MessageKind::NoticeToUs
            },
        };
        let link = self.link.clone();
        self.link.spawn(async move {
            let stored = m.clone();
            if let Err(e) = link.with_store(move |s| s.insert_message(&stored)).await {
                warn!(error = %e, "cannot store a server notice");
            }
            link.emit(NodeEvent::Message(view(&link, &m)));
        });
    }
}

/// A message as the API shows it.
fn view(link: &LinkHandle, m: &StoredMessage) -> MessageView {
    let rfc3339 =
        |ms| humantime::format_rfc3339_millis(burrow_proto::time::from_unix_ms(ms)).to_string();
    // Vouched for when it came, or since (its author saved as a contact).
    let from_verified = m.from_verified || link.vouched_name(&m.from, &m.from_name);
    MessageView {
        id: m.id.to_string(),
        from: m.from.to_string(),
        from_name: m.from_name.clone(),
        from_verified,
        to: m.to.to_string(),
        text: m.text.clone(),
        sent_at: rfc3339(m.sent_at_ms),
        received_at: rfc3339(m.received_at_ms),
        from_server: m.kind != burrow_store::MessageKind::Chat,
        everyone: m.kind == burrow_store::MessageKind::NoticeToAll,
    }
}

/// Sends `m` over `conn` and waits for the receiver's ack, all within
/// [`ACK_TIMEOUT`] (a peer withholding stream credit can't hang the sender).
pub(crate) async fn send(conn: &quinn::Connection, m: &StoredMessage) -> Result<(), ChatError> {
    tokio::time::timeout(ACK_TIMEOUT, exchange(conn, m))
        .await
        .map_err(|_| ChatError::Timeout)?
}

async fn exchange(conn: &quinn::Connection, m: &StoredMessage) -> Result<(), ChatError> {
    let (send, recv) = conn.open_bi().await?;
    let mut writer = FrameWriter::new(send, chat::VERSION, chat::MAX_FRAME);
    let mut reader = FrameReader::new(recv, chat::VERSION, chat::MAX_FRAME);
    writer
        .write(&ChatFrame::Message {
            id: m.id,
            text: m.text.clone(),
            sent_at_ms: m.sent_at_ms,
        })
        .await?;
    writer.finish();
    match reader.read::<ChatFrame>().await? {
        Some(ChatFrame::Ack { id }) if id == m.id => Ok(()),
        _ => Err(ChatError::BadAck),
    }
}

/// Receives messages on `conn` from `peer` until the connection closes.
pub(crate) async fn serve(link: &LinkHandle, peer: NodeId, conn: &quinn::Connection) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let link = link.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            match tokio::time::timeout(ACK_TIMEOUT, receive(&link, peer, send, recv)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(peer = %peer.short(), error = %e, "bad chat stream"),
                Err(_) => warn!(peer = %peer.short(), "chat stream stalled; dropped"),
            }
        }));
    }
}

async fn receive(
    link: &LinkHandle,
    peer: NodeId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), FramedError> {
    let mut reader = FrameReader::new(recv, chat::VERSION, chat::MAX_FRAME);
    let mut writer = FrameWriter::new(send, chat::VERSION, chat::MAX_FRAME);
    let Some(ChatFrame::Message {
        id,
        text,
        sent_at_ms,
    }) = reader.read::<ChatFrame>().await?
    else {
        debug!(peer = %peer.short(), "chat stream without a message");
        return Ok(());
    };
    if text.is_empty() || text.len() > chat::MAX_TEXT {
        warn!(peer = %peer.short(), len = text.len(), "refusing chat message of bad length");
        link.strike(peer, "a chat message of a bad length");
        return Ok(());
    }
    // The name the peer goes by here, and whether anyone vouches for it (a
    // serverless peer's name is only its claim), as they were when it came.
    let (from_name, from_verified) = link.name(&peer);
    let m = StoredMessage {
        id,
        from: peer,
        from_name,
        from_verified,
        to: link.id(),
        text,
        sent_at_ms,
        received_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
        kind: MessageKind::Chat,
    };
    let stored = m.clone();
    let fresh = match link.with_store(move |s| s.insert_message(&stored)).await {
        Ok(fresh) => fresh,
        Err(e) => {
            // Not stored, so not acknowledged: the sender reports it undelivered.
            warn!(error = %e, "cannot store a received message");
            return Ok(());
        }
    };
    writer.write(&ChatFrame::Ack { id }).await?;
    writer.finish();
    if fresh {
        link.emit(NodeEvent::Message(view(link, &m)));
    }
    Ok(())
}
