//! External tools the runner asks for facts (`nvidia-smi`, `git`, an engine's `--version`): found on a
//! search path, run with a time limit, and never allowed to hang the run.
//!
//! Invariants:
//! - A tool runs in a process group of its own, stdin closed. When its time is up the whole group gets
//!   SIGKILL, so a helper it started cannot keep the output pipe (and us) waiting.
//! - Running a tool blocks the calling thread: async code calls it through `spawn_blocking`.
//! - Failures are values (`ToolError`) that say which tool and why in a few words, for a record or a note;
//!   they never panic and never stop a run.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::process::ExitStatus;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Where `program` is, the one PATH lookup of the project: a name without `/` is the first executable file
/// of that name in `search` (a `PATH`-style list; `None`: this process's `PATH`); a path is taken as is,
/// relative to `base` when it is relative (an engine's `workdir`). `None` when there is no such
/// executable file.
pub fn find_program(program: &str, base: Option<&Path>, search: Option<&OsStr>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let path = match base {
            Some(dir) if Path::new(program).is_relative() => dir.join(program),
            _ => PathBuf::from(program),
        };
        return is_executable(&path).then_some(path);
    }
    let path: OsString = match search {
        Some(s) => s.to_os_string(),
        None => std::env::var_os("PATH")?,
    };
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One invocation of a tool.
#[derive(Debug, Clone)]
pub struct Tool<'a> {
    /// A path, or a bare name looked up in this process's `PATH`.
    pub program: &'a Path,
    pub args: &'a [&'a str],
    /// `PATH` for the child only (tests point it at fakes; never set on this process).
    pub path: Option<&'a OsStr>,
    pub timeout: Duration,
    /// Merge stderr into stdout (version commands print their version on either).
    pub merge_stderr: bool,
}

/// What a tool printed when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub stdout: String,
}

/// Why a tool gave no answer, in words for a note (`nvidia-smi did not answer within 10s`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

impl Tool<'_> {
    fn name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }

    /// Runs the tool to completion or until its time is up. A non-zero exit is an error carrying the first
    /// line it printed.
    pub fn run(&self) -> Result<ToolOutput, ToolError> {
        let name = self.name();
        // As an `OsStr`, a bare name is looked up in PATH; duct would take a `Path` as relative to the
        // current directory.
        let mut expr = duct::cmd(self.program.as_os_str(), self.args);
        // duct applies the innermost redirection last: stderr must join stdout before stdout is captured.
        expr = if self.merge_stderr {
            expr.stderr_to_stdout()
        } else {
            expr.stderr_capture()
        };
        expr = expr
            .stdout_capture()
            .stdin_null()
            .unchecked()
            .before_spawn(|cmd| {
                cmd.process_group(0);
                Ok(())
            });
        if let Some(path) = self.path {
            expr = expr.env("PATH", path);
        }
        let handle = expr
            .start()
            .map_err(|e| ToolError(format!("{name} could not start: {e}")))?;
        let output = match handle.wait_timeout(self.timeout) {
            Ok(Some(out)) => out.clone(),
            Ok(None) => {
                // The tool leads its own group (see `before_spawn`).
                if let Some(&pid) = handle.pids().first() {
                    signal_group(pid as i32, Signal::SIGKILL);
                }
                // Reap, now that nothing can hold the pipe open any more.
                let _ = handle.wait();
                return Err(ToolError(format!(
                    "{name} did not answer within {}",
                    humantime::format_duration(self.timeout)
                )));
            }
            Err(e) => return Err(ToolError(format!("{name} failed: {e}"))),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(ToolOutput { stdout });
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        Err(ToolError(format!(
            "{name} failed ({}){}{first}",
            describe_status(&output.status),
            if first.is_empty() { "" } else { ": " }
        )))
    }
}

/// `exit code 3`, `killed by SIGKILL`: how a process ended, in words.
pub fn describe_status(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("killed by {}", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        status.to_string()
    }
}

/// Runs `script` with `sh -c` under the same rules (a version command is a shell line).
pub fn run_shell(script: &str, timeout: Duration) -> Result<ToolOutput, ToolError> {
    Tool {
        program: Path::new("sh"),
        args: &["-c", script],
        path: None,
        timeout,
        merge_stderr: true,
    }
    .run()
}

/// Sends `signal` to every process of the group. Returns false when the group no longer exists.
pub fn signal_group(pgid: i32, signal: Signal) -> bool {
    // pgid 0 or 1 would mean our own group or init's: never ours to signal.
    if pgid <= 1 {
        return false;
    }
    killpg(Pid::from_raw(pgid), signal).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn finds_programs_and_paths() {
        let sh = find_program("sh", None, None).expect("sh is on PATH");
        assert!(sh.is_absolute());
        assert_eq!(
            find_program(&sh.to_string_lossy(), None, None).as_deref(),
            Some(sh.as_path())
        );
        assert_eq!(
            find_program("no-such-program-for-runner-tests", None, None),
            None
        );
        assert_eq!(
            find_program("sh", None, Some(OsStr::new("/nonexistent"))),
            None
        );
        assert_eq!(
            find_program("/etc/hostname-not-executable", None, None),
            None
        );
        assert_eq!(find_program("", None, None), None);
        // A relative path is relative to the base directory (an engine's workdir).
        let dir = sh.parent().unwrap();
        assert_eq!(
            find_program("./sh", Some(dir), None).as_deref(),
            Some(dir.join("./sh").as_path())
        );
    }

    #[test]
    fn statuses_read_like_words() {
        assert_eq!(
            describe_status(&ExitStatus::from_raw(3 << 8)),
            "exit code 3"
        );
        assert_eq!(
            describe_status(&ExitStatus::from_raw(9)),
            "killed by SIGKILL"
        );
    }

    #[test]
    fn output_errors_and_exit_codes() {
        let t = Duration::from_secs(20);
        assert_eq!(
            run_shell("echo hi; echo err >&2", t).unwrap().stdout,
            "hi\nerr\n"
        );
        let e = run_shell("echo first; exit 3", t).unwrap_err();
        assert_eq!(e.0, "sh failed (exit code 3): first");
    }

    #[test]
    fn timeout_kills_the_tool_and_its_helpers() {
        let start = Instant::now();
        // The background sleep inherits the output pipe: without the group kill we would wait 30 s.
        let e =
            run_shell("sleep 30 & echo late; sleep 30", Duration::from_millis(300)).unwrap_err();
        assert!(e.0.contains("did not answer within 300ms"), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }
}
