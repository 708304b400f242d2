//! Finished requests leave the load generator at once: a thread takes each record, adds it to the
//! point's summary ([`Accumulator`]) and hands it to the caller's [`RecordSink`] (the store's
//! `requests.jsonl` writer), so a point's memory does not grow with its records.
//!
//! Invariants: every record sent is summarised and offered to the sink exactly once, in the order
//! requests finished; serialising and writing never run on a request's task (the channel never blocks
//! a sender); the first write error is kept and ends the point once it is over, the summary is still
//! complete.

use std::sync::mpsc;

use crate::experiment::load::LoadSpec;
use crate::stats::{Accumulator, RecordSink, RequestRecord};

/// What the recorder thread ends with.
pub struct Recorded<S> {
    pub sink: S,
    pub summary: Accumulator,
    /// The first error the sink returned; records after it were summarised but not written.
    pub error: Option<std::io::Error>,
}

/// The running recorder: [`Recorder::sender`] for request tasks, [`Recorder::finish`] once they are done.
pub struct Recorder<S> {
    tx: mpsc::Sender<RequestRecord>,
    done: tokio::sync::oneshot::Receiver<Recorded<S>>,
}

impl<S: RecordSink> Recorder<S> {
    pub fn start(spec: &LoadSpec, mut sink: S) -> Recorder<S> {
        let (tx, rx) = mpsc::channel::<RequestRecord>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let mut summary = Accumulator::new(spec);
        std::thread::spawn(move || {
            let mut error = None;
            for record in rx {
                summary.add(&record);
                if error.is_none()
                    && let Err(e) = sink.write(record)
                {
                    error = Some(e);
                }
            }
            // The point may have been dropped (cancelled): then nobody waits, and the sink is dropped here.
            let _ = done_tx.send(Recorded {
                sink,
                summary,
                error,
            });
        });
        Recorder { tx, done }
    }

    /// A sender for request tasks; records sent are taken in the order they arrive.
    pub fn sender(&self) -> mpsc::Sender<RequestRecord> {
        self.tx.clone()
    }

    /// Waits until every record sent (by this recorder and every sender, all of which must be dropped)
    /// was taken; `None` only if the thread died.
    pub async fn finish(self) -> Option<Recorded<S>> {
        drop(self.tx);
        self.done.await.ok()
    }
}
