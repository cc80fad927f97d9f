//! Putting a complete download in place: renamed, hard-linked or copied
//! beside its target, never over a file that exists unless asked, and
//! durable (file and directory synced) before it counts as done.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::plan::Plan;
use crate::error::GetError;

/// Syncs a complete download and moves it to `target` (never over an existing
/// file unless `force`), and its outboard next to the node's others.
///
/// On the same file system the partial file is renamed (`force`) or
/// hard-linked (no replacing: the link fails if the name is taken). Across
/// file systems it is copied into a new file of a random name beside the
/// target (created exclusively, so nothing planted there is followed),
/// synced, and only then renamed into place; a failed copy leaves nothing
/// behind. Either way the directory is synced, so the name survives a power
/// cut as the bytes do.
pub(super) fn place(
    plan: &Plan,
    home: &Path,
    target: &Path,
    force: bool,
) -> Result<PathBuf, GetError> {
    let io = |e: std::io::Error| GetError::File(format!("{}: {e}", target.display()));
    let exists = || GetError::Exists(target.display().to_string());
    plan.sync().map_err(io)?;
    let dir = target.parent().expect("targets are dir/name");
    std::fs::create_dir_all(dir).map_err(io)?;
    let moved = if force {
        std::fs::rename(&plan.data_path, target).is_ok()
    } else {
        match std::fs::hard_link(&plan.data_path, target) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(exists()),
            Err(_) => false,
        }
    };
    if !moved {
        copy_into_place(&plan.data_path, dir, target, force).map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                exists()
            } else {
                io(e)
            }
        })?;
    }
    let _ = std::fs::remove_file(&plan.data_path);
    super::disk::sync_dir(dir).map_err(io)?;
    let outboard = super::outboard_path(home, &plan.hash);
    if let Some(d) = outboard.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    std::fs::rename(&plan.outboard_path, &outboard).map_err(io)?;
    Ok(target.to_path_buf())
}

/// Copies `from` into a new file in `dir` (random name, created exclusively),
/// syncs it, and renames it to `target`: over an existing file with
/// `replace`, else only if the name is free (`AlreadyExists` otherwise). On
/// any failure the new file is removed.
fn copy_into_place(from: &Path, dir: &Path, target: &Path, replace: bool) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".burrow-")
        .suffix(".part")
        .tempfile_in(dir)?;
    let mut source = File::open(from)?;
    // The partial file's mode, as a copy would have it (a new temporary file
    // is private to its owner).
    tmp.as_file()
        .set_permissions(source.metadata()?.permissions())?;
    std::io::copy(&mut source, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    let placed = if replace {
        tmp.persist(target)
    } else {
        tmp.persist_noclobber(target)
    };
    placed.map(drop).map_err(|e| e.error)
}
