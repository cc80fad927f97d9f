//! Networks that pass only HTTPS: a router that lets nothing out but TCP to
//! port 443, in front of a node that reaches the server's HTTPS port (TLS,
//! then a WebSocket) after UDP and plain TCP got nowhere, and registers,
//! chats and downloads through the relay over it.
#![cfg(target_os = "linux")] // the lab is Linux's network namespaces

mod common;

use std::time::Duration;

use burrow_lab::{require_or_skip, NatKind};
use common::proc::*;

#[test]
fn a_node_allowed_only_https_registers_chats_and_downloads_through_the_relay() {
    let Some(mut lab) = require_or_skip(
        "a_node_allowed_only_https_registers_chats_and_downloads_through_the_relay",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let https = format!("{}:443", lab.server().addr);
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &["--https", &https]);
    assert!(
        url.ends_with("?https=443"),
        "the join URL names the HTTPS port: {url}"
    );
    let (h1, _) = lab.add_peer("web", NatKind::HttpsOnly).unwrap();
    let (h2, _) = lab.add_peer("pal", NatKind::PortRestricted).unwrap();
    let mut web = LabNode::up(&h1, dir.path(), &url, "web");
    let mut pal = LabNode::up(&h2, dir.path(), &url, "pal");
    let status = json(&web.home, &["status"]);
    assert_eq!(status["server_connected"], true, "{status}");
    assert_eq!(status["server_transport"], "https", "{status}");

    pal.link(&mut web);
    pal.say(&mut web, "through the relay, over HTTPS on your side");
    web.say(&mut pal, "and back");
    assert!(web
        .wait_path("pal", "relayed", Duration::from_secs(1))
        .is_some());
    let got = share_and_get(dir.path(), &pal, &web, 3 * 1024 * 1024 + 7);
    assert_eq!(got["providers"], serde_json::json!(["pal"]));
    assert!(server.terminate().success());
}

/// A network that lets nothing out at all but through an HTTP proxy (a real
/// `tinyproxy` on the router, tunnelling to port 443 only), and has no DNS
/// of its own: the server's name resolves only on the proxy. The node, told
/// the proxy as `HTTPS_PROXY` or `--proxy` tells it, asks it for a tunnel to
/// the server's HTTPS port by that name and registers, chats and downloads
/// through it.
#[test]
fn a_node_behind_nothing_but_an_http_proxy_gets_through_it() {
    let Some(mut lab) = require_or_skip("a_node_behind_nothing_but_an_http_proxy_gets_through_it")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let https = format!("{}:443", lab.server().addr);
    let (mut server, url) = lab_server(&lab, &dir.path().join("srv"), &["--https", &https]);
    let (h1, r1) = lab.add_peer("via", NatKind::ProxyOnly).unwrap();
    let r1 = r1.unwrap();
    let server_ip = lab.server().addr;
    lab.set_dns(&r1.host, &[("burrow.lab", server_ip.into())])
        .unwrap();
    lab.set_dns(&h1, &[]).unwrap();
    let by_name = url.replace(&server_ip.to_string(), "burrow.lab");
    assert_ne!(by_name, url);
    let proxy = match lab.run_http_proxy(&r1) {
        Ok(p) => p,
        Err(burrow_lab::LabError::Unavailable(why)) => {
            burrow_lab::skip(
                "a_node_behind_nothing_but_an_http_proxy_gets_through_it",
                &why,
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let (h2, _) = lab.add_peer("pam", NatKind::PortRestricted).unwrap();
    let proxy_url = format!("http://{proxy}");
    let mut via = LabNode::up_with(&h1, dir.path(), &by_name, "via", &["--proxy", &proxy_url]);
    let mut pam = LabNode::up(&h2, dir.path(), &url, "pam");
    let status = json(&via.home, &["status"]);
    assert_eq!(status["server_transport"], "https", "{status}");
    pam.link(&mut via);
    via.say(&mut pam, "through the proxy and the relay");
    pam.say(&mut via, "and back");
    share_and_get(dir.path(), &pam, &via, 2 * 1024 * 1024 + 3);
    assert!(server.terminate().success());
}
