//! Contacts, and what happens to connect requests: the user's `settings incoming`.
//!
//! - `ask` (the default): contacts are accepted at once; anyone else waits for
//!   `burrow accept` or `burrow reject`.
//! - `contacts-only`: contacts are accepted; strangers are rejected without
//!   bothering the user.
//! - `anyone`: every request is accepted.

use std::sync::Arc;
use std::time::SystemTime;

use burrow_proto::NodeId;
use burrow_store::Contact;
use tracing::{info, warn};

use crate::api::{ContactView, SettingsView};
use crate::error::ContactsError;

pub(crate) mod book;

use crate::event::NodeEvent;
use crate::link::Inner;
use crate::state::{resolve, RequestOp, State};
pub use book::Incoming;
pub(crate) use book::{load, INCOMING_KEY};

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Ask,
    Accept(&'static str),
    Reject(&'static str),
}

/// What the user's settings (and the peer's conduct) say about a request from `id`.
pub(crate) fn answer(st: &mut State, id: &NodeId) -> Answer {
    if st.conduct.refused(id) {
        return Answer::Reject("it misbehaved");
    }
    if st.contacts.ids.contains_key(id) {
        return Answer::Accept("a contact");
    }
    if !st.conduct.request(*id, std::time::Instant::now()) {
        return Answer::Reject("asking too often");
    }
    match st.contacts.incoming {
        Incoming::Ask => Answer::Ask,
        Incoming::ContactsOnly => Answer::Reject("not a contact"),
        Incoming::Anyone => Answer::Accept("anyone may connect"),
    }
}

/// Answers a request as the settings say, and tells whoever watches.
pub(crate) fn answer_for_user(inner: &Arc<Inner>, id: NodeId, name: String, answer: Answer) {
    let (op, accepted, why) = match answer {
        Answer::Ask => return,
        Answer::Accept(why) => (RequestOp::Accept, true, why),
        Answer::Reject(why) => (RequestOp::Reject, false, why),
    };
    let node = inner.clone();
    inner.spawn(async move {
        match node.request(&id.to_string(), op).await {
            Ok(()) => {
                info!(peer = %id.short(), accepted, why, "answered a request by the settings");
                node.emit(NodeEvent::RequestAnswered {
                    name,
                    accepted,
                    why,
                });
            }
            Err(e) => warn!(peer = %id.short(), error = %e, "could not answer a request"),
        }
    });
}

impl Inner {
    /// Adds `add` or removes `remove` (names or id prefixes), then lists the contacts.
    pub async fn contacts(
        self: &Arc<Self>,
        add: Option<&str>,
        remove: Option<&str>,
    ) -> Result<Vec<ContactView>, ContactsError> {
        if let Some(peer) = add {
            self.find_peer(peer).await;
            let (id, name) = {
                let st = self.state();
                let id = resolve(&st, peer)?;
                let name = st
                    .claimed_name(&id)
                    .map_or_else(|| id.short(), |n| n.to_string());
                (id, name)
            };
            let contact = Contact {
                id,
                name: name.clone(),
                added_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
            };
            self.with_store(move |s| s.add_contact(&contact)).await?;
            self.state().contacts.ids.insert(id, name);
            crate::presence::set_watch(self, id, true);
        }
        if let Some(peer) = remove {
            let id = {
                let st = self.state();
                let wanted = peer.trim().to_ascii_lowercase();
                let found = st
                    .contacts
                    .ids
                    .iter()
                    .find(|(id, name)| **name == wanted || id.to_string().starts_with(&wanted))
                    .map(|(id, _)| *id);
                found.ok_or_else(|| ContactsError::NotAContact(peer.to_string()))?
            };
            self.with_store(move |s| s.remove_contact(&id)).await?;
            self.state().contacts.ids.remove(&id);
            crate::presence::set_watch(self, id, false);
        }
        let st = self.state();
        let mut list: Vec<ContactView> = st
            .contacts
            .ids
            .iter()
            .map(|(id, name)| ContactView {
                id: id.to_string(),
                name: name.clone(),
                online: st.peers.get(id).is_some_and(|p| p.online),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Sets what happens to incoming requests (if given), then shows the settings.
    pub async fn settings(
        self: &Arc<Self>,
        incoming: Option<&str>,
    ) -> Result<SettingsView, ContactsError> {
        if let Some(value) = incoming {
            let policy: Incoming = value.parse()?;
            let stored = policy.to_string();
            self.with_store(move |s| s.set_setting(INCOMING_KEY, stored.as_bytes()))
                .await?;
            self.state().contacts.incoming = policy;
        }
        Ok(SettingsView {
            incoming: self.state().contacts.incoming.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_proto::SecretKey;
    use rand::SeedableRng;

    fn id(seed: u64) -> NodeId {
        SecretKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed)).public()
    }

    #[test]
    fn requests_are_answered_by_contacts_policy_rate_and_conduct() {
        let mut st = State::default();
        let (friend, stranger, pest, cheat) = (id(1), id(2), id(3), id(4));
        st.contacts.ids.insert(friend, "friend".into());
        assert_eq!(answer(&mut st, &friend), Answer::Accept("a contact"));
        assert_eq!(answer(&mut st, &stranger), Answer::Ask);
        st.contacts.incoming = Incoming::ContactsOnly;
        assert_eq!(answer(&mut st, &stranger), Answer::Reject("not a contact"));
        st.contacts.incoming = Incoming::Anyone;
        assert_eq!(
            answer(&mut st, &stranger),
            Answer::Accept("anyone may connect")
        );
        // A peer asking over and over is turned away without asking the user.
        let answers: Vec<Answer> = (0..8).map(|_| answer(&mut st, &pest)).collect();
        assert_eq!(answers[4], Answer::Accept("anyone may connect"));
        assert_eq!(answers[5], Answer::Reject("asking too often"));
        // Three strikes, and even a contact is refused.
        st.contacts.ids.insert(cheat, "cheat".into());
        for _ in 0..3 {
            st.conduct.strike(cheat);
        }
        assert_eq!(answer(&mut st, &cheat), Answer::Reject("it misbehaved"));
    }
}
