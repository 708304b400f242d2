//! Processes as `/proc` shows them: who is in a process group, when a process started, and signals to a
//! whole group. Linux only, like the engines we supervise.
//!
//! Invariants: zombies count as gone (they hold no memory, GPU or port; their parent reaps them), and a
//! process is identified by (pid, start time) wherever a pid may have been reused.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// The fields of `/proc/PID/stat` we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub state: char,
    pub pgid: i32,
    /// Start time in clock ticks since boot: with the pid, it names one process for good.
    pub start_ticks: u64,
}

/// Parses one `/proc/PID/stat` line. The command name sits in parentheses and may itself contain spaces
/// and parentheses, so the fields are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) session(3) ... starttime(19).
    Some(Stat {
        pid,
        state: rest.first()?.chars().next()?,
        pgid: rest.get(2)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// The stat of one process, `None` if it does not exist (or vanished while we read it).
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Live (non-zombie) members of process group `pgid`, sorted. Processes that vanish during the scan are
/// skipped: the scan only ever errs towards "gone" for processes that really are gone.
pub fn group_members(pgid: i32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|s| s.pgid == pgid && s.state != 'Z')
        .map(|s| s.pid)
        .collect();
    pids.sort_unstable();
    pids
}

pub use crate::tool::signal_group;

/// [`group_members`] on the blocking pool: a scan reads every process's `/proc/PID/stat`, which on a busy
/// host takes long enough to stall the async runtime that reads the load's streams.
pub async fn group_members_async(pgid: i32) -> Vec<u32> {
    tokio::task::spawn_blocking(move || group_members(pgid))
        .await
        .unwrap_or_default()
}

/// Polls until the group has no live member or `limit` passes; `tick` runs before every scan (the caller
/// reaps its direct child there, so that it does not linger as a zombie it alone could collect).
/// Returns the members still alive at the end.
pub async fn wait_group_gone(pgid: i32, limit: Duration, mut tick: impl FnMut()) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        tick();
        let left = group_members_async(pgid).await;
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking twin of [`wait_group_gone`] for the synchronous stale-server cleanup.
pub fn wait_group_gone_blocking(pgid: i32, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left = group_members(pgid);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// TERM to the group, up to `grace` for it to go, then KILL and up to `kill_wait` more. Returns whether
/// KILL was needed and who survived even that.
pub fn terminate_group_blocking(
    pgid: i32,
    grace: Duration,
    kill_wait: Duration,
) -> (bool, Vec<u32>) {
    if group_members(pgid).is_empty() {
        return (false, Vec::new());
    }
    signal_group(pgid, Signal::SIGTERM);
    if wait_group_gone_blocking(pgid, grace).is_empty() {
        return (false, Vec::new());
    }
    signal_group(pgid, Signal::SIGKILL);
    (true, wait_group_gone_blocking(pgid, kill_wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_and_spaces_in_the_name() {
        let line =
            "4242 (py (worker) 1) S 1 4240 4240 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgid, 4240);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_in_our_group() {
        let me = std::process::id();
        let own = stat(me).unwrap();
        assert!(alive(me));
        assert!(group_members(own.pgid).contains(&me));
    }

    #[test]
    fn signalling_init_or_our_group_is_refused() {
        assert!(!signal_group(0, Signal::SIGTERM));
        assert!(!signal_group(1, Signal::SIGTERM));
    }
}
