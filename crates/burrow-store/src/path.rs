//! File paths in a store: as UTF-8 text where they are text (nearly always,
//! and readable with `sqlite3`), and where they are not, as a blob in the
//! platform's own lossless form: the bytes on Unix, UTF-16 code units (little
//! endian) on Windows, whose paths may hold unpaired surrogates. Rows written
//! before paths were text hold Unix bytes as a blob, which read the same.
//! This module is the store's only platform code for paths.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;

use crate::StoreError;

/// The stored form of `path`.
pub(crate) fn to_sql(path: &Path) -> Value {
    match path.to_str() {
        Some(text) => Value::Text(text.to_owned()),
        None => Value::Blob(raw(path.as_os_str())),
    }
}

/// The path a stored value holds (`table` names where it came from, for the
/// error).
pub(crate) fn from_sql(table: &'static str, value: Value) -> Result<PathBuf, StoreError> {
    match value {
        Value::Text(text) => Ok(PathBuf::from(text)),
        Value::Blob(bytes) => from_raw(bytes)
            .map(PathBuf::from)
            .ok_or(StoreError::Corrupt {
                table,
                what: "a path blob of odd length".into(),
            }),
        other => Err(StoreError::Corrupt {
            table,
            what: format!("a path stored as {:?}", other.data_type()),
        }),
    }
}

#[cfg(unix)]
fn raw(os: &std::ffi::OsStr) -> Vec<u8> {
    std::os::unix::ffi::OsStrExt::as_bytes(os).to_vec()
}

#[cfg(unix)]
fn from_raw(bytes: Vec<u8>) -> Option<OsString> {
    Some(std::os::unix::ffi::OsStringExt::from_vec(bytes))
}

#[cfg(windows)]
fn raw(os: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::windows::ffi::OsStrExt;
    os.encode_wide().flat_map(u16::to_le_bytes).collect()
}

#[cfg(windows)]
fn from_raw(bytes: Vec<u8>) -> Option<OsString> {
    use std::os::windows::ffi::OsStringExt;
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let wide: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    Some(OsString::from_wide(&wide))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_paths_are_stored_as_text_and_read_back() {
        let path = Path::new("/home/ana/Vidéos/été 2026.mkv");
        let stored = to_sql(path);
        assert!(matches!(&stored, Value::Text(t) if t == "/home/ana/Vidéos/été 2026.mkv"));
        assert_eq!(from_sql("shares", stored).unwrap(), path);
    }

    #[test]
    #[cfg(unix)]
    fn a_path_that_is_not_utf8_keeps_its_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/srv/caf\xe9.txt"));
        let stored = to_sql(path);
        assert!(matches!(&stored, Value::Blob(b) if b == b"/srv/caf\xe9.txt"));
        assert_eq!(from_sql("shares", stored).unwrap(), path);
    }

    #[test]
    #[cfg(windows)]
    fn a_path_with_an_unpaired_surrogate_keeps_it() {
        use std::os::windows::ffi::OsStringExt;
        let wide = [b'C' as u16, b':' as u16, b'\\' as u16, 0xd800, b'x' as u16];
        let path = PathBuf::from(OsString::from_wide(&wide));
        let stored = to_sql(&path);
        assert!(matches!(&stored, Value::Blob(_)));
        assert_eq!(from_sql("shares", stored).unwrap(), path);
    }

    #[test]
    fn a_path_stored_as_a_number_is_corrupt() {
        assert!(matches!(
            from_sql("shares", Value::Integer(7)),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
