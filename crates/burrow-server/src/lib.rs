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
//!
//! Who may register and what happens to those who misbehave is
//! [`admission::Admission`] (sans-IO too: policy, bans, the allowlist, rate
//! limits, failed-login blocks, misbehaviour scores); [`register`] applies it
//! and the accounts in the store to each Hello, with argon2 work on
//! [`password::Hasher`]. Decisions go to the audit log through [`journal`], and
//! the operator drives it all through the [`admin`] socket. [`silence`] drops
//! nodes that stopped sending, within a second of the idle timeout.

pub mod admin;
pub mod admission;
mod binder;
pub mod broker;
pub mod journal;
pub mod password;
pub mod presence;
mod register;
mod server;
mod session;
pub mod silence;
pub mod stun_grid;
pub mod tracker;

pub use admission::{AdmissionConfig, Policy};
pub use broker::BrokerConfig;
pub use server::{Server, ServerConfig, ServerError};
