//! Request bodies built ahead of the scheduler, in a bounded window.
//!
//! Building a body (prompt draws + JSON) costs tens of microseconds per thousand tokens. In closed loop
//! whole waves of streams resend at the same instant, and building their bodies then would delay every
//! send of the wave; building all of a point's bodies up front holds them all in memory (a soak point of
//! 100,000 requests would need gigabytes). So a thread builds them in issue order into a queue of at
//! most [`Bodies::capacity`] bodies, and the scheduler takes them in that order.
//!
//! Invariants: bodies come out in index order, each exactly once; the window never holds more than
//! its capacity; dropping the window stops the thread.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// One request's body and what the client knows about it.
#[derive(Debug, Clone)]
pub struct Built {
    pub index: u32,
    pub body: Bytes,
    /// The prompt length we sent, when it is known exactly.
    pub known_tokens: Option<u32>,
}

/// The most bytes of bodies held ahead, unless one body per stream needs more.
const WINDOW_BYTES: usize = 64 << 20;

struct State {
    queue: VecDeque<Built>,
    /// Bodies the thread has yet to build.
    left: usize,
    /// Set when the window is dropped: the thread stops.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The thread waits here for room.
    room: Condvar,
    /// Takers wait here for a body.
    filled: Notify,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The window of one phase's bodies.
pub struct Bodies {
    shared: Arc<Shared>,
}

impl Bodies {
    /// How many bodies to hold ahead for `streams` concurrent streams with bodies of about
    /// `body_bytes`: two per stream (a whole wave can resend while the next is built), fewer when that
    /// exceeds [`WINDOW_BYTES`], never fewer than one per stream.
    pub fn capacity(streams: u32, body_bytes: usize) -> usize {
        let streams = streams.max(1) as usize;
        let by_bytes = WINDOW_BYTES / body_bytes.max(1);
        (2 * streams).min(by_bytes).max(streams)
    }

    /// Starts building the bodies of `range` with `build`, at most `capacity` ahead of the takers.
    pub fn start(
        range: Range<u32>,
        capacity: usize,
        build: impl Fn(u32) -> Built + Send + 'static,
    ) -> Bodies {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                left: range.len(),
                closed: false,
            }),
            room: Condvar::new(),
            filled: Notify::new(),
            capacity: capacity.max(1),
        });
        let producer = Arc::clone(&shared);
        std::thread::spawn(move || {
            for index in range {
                let built = build(index);
                let mut state = producer.lock();
                while state.queue.len() >= producer.capacity && !state.closed {
                    state = producer.room.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if state.closed {
                    return;
                }
                state.queue.push_back(built);
                state.left -= 1;
                drop(state);
                producer.filled.notify_waiters();
            }
        });
        Bodies { shared }
    }

    /// The next body in index order; `None` once every body of the range was taken.
    pub async fn next(&self) -> Option<Built> {
        loop {
            // Registered before looking, so a body queued in between is not missed.
            let filled = self.shared.filled.notified();
            let mut filled = std::pin::pin!(filled);
            filled.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if let Some(built) = state.queue.pop_front() {
                    drop(state);
                    self.shared.room.notify_one();
                    return Some(built);
                }
                if state.left == 0 {
                    return None;
                }
            }
            filled.await;
        }
    }

    /// Waits until the window is full (or holds every remaining body): the measured phase starts
    /// with its bodies built.
    pub async fn full(&self) {
        loop {
            let filled = self.shared.filled.notified();
            let mut filled = std::pin::pin!(filled);
            filled.as_mut().enable();
            {
                let state = self.shared.lock();
                if state.left == 0 || state.queue.len() >= self.shared.capacity {
                    return;
                }
            }
            filled.await;
        }
    }
}

impl Drop for Bodies {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(index: u32) -> Built {
        Built {
            index,
            body: Bytes::from(index.to_string()),
            known_tokens: None,
        }
    }

    #[tokio::test]
    async fn every_body_once_in_order_within_the_window() {
        let bodies = Bodies::start(5..25, 3, built);
        bodies.full().await;
        assert_eq!(
            bodies.shared.lock().queue.len(),
            3,
            "never more than the window"
        );
        let mut got = Vec::new();
        while let Some(b) = bodies.next().await {
            got.push(b.index);
        }
        assert_eq!(got, (5..25).collect::<Vec<_>>());
        assert!(bodies.next().await.is_none());
    }

    #[test]
    fn capacity_follows_streams_and_bytes() {
        assert_eq!(Bodies::capacity(100, 7_000), 200);
        // 20K-token prompts at 1000 streams: one per stream even beyond the byte budget.
        assert_eq!(Bodies::capacity(1000, 140_000), 1000);
        assert_eq!(Bodies::capacity(0, 10), 2);
    }
}
