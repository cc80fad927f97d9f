//! QUIC streams as `std::io` readers and writers, for the blocking threads that
//! encode and verify file data (bao-tree's streaming codec is synchronous).
//!
//! Each read or write waits on the stream through the runtime's handle, with a
//! deadline: a peer that stops sending (or stops granting credit) can't hold a
//! thread forever.

use std::io;
use std::time::Duration;

use tokio::runtime::Handle;

/// How long one read or write may wait for the peer.
pub(crate) const STALL: Duration = Duration::from_secs(20);

/// A receive stream read from a blocking thread.
pub(crate) struct BlockingRecv {
    pub stream: quinn::RecvStream,
    pub rt: Handle,
}

impl io::Read for BlockingRecv {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self
            .rt
            .block_on(async { tokio::time::timeout(STALL, self.stream.read(buf)).await });
        match read {
            Ok(Ok(Some(n))) => Ok(n),
            Ok(Ok(None)) => Ok(0),
            Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer sent nothing for {STALL:?}"),
            )),
        }
    }
}

/// A send stream written from a blocking thread.
pub(crate) struct BlockingSend {
    pub stream: quinn::SendStream,
    pub rt: Handle,
}

impl io::Write for BlockingSend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self
            .rt
            .block_on(async { tokio::time::timeout(STALL, self.stream.write(buf)).await });
        match written {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {STALL:?}"),
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
