//! Local control sockets: how the CLI talks to a running node
//! (`<home>/control.sock`) or server (the admin socket). One JSON object per
//! line each way; every reply is a [`Reply`]. The socket is a Unix socket with
//! mode 0600 inside the 0700 home, so only its owner reaches it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

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

/// The control socket's path in a node's or server's `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// Binds the control socket in `home` (mode 0600), replacing a stale one left
/// by a process that died; refuses when a live one answers there. The socket
/// is bound under a private name, given its mode, and only then renamed into
/// place, so it is never reachable with the mode it was bound with.
pub fn bind(home: &Path) -> std::io::Result<UnixListener> {
    let path = &socket_path(home);
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "something is already running there",
        ));
    }
    let staging = home.join(format!(".control.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// Whether the process at the other end of `stream` runs as this process's
/// user (or as root): only they may drive a node or a server, whatever the
/// socket's file mode.
pub fn peer_is_owner(stream: &tokio::net::UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == me || c.uid() == 0)
}

/// Removes the control socket in `home` (on the way out).
pub fn unlink(home: &Path) {
    let _ = std::fs::remove_file(socket_path(home));
}
