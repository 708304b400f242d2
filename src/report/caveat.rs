//! Why a measured cell's numbers may mislead: the one place that decides it, so the table row (a ⚠ beside
//! the number and a sentence under the table), the ratio rows that use the cell and `runner compare` all
//! say the same thing.
//!
//! Invariant: every check reads only the stored result and the settings it ran with; a cell without a
//! caveat is one whose figures can be compared as they are.

use super::format;
use crate::stats::{Summary, TokenCheck};
use crate::store::CellResult;

/// What is wrong, which also says where the table puts its ⚠.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Prefix-cache hit rate above the threshold: TTFT and Prompt TPS look better than a real prefill.
    HitRate,
    /// Input token counts differ from the request or were not reported.
    Input,
    /// Output token counts differ from the request or were not reported.
    Output,
    /// Some requests failed: latencies and QPS cover the successful ones only.
    Failed,
    /// The client's runtime ran late: TTFT/TPOT may be inflated by the client.
    Saturated,
    /// The client never had as many requests in flight as asked.
    Underloaded,
    /// The result was measured with settings other than the plan's.
    Changed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Caveat {
    pub kind: Kind,
    /// A few words for a ratio row (`前缀缓存命中率 96.62%（高于 10.00%）`).
    pub short: String,
    /// The sentence under the table.
    pub text: String,
}

/// The settings a caveat check needs besides the result itself.
pub struct Context<'a> {
    /// Requests the client should have had in flight at its peak (see [`expected_inflight`]).
    pub expected_inflight: u32,
    /// `[report] prefix_cache_warn_above`.
    pub threshold: f64,
    /// The plan's settings hash for the cell, when there is a plan to compare with.
    pub plan_hash: Option<&'a str>,
}

/// The peak in-flight count a closed loop should reach: the concurrency, unless an explicit cap or the
/// number of requests is lower.
pub fn expected_inflight(concurrency: u32, max_inflight: Option<u32>, requests: u32) -> u32 {
    concurrency
        .min(max_inflight.unwrap_or(u32::MAX))
        .min(requests)
}

/// Every caveat of a measured cell, in the order the table lists them.
pub fn of_cell(result: &CellResult, ctx: &Context) -> Vec<Caveat> {
    let s = &result.summary;
    let mut out = Vec::new();
    if let Some(rate) = result
        .server_metrics
        .prefix_cache_hit_rate
        .filter(|r| *r > ctx.threshold)
    {
        let (rate, threshold) = (format::percent(rate), format::percent(ctx.threshold));
        out.push(Caveat {
            kind: Kind::HitRate,
            short: format!("前缀缓存命中率 {rate}（高于 {threshold}）"),
            text: format!(
                "前缀缓存命中率 {rate} 高于阈值 {threshold}：TTFT 与 Prompt TPS 可能因缓存命中而偏乐观"
            ),
        });
    }
    for (kind, side, check) in [
        (Kind::Output, "输出", &s.output_tokens),
        (Kind::Input, "输入", &s.input_tokens),
    ] {
        if let Some((short, text)) = token_warning(side, check) {
            out.push(Caveat { kind, short, text });
        }
    }
    if s.failed > 0 {
        out.push(failed(s));
    }
    if s.client.saturated {
        out.push(Caveat {
            kind: Kind::Saturated,
            short: "客户端饱和".into(),
            text: {
                // Read lag (how long received bytes waited for the client) is shown where it was
                // measured.
                let read = match s.client.read_lag_ms_p99 {
                    Some(p99) => format!(
                        "；读取延迟 p99 {} ms，最大 {} ms",
                        format::opt3(Some(p99)),
                        format::opt3(s.client.read_lag_ms_max)
                    ),
                    None => String::new(),
                };
                format!(
                    "客户端饱和（调度延迟 p99 {} ms，最大 {} ms{read}）：TTFT/TPOT 可能被客户端拉高",
                    format::opt3(s.client.lag_ms_p99),
                    format::opt3(s.client.lag_ms_max)
                )
            },
        });
    }
    let (peak, expected) = (s.client.peak_inflight, ctx.expected_inflight);
    if peak > 0 && peak < expected {
        out.push(Caveat {
            kind: Kind::Underloaded,
            short: format!("未达到设定并发（最高在途 {peak}/{expected}）"),
            text: format!("客户端最高在途请求数 {peak} 低于目标 {expected}：负载未达到设定并发"),
        });
    }
    if let Some(plan) = ctx.plan_hash.filter(|h| *h != result.hash) {
        out.push(Caveat {
            kind: Kind::Changed,
            short: "旧设置的结果".into(),
            text: format!(
                "此结果来自不同的设置（结果 {} ≠ 计划 {plan}），重新运行可更新",
                result.hash
            ),
        });
    }
    out
}

fn failed(s: &Summary) -> Caveat {
    let kinds = s
        .errors
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join("，");
    Caveat {
        kind: Kind::Failed,
        short: format!("失败请求 {}/{}", s.failed, s.requests),
        text: format!(
            "失败请求 {}/{}（{kinds}）：QPS 与各项延迟只统计成功请求",
            s.failed, s.requests
        ),
    }
}

/// Token counts the server did not report as asked (`side` is 输入 or 输出): counts that differ, and
/// requests whose count is unknown (no `usage`). `(short, sentence)`, or `None` when every count was exact.
fn token_warning(side: &str, check: &TokenCheck) -> Option<(String, String)> {
    let mut parts = Vec::new();
    if check.mismatched > 0 {
        let range = match (check.min, check.max) {
            (Some(lo), Some(hi)) => format!("（实际 {lo}–{hi}）"),
            _ => String::new(),
        };
        parts.push(format!(
            "{} 个请求的{side}不是 {} tokens{range}",
            check.mismatched, check.expected
        ));
    }
    if check.unknown > 0 {
        parts.push(format!("{} 个请求未报告 usage", check.unknown));
    }
    if parts.is_empty() {
        return None;
    }
    let what = if check.mismatched > 0 {
        "长度不符"
    } else {
        "长度未知"
    };
    Some((
        format!("{side}{what}"),
        format!("{side}{what}：{}", parts.join("，")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_in_flight_a_closed_loop_should_reach() {
        assert_eq!(expected_inflight(40, None, 120), 40);
        assert_eq!(expected_inflight(40, Some(24), 120), 24);
        assert_eq!(expected_inflight(4, None, 2), 2);
    }

    #[test]
    fn token_counts_mismatched_or_unknown() {
        let check = TokenCheck {
            expected: 800,
            exact: 115,
            mismatched: 3,
            unknown: 2,
            min: Some(640),
            max: Some(800),
            mean: None,
        };
        let (short, text) = token_warning("输出", &check).unwrap();
        assert_eq!(short, "输出长度不符");
        assert_eq!(
            text,
            "输出长度不符：3 个请求的输出不是 800 tokens（实际 640–800），2 个请求未报告 usage"
        );
        let unknown = TokenCheck {
            expected: 8,
            unknown: 4,
            ..TokenCheck::default()
        };
        assert_eq!(token_warning("输入", &unknown).unwrap().0, "输入长度未知");
        let exact = TokenCheck {
            expected: 8,
            exact: 4,
            ..TokenCheck::default()
        };
        assert_eq!(token_warning("输入", &exact), None);
    }
}
