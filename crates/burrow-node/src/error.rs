//! Why a node could not start, and why each operation on a running node
//! failed: one error type per operation, each variant with its text and a
//! hint for the user ([`Hinted`]), turned into the control API's JSON error
//! only at that boundary ([`crate::control`]).

use std::path::PathBuf;

use burrow_proto::chat;
use burrow_proto::rendezvous::Refusal;

use crate::session::error::SessionError;

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

/// A failure of the node's own store (or of the blocking task that ran it).
#[derive(Debug, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreFailure(pub String);

impl From<burrow_store::StoreError> for StoreFailure {
    fn from(e: burrow_store::StoreError) -> Self {
        StoreFailure(e.to_string())
    }
}

impl From<tokio::task::JoinError> for StoreFailure {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreFailure(e.to_string())
    }
}

/// An error the control API reports: its text, and what the user can do.
pub trait Hinted: std::fmt::Display {
    /// What the user can do about it.
    fn hint(&self) -> Option<String> {
        None
    }
}

impl Hinted for StoreFailure {}

/// A peer a person named could not be told apart from the others.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No peer by that name or id.
    #[error("no peer called {0:?} is known")]
    Unknown(String),
    /// A name or id prefix matching several peers.
    #[error("{0:?} matches several peers: {1}")]
    Ambiguous(String, String),
}

impl Hinted for PeerError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            PeerError::Unknown(_) => "burrow peers lists who is online".into(),
            PeerError::Ambiguous(..) => {
                "name it by more of its id (`burrow peers` lists them)".into()
            }
        })
    }
}

/// The server could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node is between server sessions (or has no server).
    #[error("not registered with the server right now")]
    Unavailable,
    /// The server did not answer in time.
    #[error("the server did not answer")]
    NoAnswer,
}

impl Hinted for ServerError {
    fn hint(&self) -> Option<String> {
        Some("the node reconnects by itself; try again in a moment (burrow status shows the server link)".into())
    }
}

/// Why `connect`, `accept`, `reject` or `cancel` failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The peer could not be told apart.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The server could not be asked.
    #[error(transparent)]
    Server(#[from] ServerError),
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
    /// No request to answer or withdraw (`from <peer>` or `to <peer>`).
    #[error("there is no pending request {0}")]
    NoRequest(String),
    /// Already connected.
    #[error("already connected to {0}")]
    AlreadyConnected(String),
}

impl Hinted for RequestError {
    fn hint(&self) -> Option<String> {
        match self {
            RequestError::Peer(e) => e.hint(),
            RequestError::Server(e) => e.hint(),
            RequestError::Refused {
                reason: Refusal::PeerOffline,
                ..
            } => Some("wait until they are online (burrow peers)".into()),
            RequestError::NoRequest(_) => Some("burrow peers shows pending requests".into()),
            RequestError::AlreadyConnected(n) => Some(format!("burrow send {n} \"...\"")),
            _ => None,
        }
    }
}

/// Why `send` failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer could not be told apart.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The message is empty or too long.
    #[error("message must have 1 to {} bytes", chat::MAX_TEXT)]
    BadText,
    /// No link to send over.
    #[error("not connected to {0}")]
    NotConnected(String),
    /// The message did not reach the peer (it was not stored there).
    #[error("message to {name} not delivered: {reason}")]
    NotDelivered {
        /// The peer.
        name: String,
        /// Why.
        reason: String,
    },
    /// It reached the peer, but could not be stored here.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl Hinted for SendError {
    fn hint(&self) -> Option<String> {
        match self {
            SendError::Peer(e) => e.hint(),
            SendError::NotConnected(n) => {
                Some(format!("run burrow connect {n} first; {n} must accept"))
            }
            SendError::NotDelivered { .. } => {
                Some("nothing was stored on either side; send it again".into())
            }
            _ => None,
        }
    }
}

/// Why `contacts` or `settings` failed.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    /// The peer to add could not be told apart.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The peer to remove is not a contact.
    #[error("{0} is not a contact")]
    NotAContact(String),
    /// A setting's value is not one it takes.
    #[error("{0}")]
    BadSetting(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl Hinted for ContactsError {
    fn hint(&self) -> Option<String> {
        match self {
            ContactsError::Peer(e) => e.hint(),
            ContactsError::NotAContact(_) => {
                Some("burrow contacts list shows your contacts".into())
            }
            ContactsError::BadSetting(_) => {
                Some("burrow settings incoming ask|contacts-only|anyone".into())
            }
            ContactsError::Store(_) => None,
        }
    }
}

/// Why `nat` failed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// There is no server to test against right now.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The node reaches the server over TCP only: there is no UDP mapping.
    #[error("this node reaches the server over TCP because nothing came back over UDP: this network seems to drop UDP, so there is no UDP mapping to test; peers reach you through the server's relay")]
    NoUdp,
    /// The server's main STUN address did not answer.
    #[error("the server did not answer STUN at {0}")]
    NoAnswer(std::net::SocketAddr),
    /// The tests could not run.
    #[error("NAT diagnosis failed: {0}")]
    Failed(String),
}

impl Hinted for NatError {
    fn hint(&self) -> Option<String> {
        match self {
            NatError::Server(e) => e.hint(),
            _ => None,
        }
    }
}

/// Why `share`, `shares`, `unshare` or `search` failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The local file could not be read or hashed.
    #[error("{0}")]
    File(String),
    /// A share name (or search) breaks the rules.
    #[error("bad share name: {0}")]
    BadName(burrow_proto::files::ShareNameError),
    /// We don't offer that.
    #[error("you are not sharing {0:?}")]
    NoSuchShare(String),
    /// A name (or hash prefix) that fits several shares.
    #[error("{0:?} names several files: {1}")]
    AmbiguousFile(String, String),
    /// The tracker could not be asked.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl Hinted for ShareError {
    fn hint(&self) -> Option<String> {
        match self {
            ShareError::NoSuchShare(_) => Some("burrow shares lists what you offer".into()),
            ShareError::AmbiguousFile(..) => {
                Some("use the full hash (burrow shares shows it)".into())
            }
            ShareError::Server(e) => e.hint(),
            _ => None,
        }
    }
}

/// Why `files <peer>` failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The peer could not be told apart.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// No link to ask over.
    #[error("not connected to {0}")]
    NotConnected(String),
    /// The peer's files service failed.
    #[error("{name}: {reason}")]
    Failed {
        /// The peer.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

impl Hinted for ListError {
    fn hint(&self) -> Option<String> {
        match self {
            ListError::Peer(e) => e.hint(),
            ListError::NotConnected(n) => {
                Some(format!("run burrow connect {n} first; {n} must accept"))
            }
            ListError::Failed { .. } => None,
        }
    }
}

/// Why `get` failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// A local file or directory could not be used.
    #[error("{0}")]
    File(String),
    /// The tracker knows no such file.
    #[error("the tracker knows no file {0:?}")]
    UnknownFile(String),
    /// A name (or hash prefix) that fits several files.
    #[error("{0:?} names several files: {1}")]
    AmbiguousFile(String, String),
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
    /// The download stopped before the file was complete.
    #[error("download stopped: {0}")]
    Download(String),
    /// The tracker could not be asked.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl Hinted for GetError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            GetError::UnknownFile(f) => format!("burrow search {f} finds files whose names contain it"),
            GetError::AmbiguousFile(..) => "use the full hash (burrow search shows it)".into(),
            GetError::NoProviders { .. } => "try again when a provider is online (burrow search shows them)".into(),
            GetError::Exists(_) => "use --force to replace it, or -o to save elsewhere; nothing was lost, the download is kept".into(),
            GetError::Download(_) => "run the same get again: it continues from what was already verified".into(),
            GetError::Server(e) => return e.hint(),
            _ => return None,
        })
    }
}

/// Why `post`, `forum` or `follow` failed.
#[derive(Debug, thiserror::Error)]
pub enum ForumError {
    /// The post is empty or too long.
    #[error("a post must have 1 to {} bytes", burrow_proto::forum::MAX_TEXT)]
    BadText,
    /// A topic name breaks the rules, or a reply names another topic than its parent's.
    #[error("bad topic: {0}")]
    BadTopic(String),
    /// No post has that id (prefix).
    #[error("no post {0:?} is known here")]
    NoSuchPost(String),
    /// An id prefix matching several posts.
    #[error("{0:?} matches several posts: {1}")]
    AmbiguousPost(String, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl From<burrow_store::StoreError> for ForumError {
    fn from(e: burrow_store::StoreError) -> Self {
        ForumError::Store(e.into())
    }
}

impl Hinted for ForumError {
    fn hint(&self) -> Option<String> {
        match self {
            ForumError::NoSuchPost(_) => Some("burrow forum lists posts with their ids".into()),
            ForumError::AmbiguousPost(..) => Some("type more of the id".into()),
            _ => None,
        }
    }
}

/// Why `ticket` failed.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// Only serverless nodes have tickets.
    #[error("this node runs with a server; tickets are for networks without one")]
    NotServerless,
    /// We know no address of our own to put in it yet.
    #[error("this node knows no address of its own yet")]
    NoAddress,
}

impl Hinted for TicketError {
    fn hint(&self) -> Option<String> {
        match self {
            TicketError::NotServerless => Some("start a node without --server to begin a network of your own: burrow up --name <name>".into()),
            TicketError::NoAddress => Some("wait a moment for the node to learn its addresses".into()),
        }
    }
}

/// Why `expose` or `unexpose` failed.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    /// The service's name breaks the rules.
    #[error("bad service name: {0}")]
    BadName(burrow_proto::tunnel::ServiceNameError),
    /// The address to expose is not one.
    #[error("bad address {0}")]
    BadAddr(String),
    /// No `--allow`.
    #[error("nobody may reach a service exposed to no one")]
    NobodyAllowed,
    /// A peer `--allow` names could not be told apart.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// [`burrow_proto::tunnel::MAX_SERVICES`] are exposed already.
    #[error("{} services are exposed already", burrow_proto::tunnel::MAX_SERVICES)]
    TooMany,
    /// We expose nothing by that name.
    #[error("you expose no service called {0:?}")]
    NoSuchService(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl Hinted for ExposeError {
    fn hint(&self) -> Option<String> {
        match self {
            ExposeError::BadAddr(_) => {
                Some("e.g. 127.0.0.1:22, [::1]:8080, localhost:80 or just 22".into())
            }
            ExposeError::NobodyAllowed => {
                Some("say who may: --allow <peer> (several times), or --allow contacts".into())
            }
            ExposeError::Peer(e) => e.hint(),
            ExposeError::NoSuchService(_) => Some("burrow expose lists what you expose".into()),
            _ => None,
        }
    }
}

/// Why `services`, `forward`, `unforward` or `pipe` failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Not `peer/service`.
    #[error("{0:?} is not peer/service")]
    BadTarget(String),
    /// The local address is not one.
    #[error("bad local address {0:?}")]
    BadListen(String),
    /// The peer could not be told apart.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// No link to the peer could be had.
    #[error("no link to {name}: {why}")]
    NoLink {
        /// The peer.
        name: String,
        /// Why.
        why: String,
    },
    /// The peer refused (in its words: `alice does not expose "web" to you`).
    #[error("{0}")]
    NotExposed(String),
    /// The tunnel failed.
    #[error("{0}")]
    Tunnel(String),
    /// The local port is taken.
    #[error("{addr} is in use{}", owner.as_ref().map(|o| format!(" by {o}")).unwrap_or_default())]
    InUse {
        /// The address.
        addr: std::net::SocketAddr,
        /// Who holds it, when that can be told.
        owner: Option<String>,
    },
    /// The local port can't be listened on.
    #[error("cannot listen on {addr}: {why}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        why: String,
    },
    /// A forward listens there already.
    #[error("a forward listens on {0} already")]
    Exists(std::net::SocketAddr),
    /// No forward listens there.
    #[error("no forward listens on {0}")]
    NoSuchForward(std::net::SocketAddr),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
}

impl Hinted for ForwardError {
    fn hint(&self) -> Option<String> {
        match self {
            ForwardError::BadTarget(_) => {
                Some("e.g. alice/web (burrow services alice lists them)".into())
            }
            ForwardError::BadListen(_) => {
                Some("e.g. 127.0.0.1:8080, [::1]:8080 or just 8080".into())
            }
            ForwardError::Peer(e) => e.hint(),
            ForwardError::NotExposed(_) => {
                Some("burrow services <peer> lists what it exposes to you".into())
            }
            ForwardError::InUse { .. } | ForwardError::Exists(_) => {
                Some("pick another local port (burrow forward lists yours)".into())
            }
            ForwardError::NoSuchForward(_) => Some("burrow forward lists yours".into()),
            _ => None,
        }
    }
}
