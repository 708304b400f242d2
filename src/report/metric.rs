//! The headline figures of a cell: the seed's columns that tables, ratios, charts and `runner compare`
//! all show, with their names, their good direction and where each comes from in a [`Summary`].
//!
//! Invariants: a figure that was not measured is `None` here and prints as `—` (never 0); every place that
//! prints a headline figure goes through [`Metric::headline`], and every ratio through [`Metric::ratio`],
//! so that a point measured several times (repeats) prints as "mean ± half-width" everywhere at once.
//! A cell's figure is its summary's (for a repeated cell, the mean over repeats); its interval comes
//! from the repeats' own figures ([`Metric::interval`]), and two cells' difference is called not
//! significant exactly when both have an interval and the two overlap ([`Metric::not_significant`]).

use super::format;
use crate::stats::interval::Interval;
use crate::stats::{Dist, Summary};
use crate::store::CellResult;

/// One headline figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Qps,
    PromptTps,
    DecodeTps,
    OutputTps,
    Ttft,
    E2e,
    Tpot,
}

impl Metric {
    /// Every headline figure, in the order ratio tables print them.
    pub const ALL: [Metric; 7] = [
        Metric::Qps,
        Metric::PromptTps,
        Metric::DecodeTps,
        Metric::OutputTps,
        Metric::Ttft,
        Metric::E2e,
        Metric::Tpot,
    ];

    /// The name scripts use (`--fail-if "output_tps < 0.95"`, JSON keys).
    pub fn key(self) -> &'static str {
        match self {
            Metric::Qps => "qps",
            Metric::PromptTps => "prompt_tps",
            Metric::DecodeTps => "decode_tps",
            Metric::OutputTps => "output_tps",
            Metric::Ttft => "ttft",
            Metric::E2e => "e2e",
            Metric::Tpot => "tpot",
        }
    }

    /// The column name in the report's ratio tables.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Qps => "QPS",
            Metric::PromptTps => "Prompt TPS",
            Metric::DecodeTps => "Decode TPS",
            Metric::OutputTps => "输出吞吐",
            Metric::Ttft => "TTFT",
            Metric::E2e => "E2E",
            Metric::Tpot => "TPOT",
        }
    }

    /// Throughputs and speeds are better higher, latencies lower.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Qps | Metric::PromptTps | Metric::DecodeTps | Metric::OutputTps
        )
    }

    pub fn parse(key: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.key() == key)
    }

    /// The measured value (latencies are means over the successful requests, in ms).
    pub fn of(self, s: &Summary) -> Option<f64> {
        match self {
            Metric::Qps => s.qps,
            Metric::PromptTps => s.prompt_tps,
            Metric::DecodeTps => s.decode_tps,
            Metric::OutputTps => s.output_tokens_per_s,
            Metric::Ttft => Dist::mean_of(&s.ttft_ms),
            Metric::E2e => Dist::mean_of(&s.e2e_ms),
            Metric::Tpot => Dist::mean_of(&s.tpot_ms),
        }
    }

    /// The 95 % confidence interval of the cell's figure over its repeats; `None` for a cell measured
    /// once, or when a repeat lacks the figure.
    pub fn interval(self, c: &CellResult) -> Option<Interval> {
        if c.repeats.len() < 2 {
            return None;
        }
        let values: Option<Vec<f64>> = c.repeats.iter().map(|r| self.of(&r.summary)).collect();
        Interval::of(&values?)
    }

    /// The figure as a table prints it: three decimals, `—` when not measured, and `± half-width` of its
    /// 95 % interval when the cell was measured several times (`2.431 ± 0.052`).
    pub fn headline(self, c: &CellResult) -> String {
        let value = format::opt3(self.of(&c.summary));
        match (self.of(&c.summary), self.interval(c)) {
            (Some(_), Some(i)) => format!("{value} ± {}", format::fixed3(i.half_width)),
            _ => value,
        }
    }

    /// Whether the difference between two cells' figures is within the noise: `Some(true)` when both
    /// were measured several times and their intervals overlap, `Some(false)` when they do not, `None`
    /// (nothing to say) unless both sides have an interval.
    pub fn not_significant(self, a: &CellResult, b: &CellResult) -> Option<bool> {
        Some(self.interval(a)?.overlaps(&self.interval(b)?))
    }

    /// `numerator / denominator`; `None` when either side was not measured or the denominator is 0.
    pub fn ratio(self, numerator: &Summary, denominator: &Summary) -> Option<f64> {
        let (n, d) = (self.of(numerator)?, self.of(denominator)?);
        let r = n / d;
        r.is_finite().then_some(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_directions() {
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.key()), Some(m));
        }
        assert_eq!(Metric::parse("throughput"), None);
        assert!(Metric::OutputTps.higher_is_better());
        assert!(!Metric::Ttft.higher_is_better());
    }

    #[test]
    fn a_ratio_needs_both_sides_measured() {
        let a = Summary {
            output_tokens_per_s: Some(800.0),
            ..Summary::default()
        };
        let b = Summary {
            output_tokens_per_s: Some(400.0),
            ..Summary::default()
        };
        let none = Summary::default();
        assert_eq!(Metric::OutputTps.ratio(&b, &a), Some(0.5));
        assert_eq!(Metric::OutputTps.ratio(&none, &a), None);
        assert_eq!(Metric::OutputTps.ratio(&a, &none), None);
        let zero = Summary {
            output_tokens_per_s: Some(0.0),
            ..Summary::default()
        };
        assert_eq!(Metric::OutputTps.ratio(&a, &zero), None, "no ∞×");
    }

    /// A cell whose repeats measured these output throughputs (one repeat: a single measurement).
    pub(crate) fn repeated(outputs: &[Option<f64>]) -> CellResult {
        let summaries: Vec<Summary> = outputs
            .iter()
            .map(|o| Summary {
                output_tokens_per_s: *o,
                qps: Some(1.0),
                ..Summary::default()
            })
            .collect();
        let mut cell: CellResult = serde_json::from_value(serde_json::json!({
            "id": "m/fp8/sim/c1", "hash": "h", "server_id": "s", "server_hash": "sh",
            "model": "m", "precision": "fp8", "engine": "sim", "vars": {}, "load": {},
            "summary": summaries[0].clone(), "started_at": "", "finished_at": ""
        }))
        .unwrap();
        if summaries.len() > 1 {
            let repeats = summaries
                .into_iter()
                .enumerate()
                .map(|(i, summary)| crate::store::RepeatResult {
                    schema: crate::store::Schema::default(),
                    repeat: i as u32 + 1,
                    hash: format!("r{i}"),
                    summary,
                    server_metrics: Default::default(),
                    telemetry: Default::default(),
                    command: String::new(),
                    engine_version: None,
                    started_at: String::new(),
                    finished_at: String::new(),
                })
                .collect();
            crate::repeat::combine_into(&mut cell, repeats);
        }
        cell
    }

    #[test]
    fn repeated_cells_print_mean_and_half_width() {
        let once = repeated(&[Some(800.0)]);
        assert_eq!(Metric::OutputTps.headline(&once), "800.000");
        assert_eq!(Metric::OutputTps.interval(&once), None);
        // 790, 800, 810: mean 800, s = 10, 4.3027 · 10 / √3 = 24.841.
        let three = repeated(&[Some(790.0), Some(800.0), Some(810.0)]);
        assert_eq!(Metric::OutputTps.headline(&three), "800.000 ± 24.841");
        // Identical repeats: a measured zero spread, printed.
        assert_eq!(Metric::Qps.headline(&three), "1.000 ± 0.000");
        // Unmeasured stays —, with no interval.
        let lacking = repeated(&[Some(790.0), None]);
        assert_eq!(Metric::OutputTps.headline(&lacking), "—");
        assert_eq!(Metric::Ttft.headline(&three), "—");
    }

    #[test]
    fn not_significant_exactly_when_both_intervals_overlap() {
        let a = repeated(&[Some(790.0), Some(800.0), Some(810.0)]); // 800 ± 24.8
        let near = repeated(&[Some(810.0), Some(820.0), Some(830.0)]); // 820 ± 24.8
        let far = repeated(&[Some(890.0), Some(900.0), Some(910.0)]); // 900 ± 24.8
        let once = repeated(&[Some(1000.0)]);
        assert_eq!(Metric::OutputTps.not_significant(&near, &a), Some(true));
        assert_eq!(Metric::OutputTps.not_significant(&far, &a), Some(false));
        assert_eq!(
            Metric::OutputTps.not_significant(&once, &a),
            None,
            "one side once"
        );
        assert_eq!(Metric::OutputTps.not_significant(&a, &once), None);
        assert_eq!(
            Metric::Ttft.not_significant(&near, &a),
            None,
            "not measured"
        );
    }
}
