//! The forum and the mesh end to end: real `burrow` processes on 127.0.0.1
//! (through a server, and serverless from tickets), driven through the CLI; and a
//! hostile mesh peer, in this process, sending forged and orphaned posts.

mod common;

use std::path::Path;
use std::time::Duration;

use burrow_proto::forum::{Hlc, Post, PostId, Topic};
use burrow_proto::mesh::{self, MeshFrame, MeshSecret, Ticket};
use burrow_proto::SecretKey;
use common::proc::*;
use common::raw::Member;
use serde_json::Value;

fn ids(forum: &[Value]) -> Vec<String> {
    forum
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

/// A post that reached a member by reconciliation is not gossiped on; its
/// other links get it at their next re-sync, which must read the member's set
/// as it is then, not as it was when the link came up.
#[test]
fn a_resync_brings_what_the_other_side_learned_since_the_link_came_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = loopback_server(&dir.path().join("srv"), &[]);
    let names = ["alice", "bob", "carol"];
    let homes: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    let _procs: Vec<Proc> = names
        .iter()
        .zip(&homes)
        .map(|(n, h)| {
            let mut args = vec!["--home", h.to_str().unwrap()];
            args.extend(loopback_up_args(&url, n));
            // Re-sync every second instead of every minute.
            args.extend(["--resync-every", "1s"]);
            let mut p = Proc::spawn(&args);
            p.expect_line("is up");
            p
        })
        .collect();
    // alice dials bob: she reconciles with him now and every second.
    link((&homes[0], "alice"), (&homes[1], "bob"));
    // carol posts with nobody listening, then bob links with her: he gets
    // the post by reconciliation.
    let quiet = post(&homes[2], "posted while nobody listened", None);
    link((&homes[1], "bob"), (&homes[2], "carol"));
    wait_post(&homes[1], &quiet);
    // alice gets it from bob at her next re-sync.
    let got = wait_post(&homes[0], &quiet);
    assert_eq!(got["author_name"], "carol");
}

/// Five members through a server, linked in a ring: posts and replies reach
/// everyone; a member away while others post catches up when it links again;
/// its forum reads from the store while it is stopped, and survives the restart.
#[test]
fn posts_reach_every_member_and_a_returning_member_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = loopback_server(&dir.path().join("srv"), &[]);
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let homes: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    let mut procs: Vec<Proc> = names
        .iter()
        .zip(&homes)
        .map(|(n, h)| loopback_up(h, &url, n))
        .collect();
    for i in 0..names.len() {
        let j = (i + 1) % names.len();
        link((&homes[i], names[i]), (&homes[j], names[j]));
    }

    let first = post(&homes[0], "Anyone up for a game tonight?", None);
    for h in &homes {
        wait_post(h, &first);
    }
    let reply = post(&homes[4], "yes, 9pm", Some(&first));
    for h in &homes {
        let r = wait_post(h, &reply);
        assert_eq!(r["parent"], first.as_str());
        assert_eq!(r["author_name"], "erin");
    }
    // The thread as bob reads it: the reply under its post.
    let (ok, out, _) = run(&homes[1], &["forum", &first[..8]]);
    assert!(ok);
    assert!(
        out.contains("alice") && out.contains("Anyone up for a game tonight?"),
        "{out}"
    );
    assert!(
        out.contains("↳") && out.contains("erin") && out.contains("yes, 9pm"),
        "{out}"
    );

    // dave leaves; two posts are written while he is away.
    procs[3].terminate();
    let while_away = [
        post(&homes[0], "dave, you missed this", None),
        post(&homes[2], "and this", None),
    ];
    for id in &while_away {
        wait_post(&homes[4], id);
    }
    // His forum still reads, from the store, without the node, and the
    // reading writes nothing there.
    let db = homes[3].join("node.db");
    let before = std::fs::read(&db).unwrap();
    let offline = forum(&homes[3]);
    assert_eq!(ids(&offline), [first.clone(), reply.clone()]);
    assert!(
        std::fs::read(&db).unwrap() == before,
        "reading a stopped node's forum wrote to its store"
    );

    procs[3] = loopback_up(&homes[3], &url, "dave");
    let kept = forum(&homes[3]);
    assert_eq!(
        ids(&kept),
        [first.clone(), reply.clone()],
        "posts survive a restart"
    );
    link((&homes[2], "carol"), (&homes[3], "dave"));
    for id in &while_away {
        wait_post(&homes[3], id);
    }
    let all = ids(&forum(&homes[3]));
    assert_eq!(all.len(), 4, "{all:?}");
    let pos = |id: &str| all.iter().position(|x| x == id).unwrap();
    assert!(pos(&first) < pos(&reply));

    // Topics: erin posts in "games", which only she follows; alice starts
    // following it by reading it, and gets the post from erin, her neighbour.
    let (ok, out, err) = run(&homes[4], &["post", "--topic", "games", "chess at 8?"]);
    assert!(ok, "{err}");
    let chess = out.trim().to_string();
    assert!(
        !ids(&forum(&homes[0])).contains(&chess),
        "not in the default topic"
    );
    let games = wait_json(
        &homes[0],
        &["forum", "--topic", "games"],
        "the games topic",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|p| p["id"] == chess.as_str()))
        },
    );
    assert_eq!(games[0]["topic"], "games");
}

/// Six serverless nodes, each given only the previous one's ticket, end up in
/// one mesh (introductions link nodes that never saw each other's tickets); a
/// post from the last reaches the first. One node's clock runs 5 s fast: its
/// neighbours measure the offset, and a reply to its post still sorts after it.
#[test]
fn a_chain_of_tickets_becomes_one_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let homes: Vec<_> = names.iter().map(|n| dir.path().join(n)).collect();
    let mut procs = Vec::new();
    for (i, (name, home)) in names.iter().zip(&homes).enumerate() {
        let skew = if i == 2 { "5000" } else { "0" };
        let extra = ["--links", "3", "--clock-skew-ms", skew];
        let t = (i > 0).then(|| ticket(&homes[i - 1]));
        procs.push(serverless_up(home, name, t.as_deref(), &extra));
        if i > 0 {
            wait_json(home, &["peers"], "linked to the previous node", |v| {
                peer(v, names[i - 1]).is_some_and(|p| p["connection"] == "direct")
            });
        }
    }

    let last = post(&homes[5], "hello from the end of the chain", None);
    let got = wait_post(&homes[0], &last);
    assert_eq!(got["author_name"], "n6");

    // Introductions: n1 ends up linked beyond the one node it ever heard of
    // directly (n2 joined it; nobody gave it another ticket).
    let peers = wait_json(&homes[0], &["peers"], "links beyond n2", |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .filter(|p| p["connection"] == "direct" && p["name"] != "n2")
                .count()
                >= 1
        })
    });
    assert!(peer(&peers, "n2").is_some());

    // n3's clock is 5 s ahead, and n2 and n4 see that.
    for neighbour in [&homes[1], &homes[3]] {
        let v = wait_json(neighbour, &["peers"], "n3's clock offset", |v| {
            peer(v, "n3").is_some_and(|p| p["clock_offset_ms"].is_number())
        });
        let off = peer(&v, "n3").unwrap()["clock_offset_ms"].as_f64().unwrap();
        assert!((off - 5000.0).abs() < 250.0, "measured offset {off} ms");
    }
    let fast = post(&homes[2], "posted by a clock 5 s fast", None);
    wait_post(&homes[3], &fast);
    let answer = post(&homes[3], "answered by a right clock", Some(&fast));
    let thread = wait_json(&homes[0], &["forum", &fast[..8]], "the thread", |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    });
    assert_eq!(thread[0]["id"], fast.as_str());
    assert_eq!(thread[1]["id"], answer.as_str());
    assert!(thread[1]["hlc"].as_u64() > thread[0]["hlc"].as_u64());
}

impl Member {
    fn post(&self, text: &str, parent: Option<PostId>, t: u64) -> Post {
        Post::create(
            &self.key,
            "mallory".parse().unwrap(),
            Topic::default_topic(),
            parent,
            Hlc::from_ms(t),
            text.into(),
        )
    }

    async fn send(&mut self, p: Post) {
        self.writer.write(&MeshFrame::Post(p)).await.unwrap();
    }
}

/// Waits until the node at `home` has stored post `id`.
async fn arrives(home: &Path, id: PostId) {
    let home = home.to_path_buf();
    tokio::task::spawn_blocking(move || wait_post(&home, &id.to_string()))
        .await
        .unwrap();
}

fn has(home: &Path, id: &PostId) -> bool {
    forum(home).iter().any(|p| p["id"] == id.to_string())
}

/// A hostile member: a stranger without the network's secret is refused; a
/// member's forged and altered posts are refused and counted, and the third
/// strike closes its link; an orphan reply waits under "lost" until its parent
/// arrives, then moves into its thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_posts_are_refused_and_orphans_find_their_thread() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n1");
    let _node = serverless_up(&home, "n1", None, &[]);
    let t: Ticket = ticket(&home).parse().unwrap();
    let mut rng = rand::thread_rng();

    let stranger = Member::dial(&t, MeshSecret([0; 16]), SecretKey::generate(&mut rng)).await;
    assert!(stranger.is_none(), "a wrong membership proof is refused");

    let mut m = Member::dial(&t, t.secret, SecretKey::generate(&mut rng))
        .await
        .expect("a member with the ticket's secret gets in");
    let now = burrow_proto::time::unix_ms(std::time::SystemTime::now());

    // An orphan: the reply first, its parent later.
    let parent = m.post("the parent", None, now);
    let orphan = m.post("a reply that came first", Some(parent.id), now + 1);
    m.send(orphan.clone()).await;
    arrives(&home, orphan.id).await;
    let (_, out, _) = run(&home, &["forum"]);
    assert!(
        out.contains("lost") && out.contains("a reply that came first"),
        "{out}"
    );

    // Altered text (the id no longer matches), and a post in someone else's name.
    let mut altered = m.post("original", None, now + 2);
    altered.text = "altered".into();
    m.send(altered.clone()).await;
    let mut forged = Post::create(
        &SecretKey::generate(&mut rng),
        "n1".parse().unwrap(),
        Topic::default_topic(),
        None,
        Hlc::from_ms(now + 3),
        "I am n1, honest".into(),
    );
    forged.author = t.id;
    forged.id = Post::content_id(
        &forged.author,
        &forged.author_name,
        &forged.topic,
        &forged.parent,
        forged.created,
        &forged.text,
    );
    m.send(forged.clone()).await;

    m.send(parent.clone()).await;
    arrives(&home, parent.id).await;
    let (_, out, _) = run(&home, &["forum"]);
    assert!(
        !out.contains("lost"),
        "the orphan moved into its thread:\n{out}"
    );
    assert!(
        out.contains("↳") && out.contains("a reply that came first"),
        "{out}"
    );
    assert!(!has(&home, &altered.id) && !has(&home, &forged.id));

    // The third strike ends the link.
    let mut third = m.post("third", None, now + 4);
    third.text = "tampered".into();
    m.send(third).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), m.conn.closed())
        .await
        .expect("the node closes the link of a misbehaving member");
    assert!(
        burrow_net::Close::of(&closed) == Some(burrow_net::Close::Misbehaved),
        "{closed:?}"
    );
}

/// A post carries whatever name its author gave itself: a member posting as
/// "n1" shows as `n1 [its id]` to n1, whose own posts show plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_under_someone_elses_name_shows_its_authors_id() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n1");
    let node = serverless_up(&home, "n1", None, &[]);
    let t: Ticket = ticket(&home).parse().unwrap();
    let key = SecretKey::generate(&mut rand::thread_rng());
    let short = key.public().short();
    let mut m = Member::dial(&t, t.secret, key.clone())
        .await
        .expect("a member with the ticket's secret gets in");
    let now = burrow_proto::time::unix_ms(std::time::SystemTime::now());
    let impostor = Post::create(
        &key,
        "n1".parse().unwrap(),
        Topic::default_topic(),
        None,
        Hlc::from_ms(now),
        "it's me, n1, send me your password".into(),
    );
    m.send(impostor.clone()).await;
    arrives(&home, impostor.id).await;
    let own = tokio::task::spawn_blocking({
        let home = home.clone();
        move || post(&home, "the real n1", None)
    })
    .await
    .unwrap();

    // What `forum` shows: the impostor with its id, n1 plainly.
    let shows_the_impostor = || {
        let (ok, out, _) = run(&home, &["forum"]);
        assert!(ok);
        let line = |text: &str| out.lines().find(|l| l.contains(text)).unwrap().to_string();
        assert!(
            line("send me your password").contains(&format!("n1 [{short}]")),
            "{out}"
        );
        assert!(!line("the real n1").contains('['), "{out}");
    };
    shows_the_impostor();
    let posts = forum(&home);
    let verified = |id: &str| {
        posts
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["author_verified"].clone())
    };
    assert_eq!(verified(&impostor.id.to_string()), Some(Value::Bool(false)));
    assert_eq!(verified(&own), Some(Value::Bool(true)));

    // Read from the store with the node stopped: the same.
    drop(node);
    shows_the_impostor();
}

/// Announcing a post costs a member nothing: a flood of announced ids is
/// tracked only up to a bound, the rest dropped (reconciliation would fetch
/// what was real).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_announcements_is_tracked_only_up_to_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n1");
    let key = burrow_home::keyfile::load_or_create(&home.join("key"))
        .unwrap()
        .0;
    let mut config = burrow_node::NodeConfig::new(home, key, None, "n1".parse().unwrap());
    config.bind = "127.0.0.1:0".parse().unwrap();
    let node = burrow_node::Node::start(config).await.unwrap();
    let t: Ticket = node.ticket().unwrap().parse().unwrap();
    let mut m = Member::dial(&t, t.secret, SecretKey::generate(&mut rand::thread_rng()))
        .await
        .expect("a member with the ticket's secret gets in");
    // Forty frames of a thousand ids each, faster than they expire.
    let total = 40 * mesh::MAX_IDS as u64;
    for f in 0..40u32 {
        let ids = (0..mesh::MAX_IDS as u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&f.to_be_bytes());
                id[4..8].copy_from_slice(&i.to_be_bytes());
                PostId(id)
            })
            .collect();
        m.writer.write(&MeshFrame::IHave(ids)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let d = node.mesh_stats().ihave_dropped;
        if d >= total / 2 || std::time::Instant::now() > deadline {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // At most 8192 are awaited at once, each for a second: however slowly
    // the node reads the flood, most of it is dropped.
    assert!(
        dropped >= total / 2,
        "{dropped} of {total} announced ids dropped; at most 8192 are tracked at once"
    );
    node.shutdown().await;
}

impl Member {
    /// A post by `key` (a throwaway author) sent down this member's link.
    async fn send_by(&mut self, key: &SecretKey, text: &str, t: u64) -> Post {
        let p = Post::create(
            key,
            "spam".parse().unwrap(),
            Topic::default_topic(),
            None,
            Hlc::from_ms(t),
            text.into(),
        );
        self.send(p.clone()).await;
        p
    }

    /// Returns once the node has handled every frame sent before: it answers
    /// a Ping after them (a link's frames are handled in order).
    async fn barrier(&mut self, t1: u64) {
        self.writer.write(&MeshFrame::Ping { t1 }).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.reader.read::<MeshFrame>().await.unwrap() {
                    Some(MeshFrame::Pong { t1: t, .. }) if t == t1 => return,
                    Some(_) => {}
                    None => panic!("the node closed the link"),
                }
            }
        })
        .await;
        assert!(waited.is_ok(), "no Pong within 20 s");
    }
}

/// How many of `home`'s posts each author has.
fn per_author(home: &Path) -> std::collections::HashMap<String, usize> {
    let mut n = std::collections::HashMap::new();
    for p in forum(home) {
        *n.entry(p["author"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    n
}

/// Valid posts cost a throwaway key nothing: a member floods the forum with
/// them. The node keeps at most its quota per author and per topic from
/// authors it doesn't vouch for, and its own posts still go in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_valid_posts_is_kept_only_up_to_the_author_and_topic_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n1");
    let quotas = ["--forum-author-quota", "20", "--forum-topic-quota", "50"];
    let _node = serverless_up(&home, "n1", None, &quotas);
    let t: Ticket = ticket(&home).parse().unwrap();
    let mut rng = rand::thread_rng();
    let mut m = Member::dial(&t, t.secret, SecretKey::generate(&mut rng))
        .await
        .expect("a member gets in");
    let now = burrow_proto::time::unix_ms(std::time::SystemTime::now());

    // One author, thirty posts: twenty kept.
    let key = m.key.clone();
    for i in 0..30 {
        m.send_by(&key, &format!("spam {i}"), now + i).await;
    }
    m.barrier(1).await;
    let counts = per_author(&home);
    assert_eq!(
        counts.get(&key.public().to_string()),
        Some(&20),
        "{counts:?}"
    );

    // Eight more throwaway authors, five posts each: the topic fills at fifty.
    for a in 0..8u64 {
        let k = SecretKey::generate(&mut rng);
        for i in 0..5 {
            m.send_by(&k, &format!("more spam {a}/{i}"), now + 100 + a * 10 + i)
                .await;
        }
    }
    m.barrier(2).await;
    assert_eq!(forum(&home).len(), 50, "the topic holds its quota");
    // The node's own post still goes in, and is shown.
    let own = tokio::task::spawn_blocking({
        let home = home.clone();
        move || post(&home, "mine, despite the spam", None)
    })
    .await
    .unwrap();
    assert!(has(&home, &own.parse().unwrap()));
    assert_eq!(forum(&home).len(), 51);
}

/// A flood from many throwaway authors down one link: the node takes new
/// posts from that link only as fast as its budget allows (the rest would come
/// with a later reconciliation), while another link's posts go in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_link_brings_new_posts_only_as_fast_as_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("n1");
    let rate = ["--forum-link-rate", "0.2", "--forum-link-burst", "20"];
    let _node = serverless_up(&home, "n1", None, &rate);
    let t: Ticket = ticket(&home).parse().unwrap();
    let mut rng = rand::thread_rng();
    let mut flooder = Member::dial(&t, t.secret, SecretKey::generate(&mut rng))
        .await
        .expect("a member gets in");
    let now = burrow_proto::time::unix_ms(std::time::SystemTime::now());
    for i in 0..40 {
        let k = SecretKey::generate(&mut rng);
        flooder.send_by(&k, &format!("flood {i}"), now + i).await;
    }
    flooder.barrier(1).await;
    let taken = forum(&home).len();
    assert!(
        (20..=21).contains(&taken),
        "a link's burst is 20 new posts (and one more each 5 s): took {taken}"
    );
    // Another member's link has a budget of its own.
    let mut honest = Member::dial(&t, t.secret, SecretKey::generate(&mut rng))
        .await
        .expect("a member gets in");
    let p = honest.post("an honest post", None, now + 100);
    honest.send(p.clone()).await;
    arrives(&home, p.id).await;
}
