//! SVG charts, per model one set where every precision × engine is one line on shared axes:
//! - `<model>-by-concurrency.svg`: output throughput, TTFT and TPOT against concurrency, three panels
//!   stacked under one legend;
//! - `<model>-interactivity.svg`: output throughput per GPU (y) against per-user decode speed
//!   1000 / TPOT (x, the definition InferenceX uses), points labelled with their concurrency, the
//!   upper-right (Pareto) frontier of all points dashed.
//!
//! plotters' SVG backend writes text as `<text>` elements that name fonts (a CJK-capable stack, so the
//! Chinese labels render wherever one of those fonts is installed) and, without its `ttf` feature, only
//! estimates text extents for layout, so no font files or system libraries are needed. The legend is
//! laid out here, with widths estimated per character (CJK characters are one em wide). Images are
//! 800 px wide, the width GitHub renders Markdown at, so text keeps its size there.
//!
//! Concurrency is a log axis with ticks at the measured concurrencies only (no band of minor grid lines);
//! the interactivity chart is linear from 0. A figure that was not measured at a point has no point there
//! (never one at 0); a panel without any says so.
//!
//! A point measured several times (repeats) carries error bars: its 95 % confidence interval, vertical
//! for the value axes and horizontal for the interactivity chart's decode speed. Axes make room for the
//! bars; a bar reaching below an axis's start (a wide interval of a small mean) is cut at the axis.

use anyhow::Context;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Font stack for every text: CJK fonts of Linux, macOS and Windows first, then any sans-serif.
pub const FONT: &str =
    "'Noto Sans CJK SC', 'Source Han Sans SC', 'PingFang SC', 'Microsoft YaHei', sans-serif";

const WIDTH: u32 = 800;
const PANEL_HEIGHT: u32 = 280;
const INTERACTIVITY_HEIGHT: u32 = 480;
/// plotters writes `font-size = size / 1.24`; sizes below are what we ask for.
const PX_PER_SIZE: f64 = 1.0 / 1.24;
const TITLE: u32 = 24;
const CAPTION: u32 = 19;
const LABEL: u32 = 16;
const LEGEND: u32 = 17;
const POINT_LABEL: u32 = 15;
const LEGEND_ROW: u32 = 24;

/// A qualitative palette (Tableau 10): distinct on white and for most colour-blind readers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
const FRONTIER: RGBColor = RGBColor(120, 120, 120);

fn frontier_style() -> ShapeStyle {
    FRONTIER.mix(0.35).stroke_width(10)
}

/// One model's charts.
#[derive(Debug, Clone)]
pub struct ChartSet {
    /// `Demo 14B（1K → 64）`
    pub title: String,
    /// File names under `report/charts/`.
    pub by_concurrency: String,
    pub interactivity: String,
    pub series: Vec<Series>,
}

/// One precision × engine (× distinguishing server variables): one line in every chart of the set.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// GPUs the server used, when its variables say (`tensor_parallel_size`…); charted as 1 otherwise.
    pub gpus: Option<u32>,
    /// Sorted by concurrency.
    pub points: Vec<Point>,
}

/// One measured cell's figures; `None` where not measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Point {
    pub concurrency: u32,
    pub output_tps: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    /// Per-user decode speed, 1000 / mean TPOT (tokens/s per user): the table's Decode TPS.
    pub decode_tps: Option<f64>,
    /// Where the cell was measured several times: each figure's 95 % interval.
    pub bars: Bars,
}

/// `(lo, hi)` of each figure's 95 % confidence interval over repeats; `None` for a single measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bars {
    pub output_tps: Option<(f64, f64)>,
    pub ttft_ms: Option<(f64, f64)>,
    pub tpot_ms: Option<(f64, f64)>,
    pub decode_tps: Option<(f64, f64)>,
}

impl ChartSet {
    /// For each series (one line), `f` of each of its points that gives something: the data of one
    /// chart element per line (its points, its error bars).
    fn per_series<T>(&self, f: impl Fn(&Series, &Point) -> Option<T>) -> Vec<Vec<T>> {
        self.series
            .iter()
            .map(|s| s.points.iter().filter_map(|p| f(s, p)).collect())
            .collect()
    }
}

impl Point {
    /// Per-user decode speed (tokens/s per user), where it was measured and is positive.
    pub fn interactivity(&self) -> Option<f64> {
        self.decode_tps.filter(|x| *x > 0.0 && x.is_finite())
    }
}

impl Series {
    fn gpu_share(&self) -> f64 {
        f64::from(self.gpus.unwrap_or(1).max(1))
    }

    fn per_gpu(&self, p: &Point) -> Option<f64> {
        p.output_tps.map(|y| y / self.gpu_share())
    }

    fn per_gpu_bar(&self, p: &Point) -> Option<(f64, f64)> {
        p.bars
            .output_tps
            .map(|(lo, hi)| (lo / self.gpu_share(), hi / self.gpu_share()))
    }
}

/// The three panels against concurrency: (figure, unit, value, its error bar).
type Getter = fn(&Point) -> Option<f64>;
type BarGetter = fn(&Point) -> Option<(f64, f64)>;
const PANELS: [(&str, &str, Getter, BarGetter); 3] = [
    (
        "输出吞吐",
        "tokens/s",
        |p| p.output_tps,
        |p| p.bars.output_tps,
    ),
    ("TTFT 均值", "ms", |p| p.ttft_ms, |p| p.bars.ttft_ms),
    ("TPOT 均值", "ms", |p| p.tpot_ms, |p| p.bars.tpot_ms),
];

/// A bar's ends where they can be drawn: finite, and the bar's value axis must be able to show them.
fn bar(value: Option<f64>, ends: Option<(f64, f64)>) -> Option<(f64, f64)> {
    value?;
    ends.filter(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo <= hi)
}

/// Cap width of an error bar, px: the point's diameter.
const BAR_CAP: u32 = 8;
/// A bar shorter than the point it belongs to would be hidden under it (and a zero-length one is a
/// degenerate path some renderers refuse): such bars are not drawn.
const BAR_MIN_PX: i32 = 8;

/// Renders the set: `(file name, SVG text)` for each chart.
pub fn render(set: &ChartSet) -> anyhow::Result<Vec<(String, String)>> {
    let by_concurrency =
        by_concurrency(set).with_context(|| format!("drawing {}", set.by_concurrency))?;
    let interactivity =
        interactivity(set).with_context(|| format!("drawing {}", set.interactivity))?;
    Ok(vec![
        (set.by_concurrency.clone(), by_concurrency),
        (set.interactivity.clone(), interactivity),
    ])
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// A chart's SVG: a white canvas, `title` and the legend on top, and below them a body
/// `body_height` tall that `draw` fills.
fn canvas(
    title: &str,
    entries: &mut [LegendEntry],
    body_height: u32,
    draw: impl FnOnce(&Area) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let header = 40 + legend_rows(entries) * LEGEND_ROW + 6;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, header + body_height)).into_drawing_area();
        root.fill(&WHITE)?;
        header_and_legend(&root, title, entries)?;
        let (_, body) = root.split_vertically(header);
        draw(&body)?;
        root.present()?;
    }
    Ok(svg)
}

fn by_concurrency(set: &ChartSet) -> anyhow::Result<String> {
    let mut entries: Vec<LegendEntry> = legend_entries(set);
    let title = format!("{}：吞吐与延迟随并发的变化", set.title);
    canvas(
        &title,
        &mut entries,
        PANEL_HEIGHT * PANELS.len() as u32,
        |body| {
            let mut concurrencies: Vec<f64> = set
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| f64::from(p.concurrency)))
                .filter(|c| *c > 0.0)
                .collect();
            concurrencies.sort_by(f64::total_cmp);
            concurrencies.dedup();
            for (area, (name, unit, get, bars)) in
                body.split_evenly((PANELS.len(), 1)).iter().zip(PANELS)
            {
                concurrency_panel(area, set, &concurrencies, (name, unit), (get, bars))
                    .with_context(|| format!("the panel `{name}`"))?;
            }
            Ok(())
        },
    )
}

fn concurrency_panel(
    area: &Area,
    set: &ChartSet,
    concurrencies: &[f64],
    (name, unit): (&str, &str),
    (get, bars): (Getter, BarGetter),
) -> anyhow::Result<()> {
    let lines = set.per_series(|_, p| finite(f64::from(p.concurrency), get(p)));
    let errors = set.per_series(|_, p| {
        let (x, v) = finite(f64::from(p.concurrency), get(p))?;
        let (lo, hi) = bar(Some(v), bars(p))?;
        Some((x, lo, v, hi))
    });
    // The axis makes room for the bars' tops and for their bottoms where a log axis can show them.
    let mut values: Vec<f64> = lines.iter().flatten().map(|p| p.1).collect();
    for &(_, lo, _, hi) in errors.iter().flatten() {
        values.push(hi);
        if lo > 0.0 {
            values.push(lo);
        }
    }
    let y = YScale::for_values(&values);
    let caption = match (values.is_empty(), y.log) {
        (true, _) => format!("{name}（{unit}）：未测得"),
        (false, true) => format!("{name}（{unit}，对数坐标）"),
        (false, false) => format!("{name}（{unit}）"),
    };
    let (x_min, x_max) = match (concurrencies.first(), concurrencies.last()) {
        (Some(lo), Some(hi)) => (lo / 1.4, hi * 1.4),
        _ => (1.0, 10.0),
    };
    let ticks = if concurrencies.is_empty() {
        vec![1.0, 10.0]
    } else {
        concurrencies.to_vec()
    };
    let mut ctx = ChartBuilder::on(area)
        .caption(&caption, font(CAPTION))
        .margin_left(8)
        .margin_right(24)
        .margin_top(4)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x_min..x_max).log_scale().with_key_points(ticks),
            Ticked {
                range: y.range.clone(),
                ticks: y.ticks.clone(),
            },
        )?;
    let y_label = |v: &f64| tick(y.value(*v));
    ctx.configure_mesh()
        .bold_line_style(GRID)
        .label_style(font(LABEL))
        .axis_desc_style(font(LABEL))
        .x_desc("并发数（对数坐标）")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&y_label)
        .draw()?;
    let lines = lines.into_iter().map(|l| {
        l.into_iter()
            .map(|(x, v)| (x, y.axis(v)))
            .collect::<Vec<_>>()
    });
    for (i, (line, errors)) in lines.zip(errors).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if line.len() > 1 {
            ctx.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?;
        }
        let visible: Vec<_> = errors
            .into_iter()
            .map(|(x, lo, v, hi)| (x, y.clamped(lo), y.axis(v), y.clamped(hi)))
            .filter(|&(x, lo, _, hi)| {
                (ctx.backend_coord(&(x, lo)).1 - ctx.backend_coord(&(x, hi)).1).abs() >= BAR_MIN_PX
            })
            .collect();
        ctx.draw_series(visible.into_iter().map(|(x, lo, v, hi)| {
            ErrorBar::new_vertical(x, lo, v, hi, color.stroke_width(2), BAR_CAP)
        }))?;
        ctx.draw_series(
            line.into_iter()
                .map(|xy| Circle::new(xy, 4, color.filled())),
        )?;
    }
    Ok(())
}

fn interactivity(set: &ChartSet) -> anyhow::Result<String> {
    let mut entries = legend_entries(set);
    let points = set.per_series(|s, p| {
        let (x, y) = finite(p.interactivity()?, s.per_gpu(p))?;
        Some((x, y, p.concurrency))
    });
    // Error bars: (x, y, x interval, y interval) where the cell was measured several times.
    type Cross = (f64, f64, Option<(f64, f64)>, Option<(f64, f64)>);
    let crosses: Vec<Vec<Cross>> = set.per_series(|s, p| {
        let (x, y) = finite(p.interactivity()?, s.per_gpu(p))?;
        let (xb, yb) = (
            bar(Some(x), p.bars.decode_tps),
            bar(Some(y), s.per_gpu_bar(p)),
        );
        (xb.is_some() || yb.is_some()).then_some((x, y, xb, yb))
    });
    let all: Vec<(f64, f64)> = points.iter().flatten().map(|p| (p.0, p.1)).collect();
    let frontier = pareto(&all);
    if frontier.len() > 1 {
        entries.push(LegendEntry {
            label: "帕累托前沿（右上方最优）".into(),
            color: FRONTIER,
            frontier: true,
            x: 0,
            row: 0,
        });
    }
    let title = format!("{}：吞吐与交互性", set.title);
    canvas(&title, &mut entries, INTERACTIVITY_HEIGHT, |body| {
        let caption = if all.is_empty() {
            "未测得（需要 TPOT 与输出吞吐）"
        } else {
            "越往右上越好：每个用户更快，同时每 GPU 吞吐更高"
        };
        let bar_ends = crosses.iter().flatten();
        let x_max = upper(
            all.iter()
                .map(|p| p.0)
                .chain(bar_ends.clone().filter_map(|c| c.2.map(|b| b.1))),
        );
        let y_max = upper(
            all.iter()
                .map(|p| p.1)
                .chain(bar_ends.filter_map(|c| c.3.map(|b| b.1))),
        );
        let mut ctx = ChartBuilder::on(body)
            .caption(caption, font(CAPTION))
            .margin_left(8)
            .margin_right(28)
            .margin_top(4)
            .x_label_area_size(48)
            .y_label_area_size(78)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        ctx.configure_mesh()
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .label_style(font(LABEL))
            .axis_desc_style(font(LABEL))
            .x_desc("单用户解码速度 = 1000 / 平均 TPOT（tokens/s/用户）")
            .y_desc("每 GPU 输出吞吐（tokens/s/GPU）")
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .draw()?;
        // A wide translucent band under the points, so it shows even where it runs along a series' line.
        if frontier.len() > 1 {
            ctx.draw_series(LineSeries::new(frontier, frontier_style()))?;
        }
        for (i, (series, crosses)) in points.into_iter().zip(crosses).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let xy: Vec<(f64, f64)> = series.iter().map(|p| (p.0, p.1)).collect();
            if xy.len() > 1 {
                ctx.draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?;
            }
            let style = color.stroke_width(2);
            let long = |a: (f64, f64), b: (f64, f64)| {
                let (pa, pb) = (ctx.backend_coord(&a), ctx.backend_coord(&b));
                (pa.0 - pb.0).abs().max((pa.1 - pb.1).abs()) >= BAR_MIN_PX
            };
            let horizontal: Vec<_> = crosses
                .iter()
                .filter_map(|&(x, y, xb, _)| xb.map(|(lo, hi)| (y, lo.max(0.0), x, hi)))
                .filter(|&(y, lo, _, hi)| long((lo, y), (hi, y)))
                .collect();
            let vertical: Vec<_> = crosses
                .iter()
                .filter_map(|&(x, y, _, yb)| yb.map(|(lo, hi)| (x, lo.max(0.0), y, hi)))
                .filter(|&(x, lo, _, hi)| long((x, lo), (x, hi)))
                .collect();
            ctx.draw_series(
                horizontal
                    .into_iter()
                    .map(|(y, lo, x, hi)| ErrorBar::new_horizontal(y, lo, x, hi, style, BAR_CAP)),
            )?;
            ctx.draw_series(
                vertical
                    .into_iter()
                    .map(|(x, lo, y, hi)| ErrorBar::new_vertical(x, lo, y, hi, style, BAR_CAP)),
            )?;
            ctx.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            let label_style = font(POINT_LABEL)
                .color(&color)
                .pos(Pos::new(HPos::Left, VPos::Bottom));
            ctx.draw_series(series.iter().map(|&(x, y, c)| {
                EmptyElement::at((x, y)) + Text::new(format!("c={c}"), (6, -4), label_style.clone())
            }))?;
        }
        Ok(())
    })
}

/// A legend entry, placed by [`legend_rows`].
struct LegendEntry {
    label: String,
    color: RGBColor,
    frontier: bool,
    x: u32,
    row: u32,
}

fn legend_entries(set: &ChartSet) -> Vec<LegendEntry> {
    set.series
        .iter()
        .enumerate()
        .map(|(i, s)| LegendEntry {
            label: s.label.clone(),
            color: PALETTE[i % PALETTE.len()],
            frontier: false,
            x: 0,
            row: 0,
        })
        .collect()
}

const SWATCH: u32 = 26;

/// Lays the entries out left to right, wrapping at the image width; returns the number of rows.
fn legend_rows(entries: &mut [LegendEntry]) -> u32 {
    let (left, right, gap) = (16, WIDTH - 16, 22);
    let (mut x, mut row) = (left, 0);
    for e in entries.iter_mut() {
        let width = SWATCH + text_width(&e.label, LEGEND);
        if x > left && x + width > right {
            x = left;
            row += 1;
        }
        e.x = x;
        e.row = row;
        x += width + gap;
    }
    if entries.is_empty() { 0 } else { row + 1 }
}

/// Estimated width in pixels of `text` at plotters size `size`: CJK and other wide characters one em,
/// Latin characters and digits about half of one.
fn text_width(text: &str, size: u32) -> u32 {
    let em = f64::from(size) * PX_PER_SIZE;
    let ems: f64 = text
        .chars()
        .map(|c| if c.is_ascii() { 0.58 } else { 1.0 })
        .sum();
    (ems * em).ceil() as u32
}

fn header_and_legend(root: &Area, title: &str, entries: &[LegendEntry]) -> anyhow::Result<()> {
    root.draw(&Text::new(
        title.to_string(),
        (WIDTH as i32 / 2, 20),
        font(TITLE).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    for e in entries {
        let y = (44 + e.row * LEGEND_ROW) as i32;
        let x = e.x as i32;
        let line = vec![(x, y), (x + 18, y)];
        if e.frontier {
            root.draw(&PathElement::new(line, frontier_style()))?;
        } else {
            root.draw(&PathElement::new(line, e.color.stroke_width(2)))?;
            root.draw(&Rectangle::new(
                [(x + 6, y - 3), (x + 12, y + 3)],
                e.color.filled(),
            ))?;
        }
        root.draw(&Text::new(
            e.label.clone(),
            (x + SWATCH as i32, y),
            font(LEGEND).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// A measured, finite, chartable point.
fn finite(x: f64, y: Option<f64>) -> Option<(f64, f64)> {
    let y = y?;
    (x > 0.0 && x.is_finite() && y.is_finite()).then_some((x, y))
}

/// The top of an axis from 0: some room above the largest value (1 when there is none).
fn upper(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0, f64::max);
    if max > 0.0 { max * 1.15 } else { 1.0 }
}

/// Tick labels: no decimals for large values, a few for small ones.
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A value axis: linear from 0, or logarithmic when the values span more than [`LOG_SPAN`]× (a TTFT of
/// 50 ms at low concurrency beside 9 s at 200 would otherwise lie flat on the axis). Values are drawn
/// at [`YScale::axis`] (log10 of the value on a log axis) on a linear coordinate, with ticks placed here,
/// so that both kinds share one chart type and neither draws minor grid lines.
struct YScale {
    log: bool,
    range: std::ops::Range<f64>,
    /// Tick positions, in axis units.
    ticks: Vec<f64>,
}

const LOG_SPAN: f64 = 30.0;

/// A linear coordinate whose grid lines are exactly `ticks` (plotters' own `f64` axis cannot take key
/// points and keep its label formatting).
struct Ticked {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let share = if span > 0.0 {
            (value - self.range.start) / span
        } else {
            0.0
        };
        limit.0 + (f64::from(limit.1 - limit.0) * share + 1e-3).floor() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new() // no minor grid lines
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

impl YScale {
    fn for_values(values: &[f64]) -> YScale {
        let max = values.iter().copied().fold(0.0, f64::max);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        if min > 0.0 && max / min > LOG_SPAN {
            let (lo, hi) = ((min / 1.5).log10(), (max * 1.5).log10());
            let mut ticks: Vec<f64> = Vec::new();
            for steps in [&[1.0, 2.0, 5.0][..], &[1.0]] {
                ticks = (lo.floor() as i32..=hi.ceil() as i32)
                    .flat_map(|k| steps.iter().map(move |m| (m * 10f64.powi(k)).log10()))
                    .filter(|t| (lo..=hi).contains(t))
                    .collect();
                if ticks.len() <= 8 {
                    break;
                }
            }
            return YScale {
                log: true,
                range: lo..hi,
                ticks,
            };
        }
        let top = upper(values.iter().copied());
        // Five to eight ticks at round steps.
        let raw = top / 7.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(raw);
        let ticks = (0..)
            .map(|i| f64::from(i) * step)
            .take_while(|t| *t <= top)
            .collect();
        YScale {
            log: false,
            range: 0.0..top,
            ticks,
        }
    }

    /// Where a value is drawn.
    fn axis(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }

    /// Where a bar's end is drawn: cut at the axis's ends (a log axis cannot show 0 or below).
    fn clamped(&self, v: f64) -> f64 {
        let a = if self.log && v <= 0.0 {
            self.range.start
        } else {
            self.axis(v)
        };
        a.clamp(self.range.start, self.range.end)
    }

    /// The value at an axis position.
    fn value(&self, a: f64) -> f64 {
        if self.log { 10f64.powf(a) } else { a }
    }
}

/// The upper-right frontier: points no other point matches or beats on both axes, by increasing x.
pub fn pareto(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points.to_vec();
    // Rightmost first; among equal x the highest first.
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for p in sorted {
        if p.1 > best_y {
            out.push(p);
            best_y = p.1;
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(c: u32, out: Option<f64>, ttft: Option<f64>, tpot: Option<f64>) -> Point {
        Point {
            concurrency: c,
            output_tps: out,
            ttft_ms: ttft,
            tpot_ms: tpot,
            decode_tps: tpot.map(|t| 1000.0 / t),
            bars: Bars::default(),
        }
    }

    fn set(series: Vec<Series>) -> ChartSet {
        ChartSet {
            title: "Model（1K → 64）".into(),
            by_concurrency: "m-by-concurrency.svg".into(),
            interactivity: "m-interactivity.svg".into(),
            series,
        }
    }

    #[test]
    fn every_series_is_a_line_on_shared_axes_with_chinese_labels() {
        let chart = set(vec![
            Series {
                label: "FP8".into(),
                gpus: None,
                points: vec![
                    point(1, Some(100.0), Some(50.0), Some(23.0)),
                    point(40, Some(1300.0), Some(93.0), Some(30.7)),
                ],
            },
            Series {
                label: "NVFP4".into(),
                gpus: None,
                points: vec![point(10, Some(380.0), Some(60.0), Some(26.0))],
            },
        ]);
        let files = render(&chart).unwrap();
        assert_eq!(files.len(), 2);
        let (name, svg) = &files[0];
        assert_eq!(name, "m-by-concurrency.svg");
        assert!(svg.starts_with("<svg"));
        for text in [
            "FP8",
            "NVFP4",
            "输出吞吐（tokens/s）",
            "TTFT 均值（ms）",
            "TPOT 均值（ms）",
            "并发数（对数坐标）",
            "Model（1K → 64）：吞吐与延迟随并发的变化",
            "Noto Sans CJK SC",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Every point is marked in each of the three panels; the legend uses no circles.
        assert_eq!(svg.matches("<circle").count(), 3 * 3);
        // Ticks at the measured concurrencies only: no 2, 3, 5… of a default log axis.
        assert!(
            svg.contains(">\n10\n</text>") || svg.contains(">10<"),
            "{svg}"
        );
        assert!(!svg.contains(">\n3\n</text>"), "a minor tick");

        let (name, svg) = &files[1];
        assert_eq!(name, "m-interactivity.svg");
        for text in [
            "单用户解码速度 = 1000 / 平均 TPOT（tokens/s/用户）",
            "每 GPU 输出吞吐（tokens/s/GPU）",
            "c=1",
            "c=40",
            "c=10",
            "帕累托前沿",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn repeated_points_carry_error_bars_within_the_axes() {
        let mut p = point(4, Some(500.0), Some(80.0), Some(20.0));
        let plain = set(vec![Series {
            label: "FP8".into(),
            gpus: Some(2),
            points: vec![point(1, Some(100.0), Some(40.0), Some(10.0)), p],
        }]);
        // A TTFT interval reaching below 0 (two repeats far apart) is cut at the axis, not dropped.
        p.bars = Bars {
            output_tps: Some((450.0, 560.0)),
            ttft_ms: Some((-20.0, 180.0)),
            tpot_ms: Some((19.0, 21.0)),
            decode_tps: Some((47.0, 53.0)),
        };
        let barred = set(vec![Series {
            points: vec![point(1, Some(100.0), Some(40.0), Some(10.0)), p],
            ..plain.series[0].clone()
        }]);
        // Lines in the series' colour: only error bars (the series itself is a polyline).
        let bars = |s: &ChartSet| -> Vec<usize> {
            render(s)
                .unwrap()
                .iter()
                .map(|(_, svg)| {
                    svg.lines()
                        .filter(|l| l.starts_with("<line") && l.contains("#1F77B4"))
                        .count()
                })
                .collect()
        };
        assert_eq!(bars(&plain), [0, 0]);
        // Three panels, one bar each (a stem and two caps); the interactivity chart's cross has two.
        assert_eq!(bars(&barred), [3 * 3, 2 * 3]);
        // A bar shorter than its point would hide under it: not drawn.
        p.bars.output_tps = Some((499.9, 500.1));
        let tiny = set(vec![Series {
            points: vec![point(1, Some(100.0), Some(40.0), Some(10.0)), p],
            ..plain.series[0].clone()
        }]);
        assert_eq!(bars(&tiny), [2 * 3, 3], "the throughput bars are gone");
        // The bar's top is inside the axis: the axis grows to hold it.
        let y = YScale::for_values(&[100.0, 500.0, 560.0]);
        assert!(y.range.end >= 560.0);
        assert_eq!(y.clamped(-20.0), y.range.start);
        let log = YScale::for_values(&[1.0, 100.0]);
        assert!(log.log);
        assert_eq!(log.clamped(-5.0), log.range.start);
    }

    #[test]
    fn unmeasured_figures_get_no_point() {
        // A server without `usage`: TTFT measured, output throughput and TPOT not.
        let chart = set(vec![Series {
            label: "FP8".into(),
            gpus: None,
            points: vec![
                point(1, None, Some(50.0), None),
                point(4, None, Some(70.0), None),
            ],
        }]);
        let files = render(&chart).unwrap();
        let svg = &files[0].1;
        assert_eq!(svg.matches("<circle").count(), 2, "TTFT's two points only");
        assert!(svg.contains("TPOT 均值（ms）：未测得"));
        assert!(svg.contains("输出吞吐（tokens/s）：未测得"));
        assert!(!svg.contains("TTFT 均值（ms）：未测得"));
        let svg = &files[1].1;
        assert_eq!(svg.matches("<circle").count(), 0);
        assert!(svg.contains("未测得（需要 TPOT 与输出吞吐）"));
    }

    #[test]
    fn throughput_per_gpu_divides_by_the_known_gpu_count() {
        let s = Series {
            label: "tp2".into(),
            gpus: Some(2),
            points: vec![],
        };
        let p = point(8, Some(1000.0), None, Some(20.0));
        assert_eq!(s.per_gpu(&p), Some(500.0));
        assert_eq!(p.interactivity(), Some(50.0));
        let one = Series { gpus: None, ..s };
        assert_eq!(one.per_gpu(&p), Some(1000.0));
    }

    #[test]
    fn the_frontier_keeps_points_nothing_beats_on_both_axes() {
        let points = [
            (10.0, 100.0),
            (20.0, 80.0),
            (15.0, 70.0), // beaten by (20, 80)
            (30.0, 20.0),
            (5.0, 100.0), // matched by (10, 100) and slower
            (30.0, 10.0), // beaten by (30, 20)
        ];
        assert_eq!(pareto(&points), [(10.0, 100.0), (20.0, 80.0), (30.0, 20.0)]);
        assert!(pareto(&[]).is_empty());
    }

    #[test]
    fn values_spanning_decades_get_a_log_axis_with_few_ticks() {
        let y = YScale::for_values(&[50.0, 68.0, 147.0, 9146.0]);
        assert!(y.log);
        let labels: Vec<String> = y.ticks.iter().map(|t| tick(y.value(*t))).collect();
        assert_eq!(
            labels,
            ["50", "100", "200", "500", "1000", "2000", "5000", "10000"]
        );
        assert!((y.axis(100.0) - 2.0).abs() < 1e-12);
        let y = YScale::for_values(&[40.0, 800.0]);
        assert!(!y.log, "a 20× span stays linear");
        let y = YScale::for_values(&[169.0, 826.0]);
        assert!(!y.log);
        assert_eq!(y.range.start, 0.0);
        assert_eq!(y.ticks, [0.0, 200.0, 400.0, 600.0, 800.0]);
        let y = YScale::for_values(&[]);
        assert_eq!((y.range.start, y.range.end), (0.0, 1.0));
    }

    #[test]
    fn wide_characters_count_one_em() {
        let latin = text_width("FP8", 17);
        let cjk = text_width("帕累托", 17);
        assert!(cjk > latin && cjk < 2 * latin + 20, "{latin} {cjk}");
    }
}
