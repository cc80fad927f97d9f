//! burrow's persistence: SQLite (bundled), one database per home directory.
//!
//! Each store opens its file in WAL mode with `synchronous=FULL`, applies its
//! numbered migrations ([`migrate`]) in one transaction, and writes in transactions:
//! once a call returns, what it wrote survives a crash of the process or machine.
//!
//! - [`ServerStore`]: name → key bindings, the file tracker, and (in
//!   [`admission`]) accounts, invites, the allowlist, bans and the audit log.
//! - [`NodeStore`]: chat history, shared files, downloads in progress, forum posts
//!   and followed topics, settings.
//!
//! The API is synchronous; async callers run it on a blocking thread.

pub mod admission;
mod forum;
pub mod migrate;
pub mod node;
mod path;
pub mod server;
mod tunnel;

pub use admission::{Account, AuditEntry, Ban, BanTarget, BoundName, Redeemed};
pub use forum::{PostQuota, Stored, StoredPost};
pub use node::{Contact, MessageKind, NodeStore, StoredDownload, StoredMessage, StoredShare};
pub use server::{NameBinding, Offered, ServerStore};
pub use tunnel::{StoredExposure, StoredForward};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer burrow with a schema this one doesn't know.
    #[error(
        "the store is at schema version {found}, newer than this burrow's {known}: upgrade burrow"
    )]
    TooNew {
        /// Version found in the file.
        found: usize,
        /// Newest version this build knows.
        known: usize,
    },
    /// The file was written by an older burrow, and a read-only open can't
    /// upgrade it.
    #[error("the store is at schema version {found}, older than this burrow's {known}: start the node once to upgrade it")]
    Outdated {
        /// Version found in the file.
        found: usize,
        /// Newest version this build knows.
        known: usize,
    },
    /// The store's file could not be created or made private.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A row holds a value that can't be valid (the file was edited or corrupted).
    #[error("corrupt row in {table}: {what}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// What was wrong.
        what: String,
    },
}

fn open(path: &std::path::Path, migrations: &[&str]) -> Result<rusqlite::Connection, StoreError> {
    private_file(path)?;
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate::apply(&mut conn, migrations)?;
    Ok(conn)
}

/// Opens the database at `path` for reading only: nothing is created,
/// migrated or written. A file a newer burrow wrote is refused as
/// [`StoreError::TooNew`]; one an older burrow wrote, as [`StoreError::Outdated`]
/// (its schema is upgraded when a node or server opens it to write).
fn open_read_only(
    path: &std::path::Path,
    migrations: &[&str],
) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let found: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    let known = migrations.len();
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    if found < known {
        return Err(StoreError::Outdated { found, known });
    }
    Ok(conn)
}

/// Makes `path` a file only its owner can read (created so if absent). SQLite
/// gives the store's `-wal` and `-shm` files the database file's mode.
fn private_file(path: &std::path::Path) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: path.display().to_string(),
        source: e,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    restrict(path).map_err(io)?;
    // SQLite's own files, left by an earlier run with the mode of its day.
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = std::path::Path::new(&side);
        if side.exists() {
            restrict(side).map_err(io)?;
        }
    }
    Ok(())
}

/// Narrows an existing file to its owner: mode 0600.
#[cfg(unix)]
fn restrict(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Nothing to narrow on Windows: stores live in the home, whose access list
/// (its user alone) their files inherit (`burrow_home::private`).
#[cfg(windows)]
fn restrict(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}
