//! The files service (ALPN [`ALPN`]): content addressed by BLAKE3, streamed
//! verified.
//!
//! ```text
//! downloader                                   provider
//!  |== bidirectional stream =====================>|
//!  |-- FilesRequest::List ----------------------->|
//!  |<------------ FilesResponse::List{entries} ---|
//!  |== bidirectional stream (one per range) =====>|
//!  |-- FilesRequest::Get{hash, ranges} ---------->|  checks the file is unchanged
//!  |<------------------ FilesResponse::Found{size}|
//!  |<------ raw BAO encoding of `ranges` ---------|  parents and 16 KiB chunk
//!  |                                              |  groups, pre-order
//! ```
//!
//! The request and the response header are [`frame`](crate::frame)s; after
//! `Found`, the stream carries the bao-tree encoding of the requested chunk ranges
//! (hash pairs and data, no framing) and ends. The downloader verifies every
//! chunk group against the hash as it arrives, so a provider that sends one wrong
//! byte is caught at that group.
//!
//! Names travel with files ([`ShareName`]) but never choose a path on their own:
//! [`safe_file_name`] turns any name into one plain file name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// ALPN of peer ↔ peer file connections.
pub const ALPN: &[u8] = b"burrow/files/1";
/// Version byte of files frames.
pub const VERSION: u8 = 1;
/// Largest files frame (a `List` of [`MAX_LIST`] entries fits).
pub const MAX_FRAME: usize = 512 * 1024;
/// Most entries in one `List` answer.
pub const MAX_LIST: usize = 1000;
/// Most chunk ranges in one `Get`.
pub const MAX_RANGES: usize = 1024;
/// Longest share name, in bytes.
pub const MAX_NAME: usize = 255;
/// Largest file burrow shares or downloads: 16 TiB. A size comes from the
/// tracker or a peer before anything proves it, and a download's bitmap and
/// partial file are sized from it: past this it is refused, never allocated.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// Chunk groups are 2^4 BLAKE3 chunks of 1 KiB: each 16 KiB of data costs one
/// 64-byte hash pair in the outboard (0.4 %), and is the unit of verification
/// and of resumption.
pub const CHUNK_GROUP_LOG: u8 = 4;
/// Bytes in a chunk group.
pub const CHUNK_GROUP: u64 = 1024 << CHUNK_GROUP_LOG;

/// A file's BLAKE3 hash: its address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The first 8 hex digits, for people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short())
    }
}

impl std::str::FromStr for BlobHash {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b)?;
        Ok(BlobHash(b))
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(h: blake3::Hash) -> Self {
        BlobHash(*h.as_bytes())
    }
}

impl From<BlobHash> for blake3::Hash {
    fn from(h: BlobHash) -> Self {
        blake3::Hash::from_bytes(h.0)
    }
}

/// What a person calls a shared file: 1 to [`MAX_NAME`] bytes of text without
/// control characters. It may contain anything else (`/`, `..`): it is a label,
/// not a path. [`safe_file_name`] makes a file name of it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShareName(String);

/// Why a share name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareNameError {
    /// Empty, or only spaces.
    #[error("a share name can't be empty")]
    Empty,
    /// Longer than [`MAX_NAME`] bytes.
    #[error("a share name has at most {MAX_NAME} bytes")]
    TooLong,
    /// Holds a control character (newline, tab, escape, ...).
    #[error("a share name can't hold control characters")]
    Control,
}

impl ShareName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ShareName {
    type Error = ShareNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.trim().is_empty() {
            return Err(ShareNameError::Empty);
        }
        if s.len() > MAX_NAME {
            return Err(ShareNameError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(ShareNameError::Control);
        }
        Ok(ShareName(s))
    }
}

impl std::str::FromStr for ShareName {
    type Err = ShareNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ShareName::try_from(s.to_string())
    }
}

impl From<ShareName> for String {
    fn from(n: ShareName) -> String {
        n.0
    }
}

impl fmt::Display for ShareName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ShareName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Device names Windows reserves in any directory, with any extension.
const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7",
    "COM8", "COM9", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Whether `c` is an invisible formatting character: bidirectional overrides
/// and isolates (which can make `gpj.exe` display as `exe.jpg`), zero-width
/// spaces and joiners, and the like (Unicode's `Cf` characters that matter in
/// file names).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

/// Turns any name (from a peer, the tracker or a person) into one plain file
/// name: no separators, no control, invisible or shell-hostile characters, no
/// leading dot (so never `.` or `..`), no trailing dots or spaces (which
/// Windows drops, making two names one), no reserved device name, at most
/// [`MAX_NAME`] bytes, never empty. Characters that can't stay become `_`.
pub fn safe_file_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() || is_invisible(c) => '_',
            c => c,
        })
        .collect();
    out = out
        .trim_start()
        .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        .to_string();
    if out.starts_with('.') {
        out = format!("_{}", out.trim_start_matches('.'));
    }
    let stem = out
        .split('.')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_uppercase();
    if RESERVED.contains(&stem.as_str()) {
        out = format!("_{out}");
    }
    if out.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        // The cut may leave what the trim took off the end.
        out.truncate(
            out.trim_end_matches(|c: char| c == '.' || c.is_whitespace())
                .len(),
        );
    }
    if out.is_empty() || out == "_" {
        out = "download".into();
    }
    out
}

/// One shared file as offered: its hash, name and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The content's hash.
    pub hash: BlobHash,
    /// What the sharer calls it.
    pub name: ShareName,
    /// Its size in bytes.
    pub size: u64,
}

/// A half-open range of 1 KiB BLAKE3 chunks, `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSpan {
    /// First chunk.
    pub start: u64,
    /// One past the last chunk.
    pub end: u64,
}

/// What a downloader asks a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesRequest {
    /// Everything the provider offers (at most [`MAX_LIST`]).
    List,
    /// These chunk ranges of a file, sorted and not overlapping.
    Get {
        /// The file.
        hash: BlobHash,
        /// At most [`MAX_RANGES`] ranges.
        ranges: Vec<ChunkSpan>,
    },
}

/// What a provider answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesResponse {
    /// The provider's shares.
    List {
        /// At most [`MAX_LIST`] entries.
        entries: Vec<FileEntry>,
    },
    /// The file is here and `size` bytes long; its encoded ranges follow.
    Found {
        /// The file's size.
        size: u64,
    },
    /// The provider doesn't offer that hash.
    NotFound,
    /// The provider's file changed on disk since it was hashed: it no longer
    /// offers it.
    Changed,
    /// The request was malformed (unsorted or too many ranges).
    BadRequest,
}

/// Checks that `ranges` is sorted, non-empty per range, not overlapping and
/// bounded ([`MAX_RANGES`]).
pub fn ranges_valid(ranges: &[ChunkSpan]) -> bool {
    ranges.len() <= MAX_RANGES
        && ranges.iter().all(|r| r.start < r.end)
        && ranges.windows(2).all(|w| w[0].end <= w[1].start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode};
    use proptest::prelude::*;

    #[test]
    fn hostile_names_become_plain_file_names() {
        for (name, want) in [
            ("../../etc/passwd", "__.._etc_passwd"),
            ("/etc/passwd", "_etc_passwd"),
            ("..", "download"),
            (".", "download"),
            (".bashrc", "_bashrc"),
            ("a\\b", "a_b"),
            ("C:\\Windows", "C__Windows"),
            ("CON", "_CON"),
            ("nul.txt", "_nul.txt"),
            ("com1.tar.gz", "_com1.tar.gz"),
            ("line\nbreak", "line_break"),
            ("esc\u{1b}[31m", "esc_[31m"),
            ("holiday video", "holiday video"),
            ("holiday.mkv", "holiday.mkv"),
            ("trailing. ", "trailing"),
            ("trailing . . ", "trailing"),
            ("photo\u{202E}gpj.exe", "photo_gpj.exe"),
            ("in\u{200B}visible\u{FEFF}", "in_visible_"),
            ("\u{2066}isolate\u{2069}", "_isolate_"),
            ("", "download"),
            ("/", "download"),
        ] {
            assert_eq!(safe_file_name(name), want, "{name:?}");
        }
        let long = "é".repeat(300);
        let safe = safe_file_name(&long);
        assert!(safe.len() <= MAX_NAME && safe.chars().all(|c| c == 'é'));
        let cut_at_a_space = format!("{} tail", "a".repeat(MAX_NAME - 1));
        assert_eq!(safe_file_name(&cut_at_a_space), "a".repeat(MAX_NAME - 1));
    }

    #[test]
    fn share_names_refuse_control_characters_and_emptiness() {
        assert!("holiday video".parse::<ShareName>().is_ok());
        assert!("../x".parse::<ShareName>().is_ok(), "a label, not a path");
        assert_eq!("".parse::<ShareName>(), Err(ShareNameError::Empty));
        assert_eq!("  ".parse::<ShareName>(), Err(ShareNameError::Empty));
        assert_eq!("a\nb".parse::<ShareName>(), Err(ShareNameError::Control));
        assert_eq!(
            "x".repeat(MAX_NAME + 1).parse::<ShareName>(),
            Err(ShareNameError::TooLong)
        );
    }

    #[test]
    fn range_lists_must_be_sorted_and_disjoint() {
        let s = |start, end| ChunkSpan { start, end };
        assert!(ranges_valid(&[s(0, 16), s(16, 32), s(64, 80)]));
        assert!(!ranges_valid(&[s(16, 32), s(0, 16)]));
        assert!(!ranges_valid(&[s(0, 17), s(16, 32)]));
        assert!(!ranges_valid(&[s(5, 5)]));
        assert!(!ranges_valid(&vec![s(0, 1); MAX_RANGES + 1]));
    }

    fn arb_entry() -> impl Strategy<Value = FileEntry> {
        (any::<[u8; 32]>(), "[^\\p{Cc}]{1,40}", any::<u64>()).prop_filter_map(
            "non-blank names",
            |(h, n, size)| {
                Some(FileEntry {
                    hash: BlobHash(h),
                    name: n.parse().ok()?,
                    size,
                })
            },
        )
    }

    proptest! {
        #[test]
        fn requests_and_responses_round_trip(
            hash in any::<[u8; 32]>(),
            spans in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
            entries in proptest::collection::vec(arb_entry(), 0..8),
            size in any::<u64>(),
        ) {
            let ranges = spans.into_iter().map(|(start, end)| ChunkSpan { start, end }).collect();
            for req in [FilesRequest::List, FilesRequest::Get { hash: BlobHash(hash), ranges }] {
                let f = encode(VERSION, &req, MAX_FRAME).unwrap();
                prop_assert_eq!(decode::<FilesRequest>(VERSION, &f, MAX_FRAME), Ok(req));
            }
            for resp in [
                FilesResponse::List { entries },
                FilesResponse::Found { size },
                FilesResponse::NotFound,
                FilesResponse::Changed,
                FilesResponse::BadRequest,
            ] {
                let f = encode(VERSION, &resp, MAX_FRAME).unwrap();
                prop_assert_eq!(decode::<FilesResponse>(VERSION, &f, MAX_FRAME), Ok(resp));
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<FilesRequest>(VERSION, &bytes, MAX_FRAME);
            let _ = decode::<FilesResponse>(VERSION, &bytes, MAX_FRAME);
            if bytes.len() > 1 {
                let _ = crate::frame::decode_body::<FilesRequest>(VERSION, &bytes);
                let _ = crate::frame::decode_body::<FilesResponse>(VERSION, &bytes);
            }
        }

        #[test]
        fn safe_names_are_always_plain(name in ".{0,300}") {
            let safe = safe_file_name(&name);
            prop_assert!(!safe.is_empty() && safe.len() <= MAX_NAME);
            prop_assert!(!safe.contains('/') && !safe.contains('\\'));
            prop_assert!(!safe.starts_with('.'));
            prop_assert!(!safe.chars().any(|c| c.is_control() || is_invisible(c)));
            prop_assert!(!safe.ends_with(|c: char| c == '.' || c.is_whitespace()));
            prop_assert!(std::path::Path::new(&safe).components().count() == 1);
        }
    }
}
