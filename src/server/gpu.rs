//! GPU memory release after a teardown, as `nvidia-smi` reports it.
//!
//! A process group can be gone while the driver still holds its memory for a moment, and the next engine
//! sizes its KV cache from free memory at start (`--gpu-memory-utilization`), so we wait (bounded) until
//! the memory is back. Released means: no compute process listed by `nvidia-smi` is one of ours, and
//! every GPU uses at most what it used before our server started plus a small slack. The second test
//! matters inside containers, where `nvidia-smi` lists host pids (or none) that we cannot match.
//! A probe that fails or hangs counts as "released": it must never hold a campaign hostage.

use std::time::{Duration, Instant};

use crate::gpu::Smi;

/// Memory a GPU may hold beyond its pre-start baseline and still count as released (driver contexts of
/// other tenants come and go).
const SLACK_MIB: u64 = 1024;
const POLL: Duration = Duration::from_millis(500);

/// Watches GPU memory around one server's life (through [`crate::gpu`]; queries run off the async
/// runtime).
#[derive(Debug, Clone)]
pub struct GpuProbe {
    smi: Smi,
    /// The GPU indexes to watch; `None`: all.
    only: Option<Vec<usize>>,
}

impl GpuProbe {
    /// `nvidia-smi` from PATH, if there is one (i.e. this is a GPU host).
    pub fn find() -> Option<GpuProbe> {
        Smi::find(None).map(|smi| GpuProbe { smi, only: None })
    }

    /// A probe that runs `program` instead (tests use a fake).
    pub fn with_program(program: impl Into<std::path::PathBuf>) -> GpuProbe {
        GpuProbe {
            smi: Smi::with_program(program),
            only: None,
        }
    }

    /// Watches only these GPU indexes (a server's GPU set, when servers share the host's GPUs).
    pub fn only(mut self, gpus: Option<Vec<usize>>) -> GpuProbe {
        self.only = gpus;
        self
    }

    /// Runs one blocking query on the blocking pool; a query that cannot run answers nothing.
    async fn ask<T: Send + 'static>(&self, query: fn(&Smi) -> Option<T>) -> Option<T> {
        let smi = self.smi.clone();
        tokio::task::spawn_blocking(move || query(&smi))
            .await
            .ok()
            .flatten()
    }

    /// Used memory per GPU in MiB, in index order.
    pub async fn memory_used(&self) -> Option<Vec<u64>> {
        let all = self.ask(Smi::memory_used).await?;
        Some(match &self.only {
            None => all,
            Some(ids) => ids.iter().filter_map(|i| all.get(*i).copied()).collect(),
        })
    }

    /// Pids of processes holding GPU memory.
    pub async fn compute_pids(&self) -> Option<Vec<u32>> {
        self.ask(Smi::compute_pids).await
    }

    async fn released(&self, ours: &[u32], baseline: Option<&[u64]>) -> bool {
        if let Some(pids) = self.compute_pids().await
            && pids.iter().any(|p| ours.contains(p))
        {
            return false;
        }
        match (baseline, self.memory_used().await) {
            (Some(before), Some(now)) => now
                .iter()
                .zip(before)
                .all(|(now, before)| *now <= before + SLACK_MIB),
            _ => true,
        }
    }

    /// Waits until the memory is released or `limit` passes; returns the seconds waited.
    pub async fn wait_released(
        &self,
        ours: &[u32],
        baseline: Option<&[u64]>,
        limit: Duration,
    ) -> f64 {
        let start = Instant::now();
        while !self.released(ours, baseline).await && start.elapsed() < limit {
            tokio::time::sleep(POLL).await;
        }
        start.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A fake `nvidia-smi` whose answers come from files the test rewrites (see `crate::gpu`'s tests).
    fn fake(dir: &Path) -> GpuProbe {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-nvidia-smi");
        let link = dir.join("nvidia-smi");
        std::os::unix::fs::symlink(script, &link).unwrap();
        GpuProbe::with_program(link)
    }

    #[tokio::test]
    async fn waits_for_our_pid_to_leave_then_stops_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let probe = fake(dir.path());
        std::fs::write(dir.path().join("mem"), "500\n").unwrap();
        std::fs::write(dir.path().join("apps"), "4242, 33000\n").unwrap();
        let apps = dir.path().join("apps");
        let freer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            std::fs::write(apps, "").unwrap();
        });
        let waited = probe
            .wait_released(&[4242], Some(&[500]), Duration::from_secs(30))
            .await;
        freer.await.unwrap();
        assert!(
            waited >= 1.0,
            "returned before the memory was released: {waited}"
        );
        assert!(waited < 25.0, "did not notice the release: {waited}");
    }

    #[tokio::test]
    async fn memory_above_baseline_is_bounded_by_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let probe = fake(dir.path());
        std::fs::write(dir.path().join("mem"), "40000\n").unwrap();
        std::fs::write(dir.path().join("apps"), "").unwrap();
        let waited = probe
            .wait_released(&[1], Some(&[1000]), Duration::from_secs(1))
            .await;
        assert!(waited >= 1.0);
        // Within the slack is released at once.
        std::fs::write(dir.path().join("mem"), "1900\n").unwrap();
        let waited = probe
            .wait_released(&[1], Some(&[1000]), Duration::from_secs(30))
            .await;
        assert!(waited < 5.0);
    }

    #[tokio::test]
    async fn a_broken_probe_counts_as_released() {
        let probe = GpuProbe::with_program("/nonexistent/nvidia-smi");
        let waited = probe
            .wait_released(&[1], Some(&[0]), Duration::from_secs(30))
            .await;
        assert!(waited < 5.0);
    }
}
