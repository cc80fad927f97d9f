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

/// The chat service (`burrow/chat/1`): a connection of its own to each
/// linked peer it talks to, beside the link's, opened by the first message
/// either way and kept while it lives.
pub(crate) struct Chat {
    link: LinkHandle,
    /// The chat connection we opened to each peer, while it is open.
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
}

impl Service for Chat {
    fn alpn(&self) -> &'static [u8] {
        chat::ALPN
    }

    fn accept(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) -> Serving {
        Box::pin(async move { serve(&self.link, peer, &conn).await })
    }

    fn on_link(self: Arc<Self>, event: &LinkEvent) {
        match event {
            LinkEvent::Notice { text, everyone } => self.notice(text.clone(), *everyone),
            // A chat connection outlives no link: the next one opens a new one.
            LinkEvent::Down { peer } => {
                if let Some(c) = self.conns().remove(peer) {
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

    /// Our chat connection to `peer` (linked): the one we have, or a new one
    /// on the link's path.
    async fn conn_to(&self, peer: NodeId) -> Result<quinn::Connection, String> {
        let open = self.conns().get(&peer).cloned();
        if let Some(c) = open.filter(|c| c.close_reason().is_none()) {
            return Ok(c);
        }
        let conn = self
            .link
            .connect(peer, chat::ALPN)
            .await
            .map_err(|e| e.to_string())?;
        let mut conns = self.conns();
        conns.retain(|_, c| c.close_reason().is_none());
        conns.insert(peer, conn.clone());
        Ok(conn)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<NodeId, quinn::Connection>> {
        self.conns.lock().expect("chat lock is never poisoned")
    }

    /// Sends `text` to `peer` over our connection. Returns once the peer has
    /// stored it; only then is it stored here as sent.
    pub async fn send(&self, peer: &str, text: &str) -> Result<MessageView, SendError> {
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
