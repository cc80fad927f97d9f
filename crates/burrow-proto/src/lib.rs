//! burrow's pure core: everything two burrow programs must agree on, with no I/O.
//!
//! - [`id`]: Ed25519 identities. A [`NodeId`] is a public key; a [`SecretKey`] signs
//!   and proves it in TLS (raw public keys, RFC 7250).
//! - [`addr`]: how a person writes a server address (`burrow://<id>@host:port`).
//! - [`name`]: the names people register ([`Name`]).
//! - [`frame`]: the framing every stream uses: a length prefix, a version byte and a
//!   postcard body, with explicit maximum sizes checked before anything is allocated.
//! - [`rendezvous`]: node ↔ server messages (registration, presence, connect broker).
//! - [`punch`]: hole punching, as a sans-IO session.
//! - [`relay`]: the datagrams the server relays between two nodes.
//! - [`chat`]: the chat service's messages.
//! - [`files`]: the files service's messages, content hashes, and the rules that
//!   keep names from peers out of file paths.
//! - [`forum`]: signed, content-addressed posts and the hybrid logical clock that
//!   orders them.
//! - [`gossip`]: Plumtree broadcast trees, as a sans-IO machine.
//! - [`reconcile`]: range-based set reconciliation of post sets (negentropy).
//! - [`mesh`]: the mesh service's frames (gossip, sync, clock, introductions) and
//!   serverless tickets.
//! - [`stun`]: STUN Binding requests and responses (RFC 8489), on top of `stun_codec`.
//!
//! Nothing here depends on an async runtime or opens a socket; the crates above it
//! (`burrow-net`, `burrow-node`, `burrow-server`) do that.

pub mod addr;
pub mod chat;
pub mod files;
pub mod forum;
pub mod frame;
pub mod gossip;
pub mod id;
pub mod limit;
pub mod link;
pub mod mesh;
pub mod name;
pub mod punch;
pub mod reconcile;
pub mod relay;
pub mod rendezvous;
pub mod schedule;
pub mod stun;
pub mod time;
pub mod tunnel;

pub use addr::{ip_group, ServerAddr, ServerAddrError};
pub use files::{BlobHash, ShareName};
pub use frame::DecodeError;
pub use id::{NodeId, NodeIdError, SecretKey};
pub use name::{Name, NameError};
