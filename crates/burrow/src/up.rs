//! `burrow up`: a node in the foreground, saying in plain words what happens.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use burrow_node::api::ConnectionState;
use burrow_node::{Node, NodeConfig, NodeEvent};
use burrow_proto::rendezvous::{CloseReason, Direction};
use burrow_proto::{Name, ServerAddr};

use crate::config::{NodeFile, PathChoice};
use crate::CliError;

/// Options of `burrow up`. Each one but the secrets and testing aids is also
/// a key of the home's config.toml ([`crate::config`]), which supplies what
/// the command line doesn't.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The rendezvous server: burrow://<server-id>@host:port pins its key;
    /// a bare host:port trusts the key it presents the first time. Without
    /// one the node runs serverless: it starts a network of its own, or joins
    /// one with --join.
    #[arg(long, env = "BURROW_SERVER")]
    pub(crate) server: Option<ServerAddr>,
    /// Serverless: join the network of the node whose ticket this is (`burrow
    /// ticket` prints it). Give several to try more nodes; when both sides are
    /// behind NATs, each runs --join with the other's ticket.
    #[arg(long)]
    pub(crate) join: Vec<burrow_proto::mesh::Ticket>,
    /// Serverless: how many links to look for through introductions by peers.
    #[arg(long, default_value_t = 4)]
    pub(crate) links: usize,
    /// Testing aid: how often dialed links reconcile their forums again.
    #[arg(long, hide = true, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) resync_every: Duration,
    /// Forum posts kept per author in each topic (authors you vouch for, your
    /// contacts and the server's named users, and you, have no limit).
    #[arg(long, default_value_t = 10_000, value_name = "POSTS")]
    pub(crate) forum_author_quota: u64,
    /// Forum posts in each topic past which new ones are kept only from
    /// authors you vouch for (the rest are not stored or passed on).
    #[arg(long, default_value_t = 100_000, value_name = "POSTS")]
    pub(crate) forum_topic_quota: u64,
    /// Testing aid: new forum posts one link may bring per second ...
    #[arg(long, hide = true, default_value_t = 100.0)]
    pub(crate) forum_link_rate: f64,
    /// ... and at once.
    #[arg(long, hide = true, default_value_t = 10_000.0)]
    pub(crate) forum_link_burst: f64,
    /// Testing aid: pretend the wall clock is this many milliseconds off.
    #[arg(long, hide = true, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) clock_skew_ms: i64,
    /// The name to register (a-z, 0-9, '-', '_'; bound to this node's key).
    /// Required the first time; saved in the home's config.toml with the
    /// other options given then.
    #[arg(long, env = "BURROW_NAME")]
    pub(crate) name: Option<Name>,
    /// UDP address for the node's socket. The default takes IPv4 and IPv6 on
    /// one socket (IPv4 alone where the machine has no IPv6); `0.0.0.0:0` is
    /// IPv4 only.
    #[arg(long, default_value = "[::]:0")]
    pub(crate) bind: SocketAddr,
    /// QUIC keepalive interval (keeps NAT mappings open).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) keepalive: Duration,
    /// A connection silent this long is dead.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Don't offer files you downloaded to others (by default every finished
    /// download is shared too, from where it was saved).
    #[arg(long)]
    pub(crate) no_reshare: bool,
    /// Don't ask the router for a public port. By default the node asks it
    /// (PCP, then NAT-PMP, then UPnP) and offers the mapped port to peers, so
    /// they reach it directly even through a symmetric NAT.
    #[arg(long)]
    pub(crate) no_port_mapping: bool,
    /// Never use the server's relay: links go direct (hole punching, port
    /// mapping, TCP simultaneous open) or fail, saying so.
    #[arg(long, conflicts_with = "relay_only")]
    pub(crate) direct_only: bool,
    /// Never punch: every link goes through the server's relay, and the
    /// server hands peers none of this node's addresses, so nobody but the
    /// server learns where it is. Slower than direct.
    #[arg(long)]
    pub(crate) relay_only: bool,
    /// An HTTP proxy to reach the server's HTTPS port through (`CONNECT`),
    /// on networks that let nothing out but through one: `http://host:port`
    /// or `host:port`. Tried when UDP and TCP to the server get nowhere.
    #[arg(long, env = "HTTPS_PROXY", value_name = "URL")]
    pub(crate) proxy: Option<String>,
    /// On a server that keeps accounts: read the account's password from
    /// standard input (its first line). With --invite, it becomes the new
    /// account's password. A node whose key already holds its name needs none.
    #[arg(long)]
    pub(crate) password_stdin: bool,
    /// On a server that keeps accounts: an invite code from its operator,
    /// which makes the account for --name.
    #[arg(long, value_name = "CODE")]
    pub(crate) invite: Option<String>,
    /// Threads for the node's async work (connections, the API, checking
    /// downloads; disk writes and the store have threads of their own).
    /// Default: half this machine's cores, at least one. quinn drives each
    /// connection on one task, so more threads mostly add wake-ups between
    /// them: on two cores, one thread moved a file with 10-15 % less CPU
    /// than two.
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<std::num::NonZeroUsize>,
    /// Write the options given here into the home's config.toml (its
    /// comments and other keys are kept), so that a bare `burrow up` uses
    /// them from now on. Without it they hold for this run only, except the
    /// first time, when the file is written from them.
    #[arg(long)]
    pub(crate) save: bool,
    /// Started by `burrow service`: on Windows, what the node prints goes to
    /// the service's log and the console is let go.
    #[arg(long, hide = true)]
    pub(crate) service: bool,
}

impl UpArgs {
    /// The runtime's worker threads (see `--threads`).
    pub fn worker_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads.map_or((cores / 2).max(1), |n| n.get())
    }
}

/// `up`'s options against its config file ([`crate::config`]): the keys are
/// named for the options, `reshare` and `port-mapping` are the `--no-…` flags
/// turned round, `path` is `--direct-only` or `--relay-only`.
impl UpArgs {
    /// Takes from the config file `f` every option not `given` on the
    /// command line or in its environment variable.
    pub fn fill_from(&mut self, f: &NodeFile, given: &HashSet<String>) {
        let from_file = |id: &str| !given.contains(id);
        macro_rules! take {
            ($field:ident) => {
                if let (Some(v), true) = (&f.$field, from_file(stringify!($field))) {
                    self.$field = v.clone().into();
                }
            };
        }
        take!(server);
        take!(name);
        take!(links);
        take!(bind);
        take!(keepalive);
        take!(idle_timeout);
        take!(proxy);
        take!(threads);
        take!(forum_author_quota);
        take!(forum_topic_quota);
        if let (Some(join), true) = (&f.join, from_file("join")) {
            self.join = join.clone();
        }
        if let (Some(on), true) = (f.reshare, from_file("no_reshare")) {
            self.no_reshare = !on;
        }
        if let (Some(on), true) = (f.port_mapping, from_file("no_port_mapping")) {
            self.no_port_mapping = !on;
        }
        if let (Some(path), true) = (f.path, from_file("direct_only") && from_file("relay_only")) {
            self.direct_only = path == PathChoice::DirectOnly;
            self.relay_only = path == PathChoice::RelayOnly;
        }
    }

    /// The config file's value for the option `id` as it is now, if it was
    /// `given` (`path` stands for two flags).
    pub fn setting(&self, id: &str, given: &HashSet<String>) -> Option<toml_edit::Value> {
        let was_given = match id {
            "path" => given.contains("direct_only") || given.contains("relay_only"),
            id => given.contains(id),
        };
        if !was_given {
            return None;
        }
        let text = |s: String| Some(toml_edit::Value::from(s));
        match id {
            "server" => self.server.as_ref().and_then(|s| text(s.to_string())),
            "name" => self.name.as_ref().and_then(|n| text(n.to_string())),
            "join" => Some(toml_edit::Value::Array(
                self.join.iter().map(|t| t.to_string()).collect(),
            )),
            "links" => Some((self.links as i64).into()),
            "bind" => text(self.bind.to_string()),
            "keepalive" => text(humantime::format_duration(self.keepalive).to_string()),
            "idle_timeout" => text(humantime::format_duration(self.idle_timeout).to_string()),
            "no_reshare" => Some((!self.no_reshare).into()),
            "no_port_mapping" => Some((!self.no_port_mapping).into()),
            "path" => text(
                match (self.direct_only, self.relay_only) {
                    (true, _) => "direct-only",
                    (_, true) => "relay-only",
                    _ => "any",
                }
                .into(),
            ),
            "proxy" => self.proxy.clone().and_then(text),
            "threads" => self.threads.map(|n| (n.get() as i64).into()),
            "forum_author_quota" => Some((self.forum_author_quota as i64).into()),
            "forum_topic_quota" => Some((self.forum_topic_quota as i64).into()),
            _ => None,
        }
    }
}

/// What the command line and config file ask for together must make sense:
/// a name, and the server-only options with a server (which may come from
/// the file while the option came from the command line).
fn check(args: &UpArgs, loaded: &crate::config::Loaded) -> Result<Name, CliError> {
    let whence = if loaded.existed {
        format!(" (nor in {})", loaded.path.display())
    } else {
        String::new()
    };
    let name = args.name.clone().ok_or_else(|| {
        CliError::new(
            format!("no name to register given{whence}"),
            Some("give one with --name NAME; the first `burrow up` saves it, with the other options, in the home's config.toml".into()),
        )
    })?;
    if args.server.is_some() && !args.join.is_empty() {
        return Err(CliError::new(
            "--join is for serverless networks, but a server is set",
            Some(format!(
                "drop --server, or remove `server` from {} for a serverless node",
                loaded.path.display()
            )),
        ));
    }
    let needs_server = [
        (args.relay_only, "--relay-only"),
        (args.password_stdin, "--password-stdin"),
        (args.invite.is_some(), "--invite"),
    ];
    if let (None, Some((_, flag))) = (&args.server, needs_server.iter().find(|(on, _)| *on)) {
        return Err(CliError::new(
            format!("{flag} needs a server{whence}"),
            Some("give one with --server burrow://<server-id>@host:port".into()),
        ));
    }
    Ok(name)
}

pub async fn run(
    home: PathBuf,
    args: UpArgs,
    loaded: crate::config::Loaded,
    saving: HashSet<String>,
) -> Result<(), CliError> {
    let name = check(&args, &loaded)?;
    let (secret, created) = burrow_home::keyfile::load_or_create(&home.join("key"))?;
    if created {
        println!("created a new identity in {}", home.join("key").display());
    }
    let server_mode = args.server.is_some();
    let secret_arg = |text: String| {
        burrow_proto::rendezvous::Secret::new(text).map_err(|e| CliError::new(e, None))
    };
    let credentials = burrow_proto::rendezvous::Credentials {
        password: if args.password_stdin {
            Some(secret_arg(crate::admin::read_password(true, "")?)?)
        } else {
            None
        },
        invite: args
            .invite
            .as_ref()
            .map(|c| secret_arg(c.trim().to_string()))
            .transpose()?,
    };
    // A password goes only to a server whose key we know: pinned in the join
    // URL, or remembered from before. Sent to a key trusted on first use, it
    // would go to whoever answered first.
    if let (Some(_), Some(server)) = (&credentials.password, &args.server) {
        let known = burrow_node::trust::KnownServers::new(&home).lookup(&server.host_port());
        if server.key.is_none() && known.is_none() {
            return Err(CliError::new(
                format!(
                    "not sending a password to {}: its key isn't pinned or known yet",
                    server.host_port()
                ),
                Some(
                    "use the server's join URL (burrow://<server-id>@host:port), which its operator's `burrow server` prints"
                        .into(),
                ),
            ));
        }
    }
    let joining = !args.join.is_empty();
    // Written once the node is up, so options that don't work aren't kept.
    let settings =
        crate::config::Pending::new(&loaded, &|id| args.setting(id, &saving), args.save)?;
    let mut config = NodeConfig::new(home.clone(), secret, args.server, name);
    config.bind = args.bind;
    config.keepalive = args.keepalive;
    config.idle_timeout = args.idle_timeout;
    config.reshare = !args.no_reshare;
    config.port_mapping = !args.no_port_mapping;
    config.path = if args.direct_only {
        burrow_node::PathPolicy::DirectOnly
    } else if args.relay_only {
        burrow_node::PathPolicy::RelayOnly
    } else {
        burrow_node::PathPolicy::Any
    };
    let proxy = args
        .proxy
        .or_else(|| std::env::var("https_proxy").ok())
        .filter(|p| !p.is_empty());
    config.proxy = match proxy {
        None => None,
        Some(p) => {
            let hostport = p.trim_start_matches("http://").trim_end_matches('/');
            if hostport.contains('@') || p.starts_with("https://") || !hostport.contains(':') {
                return Err(CliError::new(
                    format!("cannot use the proxy {p:?}"),
                    Some("give it as http://host:port (proxies that want a password, or TLS to the proxy itself, are not supported yet)".into()),
                ));
            }
            Some(hostport.to_string())
        }
    };
    config.credentials = credentials;
    config.join = args.join;
    config.mesh_links = args.links.max(1);
    config.clock_skew_ms = args.clock_skew_ms;
    config.resync_every = args.resync_every;
    config.forum_quota = burrow_store::PostQuota {
        per_author: args.forum_author_quota,
        per_topic: args.forum_topic_quota,
    };
    config.forum_link_rate = (
        args.forum_link_rate.max(0.0),
        args.forum_link_burst.max(1.0),
    );
    // Caught from here to the end: a signal during start-up ends the start,
    // and one that comes while an event is being printed is kept for the loop.
    let mut stop = crate::stop::StopSignal::install()?;
    let node = tokio::select! {
        node = Node::start(config) => node.map_err(|e| {
            let hint = e.hint();
            CliError::new(e, hint)
        })?,
        _ = stop.wait() => {
            println!("stopped before the node was up");
            return Ok(());
        }
    };
    let status = node.status();
    if server_mode {
        println!(
            "{} is up (id {}), registered with {}",
            status.name,
            &status.id[..8],
            status.server
        );
        if status.server_transport.as_deref() == Some("tcp") {
            println!("{TCP_NOTE}");
        }
    } else {
        println!(
            "{} is up (id {}), serverless{}",
            status.name,
            &status.id[..8],
            if joining { ", joining..." } else { "" }
        );
        match node.ticket() {
            Ok(t) => println!("ticket (a friend joins with: burrow up --join <ticket>):\n{t}"),
            Err(e) => println!("no ticket yet: {e}"),
        }
    }
    println!(
        "public address {}, local {}",
        status.public_addr.as_deref().unwrap_or("unknown"),
        status.local_addr
    );
    if let Some(pending) = settings {
        match pending.write() {
            Ok(said) => println!("{said}"),
            Err(e) => eprintln!("warning: the settings were not saved: {}", e.message),
        }
    }
    let online: Vec<String> = node
        .peers()
        .into_iter()
        .filter(|p| p.online)
        .filter_map(|p| p.name)
        .collect();
    if status.presence == "watched" {
        println!("this server announces only your contacts and links; connect to others by name");
    } else if online.is_empty() {
        println!("nobody else is online yet");
    } else {
        println!("online: {}", online.join(", "));
    }
    crate::tunnel::at_start(&node.exposed(), &node.forwards());
    println!(
        "other commands: burrow --home {} peers | connect <name> | send <name> <text> | messages | share <file> | search <text> | get <file> | post <text> | forum | ticket",
        home.display()
    );

    let mut events = node.subscribe();
    let mut expelled = None;
    loop {
        tokio::select! {
            _ = stop.wait() => break,
            e = events.recv() => match e {
                Ok(NodeEvent::Expelled { error, hint }) => {
                    println!("{error}");
                    expelled = Some(CliError::new(error, hint));
                    break;
                }
                Ok(event) => {
                    if let Some(line) = describe(&event, node.name()) {
                        println!("{line}");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("({n} events not shown: output was too slow)");
                }
                Err(_) => break,
            }
        }
    }
    println!("stopping...");
    node.shutdown().await;
    println!("stopped");
    match expelled {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What `up` says when the server session runs over TCP.
const TCP_NOTE: &str = "reaching the server over TCP: nothing came back over UDP, so this network seems to drop it; peers reach you through the server's relay";

/// One event as a line for a person; `None` for events not worth a line.
pub fn describe(event: &NodeEvent, me: &Name) -> Option<String> {
    Some(match event {
        NodeEvent::ServerConnected {
            server,
            public_addr,
            over_tcp,
        } => {
            let tcp = if *over_tcp {
                format!("\n{TCP_NOTE}")
            } else {
                String::new()
            };
            format!("registered with {server} again, public address {public_addr}{tcp}")
        }
        NodeEvent::ServerLost { error, retry_in_ms } => {
            format!("{error}; retrying in {:.1} s", *retry_in_ms as f64 / 1000.0)
        }
        NodeEvent::PeerOnline { name } => format!("{name} is online"),
        NodeEvent::PeerOffline { name } => format!("{name} went offline"),
        NodeEvent::IncomingRequest { name } => {
            format!("{name} asks to connect: burrow accept {name} (or burrow reject {name})")
        }
        NodeEvent::RequestAnswered {
            name,
            accepted: true,
            why,
        } => format!("{name} asked to connect: accepted ({why})"),
        NodeEvent::RequestAnswered {
            name,
            accepted: false,
            why,
        } => format!("{name} asked to connect: refused ({why})"),
        NodeEvent::Expelled { error, .. } => error.clone(),
        NodeEvent::RequestClosed {
            name,
            direction,
            reason,
        } => match (direction, reason) {
            (Direction::Outgoing, CloseReason::Rejected) => format!("{name} rejected your request"),
            (Direction::Incoming, CloseReason::Rejected) => {
                format!("you rejected {name}'s request")
            }
            (Direction::Outgoing, CloseReason::Cancelled) => {
                format!("you withdrew your request to {name}")
            }
            (Direction::Incoming, CloseReason::Cancelled) => {
                format!("{name} withdrew their request")
            }
            (Direction::Outgoing, CloseReason::Expired) => {
                format!("your request to {name} expired unanswered")
            }
            (Direction::Incoming, CloseReason::Expired) => {
                format!("{name}'s request expired unanswered")
            }
            (_, CloseReason::PeerLeft) => {
                format!("the request with {name} ended: {name} went offline")
            }
        },
        NodeEvent::Connected {
            name,
            path,
            remote,
            rtt_ms,
        } => {
            format!("connected to {name}, {path}, rtt {rtt_ms:.1} ms ({remote})")
        }
        NodeEvent::PathChanged {
            name,
            path: ConnectionState::Direct,
            remote,
            method,
        } => match method {
            Some(m) if *m != burrow_proto::punch::Method::Probe => {
                format!(
                    "{name}: connection now direct ({remote}, found by {})",
                    m.words()
                )
            }
            _ => format!("{name}: connection now direct ({remote})"),
        },
        NodeEvent::PathChanged { name, remote, .. } => {
            format!("{name}: direct path lost; relaying ({remote}) while looking for another")
        }
        NodeEvent::ConnectFailed { name, error } => format!("could not connect to {name}: {error}"),
        NodeEvent::Disconnected { name, reason } => format!("disconnected from {name}: {reason}"),
        NodeEvent::Message(m) if m.from_verified && m.from_name == me.as_str() => return None,
        NodeEvent::Message(m) => crate::client::message_line(m),
        NodeEvent::Post(p) if p.author_verified && p.author_name == me.as_str() => return None,
        NodeEvent::Post(p) => match &p.parent {
            Some(parent) => format!(
                "{} replied to {} in {} ({}): {}",
                crate::forum::author(p),
                &parent[..8],
                p.topic,
                &p.id[..8],
                p.text
            ),
            None => format!(
                "{} posted in {} ({}): {}",
                crate::forum::author(p),
                p.topic,
                &p.id[..8],
                p.text
            ),
        },
        NodeEvent::ShareWithdrawn { name, path, reason } => {
            format!("no longer sharing {name:?} ({path}): {reason}")
        }
        NodeEvent::ForwardStarted { .. }
        | NodeEvent::ForwardCarried { .. }
        | NodeEvent::TunnelTrouble { .. } => crate::tunnel::describe(event)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{fresh, load, updated, Loaded, FILE};
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    /// Parses `burrow up` arguments as main does: the options and which were
    /// given.
    fn up(argv: &[&str]) -> (UpArgs, HashSet<String>) {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("up").chain(argv.iter().copied()))
            .unwrap();
        let given = crate::given(&matches);
        (Cli::from_arg_matches(&matches).unwrap().up, given)
    }

    fn load_text(text: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), text).unwrap();
        load(dir.path()).unwrap()
    }

    #[test]
    fn the_first_file_sets_what_was_given_and_documents_the_rest() {
        let (args, given) = up(&[
            "--server",
            "example.net:7700",
            "--name",
            "alice",
            "--links",
            "6",
        ]);
        let text = fresh(&|id| args.setting(id, &given));
        assert!(
            text.contains("\nserver = \"burrow://example.net:7700\"\n"),
            "{text}"
        );
        assert!(text.contains("\nname = \"alice\"\n"));
        assert!(text.contains("\nlinks = 6\n"));
        assert!(text.contains("\n# keepalive = \"10s\"\n"));
        assert!(text.contains("# QUIC keepalive interval"));
        // And it reads back as what was given.
        let loaded = load_text(&text);
        let (mut bare, none) = up(&[]);
        bare.fill_from(&loaded.file, &none);
        assert_eq!(bare.server.unwrap().host_port(), "example.net:7700");
        assert_eq!(bare.name.unwrap().as_str(), "alice");
        assert_eq!(bare.links, 6);
        assert_eq!(bare.keepalive, Duration::from_secs(10));
    }

    #[test]
    fn options_on_the_command_line_win_over_the_file() {
        let loaded = load_text(
            "name = \"alice\"\nidle-timeout = \"1m\"\npath = \"relay-only\"\nreshare = false\n",
        );
        let (mut args, given) = up(&["--name", "bob", "--direct-only"]);
        args.fill_from(&loaded.file, &given);
        assert_eq!(args.name.unwrap().as_str(), "bob");
        assert!(args.direct_only && !args.relay_only);
        assert_eq!(args.idle_timeout, Duration::from_secs(60));
        assert!(args.no_reshare);
    }

    #[test]
    fn saving_sets_only_what_was_given() {
        let old = "name = \"alice\"\nlinks = 5\n";
        let (args, given) = up(&["--server", "new.example:7700", "--direct-only"]);
        let new = updated(old, &|id| args.setting(id, &given)).unwrap();
        assert_eq!(
            new,
            "name = \"alice\"\nlinks = 5\nserver = \"burrow://new.example:7700\"\npath = \"direct-only\"\n"
        );
    }
}
