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
//!
//! This module knows the file alone; how `up`'s options map onto its keys
//! is `UpArgs::fill_from` and `UpArgs::setting` (`up.rs`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use burrow_proto::mesh::Ticket;
use burrow_proto::{Name, ServerAddr};
use serde::{Deserialize, Deserializer};

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
    pub(crate) server: Option<ServerAddr>,
    #[serde(default, deserialize_with = "parsed")]
    pub(crate) name: Option<Name>,
    #[serde(default, deserialize_with = "tickets")]
    pub(crate) join: Option<Vec<Ticket>>,
    pub(crate) links: Option<usize>,
    #[serde(default, deserialize_with = "parsed")]
    pub(crate) bind: Option<SocketAddr>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) keepalive: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) reshare: Option<bool>,
    pub(crate) port_mapping: Option<bool>,
    pub(crate) path: Option<PathChoice>,
    pub(crate) proxy: Option<String>,
    pub(crate) threads: Option<NonZeroUsize>,
    pub(crate) forum_author_quota: Option<u64>,
    pub(crate) forum_topic_quota: Option<u64>,
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
    /// What it holds.
    pub file: NodeFile,
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
}

/// What a file is written from: the value to set for an option (by its
/// clap id), or `None` to leave it to its default.
pub type Setting<'a> = &'a dyn Fn(&str) -> Option<toml_edit::Value>;

/// A new file: the keys `setting` gives a value set, every other key a
/// comment with its default.
pub fn fresh(setting: Setting) -> String {
    let mut out = String::from(
        "# burrow up's settings for this home, written by the first `burrow up`.\n\
         # A bare `burrow up` starts this node; options on its command line win\n\
         # over this file for that run (`burrow up --save ...` writes them here).\n\
         # Lines starting with # are comments; remove the # to set a key.\n",
    );
    for (key, id, default, doc) in KEYS {
        out.push_str(&format!("\n# {doc}\n"));
        match setting(id) {
            Some(v) => out.push_str(&format!("{key} = {}\n", v.to_string().trim())),
            None => out.push_str(&format!("# {key} = {default}\n")),
        }
    }
    out
}

/// `text` (an existing file) with what `setting` gives set in it; its
/// comments and other keys stay as they were.
pub fn updated(text: &str, setting: Setting) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for (key, id, _, _) in KEYS {
        if let Some(v) = setting(id) {
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
    /// What this run will write, if anything: a fresh file, or with `save`
    /// what `setting` gives into the old one.
    pub fn new(loaded: &Loaded, setting: Setting, save: bool) -> Result<Option<Pending>, CliError> {
        let text = if !loaded.existed {
            fresh(setting)
        } else if save {
            let old = std::fs::read_to_string(&loaded.path)?;
            updated(&old, setting)
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

    pub(crate) fn load_text(text: &str) -> Result<Loaded, CliError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), text).unwrap();
        load(dir.path())
    }

    #[test]
    fn every_commented_key_works_once_uncommented() {
        let text = fresh(&|_| None);
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
        let new = updated(old, &|id| {
            (id == "server").then(|| toml_edit::Value::from("new.example:7700"))
        })
        .unwrap();
        assert_eq!(
            new,
            "# my laptop\nname = \"alice\" # the name friends know\n\n# where we meet\nserver = \"new.example:7700\"\nlinks = 5\n"
        );
    }
}
