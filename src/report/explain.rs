//! Why latency jumped: where a server configuration's mean TTFT at one concurrency is at least
//! [`JUMP`] times the one at the concurrency below it, the server's timeline over that point (peak KV-cache
//! usage, most requests waiting, preemptions) says whether requests queued because the KV cache was full,
//! queued for a batch slot, or did not queue at all (then the prefill itself grew).
//!
//! Invariant: only what the timeline recorded is said; a point without a timeline says so.

use super::format;
use crate::stats::Dist;
use crate::store::CellResult;

/// A TTFT at least this many times the previous concurrency's is a jump worth explaining.
pub const JUMP: f64 = 2.0;
/// KV-cache usage from which the cache counts as full.
pub const KV_FULL: f64 = 0.95;

/// One sentence per jump, for the cells of one server configuration (any order).
pub fn ttft_jumps(mut cells: Vec<(u32, &CellResult)>) -> Vec<String> {
    cells.sort_by_key(|(c, _)| *c);
    let mut out = Vec::new();
    for pair in cells.windows(2) {
        let ((c0, r0), (c1, r1)) = (pair[0], pair[1]);
        let (Some(t0), Some(t1)) = (
            Dist::mean_of(&r0.summary.ttft_ms),
            Dist::mean_of(&r1.summary.ttft_ms),
        ) else {
            continue;
        };
        if t0 <= 0.0 || t1 < t0 * JUMP {
            continue;
        }
        out.push(format!(
            "c={c1}：TTFT {} ms，为 c={c0}（{} ms）的 {}；{}",
            format::fixed3(t1),
            format::fixed3(t0),
            format::ratio(t1 / t0),
            server_state(r1)
        ));
    }
    out
}

/// What the server's timeline says about one point, in words.
pub fn server_state(r: &CellResult) -> String {
    let Some(t) = &r.telemetry.server else {
        let why = r
            .telemetry
            .server_note
            .clone()
            .unwrap_or_else(|| "结果中没有服务端时间线".into());
        return format!("服务端未记录排队与 KV cache 指标（{why}），无法解释。");
    };
    if t.samples == 0 {
        return format!(
            "负载点内没有服务端指标样本（测得阶段短于 {} s 的抓取间隔，或抓取失败 {} 次），无法解释。",
            t.interval_s, t.errors
        );
    }
    let mut facts = Vec::new();
    if let Some(kv) = t.peak_kv_usage {
        facts.push(format!("KV cache 峰值 {}", format::percent(kv)));
    }
    match t.peak_waiting {
        Some(w) if w >= 1.0 => facts.push(format!("最多 {w:.0} 个请求排队")),
        Some(_) => facts.push("没有请求排队".into()),
        None => {}
    }
    if let Some(n) = t.peak_running {
        facts.push(format!("最多 {n:.0} 个请求同时运行"));
    }
    if let Some(p) = t.preemptions {
        facts.push(format!("抢占 {p:.0} 次"));
    }
    if facts.is_empty() {
        return "服务端未暴露排队与 KV cache 指标，无法解释。".into();
    }
    let kv_full = t.peak_kv_usage.is_some_and(|k| k >= KV_FULL);
    let queued = t.peak_waiting.is_some_and(|w| w >= 1.0);
    let reading = match (kv_full, queued) {
        (true, true) => "KV cache 已满，新请求须等运行中的请求结束才能开始 prefill",
        (false, true) => "请求在服务端排队等待调度（批大小上限或 token 预算）",
        (true, false) => "KV cache 已满但无排队",
        (false, false) => match t.peak_waiting {
            Some(_) => "TTFT 的增加来自同时进行的 prefill 计算",
            None => "",
        },
    };
    let mut text = facts.join("，");
    if !reading.is_empty() {
        text.push_str(&format!("；{reading}"));
    }
    text.push('。');
    text
}
