//! Confidence intervals over repeated measurements of one load point: Student's t quantiles, the 95 %
//! interval of a mean, and the overlap rule the report uses to say that a difference is not significant.
//! Pure functions.
//!
//! Invariants:
//! - An interval needs at least two finite values: with one measurement there is no spread to estimate,
//!   so there is no interval (`None`), never a zero-width one.
//! - The spread is the sample standard deviation (n − 1 in the denominator), as an interval estimate of
//!   the mean needs; the per-request statistics of a summary keep the population one (see
//!   [`super::Dist`]).
//! - Two figures differ significantly here only when their intervals do not overlap. That is stricter
//!   than a two-sample t test (intervals may overlap a little while the test would still reject), so
//!   "not significant" errs on the side of caution, which is what a reader of a ratio table needs.

use serde::Serialize;

/// The confidence level of every interval the runner reports.
pub const CONFIDENCE: f64 = 0.95;

/// The mean of repeated measurements with its two-sided [`CONFIDENCE`] interval, by Student's t:
/// `mean ± t(1 − α/2, n − 1) · s / √n`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Number of measurements (at least 2).
    pub n: u32,
    pub mean: f64,
    /// Half the interval's width (the `±`).
    pub half_width: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// The interval of the mean of `values`; `None` with fewer than two values or any that is not finite
    /// (a figure one repeat lacks makes the whole interval unknown, not narrower).
    pub fn of(values: &[f64]) -> Option<Interval> {
        let n = values.len();
        if n < 2 || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let n_f = n as f64;
        let mean = values.iter().sum::<f64>() / n_f;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n_f - 1.0);
        let df = u32::try_from(n - 1).ok()?;
        let half_width = t_quantile(1.0 - (1.0 - CONFIDENCE) / 2.0, df) * (var / n_f).sqrt();
        Some(Interval {
            n: u32::try_from(n).ok()?,
            mean,
            half_width,
            lo: mean - half_width,
            hi: mean + half_width,
        })
    }

    /// Whether the two intervals share at least one value (touching counts as overlapping).
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

/// The `p`-quantile of Student's t distribution with `df` degrees of freedom (`df` ≥ 1): the `t` with
/// `P(T ≤ t) = p`. Computed, not tabulated: the distribution function for whole degrees of freedom has a
/// closed form (below), which is inverted by bisection to full double precision.
pub fn t_quantile(p: f64, df: u32) -> f64 {
    if p.is_nan() || df == 0 {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    if p == 0.5 {
        return 0.0;
    }
    // P(|T| ≤ t) = 2p − 1, increasing in t: bracket it, then halve the bracket.
    let target = 2.0 * p - 1.0;
    let mut hi = 1.0;
    while central_probability(hi, df) < target {
        hi *= 2.0;
        if !hi.is_finite() {
            return f64::INFINITY;
        }
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if central_probability(mid, df) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `P(|T| ≤ t)` for Student's t with whole `df` (≥ 1) degrees of freedom and `t` ≥ 0, with
/// `θ = atan(t / √df)` (Abramowitz & Stegun 26.7.3 and 26.7.4):
/// - odd `df`: `2/π · (θ + sin θ · (cos θ + 2/3 cos³θ + … + 2·4…(df−3) / (1·3…(df−2)) cos^(df−2) θ))`
///   (just `2θ/π` for `df` = 1);
/// - even `df`: `sin θ · (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + … + 1·3…(df−3) / (2·4…(df−2)) cos^(df−2) θ)`.
///
/// Each term is the previous one times `cos²θ · (k − 1) / k`, so the sum is built without factorials.
fn central_probability(t: f64, df: u32) -> f64 {
    let theta = (t / f64::from(df).sqrt()).atan();
    let (sin, cos) = theta.sin_cos();
    let cos2 = cos * cos;
    let series = |first: f64, from: u32| {
        let (mut term, mut sum) = (first, first);
        let mut k = from;
        while k + 2 <= df {
            term *= cos2 * f64::from(k - 1) / f64::from(k);
            sum += term;
            k += 2;
        }
        sum
    };
    if df % 2 == 1 {
        let inner = if df == 1 { 0.0 } else { series(cos, 3) };
        2.0 / std::f64::consts::PI * (theta + sin * inner)
    } else {
        sin * series(1.0, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Two-sided 95 % (p = 0.975) from any t table, and a few other levels.
        for (p, df, want) in [
            (0.975, 1, 12.7062),
            (0.975, 2, 4.3027),
            (0.975, 3, 3.1824),
            (0.975, 4, 2.7764),
            (0.975, 5, 2.5706),
            (0.975, 9, 2.2622),
            (0.975, 10, 2.2281),
            (0.975, 29, 2.0452),
            (0.975, 30, 2.0423),
            (0.975, 99, 1.9842),
            (0.95, 4, 2.1318),
            (0.995, 9, 3.2498),
            (0.9, 1, 3.0777),
        ] {
            let got = t_quantile(p, df);
            assert!(
                (got - want).abs() < 5e-5,
                "t({p}, {df}) = {got}, want {want}"
            );
        }
        // The three the issue names, to the printed digits.
        assert_eq!(format!("{:.3}", t_quantile(0.975, 2)), "4.303");
        assert_eq!(format!("{:.3}", t_quantile(0.975, 4)), "2.776");
        assert_eq!(format!("{:.3}", t_quantile(0.975, 9)), "2.262");
        // Symmetry, the median, and the normal limit.
        assert!((t_quantile(0.025, 4) + t_quantile(0.975, 4)).abs() < 1e-12);
        assert_eq!(t_quantile(0.5, 7), 0.0);
        assert!((t_quantile(0.975, 100_000) - 1.95996).abs() < 1e-4);
        assert!(t_quantile(0.975, 0).is_nan());
    }

    #[test]
    fn the_closed_forms_are_the_distribution() {
        // df = 2 has the textbook form t / √(2 + t²); df = 1 is the Cauchy distribution.
        for t in [0.1f64, 1.0, 4.303, 30.0] {
            let two = t / (2.0 + t * t).sqrt();
            assert!((central_probability(t, 2) - two).abs() < 1e-12);
            let one = 2.0 / std::f64::consts::PI * t.atan();
            assert!((central_probability(t, 1) - one).abs() < 1e-12);
        }
        assert_eq!(central_probability(0.0, 5), 0.0);
    }

    #[test]
    fn interval_of_a_mean() {
        // Three repeats 10, 12, 14: mean 12, s = 2, half-width 4.303 · 2 / √3 = 4.9686.
        let i = Interval::of(&[10.0, 12.0, 14.0]).unwrap();
        assert_eq!((i.n, i.mean), (3, 12.0));
        assert!((i.half_width - 4.302_652_7 * 2.0 / 3f64.sqrt()).abs() < 1e-6);
        assert!((i.lo - (12.0 - i.half_width)).abs() < 1e-12);
        assert!((i.hi - (12.0 + i.half_width)).abs() < 1e-12);
        // Identical repeats: a measured spread of zero.
        let same = Interval::of(&[5.0, 5.0]).unwrap();
        assert_eq!((same.half_width, same.lo, same.hi), (0.0, 5.0, 5.0));
        // One measurement has no interval; an unknown figure makes it unknown.
        assert_eq!(Interval::of(&[5.0]), None);
        assert_eq!(Interval::of(&[]), None);
        assert_eq!(Interval::of(&[5.0, f64::NAN]), None);
    }

    #[test]
    fn overlap_is_the_significance_rule() {
        let a = Interval::of(&[10.0, 11.0, 12.0]).unwrap(); // 11 ± 2.48
        let near = Interval::of(&[12.0, 13.0, 14.0]).unwrap(); // 13 ± 2.48: overlaps
        let far = Interval::of(&[20.0, 21.0, 22.0]).unwrap(); // 21 ± 2.48: does not
        assert!(a.overlaps(&near) && near.overlaps(&a));
        assert!(!a.overlaps(&far) && !far.overlaps(&a));
        // Touching counts as overlapping; a point interval inside another overlaps it.
        let touch = Interval {
            n: 2,
            mean: a.hi + 2.0,
            half_width: 2.0,
            lo: a.hi,
            hi: a.hi + 4.0,
        };
        assert!(a.overlaps(&touch));
        let point = Interval::of(&[11.0, 11.0]).unwrap();
        assert!(point.overlaps(&a));
    }
}
