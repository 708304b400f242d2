//! What a person watching the run sees, on stderr. The coordinator and the units report events here and
//! never talk to the terminal themselves. On a terminal: indicatif bars (overall cells with an ETA, one
//! line per server configuration that runs now with its phase, and each running load point's requests).
//! Otherwise (CI, `nohup`, a log file, a Slurm job's output): one plain line per event, so an overnight
//! log still tells the story; when several server configurations run at once, each line starts with the
//! configuration's id.

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
    /// Several units report at once: their plain lines carry their id.
    concurrent: bool,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines otherwise. `concurrent`: units run at the same time.
    pub fn new(total_cells: u64, concurrent: bool) -> Reporter {
        if !std::io::stderr().is_terminal() {
            return Reporter {
                bars: None,
                concurrent,
            };
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
        Reporter {
            bars: Some(Bars { multi, overall }),
            concurrent,
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

    /// Cells already done (skipped by resume) or just finished.
    pub fn cells_done(&self, n: u64) {
        if let Some(b) = &self.bars {
            b.overall.inc(n);
        }
    }

    /// The line of one server configuration (a unit, or a Slurm job), until the returned value is
    /// dropped.
    pub fn unit(&self, id: &str) -> UnitProgress<'_> {
        let bar = self.bars.as_ref().map(|b| {
            let bar = b.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{prefix:>8} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix("server");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        UnitProgress {
            reporter: self,
            id: id.to_string(),
            bar,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.overall.finish();
        }
    }
}

/// What one server configuration reports: its phase (its own line on a terminal), lasting lines, its load
/// points' bars.
pub struct UnitProgress<'a> {
    reporter: &'a Reporter,
    id: String,
    bar: Option<ProgressBar>,
}

impl UnitProgress<'_> {
    /// `text`, with the unit's id in front when several units print at once.
    fn tagged(&self, text: &str) -> String {
        let bare = text.trim_start();
        // Lines that already start with the id (or with `[i/n] id`) name it.
        if self.reporter.concurrent && !bare.starts_with(&self.id) && !bare.starts_with('[') {
            format!("[{}] {bare}", self.id)
        } else {
            text.to_string()
        }
    }

    /// A line that stays.
    pub fn line(&self, text: impl AsRef<str>) {
        self.reporter.line(self.tagged(text.as_ref()));
    }

    /// The unit's phase (starting, ready, stopping, or a Slurm job's state); a plain line without a
    /// terminal.
    pub fn phase(&self, text: impl Into<String>) {
        let text = text.into();
        match &self.bar {
            Some(b) => b.set_message(text),
            None => say(self.tagged(&format!("  {text}"))),
        }
    }

    pub fn cells_done(&self, n: u64) {
        self.reporter.cells_done(n);
    }

    /// Shows a load point's requests as they complete, until the returned guard is dropped.
    pub fn point(&self, label: &str, done: Arc<AtomicU64>, total: u64) -> PointBar {
        let Some(b) = &self.reporter.bars else {
            say(self.tagged(&format!("  {label}: {total} requests")));
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
}

impl Drop for UnitProgress<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
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
