//! A link's own connection (ALPN [`ALPN`]).
//!
//! Two linked peers hold one connection of their own, opened by the side
//! that dialed (through the relay at once, or once a punch found a path) to
//! the other's virtual address. While one is up the peers are linked: its
//! path is the link's path (direct or relayed), its round trip the link's,
//! its closing the link's end. It carries no streams: the services (chat,
//! files, the mesh) open connections of their own beside it, on the same
//! path, so none of them can hold up or tear down another, and a link is up
//! whether or not anyone is chatting.

/// ALPN of a link's own connection.
pub const ALPN: &[u8] = b"burrow/link/1";
