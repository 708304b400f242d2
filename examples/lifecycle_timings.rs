//! Server lifecycle timings, for the record: time to ready and teardown time of the simulated engine and
//! of the misbehaving fixture engines (5 runs each, median and range), through the same supervision
//! (`runner::server`) a run uses. Prints a table; asserts nothing (the tests check behaviour, this
//! measures it).
//!
//! ```sh
//! cargo build --release && cargo run --release --example lifecycle_timings
//! ```

use std::path::PathBuf;
use std::time::Duration;

use runner::server::{self, ServerSpec};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 5;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The release build of `runner`, which the simulated engine is.
fn runner_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/runner")
}

fn spec(dir: &std::path::Path, name: &str, port: u16, grace: u64) -> ServerSpec {
    let argv = if name == "sim" {
        vec![
            runner_bin().to_string_lossy().into_owned(),
            "sim".into(),
            "--port".into(),
            port.to_string(),
            "--startup-delay".into(),
            "0s".into(),
        ]
    } else {
        vec![fixture(name), port.to_string()]
    };
    ServerSpec {
        id: name.into(),
        argv,
        shell: false,
        env: Vec::new(),
        workdir: None,
        port,
        base_url: format!("http://127.0.0.1:{port}"),
        ready_path: "/health".into(),
        ready_timeout: Duration::from_secs(60),
        smoke: None,
        stop_grace: Duration::from_secs(grace),
        log_path: dir.join(format!("{name}.log")),
        gpu_release_timeout: Duration::ZERO,
        secrets: Default::default(),
    }
}

/// Median, min and max of `v` (sorted in place).
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    anyhow::ensure!(
        runner_bin().is_file(),
        "build the release binary first: cargo build --release"
    );
    let dir = tempfile::tempdir()?;
    println!(
        "| engine | stop grace | ready, median [min..max] | teardown, median [min..max] | SIGKILL needed |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, grace) in [
        ("sim", 5u64),
        ("late-binder", 5),
        ("chatty", 5),
        ("grandchildren", 1),
        ("ignores-sigterm", 1),
    ] {
        let (mut ready_s, mut down_s, mut killed) = (Vec::new(), Vec::new(), 0);
        for _ in 0..RUNS {
            let port = server::pick_free_port()?;
            let spec = spec(dir.path(), name, port, grace);
            let mut s = server::start(&spec, &dir.path().join("runner.pid")).await?;
            let ready = s.wait_ready(&CancellationToken::new()).await;
            let teardown = s.stop().await;
            ready_s.push(ready?.seconds);
            down_s.push(teardown.seconds);
            killed += usize::from(teardown.escalated);
            anyhow::ensure!(
                teardown.leftovers.is_empty() && teardown.port_freed,
                "{name}: teardown left {:?}, port freed {}",
                teardown.leftovers,
                teardown.port_freed
            );
        }
        let (r, r0, r1) = spread(&mut ready_s);
        let (d, d0, d1) = spread(&mut down_s);
        println!(
            "| {name} | {grace} s | {r:.3} s [{r0:.3}..{r1:.3}] | {d:.3} s [{d0:.3}..{d1:.3}] | {killed}/{RUNS} |"
        );
    }
    Ok(())
}
