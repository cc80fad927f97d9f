//! Why a node could not start, and why an operation on a running node
//! failed: each with a hint for the user.

use std::path::PathBuf;

use burrow_proto::chat;
use burrow_proto::rendezvous::Refusal;

use crate::session::SessionError;

/// Why a node could not start. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another node holds the home directory.
    #[error("a node is already running in {0}")]
    AlreadyRunning(PathBuf),
    /// The home directory is unusable.
    #[error("cannot use home directory {path}: {source}")]
    Home {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the node store: {0}")]
    Store(#[from] burrow_store::StoreError),
    /// The socket could not be bound.
    #[error(transparent)]
    Endpoint(#[from] burrow_net::EndpointError),
    /// The first registration with the server failed.
    #[error(transparent)]
    Server(#[from] SessionError),
}

impl StartError {
    /// What the user can do.
    pub fn hint(&self) -> Option<String> {
        match self {
            StartError::AlreadyRunning(home) => Some(format!(
                "stop it first, or talk to it: burrow --home {} status",
                home.display()
            )),
            StartError::Server(e) => e.hint(),
            _ => None,
        }
    }
}

/// Why an operation on a running node failed. Each has a hint for the user.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No peer by that name or id.
    #[error("no peer called {0:?} is known")]
    UnknownPeer(String),
    /// An id prefix matching several peers.
    #[error("{0:?} matches several peers: {1}")]
    AmbiguousPeer(String, String),
    /// The node is between server sessions.
    #[error("not registered with the server right now")]
    ServerUnavailable,
    /// The server did not answer in time.
    #[error("the server did not answer")]
    NoAnswer,
    /// The server refused.
    #[error("{name}: {reason}")]
    Refused {
        /// The peer concerned.
        name: String,
        /// Why.
        reason: Refusal,
    },
    /// Another operation on this peer is waiting for the server.
    #[error("another request about {0} is in progress")]
    Busy(String),
    /// No request to answer or withdraw.
    #[error("there is no pending request {0}")]
    NoRequest(String),
    /// Already connected.
    #[error("already connected to {0}")]
    AlreadyConnected(String),
    /// No connection to send over.
    #[error("not connected to {0}")]
    NotConnected(String),
    /// The message is empty or too long.
    #[error("message must have 1 to {} bytes", chat::MAX_TEXT)]
    BadText,
    /// The message did not reach the peer (it was not stored there).
    #[error("message to {name} not delivered: {reason}")]
    NotDelivered {
        /// The peer.
        name: String,
        /// Why.
        reason: String,
    },
    /// The node's store failed.
    #[error("store error: {0}")]
    Store(String),
    /// NAT diagnosis failed.
    #[error("NAT diagnosis failed: {0}")]
    Nat(String),
    /// A local file could not be read, hashed or written.
    #[error("{0}")]
    File(String),
    /// A share name breaks the rules.
    #[error("bad share name: {0}")]
    BadName(burrow_proto::files::ShareNameError),
    /// We don't offer that.
    #[error("you are not sharing {0:?}")]
    NoSuchShare(String),
    /// A name (or hash prefix) that fits several files.
    #[error("{0:?} names several files: {1}")]
    AmbiguousFile(String, String),
    /// The tracker knows no such file.
    #[error("the tracker knows no file {0:?}")]
    UnknownFile(String),
    /// Nobody who has the file is online.
    #[error("nobody who has {name:?} is online ({offline} providers offline)")]
    NoProviders {
        /// The file's name.
        name: String,
        /// How many providers are offline.
        offline: u32,
    },
    /// The target file exists.
    #[error("{0} already exists")]
    Exists(String),
    /// We already have this file.
    #[error("you already have this file: {0}")]
    AlreadyHave(String),
    /// The same file is being downloaded already.
    #[error("{0:?} is already being downloaded")]
    AlreadyDownloading(String),
    /// A download stopped before the file was complete.
    #[error("download stopped: {0}")]
    Download(String),
    /// A topic name breaks the rules.
    #[error("bad topic: {0}")]
    BadTopic(String),
    /// No post has that id (prefix).
    #[error("no post {0:?} is known here")]
    NoSuchPost(String),
    /// An id prefix matching several posts.
    #[error("{0:?} matches several posts: {1}")]
    AmbiguousPost(String, String),
    /// Only serverless nodes have tickets.
    #[error("this node runs with a server; tickets are for networks without one")]
    NotServerless,
    /// The mesh can't do what was asked.
    #[error("{0}")]
    Mesh(String),
    /// A setting's value is not one it takes.
    #[error("{0}")]
    BadSetting(String),
    /// The peer is not a contact.
    #[error("{0} is not a contact")]
    NotAContact(String),
    /// A peer's files service failed.
    #[error("{name}: {reason}")]
    Peer {
        /// The peer.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

impl ApiError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ApiError::UnknownPeer(_) => "burrow peers lists who is online".into(),
            ApiError::AmbiguousPeer(..) => "name it by more of its id (`burrow peers` lists them)".into(),
            ApiError::ServerUnavailable | ApiError::NoAnswer => {
                "the node reconnects by itself; try again in a moment (burrow status shows the server link)".into()
            }
            ApiError::Refused { reason: Refusal::PeerOffline, .. } => "wait until they are online (burrow peers)".into(),
            ApiError::NoRequest(_) => "burrow peers shows pending requests".into(),
            ApiError::AlreadyConnected(n) => format!("burrow send {n} \"...\""),
            ApiError::NotConnected(n) => format!("run burrow connect {n} first; {n} must accept"),
            ApiError::NotDelivered { .. } => "nothing was stored on either side; send it again".into(),
            ApiError::NoSuchShare(_) => "burrow shares lists what you offer".into(),
            ApiError::AmbiguousFile(..) => "use the full hash (burrow search shows it)".into(),
            ApiError::UnknownFile(f) => format!("burrow search {f} finds files whose names contain it"),
            ApiError::NoProviders { .. } => "try again when a provider is online (burrow search shows them)".into(),
            ApiError::Exists(_) => "use --force to replace it, or -o to save elsewhere; nothing was lost, the download is kept".into(),
            ApiError::Download(_) => "run the same get again: it continues from what was already verified".into(),
            ApiError::NoSuchPost(_) => "burrow forum lists posts with their ids".into(),
            ApiError::AmbiguousPost(..) => "type more of the id".into(),
            ApiError::NotServerless => "start a node without --server to begin a network of your own: burrow up --name <name>".into(),
            ApiError::BadSetting(_) => "burrow settings incoming ask|contacts-only|anyone".into(),
            ApiError::NotAContact(_) => "burrow contacts list shows your contacts".into(),
            _ => return None,
        })
    }
}
