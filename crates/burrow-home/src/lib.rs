//! A burrow home directory (a node's or a server's): what lives in it besides
//! the store, and who may touch it.
//!
//! - [`keyfile`]: the home made private (0700), and the key file in it (the
//!   Ed25519 seed, 0600), made on first use.
//! - [`control`]: the local control connection the CLI talks to a node or
//!   server on (a Unix socket, 0600 inside the home with its peer's uid
//!   checked; a named pipe for our user alone on Windows), and the [`Reply`]
//!   every request gets.
//! - [`private`]: files for the owner's eyes only (mode 0600; on Windows the
//!   home's access list, which names its user alone, is inherited).
//!
//! `unix.rs` and `windows.rs` hold all of it that differs by platform.

pub mod control;
pub mod keyfile;

// The platform's own code lives in these two modules, behind one interface.
#[cfg(unix)]
#[path = "unix.rs"]
mod sys;
#[cfg(windows)]
#[path = "windows.rs"]
mod sys;

/// Files that only the home's owner may read, by the platform's means.
pub mod private {
    pub use crate::sys::{owner_only, restrict};
}

pub use control::Reply;
