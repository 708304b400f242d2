//! The runner's own signals, turned into two levels of shutdown that the code owning each server obeys.
//!
//! - The first SIGINT (Ctrl-C), SIGTERM or SIGHUP (the SSH session that started the run dropped) asks for a
//!   graceful stop: [`Shutdown::stopping`] fires; load points end, every server is torn down (TERM, grace,
//!   KILL), finished cells are kept, the run exits 130.
//! - Any later one asks to kill at once: [`Shutdown::killing`] fires, and every loop that owns a server
//!   process group SIGKILLs it immediately, in whatever phase it is (starting, waiting for readiness, under
//!   load, or already in a teardown's grace period). See `unit::guard`.
//!
//! Both are level-triggered tokens, not events that can be missed: a phase that starts after the signal
//! arrived sees it at once. The model is nextest's: signals become data consumed by the loop that owns
//! the child, never a handler that reaches into shared state from the side.
//!
//! After SIGHUP the terminal is usually gone: everything the runner prints goes through
//! [`crate::progress::say`], which never fails, so a vanished terminal cannot abort the teardown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Which signal started the shutdown (for the closing line and the records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Interrupt,
    Terminate,
    Hangup,
}

impl Received {
    pub fn name(self) -> &'static str {
        match self {
            Received::Interrupt => "SIGINT",
            Received::Terminate => "SIGTERM",
            Received::Hangup => "SIGHUP",
        }
    }
}

/// The two shutdown levels of one run. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stopping: CancellationToken,
    killing: CancellationToken,
    /// The first signal received: 0 none, else `Received as u8 + 1`.
    first: Arc<AtomicU8>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Fires on the first signal: stop gracefully.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Fires on the second signal: kill every server group at once.
    pub fn killing(&self) -> &CancellationToken {
        &self.killing
    }

    /// The signal that started the shutdown, if any.
    pub fn received(&self) -> Option<Received> {
        match self.first.load(Ordering::SeqCst) {
            1 => Some(Received::Interrupt),
            2 => Some(Received::Terminate),
            3 => Some(Received::Hangup),
            _ => None,
        }
    }

    /// Records one signal and moves to the next level (what the listener does; tests call it directly).
    pub fn on_signal(&self, which: Received) {
        if self.stopping.is_cancelled() {
            crate::progress::say(format!(
                "\n{}: killing every server's process group now",
                which.name()
            ));
            self.killing.cancel();
        } else {
            let _ =
                self.first
                    .compare_exchange(0, which as u8 + 1, Ordering::SeqCst, Ordering::SeqCst);
            crate::progress::say(format!(
                "\n{}: stopping the load and tearing the server down gracefully; \
                 send it again (Ctrl-C) to kill the server at once",
                which.name()
            ));
            self.stopping.cancel();
        }
    }

    /// Starts listening for SIGINT, SIGTERM and SIGHUP on the current runtime. The task ends with the
    /// runtime. Fails only if a handler cannot be installed.
    pub fn listen(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                let which = tokio::select! {
                    _ = int.recv() => Received::Interrupt,
                    _ = term.recv() => Received::Terminate,
                    _ = hup.recv() => Received::Hangup,
                };
                me.on_signal(which);
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_stops_second_kills_and_the_first_is_remembered() {
        let s = Shutdown::new();
        assert_eq!(s.received(), None);
        s.on_signal(Received::Hangup);
        assert!(s.stopping().is_cancelled() && !s.killing().is_cancelled());
        s.on_signal(Received::Interrupt);
        assert!(s.killing().is_cancelled());
        assert_eq!(s.received(), Some(Received::Hangup));
        let clone = s.clone();
        assert!(clone.killing().is_cancelled(), "clones share the state");
    }
}
