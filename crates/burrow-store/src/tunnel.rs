//! Tunnels in the node's store: the services it exposes and its forwards,
//! so both come back when the node restarts.

use std::net::SocketAddr;

use burrow_proto::tunnel::{Allow, ServiceName, Transport};
use burrow_proto::NodeId;
use rusqlite::params;

use crate::server::node_id;
use crate::{NodeStore, StoreError};

/// A service this node exposes to peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredExposure {
    /// Its name.
    pub name: ServiceName,
    /// Where its connections go (the only address they go to).
    pub addr: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// Who may reach it.
    pub allow: Allow,
    /// When it was first exposed, Unix ms.
    pub added_at_ms: u64,
}

/// A local port that reaches a peer's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredForward {
    /// The local address it listens on.
    pub listen: SocketAddr,
    /// The exposing peer.
    pub peer: NodeId,
    /// Its name when the forward was made (shown until it is known again).
    pub peer_name: String,
    /// Its service.
    pub service: ServiceName,
    /// TCP or UDP (the service's, as the peer said).
    pub transport: Transport,
    /// When it was made, Unix ms.
    pub added_at_ms: u64,
}

fn corrupt(table: &'static str, what: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        what: what.to_string(),
    }
}

fn transport(udp: bool) -> Transport {
    if udp {
        Transport::Udp
    } else {
        Transport::Tcp
    }
}

impl NodeStore {
    /// Records an exposure (replacing one of the same name, keeping when it
    /// was first added).
    pub fn put_exposure(&mut self, e: &StoredExposure) -> Result<(), StoreError> {
        let allow: Vec<u8> = e.allow.peers.iter().flat_map(|p| *p.as_bytes()).collect();
        self.conn.execute(
            "INSERT INTO exposed (name, addr, udp, allow, contacts, added_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET addr = ?2, udp = ?3, allow = ?4, contacts = ?5",
            params![
                e.name.as_str(),
                e.addr.to_string(),
                e.transport == Transport::Udp,
                allow,
                e.allow.contacts,
                e.added_at_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Forgets the exposure `name`; false if there was none.
    pub fn remove_exposure(&mut self, name: &ServiceName) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM exposed WHERE name = ?1", [name.as_str()])?;
        Ok(n == 1)
    }

    /// Every exposure, by name.
    pub fn exposures(&self) -> Result<Vec<StoredExposure>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, addr, udp, allow, contacts, added_at_ms FROM exposed ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (name, addr, udp, allow, contacts, at) = row?;
            let peers = allow
                .chunks(32)
                .map(|c| node_id("exposed", c))
                .collect::<Result<_, _>>()?;
            Ok(StoredExposure {
                name: name.parse().map_err(|e| corrupt("exposed", e))?,
                addr: addr.parse().map_err(|e| corrupt("exposed", e))?,
                transport: transport(udp),
                allow: Allow { peers, contacts },
                added_at_ms: at as u64,
            })
        })
        .collect()
    }

    /// Records a forward (replacing one on the same local address).
    pub fn put_forward(&mut self, f: &StoredForward) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO forwards (listen, peer, peer_name, service, udp, added_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                f.listen.to_string(),
                f.peer.as_bytes().as_slice(),
                f.peer_name,
                f.service.as_str(),
                f.transport == Transport::Udp,
                f.added_at_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Forgets the forward on `listen`; false if there was none.
    pub fn remove_forward(&mut self, listen: SocketAddr) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "DELETE FROM forwards WHERE listen = ?1",
            [listen.to_string()],
        )?;
        Ok(n == 1)
    }

    /// Every forward, oldest first.
    pub fn forwards(&self) -> Result<Vec<StoredForward>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT listen, peer, peer_name, service, udp, added_at_ms FROM forwards
             ORDER BY added_at_ms, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (listen, peer, peer_name, service, udp, at) = row?;
            Ok(StoredForward {
                listen: listen.parse().map_err(|e| corrupt("forwards", e))?,
                peer: node_id("forwards", &peer)?,
                peer_name,
                service: service.parse().map_err(|e| corrupt("forwards", e))?,
                transport: transport(udp),
                added_at_ms: at as u64,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, NodeStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = NodeStore::open(&dir.path().join("node.db")).unwrap();
        (dir, s)
    }

    fn key(n: u8) -> NodeId {
        burrow_proto::SecretKey::from_bytes(&[n; 32]).public()
    }

    #[test]
    fn exposures_are_kept_and_changed_in_place() {
        let (dir, mut s) = store();
        let mut web = StoredExposure {
            name: "web".parse().unwrap(),
            addr: "127.0.0.1:8080".parse().unwrap(),
            transport: Transport::Tcp,
            allow: Allow {
                peers: vec![key(1), key(2)],
                contacts: false,
            },
            added_at_ms: 5,
        };
        s.put_exposure(&web).unwrap();
        web.allow = Allow {
            peers: vec![key(2)],
            contacts: true,
        };
        s.put_exposure(&StoredExposure {
            added_at_ms: 9,
            ..web.clone()
        })
        .unwrap();
        drop(s);
        let mut s = NodeStore::open(&dir.path().join("node.db")).unwrap();
        assert_eq!(
            s.exposures().unwrap(),
            vec![web.clone()],
            "first added at 5"
        );
        assert!(s.remove_exposure(&web.name).unwrap());
        assert!(!s.remove_exposure(&web.name).unwrap());
        assert!(s.exposures().unwrap().is_empty());
    }

    #[test]
    fn forwards_are_kept_by_local_address() {
        let (_dir, mut s) = store();
        let f = StoredForward {
            listen: "[::1]:27015".parse().unwrap(),
            peer: key(3),
            peer_name: "alice".into(),
            service: "game".parse().unwrap(),
            transport: Transport::Udp,
            added_at_ms: 1,
        };
        s.put_forward(&f).unwrap();
        assert_eq!(s.forwards().unwrap(), vec![f.clone()]);
        assert!(s.remove_forward(f.listen).unwrap());
        assert!(s.forwards().unwrap().is_empty());
    }
}
