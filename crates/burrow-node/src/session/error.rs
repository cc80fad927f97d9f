//! Why a session could not be set up or was lost, with what to do about it.

use burrow_net::ConnectError;
use burrow_proto::rendezvous::Refusal;
use burrow_proto::NodeId;

/// Why a session could not be set up or was lost.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The server's host name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// host:port.
        host: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server at {addr}: {source}")]
    Unreachable {
        /// Where we dialed (an address, or the name the proxy was asked for).
        addr: String,
        /// Why.
        source: ConnectError,
    },
    /// The server proved a key other than the one its address pins.
    #[error("the server at {addr} presented key {actual}, but the address pins {expected}")]
    PinnedKeyMismatch {
        /// Where we dialed (an address, or the name the proxy was asked for).
        addr: String,
        /// Pinned key.
        expected: NodeId,
        /// Presented key.
        actual: NodeId,
    },
    /// The server's key differs from the one recorded on first use.
    #[error("server key changed since last time: {host} now presents {actual}, but {file} records {expected}")]
    KeyChanged {
        /// host:port.
        host: String,
        /// Recorded key.
        expected: NodeId,
        /// Presented key.
        actual: NodeId,
        /// The known_servers file.
        file: String,
    },
    /// The server refused our registration.
    #[error("the server refused to register us: {reason}")]
    Refused {
        /// Why.
        reason: Refusal,
        /// Our key: what an allowlist's operator needs to let us in.
        us: NodeId,
    },
    /// The server ended our session for good (kicked, banned, taken off the
    /// allowlist).
    #[error("the server disconnected us: {reason}")]
    Expelled {
        /// Why.
        reason: Refusal,
        /// Our key.
        us: NodeId,
    },
    /// The server's name does not resolve here (or to nothing we have a
    /// route to), and the proxy, asked for it by name, did not get us
    /// through.
    #[error("{host} is out of reach from here but through the proxy, and the proxy at {proxy} did not get through: {reason}")]
    Proxy {
        /// The server's name and HTTPS port.
        host: String,
        /// The proxy.
        proxy: String,
        /// What the proxy or the server's HTTPS port said.
        reason: String,
    },
    /// The session broke.
    #[error("lost the server: {0}")]
    Lost(String),
}

impl SessionError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SessionError::Unreachable { .. } => {
                "is `burrow server` running there, and is its UDP port open?".into()
            }
            SessionError::Proxy { .. } => {
                "does the server listen with --https (its URL then ends in ?https=PORT), and does the proxy allow that port?".into()
            }
            SessionError::PinnedKeyMismatch { .. } => {
                "check the server id in the address with the server's operator".into()
            }
            SessionError::KeyChanged { file, host, .. } => {
                format!("if you trust the new key, remove the line for {host} from {file}")
            }
            SessionError::Refused { reason, us } | SessionError::Expelled { reason, us } => {
                return refusal_hint(reason, us)
            }
            _ => return None,
        })
    }
}

/// What a person can do about a refusal of our registration (`us` is our key).
fn refusal_hint(r: &Refusal, us: &NodeId) -> Option<String> {
    Some(match r {
        Refusal::NameTaken => {
            "that name belongs to another key on this server: pick another with --name".into()
        }
        Refusal::CredentialsRequired => {
            "give the account's password (--password-stdin) or an invite from the server's operator (--invite CODE)".into()
        }
        Refusal::WrongPassword => {
            "check the password; after 5 failures logins for the name are blocked for a while".into()
        }
        Refusal::InviteInvalid => "ask the server's operator for a new invite".into(),
        Refusal::NotAllowed => format!(
            "this server admits only the nodes its operator allowed: ask them to run `burrow admin allow {us}`"
        ),
        Refusal::Banned { until_ms: Some(t) } => format!(
            "the ban ends at {}",
            humantime::format_rfc3339_seconds(burrow_proto::time::from_unix_ms(*t))
        ),
        Refusal::Banned { until_ms: None } => {
            "ask the server's operator if you think it is a mistake".into()
        }
        Refusal::Blocked { retry_in_ms } => {
            format!("try again in {} s", retry_in_ms.div_ceil(1000))
        }
        Refusal::Kicked => "start the node again to come back".into(),
        _ => return None,
    })
}

impl From<burrow_net::FramedError> for SessionError {
    fn from(e: burrow_net::FramedError) -> Self {
        SessionError::Lost(e.to_string())
    }
}
