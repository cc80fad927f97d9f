//! The contact book: who may connect without asking, and what happens to
//! everyone else ([`Incoming`]), as the store keeps them.

use std::collections::HashMap;

use burrow_proto::NodeId;
use burrow_store::{NodeStore, StoreError};

use crate::error::ContactsError;

/// The settings key of the incoming policy.
pub(crate) const INCOMING_KEY: &str = "incoming";

/// What happens to a connect request from someone who is not a contact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Incoming {
    /// Ask the user.
    #[default]
    Ask,
    /// Reject it.
    ContactsOnly,
    /// Accept it.
    Anyone,
}

impl std::str::FromStr for Incoming {
    type Err = ContactsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ask" => Ok(Incoming::Ask),
            "contacts-only" => Ok(Incoming::ContactsOnly),
            "anyone" => Ok(Incoming::Anyone),
            _ => Err(ContactsError::BadSetting(format!(
                "incoming is ask, contacts-only or anyone, not {s:?}"
            ))),
        }
    }
}

impl std::fmt::Display for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Incoming::Ask => "ask",
            Incoming::ContactsOnly => "contacts-only",
            Incoming::Anyone => "anyone",
        })
    }
}

/// Contacts and the incoming policy, as the node holds them.
#[derive(Debug, Default)]
pub(crate) struct Contacts {
    pub(crate) ids: HashMap<NodeId, String>,
    pub(crate) incoming: Incoming,
}

impl Contacts {
    /// The contacts' ids.
    pub(crate) fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.ids.keys().copied()
    }

    /// The name a contact was saved under.
    pub(crate) fn name(&self, id: &NodeId) -> Option<&str> {
        self.ids.get(id).map(String::as_str)
    }
}

/// Loads contacts and the incoming policy from the store.
pub(crate) fn load(store: &NodeStore) -> Result<Contacts, StoreError> {
    let incoming = store
        .setting(INCOMING_KEY)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    let ids = store
        .contacts()?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    Ok(Contacts { ids, incoming })
}
