//! `<home>/config.toml`: what `burrow up` remembers.
//!
//! The first `burrow up` in a home that has none writes one, once the node
//! is up: the options given on its command line set, every other key there
//! as a comment with its default, so the file documents itself. A bare
//! `burrow up` afterwards starts the same node. Options on the command line
//! (or in their environment variables) win over the file for that run;
//! `--save` writes them into it, keeping its comments and other keys
//! (`toml_edit`). A key the file doesn't know, or a value that doesn't
//! parse, stops `up` with the line it is on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use burrow_proto::mesh::Ticket;
use burrow_proto::{Name, ServerAddr};
use serde::{Deserialize, Deserializer};

use crate::up::UpArgs;
use crate::CliError;

/// The file's name in a home.
pub const FILE: &str = "config.toml";

/// Which links a node uses (`path` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathChoice {
    /// Direct where it can be, relayed where not.
    Any,
    /// `--direct-only`.
    DirectOnly,
    /// `--relay-only`.
    RelayOnly,
}

/// The file's keys, all optional. Each is a `burrow up` option of the same
/// name (`reshare` and `port-mapping` are the `--no-…` flags turned round,
/// `path` is `--direct-only` or `--relay-only`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    #[serde(default, deserialize_with = "parsed")]
    server: Option<ServerAddr>,
    #[serde(default, deserialize_with = "parsed")]
    name: Option<Name>,
    #[serde(default, deserialize_with = "tickets")]
    join: Option<Vec<Ticket>>,
    links: Option<usize>,
    #[serde(default, deserialize_with = "parsed")]
    bind: Option<SocketAddr>,
    #[serde(default, deserialize_with = "duration")]
    keepalive: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    reshare: Option<bool>,
    port_mapping: Option<bool>,
    path: Option<PathChoice>,
    proxy: Option<String>,
    threads: Option<NonZeroUsize>,
    forum_author_quota: Option<u64>,
    forum_topic_quota: Option<u64>,
}

/// Each key: its `burrow up` option's id, its default (or for keys without
/// one, an example) as the file spells it, and what it does, for the file's
/// comments.
const KEYS: &[(&str, &str, &str, &str)] = &[
    ("server", "server", "\"example.net:7700\"", "The rendezvous server: burrow://<server-id>@host:port (pins its key) or host:port. Absent: serverless."),
    ("name", "name", "\"alice\"", "The name this node registers (a-z, 0-9, '-', '_')."),
    ("join", "join", "[]", "Serverless: tickets of nodes whose network to join."),
    ("links", "links", "4", "Serverless: how many links to look for through introductions."),
    ("bind", "bind", "\"[::]:0\"", "UDP address of the node's socket."),
    ("keepalive", "keepalive", "\"10s\"", "QUIC keepalive interval (keeps NAT mappings open)."),
    ("idle-timeout", "idle_timeout", "\"30s\"", "A connection silent this long is dead."),
    ("reshare", "no_reshare", "true", "Offer finished downloads to others."),
    ("port-mapping", "no_port_mapping", "true", "Ask the router for a public port (PCP, NAT-PMP, UPnP)."),
    ("path", "path", "\"any\"", "\"any\", \"direct-only\" (never relay) or \"relay-only\" (never punch)."),
    ("proxy", "proxy", "\"http://proxy.example:3128\"", "An HTTP proxy to reach the server through: http://host:port."),
    ("threads", "threads", "1", "Threads for the node's async work (default: half the cores)."),
    ("forum-author-quota", "forum_author_quota", "10000", "Forum posts kept per author in each topic."),
    ("forum-topic-quota", "forum_topic_quota", "100000", "Forum posts per topic past which only vouched-for authors are kept."),
];

/// A value the file holds as a string, parsed with `T`'s `FromStr`.
fn parsed<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> Result<Option<T>, D::Error>
where
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(d)?;
    text.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!("{text:?}: {e} (write it as \"10s\", \"2m\")"))
    })
}

fn tickets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Ticket>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|e| serde::de::Error::custom(format!("ticket {t:?}: {e}")))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The home's config file, read: what it set, and whether there was one.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The file's path.
    pub path: PathBuf,
    /// Whether it existed.
    pub existed: bool,
    file: NodeFile,
}

/// Reads `home`'s config file (an absent one sets nothing).
pub fn load(home: &Path) -> Result<Loaded, CliError> {
    let path = home.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                path,
                existed: false,
                file: NodeFile::default(),
            })
        }
        Err(e) => return Err(CliError::new(format!("{}: {e}", path.display()), None)),
    };
    let file = toml::from_str(&text).map_err(|e| {
        CliError::new(
            format!("{}: {}", path.display(), e.to_string().trim_end()),
            Some(
                "each key is described in the file's comments; `burrow up --help` lists the options they stand for"
                    .into(),
            ),
        )
    })?;
    Ok(Loaded {
        path,
        existed: true,
        file,
    })
}

impl Loaded {
    /// Whether the file names the node to start (a service needs that).
    pub fn names_a_node(&self) -> bool {
        self.file.name.is_some()
    }

    /// Sets in `args` what the file holds, for every option not `given` on
    /// the command line or in its environment variable.
    pub fn apply(&self, args: &mut UpArgs, given: &HashSet<String>) {
        let f = &self.file;
        let from_file = |id: &str| !given.contains(id);
        macro_rules! take {
            ($key:ident => $field:ident) => {
                if let (Some(v), true) = (&f.$key, from_file(stringify!($field))) {
                    args.$field = v.clone().into();
                }
            };
        }
        take!(server => server);
        take!(name => name);
        take!(links => links);
        take!(bind => bind);
        take!(keepalive => keepalive);
        take!(idle_timeout => idle_timeout);
        take!(proxy => proxy);
        take!(threads => threads);
        take!(forum_author_quota => forum_author_quota);
        take!(forum_topic_quota => forum_topic_quota);
        if let (Some(join), true) = (&f.join, from_file("join")) {
            args.join = join.clone();
        }
        if let (Some(on), true) = (f.reshare, from_file("no_reshare")) {
            args.no_reshare = !on;
        }
        if let (Some(on), true) = (f.port_mapping, from_file("no_port_mapping")) {
            args.no_port_mapping = !on;
        }
        if let (Some(path), true) = (f.path, from_file("direct_only") && from_file("relay_only")) {
            args.direct_only = path == PathChoice::DirectOnly;
            args.relay_only = path == PathChoice::RelayOnly;
        }
    }
}

/// The file's value for `id`'s option, as `args` has it now.
fn value_of(args: &UpArgs, id: &str) -> Option<toml_edit::Value> {
    let text = |s: String| Some(toml_edit::Value::from(s));
    match id {
        "server" => args.server.as_ref().and_then(|s| text(s.to_string())),
        "name" => args.name.as_ref().and_then(|n| text(n.to_string())),
        "join" => Some(toml_edit::Value::Array(
            args.join.iter().map(|t| t.to_string()).collect(),
        )),
        "links" => Some((args.links as i64).into()),
        "bind" => text(args.bind.to_string()),
        "keepalive" => text(humantime::format_duration(args.keepalive).to_string()),
        "idle_timeout" => text(humantime::format_duration(args.idle_timeout).to_string()),
        "no_reshare" => Some((!args.no_reshare).into()),
        "no_port_mapping" => Some((!args.no_port_mapping).into()),
        "path" => text(
            match (args.direct_only, args.relay_only) {
                (true, _) => "direct-only",
                (_, true) => "relay-only",
                _ => "any",
            }
            .into(),
        ),
        "proxy" => args.proxy.clone().and_then(text),
        "threads" => args.threads.map(|n| (n.get() as i64).into()),
        "forum_author_quota" => Some((args.forum_author_quota as i64).into()),
        "forum_topic_quota" => Some((args.forum_topic_quota as i64).into()),
        _ => None,
    }
}

/// Whether the option `id` was `given` (`path` stands for two flags).
fn is_given(given: &HashSet<String>, id: &str) -> bool {
    match id {
        "path" => given.contains("direct_only") || given.contains("relay_only"),
        id => given.contains(id),
    }
}

/// A new file: the `given` options set, every other key a comment with its
/// default.
pub fn fresh(args: &UpArgs, given: &HashSet<String>) -> String {
    let mut out = String::from(
        "# burrow up's settings for this home, written by the first `burrow up`.\n\
         # A bare `burrow up` starts this node; options on its command line win\n\
         # over this file for that run (`burrow up --save ...` writes them here).\n\
         # Lines starting with # are comments; remove the # to set a key.\n",
    );
    for (key, id, default, doc) in KEYS {
        out.push_str(&format!("\n# {doc}\n"));
        match value_of(args, id).filter(|_| is_given(given, id)) {
            Some(v) => out.push_str(&format!("{key} = {}\n", v.to_string().trim())),
            None => out.push_str(&format!("# {key} = {default}\n")),
        }
    }
    out
}

/// `text` (an existing file) with the `given` options set in it; its
/// comments and other keys stay as they were.
pub fn updated(text: &str, args: &UpArgs, given: &HashSet<String>) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for (key, id, _, _) in KEYS {
        if let Some(v) = value_of(args, id).filter(|_| is_given(given, id)) {
            match doc.get_mut(key).and_then(|i| i.as_value_mut()) {
                // Keeps the comment before the key and after its value.
                Some(old) => {
                    let decor = old.decor().clone();
                    *old = v;
                    *old.decor_mut() = decor;
                }
                None => {
                    doc.insert(key, toml_edit::Item::Value(v));
                }
            }
        }
    }
    Ok(doc.to_string())
}

/// A config file to write once the node is up (so that options that don't
/// work aren't kept): a fresh one where there was none, or with `--save` the
/// given options set in the old one.
pub struct Pending {
    path: PathBuf,
    text: String,
    existed: bool,
}

impl Pending {
    /// What this run will write, if anything: the options `given`.
    pub fn new(
        loaded: &Loaded,
        args: &UpArgs,
        given: &HashSet<String>,
    ) -> Result<Option<Pending>, CliError> {
        let text = if !loaded.existed {
            fresh(args, given)
        } else if args.save {
            let old = std::fs::read_to_string(&loaded.path)?;
            updated(&old, args, given)
                .map_err(|e| CliError::new(format!("{}: {e}", loaded.path.display()), None))?
        } else {
            return Ok(None);
        };
        Ok(Some(Pending {
            path: loaded.path.clone(),
            text,
            existed: loaded.existed,
        }))
    }

    /// Writes it (atomically: a crash leaves the old file or the new one)
    /// and says so.
    pub fn write(self) -> Result<String, CliError> {
        use std::io::Write;
        let staging = self.path.with_extension("toml.new");
        let _ = std::fs::remove_file(&staging);
        let mut file = burrow_home::private::owner_only(
            std::fs::OpenOptions::new().write(true).create_new(true),
        )
        .open(&staging)?;
        file.write_all(self.text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&staging, &self.path)?;
        let what = if self.existed {
            "saved these options in"
        } else {
            "wrote"
        };
        Ok(format!(
            "{what} {} (a bare `burrow up` starts this node from it)",
            self.path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn load_text(text: &str) -> Result<Loaded, CliError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), text).unwrap();
        load(dir.path())
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
        let text = fresh(&args, &given);
        assert!(
            text.contains("\nserver = \"burrow://example.net:7700\"\n"),
            "{text}"
        );
        assert!(text.contains("\nname = \"alice\"\n"));
        assert!(text.contains("\nlinks = 6\n"));
        assert!(text.contains("\n# keepalive = \"10s\"\n"));
        assert!(text.contains("# QUIC keepalive interval"));
        // And it reads back as what was given.
        let loaded = load_text(&text).unwrap();
        let (mut bare, none) = up(&[]);
        loaded.apply(&mut bare, &none);
        assert_eq!(bare.server.unwrap().host_port(), "example.net:7700");
        assert_eq!(bare.name.unwrap().as_str(), "alice");
        assert_eq!(bare.links, 6);
        assert_eq!(bare.keepalive, Duration::from_secs(10));
    }

    #[test]
    fn every_commented_key_works_once_uncommented() {
        let (args, given) = up(&[]);
        let text = fresh(&args, &given);
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(kv) if kv_line(kv) => kv,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            uncommented.matches(" = ").count(),
            KEYS.len(),
            "{uncommented}"
        );
        load_text(&uncommented).unwrap();
    }

    /// Whether a comment's text is a `key = value` line of the file's.
    fn kv_line(text: &str) -> bool {
        KEYS.iter()
            .any(|(key, ..)| text.starts_with(&format!("{key} = ")))
    }

    #[test]
    fn options_on_the_command_line_win_over_the_file() {
        let loaded = load_text(
            "name = \"alice\"\nidle-timeout = \"1m\"\npath = \"relay-only\"\nreshare = false\n",
        )
        .unwrap();
        let (mut args, given) = up(&["--name", "bob", "--direct-only"]);
        loaded.apply(&mut args, &given);
        assert_eq!(args.name.unwrap().as_str(), "bob");
        assert!(args.direct_only && !args.relay_only);
        assert_eq!(args.idle_timeout, Duration::from_secs(60));
        assert!(args.no_reshare);
    }

    #[test]
    fn a_bad_key_or_value_is_reported_with_its_line() {
        let e =
            load_text("name = \"alice\"\n# a comment\nsever = \"example.net:7700\"\n").unwrap_err();
        assert!(e.message.contains("line 3"), "{}", e.message);
        assert!(e.message.contains("unknown field `sever`"), "{}", e.message);
        let e = load_text("name = \"alice\"\nkeepalive = \"often\"\n").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        assert!(e.message.contains("\"often\""), "{}", e.message);
        let e = load_text("name = \"Alice Smith\"\n").unwrap_err();
        assert!(e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn saving_keeps_the_files_comments_and_other_keys() {
        let old = "# my laptop\nname = \"alice\" # the name friends know\n\n# where we meet\nserver = \"old.example:7700\"\nlinks = 5\n";
        let (args, given) = up(&["--server", "new.example:7700"]);
        let new = updated(old, &args, &given).unwrap();
        assert_eq!(
            new,
            "# my laptop\nname = \"alice\" # the name friends know\n\n# where we meet\nserver = \"burrow://new.example:7700\"\nlinks = 5\n"
        );
    }
}
