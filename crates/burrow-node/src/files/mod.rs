//! The files service (ALPN `burrow/files/1`): sharing files by content hash,
//! serving verified ranges to accepted peers ([`serve`]), and downloading from
//! every online provider at once ([`fetch`], [`get`]).
//!
//! On disk, in the node's home:
//!
//! ```text
//! files/outboard/<hash>.obao        hash pairs of a shared file (0.4 % of its size)
//! files/partial/<hash>.part         a download in progress, written in place
//! files/partial/<hash>.obao.part    its hash pairs, as they arrive
//! ```
//!
//! Shared files are served from where they are; the store remembers each
//! share's path, size and modification time (a file that changed is not served
//! under its old hash) and each download's bitmap of verified chunk groups.
//! The tracker on the server hears of every share and unshare, and gets the
//! whole list again after each registration ([`announce_all`]).

mod disk;
pub(crate) mod fetch;
mod get;
mod place;
pub(crate) mod plan;
mod provide;
mod quic_io;
pub(crate) mod serve;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use burrow_proto::files::{self, BlobHash, FileEntry, FilesRequest, FilesResponse, ShareName};
use burrow_proto::rendezvous::{ClientMsg, Query, TrackerEntry, OFFERS_PER_FRAME};
use burrow_proto::NodeId;
use burrow_store::StoredShare;
use tracing::{debug, info};

use crate::api::{FileView, ProviderView, SearchView, ShareView};
use crate::error::{ListError, ShareError};
use crate::handle::LinkHandle;
use crate::service::{LinkEvent, Service, Serving};

/// Bytes a peer may send ahead on one stream: two pieces, so a piece's request
/// never waits on credit. quinn's default (1.25 MB) would cap one stream at
/// about 0.5 Gbit/s over a 20 ms round trip.
pub(crate) const STREAM_WINDOW: u32 = 4 << 20;
/// Bytes a peer may send ahead on one connection: 16 MiB keeps 3 Gbit/s flowing
/// over a 40 ms round trip (the bandwidth-delay product), and bounds what one
/// peer can make us buffer.
pub(crate) const RECEIVE_WINDOW: u32 = 16 << 20;
/// Bytes we keep in flight on one connection; the same reasoning.
pub(crate) const SEND_WINDOW: u64 = 16 << 20;
/// Pause between two offer frames when sending the whole list, under the
/// server's message rate.
const OFFER_PACING: Duration = Duration::from_millis(100);
/// How long `files <peer>` waits for the list.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The files service: serving `List` and `Get` to linked peers
/// ([`serve`]), sharing, searching the tracker, downloading ([`get`]).
pub(crate) struct Files {
    link: LinkHandle,
    /// Files being downloaded now.
    downloads: Mutex<HashSet<BlobHash>>,
    /// Files connections we serve, per peer (at most
    /// [`serve::MAX_CONNS_PER_PEER`] each).
    serving: Mutex<HashMap<NodeId, usize>>,
}

impl Service for Files {
    fn alpn(&self) -> &'static [u8] {
        files::ALPN
    }

    fn accept(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) -> Serving {
        Box::pin(serve::serve(self, peer, conn))
    }

    fn on_link(self: Arc<Self>, event: &LinkEvent) {
        if *event == LinkEvent::Registered {
            announce_all(&self.link);
        }
    }
}

impl Files {
    pub(crate) fn new(link: LinkHandle) -> Arc<Files> {
        Arc::new(Files {
            link,
            downloads: Mutex::default(),
            serving: Mutex::default(),
        })
    }

    fn downloads(&self) -> MutexGuard<'_, HashSet<BlobHash>> {
        self.downloads
            .lock()
            .expect("downloads lock is never poisoned")
    }

    fn serving(&self) -> MutexGuard<'_, HashMap<NodeId, usize>> {
        self.serving.lock().expect("serving lock is never poisoned")
    }
}

/// The tree shape of a file of `size` bytes in 16 KiB chunk groups.
pub(crate) fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BlockSize::from_chunk_log(files::CHUNK_GROUP_LOG))
}

/// bao-tree's range set of the chunk ranges `ranges` (half-open chunk numbers).
pub(crate) fn chunk_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> ChunkRanges {
    let mut set = ChunkRanges::empty();
    for r in ranges {
        set |= ChunkRanges::from(ChunkNum(r.start)..ChunkNum(r.end));
    }
    set
}

pub(crate) fn outboard_dir(home: &Path) -> PathBuf {
    home.join("files").join("outboard")
}

pub(crate) fn partial_dir(home: &Path) -> PathBuf {
    home.join("files").join("partial")
}

pub(crate) fn outboard_path(home: &Path, hash: &BlobHash) -> PathBuf {
    outboard_dir(home).join(format!("{hash}.obao"))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Whether a share's file is still what was hashed: same size, same mtime.
pub(crate) fn unchanged(share: &StoredShare) -> bool {
    std::fs::metadata(&share.path)
        .is_ok_and(|m| m.is_file() && m.len() == share.size && mtime_ns(&m) == share.mtime_ns)
}

/// A hashed file.
struct Hashed {
    hash: BlobHash,
    size: u64,
    mtime_ns: i64,
}

/// Hashes the file at `path` and writes its outboard into `home`'s outboard
/// directory. Reads the file once, at BLAKE3's speed.
fn hash_file(home: &Path, path: &Path) -> Result<Hashed, ShareError> {
    let io = |e: std::io::Error| ShareError::File(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ShareError::File(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > files::MAX_FILE_SIZE {
        return Err(ShareError::File(format!(
            "{} is larger than the 16 TiB burrow shares",
            path.display()
        )));
    }
    let dir = outboard_dir(home);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    let mut outboard = PreOrderOutboard {
        root: blake3::Hash::from_bytes([0; 32]),
        tree: tree(meta.len()),
        data: tmp.reopen().map_err(io)?,
    };
    let reader = BufReader::with_capacity(1 << 20, file);
    let root = bao_tree::io::sync::outboard(reader, outboard.tree, &mut outboard).map_err(io)?;
    outboard.data.sync_all().map_err(io)?;
    let after = std::fs::metadata(path).map_err(io)?;
    if after.len() != meta.len() || mtime_ns(&after) != mtime_ns(&meta) {
        return Err(ShareError::File(format!(
            "{} changed while it was being hashed",
            path.display()
        )));
    }
    let hash = BlobHash::from(root);
    tmp.persist(outboard_path(home, &hash))
        .map_err(|e| io(e.error))?;
    Ok(Hashed {
        hash,
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
    })
}

fn share_view(s: &StoredShare) -> ShareView {
    ShareView {
        hash: s.hash.to_string(),
        name: s.name.to_string(),
        size: s.size,
        path: s.path.display().to_string(),
        downloaded: s.downloaded,
    }
}

/// Tells the tracker we offer `files` (if we are registered; otherwise the next
/// registration sends the whole list).
pub(crate) fn offer(link: &LinkHandle, files: Vec<FileEntry>) {
    for chunk in files.chunks(OFFERS_PER_FRAME) {
        link.tell_server(ClientMsg::Offer {
            replace: false,
            files: chunk.to_vec(),
        });
    }
}

/// Tells the tracker we no longer offer `hash`.
pub(crate) fn unoffer(link: &LinkHandle, hash: BlobHash) {
    link.tell_server(ClientMsg::Unoffer { hash });
}

/// Sends the tracker our whole list, replacing what it had from us (after each
/// registration), paced under the server's message rate. Shares whose files
/// changed while the node was away are withdrawn instead.
fn announce_all(link: &LinkHandle) {
    let link2 = link.clone();
    link.spawn(async move {
        let Ok(shares) = link2.with_store(|s| s.shares()).await else {
            return;
        };
        let mut entries = Vec::new();
        for share in shares {
            if unchanged(&share) {
                entries.push(FileEntry {
                    hash: share.hash,
                    name: share.name,
                    size: share.size,
                });
            } else {
                serve::withdraw(&link2, &share).await;
            }
        }
        let Some(tx) = link2.server() else {
            return;
        };
        debug!(files = entries.len(), "announcing shares to the tracker");
        let mut frames = entries.chunks(OFFERS_PER_FRAME).map(|c| c.to_vec());
        let first = frames.next().unwrap_or_default();
        if tx
            .send(ClientMsg::Offer {
                replace: true,
                files: first,
            })
            .await
            .is_err()
        {
            return;
        }
        for files in frames {
            tokio::time::sleep(OFFER_PACING).await;
            if tx
                .send(ClientMsg::Offer {
                    replace: false,
                    files,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

impl Files {
    /// Offers the file at `path` (absolute) as `name` (default: its file name):
    /// hashes it, keeps its outboard, tells the tracker.
    pub async fn share(&self, path: &str, name: Option<&str>) -> Result<ShareView, ShareError> {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(ShareError::File(format!(
                "{} is not an absolute path",
                path.display()
            )));
        }
        let name: ShareName = match name {
            Some(n) => n.parse(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
                .parse(),
        }
        .map_err(ShareError::BadName)?;
        let home = self.link.home().to_path_buf();
        let p = path.clone();
        let hashed = tokio::task::spawn_blocking(move || hash_file(&home, &p))
            .await
            .map_err(|e| ShareError::File(e.to_string()))??;
        let share = StoredShare {
            hash: hashed.hash,
            name,
            path,
            size: hashed.size,
            mtime_ns: hashed.mtime_ns,
            downloaded: false,
            added_at_ms: burrow_proto::time::unix_ms(SystemTime::now()),
        };
        let stored = share.clone();
        self.link.with_store(move |s| s.put_share(&stored)).await?;
        offer(
            &self.link,
            vec![FileEntry {
                hash: share.hash,
                name: share.name.clone(),
                size: share.size,
            }],
        );
        // The server handles our messages in order: once it answers this lookup
        // the offer is in the tracker, and others can find it when we return.
        let _ = self.link.tracker(Query::Hash(share.hash)).await;
        info!(hash = %share.hash.short(), name = %share.name, size = share.size, "sharing");
        Ok(share_view(&share))
    }

    /// What this node offers.
    pub async fn shares(&self) -> Result<Vec<ShareView>, ShareError> {
        let shares = self.link.with_store(|s| s.shares()).await?;
        Ok(shares.iter().map(share_view).collect())
    }

    /// Stops offering `file` (its hash, a unique hash prefix, or its name).
    pub async fn unshare(&self, file: &str) -> Result<ShareView, ShareError> {
        let shares = self.link.with_store(|s| s.shares()).await?;
        let wanted = file.trim();
        let matches: Vec<&StoredShare> = shares
            .iter()
            .filter(|s| s.name.as_str() == wanted)
            .collect();
        let matches = if matches.is_empty() && wanted.len() >= 8 {
            let prefix = wanted.to_ascii_lowercase();
            shares
                .iter()
                .filter(|s| s.hash.to_string().starts_with(&prefix))
                .collect()
        } else {
            matches
        };
        let share = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(ShareError::NoSuchShare(wanted.to_string())),
            many => {
                return Err(ShareError::AmbiguousFile(
                    wanted.to_string(),
                    many.iter()
                        .map(|s| s.hash.short())
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        };
        let hash = share.hash;
        self.link.with_store(move |s| s.remove_share(&hash)).await?;
        unoffer(&self.link, hash);
        let home = self.link.home().to_path_buf();
        let _ = std::fs::remove_file(outboard_path(&home, &hash));
        Ok(share_view(&share))
    }

    /// Asks the tracker for files whose name contains `query`.
    pub async fn search(&self, query: &str) -> Result<Vec<SearchView>, ShareError> {
        if query.len() > files::MAX_NAME {
            return Err(ShareError::BadName(files::ShareNameError::TooLong));
        }
        let found = self.link.tracker(Query::Name(query.to_string())).await?;
        Ok(found.iter().map(search_view).collect())
    }

    /// Asks `peer` (connected) what it offers.
    pub async fn files(&self, peer: &str) -> Result<Vec<FileView>, ListError> {
        let id = self.link.resolve(peer).await?;
        let name = self.link.shown_name(&id);
        if !self.link.linked(&id) {
            return Err(ListError::NotConnected(name));
        }
        let fail = |e: &dyn std::fmt::Display| ListError::Failed {
            name: name.clone(),
            reason: e.to_string(),
        };
        let conn = provide::dial_files(&self.link, id)
            .await
            .map_err(|e| fail(&e))?;
        let list = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| fail(&e))?;
            let mut w = burrow_net::FrameWriter::new(send, files::VERSION, files::MAX_FRAME);
            let mut r = burrow_net::FrameReader::new(recv, files::VERSION, files::MAX_FRAME);
            w.write(&FilesRequest::List).await.map_err(|e| fail(&e))?;
            w.finish();
            match r.read::<FilesResponse>().await.map_err(|e| fail(&e))? {
                Some(FilesResponse::List { entries }) => Ok(entries),
                other => Err(fail(&format!("unexpected answer {other:?}"))),
            }
        };
        let entries = tokio::time::timeout(LIST_TIMEOUT, list)
            .await
            .map_err(|_| fail(&"no answer"))?;
        conn.close(burrow_net::Close::Done.code(), b"done");
        Ok(entries?
            .into_iter()
            .map(|e| FileView {
                hash: e.hash.to_string(),
                name: e.name.to_string(),
                size: e.size,
            })
            .collect())
    }
}

fn search_view(e: &TrackerEntry) -> SearchView {
    SearchView {
        hash: e.file.hash.to_string(),
        name: e.file.name.to_string(),
        size: e.file.size,
        providers: e
            .providers
            .iter()
            .map(|p| ProviderView {
                id: p.peer.id.to_string(),
                name: p.peer.name.to_string(),
                file_name: p.name.to_string(),
            })
            .collect(),
        offline_providers: e.offline,
    }
}
