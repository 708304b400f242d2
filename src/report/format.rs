//! Number and label formatting for the report, in one place so every table prints the same way.
//!
//! The seed report prints three decimals (`0.054`, `197352.079`) and hit rates as `49.92%`; the golden
//! test compares our rows with the seed's character for character, so these functions are its contract.
//! A value that is not a finite number prints as `—`, never as `NaN` or `inf`; so does a value that was
//! not measured (`None`), never as `0.000`.

use crate::stats::TokenCheck;

/// Placeholder for a value that does not exist (pending cell, metric not exposed).
pub const NONE: &str = "—";

/// Three decimals, rounding half away from zero at the third decimal of the decimal value the number
/// prints as (so `0.0625` becomes `0.063`, as a person rounding by hand would write it).
pub fn fixed3(x: f64) -> String {
    if !x.is_finite() {
        return NONE.to_string();
    }
    // Rust's `{:.3}` rounds ties to even on the exact binary value; go through the shortest decimal
    // representation instead so that a stored `0.0625` rounds up, like the seed author's tools did.
    let shortest = format!("{x}");
    match shortest.split_once('.') {
        Some((_, frac)) if frac.len() > 3 => round_decimal_str(&shortest, 3),
        _ => format!("{x:.3}"),
    }
}

/// [`fixed3`] of a figure that may not have been measured: `None` prints as `—`, never as `0.000`.
pub fn opt3(x: Option<f64>) -> String {
    x.map_or_else(|| NONE.to_string(), fixed3)
}

/// Rounds a plain decimal string (`-12.34567`) to `places` decimals, half away from zero.
fn round_decimal_str(s: &str, places: usize) -> String {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let mut kept: Vec<u8> = int
        .bytes()
        .chain(frac.bytes().chain(std::iter::repeat(b'0')).take(places))
        .map(|b| b - b'0')
        .collect();
    let round_up = frac.as_bytes().get(places).is_some_and(|d| *d >= b'5');
    if round_up {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let split = kept.len() - places;
    let text: String = kept.iter().map(|d| char::from(b'0' + d)).collect();
    let out = format!("{}.{}", &text[..split], &text[split..]);
    if neg && out.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        format!("-{out}")
    } else {
        out
    }
}

/// A rate in 0..1 as a percentage with two decimals: `0.4992` → `49.92%`.
pub fn percent(rate: f64) -> String {
    if !rate.is_finite() {
        return NONE.to_string();
    }
    format!("{:.2}%", rate * 100.0)
}

/// A ratio between two measurements: `1.311×`.
pub fn ratio(x: f64) -> String {
    if !x.is_finite() {
        return NONE.to_string();
    }
    format!("{}×", fixed3(x))
}

/// Token count as the seed prints it: the integer when every request reported the same count; a range
/// otherwise; `—` when no request reported one.
pub fn tokens(check: &TokenCheck) -> String {
    match (check.min, check.max) {
        (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
        (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
        _ => NONE.to_string(),
    }
}

/// A token count the way the seed's headings write it: `10000` → `10K`, `800` → `0.8K`.
pub fn kilo(n: u32) -> String {
    if n % 100 != 0 {
        return n.to_string();
    }
    let k = f64::from(n) / 1000.0;
    let text = format!("{k:.1}");
    format!("{}K", text.trim_end_matches('0').trim_end_matches('.'))
}

/// How a precision key reads in headings: (section form, inline form).
pub fn precision_labels(key: &str) -> (String, String) {
    match key.to_ascii_lowercase().as_str() {
        "nvfp4" => ("FP4（NVFP4）".into(), "FP4 / NVFP4".into()),
        "mxfp4" => ("FP4（MXFP4）".into(), "FP4 / MXFP4".into()),
        _ => (key.to_ascii_uppercase(), key.to_ascii_uppercase()),
    }
}

/// The engine as people name it, with its version: `vLLM 0.12.0`. Version output that already names the
/// engine (`llama-server version: …`) is kept as it is.
pub fn engine_label(preset: crate::engine::Preset, engine: &str, version: Option<&str>) -> String {
    use crate::engine::Preset;
    let name = match preset {
        Preset::Vllm => "vLLM",
        Preset::Sglang => "SGLang",
        Preset::LlamaCpp => "llama.cpp",
        Preset::Sim => "runner sim",
        Preset::Generic => engine,
    };
    let version = version
        .map(|v| {
            v.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
        })
        .unwrap_or("");
    // The simulated engine is this binary; its version line is `runner 0.1.0`.
    let version = match preset {
        Preset::Sim => version.strip_prefix("runner ").unwrap_or(version),
        _ => version,
    };
    if version.is_empty() {
        name.to_string()
    } else if version
        .trim_start_matches('v')
        .starts_with(|c: char| c.is_ascii_digit())
    {
        format!("{name} {version}")
    } else {
        version.to_string()
    }
}

/// Makes text safe inside a markdown table cell: no line breaks, no bare `|`.
pub fn cell_text(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// An RFC 3339 timestamp for people: `2025-12-18 10:39:40 +08:00`; unparsable text is kept as is.
pub fn local_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S %:z").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// A note the runner recorded in English (why there is no GPU telemetry, why `nvidia-smi` gave nothing)
/// as the Chinese report says it. Notes it does not know are quoted as they are, as a technical detail.
pub fn note_zh(note: &str) -> String {
    const KNOWN: &[(&str, &str)] = &[
        (
            "no GPU telemetry on this host",
            "本机既没有 NVML 也没有 nvidia-smi，即没有 NVIDIA GPU 驱动",
        ),
        (
            "nvidia-smi not found",
            "未找到 nvidia-smi，即本机没有 NVIDIA GPU 驱动",
        ),
        (
            "the server runs on another host",
            "服务器运行在另一台主机上，本机无法采样它的 GPU",
        ),
        (
            "the server was given no GPU",
            "服务器未分配 GPU（CUDA_VISIBLE_DEVICES 为空）",
        ),
        ("GPU telemetry is turned off", "GPU 遥测已按设置关闭"),
    ];
    KNOWN
        .iter()
        .find(|(prefix, _)| note.starts_with(prefix))
        .map_or_else(
            || format!("原因：`{}`", note.replace('`', "'")),
            |(_, zh)| (*zh).to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_decimals_like_the_seed() {
        for (x, want) in [
            (0.054, "0.054"),
            (197352.079, "197352.079"),
            (43.501, "43.501"),
            (1.625, "1.625"),
            (107634.07, "107634.070"),
            (39.05, "39.050"),
            (10000.0, "10000.000"),
            (0.0625, "0.063"),
            (2.0004999, "2.000"),
            (9.9995, "10.000"),
            (-0.0004, "0.000"),
            (-1.2345, "-1.235"),
            (1e-7, "0.000"),
        ] {
            assert_eq!(fixed3(x), want, "{x}");
        }
        assert_eq!(fixed3(f64::NAN), "—");
        assert_eq!(opt3(None), "—");
        assert_eq!(opt3(Some(0.0)), "0.000", "a measured 0 is a number");
    }

    #[test]
    fn percent_and_labels() {
        assert_eq!(percent(0.4992), "49.92%");
        assert_eq!(percent(0.9901), "99.01%");
        assert_eq!(kilo(10000), "10K");
        assert_eq!(kilo(800), "0.8K");
        assert_eq!(kilo(1000), "1K");
        assert_eq!(kilo(128), "128");
        assert_eq!(precision_labels("nvfp4").1, "FP4 / NVFP4");
        assert_eq!(precision_labels("fp8").0, "FP8");
    }

    #[test]
    fn engine_labels() {
        use crate::engine::Preset;
        assert_eq!(
            engine_label(Preset::Vllm, "vllm", Some("0.12.0\n")),
            "vLLM 0.12.0"
        );
        assert_eq!(engine_label(Preset::Sglang, "sglang", None), "SGLang");
        assert_eq!(
            engine_label(Preset::Sim, "sim", Some("runner 0.1.0\n")),
            "runner sim 0.1.0"
        );
        assert_eq!(
            engine_label(Preset::LlamaCpp, "l", Some("version: 1 (abc)")),
            "version: 1 (abc)"
        );
    }

    #[test]
    fn table_cells_cannot_break_the_table() {
        assert_eq!(cell_text("a | b\nc"), "a \\| b c");
    }

    #[test]
    fn notes_read_in_chinese_or_are_quoted() {
        assert_eq!(
            note_zh(
                "no GPU telemetry on this host: no NVML (libnvidia-ml.so.1: cannot open) and no nvidia-smi"
            ),
            "本机既没有 NVML 也没有 nvidia-smi，即没有 NVIDIA GPU 驱动"
        );
        assert_eq!(
            note_zh("nvidia-smi failed (exit code 9): NVIDIA-SMI has failed"),
            "原因：`nvidia-smi failed (exit code 9): NVIDIA-SMI has failed`"
        );
    }
}
