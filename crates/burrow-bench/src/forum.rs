//! `forum`: how posts spread and how members catch up.
//!
//! (a) Gossip: `--nodes` serverless nodes in this process on loopback, each
//! joining from the ticket of a random earlier one, then linking further by
//! introductions. Posts from random members, one at a time: the time until every
//! other member has stored it, and the full copies sent (eager pushes and graft
//! answers) beside the minimum, nodes − 1, and beside what flooding every link
//! would send on this mesh. The first post shapes the tree (Plumtree prunes the
//! links its duplicates came on), so it is reported apart from the rest.
//!
//! (b) Reconciliation: two sets of 100 000 posts differing by 10, 1 000 and
//! 10 000 (half on each side), reconciled with burrow's negentropy code in
//! memory: the bytes and round trips, the `Want` frames that follow, and the
//! posts that must move anyway, beside a naive exchange of every id.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use burrow_node::{Node, NodeConfig, NodeEvent};
use burrow_proto::forum::{Hlc, Post, PostId, Topic};
use burrow_proto::mesh::{self, MeshFrame};
use burrow_proto::reconcile::reconcile_in_memory;
use burrow_proto::{Name, SecretKey};
use rand::seq::SliceRandom;
use rand::Rng;

pub fn run(nodes: usize, posts: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(gossip(nodes.max(3), posts.max(2)));
    reconciliation();
}

async fn gossip(n: usize, posts: usize) {
    println!("forum (a) gossip: {n} serverless nodes on loopback, {posts} posts");
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = NodeConfig::new(
            dir.path().join(format!("n{i}")),
            SecretKey::generate(&mut rand::thread_rng()),
            None,
            format!("n{i}").parse::<Name>().unwrap(),
        );
        config.bind = "127.0.0.1:0".parse().unwrap();
        if i > 0 {
            let via = &nodes[rand::thread_rng().gen_range(0..i)];
            config.join = vec![via.ticket().unwrap().parse().unwrap()];
        }
        nodes.push(Node::start(config).await.expect("the node starts"));
    }
    // Let joins finish and introductions add links until the count settles.
    let links = |nodes: &[Node]| -> usize {
        nodes
            .iter()
            .map(|n| n.status().connections.len())
            .sum::<usize>()
            / 2
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut steady_since) = (0, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = links(&nodes);
        let lonely = nodes.iter().any(|n| n.status().connections.is_empty());
        if now != last || lonely {
            (last, steady_since) = (now, Instant::now());
        } else if steady_since.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let edges = links(&nodes);
    println!(
        "  mesh: {edges} links ({:.1} per node) formed in {:.1} s",
        2.0 * edges as f64 / n as f64,
        started.elapsed().as_secs_f64()
    );

    let mut receivers: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let sent = |nodes: &[Node]| -> (u64, u64) {
        nodes.iter().fold((0, 0), |(p, i), n| {
            let s = n.mesh_stats();
            (p + s.posts_sent, i + s.ihave_sent)
        })
    };
    let mut rows = Vec::new();
    for k in 0..posts {
        let author = rand::thread_rng().gen_range(0..n);
        let (before, ihave_before) = sent(&nodes);
        let t = Instant::now();
        let p = nodes[author]
            .post(&format!("post {k} from n{author}"), None, None)
            .await
            .expect("posting works");
        let mut got: HashSet<usize> = HashSet::from([author]);
        let deadline = t + Duration::from_secs(30);
        while got.len() < n && Instant::now() < deadline {
            for (i, rx) in receivers.iter_mut().enumerate() {
                while let Ok(e) = rx.try_recv() {
                    if matches!(&e, NodeEvent::Post(v) if v.id == p.id) {
                        got.insert(i);
                    }
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = t.elapsed();
        assert_eq!(got.len(), n, "post {k} reached {} of {n} nodes", got.len());
        // Let late duplicates land before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (after, ihave_after) = sent(&nodes);
        rows.push((took, after - before, ihave_after - ihave_before));
    }
    let min = (n - 1) as f64;
    let flood = (2 * edges - (n - 1)) as f64;
    let (first, rest) = rows.split_first().unwrap();
    println!(
        "  first post (tree forming): reached all in {:.1} ms, {} full copies = {:.2}x the minimum ({} = nodes - 1); flooding this mesh: {flood:.0} ({:.2}x)",
        first.0.as_secs_f64() * 1000.0,
        first.1,
        first.1 as f64 / min,
        n - 1,
        flood / min
    );
    let mut times: Vec<f64> = rest.iter().map(|r| r.0.as_secs_f64() * 1000.0).collect();
    times.sort_by(f64::total_cmp);
    let copies: f64 = rest.iter().map(|r| r.1 as f64).sum::<f64>() / rest.len() as f64;
    let ihaves: f64 = rest.iter().map(|r| r.2 as f64).sum::<f64>() / rest.len() as f64;
    println!(
        "  next {} posts: reached all in {:.1} ms median ({:.1} ms worst); {copies:.1} full copies per post = {:.2}x the minimum (target <= 2x), plus {ihaves:.0} id announcements (32 B each)",
        rest.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        copies / min
    );
    for node in nodes {
        node.shutdown().await;
    }
}

fn reconciliation() {
    const SET: u64 = 100_000;
    println!("forum (b) reconciliation: two sets of {SET} posts");
    let key = SecretKey::generate(&mut rand::thread_rng());
    let name: Name = "alice".parse().unwrap();
    let topic = Topic::default_topic();
    // Items for the common part (only their (time, id) matter to the protocol)...
    let base: Vec<(Hlc, PostId)> = (0..SET)
        .map(|i| {
            let id = PostId(*blake3::hash(&i.to_le_bytes()).as_bytes());
            (Hlc::from_ms(1_700_000_000_000 + i * 1000), id)
        })
        .collect();
    for diff in [10u64, 1_000, 10_000] {
        // ...and real posts for the difference, which has to travel in full.
        let unique: Vec<Post> = (0..diff)
            .map(|i| {
                Post::create(
                    &key,
                    name.clone(),
                    topic.clone(),
                    None,
                    Hlc::from_ms(1_700_000_000_500 + i * 1000),
                    format!("a typical post of about a hundred characters, number {i}, saying something worth reading"),
                )
            })
            .collect();
        let mut a = base[..(SET - diff / 2) as usize].to_vec();
        let mut b = base[..(SET - (diff - diff / 2)) as usize].to_vec();
        let mut order: Vec<usize> = (0..diff as usize).collect();
        order.shuffle(&mut rand::thread_rng());
        for (k, i) in order.into_iter().enumerate() {
            let item = (unique[i].created, unique[i].id);
            if k % 2 == 0 {
                a.push(item)
            } else {
                b.push(item)
            }
        }
        let t = Instant::now();
        let (have, need, bytes, rounds) = reconcile_in_memory(&a, &b).expect("reconciles");
        let took = t.elapsed();
        assert_eq!((have.len() + need.len()) as u64, diff);
        let want_bytes: usize = need
            .chunks(mesh::MAX_IDS)
            .map(|c| mesh::encode(&MeshFrame::Want(c.to_vec())).unwrap().len())
            .sum();
        let posts_bytes: usize = unique
            .iter()
            .map(|p| mesh::encode(&MeshFrame::Synced(p.clone())).unwrap().len())
            .sum();
        let naive = SET as usize * 40;
        let total = bytes + want_bytes + posts_bytes;
        println!(
            "  {diff:>6} different: {:>8} B reconciliation in {rounds} round trips ({:.0} ms) + {:>7} B of Want + {:>8} B of posts = {:.2}x the posts themselves (target <= 4x); a naive id exchange: {naive} B",
            bytes,
            took.as_secs_f64() * 1000.0,
            want_bytes,
            posts_bytes,
            total as f64 / posts_bytes as f64
        );
    }
}
