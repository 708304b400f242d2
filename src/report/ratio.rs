//! One ratio row between two measured cells (NVFP4 / FP8, SGLang / vLLM, run B / run A): the headline
//! figures divided, and every reason the division may mislead.
//!
//! Invariant: a ratio is only as good as both rows. The row carries a ⚠ with the reasons whenever either
//! side has a caveat (see [`super::caveat`]), when the prefix-cache hit rate is known on one side only (a
//! cached prefill against a real one cannot be ruled out), when a figure was not measured on a side (its
//! ratio is `—`), or when the two ran under different load settings.

use serde::Serialize;

use super::caveat::Caveat;
use super::format::{self, NONE};
use super::metric::Metric;
use crate::store::CellResult;

/// One side of a ratio.
pub struct Side<'a> {
    /// How the row names this side (`FP8`, `sglang`, `B`).
    pub label: String,
    pub result: &'a CellResult,
    pub caveats: Vec<Caveat>,
    /// The load settings a reader must know to compare (`max_inflight=24`), as printed; equal lists mean
    /// equal load.
    pub load: Vec<String>,
}

/// A row of a ratio table: numerator / denominator for each headline figure, `—` where either side was
/// not measured.
#[derive(Debug, Clone, Serialize)]
pub struct RatioRow {
    pub concurrency: String,
    /// `⚠ ` and the reasons the ratio may mislead, or empty.
    pub note: String,
    pub warn: bool,
    pub qps: String,
    pub prompt_tps: String,
    pub decode_tps: String,
    pub output_tps: String,
    pub ttft: String,
    pub e2e: String,
    pub tpot: String,
    /// Cost per 1M output tokens, when the caller prices both sides (see `super::cost`); `—` otherwise.
    pub cost_out: String,
}

/// The row comparing `num` with `den` (`num / den`).
pub fn row(concurrency: String, num: &Side, den: &Side) -> RatioRow {
    let reasons = reasons(num, den);
    let r = |m: Metric| {
        m.ratio(&num.result.summary, &den.result.summary)
            .map_or_else(|| NONE.to_string(), format::ratio)
    };
    RatioRow {
        concurrency,
        warn: !reasons.is_empty(),
        note: if reasons.is_empty() {
            String::new()
        } else {
            format::cell_text(&format!("⚠ {}", reasons.join("；")))
        },
        qps: r(Metric::Qps),
        prompt_tps: r(Metric::PromptTps),
        decode_tps: r(Metric::DecodeTps),
        output_tps: r(Metric::OutputTps),
        ttft: r(Metric::Ttft),
        e2e: r(Metric::E2e),
        tpot: r(Metric::Tpot),
        cost_out: NONE.to_string(),
    }
}

/// Why `num / den` may mislead, one entry per reason: different load first, then each side's problems.
pub fn reasons(num: &Side, den: &Side) -> Vec<String> {
    let mut out = Vec::new();
    // A ratio is only fair under the same load; say so where it is not (the seed compared a run capped
    // at 24 in flight with an uncapped one).
    if num.load != den.load {
        out.push(format!(
            "负载设置不同：{} vs {}",
            only_in(&num.load, &den.load),
            only_in(&den.load, &num.load)
        ));
    }
    for (side, other) in [(den, num), (num, den)] {
        let mut items: Vec<String> = side.caveats.iter().map(|c| c.short.clone()).collect();
        let rate = |s: &Side| s.result.server_metrics.prefix_cache_hit_rate;
        if rate(side).is_none() && rate(other).is_some() {
            items.push("前缀缓存命中率未知".into());
        }
        let missing: Vec<&str> = Metric::ALL
            .into_iter()
            .filter(|m| m.of(&side.result.summary).is_none())
            .map(Metric::label)
            .collect();
        if !missing.is_empty() {
            items.push(format!("未测得 {}", missing.join("、")));
        }
        if !items.is_empty() {
            out.push(format!("{}：{}", side.label, items.join("，")));
        }
    }
    out
}

/// The load settings of `a` that `b` does not have, as a reader sees them (`max_inflight=24`), or 无.
pub fn only_in(a: &[String], b: &[String]) -> String {
    let v: Vec<&str> = a
        .iter()
        .filter(|x| !b.contains(x))
        .map(String::as_str)
        .collect();
    if v.is_empty() {
        "无".to_string()
    } else {
        v.join("，")
    }
}
