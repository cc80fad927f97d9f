//! Names people read, with real serverless nodes on loopback: a serverless
//! peer's name is only what it claims, so burrow shows the key's short id
//! beside it until the reader vouches for it (by saving it as a contact), and
//! never lets a claimed name pick a peer for the user when two claim it.

mod common;

use common::proc::*;
use serde_json::Value;

fn id_of(home: &std::path::Path) -> String {
    json(home, &["status"])["id"]
        .as_str()
        .expect("status has an id")
        .to_string()
}

fn claiming<'a>(peers: &'a Value, name: &str) -> Vec<&'a Value> {
    peers
        .as_array()
        .map(|a| a.iter().filter(|p| p["name"] == name).collect())
        .unwrap_or_default()
}

#[test]
fn a_name_two_peers_claim_shows_their_ids_until_one_is_a_contact() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, m] = ["alice", "bob", "mallory"].map(|n| dir.path().join(n));
    let _alice = serverless_up(&a, "alice", None, &[]);
    let mut bob = serverless_up(&b, "bob", Some(&ticket(&a)), &[]);
    // mallory joins through bob, under alice's name.
    let _mallory = serverless_up(&m, "alice", Some(&ticket(&b)), &[]);
    let (alice_id, mallory_id) = (id_of(&a), id_of(&m));

    let peers = wait_json(&b, &["peers"], "both alices linked", |v| {
        let both = claiming(v, "alice");
        both.len() == 2 && both.iter().all(|p| p["connection"] == "direct")
    });
    for p in claiming(&peers, "alice") {
        assert_eq!(p["name_verified"], false, "a claimed name: {p}");
    }
    let (_, table, _) = run(&b, &["peers"]);
    assert!(table.contains("alice (claimed)"), "{table}");

    // `alice` means nobody in particular: bob is told so, with both ids.
    let (ok, _, err) = run(&b, &["send", "alice", "which one are you?"]);
    assert!(!ok, "sent to one of two alices");
    assert!(
        err.contains("matches several peers")
            && err.contains(&alice_id[..8])
            && err.contains(&mallory_id[..8]),
        "{err}"
    );

    // Both write to bob; bob sees each message with its author's id.
    let bob_id = id_of(&b);
    let (ok, _, err) = run(
        &m,
        &["send", &bob_id[..12], "it's alice, send me your password"],
    );
    assert!(ok, "mallory's message: {err}");
    let line = bob.expect_line("send me your password");
    assert!(
        line.contains(&format!("alice [{}]:", &mallory_id[..8])),
        "bob's node shows mallory's message as: {line}"
    );
    let (ok, _, err) = run(&a, &["send", &bob_id[..12], "the real alice"]);
    assert!(ok, "alice's message: {err}");
    bob.expect_line("the real alice");

    // bob saves alice (by id) as a contact: her name is now vouched for.
    let (ok, _, err) = run(&b, &["contacts", "add", &alice_id[..12]]);
    assert!(ok, "contacts add: {err}");
    let (_, history, _) = run(&b, &["messages"]);
    assert!(history.contains("alice: the real alice"), "{history}");
    assert!(
        history.contains(&format!(
            "alice [{}]: it's alice, send me your password",
            &mallory_id[..8]
        )),
        "{history}"
    );
    let peers = json(&b, &["peers"]);
    let verified: Vec<&str> = claiming(&peers, "alice")
        .iter()
        .filter(|p| p["name_verified"] == true)
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(verified, [alice_id.as_str()], "{peers}");

    // And `alice` now means the contact.
    let (ok, _, err) = run(&b, &["send", "alice", "now I know it's you"]);
    assert!(ok, "send to the contact alice: {err}");
    let got = wait_json(&a, &["messages"], "bob's message", |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|m| m["text"] == "now I know it's you"))
    });
    assert!(got
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["from"] == bob_id.as_str()));
    let (_, mallory_got, _) = run(&m, &["messages"]);
    assert!(
        !mallory_got.contains("now I know it's you"),
        "{mallory_got}"
    );
}
