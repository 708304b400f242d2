//! The headline figures of a cell: the seed's columns that tables, ratios, charts and `runner compare`
//! all show, with their names, their good direction and where each comes from in a [`Summary`].
//!
//! Invariants: a figure that was not measured is `None` here and prints as `—` (never 0); every place that
//! prints a headline figure goes through [`Metric::headline`], and every ratio through [`Metric::ratio`],
//! so that when a point is measured several times (repeats) the one function can print "mean ± CI"
//! everywhere at once.

use super::format;
use crate::stats::{Dist, Summary};

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

    /// The figure as a table prints it: three decimals, `—` when not measured.
    pub fn headline(self, s: &Summary) -> String {
        format::opt3(self.of(s))
    }

    /// `numerator / denominator`; `None` when either side was not measured or the denominator is 0.
    pub fn ratio(self, numerator: &Summary, denominator: &Summary) -> Option<f64> {
        let (n, d) = (self.of(numerator)?, self.of(denominator)?);
        let r = n / d;
        r.is_finite().then_some(r)
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(Metric::OutputTps.headline(&none), "—");
    }
}
