//! Local control connections: how the CLI talks to a running node or server
//! (its admin socket). One JSON object per line each way; every reply is a
//! [`Reply`]. The transport is the platform's ([`crate::sys`]): a Unix socket,
//! `<home>/control.sock`, mode 0600 inside the 0700 home with the peer's uid
//! checked, on Linux and macOS; a named pipe whose security descriptor admits
//! our user alone on Windows. Callers see [`Listener`], [`Stream`] and
//! [`connect`], whichever it is.
//!
//! A named pipe has no half-close: a client ends a streaming request by
//! sending a byte or closing, not by shutting down its writing side.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::sys;

/// A reply line: `{"ok": true, "data": ...}` or
/// `{"ok": false, "error": "...", "hint": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the user can do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Reply {
    /// A success carrying `data`.
    pub fn ok(data: serde_json::Value) -> Self {
        Reply {
            ok: true,
            data: Some(data),
            error: None,
            hint: None,
        }
    }

    /// A failure: what went wrong and what to do.
    pub fn err(error: String, hint: Option<String>) -> Self {
        Reply {
            ok: false,
            data: None,
            error: Some(error),
            hint,
        }
    }

    /// Writes it as one line.
    pub async fn write_to(&self, w: &mut (impl AsyncWriteExt + Unpin)) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(self).expect("replies serialize to JSON");
        line.push(b'\n');
        w.write_all(&line).await
    }
}

/// Where the control connection of the node or server in `home` is: the
/// socket file on Linux and macOS, the pipe's name on Windows.
pub fn address(home: &Path) -> PathBuf {
    sys::address(home)
}

/// The listening end of a control connection, bound by a running node or
/// server.
pub struct Listener(sys::Listener);

/// One control connection.
pub struct Stream(sys::Stream);

/// The half of a [`Stream`] that reads.
pub type ReadHalf = sys::ReadHalf;
/// The half of a [`Stream`] that writes.
pub type WriteHalf = sys::WriteHalf;

/// Binds the control connection of `home`, reachable by its owner alone;
/// a stale one left by a process that died is replaced, a live one refuses
/// (`AddrInUse`).
pub fn bind(home: &Path) -> std::io::Result<Listener> {
    sys::bind(home).map(Listener)
}

impl Listener {
    /// The next client. A client run by another user is refused with a
    /// `PermissionDenied` error that says who it was (the caller logs it and
    /// goes on).
    pub async fn accept(&mut self) -> std::io::Result<Stream> {
        self.0.accept().await.map(Stream)
    }
}

/// Connects to the node or server in `home`; `NotFound` or
/// `ConnectionRefused` when none runs there.
pub async fn connect(home: &Path) -> std::io::Result<Stream> {
    sys::connect(home).await.map(Stream)
}

impl Stream {
    /// Its two directions, each to a task of its own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        self.0.into_split()
    }
}

/// Removes the control socket in `home` (on the way out).
pub fn unlink(home: &Path) {
    sys::unlink(home)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// The platform's transport end to end: a client's line reaches the
    /// listener and the answer comes back; a second node in the same home is
    /// refused while the first runs; and once it is gone, the home binds
    /// again.
    #[tokio::test]
    async fn a_client_reaches_its_node_and_a_second_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        crate::keyfile::create_private_dir(&home).unwrap();
        let mut listener = bind(&home).unwrap();
        let served = tokio::spawn(async move {
            let (read, mut write) = listener.accept().await.unwrap().into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            Reply::ok(serde_json::json!({ "heard": line.trim() }))
                .write_to(&mut write)
                .await
                .unwrap();
            listener
        });
        let (read, mut write) = connect(&home).await.unwrap().into_split();
        write.write_all(b"status\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(read).read_line(&mut answer).await.unwrap();
        let reply: Reply = serde_json::from_str(&answer).unwrap();
        assert_eq!(reply.data.unwrap()["heard"], "status");

        let listener = served.await.unwrap();
        let second = bind(&home).err().expect("a second bind in a live home");
        assert_eq!(second.kind(), std::io::ErrorKind::AddrInUse);
        drop(listener);
        unlink(&home);
        let again = connect(&home)
            .await
            .err()
            .expect("nothing answers any more");
        assert!(matches!(
            again.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ));
        bind(&home).expect("the home binds again");
    }
}
