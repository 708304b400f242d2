//! The engine's version, from its version command (`vllm --version`, …), for the record of each run.

use std::time::Duration;

/// Runs `command_line` through `sh -c` (stdin closed, stderr merged into stdout) and returns the line
/// that names the version (see [`version_line`]). `None` if it cannot start, exits unsuccessfully, prints
/// nothing, or runs past `timeout` (see [`crate::tool`]). Blocks: call it through `spawn_blocking` from
/// async code.
pub fn engine_version(command_line: &str, timeout: Duration) -> Option<String> {
    let output = crate::tool::run_shell(command_line, timeout).ok()?;
    version_line(&output.stdout)
}

/// The first non-empty line that carries a version number (`0.32.0`, `version: 0.6.0-dev`, `runner 0.1`),
/// skipping log lines engines print first (vLLM's CPU build starts with a Triton warning); without one,
/// the first non-empty line.
pub fn version_line(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let looks_like_log = |l: &str| {
        ["INFO", "WARNING", "WARN", "DEBUG", "ERROR"]
            .iter()
            .any(|w| l.contains(w))
    };
    let has_version = |l: &str| {
        let b = l.as_bytes();
        b.windows(3)
            .any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit())
    };
    lines
        .iter()
        .find(|l| has_version(l) && !looks_like_log(l))
        .or_else(|| lines.first())
        .map(|l| l.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(20);

    #[test]
    fn first_non_empty_line_trimmed() {
        assert_eq!(
            engine_version("echo '  0.12.0  '", T).as_deref(),
            Some("0.12.0")
        );
        assert_eq!(
            engine_version("echo; echo '   '; echo v1.2; echo v9", T).as_deref(),
            Some("v1.2")
        );
    }

    #[test]
    fn version_line_skips_log_noise() {
        let vllm =
            "Triton is installed, but doesn't include CPU backend. Disabling Triton.\n0.32.0\n";
        assert_eq!(version_line(vllm).as_deref(), Some("0.32.0"));
        let llama =
            "version: 0.6.0-dev (build 0, commit unknown)\nbuilt with cc 12.2.0 for x86_64\n";
        assert_eq!(
            version_line(llama).as_deref(),
            Some("version: 0.6.0-dev (build 0, commit unknown)")
        );
        let logged = "INFO 11-22 [x.py:1] version 1.2.3 loading\n0.5.6.post2\n";
        assert_eq!(version_line(logged).as_deref(), Some("0.5.6.post2"));
        assert_eq!(version_line("dev build\n").as_deref(), Some("dev build"));
        assert_eq!(version_line("\n \n"), None);
    }

    #[test]
    fn stderr_counts() {
        assert_eq!(
            engine_version("echo 'b5002 (abc)' >&2", T).as_deref(),
            Some("b5002 (abc)")
        );
    }

    #[test]
    fn failure_or_silence_is_none() {
        assert_eq!(engine_version("echo 1.0; exit 3", T), None);
        assert_eq!(engine_version("true", T), None);
        assert_eq!(
            engine_version("no-such-program-for-runner-tests --version", T),
            None
        );
    }
}
