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
