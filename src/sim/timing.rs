//! The timing log (`--timing-log FILE`): one JSON line per request with the instants at which each chunk
//! was due and was actually handed to the HTTP layer, so that a client's measurement error can be split
//! into the simulator's own lateness and the client's.
//!
//! Times in a record are microseconds after the request's arrival (the moment its body had been read);
//! `arrival_mono_ns` is the arrival on the system's monotonic clock (`CLOCK_MONOTONIC`), comparable with a
//! client's own monotonic timestamps on the same machine. Records are written by a dedicated thread, in
//! the order requests end, and flushed whenever the writer catches up.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One request's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingRecord {
    /// The request's number, in arrival order from 0.
    pub request: u64,
    /// `completions` or `chat`.
    pub endpoint: String,
    /// `batching` or `fixed`.
    pub mode: String,
    pub stream: bool,
    pub arrival_mono_ns: u64,
    pub prompt_tokens: usize,
    /// The prompt's first token id: tells the requests of a client that sends unique prompts apart, so
    /// that its records can be matched with these one by one. `None` for an empty prompt (and in logs
    /// written before it was recorded).
    #[serde(default)]
    pub first_prompt_token: Option<u32>,
    /// Output tokens sent to the client.
    pub completion_tokens: usize,
    /// `done`, `cut` (`--cut-stream-after`), `shutdown`, or `disconnected` (the client went away).
    pub outcome: String,
    /// Per chunk (one response for non-streaming requests): when it was due, after arrival.
    pub scheduled_us: Vec<u64>,
    /// Per chunk: when it was handed to the HTTP layer, after arrival.
    pub sent_us: Vec<u64>,
    /// Median and maximum of `sent_us - scheduled_us` over the chunks (0 without chunks).
    pub lateness_p50_us: u64,
    pub lateness_max_us: u64,
}

impl TimingRecord {
    /// Per-chunk lateness, in microseconds.
    pub fn lateness_us(&self) -> impl Iterator<Item = u64> + '_ {
        self.sent_us
            .iter()
            .zip(&self.scheduled_us)
            .map(|(s, d)| s.saturating_sub(*d))
    }
}

/// Reads a timing log back.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<TimingRecord>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad timing record: {l}")))
        .collect()
}

/// Converts `Instant`s to the system's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    base: Instant,
    base_ns: u64,
}

impl MonoClock {
    /// Pairs `Instant::now()` with the monotonic clock's reading.
    pub fn now() -> Self {
        let base = Instant::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux/macOS.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        MonoClock {
            base,
            base_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    pub fn ns(&self, t: Instant) -> u64 {
        self.base_ns.saturating_add_signed(signed_ns(t, self.base))
    }
}

fn signed_ns(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_nanos() as i64,
        None => -((b - a).as_nanos() as i64),
    }
}

enum Msg {
    Record(Box<TimingRecord>),
    Close,
}

/// The writer thread and its channel.
pub struct TimingLog {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<std::io::Result<()>>,
}

/// A cheap handle for request handlers.
#[derive(Clone)]
pub struct LogSender(mpsc::Sender<Msg>);

impl TimingLog {
    /// Creates (truncates) the file now, so that a bad path fails before serving.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("creating the timing log {}", path.display()))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("sim-timing-log".into())
            .spawn(move || {
                let mut out = BufWriter::new(file);
                let write = |r: &TimingRecord, out: &mut BufWriter<File>| -> std::io::Result<()> {
                    serde_json::to_writer(&mut *out, r)?;
                    out.write_all(b"\n")
                };
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::Record(r) => write(&r, &mut out)?,
                        Msg::Close => break,
                    }
                    // Drain what is queued, then flush so that a reader sees whole lines soon.
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Record(r)) => write(&r, &mut out)?,
                            Ok(Msg::Close) => return out.flush(),
                            Err(_) => break,
                        }
                    }
                    out.flush()?;
                }
                out.flush()
            })?;
        Ok(TimingLog { tx, thread })
    }

    pub fn sender(&self) -> LogSender {
        LogSender(self.tx.clone())
    }

    /// Writes what was sent so far and closes the file; later records are dropped.
    pub fn close(self) -> anyhow::Result<()> {
        let _ = self.tx.send(Msg::Close);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the timing log writer panicked"))??;
        Ok(())
    }
}

/// Collects one request's chunk times and sends the record when the request ends (or is dropped).
pub struct Recorder {
    log: Option<LogSender>,
    arrival: Instant,
    record: TimingRecord,
    done: bool,
}

/// What a [`Recorder`] needs to know up front.
pub struct RecordHead {
    pub request: u64,
    pub endpoint: &'static str,
    pub mode: &'static str,
    pub stream: bool,
    pub arrival: Instant,
    pub arrival_mono_ns: u64,
    pub prompt_tokens: usize,
    pub first_prompt_token: Option<u32>,
}

impl Recorder {
    pub fn new(log: Option<LogSender>, head: RecordHead) -> Self {
        Recorder {
            arrival: head.arrival,
            record: TimingRecord {
                request: head.request,
                endpoint: head.endpoint.into(),
                mode: head.mode.into(),
                stream: head.stream,
                arrival_mono_ns: head.arrival_mono_ns,
                prompt_tokens: head.prompt_tokens,
                first_prompt_token: head.first_prompt_token,
                completion_tokens: 0,
                outcome: String::new(),
                scheduled_us: Vec::new(),
                sent_us: Vec::new(),
                lateness_p50_us: 0,
                lateness_max_us: 0,
            },
            done: log.is_none(),
            log,
        }
    }

    /// A chunk carrying `tokens` output tokens, due at `scheduled`, handed over at `sent`.
    pub fn chunk(&mut self, tokens: usize, scheduled: Instant, sent: Instant) {
        if self.log.is_some() {
            let us = |t: Instant| t.saturating_duration_since(self.arrival).as_micros() as u64;
            self.record.scheduled_us.push(us(scheduled));
            self.record.sent_us.push(us(sent));
            self.record.completion_tokens += tokens;
        }
    }

    pub fn finish(&mut self, outcome: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let mut r = std::mem::replace(&mut self.record, empty_record());
        r.outcome = outcome.into();
        let mut late: Vec<u64> = r.lateness_us().collect();
        late.sort_unstable();
        if let Some(&max) = late.last() {
            r.lateness_max_us = max;
            r.lateness_p50_us = late[(late.len() - 1) / 2];
        }
        if let Some(log) = &self.log {
            let _ = log.0.send(Msg::Record(Box::new(r)));
        }
    }
}

fn empty_record() -> TimingRecord {
    TimingRecord {
        request: 0,
        endpoint: String::new(),
        mode: String::new(),
        stream: false,
        arrival_mono_ns: 0,
        prompt_tokens: 0,
        first_prompt_token: None,
        completion_tokens: 0,
        outcome: String::new(),
        scheduled_us: Vec::new(),
        sent_us: Vec::new(),
        lateness_p50_us: 0,
        lateness_max_us: 0,
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish("disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn records_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let log = TimingLog::create(&path).unwrap();
        let t0 = Instant::now();
        let head = |request| RecordHead {
            request,
            endpoint: "completions",
            mode: "fixed",
            stream: true,
            arrival: t0,
            arrival_mono_ns: 5,
            prompt_tokens: 3,
            first_prompt_token: Some(request as u32 + 100),
        };
        let mut r = Recorder::new(Some(log.sender()), head(0));
        r.chunk(
            1,
            t0 + Duration::from_millis(10),
            t0 + Duration::from_micros(10_300),
        );
        r.chunk(
            2,
            t0 + Duration::from_millis(20),
            t0 + Duration::from_micros(20_100),
        );
        r.finish("done");
        drop(Recorder::new(Some(log.sender()), head(1))); // dropped early: still logged
        log.close().unwrap();
        let records = read_log(&path).unwrap();
        assert_eq!(records.len(), 2);
        let a = &records[0];
        assert_eq!((a.completion_tokens, a.outcome.as_str()), (3, "done"));
        assert_eq!(a.scheduled_us, vec![10_000, 20_000]);
        assert_eq!(a.sent_us, vec![10_300, 20_100]);
        assert_eq!((a.lateness_p50_us, a.lateness_max_us), (100, 300));
        assert_eq!(a.first_prompt_token, Some(100));
        assert_eq!(records[1].outcome, "disconnected");
    }

    #[test]
    fn monotonic_clock_is_consistent() {
        let clock = MonoClock::now();
        let t = Instant::now();
        let later = t + Duration::from_millis(3);
        assert_eq!(clock.ns(later) - clock.ns(t), 3_000_000);
    }
}
