//! Keeps a port mapping on our router (see [`burrow_net::portmap`]): asks for
//! one once the node is up, tells the server (peers then probe it as a
//! candidate), renews it at half its lease, and deletes it on shutdown.
//!
//! A router that grants nothing is asked again only after [`RETRY`]: routers
//! rarely change their minds, and asking is not free (a few seconds of
//! requests to the gateway and SSDP multicast on the LAN).

use std::sync::Arc;
use std::time::Duration;

use burrow_net::portmap::{self, PortMap};
use tracing::{debug, info, warn};

use crate::link::Inner;

/// Wait before asking a router that refused (or didn't answer) again.
const RETRY: Duration = Duration::from_secs(600);
/// Longest wait for the router to delete the mapping on shutdown.
const REMOVE_WAIT: Duration = Duration::from_secs(1);

pub(crate) async fn run(inner: Arc<Inner>) {
    let Ok(local) = inner.endpoint.local_addr() else {
        return;
    };
    loop {
        let mapped = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            m = portmap::map(local.port()) => m,
        };
        match mapped {
            Ok(m) => {
                info!(external = %m.external, protocol = %m.protocol, "the router maps a port to us");
                if !hold(&inner, m).await {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "no port mapping"),
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Holds `m` until shutdown (true: the mapping was lost, ask again later;
/// false: shutting down).
async fn hold(inner: &Arc<Inner>, mut m: PortMap) -> bool {
    set(inner, Some((m.external, m.protocol)));
    let lost = loop {
        let half = (m.lease / 2).max(Duration::from_secs(30));
        tokio::select! {
            _ = inner.shutdown.cancelled() => break false,
            _ = tokio::time::sleep(half) => {}
        }
        if let Err(e) = m.renew().await {
            warn!(error = %e, "port mapping lost");
            break true;
        }
    };
    set(inner, None);
    if !lost {
        let _ = tokio::time::timeout(REMOVE_WAIT, m.remove()).await;
    }
    lost
}

fn set(inner: &Inner, port_map: Option<(std::net::SocketAddr, portmap::PortMapProtocol)>) {
    let mut st = inner.state();
    st.port_map = port_map;
    crate::nat::report(&st);
}
