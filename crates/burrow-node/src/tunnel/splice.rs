//! Carrying a byte stream (a TCP connection, `burrow pipe`'s socket) over a
//! QUIC stream, both ways: each direction ends on its own (a half-close is a
//! FIN), an error on either side resets both, and QUIC's flow control is the
//! backpressure (a slow reader holds the writer's credit, nothing queues
//! here beyond one buffer).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use burrow_proto::tunnel::RESET;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Most bytes read from the local side at once, handed to quinn as they are
/// (no copy into its send buffer). A connection starts at [`FIRST_BUF`] and
/// doubles each time a read fills what it has: an idle one holds little.
const BUF: usize = 256 * 1024;
/// What a connection reads into at first.
const FIRST_BUF: usize = 16 * 1024;
/// Chunks taken from the QUIC side at once (each one STREAM frame, about a
/// packet), written to the local side in one vectored write: at a chunk a
/// write, a tunnel ran at a third of a bare QUIC stream's speed.
const CHUNKS: usize = 64;

/// How a spliced connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both directions finished cleanly.
    Clean,
    /// Something failed or was reset: the caller resets its local side too.
    Reset(Cause),
}

/// What reset a spliced connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The local program, or our socket to it.
    Local(String),
    /// The peer: a refusal, a reset, the connection lost.
    Peer(String),
    /// We ended it (the forward or the exposure went, the node stops).
    Here,
}

/// Bytes carried each way.
#[derive(Debug, Default)]
pub(crate) struct Bytes {
    /// From the local side to the peer.
    pub(crate) out: AtomicU64,
    /// From the peer to the local side.
    pub(crate) back: AtomicU64,
}

/// Splices the local `rd`/`wr` with the QUIC stream `send`/`recv`. `recv`
/// is a future: the forwarding side sends the local side's first bytes while
/// it waits for the exposing side's answer (no round trip lost), and an
/// `Err` from it (a refusal, in words) resets everything, as `cancel` does.
pub(crate) async fn splice<R, W>(
    rd: &mut R,
    wr: &mut W,
    mut send: quinn::SendStream,
    recv: impl Future<Output = Result<quinn::RecvStream, String>>,
    bytes: &Bytes,
    cancel: &CancellationToken,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ended = {
        let out = out(rd, &mut send, bytes);
        let back = async {
            let recv = recv.await.map_err(Cause::Peer)?;
            back(recv, wr, bytes).await
        };
        tokio::pin!(out, back);
        let (mut out_done, mut back_done) = (false, false);
        loop {
            if out_done && back_done {
                break Ended::Clean;
            }
            let r = tokio::select! {
                r = &mut out, if !out_done => { out_done = true; r }
                r = &mut back, if !back_done => { back_done = true; r }
                _ = cancel.cancelled() => Err(Cause::Here),
            };
            if let Err(why) = r {
                break Ended::Reset(why);
            }
        }
    };
    if matches!(ended, Ended::Reset(_)) {
        // Not a FIN: the far end's program sees the reset too.
        let _ = send.reset(RESET.into());
    }
    ended
}

/// The local side's bytes to the peer, until the local side finishes
/// (a FIN) or fails (a reset).
async fn out<R: AsyncRead + Unpin>(
    rd: &mut R,
    send: &mut quinn::SendStream,
    bytes: &Bytes,
) -> Result<(), Cause> {
    let (mut buf, mut want) = (BytesMut::new(), FIRST_BUF);
    loop {
        if buf.capacity() < want / 4 {
            buf.reserve(want);
        }
        let room = buf.capacity() - buf.len();
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = send.finish();
                return Ok(());
            }
            Ok(n) => {
                if n == room {
                    want = (want * 2).min(BUF);
                }
                send.write_chunk(buf.split().freeze())
                    .await
                    .map_err(|e| Cause::Peer(e.to_string()))?;
                bytes.out.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = send.reset(RESET.into());
                return Err(Cause::Local(e.to_string()));
            }
        }
    }
}

/// The peer's bytes to the local side, until the peer finishes (then the
/// local side's write half is shut) or fails.
async fn back<W: AsyncWrite + Unpin>(
    mut recv: quinn::RecvStream,
    wr: &mut W,
    bytes: &Bytes,
) -> Result<(), Cause> {
    let mut chunks = vec![bytes::Bytes::new(); CHUNKS];
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(n)) => {
                let len = write_chunks(wr, &mut chunks[..n])
                    .await
                    .map_err(|e| Cause::Local(e.to_string()))?;
                bytes.back.fetch_add(len as u64, Ordering::Relaxed);
            }
            Ok(None) => {
                let _ = wr.shutdown().await;
                return Ok(());
            }
            Err(e) => {
                let _ = recv.stop(RESET.into());
                return Err(Cause::Peer(e.to_string()));
            }
        }
    }
}

/// Writes every byte of `chunks` to `wr`, as few writes as it takes;
/// returns how many.
async fn write_chunks<W: AsyncWrite + Unpin>(
    wr: &mut W,
    chunks: &mut [bytes::Bytes],
) -> std::io::Result<usize> {
    let total = chunks.iter().map(|c| c.len()).sum();
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < chunks.len() {
            let c = &mut chunks[first];
            let took = n.min(c.len());
            c.advance(took);
            n -= took;
            if c.is_empty() {
                first += 1;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(total)
}

/// Resets a TCP connection (RST rather than FIN) as it is dropped. A zero
/// linger never blocks the close.
pub(crate) fn reset(tcp: &tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}

/// Resets a TCP connection split in two halves: rejoined first, since a
/// dropped write half would send its FIN ahead of the RST.
pub(crate) fn reset_halves(
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
) {
    if let Ok(tcp) = rd.reunite(wr) {
        reset(&tcp);
    }
}
