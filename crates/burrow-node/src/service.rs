//! Services: what peers reach over a link, each on its own ALPN, and the
//! router that hands each incoming connection to its service.
//!
//! The link ([`crate::peers`]) decides *whether* a peer's connection comes in
//! (we accepted the peer, it isn't refused for misbehaving, it came on its
//! own path); the [`Router`] decides *where* it goes. A service implements
//! [`Service`]: its ALPN, who may open it ([`Admission`]), and what to do with
//! a connection. It owns its state and reaches the rest of the node only
//! through a [`LinkHandle`](crate::handle::LinkHandle), and hears what the link does as [`LinkEvent`]s.
//! Adding a service is one impl, one line in `Node::launch`'s list and its
//! ALPN in `crate::node`'s (a debug assertion holds the two equal); the
//! endpoint offers exactly those.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use burrow_proto::NodeId;

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

/// What the link tells every service, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// A session with the server began (the first, or after a reconnect).
    Registered,
    /// A connection of `peer`'s link came up (its first, or another), which
    /// we dialed or it did.
    Up { peer: NodeId, dialed: bool },
    /// We are dialing `peer`'s link: a service that will want a connection
    /// of its own may open it now, beside the link's, rather than a round
    /// trip later.
    Dialing { peer: NodeId },
    /// `peer`'s link is down: its last connection closed, or it could not
    /// be made.
    Down { peer: NodeId },
    /// The server's operator says `text`, to us or to everyone.
    Notice { text: String, everyone: bool },
}

/// A service peers reach on its own ALPN. It owns its state and holds a
/// [`LinkHandle`](crate::handle::LinkHandle) for everything else.
pub(crate) trait Service: Send + Sync {
    /// The ALPN its connections use.
    fn alpn(&self) -> &'static [u8];

    /// Who may open its connections.
    fn admission(&self) -> Admission {
        Admission::Linked
    }

    /// Serves `conn`, which `peer` opened and the link admitted.
    fn accept(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) -> Serving;

    /// Hears what the link did (called in the link's task: spawn what takes time).
    fn on_link(self: Arc<Self>, _event: &LinkEvent) {}

    /// Serverless, the connection that must open a link before the link's own
    /// does (the mesh's, whose Hello proves membership); `None` for the others.
    fn dial_first(self: Arc<Self>, _peer: NodeId) -> Option<Serving> {
        None
    }
}

/// The services a node runs, by ALPN. The first is the link's own: its
/// connection is the peer's link.
pub(crate) struct Router {
    services: Vec<Arc<dyn Service>>,
}

impl Router {
    /// A router for `services`, whose ALPNs must differ; the first's
    /// connections are links.
    pub(crate) fn new(services: Vec<Arc<dyn Service>>) -> Router {
        assert!(!services.is_empty(), "a router without the link's service");
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
    pub(crate) fn route(&self, alpn: &[u8]) -> Option<Arc<dyn Service>> {
        self.services.iter().find(|s| s.alpn() == alpn).cloned()
    }

    /// The service whose connection is a peer's link.
    pub(crate) fn link(&self) -> Arc<dyn Service> {
        self.services[0].clone()
    }

    /// Tells every service `event`.
    pub(crate) fn tell(&self, event: &LinkEvent) {
        for s in &self.services {
            s.clone().on_link(event);
        }
    }

    /// The connection a service must open first to `peer`, if one must.
    pub(crate) fn dial_first(&self, peer: NodeId) -> Option<Serving> {
        self.services
            .iter()
            .find_map(|s| s.clone().dial_first(peer))
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

        fn accept(self: Arc<Self>, _: NodeId, _: quinn::Connection) -> Serving {
            Box::pin(async {})
        }
    }

    #[test]
    fn connections_go_to_the_service_of_their_alpn() {
        let r = Router::new(vec![Arc::new(Named(b"a/1")), Arc::new(Named(b"b/1"))]);
        assert_eq!(r.alpns(), vec![&b"a/1"[..], &b"b/1"[..]]);
        assert_eq!(r.route(b"b/1").map(|s| s.alpn()), Some(&b"b/1"[..]));
        assert!(r.route(b"c/1").is_none());
        assert_eq!(r.link().alpn(), b"a/1");
        assert_eq!(
            r.route(b"a/1").map(|s| s.admission()),
            Some(Admission::Linked)
        );
    }

    #[test]
    #[should_panic(expected = "two services on one ALPN")]
    fn two_services_cannot_share_an_alpn() {
        Router::new(vec![Arc::new(Named(b"a/1")), Arc::new(Named(b"a/1"))]);
    }
}
