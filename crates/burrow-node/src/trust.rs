//! Trust on first use for servers given without a pinned key, as SSH does.
//!
//! `home/known_servers` holds one line per server: `host:port <key>`. The first
//! time a node reaches a server it records the key; a different key afterwards is a
//! hard error until the user removes the line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burrow_proto::NodeId;

/// The known_servers file.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
}

impl KnownServers {
    /// The file in `home`.
    pub fn new(home: &Path) -> Self {
        KnownServers {
            path: home.join("known_servers"),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key recorded for `host_port`. Lines that don't parse are skipped.
    pub fn lookup(&self, host_port: &str) -> Option<NodeId> {
        let text = fs::read_to_string(&self.path).ok()?;
        text.lines().find_map(|line| {
            let (hp, key) = line.trim().split_once(' ')?;
            (hp == host_port).then(|| key.trim().parse().ok()).flatten()
        })
    }

    /// Records `key` for `host_port`.
    pub fn remember(&self, host_port: &str, key: &NodeId) -> std::io::Result<()> {
        let mut f =
            burrow_home::private::owner_only(fs::OpenOptions::new().create(true).append(true))
                .open(&self.path)?;
        writeln!(f, "{host_port} {key}")?;
        f.sync_all()
    }
}
