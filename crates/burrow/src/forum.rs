//! The forum commands: post, forum, ticket. `forum` reads the node's store
//! directly when no node is running, so the forum can be read offline.

use std::path::Path;

use burrow_node::api::Request;
use burrow_node::control::{ClientError, ControlClient};
use burrow_node::forum::{self, Branch, PostView};
use burrow_node::Hinted;

use crate::client::{call, data, parse, print_json};
use crate::CliError;

pub async fn post(
    home: &Path,
    json: bool,
    text: String,
    reply_to: Option<String>,
    topic: Option<String>,
) -> Result<(), CliError> {
    let v = call(
        home,
        &Request::Post {
            text,
            reply_to,
            topic,
        },
    )
    .await?;
    if json {
        print_json(&v);
    } else {
        let p: PostView = parse(v)?;
        println!("{}", p.id);
    }
    Ok(())
}

pub async fn forum(
    home: &Path,
    json: bool,
    thread: Option<String>,
    topic: Option<String>,
) -> Result<(), CliError> {
    let posts: Vec<PostView> = match ControlClient::connect(home).await {
        Ok(mut client) => {
            let req = Request::Forum {
                topic: topic.clone(),
                thread: thread.clone(),
            };
            parse(data(client.request(&req).await?)?)?
        }
        Err(ClientError::NoNode(_)) => offline(home, topic.as_deref(), thread.as_deref())?,
        Err(e) => return Err(e.into()),
    };
    if json {
        print_json(&serde_json::to_value(&posts).expect("views serialize"));
        return Ok(());
    }
    let topic_name = topic
        .as_deref()
        .unwrap_or(burrow_proto::forum::DEFAULT_TOPIC);
    if posts.is_empty() {
        println!("no posts in {topic_name} yet: burrow post \"...\" writes the first");
        return Ok(());
    }
    for line in tree_lines(posts, thread.as_deref()) {
        println!("{line}");
    }
    Ok(())
}

/// The forum as people read it: threads, newest first, replies indented under
/// what they answer, then the replies still waiting for their parent.
pub(crate) fn tree_lines(posts: Vec<PostView>, thread: Option<&str>) -> Vec<String> {
    let tree = forum::tree(posts, thread);
    let mut out = Vec::new();
    for (i, t) in tree.threads.iter().enumerate() {
        if i > 0 {
            out.push(String::new());
        }
        branch_lines(t, 0, &mut out);
    }
    if !tree.lost.is_empty() {
        out.push(String::new());
        out.push("lost (replies whose parent hasn't arrived yet):".into());
        for b in &tree.lost {
            branch_lines(b, 1, &mut out);
        }
    }
    out
}

/// The forum from the store, with no node running.
fn offline(
    home: &Path,
    topic: Option<&str>,
    thread: Option<&str>,
) -> Result<Vec<PostView>, CliError> {
    if !home.join("node.db").exists() {
        return Err(CliError::new(
            format!("no node has run in {}", home.display()),
            Some(format!(
                "start one with: burrow up --home {} --name <name> [--server <address>]",
                home.display()
            )),
        ));
    }
    let me = burrow_home::keyfile::load(&home.join("key"))?.map(|k| k.public());
    forum::read_stopped(home, me, topic, thread).map_err(|e| CliError::new(&e, e.hint()))
}

/// A post's author as people read it: the name, and beside a name the node
/// can't vouch for (not the server's binding, a contact's or ours), the
/// author's short id, so `alice [3f9a1c2e]` can't pass for alice.
pub(crate) fn author(p: &PostView) -> String {
    forum::shown(&p.author_name, &p.author, p.author_verified)
}

fn branch_lines(b: &Branch, depth: usize, out: &mut Vec<String>) {
    let p = &b.post;
    let when = p
        .created_at
        .get(..16)
        .unwrap_or(&p.created_at)
        .replace('T', " ");
    let indent = "  ".repeat(depth);
    let mark = if depth == 0 { "" } else { "↳ " };
    let mut lines = p.text.lines();
    out.push(format!(
        "{indent}{mark}{} {} ({when}): {}",
        &p.id[..8],
        author(p),
        lines.next().unwrap_or("")
    ));
    for more in lines {
        out.push(format!(
            "{indent}{}{more}",
            " ".repeat(mark.chars().count() + 9)
        ));
    }
    for r in &b.replies {
        branch_lines(r, depth + 1, out);
    }
}

pub async fn ticket(home: &Path, json: bool) -> Result<(), CliError> {
    let v = call(home, &Request::Ticket).await?;
    if json {
        print_json(&serde_json::json!({ "ticket": v }));
    } else {
        println!("{}", v.as_str().unwrap_or_default());
    }
    Ok(())
}
