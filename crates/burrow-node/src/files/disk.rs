//! How a download's bytes meet the disk, per platform: the only platform
//! code in the file service.
//!
//! - Past the page cache: `O_DIRECT` on Linux; `F_NOCACHE` on macOS (the
//!   cache is not filled, though writes still pass through it);
//!   `FILE_FLAG_NO_BUFFERING` on Windows, whose writes must be sector
//!   aligned, as the runs that go this way are ([`super::plan::DIRECT_ALIGN`]).
//!   A system that refuses leaves the download to the page cache.
//! - Blocks reserved up front: `fallocate` on Linux, `F_PREALLOCATE` on macOS,
//!   and on Windows the file's length itself, which NTFS allocates when it is
//!   set. A disk too small says `StorageFull` on all three, with the same
//!   words ([`preallocate`]).
//! - A directory's entries made durable after a rename ([`sync_dir`]): an
//!   `fsync` of the directory on Unix; on Windows, which has no such call
//!   for a directory, NTFS's journal keeps the rename.
//! - Reads and writes at an offset: `pread`/`pwrite`, or `seek_read` and
//!   `seek_write` on Windows (which move the file's cursor, used by nothing
//!   else here).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Opens `path` for writing past the page cache, where the system and file
/// system allow it.
pub(super) fn open_uncached(path: &Path) -> Option<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        /// `FILE_FLAG_NO_BUFFERING`.
        const NO_BUFFERING: u32 = 0x2000_0000;
        options.custom_flags(NO_BUFFERING);
    }
    let file = options.open(path).ok()?;
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own, with an int argument.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) } != 0 {
            return None;
        }
    }
    Some(file)
}

/// Whether a failed uncached write means the file system won't take them
/// at all (rather than this one write failing).
pub(super) fn refused(e: &io::Error) -> bool {
    #[cfg(unix)]
    return matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP));
    // ERROR_INVALID_PARAMETER, ERROR_NOT_SUPPORTED.
    #[cfg(windows)]
    return matches!(e.raw_os_error(), Some(87 | 50));
}

/// Writes all of `bytes` at `offset`.
#[cfg(unix)]
pub(super) fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Writes all of `bytes` at `offset`.
#[cfg(windows)]
pub(super) fn write_all_at(file: &File, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        match file.seek_write(bytes, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads at `offset` into `buf`'s spare capacity (nothing zeroed first where
/// the system allows), adding what it read to its length: 0 at the end of
/// the file.
pub(super) fn read_at_into(file: &File, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    loop {
        let before = buf.len();
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut *buf), offset) {
            Ok(_) => return Ok(buf.len() - before),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let before = buf.len();
        buf.resize(buf.capacity(), 0);
        let read = file.seek_read(&mut buf[before..], offset);
        buf.truncate(before + *read.as_ref().unwrap_or(&0));
        read
    }
}

/// Reserves `size` bytes of blocks for `file` (already that long): a disk
/// too full for it says so at once (`StorageFull`, naming `dir`), and the
/// writes that follow don't allocate one block at a time. A file system
/// that can't reserve allocates as it is written.
pub(super) fn preallocate(file: &File, size: u64, dir: &Path) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    reserve(file, size).map_err(|e| no_space(e, dir, size))
}

/// `e`, or where it says the disk is full, the same words on every system.
pub(super) fn no_space(e: io::Error, dir: &Path, size: u64) -> io::Error {
    if e.kind() != io::ErrorKind::StorageFull {
        return e;
    }
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!(
            "not enough free space in {} for {size} bytes",
            dir.display()
        ),
    )
}

#[cfg(target_os = "linux")]
fn reserve(file: &File, size: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, size) {
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(()),
        other => other.map_err(Into::into),
    }
}

/// `F_PREALLOCATE` adds blocks past those the file has (its physical end):
/// only what is missing is asked for, so a resumed download, whose file has
/// its blocks already, doesn't ask for its size again.
#[cfg(target_os = "macos")]
fn reserve(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let has = file.metadata()?.blocks().saturating_mul(512);
    let missing = size.saturating_sub(has);
    if missing == 0 {
        return Ok(());
    }
    let mut store = libc::fstore_t {
        fst_flags: libc::F_ALLOCATEALL,
        fst_posmode: libc::F_PEOFPOSMODE,
        fst_offset: 0,
        fst_length: missing as libc::off_t,
        fst_bytesalloc: 0,
    };
    // SAFETY: fcntl on a descriptor we own, with a live fstore_t.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_PREALLOCATE, &mut store) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTSUP | libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Other Unix systems: nothing reserved; blocks come as they are written.
#[cfg(all(unix, not(any(target_os = "linux", target_os = "macos"))))]
fn reserve(_file: &File, _size: u64) -> io::Result<()> {
    Ok(())
}

/// NTFS gave the file its clusters when its length was set (a full disk
/// failed that, as `StorageFull`, which [`no_space`] words): nothing left
/// to reserve.
#[cfg(windows)]
fn reserve(_file: &File, _size: u64) -> io::Result<()> {
    Ok(())
}

/// Makes a directory's entries durable (a rename or link in it).
#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows opens no directory for syncing: NTFS's journal keeps the rename.
#[cfg(windows)]
pub(super) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
