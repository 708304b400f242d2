//! The report from stored results: the golden test against the seed documents, missing and failed cells,
//! warnings, ratio tables, charts, CSV, custom templates and their errors, `runner report`, and
//! environment capture with a fake `nvidia-smi`.

use std::path::{Path, PathBuf};

use runner::experiment::{self, Experiment};
use runner::plan::{self, CellPlan, Plan, ServerPlan};
use runner::report;
use runner::store::{CellFailure, CellResult, Store};

use crate::common::{csv_rows, json, run_in};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report")
}

/// The seed documents' result tables, kept in the repository as fixture data (`fixtures/report/seed/`:
/// copied from the seed campaign's summary and Qwen 3 14B record, numeric columns only), so that a clean
/// clone runs the golden comparison with nothing outside it.
fn seed_doc(name: &str) -> String {
    let path = fixture_dir().join("seed").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the seed tables {} must be readable: {e}", path.display()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A results directory holding the seed's measurements, and the experiment pointing at it.
struct Campaign {
    _tmp: tempfile::TempDir,
    file: PathBuf,
    exp: Experiment,
    plan: Plan,
    store: Store,
}

impl Campaign {
    /// `extra` is appended to the fixture experiment file (e.g. a `[report]` table).
    fn new(extra: &str) -> Campaign {
        let text = std::fs::read_to_string(fixture_dir().join("seed.toml")).unwrap();
        Campaign::of(
            &format!("{text}\n{extra}"),
            "results/seed",
            &fixture_dir().join("results"),
        )
    }

    /// The experiment `text`, whose `results_dir` is `results_dir`, over a copy of the stored `results`.
    fn of(text: &str, results_dir: &str, results: &Path) -> Campaign {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("results");
        copy_dir(results, &copy);
        let from = format!("results_dir = {results_dir:?}");
        assert!(text.contains(&from), "the experiment sets {from}");
        let text = text.replace(
            &from,
            &format!("results_dir = {:?}", copy.display().to_string()),
        );
        let file = tmp.path().join("experiment.toml");
        std::fs::write(&file, text).unwrap();
        let exp = experiment::load(&file).unwrap_or_else(|d| panic!("{d}"));
        let plan = plan::expand(&exp).unwrap_or_else(|d| panic!("{d}"));
        let store = Store::new(&exp.results_dir);
        Campaign {
            _tmp: tmp,
            file,
            exp,
            plan,
            store,
        }
    }

    fn render(&self) -> report::ReportFiles {
        report::render_all(&self.exp, &self.plan, &self.store).unwrap()
    }

    fn summary(&self) -> String {
        self.render();
        std::fs::read_to_string(self.store.root.join("report/summary.zh.md")).unwrap()
    }

    fn cell_dir(&self, id: &str) -> PathBuf {
        self.store.root.join("cells").join(id)
    }

    fn edit_result(&self, id: &str, edit: impl FnOnce(&mut CellResult)) {
        let path = self.cell_dir(id).join("result.json");
        let mut cell: CellResult =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut cell);
        std::fs::write(&path, serde_json::to_string(&cell).unwrap()).unwrap();
    }
}

/// A markdown table with the heading it sits under.
#[derive(Debug)]
struct MdTable {
    heading: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl MdTable {
    fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn row(&self, concurrency: &str) -> Option<&Vec<String>> {
        self.rows.iter().find(|r| r[0] == concurrency)
    }

    /// The heading's number: `3.1` of `### 3.1 Qwen 3 14B（…）`.
    fn number(&self) -> &str {
        self.heading.split_whitespace().next().unwrap_or("")
    }
}

/// Cells of a table row, split on `|` that is not escaped.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            '|' if !escaped => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(c),
        }
        escaped = c == '\\';
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

fn tables(md: &str) -> Vec<MdTable> {
    let mut out: Vec<MdTable> = Vec::new();
    let mut heading = String::new();
    let mut in_table = false;
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            heading = h.trim().to_string();
            in_table = false;
        } else if line.starts_with('|') {
            let cells = split_row(line);
            if !in_table {
                out.push(MdTable {
                    heading: heading.clone(),
                    header: cells,
                    rows: Vec::new(),
                });
                in_table = true;
            } else if !cells[0].starts_with("---") {
                out.last_mut().unwrap().rows.push(cells);
            }
        } else {
            in_table = false;
        }
    }
    out
}

/// The columns the seed's tables share with ours, compared as printed.
const NUMERIC: &[&str] = &[
    "并发",
    "QPS",
    "Prompt TPS (token/s)",
    "Decode TPS (token/s)",
    "TTFT (ms)",
    "E2E (ms)",
    "TPOT (ms)",
    "实际 Input tokens",
    "实际 Output tokens",
];

/// Asserts that every row of `seed` appears in `ours` (same concurrency) with the same printed numbers in
/// every numeric column the seed has, and that `ours` has no other rows.
fn assert_rows_equal(seed: &MdTable, ours: &MdTable) {
    assert_eq!(
        seed.rows.len(),
        ours.rows.len(),
        "row count of {} vs {}",
        seed.heading,
        ours.heading
    );
    for seed_row in &seed.rows {
        let ours_row = ours
            .row(&seed_row[0])
            .unwrap_or_else(|| panic!("{}: no row for c={}", ours.heading, seed_row[0]));
        let mut compared = 0;
        for name in NUMERIC {
            let Some(si) = seed.column(name) else {
                continue;
            };
            let oi = ours
                .column(name)
                .unwrap_or_else(|| panic!("our table lacks column {name}: {:?}", ours.header));
            let value = seed_row[si].as_str();
            assert!(value.parse::<f64>().is_ok(), "seed value {value:?}");
            // Our cell may carry a warning marker after the number.
            let ours_value = ours_row[oi].split_whitespace().next().unwrap_or("");
            assert_eq!(
                ours_value, value,
                "{} c={} column {name}",
                ours.heading, seed_row[0]
            );
            compared += 1;
        }
        assert!(compared >= 7, "compared only {compared} columns");
    }
}

#[test]
fn golden_summary_rows_equal_the_seed_number_for_number() {
    let campaign = Campaign::new("");
    let ours = tables(&campaign.summary());
    let seed = tables(&seed_doc("summary-tables.zh.md"));
    assert_eq!(seed.len(), 5, "the seed summary has five result tables");
    for seed_table in &seed {
        let number = seed_table.number();
        let ours_table = ours
            .iter()
            .find(|t| t.number() == number)
            .unwrap_or_else(|| panic!("no table {number} in our summary"));
        // Same model in the heading (the seed writes e.g. `3.1 Qwen 3 14B（10K → 0.8K，FP8）`).
        let model = seed_table.heading[number.len()..]
            .split('（')
            .next()
            .unwrap()
            .trim();
        assert!(
            ours_table.heading.contains(model),
            "{} vs {}",
            ours_table.heading,
            seed_table.heading
        );
        assert_rows_equal(seed_table, ours_table);
    }
}

#[test]
fn golden_record_rows_equal_the_seed_record() {
    let campaign = Campaign::new("");
    let files = campaign.render();
    let record = files
        .records
        .iter()
        .find(|p| p.ends_with("records/qwen3-14b.zh.md"))
        .expect("a record for qwen3-14b");
    let text = std::fs::read_to_string(record).unwrap();
    let ours = tables(&text);
    let seed = tables(&seed_doc("record-qwen3-14b-tables.zh.md"));
    assert_eq!(seed.len(), 2);
    for (seed_table, ours_table) in seed.iter().zip(&ours) {
        assert!(ours_table.heading.starts_with(&seed_table.heading));
        assert_rows_equal(seed_table, ours_table);
    }
    // The record's settings come from the experiment and the results.
    assert!(text.contains("FP8=Qwen/Qwen3-14B-FP8；FP4（NVFP4）=RedHatAI/Qwen3-14B-NVFP4"));
    assert!(
        text.contains("FP8=2025-12-18 10:39:40 +08:00；FP4（NVFP4）=2025-12-18 11:28:39 +08:00")
    );
    assert!(
        text.contains("GPU Driver：NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08")
    );
    assert!(text.contains("](../charts/qwen3-14b-by-concurrency.svg)"));
    assert!(text.contains("](../charts/qwen3-14b-interactivity.svg)"));
}

#[test]
fn remarks_carry_engine_version_command_and_explicit_caps() {
    let campaign = Campaign::new("");
    let ours = tables(&campaign.summary());
    let remark = |number: &str, c: &str| {
        let t = ours.iter().find(|t| t.number() == number).unwrap();
        t.row(c).unwrap()[t.column("备注").unwrap()].clone()
    };
    let r = remark("3.1", "1");
    assert!(r.starts_with("vLLM 0.12.0；2 req / c=1"), "{r}");
    assert!(
        r.contains("server：`vllm serve /mnt/data/models/Qwen_Qwen3-14B-FP8 --enforce-eager --enable-prefix-caching --max-model-len 10928 --gpu-memory-utilization 0.90 --port 8005`"),
        "{r}"
    );
    assert!(remark("3.3", "1").starts_with("SGLang 0.5.6.post2"));
    assert!(remark("3B.2", "40").contains("max_inflight=24"));
    assert!(!remark("3B.2", "10").contains("max_inflight"));
}

#[test]
fn high_prefix_cache_hit_rates_are_flagged_beside_the_number() {
    let campaign = Campaign::new("");
    let md = campaign.summary();
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.number() == "3.1").unwrap();
    let col = t.column("Prefix cache 命中率").unwrap();
    assert_eq!(t.row("1").unwrap()[col], "49.92% ⚠");
    assert_eq!(t.row("40").unwrap()[col], "99.01% ⚠");
    // No counters recorded: no number, no warning.
    let t = ours.iter().find(|t| t.number() == "3B.1").unwrap();
    assert_eq!(t.row("10").unwrap()[col], "—");
    assert!(md.contains("> ⚠ c=10：前缀缓存命中率 96.62% 高于阈值 10.00%"));
    // The threshold is the experiment's.
    let relaxed = Campaign::new("[report]\nprefix_cache_warn_above = 0.995\n");
    let md = relaxed.summary();
    assert!(md.contains("| 99.01% |"), "99.01% is below 99.5%");
    assert!(!md.contains("前缀缓存命中率 99.01%"));
}

#[test]
fn output_mismatch_failures_and_client_saturation_are_flagged() {
    let campaign = Campaign::new("");
    campaign.edit_result("qwen3-14b/nvfp4/vllm/c40", |c| {
        let s = &mut c.summary;
        s.output_tokens.exact = 115;
        s.output_tokens.mismatched = 3;
        s.output_tokens.unknown = 2;
        s.output_tokens.min = Some(640);
        s.failed = 2;
        s.errors.insert("http_500".into(), 2);
        s.client.saturated = true;
        s.client.lag_ms_p99 = Some(85.0);
    });
    let md = campaign.summary();
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.number() == "3B.1").unwrap();
    let row = t.row("40").unwrap();
    let cell = |name: &str| row[t.column(name).unwrap()].clone();
    assert_eq!(cell("QPS"), "1.938 ⚠");
    assert_eq!(cell("TTFT (ms)"), "147.213 ⚠");
    assert_eq!(cell("TPOT (ms)"), "25.608 ⚠");
    assert_eq!(cell("输出长度核对"), "115/120 ⚠");
    assert_eq!(cell("实际 Output tokens"), "640–800");
    // Unflagged rows keep plain numbers and a clean check.
    let clean = t.row("10").unwrap();
    assert_eq!(clean[t.column("QPS").unwrap()], "0.637");
    assert_eq!(clean[t.column("输出长度核对").unwrap()], "✓ 30/30");
    for text in [
        "c=40：输出长度不符：3 个请求的输出不是 800 tokens（实际 640–800），2 个请求未报告 usage",
        "c=40：失败请求 2/120（http_500×2）",
        "c=40：客户端饱和（调度延迟 p99 85.000 ms",
    ] {
        assert!(md.contains(text), "missing warning {text}");
    }
}

#[test]
fn cells_without_results_are_shown_as_failed_or_pending() {
    let campaign = Campaign::new("");
    // A failed cell: result gone, failure recorded. A pending one: nothing at all.
    let failed = campaign.cell_dir("qwen3-14b/nvfp4/vllm/c200");
    std::fs::remove_file(failed.join("result.json")).unwrap();
    let failure = CellFailure {
        schema: Default::default(),
        id: "qwen3-14b/nvfp4/vllm/c200".into(),
        hash: "x".into(),
        server_id: "qwen3-14b/nvfp4/vllm".into(),
        reason: "server exited with status 1 (CUDA out of memory)".into(),
        log_tail: vec![],
        at: "2025-12-18T12:00:00+08:00".into(),
    };
    std::fs::write(
        failed.join("failure.json"),
        serde_json::to_string(&failure).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(campaign.cell_dir("qwen3-32b/fp8/vllm/c40")).unwrap();

    let files = campaign.render();
    assert_eq!(files.missing, 2);
    let md = std::fs::read_to_string(&files.summary).unwrap();
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.number() == "3B.1").unwrap();
    let row = t.row("200").expect("the failed cell keeps its row");
    assert_eq!(row[t.column("QPS").unwrap()], "失败");
    assert_eq!(row[t.column("TTFT (ms)").unwrap()], "—");
    assert!(
        row[t.column("备注").unwrap()]
            .starts_with("失败：server exited with status 1 (CUDA out of memory)")
    );
    let t = ours.iter().find(|t| t.number() == "3.2").unwrap();
    assert_eq!(t.rows.len(), 3);
    let row = t.row("40").expect("the pending cell keeps its row");
    assert_eq!(row[t.column("QPS").unwrap()], "未完成");
    assert!(row[t.column("备注").unwrap()].contains("--port $PORT"));
    assert!(md.contains("完成 10/12 个测试点，1 个失败，1 个未完成"));
    // The CSV has only finished cells.
    let csv = std::fs::read_to_string(&files.csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 10);
}

#[test]
fn results_from_changed_settings_are_shown_and_flagged() {
    let campaign = Campaign::new("");
    campaign.edit_result("qwen3-14b/fp8/vllm/c10", |c| c.hash = "000000000000".into());
    let md = campaign.summary();
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.number() == "3.1").unwrap();
    let row = t.row("10").unwrap();
    assert_eq!(row[t.column("QPS").unwrap()], "0.486");
    assert!(row[t.column("备注").unwrap()].contains("⚠ 旧设置的结果"));
    assert!(md.contains("c=10：此结果来自不同的设置"));
}

#[test]
fn ratio_tables_compare_precisions_at_equal_concurrency() {
    let campaign = Campaign::new("");
    let ours = tables(&campaign.summary());
    let t = ours
        .iter()
        .find(|t| t.heading.starts_with("Qwen 3 14B：NVFP4 / FP8"))
        .expect("a 14B NVFP4/FP8 ratio table");
    // FP8 ran at 1/10/40, NVFP4 at 10/40/200: only 10 and 40 compare.
    let concs: Vec<&str> = t.rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(concs, ["10", "40"]);
    let qps = t.column("QPS").unwrap();
    assert_eq!(t.row("10").unwrap()[qps], "1.311×"); // 0.637 / 0.486
    assert_eq!(t.row("40").unwrap()[qps], "1.193×"); // 1.938 / 1.625
    let ttft = t.column("TTFT").unwrap();
    assert_eq!(t.row("40").unwrap()[ttft], "1.585×"); // 147.213 / 92.907
    // The 32B NVFP4 point at 40 was capped at 24 in flight: the ratio says so first.
    let t32 = ours
        .iter()
        .find(|t| t.heading.starts_with("Qwen 3 32B：NVFP4 / FP8"))
        .unwrap();
    let note = &t32.row("40").unwrap()[t32.column("说明").unwrap()];
    assert!(
        note.starts_with("⚠ 负载设置不同：max_inflight=24 vs 无；"),
        "{note}"
    );
    // The 72B model has one precision: nothing to compare.
    assert!(!ours.iter().any(|t| t.heading.starts_with("Qwen 2.5 72B：")));
}

/// The seed's own figures: at c=10 the FP8 row had 96.62 % prefix-cache hits and the NVFP4 row's hit
/// rate is unknown, so the TTFT ratio may compare a cached prefill with a real one. The row says so.
#[test]
fn a_ratio_row_carries_every_caveat_of_both_rows() {
    let campaign = Campaign::new("");
    let ours = tables(&campaign.summary());
    let t = ours
        .iter()
        .find(|t| t.heading.starts_with("Qwen 3 14B：NVFP4 / FP8"))
        .unwrap();
    let row = t.row("10").unwrap();
    assert_eq!(row[t.column("TTFT").unwrap()], "1.338×"); // 68.637 / 51.305
    assert_eq!(
        row[t.column("说明").unwrap()],
        "⚠ FP8：前缀缓存命中率 96.62%（高于 10.00%）；NVFP4：前缀缓存命中率未知"
    );
    assert_eq!(
        t.row("40").unwrap()[t.column("说明").unwrap()],
        "⚠ FP8：前缀缓存命中率 99.01%（高于 10.00%）；NVFP4：前缀缓存命中率未知"
    );

    // Failed requests, an output mismatch and a saturated client on the NVFP4 side at c=40, and a
    // figure the FP8 side did not measure at c=10: each is named with its side.
    campaign.edit_result("qwen3-14b/nvfp4/vllm/c40", |c| {
        let s = &mut c.summary;
        s.output_tokens.exact = 117;
        s.output_tokens.mismatched = 3;
        s.failed = 2;
        s.errors.insert("http_500".into(), 2);
        s.client.saturated = true;
    });
    campaign.edit_result("qwen3-14b/fp8/vllm/c10", |c| c.summary.tpot_ms = None);
    let ours = tables(&campaign.summary());
    let t = ours
        .iter()
        .find(|t| t.heading.starts_with("Qwen 3 14B：NVFP4 / FP8"))
        .unwrap();
    let note = |c: &str| t.row(c).unwrap()[t.column("说明").unwrap()].clone();
    let n40 = note("40");
    assert!(
        n40.contains("NVFP4：输出长度不符，失败请求 2/120，客户端饱和，前缀缓存命中率未知"),
        "{n40}"
    );
    assert!(note("10").contains("FP8：前缀缓存命中率 96.62%（高于 10.00%），未测得 TPOT"));
    assert_eq!(t.row("10").unwrap()[t.column("TPOT").unwrap()], "—");

    // Without the caveats (hit rates known and low on both sides) the row is clean.
    for id in ["qwen3-14b/fp8/vllm/c10", "qwen3-14b/nvfp4/vllm/c10"] {
        campaign.edit_result(id, |c| {
            c.server_metrics.prefix_cache_hit_rate = Some(0.0);
            c.summary.tpot_ms = Some(runner::stats::Dist::of([25.0]).unwrap());
        });
    }
    let ours = tables(&campaign.summary());
    let t = ours
        .iter()
        .find(|t| t.heading.starts_with("Qwen 3 14B：NVFP4 / FP8"))
        .unwrap();
    assert_eq!(t.row("10").unwrap()[t.column("说明").unwrap()], "");
}

#[test]
fn charts_are_svg_per_model_with_every_precision_and_linked() {
    let campaign = Campaign::new("");
    let files = campaign.render();
    let md = std::fs::read_to_string(&files.summary).unwrap();
    let mut names: Vec<String> = files
        .charts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "qwen25-72b-by-concurrency.svg",
            "qwen25-72b-interactivity.svg",
            "qwen3-14b-by-concurrency.svg",
            "qwen3-14b-interactivity.svg",
            "qwen3-32b-by-concurrency.svg",
            "qwen3-32b-interactivity.svg",
        ]
    );
    for path in &files.charts {
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            md.contains(&format!("](charts/{name})")),
            "{name} not linked"
        );
    }
    // Both 14B precisions on the same axes: FP8 at 1/10/40 and NVFP4 at 10/40/200, in each of the three
    // panels, and once each in the interactivity chart.
    let svg = |name: &str| std::fs::read_to_string(files.report_dir().join("charts").join(name));
    let by_c = svg("qwen3-14b-by-concurrency.svg").unwrap();
    assert_eq!(by_c.matches("<circle").count(), 6 * 3);
    for text in [
        "FP8",
        "NVFP4",
        "TTFT 均值（ms，对数坐标）",
        "并发数（对数坐标）",
    ] {
        assert!(by_c.contains(text), "{text}");
    }
    let inter = svg("qwen3-14b-interactivity.svg").unwrap();
    assert_eq!(inter.matches("<circle").count(), 6);
    for text in ["c=200", "帕累托前沿", "每 GPU 输出吞吐（tokens/s/GPU）"] {
        assert!(inter.contains(text), "{text}");
    }
    // The caption says how interactivity is defined and that GPUs were assumed, not known.
    assert!(md.contains("单用户解码速度 = 1000 / 平均 TPOT"));
    assert!(
        md.contains("服务参数未给出 GPU 数（如 tensor_parallel_size），按每个服务 1 个 GPU 计")
    );
}

/// Every chart is a well-formed SVG that a real renderer draws: some pixels in its plot area are not
/// white. (Text needs fonts, which a test machine may lack; lines and points do not.)
#[test]
fn every_chart_renders_with_a_real_svg_renderer() {
    let campaign = Campaign::new("");
    let files = campaign.render();
    assert!(!files.charts.is_empty());
    for path in &files.charts {
        let data = std::fs::read(path).unwrap();
        let tree = resvg::usvg::Tree::from_data(&data, &resvg::usvg::Options::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let size = tree.size().to_int_size();
        let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
        resvg::render(&tree, Default::default(), &mut pixmap.as_mut());
        // The plot area: below the title and legend, inside the axes' margins.
        let (w, h) = (size.width(), size.height());
        let drawn = (h / 5..h * 9 / 10)
            .flat_map(|y| (w / 8..w * 9 / 10).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = pixmap.pixel(x, y).unwrap();
                p.alpha() > 0 && (p.red() < 200 || p.green() < 200 || p.blue() < 200)
            })
            .count();
        // One measured point alone covers about 50 pixels.
        assert!(
            drawn > 30,
            "{}: only {drawn} dark pixels in the plot area",
            path.display()
        );
    }
}

trait ReportDir {
    fn report_dir(&self) -> PathBuf;
}

impl ReportDir for report::ReportFiles {
    fn report_dir(&self) -> PathBuf {
        self.summary.parent().unwrap().to_path_buf()
    }
}

#[test]
fn csv_has_stable_core_columns_then_sorted_variables() {
    let campaign = Campaign::new("");
    let files = campaign.render();
    let mut reader = csv::Reader::from_path(&files.csv).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let mut core: Vec<&str> = report::csv::CORE_COLUMNS.to_vec();
    core.extend(report::cost::CSV_COLUMNS);
    assert_eq!(&header[..core.len()], core.as_slice());
    // Extra variables after the fixed columns, sorted: only max_inflight and requests vary here.
    assert_eq!(&header[core.len()..], ["var.max_inflight", "var.requests"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 12);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    // Plan order: the first server's first cell.
    assert_eq!(&rows[0][col("id")], "qwen3-14b/fp8/vllm/c1");
    let capped = rows
        .iter()
        .find(|r| &r[col("id")] == "qwen3-32b/nvfp4/vllm/c40")
        .unwrap();
    assert_eq!(&capped[col("var.max_inflight")], "24");
    assert_eq!(&capped[col("concurrency")], "40");
    assert_eq!(capped[col("qps")].parse::<f64>().unwrap(), 0.587);
    assert_eq!(&rows[0][col("prefix_cache_hit_rate")], "0.4992");
    assert_eq!(&rows[0][col("engine_version")], "0.12.0");
}

#[test]
fn summary_sections_and_environment_follow_the_seed() {
    let campaign = Campaign::new("");
    let md = campaign.summary();
    for heading in [
        "## 1) 测试概览",
        "## 2) 指标说明（读表指南）",
        "## 3) FP8 结果汇总",
        "## 3B) FP4（NVFP4）结果补充",
        "## 3C) 精度对比（比值）",
        "## 3D) 图表",
        "## 3E) NVFP（NVFP4）特性简介",
        "## 4) 结果解读（面向客户的要点）",
        "## 5) Azure 上的 GPU VM 与环境简介（概述）",
        "## 6) 数据来源（原始记录）",
    ] {
        assert!(md.contains(heading), "missing {heading}");
    }
    // The seed's GPU line, now from environment.json, and VM facts from the experiment file.
    let seed = seed_doc("summary-tables.zh.md");
    let gpu_line = "- GPU Driver：NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08";
    assert!(seed.contains(gpu_line) && md.contains(gpu_line));
    assert!(md.contains("**Standard_NC128ds_xl_RTXPRO6000BSE_v6**"));
    assert!(md.contains("  - 128 vCPU"));
    assert!(md.contains("[records/qwen3-14b.zh.md](records/qwen3-14b.zh.md)"));
    // Our glossary states the definitions, including the naming clash between tools.
    assert!(
        md.contains("TPOT**（ms）：每输出 token 的平均耗时 =（E2E − TTFT）/（输出 tokens − 1）")
    );
    assert!(md.contains("GuideLLM 的 TPOT 包含 TTFT"));
    // No template syntax leaks into the output.
    assert!(!md.contains("{{") && !md.contains("{%"));
}

#[test]
fn custom_templates_are_used_and_their_errors_name_file_line_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tera");
    std::fs::write(
        &good,
        "{{ title }}\n{% for s in sections %}{% for t in s.tables %}{{ t.number }}={{ t.rows | length }}\n{% endfor %}{% endfor %}",
    )
    .unwrap();
    let campaign = Campaign::new(&format!(
        "[report]\nsummary_template = {:?}\n",
        good.display().to_string()
    ));
    let md = campaign.summary();
    assert_eq!(
        md,
        "Azure NC RTX Pro 6000 FP8 / NVFP4推理测试汇总\n3.1=3\n3.2=3\n3.3=1\n3B.1=3\n3B.2=2\n"
    );

    let bad = dir.path().join("bad.tera");
    std::fs::write(
        &bad,
        "# {{ title }}\n\n{% for s in sections %}{{ s.no_such_field }}{% endfor %}\n",
    )
    .unwrap();
    let mut exp = campaign.exp.clone();
    exp.report.summary_template = Some(bad.clone());
    let err = report::render_all(&exp, &campaign.plan, &campaign.store).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&bad.display().to_string()), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert!(msg.contains("s.no_such_field"), "{msg}");
    // Nothing was overwritten by the failed render.
    let after = std::fs::read_to_string(campaign.store.root.join("report/summary.zh.md")).unwrap();
    assert_eq!(after, md);
}

#[test]
fn runner_report_renders_without_running_anything() {
    let campaign = Campaign::new("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("report")
        .arg(&campaign.file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("summary.zh.md") && stdout.contains("cells.csv"));
    assert!(
        campaign
            .store
            .root
            .join("report/records/qwen25-72b.zh.md")
            .is_file()
    );

    // Without results there is nothing to report: a usage error, nothing written.
    std::fs::remove_dir_all(&campaign.store.root).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("report")
        .arg(&campaign.file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no results at"));
    assert!(!campaign.store.root.exists());
}

mod envinfo {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use runner::envinfo::{Probe, capture_with};

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A search path with the fake tools first, then the system's (for git and sh).
    fn probe(bin: &Path) -> Probe {
        let system = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin.to_path_buf()];
        dirs.extend(std::env::split_paths(&system));
        Probe {
            path: Some(std::env::join_paths(dirs).unwrap()),
            timeout: None,
        }
    }

    fn git(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}: {status:?}");
    }

    #[test]
    fn fake_nvidia_smi_and_git_state_are_captured() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        script(
            &bin,
            "nvidia-smi",
            "echo 'NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08, [N/A]'\n\
             echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 580.105.08, Enabled'",
        );
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let file = repo.join("exp.toml");
        std::fs::write(&file, "title = \"x\"\n").unwrap();
        git(&repo, &["init", "-q"]);
        git(&repo, &["add", "exp.toml"]);
        git(&repo, &["commit", "-q", "-m", "x"]);

        let versions = BTreeMap::from([("vllm".to_string(), "0.12.0".to_string())]);
        let env = capture_with(&file, &versions, &probe(&bin));
        assert_eq!(env.gpus.len(), 2);
        assert_eq!(
            env.gpus[0].line(),
            "NVIDIA RTX Pro 6000 Blackwell DC-4-96Q, 98304 MiB, 580.105.08"
        );
        assert_eq!(env.gpus[0].mig_mode, None);
        assert_eq!(env.gpus[1].mig_mode.as_deref(), Some("Enabled"));
        assert_eq!(env.gpu_note, None);
        assert_eq!(env.engine_versions["vllm"], "0.12.0");
        assert_eq!(env.runner_version, env!("CARGO_PKG_VERSION"));
        let commit = env.experiment.commit.clone().expect("a commit");
        assert_eq!(commit.len(), 40);
        assert_eq!(env.experiment.dirty, Some(false));
        // The offset is part of the time: a reader must know the time zone.
        assert!(chrono::DateTime::parse_from_rfc3339(&env.captured_at).is_ok());
        assert!(env.captured_at_local.contains(':') && env.captured_at_local.len() >= 25);

        // Local changes to the experiment file are recorded.
        std::fs::write(&file, "title = \"y\"\n").unwrap();
        let env = capture_with(&file, &versions, &probe(&bin));
        assert_eq!(env.experiment.dirty, Some(true));
        assert_eq!(env.experiment.commit.as_deref(), Some(commit.as_str()));

        // The record round-trips through environment.json.
        let store = runner::store::Store::new(tmp.path().join("results"));
        store.write_environment(&env).unwrap();
        assert_eq!(store.read_environment().unwrap(), Some(env));
    }

    #[test]
    fn failing_or_missing_nvidia_smi_is_a_note_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        script(
            &bin,
            "nvidia-smi",
            "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.' >&2\nexit 9",
        );
        let file = tmp.path().join("exp.toml");
        std::fs::write(&file, "").unwrap();
        let env = capture_with(&file, &BTreeMap::new(), &probe(&bin));
        assert!(env.gpus.is_empty());
        let note = env.gpu_note.unwrap();
        assert!(note.contains("could not communicate"), "{note}");
        // Outside a git repository: no commit, and a note saying so.
        assert_eq!(env.experiment.commit, None);
        assert!(env.experiment.note.is_some());

        // A search path without nvidia-smi.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let env = capture_with(
            &file,
            &BTreeMap::new(),
            &Probe {
                path: Some(empty.into_os_string()),
                timeout: None,
            },
        );
        assert!(env.gpus.is_empty());
        assert!(env.gpu_note.unwrap().contains("not found"));
    }

    #[test]
    fn a_hanging_nvidia_smi_is_given_up_on() {
        let tmp = tempfile::tempdir().unwrap();
        script(tmp.path(), "nvidia-smi", "exec sleep 30");
        let file = tmp.path().join("exp.toml");
        std::fs::write(&file, "").unwrap();
        let mut p = probe(tmp.path());
        p.timeout = Some(std::time::Duration::from_millis(300));
        let start = std::time::Instant::now();
        let env = capture_with(&file, &BTreeMap::new(), &p);
        assert!(
            env.gpu_note
                .unwrap()
                .contains("did not answer within 300ms")
        );
        // Generous bound: only proves it did not wait for the full 30 s sleep.
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }
}

#[test]
fn a_campaign_without_results_lists_every_planned_cell_once() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/rtxpro6000.toml"),
    )
    .unwrap()
    .replace(
        "results_dir = \"results/rtxpro6000\"",
        &format!("results_dir = {:?}", results.display().to_string()),
    );
    let file = tmp.path().join("rtxpro6000.toml");
    std::fs::write(&file, text).unwrap();
    let exp = experiment::load(&file).unwrap_or_else(|d| panic!("{d}"));
    let plan = plan::expand(&exp).unwrap_or_else(|d| panic!("{d}"));
    let store = Store::new(&exp.results_dir);
    let files = report::render_all(&exp, &plan, &store).unwrap();
    assert_eq!(files.missing, plan.cell_count());
    assert!(files.charts.is_empty(), "no data, no charts");
    let md = std::fs::read_to_string(&files.summary).unwrap();
    let result_tables: Vec<MdTable> = tables(&md)
        .into_iter()
        .filter(|t| t.column("备注").is_some())
        .collect();
    let rows: usize = result_tables.iter().map(|t| t.rows.len()).sum();
    assert_eq!(rows, plan.cell_count());
    assert!(
        result_tables
            .iter()
            .flat_map(|t| &t.rows)
            .all(|r| r[1] == "未完成")
    );
    // vLLM and SGLang tables of one model and precision are told apart by the engine only (the
    // constant gpu_memory_utilization does not clutter the heading).
    let headings: Vec<&str> = result_tables.iter().map(|t| t.heading.as_str()).collect();
    assert!(
        headings.contains(&"3.1 Qwen 3 14B（10K → 0.8K，FP8） · vllm"),
        "{headings:?}"
    );
    assert!(
        headings.contains(&"3.2 Qwen 3 14B（10K → 0.8K，FP8） · sglang"),
        "{headings:?}"
    );
    let mut unique = headings.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), headings.len());
    // Only the header in the CSV: it lists finished cells.
    assert_eq!(
        std::fs::read_to_string(&files.csv).unwrap().lines().count(),
        1
    );
}

/// Results written before records carried a schema version (see `fixtures/report/schema1/README.md`).
fn schema1_dir() -> PathBuf {
    fixture_dir().join("schema1")
}

#[test]
fn results_of_the_first_schema_still_load_and_render_their_numbers() {
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/demo.toml"),
    )
    .unwrap();
    let campaign = Campaign::of(&demo, "results/demo", &schema1_dir().join("demo"));
    let stored = campaign.store.read_cells().unwrap();
    assert_eq!((stored.cells.len(), stored.unreadable.len()), (3, 0));
    assert!(
        stored
            .cells
            .iter()
            .all(|c| c.schema == runner::store::Schema::UNVERSIONED)
    );
    // The server's status was a string then; it reads as the enum.
    let server = &campaign.plan.servers[0];
    let record = campaign.store.read_server(server).unwrap().unwrap();
    assert_eq!(record.status, runner::store::ServerStatus::Ok);

    let files = campaign.render();
    assert!(files.unreadable.is_empty(), "{:?}", files.unreadable);
    assert_eq!(files.missing, 9, "the other three servers were not kept");
    let md = std::fs::read_to_string(&files.summary).unwrap();
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.number() == "3.1").unwrap();
    // Exactly what the report of that run printed (QPS … 输出吞吐), every figure measured.
    for (c, want) in [
        (
            "1",
            "2.640 31271.244 181.688 31.983 378.731 5.504 1000 64 0.00% ✓ 3/3 168.969",
        ),
        (
            "4",
            "7.225 13747.287 137.248 93.988 553.011 7.286 1000 64 0.00% ✓ 12/12 462.388",
        ),
        (
            "16",
            "12.906 4567.886 66.041 283.182 1237.132 15.142 1000 64 0.00% ✓ 48/48 825.953",
        ),
    ] {
        let row = t.row(c).unwrap();
        assert_eq!(row[1..12].join(" "), want, "c={c}");
    }
    let csv = std::fs::read_to_string(&files.csv).unwrap();
    assert!(
        csv.contains(
            ",2.6401432013672417,31271.24412988388,181.68796773836937,31.983000000000025,"
        ),
        "full-precision figures unchanged:\n{csv}"
    );
}

/// Figures that need the server's token counts: unmeasured against a server that sends no `usage`.
const NEEDS_USAGE_COLUMNS: &[&str] = &[
    "Prompt TPS (token/s)",
    "Decode TPS (token/s)",
    "TPOT (ms)",
    "输出吞吐 (token/s)",
];
const NEEDS_USAGE_CSV: &[&str] = &[
    "prompt_tps",
    "decode_tps",
    "tpot_mean_ms",
    "tpot_median_ms",
    "tpot_p99_ms",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "input_tokens_mean",
    "output_tokens_mean",
];

/// The result table rows of a report about a server without `usage`: the figures that need its counts
/// are `—`, the input and output counts are flagged as unknown, and the latencies are real numbers.
fn assert_no_usage_rows(md: &str, concurrencies: &[&str]) {
    let ours = tables(md);
    let t = ours
        .iter()
        .find(|t| t.column("备注").is_some())
        .expect("a result table");
    for c in concurrencies {
        let row = t.row(c).unwrap_or_else(|| panic!("no row for c={c}"));
        let cell = |name: &str| row[t.column(name).unwrap()].clone();
        for name in NEEDS_USAGE_COLUMNS {
            assert_eq!(cell(name), "—", "c={c} {name}");
        }
        assert_eq!(cell("实际 Input tokens"), "— ⚠", "c={c}");
        assert_eq!(cell("实际 Output tokens"), "—", "c={c}");
        assert!(cell("输出长度核对").ends_with(" ⚠"), "c={c}");
        for name in ["QPS", "TTFT (ms)", "E2E (ms)"] {
            // A loaded test machine may flag the client as saturated: the ⚠ follows the number.
            let text = cell(name);
            let value: f64 = text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("c={c} {name}: {text}"));
            assert!(value > 0.0, "c={c} {name} is measured");
        }
    }
    assert!(
        !md.contains("| 0.000 |"),
        "no 0.000 anywhere in a table:\n{md}"
    );
    assert!(
        md.contains("输入长度未知："),
        "unknown input counts are warned about"
    );
    assert!(md.contains("输出长度未知："));
}

fn assert_no_usage_csv(path: &Path, rows: usize) {
    let rows_read = csv_rows(path);
    assert_eq!(rows_read.len(), rows);
    for row in rows_read {
        for name in NEEDS_USAGE_CSV {
            assert_eq!(row[*name], "", "{name} must be empty, not 0: {row:?}");
        }
        assert_eq!(row["input_tokens_unknown"], row["succeeded"]);
        assert_eq!(row["output_tokens_unknown"], row["succeeded"]);
        assert!(row["ttft_mean_ms"].parse::<f64>().unwrap() > 0.0);
    }
}

#[test]
fn a_zero_filled_result_of_the_first_schema_reads_as_unmeasured() {
    let dir = schema1_dir().join("no-usage");
    let text = std::fs::read_to_string(dir.join("no-usage.toml")).unwrap();
    let campaign = Campaign::of(&text, "results/no-usage", &dir.join("results"));
    let cells = campaign.store.read_cells().unwrap().cells;
    assert_eq!(cells.len(), 2);
    for cell in &cells {
        let s = &cell.summary;
        assert_eq!(
            (s.tpot_ms.as_ref(), s.decode_tps),
            (None, None),
            "{}",
            cell.id
        );
        assert_eq!(s.output_tokens_per_s, None);
        // That runner computed these from the prompt lengths it sent, not from the server's counts.
        assert_eq!((s.prompt_tps, s.total_tokens_per_s), (None, None));
        assert!(s.qps.is_some() && s.ttft_ms.is_some() && s.e2e_ms.is_some());
    }
    let files = campaign.render();
    let md = std::fs::read_to_string(&files.summary).unwrap();
    assert_no_usage_rows(&md, &["1", "4"]);
    assert_no_usage_csv(&files.csv, 2);
    let c4 = tables(&md)
        .into_iter()
        .find(|t| t.column("备注").is_some())
        .unwrap();
    assert_eq!(
        c4.row("4").unwrap()[1],
        "58.524",
        "QPS as that run measured it"
    );
}

#[test]
fn an_unreadable_record_is_skipped_and_named_and_the_rest_renders() {
    let campaign = Campaign::new("");
    let broken = campaign
        .cell_dir("qwen3-14b/fp8/vllm/c10")
        .join("result.json");
    std::fs::write(&broken, "{ \"id\": \"half a file").unwrap();
    // A server record from some other tool's idea of a status.
    let server = campaign.store.root.join("servers/qwen3-32b/fp8/vllm");
    std::fs::create_dir_all(&server).unwrap();
    std::fs::write(
        server.join("server.json"),
        r#"{"id":"qwen3-32b/fp8/vllm","hash":"x","engine":"vllm","command":"","env":[],"base_url":"","port":null,"engine_version":null,"time_to_ready_s":null,"teardown_s":null,"teardown_escalated":null,"started_at":"","status":"exploded","reason":null,"log_tail":[]}"#,
    )
    .unwrap();

    let files = campaign.render();
    assert_eq!(files.unreadable.len(), 2, "{:?}", files.unreadable);
    assert!(
        files
            .unreadable
            .iter()
            .any(|u| u.contains(&broken.display().to_string()))
    );
    assert!(files.unreadable.iter().any(|u| u.contains("server.json")));
    let md = std::fs::read_to_string(&files.summary).unwrap();
    assert!(
        md.contains(&format!("`{}:", broken.display())),
        "the summary names the file"
    );
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.number() == "3.1").unwrap();
    let row = t.row("10").unwrap();
    assert_eq!(row[t.column("QPS").unwrap()], "无法读取");
    assert!(row[t.column("备注").unwrap()].starts_with("结果文件无法读取"));
    // Everything else is there, numbers and all.
    assert_eq!(t.row("40").unwrap()[t.column("QPS").unwrap()], "1.625");
    assert_eq!(csv_rows(&files.csv).len(), 11);
    assert!(md.contains("完成 11/12 个测试点，1 个结果文件无法读取"));

    // `runner report` says so on stderr and still succeeds.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("report")
        .arg(&campaign.file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: skipped an unreadable record")
            && stderr.contains(&broken.display().to_string()),
        "{stderr}"
    );
}

/// End to end against a server that never sends `usage`: no figure that needs its token counts is shown
/// as measured anywhere a person or a script looks (report, CSV, chart, terminal, `result.json`).
#[test]
fn against_a_server_without_usage_no_unmeasured_figure_looks_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("no-usage.toml");
    std::fs::write(
        &file,
        r#"
title = "no usage"
results_dir = "results/no-usage"
[engines.sim]
preset = "sim"
command = "{{ runner }} sim --port {{ port }} --startup-delay 0 --seed 3 --no-usage"
[models.tiny]
input_tokens = 64
output_tokens = 8
[models.tiny.precisions]
fp8 = { path = "sim/tiny-fp8" }
[matrix]
model = ["tiny"]
precision = ["fp8"]
engine = ["sim"]
concurrency = [1, 4]
[load]
requests = "2 * concurrency"
warmup = 1
timeout = "30s"
"#,
    )
    .unwrap();
    let out = run_in(tmp.path(), &[file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results = tmp.path().join("results/no-usage");

    // Terminal: a dash, and the unknown counts said out loud.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(" ok, QPS ")).collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for line in lines {
        assert!(
            line.contains("TPOT — ms") && line.contains("out — tok/s"),
            "{line}"
        );
        assert!(
            line.contains("[input length: 0 mismatched,")
                && line.contains("[output length: 0 mismatched,")
        );
    }

    // result.json: null, not 0, in today's schema.
    for c in ["c1", "c4"] {
        let path = results
            .join("cells/tiny/fp8/sim")
            .join(c)
            .join("result.json");
        let v = json(&path);
        assert_eq!(v["schema"], 2);
        let s = &v["summary"];
        for key in [
            "tpot_ms",
            "decode_tps",
            "prompt_tps",
            "output_tokens_per_s",
            "total_tokens_per_s",
        ] {
            assert_eq!(s[key], serde_json::Value::Null, "{c} {key}: {s}");
        }
        assert!(s["ttft_ms"]["count"].as_u64().is_some_and(|n| n > 0));
    }

    // Report and CSV.
    let md = std::fs::read_to_string(results.join("report/summary.zh.md")).unwrap();
    assert_no_usage_rows(&md, &["1", "4"]);
    assert_no_usage_csv(&results.join("cells.csv"), 2);

    // Charts: TTFT's two points, none for throughput or TPOT (not even at 0), and no interactivity point.
    let charts = results.join("report/charts");
    let svg = std::fs::read_to_string(charts.join("tiny-by-concurrency.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
    assert!(svg.contains("TPOT 均值（ms）：未测得"));
    assert!(svg.contains("输出吞吐（tokens/s）：未测得"));
    let svg = std::fs::read_to_string(charts.join("tiny-interactivity.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 0, "{svg}");
}

/// Writes a result for every planned cell of `campaign`: the schema-1 demo result relabelled as the cell,
/// then changed by `adjust` (no server runs).
fn fill_from_demo_result(
    campaign: &Campaign,
    adjust: impl Fn(&ServerPlan, &CellPlan, &mut CellResult),
) {
    let template =
        std::fs::read_to_string(schema1_dir().join("demo/cells/demo-14b/fp8/sim/c1/result.json"))
            .unwrap();
    for server in &campaign.plan.servers {
        for cell in &server.points {
            let mut result: CellResult = serde_json::from_str(&template).unwrap();
            result.id = cell.id.clone();
            result.hash = cell.hash.clone();
            result.server_id = server.id.clone();
            result.model = server.model.clone();
            result.precision = server.precision.clone();
            result.engine = server.engine.clone();
            result.vars = server
                .cell_vars(cell)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            adjust(server, cell, &mut result);
            let dir = campaign.store.cell_dir(cell);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("result.json"),
                serde_json::to_string(&result).unwrap(),
            )
            .unwrap();
        }
    }
}

/// The demo's shape: each model × precision sets its own simulated speeds through `[[matrix.include]]`.
/// Results are written for every planned cell (from one stored demo result, scaled per precision so the
/// two precisions differ); no server runs.
fn demo_campaign() -> Campaign {
    let text =
        std::fs::read_to_string(crate::common::repo().join("experiments/demo.toml")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let campaign = Campaign::of(&text, "results/demo", empty.path());
    fill_from_demo_result(&campaign, |server, cell, result| {
        // NVFP4 measured 25 % more output throughput than FP8 at every point.
        let speed = if server.precision == "nvfp4" {
            1.25
        } else {
            1.0
        };
        let s = &mut result.summary;
        s.output_tokens_per_s = s
            .output_tokens_per_s
            .map(|x| x * speed * f64::from(cell.load.concurrency));
    });
    campaign
}

#[test]
fn the_demo_compares_its_precisions_although_includes_set_their_speeds() {
    let campaign = demo_campaign();
    let files = campaign.render();
    let md = std::fs::read_to_string(&files.summary).unwrap();
    assert!(!md.contains("暂无可对比的数据"), "{md}");
    let ours = tables(&md);
    for (model, setup) in [
        (
            "Demo 14B：NVFP4 / FP8（sim）",
            "随精度设定的参数：NVFP4：decode_step_ms=4，prefill_tokens_per_s=50000；FP8：decode_step_ms=5，prefill_tokens_per_s=40000",
        ),
        (
            "Demo 32B：NVFP4 / FP8（sim）",
            "随精度设定的参数：NVFP4：decode_step_ms=7，prefill_tokens_per_s=26000；FP8：decode_step_ms=9，prefill_tokens_per_s=20000",
        ),
    ] {
        let t = ours
            .iter()
            .find(|t| t.heading == model)
            .unwrap_or_else(|| panic!("no table {model}"));
        let concs: Vec<&str> = t.rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(concs, ["1", "4", "16"], "{model}: every concurrency");
        let out = t.column("输出吞吐").unwrap();
        assert!(t.rows.iter().all(|r| r[out] == "1.250×"), "{:?}", t.rows);
        assert!(md.contains(setup), "{setup}");
    }
    // One engine only: no engine comparison section.
    assert!(!md.contains("引擎对比"));

    // The record labels each precision's parameters instead of listing them side by side.
    let record = std::fs::read_to_string(
        files
            .summary
            .parent()
            .unwrap()
            .join("records/demo-14b.zh.md"),
    )
    .unwrap();
    assert!(
        record.contains("- 关键参数：FP8：decode_step_ms=5，prefill_tokens_per_s=40000；FP4（NVFP4）：decode_step_ms=4，prefill_tokens_per_s=50000"),
        "{record}"
    );
    assert!(record.contains("## 精度对比（比值）") && record.contains("随精度设定的参数：NVFP4："));

    // Both precisions on the same axes, in both charts of each model.
    let svg = std::fs::read_to_string(
        files
            .summary
            .parent()
            .unwrap()
            .join("charts/demo-14b-by-concurrency.svg"),
    )
    .unwrap();
    assert!(svg.contains(">\nFP8\n<") || svg.contains("FP8"));
    assert!(svg.contains("NVFP4"));
    assert_eq!(svg.matches("<circle").count(), 2 * 3 * 3);
}

/// A model and precision measured on two engines gets an engine table; a variable an include sets for
/// one engine and precision (SGLang's FP8 KV cache) is listed under the tables it is tied to.
#[test]
fn engines_are_compared_where_a_model_and_precision_ran_on_two() {
    let text = r#"
title = "two engines"
results_dir = "results/two"
[engines.vllm]
preset = "sim"
command = "{{ runner }} sim --port {{ port }}"
[engines.sglang]
preset = "sim"
command = "{{ runner }} sim --port {{ port }}{% if kv_cache_dtype is defined %} --x {{ kv_cache_dtype }}{% endif %}"
[models.m]
input_tokens = 64
output_tokens = 8
[models.m.precisions]
fp8 = { path = "sim/m-fp8" }
nvfp4 = { path = "sim/m-nvfp4" }
[matrix]
model = "m"
precision = ["fp8", "nvfp4"]
engine = ["vllm", "sglang"]
concurrency = [1]
[[matrix.include]]
engine = "sglang"
precision = "fp8"
kv_cache_dtype = "fp8_e5m2"
"#;
    let empty = tempfile::tempdir().unwrap();
    let campaign = Campaign::of(text, "results/two", empty.path());
    fill_from_demo_result(&campaign, |_, _, _| {});
    let md = campaign.summary();
    assert!(md.contains("## 3D) 引擎对比（比值）"), "{md}");
    let ours = tables(&md);
    let headings: Vec<&str> = ours.iter().map(|t| t.heading.as_str()).collect();
    for h in [
        "m：NVFP4 / FP8（vllm）",
        "m：NVFP4 / FP8（sglang）",
        "m · FP8：sglang / vllm",
        "m · FP4 / NVFP4：sglang / vllm",
    ] {
        let t = ours
            .iter()
            .find(|t| t.heading == h)
            .unwrap_or_else(|| panic!("no table {h} in {headings:?}"));
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0][t.column("QPS").unwrap()], "1.000×");
    }
    assert!(
        md.contains("随精度设定的参数：NVFP4：kv_cache_dtype 未设置；FP8：kv_cache_dtype=fp8_e5m2")
    );
    assert!(md.contains(
        "随引擎设定的参数：sglang：kv_cache_dtype=fp8_e5m2；vllm：kv_cache_dtype 未设置"
    ));
}

/// Cost and energy per token from stored telemetry and `[cost]`, checked against figures worked out by
/// hand from the seed's measurements: Qwen 3 14B FP8 at c=40 made 1300 output tokens/s (17550 in all)
/// for 73.846 s; at 500 W that is 36 923 J over 96 000 output tokens.
#[test]
fn cost_and_energy_per_token_from_stored_telemetry_and_prices() {
    use runner::telemetry::{
        GpuFigures, GpuTelemetry, GpusHeld, ServerTimeline, SourceKind, Telemetry,
    };
    let campaign =
        Campaign::new("[cost]\nvm_hour = 10\nvm_gpus = 1\ncurrency = \"USD\"\nkwh = 0.2\n");
    let c40 = "qwen3-14b/fp8/vllm/c40";
    campaign.edit_result(c40, |cell| {
        let window = cell.summary.duration_s;
        cell.telemetry = Telemetry {
            gpus: Some(GpusHeld {
                count: 1,
                ids: vec!["0".into()],
                from: "all GPUs of the host".into(),
            }),
            gpu: Some(GpuTelemetry {
                source: SourceKind::Nvml,
                interval_ms: 250.0,
                window_s: window,
                total: GpuFigures {
                    energy_j: Some(500.0 * window),
                    power_mean_w: Some(500.0),
                    util_mean_pct: Some(97.5),
                    energy_method: Some(runner::telemetry::EnergyMethod::Counter),
                    ..GpuFigures::default()
                },
                devices: Vec::new(),
            }),
            ..Telemetry::default()
        };
    });
    // The seed's TTFT jump at c=200, with the server's timeline that explains it.
    campaign.edit_result("qwen3-14b/nvfp4/vllm/c200", |cell| {
        cell.telemetry.server = Some(ServerTimeline {
            interval_s: 1.0,
            samples: 60,
            peak_running: Some(57.0),
            peak_waiting: Some(143.0),
            peak_kv_usage: Some(1.0),
            ..ServerTimeline::default()
        });
    });
    let md = campaign.summary();

    // Summary table: cost per 1M output tokens = 10 USD/h / (1300 tok/s × 3600) × 10^6 = 2.137; J per
    // output token = 36 923 J / 96 000 = 0.385.
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.heading.starts_with("3.1 ")).unwrap();
    let row = t.row("40").unwrap();
    assert_eq!(
        row[t.column("每百万输出 token 成本 (USD)").unwrap()],
        "2.137"
    );
    assert_eq!(row[t.column("J/输出 token").unwrap()], "0.385");
    // Without telemetry the energy is unmeasured, never 0; the price still applies to the whole VM.
    let c10 = t.row("10").unwrap();
    assert_eq!(c10[t.column("J/输出 token").unwrap()], "—");
    assert_eq!(
        c10[t.column("每百万输出 token 成本 (USD)").unwrap()],
        "7.144"
    ); // 10/(388.8×3600)×10^6

    // Ratio table: NVFP4 over FP8 at c=40 costs 1300 / 1550.4 = 0.838×.
    let ratio = ours
        .iter()
        .find(|t| t.heading.contains("Qwen 3 14B：NVFP4 / FP8"))
        .unwrap();
    assert_eq!(
        ratio.row("40").unwrap()[ratio.column("每百万输出 token 成本").unwrap()],
        "0.838×"
    );
    assert!(md.contains("c=40：NVFP4 每百万输出 token 成本为 FP8 的 0.838×"));

    // The 成本与能耗 section: the prices, the cheapest configuration, the per-cell figures.
    assert!(md.contains("## 3F) 成本与能耗"), "{md}");
    assert!(md.contains("每 VM 小时 10 USD（1 块 GPU"));
    assert!(md.contains("**最便宜的配置**：") && md.contains("未设置 slo_ttft"));
    let cost = ours
        .iter()
        .find(|t| t.heading == "Qwen 3 14B" && t.column("J/token").is_some())
        .expect("the model's cost table");
    let fp8_40 = cost
        .rows
        .iter()
        .find(|r| r[0] == "FP8 · vllm" && r[1] == "40")
        .unwrap();
    let cell = |name: &str| fp8_40[cost.column(name).unwrap()].as_str();
    assert_eq!(cell("GPU 数"), "1");
    assert_eq!(cell("每百万 token 成本"), "0.158"); // 10/(17550×3600)×10^6
    assert_eq!(cell("J/token"), "0.028"); // 36 923 / (17550 × 73.846)
    assert_eq!(cell("kWh/百万输出 token"), "0.107"); // 0.385 J / 3.6e6 × 10^6
    assert_eq!(cell("电费/百万输出 token"), "0.021"); // 0.2 × 0.107
    assert_eq!(cell("平均功率 (W)"), "500.000");
    assert_eq!(cell("GPU 利用率"), "97.50%");
    // A cell without telemetry: whole VM charged, energy unmeasured.
    let fp8_10 = cost
        .rows
        .iter()
        .find(|r| r[0] == "FP8 · vllm" && r[1] == "10")
        .unwrap();
    assert_eq!(fp8_10[cost.column("GPU 数").unwrap()], "整机");
    assert_eq!(fp8_10[cost.column("平均功率 (W)").unwrap()], "—");

    // The TTFT jump at c=200 is explained by the timeline; one without a timeline says it cannot be.
    assert!(
        md.contains("c=200：TTFT 9146.")
            && md.contains("KV cache 峰值 100.00%，最多 143 个请求排队"),
        "{md}"
    );
    assert!(md.contains("KV cache 已满"));

    // cells.csv: the figures at full precision, empty where unmeasured.
    let rows = csv_rows(&campaign.store.root.join("cells.csv"));
    let find = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap();
    let r40 = find(c40);
    let close = |field: &str, want: f64| {
        let got: f64 = r40[field].parse().unwrap();
        assert!(
            (got - want).abs() < 1e-9 * want.max(1.0),
            "{field}: {got} vs {want}"
        );
    };
    close("cost_per_1m_output_tokens", 10.0 / (1300.0 * 3600.0) * 1e6);
    close("j_per_output_token", 500.0 / 1300.0);
    close(
        "electricity_cost_per_1m_output_tokens",
        0.2 * 500.0 / 1300.0 / 3.6,
    );
    assert_eq!(r40["currency"], "USD");
    assert_eq!(r40["gpu_telemetry_source"], "NVML");
    let r10 = find("qwen3-14b/fp8/vllm/c10");
    assert_eq!(r10["energy_j"], "");
    assert_eq!(r10["gpus"], "");
    assert_eq!(
        find("qwen3-14b/nvfp4/vllm/c200")["server_peak_waiting"],
        "143"
    );
}

/// Without telemetry or `[cost]` the report says so, and adds no empty columns.
#[test]
fn without_telemetry_or_prices_the_report_says_so() {
    let md = Campaign::new("").summary();
    assert!(md.contains("成本与能耗"));
    assert!(md.contains("无 GPU 遥测"));
    assert!(md.contains("未设置 [cost]"));
    let ours = tables(&md);
    let t = ours.iter().find(|t| t.heading.starts_with("3.1 ")).unwrap();
    assert_eq!(
        t.column("J/输出 token"),
        None,
        "no energy column without telemetry"
    );
    assert!(!md.contains("每百万输出 token 成本 ("));
}

/// Every headline figure of `s` times `f` (what another repeat of the same point might measure).
fn scaled(s: &runner::stats::Summary, f: f64) -> runner::stats::Summary {
    let mut s = s.clone();
    for x in [
        &mut s.qps,
        &mut s.prompt_tps,
        &mut s.decode_tps,
        &mut s.output_tokens_per_s,
    ] {
        *x = x.map(|v| v * f);
    }
    for d in [&mut s.ttft_ms, &mut s.e2e_ms, &mut s.tpot_ms]
        .into_iter()
        .flatten()
    {
        d.mean *= f;
    }
    s
}

/// Turns a stored cell into one measured three times, each repeat's figures its own times `factors`.
fn repeat_cell(campaign: &Campaign, id: &str, factors: [f64; 3]) {
    campaign.edit_result(id, |c| {
        let repeats = factors
            .iter()
            .enumerate()
            .map(|(i, f)| runner::store::RepeatResult {
                schema: runner::store::Schema::default(),
                repeat: i as u32 + 1,
                hash: format!("r{i}"),
                summary: scaled(&c.summary, *f),
                server_metrics: c.server_metrics.clone(),
                telemetry: c.telemetry.clone(),
                command: c.command.clone(),
                engine_version: c.engine_version.clone(),
                started_at: c.started_at.clone(),
                finished_at: c.finished_at.clone(),
            })
            .collect();
        runner::repeat::combine_into(c, repeats);
    });
}

#[test]
fn repeated_cells_show_intervals_and_ratios_say_where_the_difference_is_not_significant() {
    use runner::report::metric::Metric;
    use runner::stats::interval::Interval;
    let campaign = Campaign::new("");
    // FP8 at c=10 spread ±10 % over its repeats (a wide interval), NVFP4 tight: the figures whose ratio
    // is near 1 overlap, the others do not.
    let (fp8, nvfp4) = ("qwen3-14b/fp8/vllm/c10", "qwen3-14b/nvfp4/vllm/c10");
    repeat_cell(&campaign, fp8, [0.9, 1.0, 1.1]);
    repeat_cell(&campaign, nvfp4, [0.999, 1.0, 1.001]);
    let stored = campaign.store.read_cells().unwrap().cells;
    let cell = |id: &str| stored.iter().find(|c| c.id == id).unwrap().clone();
    let (a, b) = (cell(fp8), cell(nvfp4));
    assert_eq!(a.repeats.len(), 3, "the repeats survive the store");
    // The expectation from the interval function alone (unit-tested on its own).
    let interval = |c: &CellResult, m: Metric| {
        let values: Vec<f64> = c
            .repeats
            .iter()
            .map(|r| m.of(&r.summary).unwrap())
            .collect();
        Interval::of(&values).unwrap()
    };
    let overlapping: Vec<&str> = Metric::ALL
        .into_iter()
        .filter(|m| interval(&a, *m).overlaps(&interval(&b, *m)))
        .map(Metric::label)
        .collect();
    assert!(
        !overlapping.is_empty() && overlapping.len() < Metric::ALL.len(),
        "the case needs both kinds: {overlapping:?}"
    );

    let md = campaign.summary();
    let ours = tables(&md);
    // The table row: mean ± half-width of the headline columns; the others as ever.
    let t = ours.iter().find(|t| t.number() == "3.1").unwrap();
    let row = t.row("10").unwrap();
    let qps = interval(&a, Metric::Qps);
    assert_eq!(
        row[t.column("QPS").unwrap()].trim_end_matches(" ⚠"),
        format!("{:.3} ± {:.3}", qps.mean, qps.half_width)
    );
    assert!(row[t.column("TTFT (ms)").unwrap()].contains(" ± "));
    assert!(!row[t.column("实际 Output tokens").unwrap()].contains('±'));
    assert!(
        !t.row("1").unwrap()[t.column("QPS").unwrap()].contains('±'),
        "measured once"
    );
    assert!(md.contains("**重复测量与置信区间**") && md.contains("**差异不显著**"));

    // The ratio row names exactly the overlapping figures; rows measured once say nothing of it.
    let r = ours
        .iter()
        .find(|t| t.heading.starts_with("Qwen 3 14B：NVFP4 / FP8"))
        .unwrap();
    let note = &r.row("10").unwrap()[r.column("说明").unwrap()];
    assert!(
        note.starts_with(&format!("差异不显著：{}；⚠", overlapping.join("、"))),
        "{note}"
    );
    assert!(!r.row("40").unwrap()[r.column("说明").unwrap()].contains("显著"));
    // The same rule in the record.
    let record =
        std::fs::read_to_string(campaign.store.root.join("report/records/qwen3-14b.zh.md"))
            .unwrap();
    assert!(record.contains(&format!("差异不显著：{}", overlapping.join("、"))));

    // cells.csv: the repeat count and the interval's ends, empty for a point measured once.
    let rows = csv_rows(&campaign.store.root.join("cells.csv"));
    let by_id = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(by_id(fp8)["repeats"], "3");
    assert_eq!(by_id(fp8)["qps_ci95_lo"].parse::<f64>().unwrap(), qps.lo);
    assert_eq!(by_id(fp8)["qps_ci95_hi"].parse::<f64>().unwrap(), qps.hi);
    let once = by_id("qwen3-14b/fp8/vllm/c1");
    assert_eq!(
        (once["repeats"].as_str(), once["qps_ci95_lo"].as_str()),
        ("1", "")
    );

    // The charts carry error bars where a cell was measured several times.
    let svg = std::fs::read_to_string(
        campaign
            .store
            .root
            .join("report/charts/qwen3-14b-by-concurrency.svg"),
    )
    .unwrap();
    assert!(
        svg.lines()
            .any(|l| l.starts_with("<line") && l.contains("#1F77B4")),
        "FP8's bars"
    );
    assert!(md.contains("重复测量的点带误差线"));

    // `runner compare` of the run with itself: every figure of the repeated cells is within the noise.
    let run = || {
        report::compare::Run::read("x".into(), campaign.store.root.clone(), 0.1)
            .unwrap()
            .unwrap()
    };
    let cmp = report::compare::compare(&run(), &run(), &[]);
    assert!(cmp.repeated);
    let same = cmp.cells.iter().find(|c| c.id == fp8).unwrap();
    assert_eq!(same.row.not_significant.len(), Metric::ALL.len());
    assert!(
        same.row.note.starts_with("各项差异均不显著"),
        "{}",
        same.row.note
    );
    assert!(same.a_interval["qps"].is_some());
    let once = cmp
        .cells
        .iter()
        .find(|c| c.id == "qwen3-14b/fp8/vllm/c1")
        .unwrap();
    assert!(once.row.not_significant.is_empty() && once.a_interval["qps"].is_none());
    let text = report::compare::markdown(&cmp).unwrap();
    assert!(
        text.contains("两侧区间重叠的指标，“说明”列写“差异不显著”"),
        "{text}"
    );
    assert!(text.contains(&format!("{:.3} ± {:.3}", qps.mean, qps.half_width)));
}
