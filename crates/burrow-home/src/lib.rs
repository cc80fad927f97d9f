//! A burrow home directory (a node's or a server's): what lives in it besides
//! the store, and who may touch it.
//!
//! - [`keyfile`]: the home made private (0700), and the key file in it (the
//!   Ed25519 seed, 0600), made on first use.
//! - [`control`]: the local control socket the CLI talks to a node or server
//!   on (0600 inside the home, its peer's uid checked), and the [`Reply`]
//!   every request gets.

pub mod control;
pub mod keyfile;

pub use control::Reply;
