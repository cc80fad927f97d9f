//! Why burrow closes a QUIC connection: every application close code it
//! sends, in one place, so that no two places give one code two meanings.
//! The code is for programs (tests and peers read it); the reason bytes
//! beside it are for people reading logs, and may say more.

/// Declares [`Close`] and the list of its variants ([`ALL`], which
/// [`Close::of`] reads back from) in one place, so neither can miss one.
macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $code:expr,)*) => {
        /// A close code. [`Close::Done`] and [`Close::WrongKey`] are anyone's; the
        /// rest below 0x10 the server's (the rendezvous session's), from 0x10 the
        /// peers' services'.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Close {
            $($(#[$doc])* $name = $code,)*
        }

        /// Every code, for [`Close::of`].
        const ALL: &[Close] = &[$(Close::$name,)*];
    };
}

close_codes! {
    /// Nothing wrong: work done, goodbye, shutting down, a spare connection
    /// let go.
    Done = 0,
    /// The other end proved a key other than the one we dialed.
    WrongKey = 1,
    /// The server's node reads too slowly to keep up with what it is sent.
    TooSlow = 2,
    /// A frame that doesn't decode, or isn't allowed where it came.
    BadFrame = 3,
    /// The node registered again on a newer session.
    Replaced = 4,
    /// Registration refused (the refusal itself says why).
    Refused = 5,
    /// More messages than the node's budget allows.
    TooManyMessages = 6,
    /// Kicked, banned or taken off the allowlist by the operator.
    Expelled = 7,
    /// Sent nothing for the server's idle limit.
    Silent = 8,
    /// A peer connected that we never accepted, or on another's path.
    NotAccepted = 0x10,
    /// A peer broke a protocol's rules once too often, or a provider lied.
    Misbehaved = 0x20,
    /// A mesh Hello not admitted (no proof of membership, or a duplicate
    /// session).
    NotAMember = 0x21,
    /// More connections of one service from one peer than it may have.
    TooManyConnections = 0x22,
}

impl Close {
    /// The code as quinn sends it.
    pub fn code(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The close code of a connection the other end closed, if it is one
    /// of ours.
    pub fn of(error: &quinn::ConnectionError) -> Option<Close> {
        let quinn::ConnectionError::ApplicationClosed(c) = error else {
            return None;
        };
        ALL.iter().copied().find(|k| k.code() == c.error_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_its_own_and_reads_back() {
        let mut codes: Vec<u32> = ALL.iter().map(|c| *c as u32).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
        for &c in ALL {
            let closed = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: c.code(),
                reason: Default::default(),
            });
            assert_eq!(Close::of(&closed), Some(c));
        }
        let other = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(0x99),
            reason: Default::default(),
        });
        assert_eq!(Close::of(&other), None);
    }
}
