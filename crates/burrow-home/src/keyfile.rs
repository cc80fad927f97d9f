//! The key file in a home directory: the 32-byte Ed25519 seed as hex, mode 0600.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use burrow_proto::SecretKey;

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "key file {0} is not a burrow key (64 hex digits); move it away to make a new identity"
    )]
    Malformed(String),
    /// Others can read the file.
    #[error("key file {0} is readable by other users: {1}")]
    TooOpen(String, &'static str),
}

/// Loads the key at `path`, if there is one (nothing is created).
pub fn load(path: &Path) -> Result<Option<SecretKey>, KeyFileError> {
    let show = || path.display().to_string();
    let io_err = |source| KeyFileError::Io {
        path: show(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let meta = fs::metadata(path).map_err(io_err)?;
            if let Some(what_to_do) = crate::sys::open_to_others(&meta) {
                return Err(KeyFileError::TooOpen(show(), what_to_do));
            }
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .map_err(|_| KeyFileError::Malformed(show()))?;
            Ok(Some(SecretKey::from_bytes(&seed)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// Loads the key at `path`, creating a fresh one (and its directory, mode 0700) if
/// there is none. Returns the key and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(SecretKey, bool), KeyFileError> {
    let show = || path.display().to_string();
    let io_err = |source| KeyFileError::Io {
        path: show(),
        source,
    };
    match load(path)? {
        Some(key) => Ok((key, false)),
        None => {
            if let Some(dir) = path.parent() {
                create_private_dir(dir).map_err(io_err)?;
            }
            let key = SecretKey::generate(&mut rand::rngs::OsRng);
            let mut f = crate::sys::owner_only(fs::OpenOptions::new().write(true).create_new(true))
                .open(path)
                .map_err(io_err)?;
            f.write_all(hex::encode(key.to_bytes()).as_bytes())
                .map_err(io_err)?;
            f.write_all(b"\n").map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
            Ok((key, true))
        }
    }
}

/// Creates `dir` (and parents) readable by its owner only, if it doesn't
/// exist; an existing one must be ours and closed to others (on Unix: it
/// holds the key, the stores and the control socket, whose protection starts
/// with the directory).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory", dir.display()),
        )),
        Ok(meta) => crate::sys::check_private_dir(dir, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => crate::sys::create_private_dir(dir),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_once_then_loads_the_same_key_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/key");
        let (k1, created) = load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.public(), k2.public());
        #[cfg(unix)]
        {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load_or_create(&path),
                Err(KeyFileError::TooOpen(..))
            ));
        }
    }
}
