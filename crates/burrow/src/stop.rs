//! Ctrl-C and SIGTERM, caught once per command.
//!
//! A command that runs until it is told to stop (`up`, `server`, `messages
//! --follow`, `get`, `admin log --follow`) installs a [`StopSignal`] when it
//! starts and waits on it for the rest of its life. The handler has to outlive
//! each wait: once tokio catches a signal it never restores the default action,
//! so a signal that arrives while no listener exists (say, between two turns of
//! an event loop that made a new listener each turn) is caught and then dropped,
//! and the process keeps running. A stream made once keeps a signal that comes
//! while nobody is polling it, and [`StopSignal::wait`] is cancel-safe, so it
//! can sit in a `select!` beside other work.

use std::io;

/// The process's stop signals, listened for from [`StopSignal::install`] on.
pub struct StopSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    /// The console window closed, or Windows shutting down: a few seconds
    /// to say goodbye.
    #[cfg(windows)]
    ctrl_close: tokio::signal::windows::CtrlClose,
    #[cfg(windows)]
    ctrl_shutdown: tokio::signal::windows::CtrlShutdown,
}

impl StopSignal {
    /// Starts catching SIGINT and SIGTERM (on Windows Ctrl-C, Ctrl-Break, the
    /// console closing and the system shutting down).
    /// From here on those signals no longer end the process by themselves:
    /// the command must wait on [`StopSignal::wait`].
    pub fn install() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};
            Ok(StopSignal {
                ctrl_c: ctrl_c()?,
                ctrl_break: ctrl_break()?,
                ctrl_close: ctrl_close()?,
                ctrl_shutdown: ctrl_shutdown()?,
            })
        }
    }

    /// Waits for a stop signal, or returns at once if one came since the last
    /// wait. Cancel-safe: dropping the future loses no signal.
    pub async fn wait(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(windows)]
        tokio::select! {
            _ = self.ctrl_c.recv() => {}
            _ = self.ctrl_break.recv() => {}
            _ = self.ctrl_close.recv() => {}
            _ = self.ctrl_shutdown.recv() => {}
        }
    }
}
