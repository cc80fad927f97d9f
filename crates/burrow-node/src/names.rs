//! The one rule for every name burrow shows: whose a name is as far as we
//! know, and how a name nobody vouches for is shown.

use burrow_proto::NodeId;

/// Whether `name` is `id`'s as far as a reader knows: the reader's own
/// (`me`, when `id` may be the reader), the name a contact was saved under, or
/// the name the server binds to the key. Anything else is only what the
/// author (of a post, a chat message, a serverless hello) claims. The one
/// rule for every name burrow shows.
pub fn vouched(
    id: &NodeId,
    name: &str,
    me: Option<&NodeId>,
    contact: Option<&str>,
    server_binding: Option<&str>,
) -> bool {
    me == Some(id) || contact == Some(name) || server_binding == Some(name)
}

/// A name as people read it: the name when vouched for, else the name with
/// the short form of `id` (a key in hex) beside it, so `alice [3f9a1c2e]` can't
/// pass for alice.
pub fn shown(name: &str, id: &str, vouched: bool) -> String {
    if vouched {
        name.to_string()
    } else {
        format!("{name} [{}]", id.get(..NodeId::SHORT_LEN).unwrap_or(id))
    }
}
