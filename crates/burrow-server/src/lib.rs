//! burrow's rendezvous server.
//!
//! One UDP port carries QUIC for nodes (ALPN `burrow/rendezvous/1`) and answers
//! STUN Binding requests. Each node holds one QUIC connection with one control
//! stream; the server binds its name to its key ([`burrow_store::ServerStore`]),
//! tells everyone who comes and goes, brokers connect requests ([`broker`]), and
//! keeps the file tracker ([`tracker`]: who offers which file; never the bytes).
//!
//! [`broker::Registry`] holds the rules and is sans-IO; [`Server`] is its driver:
//! one task per node connection, one timer task, one shared registry behind a
//! short-held mutex.

pub mod broker;
pub mod limit;
mod server;
pub mod tracker;

pub use broker::BrokerConfig;
pub use server::{Server, ServerConfig, ServerError};
