//! burrow's node daemon.
//!
//! A [`Node`] owns one [`burrow_net::Endpoint`] (one UDP socket) and composes:
//!
//! - the server session ([`session`]): registration, live presence, the connect
//!   broker; it reconnects with jittered exponential backoff when the server goes;
//! - peer links ([`peers`]): dialing an accepted peer's candidates, accepting the
//!   connections of peers we accepted, and tracking each link's state; a link
//!   is a connection of its own (`burrow/link/1`), the services' beside it;
//! - services, each on its own ALPN: [`chat`] (`burrow/chat/1`), [`files`]
//!   (`burrow/files/1`: sharing, serving verified ranges, multi-source downloads)
//!   and [`mesh`] (`burrow/mesh/1`: forum gossip and reconciliation, clock
//!   offsets, and without a server, joining from tickets and introductions);
//! - the forum ([`forum`]): signed posts, threads, topics;
//! - the control API ([`control`]): a Unix socket in the home directory, readable by
//!   its owner only, that every CLI command talks to.
//!
//! State lives in [`burrow_store::NodeStore`] (chat history, shares, download
//! progress), in `home/files/` (outboards, partial downloads) and in memory (who is
//! online, links). Every protocol step is logged with `tracing`; what a person
//! should see is published as a [`NodeEvent`].

pub mod api;
pub mod chat;
mod conduct;
pub mod config;
pub mod contacts;
pub mod control;
mod error;
pub mod event;
pub mod files;
pub mod forum;
mod handle;
mod link;
pub mod mesh;
mod names;
pub mod nat;
mod node;
pub mod peers;
mod portmap;
mod presence;
mod service;
pub mod session;
mod state;
pub mod trust;
mod tunnel;

pub use config::{NodeConfig, PathPolicy};
pub use error::{
    ContactsError, ExposeError, ForumError, ForwardError, GetError, Hinted, ListError, NatError,
    PeerError, RequestError, SendError, ServerError, ShareError, StartError, StoreFailure,
    TicketError,
};
pub use event::NodeEvent;
pub use node::Node;
