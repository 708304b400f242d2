//! One ratio row between two measured cells (NVFP4 / FP8, SGLang / vLLM, run B / run A): the headline
//! figures divided, and every reason the division may mislead.
//!
//! Invariant: a ratio is only as good as both rows. The row carries a ⚠ with the reasons whenever either
//! side has a caveat (see [`super::caveat`]), when the prefix-cache hit rate is known on one side only (a
//! cached prefill against a real one cannot be ruled out), when a figure was not measured on a side (its
//! ratio is `—`), or when the two ran under different load settings.
//!
//! Where both cells were measured several times, the row also names the figures whose 95 % intervals
//! overlap: 差异不显著 (see [`Metric::not_significant`]). Where either side was measured once it says
//! nothing about significance.

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
    /// `差异不显著：…` for figures whose intervals overlap, then `⚠ ` and the reasons the ratio may
    /// mislead; empty when there is nothing to say.
    pub note: String,
    pub warn: bool,
    /// Keys of the figures whose difference is not significant (both sides repeated, intervals overlap).
    pub not_significant: Vec<&'static str>,
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
    let overlapping: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| m.not_significant(num.result, den.result) == Some(true))
        .collect();
    let mut note = Vec::new();
    if let Some(text) = significance(&overlapping) {
        note.push(text);
    }
    if !reasons.is_empty() {
        note.push(format!("⚠ {}", reasons.join("；")));
    }
    RatioRow {
        concurrency,
        warn: !reasons.is_empty(),
        not_significant: overlapping.iter().map(|m| m.key()).collect(),
        note: format::cell_text(&note.join("；")),
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

/// What a ratio row says about the figures whose intervals overlap: `差异不显著：QPS、TTFT`, or
/// `各项差异均不显著` for all of them; `None` for none.
pub fn significance(overlapping: &[Metric]) -> Option<String> {
    match overlapping.len() {
        0 => None,
        n if n == Metric::ALL.len() => Some("各项差异均不显著".to_string()),
        _ => Some(format!(
            "差异不显著：{}",
            overlapping
                .iter()
                .map(|m| m.label())
                .collect::<Vec<_>>()
                .join("、")
        )),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::metric::tests::repeated;

    fn side<'a>(label: &str, result: &'a CellResult) -> Side<'a> {
        Side {
            label: label.into(),
            result,
            caveats: Vec::new(),
            load: Vec::new(),
        }
    }

    #[test]
    fn a_row_says_not_significant_exactly_where_the_intervals_overlap() {
        let base = repeated(&[Some(790.0), Some(800.0), Some(810.0)]); // 800 ± 24.8
        let near = repeated(&[Some(810.0), Some(820.0), Some(830.0)]); // overlaps
        let far = repeated(&[Some(890.0), Some(900.0), Some(910.0)]); // does not
        let once = repeated(&[Some(820.0)]);

        let row = row("1".into(), &side("B", &near), &side("A", &base));
        // QPS is 1.0 in every repeat (a zero-width interval on both sides: they touch, so overlap);
        // output throughput overlaps; the rest was not measured.
        assert_eq!(row.not_significant, ["qps", "output_tps"]);
        assert!(
            row.note.starts_with("差异不显著：QPS、输出吞吐"),
            "{}",
            row.note
        );
        assert_eq!(row.output_tps, "1.025×", "the ratio is printed as ever");

        let row2 = super::row("1".into(), &side("B", &far), &side("A", &base));
        assert_eq!(row2.not_significant, ["qps"]);
        assert!(!row2.note.contains("输出吞吐"), "{}", row2.note);

        // One side measured once: nothing about significance, whatever the numbers.
        let row3 = super::row("1".into(), &side("B", &once), &side("A", &base));
        assert!(row3.not_significant.is_empty());
        assert!(!row3.note.contains("显著"), "{}", row3.note);
    }

    #[test]
    fn all_figures_within_the_noise_read_as_one_phrase() {
        assert_eq!(
            significance(&Metric::ALL),
            Some("各项差异均不显著".to_string())
        );
        assert_eq!(significance(&[]), None);
        assert_eq!(
            significance(&[Metric::Ttft, Metric::Tpot]).as_deref(),
            Some("差异不显著：TTFT、TPOT")
        );
    }
}
