//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `runner` binary built for these tests.
pub fn runner_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runner"))
}

/// `runner ARGS` in `dir` with no stdin, for the caller to add environment and outputs to and start.
pub fn runner_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(runner_bin());
    cmd.args(args).current_dir(dir).stdin(Stdio::null());
    cmd
}

/// Runs `runner ARGS` in `dir` with no stdin and returns its output.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    runner_cmd(dir, args).output().expect("runner starts")
}

/// A temporary directory holding the experiment file `name` with `body`, and the directory's path (the
/// directory goes when the `TempDir` drops).
pub fn experiment_dir(name: &str, body: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().to_path_buf();
    std::fs::write(path.join(name), body).expect("write experiment");
    (tmp, path)
}

/// How many cells `results/cells.csv` lists: its lines less the header, 0 when there is no file.
pub fn cells_in_csv(results: &Path) -> usize {
    let text = std::fs::read_to_string(results.join("cells.csv")).unwrap_or_default();
    text.lines().count().saturating_sub(1)
}

/// The rows of the CSV file at `path` (`cells.csv`), each a map from column name to field: indexing a
/// row by a column the file lacks fails the test.
pub fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

/// The repository root (for experiments/ and templates/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON file at `path`; a file that cannot be read or parsed fails the test, naming the path.
pub fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `root` (recursively) for which `keep` says yes, sorted.
pub fn files_under(root: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if keep(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every file called `name` under `root`, sorted.
pub fn files_named(root: &Path, name: &str) -> Vec<PathBuf> {
    files_under(root, |p| p.file_name().is_some_and(|n| n == name))
}

/// A fake GPU host: `dir/bin/nvidia-smi` is the fixture fake, answering from the `files` written next to
/// it (see tests/fixtures/fake-nvidia-smi: `gpus`, `mem`, `apps`, `lms`). Returns the `bin` directory.
pub fn fake_gpu_host(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(
        repo().join("tests/fixtures/fake-nvidia-smi"),
        bin.join("nvidia-smi"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(bin.join(name), text).unwrap();
    }
    bin
}

/// Kills and reaps the child on drop, so a failing assertion leaves nothing running.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ok` every 20 ms until it holds; fails the test, naming `what`, once `timeout` has passed.
pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the runner.
pub fn send(runner: &Guard, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(runner.0.id() as i32);
    nix::sys::signal::kill(pid, signal).expect("signal the runner");
}

/// Waits for the runner to exit (at most `limit`) and returns its exit code and how long it took.
pub fn exit_within(runner: &mut Guard, limit: Duration) -> (Option<i32>, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = runner.0.try_wait().expect("wait") {
            return (status.code(), t0.elapsed());
        }
        assert!(
            t0.elapsed() < limit,
            "the runner did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
