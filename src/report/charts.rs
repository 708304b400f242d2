//! SVG charts: output throughput, TTFT and TPOT against concurrency, one file per model and precision with
//! one line per server configuration.
//!
//! plotters' SVG backend writes text as `<text>` elements and, without its `ttf` feature, only estimates
//! text extents for layout, so no font files or system libraries are needed. Concurrency is drawn on a
//! log axis: campaign points such as 1, 10, 40, 200 would otherwise crowd into one corner. A metric that
//! was not measured at a point has no point there (never one at 0); a panel without any says so.

use anyhow::Context;
use plotters::prelude::*;

use super::view::{ChartData, Series};

const WIDTH: u32 = 1500;
const HEIGHT: u32 = 460;

/// (index into a point's metrics, panel caption): the three metrics charted, in panel order.
const PANELS: &[(usize, &str)] = &[
    (0, "Output throughput (tok/s)"),
    (1, "TTFT mean (ms)"),
    (2, "TPOT mean (ms)"),
];

/// Renders one chart to SVG text.
pub fn render(chart: &ChartData) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&chart.title, ("sans-serif", 22))?;
        let areas = root.split_evenly((1, PANELS.len()));
        for (area, (metric, caption)) in areas.iter().zip(PANELS) {
            panel(area, chart, *metric, caption)
                .with_context(|| format!("drawing `{caption}` of {}", chart.file))?;
        }
        root.present()?;
    }
    Ok(svg)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    chart: &ChartData,
    metric: usize,
    caption: &str,
) -> anyhow::Result<()> {
    let points = || chart.series.iter().flat_map(|s| drawable(s, metric));
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|p| p.0).fold(0.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let caption = if points().next().is_some() {
        caption.to_string()
    } else {
        format!("{caption}: not measured")
    };
    // A single point (or none) still needs a non-empty range.
    let (x_min, x_max) = if x_min.is_finite() {
        (x_min / 1.5, x_max * 1.5)
    } else {
        (1.0, 10.0)
    };
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };

    let mut ctx = ChartBuilder::on(area)
        .caption(&caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)?;
    ctx.configure_mesh()
        .x_desc("concurrency")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, series) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let data: Vec<(f64, f64)> = drawable(series, metric).collect();
        ctx.draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(series.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        ctx.draw_series(
            data.into_iter()
                .map(|xy| Circle::new(xy, 4, color.filled())),
        )?;
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The points of `series` that have a measured, finite value of `metric` at a positive concurrency (the
/// axis is logarithmic).
fn drawable(series: &Series, metric: usize) -> impl Iterator<Item = (f64, f64)> + '_ {
    series.points.iter().filter_map(move |(x, values)| {
        let y = values[metric]?;
        (*x > 0.0 && x.is_finite() && y.is_finite()).then_some((*x, y))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_every_series_and_panel() {
        let chart = ChartData {
            file: "m-fp8.svg".into(),
            title: "Model · FP8".into(),
            series: vec![
                Series {
                    label: "vllm".into(),
                    points: vec![
                        (1.0, [Some(40.0), Some(50.0), Some(23.0)]),
                        (40.0, [Some(1300.0), Some(93.0), Some(30.7)]),
                    ],
                },
                Series {
                    label: "sglang".into(),
                    points: vec![(10.0, [Some(380.0), Some(60.0), Some(26.0)])],
                },
            ],
        };
        let svg = render(&chart).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in [
            "vllm",
            "sglang",
            "TTFT mean (ms)",
            "TPOT mean (ms)",
            "Model · FP8",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Every point is marked in each of the three panels.
        assert_eq!(svg.matches("<circle").count(), 3 * 3);
    }

    #[test]
    fn unmeasured_metrics_get_no_point() {
        // A server without `usage`: TTFT measured, output throughput and TPOT not.
        let chart = ChartData {
            file: "m.svg".into(),
            title: "no usage".into(),
            series: vec![Series {
                label: "sim".into(),
                points: vec![
                    (1.0, [None, Some(50.0), None]),
                    (4.0, [None, Some(70.0), None]),
                ],
            }],
        };
        let svg = render(&chart).unwrap();
        assert_eq!(svg.matches("<circle").count(), 2, "TTFT's two points only");
        assert!(svg.contains("TPOT mean (ms): not measured"));
        assert!(svg.contains("Output throughput (tok/s): not measured"));
        assert!(!svg.contains("TTFT mean (ms): not measured"));
    }
}
