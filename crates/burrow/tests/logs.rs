//! Logs of several nodes in one process can be told apart: every line a
//! node writes carries its `node{id, name}` span, and a link's lines the
//! peer's short id.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nodes_lines_carry_its_own_span_and_the_peers_id() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("burrow_node=info")
        .with_ansi(false)
        .with_writer(captured.clone())
        .init();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("srv")).await;
    let alice = start_node(&dir.path().join("alice"), "alice", &server.url).await;
    let bob = start_node(&dir.path().join("bob"), "bob", &server.url).await;
    connect_pair(&alice, &bob).await;
    alice.send("bob", "hello").await.unwrap();
    let (a, b) = (alice.id().short(), bob.id().short());
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let of = |me: &str, name: &str| format!("node{{id={me} name={name}}}");
    for (me, name, peer) in [(&a, "alice", &b), (&b, "bob", &a)] {
        let connected = lines
            .iter()
            .find(|l| l.contains(" connected") && l.contains(&of(me, name)))
            .unwrap_or_else(|| panic!("no 'connected' line in {name}'s span:\n{text}"));
        assert!(
            connected.contains(&format!("peer={peer}")),
            "{name}'s line names the peer: {connected}"
        );
    }
    // Every line of the nodes' own code is in one node's span.
    let bare: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("burrow_node") && !l.contains("node{id="))
        .collect();
    assert!(bare.is_empty(), "lines outside any node's span: {bare:#?}");
}
