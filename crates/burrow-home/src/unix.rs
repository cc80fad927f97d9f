//! Linux and macOS: the control socket is a Unix socket, the home's privacy
//! is its mode bits (0700 for the directory, 0600 for what is in it) and the
//! peer's uid.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a connection is split into.
pub type ReadHalf = tokio::net::unix::OwnedReadHalf;
/// What a connection is split into.
pub type WriteHalf = tokio::net::unix::OwnedWriteHalf;

/// The control socket's path in `home`.
pub fn address(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// A bound control socket.
pub struct Listener(tokio::net::UnixListener);

/// One control connection.
pub struct Stream(tokio::net::UnixStream);

/// Binds the socket in `home` (mode 0600), replacing a stale one left by a
/// process that died; refuses when a live one answers there. It is bound
/// under a private name, given its mode, and only then renamed into place,
/// so it is never reachable with the mode it was bound with.
pub fn bind(home: &Path) -> io::Result<Listener> {
    let path = &address(home);
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "something is already running there",
        ));
    }
    let staging = home.join(format!(".control.sock.{}", std::process::id()));
    let _ = fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging)?;
    let placed = fs::set_permissions(&staging, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = fs::remove_file(&staging);
        return Err(e);
    }
    Ok(Listener(listener))
}

impl Listener {
    /// The next connection, if it comes from a process of our user (or
    /// root): only they may drive a node or a server, whatever the socket's
    /// mode. Anyone else's is closed with a `PermissionDenied` error.
    pub async fn accept(&mut self) -> io::Result<Stream> {
        let (stream, _) = self.0.accept().await?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        match stream.peer_cred() {
            Ok(c) if c.uid() == me || c.uid() == 0 => Ok(Stream(stream)),
            peer => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                match peer {
                    Ok(c) => format!("another user (uid {})", c.uid()),
                    Err(e) => format!("a process whose user is unknown ({e})"),
                },
            )),
        }
    }
}

/// Connects to the socket in `home`.
pub async fn connect(home: &Path) -> io::Result<Stream> {
    tokio::net::UnixStream::connect(address(home))
        .await
        .map(Stream)
}

impl Stream {
    /// Its two directions, each to a task of its own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        self.0.into_split()
    }
}

/// Removes the socket in `home` (on the way out).
pub fn unlink(home: &Path) {
    let _ = fs::remove_file(address(home));
}

/// Creates `dir` (and its parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// An existing home must be ours and closed to others: it holds the key, the
/// stores and the control socket, whose protection starts with the directory.
pub fn check_private_dir(dir: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let denied = |why: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && me != 0 {
        return denied(format!(
            "{} belongs to another user (uid {}); use a home of your own",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return denied(format!(
            "{} is open to other users (mode {mode:o}): run chmod 700 on it, or use another home",
            dir.display()
        ));
    }
    Ok(())
}

/// Makes files that `options` creates readable by their owner only.
pub fn owner_only(options: &mut fs::OpenOptions) -> &mut fs::OpenOptions {
    options.mode(0o600)
}

/// Whether users other than the owner may read the file `meta` describes,
/// and what to run about it.
pub fn open_to_others(meta: &fs::Metadata) -> Option<&'static str> {
    (meta.permissions().mode() & 0o077 != 0).then_some("run chmod 600 on it")
}

/// Makes an existing file readable by its owner only.
pub fn restrict(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}
