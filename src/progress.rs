//! What a person watching the run sees, on stderr. The orchestrator reports events here and never talks
//! to the terminal itself. On a terminal: indicatif bars (overall cells, the current server's phase, the
//! current load point's requests with ETA). Otherwise (CI, `nohup`, a log file): one plain line per event,
//! so an overnight log still tells the story.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One line on stderr that never fails. After SIGHUP the terminal may be gone (writes fail with EIO) and
/// a closed pipe gives EPIPE; `eprintln!` would panic in the middle of a teardown. Everything the runner
/// prints outside the bars goes through here.
pub fn say(text: impl AsRef<str>) {
    let _ = writeln!(std::io::stderr().lock(), "{}", text.as_ref());
}

pub struct Reporter {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    phase: ProgressBar,
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn new(total_cells: u64) -> Reporter {
        if !std::io::stderr().is_terminal() {
            return Reporter { bars: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total_cells));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} cells  {elapsed_precise} (ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("overall");
        let phase = multi.add(ProgressBar::new_spinner());
        phase.set_style(
            ProgressStyle::with_template("{prefix:>8} {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        phase.set_prefix("server");
        phase.enable_steady_tick(Duration::from_millis(200));
        Reporter {
            bars: Some(Bars {
                multi,
                overall,
                phase,
            }),
        }
    }

    /// A line that stays (above the bars on a terminal).
    pub fn line(&self, text: impl AsRef<str>) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text.as_ref());
            }
            None => say(text),
        }
    }

    /// The current server's phase (starting, ready, stopping); a plain line without a terminal.
    pub fn phase(&self, text: impl Into<String>) {
        let text = text.into();
        match &self.bars {
            Some(b) => b.phase.set_message(text),
            None => say(format!("  {text}")),
        }
    }

    /// Cells already done (skipped by resume) or just finished.
    pub fn cells_done(&self, n: u64) {
        if let Some(b) = &self.bars {
            b.overall.inc(n);
        }
    }

    /// Shows a load point's requests as they complete, until the returned guard is dropped.
    pub fn point(&self, label: &str, done: Arc<AtomicU64>, total: u64) -> PointBar {
        let Some(b) = &self.bars else {
            say(format!("  {label}: {total} requests"));
            return PointBar {
                bar: None,
                task: None,
            };
        };
        let bar = b.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} requests  {msg} (ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix("load");
        bar.set_message(label.to_string());
        let ticker = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                ticker.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        PointBar {
            bar: Some(bar),
            task: Some(task),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.phase.finish_and_clear();
            b.overall.finish();
        }
    }
}

/// Removes the load point's bar when dropped.
pub struct PointBar {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PointBar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
