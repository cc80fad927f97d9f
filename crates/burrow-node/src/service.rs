//! Services: what peers reach over a link, each on its own ALPN, and the
//! router that hands each incoming connection to its service.
//!
//! The link ([`crate::peers`]) decides *whether* a peer's connection comes in
//! (we accepted the peer, it isn't refused for misbehaving, it came on its
//! own path); the [`Router`] decides *where* it goes. A service implements
//! [`Service`]: its ALPN, who may open it ([`Admission`]), and what to do with
//! a connection. It reaches the rest of the node through a [`LinkHandle`].
//! Adding a service is one impl and one line in [`Router::standard`]; the
//! endpoint offers exactly the ALPNs the router has.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use burrow_proto::NodeId;

use crate::event::NodeEvent;
use crate::node::Inner;

/// A service serving one connection, until it closes.
pub(crate) type Serving = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Who may open a service's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A peer we are linked with: one we accepted (serverless: whose mesh
    /// link is up, so its membership is proven).
    Linked,
    /// Serverless, a stranger too: the connection's first frame must prove
    /// membership of our network (the mesh's Hello). With a server, only a
    /// peer we accepted, as [`Admission::Linked`].
    ProvesMembership,
}

/// A service peers reach on its own ALPN.
pub(crate) trait Service: Send + Sync {
    /// The ALPN its connections use.
    fn alpn(&self) -> &'static [u8];

    /// Who may open its connections.
    fn admission(&self) -> Admission {
        Admission::Linked
    }

    /// Serves `conn`, which `peer` opened and the link admitted.
    fn accept(&self, link: LinkHandle, peer: NodeId, conn: quinn::Connection) -> Serving;
}

/// The services a node runs, by ALPN.
pub(crate) struct Router {
    services: Vec<Box<dyn Service>>,
}

impl Router {
    /// The node's services: the link with chat on it, files, and the mesh.
    pub(crate) fn standard() -> Router {
        Router::new(vec![
            Box::new(crate::peers::LinkService),
            Box::new(crate::files::FilesService),
            Box::new(crate::mesh::MeshService),
        ])
    }

    /// A router for `services`, whose ALPNs must differ.
    pub(crate) fn new(services: Vec<Box<dyn Service>>) -> Router {
        for (i, s) in services.iter().enumerate() {
            assert!(
                services[..i].iter().all(|o| o.alpn() != s.alpn()),
                "two services on one ALPN"
            );
        }
        Router { services }
    }

    /// Every service's ALPN, for the endpoint to offer.
    pub(crate) fn alpns(&self) -> Vec<&'static [u8]> {
        self.services.iter().map(|s| s.alpn()).collect()
    }

    /// The service on `alpn`.
    pub(crate) fn route(&self, alpn: &[u8]) -> Option<&dyn Service> {
        self.services
            .iter()
            .find(|s| s.alpn() == alpn)
            .map(|s| s.as_ref())
    }
}

/// What a service may ask of the link and the node: strike a peer that broke
/// its protocol, name a peer, tell events.
///
/// Files and the mesh still keep their state in the node's shared state and
/// reach it through [`LinkHandle::node`], as chat does its history, until
/// each owns its own (see `docs/ARCHITECTURE.md`, "Services").
#[derive(Clone)]
pub(crate) struct LinkHandle {
    inner: Arc<Inner>,
}

impl LinkHandle {
    pub(crate) fn new(inner: Arc<Inner>) -> LinkHandle {
        LinkHandle { inner }
    }

    /// Our id.
    pub(crate) fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Counts a strike against `peer` for `what` (see [`crate::conduct`]).
    pub(crate) fn strike(&self, peer: NodeId, what: &str) {
        crate::conduct::strike(&self.inner, peer, what);
    }

    /// The name `peer` goes by here (its short id without one), and whether
    /// anyone vouches for it.
    pub(crate) fn name(&self, peer: &NodeId) -> (String, bool) {
        let st = self.inner.state();
        let name = st
            .claimed_name(peer)
            .map_or_else(|| peer.short(), |n| n.to_string());
        (name, st.name_vouched(peer))
    }

    /// Tells whoever watches the node.
    pub(crate) fn emit(&self, event: NodeEvent) {
        self.inner.emit(event);
    }

    /// The node itself, for services whose state still lives in it.
    pub(crate) fn node(&self) -> &Arc<Inner> {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static [u8]);

    impl Service for Named {
        fn alpn(&self) -> &'static [u8] {
            self.0
        }

        fn accept(&self, _: LinkHandle, _: NodeId, _: quinn::Connection) -> Serving {
            Box::pin(async {})
        }
    }

    #[test]
    fn connections_go_to_the_service_of_their_alpn() {
        let r = Router::new(vec![Box::new(Named(b"a/1")), Box::new(Named(b"b/1"))]);
        assert_eq!(r.alpns(), vec![&b"a/1"[..], &b"b/1"[..]]);
        assert_eq!(r.route(b"b/1").map(|s| s.alpn()), Some(&b"b/1"[..]));
        assert!(r.route(b"c/1").is_none());
        assert_eq!(
            r.route(b"a/1").map(|s| s.admission()),
            Some(Admission::Linked)
        );
    }

    #[test]
    #[should_panic(expected = "two services on one ALPN")]
    fn two_services_cannot_share_an_alpn() {
        Router::new(vec![Box::new(Named(b"a/1")), Box::new(Named(b"a/1"))]);
    }

    #[test]
    fn the_standard_router_has_the_link_files_and_the_mesh_on_their_alpns() {
        let r = Router::standard();
        assert_eq!(
            r.alpns(),
            vec![
                burrow_proto::chat::ALPN,
                burrow_proto::files::ALPN,
                burrow_proto::mesh::ALPN
            ]
        );
        assert_eq!(
            r.route(burrow_proto::mesh::ALPN).map(|s| s.admission()),
            Some(Admission::ProvesMembership)
        );
    }
}
