//! The server's log file and its tail.
//!
//! The child's stdout and stderr are the log file itself (opened for append), not pipes the runner must
//! drain: a server that writes megabytes per second can never stall on a runner that is busy measuring,
//! output written just before a crash is on disk when we read the tail, and a runner killed hard leaves
//! no broken pipe behind to kill the engine's workers. The in-memory tail for error messages is therefore
//! read back from the end of the file, limited to what this start appended.
//!
//! One exception: a command that carries secrets (an `--api-key`, a `${HF_TOKEN}`) may make the engine print
//! them (vLLM logs its arguments). Its output then goes through a pipe to a copier thread that hides every
//! secret before the bytes reach the file ([`Output::redacting`]). The thread is a plain OS thread, so a
//! busy runtime never slows it; the price is the pipe: an engine whose runner was killed hard gets EPIPE
//! on its next write (the next run's stale-server cleanup stops it either way).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::secret::Secrets;

/// How many lines an error message carries.
pub const TAIL_LINES: usize = 50;
/// How far back from the end of the file the tail looks.
const TAIL_BYTES: u64 = 64 * 1024;
/// Longer lines are cut: one progress bar without newlines must not fill a failure record.
const MAX_LINE_CHARS: usize = 400;

/// Opens (creating directories) the log for appending and writes a header naming this start; returns
/// the file and the offset where this start's output begins.
pub fn open(path: &Path, header: &str) -> io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(file, "{header}")?;
    file.flush()?;
    let start = file.metadata()?.len();
    Ok((file, start))
}

/// Where a server's stdout and stderr go.
pub struct Output {
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Set once the copier (if any) has written everything the server's processes wrote.
    drained: Option<Arc<AtomicBool>>,
}

impl Output {
    /// Straight into the log file (no secrets to hide).
    pub fn direct(log: File) -> io::Result<Output> {
        let stderr = log.try_clone()?;
        Ok(Output {
            stdout: Stdio::from(log),
            stderr: Stdio::from(stderr),
            drained: None,
        })
    }

    /// Through a pipe and a copier thread that replaces every secret before it reaches `log`.
    pub fn redacting(log: File, secrets: &Secrets) -> io::Result<Output> {
        // Close-on-exec: only this server gets the write end (as its stdout and stderr); another process
        // spawned meanwhile must not inherit it and keep the copier from ever seeing the end.
        let (reader, writer) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (reader, writer) = (File::from(reader), File::from(writer));
        let stderr = writer.try_clone()?;
        let drained = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&drained);
        let secrets = secrets.clone();
        std::thread::Builder::new()
            .name("server-log".into())
            .spawn(move || {
                // A failing log disk loses log lines, never the server: keep reading either way.
                let _ = copy_redacted(reader, log, &secrets);
                done.store(true, Ordering::SeqCst);
            })?;
        Ok(Output {
            stdout: Stdio::from(writer),
            stderr: Stdio::from(stderr),
            drained: Some(drained),
        })
    }

    /// A handle that tells whether everything written so far reached the file.
    pub fn drained(&self) -> LogDrain {
        LogDrain(self.drained.clone())
    }
}

/// Whether a server's output has all reached its log file (always, without a copier).
#[derive(Debug, Clone, Default)]
pub struct LogDrain(Option<Arc<AtomicBool>>);

impl LogDrain {
    /// Waits (at most `limit`) until the copier has written everything, once the server's processes are
    /// gone: the tail of an engine that just died is then complete.
    pub fn wait(&self, limit: Duration) {
        let Some(done) = &self.0 else { return };
        let deadline = Instant::now() + limit;
        while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Longest partial line kept back waiting for its newline; longer ones are written in pieces.
const MAX_PENDING: usize = 64 * 1024;

/// Copies `input` to `log` line by line with every secret replaced. A secret split across two reads is
/// still found: only complete lines are written, or, for an endless line, all but a tail as long as the
/// longest secret.
fn copy_redacted(mut input: impl Read, mut log: impl Write, secrets: &Secrets) -> io::Result<()> {
    let keep = secrets.longest();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        let mut cut = pending.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
        if cut.is_none() && pending.len() > MAX_PENDING {
            // Back up to a character boundary (a UTF-8 continuation byte is 0b10xx_xxxx).
            let mut at = pending.len().saturating_sub(keep);
            while at > 0 && pending[at] & 0xC0 == 0x80 {
                at -= 1;
            }
            cut = Some(at);
        }
        if let Some(cut) = cut {
            let text = String::from_utf8_lossy(&pending[..cut]);
            log.write_all(secrets.redact(&text).as_bytes())?;
            pending.drain(..cut);
        }
    }
    if !pending.is_empty() {
        let text = String::from_utf8_lossy(&pending);
        log.write_all(secrets.redact(&text).as_bytes())?;
    }
    Ok(())
}

/// The last `TAIL_LINES` lines written at or after byte `since`, oldest first. Carriage returns end a
/// line too (progress bars); empty lines are dropped. Unreadable logs give an empty tail: the tail only
/// decorates an error that is already being reported.
pub fn tail(path: &Path, since: u64) -> Vec<String> {
    read_tail(path, since).unwrap_or_default()
}

fn read_tail(path: &Path, since: u64) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let from = since.max(len.saturating_sub(TAIL_BYTES));
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(len - from.min(len)).read_to_end(&mut bytes)?;
    Ok(tail_of(&bytes, from > since))
}

/// Splits `bytes` into the last lines; `cut` says the first line may be a fragment and is dropped.
fn tail_of(bytes: &[u8], cut: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.split(['\n', '\r']).collect();
    if cut && !lines.is_empty() {
        lines.remove(0);
    }
    let mut out: Vec<String> = lines
        .into_iter()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(TAIL_LINES)
        .map(|l| match l.char_indices().nth(MAX_LINE_CHARS) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => l.to_string(),
        })
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_in_order() {
        let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let lines = tail_of(text.as_bytes(), false);
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.first().unwrap(), "line 150");
        assert_eq!(lines.last().unwrap(), "line 199");
    }

    #[test]
    fn carriage_returns_split_and_long_lines_are_cut() {
        let long = "x".repeat(5000);
        let text = format!("frag\nloading 10%\rloading 90%\r\n{long}\n\n");
        let lines = tail_of(text.as_bytes(), true);
        assert_eq!(lines[0], "loading 10%");
        assert_eq!(lines[1], "loading 90%");
        assert_eq!(lines[2].chars().count(), MAX_LINE_CHARS + 1);
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn the_copier_hides_secrets_split_across_reads_and_endless_lines() {
        let mut secrets = Secrets::default();
        secrets.add("hf_SECRETvalue");
        // One byte per read: every secret is split across reads.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        let text = "args: {'api_key': 'hf_SECRETvalue'}\nnext hf_SECRETvalue";
        let mut out = Vec::new();
        copy_redacted(Trickle(text.as_bytes()), &mut out, &secrets).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "args: {'api_key': '<redacted>'}\nnext <redacted>"
        );
        // A line longer than the pending limit, with the secret across the flush point.
        let long = format!(
            "{}hf_SECRETvalue{}\n",
            "é".repeat(MAX_PENDING / 2 - 3),
            "x".repeat(10)
        );
        let mut out = Vec::new();
        copy_redacted(
            long.as_bytes()
                .chunks(4096)
                .flatten()
                .copied()
                .collect::<Vec<u8>>()
                .as_slice(),
            &mut out,
            &secrets,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("hf_SECRET") && out.contains("<redacted>"),
            "{}",
            &out[out.len() - 40..]
        );
        assert!(!out.contains('\u{FFFD}'), "no character was cut in half");
    }

    #[test]
    fn tail_reads_only_this_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old run\n").unwrap();
        let (mut file, since) = open(&path, "== start ==").unwrap();
        assert!(tail(&path, since).is_empty());
        writeln!(file, "new output").unwrap();
        assert_eq!(tail(&path, since), vec!["new output".to_string()]);
        let all = std::fs::read_to_string(&path).unwrap();
        assert!(all.starts_with("old run\n== start ==\n"));
    }
}
