//! The server's log file and its tail.
//!
//! The child's stdout and stderr are the log file itself (opened for append), not pipes the runner must
//! drain: a server that writes megabytes per second can never stall on a runner that is busy measuring,
//! output written just before a crash is on disk when we read the tail, and a runner killed hard leaves
//! no broken pipe behind to kill the engine's workers. The in-memory tail for error messages is therefore
//! read back from the end of the file, limited to what this start appended.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

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
