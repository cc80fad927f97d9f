//! The provider side: answering `List` and `Get` on the files connections of
//! peers we accepted.
//!
//! A file is served from where it was shared, with the outboard computed when it
//! was hashed. Before each `Get` the file's size and modification time are
//! compared with what was hashed: a file that changed is not served under the
//! old hash (the share is withdrawn and the tracker told). A change that keeps
//! both (rare, and deliberate) still can't fool anyone: every downloader checks
//! every chunk group against the hash.

use std::sync::Arc;

use bao_tree::io::outboard::PreOrderOutboard;
use burrow_net::{FrameReader, FrameWriter};
use burrow_proto::files::{self, ChunkSpan, FileEntry, FilesRequest, FilesResponse};
use burrow_proto::NodeId;
use burrow_store::StoredShare;
use iroh_io::AsyncStreamWriter;
use tracing::{debug, info, warn};

use super::quic_io::{FileSlice, StreamWriter};
use super::Files;
use crate::event::NodeEvent;
use crate::handle::LinkHandle;

/// Files connections one peer may have open to us at once: a `get` opens one
/// (and one more, briefly, to prove the file's size), so this allows a few
/// downloads at once and bounds what a peer can make us hold (each
/// connection takes up to 32 streams).
pub(crate) const MAX_CONNS_PER_PEER: usize = 8;

/// Serves `peer`'s requests on `conn` until it closes. Each stream is one
/// request. A peer past [`MAX_CONNS_PER_PEER`] is refused.
pub(crate) async fn serve(files: Arc<Files>, peer: NodeId, conn: quinn::Connection) {
    {
        let mut serving = files.serving();
        let open = serving.entry(peer).or_default();
        if *open >= MAX_CONNS_PER_PEER {
            warn!(peer = %peer.short(), "too many files connections from one peer; refused");
            conn.close(
                burrow_net::Close::TooManyConnections.code(),
                b"too many files connections",
            );
            return;
        }
        *open += 1;
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let link = files.link.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            if let Err(e) = answer(&link, send, recv).await {
                debug!(peer = %peer.short(), error = %e, "files request ended");
            }
        }));
    }
    let mut serving = files.serving();
    if let Some(open) = serving.get_mut(&peer) {
        *open -= 1;
        if *open == 0 {
            serving.remove(&peer);
        }
    }
}

async fn answer(
    link: &LinkHandle,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), std::io::Error> {
    let mut reader = FrameReader::new(recv, files::VERSION, files::MAX_FRAME);
    let mut writer = FrameWriter::new(send, files::VERSION, files::MAX_FRAME);
    let request = tokio::time::timeout(super::quic_io::STALL, reader.read::<FilesRequest>())
        .await
        .map_err(|_| std::io::Error::other("no request"))?
        .map_err(std::io::Error::other)?;
    let response = match request {
        None => return Ok(()),
        Some(FilesRequest::List) => {
            let shares = link
                .with_store(|s| s.shares())
                .await
                .map_err(std::io::Error::other)?;
            let entries = shares
                .into_iter()
                .take(files::MAX_LIST)
                .map(|s| FileEntry {
                    hash: s.hash,
                    name: s.name,
                    size: s.size,
                })
                .collect();
            FilesResponse::List { entries }
        }
        Some(FilesRequest::Get { hash, ranges }) => {
            if !files::ranges_valid(&ranges) {
                FilesResponse::BadRequest
            } else {
                let share = link
                    .with_store(move |s| s.share(&hash))
                    .await
                    .map_err(std::io::Error::other)?;
                match share {
                    None => FilesResponse::NotFound,
                    Some(share) if !super::unchanged(&share) => {
                        if withdraw(link, &share).await {
                            FilesResponse::NotFound
                        } else {
                            FilesResponse::Changed
                        }
                    }
                    Some(share) => {
                        writer
                            .write(&FilesResponse::Found { size: share.size })
                            .await
                            .map_err(std::io::Error::other)?;
                        let send = writer.into_inner();
                        return stream_ranges(link, share, ranges, send).await;
                    }
                }
            }
        }
    };
    writer
        .write(&response)
        .await
        .map_err(std::io::Error::other)?;
    writer.finish();
    Ok(())
}

/// Sends the bao encoding of `ranges` of `share` on `send`.
async fn stream_ranges(
    link: &LinkHandle,
    share: StoredShare,
    ranges: Vec<ChunkSpan>,
    send: quinn::SendStream,
) -> Result<(), std::io::Error> {
    let outboard_path = super::outboard_path(link.home(), &share.hash);
    let data = FileSlice::open(&share.path, super::quic_io::READ_AHEAD)?;
    let outboard = PreOrderOutboard {
        root: share.hash.into(),
        tree: super::tree(share.size),
        data: FileSlice::open(&outboard_path, super::quic_io::OUTBOARD_READ_AHEAD)?,
    };
    let wanted = super::chunk_ranges(ranges.iter().map(|r| r.start..r.end));
    let mut out = StreamWriter::new(send);
    bao_tree::io::fsm::encode_ranges(data, outboard, &wanted, &mut out)
        .await
        .map_err(std::io::Error::other)?;
    out.sync().await?;
    let _ = out.stream.finish();
    Ok(())
}

/// Stops offering a share whose file changed or vanished, and says so.
/// Returns true if the file is gone.
pub(crate) async fn withdraw(link: &LinkHandle, share: &StoredShare) -> bool {
    let hash = share.hash;
    if let Err(e) = link.with_store(move |s| s.remove_share(&hash)).await {
        warn!(error = %e, "could not forget a changed share");
    }
    super::unoffer(link, hash);
    let gone = !share.path.exists();
    let reason = if gone {
        "the file is gone"
    } else {
        "the file changed on disk since it was shared (share it again to offer the new content)"
    };
    info!(hash = %hash.short(), path = %share.path.display(), reason, "no longer offered");
    link.emit(NodeEvent::ShareWithdrawn {
        name: share.name.to_string(),
        path: share.path.display().to_string(),
        reason: reason.into(),
    });
    gone
}
