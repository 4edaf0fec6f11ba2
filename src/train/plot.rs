//! Training curves as one PNG: a grid of panels (rows of named panels), each series a line
//! against the step.
//!
//! How it reads: a series' colour follows its name (a metric, a task, a run) and is the same
//! in every panel; training values are solid lines, val values dashed lines with a dot at
//! each evaluation; the best checkpoint is a dotted vertical line in every panel, with a star
//! on the monitored value. Losses and metrics never share a panel (the builders here and in
//! `compare` keep them apart), and metrics outside [0, 1] get panels of their own.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (the `dejavu` crate), registered
//! with plotters' `ab_glyph` renderer, so plotting works on machines without system fonts.
use super::report::Record;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

/// Where a value was measured: training values are drawn solid, val values dashed with dots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn of(name: &str) -> Self {
        if name == "train" {
            Split::Train
        } else {
            Split::Val
        }
    }

    fn word(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// One curve: `points` are `(step, value)`; non-finite points are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The panel it is drawn in.
    pub panel: String,
    /// What it shows (a metric, a task, a run): its legend entry and the key of its colour.
    pub name: String,
    pub split: Split,
    pub points: Vec<(f64, f64)>,
}

/// A best checkpoint: a dotted vertical line at its step in every panel, and a star on the
/// monitored value.
#[derive(Debug, Clone, PartialEq)]
pub struct Best {
    pub step: f64,
    /// The series whose colour it takes (a run in a comparison); `None`: dark grey, with a
    /// legend entry in every panel.
    pub name: Option<String>,
    /// The panel and value of the monitored metric, when it has a panel.
    pub point: Option<(String, f64)>,
}

/// A figure: a title, rows of panel names, the series and the best checkpoints.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub rows: Vec<Vec<String>>,
    pub series: Vec<Series>,
    pub best: Vec<Best>,
}

/// Pixels of one panel.
pub const PANEL_SIZE: (u32, u32) = (560, 360);
/// Pixels of the title band above the panels.
pub const TITLE_HEIGHT: u32 = 48;

/// The family every text style here uses; it is also registered as "serif" and "monospace"
/// so no plotters default can ask for a font that is not there.
pub(super) const FAMILY: &str = "sans-serif";

/// Tableau-10, the matplotlib default cycle.
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
/// The best checkpoint's line when it belongs to no series.
const BEST_GREY: RGBColor = RGBColor(25, 25, 25);

/// Val series with at most this many points get a dot at each (a lone point would not show).
const MARKER_MAX_POINTS: usize = 60;

fn centre() -> Pos {
    Pos::new(HPos::Center, VPos::Center)
}

/// Writes an RGB image as a PNG through a temporary file renamed into place.
pub(super) fn save_png(path: &Path, buf: &[u8], (w, h): (u32, u32)) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp_name = path.file_name().ok_or_else(|| anyhow!("{} names no file", path.display()))?.to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let write = || -> Result<()> {
        let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut out),
            buf,
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )?;
        out.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

pub(super) fn register_fonts() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let regular = dejavu::sans::regular();
        for family in [FAMILY, "serif", "monospace"] {
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font(family, style, regular)
                    .map_err(|_| "the embedded DejaVu Sans font did not parse".to_string())?;
            }
        }
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

impl Chart {
    /// Panels laid out in a near-square grid, in order of first appearance (for charts whose
    /// panels have no natural rows).
    pub fn grid(title: &str, series: Vec<Series>, best: Vec<Best>) -> Self {
        let mut names: Vec<String> = Vec::new();
        for s in &series {
            if !names.contains(&s.panel) {
                names.push(s.panel.clone());
            }
        }
        let n = names.len().max(1);
        let cols = (1..).find(|c| c * c >= n).unwrap_or(1);
        let rows = names.chunks(cols).map(<[String]>::to_vec).collect();
        Self { title: title.into(), rows, series, best }
    }

    /// Columns and rows of the panel grid (at least one of each).
    pub fn dimensions(&self) -> (u32, u32) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0).max(1) as u32;
        (cols, (self.rows.len() as u32).max(1))
    }

    /// Width and height of the PNG.
    pub fn image_size(&self) -> (u32, u32) {
        let (cols, rows) = self.dimensions();
        (cols * PANEL_SIZE.0, rows * PANEL_SIZE.1 + TITLE_HEIGHT)
    }

    /// The palette index of each series name, in order of first appearance: a name has one
    /// colour in every panel.
    fn colour(&self, name: &str) -> RGBColor {
        let mut seen: Vec<&str> = Vec::new();
        for s in self.series.iter().map(|s| s.name.as_str()).chain(self.best.iter().filter_map(|b| b.name.as_deref())) {
            if !seen.contains(&s) {
                seen.push(s);
            }
        }
        let i = seen.iter().position(|s| *s == name).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    }

    /// Writes the chart to `path` as a PNG (through a temporary file and a rename, so a reader
    /// never sees half a file); creates the parent directory if needed.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        register_fonts()?;
        let (w, h) = self.image_size();
        let mut buf = vec![255u8; (w * h * 3) as usize];
        self.render(&mut buf, (w, h))?;
        save_png(path, &buf, (w, h))
    }

    fn render(&self, buf: &mut [u8], (w, h): (u32, u32)) -> Result<()> {
        let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (head, body) = root.split_vertically(TITLE_HEIGHT);
        let style = TextStyle::from((FAMILY, 24).into_font()).color(&BLACK).pos(centre());
        head.draw_text(&self.title, &style, (w as i32 / 2, TITLE_HEIGHT as i32 / 2)).map_err(plot_err)?;

        let (cols, rows) = self.dimensions();
        let cells = body.split_evenly((rows as usize, cols as usize));
        if self.rows.iter().all(Vec::is_empty) {
            return self.draw_panel(&cells[0], "no data").and_then(|()| root.present().map_err(plot_err));
        }
        for (r, row) in self.rows.iter().enumerate() {
            for (c, name) in row.iter().enumerate() {
                self.draw_panel(&cells[r * cols as usize + c], name)?;
            }
        }
        root.present().map_err(plot_err)
    }

    /// The step axis, shared by every panel so that they line up.
    fn steps(&self) -> (f64, f64) {
        let points = self.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        range(points.map(|p| p.0).chain(self.best.iter().map(|b| b.step).filter(|s| s.is_finite())), 0.0)
    }

    fn draw_panel(&self, area: &DrawingArea<BitMapBackend<'_>, Shift>, name: &str) -> Result<()> {
        let own: Vec<&Series> = self.series.iter().filter(|s| s.panel == name).collect();
        let finite: Vec<Vec<(f64, f64)>> = own
            .iter()
            .map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
            .collect();
        let stars: Vec<(&Best, f64)> = self
            .best
            .iter()
            .filter_map(|b| b.point.as_ref().filter(|(p, v)| p == name && v.is_finite()).map(|(_, v)| (b, *v)))
            .collect();
        let (x0, x1) = self.steps();
        let ys = finite.iter().flatten().map(|p| p.1).chain(stars.iter().map(|(_, v)| *v));
        let (y0, y1) = range(ys, 0.06);

        let mut chart = ChartBuilder::on(area)
            .caption(name, (FAMILY, 19))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(62)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        let (xspan, yspan) = (x1 - x0, y1 - y0);
        let xfmt = move |v: &f64| format_tick(*v, xspan, true);
        let yfmt = move |v: &f64| format_tick(*v, yspan, false);
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(6)
            .x_desc("step")
            .x_label_formatter(&xfmt)
            .y_label_formatter(&yfmt)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 13))
            .bold_line_style(RGBColor(225, 225, 225))
            .light_line_style(RGBColor(246, 246, 246))
            .draw()
            .map_err(plot_err)?;

        if finite.iter().all(|p| p.is_empty()) {
            let style = TextStyle::from((FAMILY, 16).into_font()).color(&RGBColor(120, 120, 120)).pos(centre());
            chart
                .draw_series(std::iter::once(Text::new("no data", ((x0 + x1) / 2.0, (y0 + y1) / 2.0), style)))
                .map_err(plot_err)?;
        }
        // Best-checkpoint lines first, under the curves.
        for b in self.best.iter().filter(|b| b.step.is_finite()) {
            let colour = b.name.as_deref().map_or(BEST_GREY, |n| self.colour(n));
            let line = DashedLineSeries::new([(b.step, y0), (b.step, y1)], 2, 4, colour.mix(0.8).stroke_width(1));
            let drawn = chart.draw_series(line).map_err(plot_err)?;
            if b.name.is_none() {
                drawn.label(format!("best checkpoint (step {})", b.step)).legend(move |(x, y)| {
                    DashedPathElement::new([(x, y), (x + 22, y)], 2, 3, BEST_GREY.stroke_width(1))
                });
            }
        }
        let legend_best = self.best.iter().filter(|b| b.name.is_none()).count();
        let both_splits = own.iter().any(|s| s.split == Split::Train) && own.iter().any(|s| s.split == Split::Val);
        for (s, pts) in own.iter().zip(&finite) {
            let colour = self.colour(&s.name);
            let label = if both_splits { format!("{} ({})", s.name, s.split.word()) } else { s.name.clone() };
            let style = colour.stroke_width(2);
            match s.split {
                Split::Train => {
                    chart
                        .draw_series(LineSeries::new(pts.iter().copied(), style))
                        .map_err(plot_err)?
                        .label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                }
                Split::Val => {
                    chart
                        .draw_series(DashedLineSeries::new(pts.iter().copied(), 7, 4, style))
                        .map_err(plot_err)?
                        .label(label)
                        .legend(move |(x, y)| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (7, 0)], style)
                                + PathElement::new(vec![(15, 0), (22, 0)], style)
                                + Circle::new((11, 0), 3, colour.filled())
                        });
                }
            }
        }
        // Dots over every val line, so a lone evaluation is not hidden under another line.
        for (s, pts) in own.iter().zip(&finite) {
            if s.split == Split::Val && pts.len() <= MARKER_MAX_POINTS {
                let colour = self.colour(&s.name);
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(plot_err)?;
            }
        }
        for (b, v) in &stars {
            let colour = b.name.as_deref().map_or(BEST_GREY, |n| self.colour(n));
            let star = EmptyElement::at((b.step, *v))
                + Polygon::new(star_points(10.0, 4.5), WHITE.filled())
                + Polygon::new(star_points(8.0, 3.5), colour.filled());
            chart.draw_series(std::iter::once(star)).map_err(plot_err)?;
        }
        if !own.is_empty() {
            chart
                .configure_series_labels()
                .position(legend_corner(&finite, own.len() + legend_best, (x0, x1), (y0, y1)))
                .label_font((FAMILY, 13))
                .background_style(WHITE.mix(0.88))
                .border_style(RGBColor(190, 190, 190))
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// The corners of a five-pointed star around the origin, in pixels.
fn star_points(outer: f64, inner: f64) -> Vec<(i32, i32)> {
    (0..10)
        .map(|k| {
            let r = if k % 2 == 0 { outer } else { inner };
            let a = std::f64::consts::PI * (k as f64 / 5.0 - 0.5);
            ((r * a.cos()).round() as i32, (r * a.sin()).round() as i32)
        })
        .collect()
}

/// Writes each text centred on its pixel position onto an RGB picture, in the embedded font.
pub fn draw_texts(img: &mut image::RgbImage, texts: &[(&str, (i32, i32))], size: u32) -> Result<()> {
    register_fonts()?;
    let (w, h) = img.dimensions();
    let root = BitMapBackend::with_buffer(img, (w, h)).into_drawing_area();
    let style = TextStyle::from((FAMILY, size).into_font()).color(&BLACK).pos(centre());
    for (text, at) in texts {
        root.draw_text(text, &style, *at).map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

pub(super) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// `[lo, hi]` of the finite values, widened when flat; `margin` is a fraction of the span
/// added on each side.
fn range(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - d, hi + d);
    }
    (lo - span * margin, hi + span * margin)
}

/// Tick label: enough decimals for ticks about `span / 5` apart, exponent form for huge or tiny
/// magnitudes, `k`/`M` for large steps.
fn format_tick(v: f64, span: f64, steps: bool) -> String {
    let a = v.abs();
    if steps && a >= 1e3 && span >= 1e4 {
        return if a >= 1e6 { trim(format!("{:.2}", v / 1e6)) + "M" } else { trim(format!("{:.1}", v / 1e3)) + "k" };
    }
    if a <= span * 1e-9 {
        return "0".into();
    }
    if !(1e-4..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    // Two more decimals than the tick spacing needs (ticks may sit at 0.25), zeros trimmed.
    let prec = ((-(span / 5.0).log10()).ceil() + 2.0).clamp(0.0, 8.0) as usize;
    let s = trim(format!("{v:.prec$}"));
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Where the legend box covers the least of the curves: each line is sampled along its
/// segments and the samples inside a box of the legend's size are counted at each corner and
/// at the middle of each side; corners win ties, right-hand ones first (curves settle on the
/// right, legends read there).
fn legend_corner(
    lines: &[Vec<(f64, f64)>],
    entries: usize,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> SeriesLabelPosition {
    // The box as a fraction of the plotting area (~270 px high): about 45% wide, 17 px per
    // entry plus its padding and its distance from the axes.
    let (bw, bh) = (0.45, ((entries as f64 * 17.0 + 30.0) / 270.0).min(0.9));
    let middle = (0.5 - bh / 2.0, 0.5 + bh / 2.0);
    let corners = [
        (SeriesLabelPosition::UpperRight, (1.0 - bw, 1.0), (1.0 - bh, 1.0)),
        (SeriesLabelPosition::LowerRight, (1.0 - bw, 1.0), (0.0, bh)),
        (SeriesLabelPosition::UpperLeft, (0.0, bw), (1.0 - bh, 1.0)),
        (SeriesLabelPosition::LowerLeft, (0.0, bw), (0.0, bh)),
        (SeriesLabelPosition::MiddleRight, (1.0 - bw, 1.0), middle),
        (SeriesLabelPosition::MiddleLeft, (0.0, bw), middle),
    ];
    let norm = |(x, y): (f64, f64)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
    let mut samples: Vec<(f64, f64)> = Vec::new();
    for line in lines {
        if let [only] = line.as_slice() {
            samples.push(norm(*only));
        }
        for w in line.windows(2) {
            let (a, b) = (norm(w[0]), norm(w[1]));
            samples.extend((0..=20).map(|k| {
                let t = k as f64 / 20.0;
                (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
            }));
        }
    }
    let covered = |(xs, ys): ((f64, f64), (f64, f64))| {
        samples.iter().filter(|(x, y)| (xs.0..=xs.1).contains(x) && (ys.0..=ys.1).contains(y)).count()
    };
    corners
        .iter()
        .min_by_key(|(_, xs, ys)| covered((*xs, *ys)))
        .map(|(p, _, _)| p.clone())
        .unwrap_or(SeriesLabelPosition::UpperRight)
}

/// Whether every finite value of a series lies in [0, 1] (a fraction: accuracy, IoU, …).
fn is_fraction(s: &Series) -> bool {
    s.points.iter().all(|(_, v)| !v.is_finite() || (0.0..=1.0).contains(v))
}

/// The title of the Δm panel, in curves.png and compare's chart: its unit and direction.
pub const DELTA_M_PANEL: &str = "Δm % (lower is better)";

/// Groups series into rows of panels: per task a loss panel (train and val losses), a
/// metrics panel (its val metrics in [0, 1]) and a panel of its own for every other metric;
/// then, when a balancer changed them, the task weights; then Δm. `best` is drawn from the
/// monitored key (`<task>.<metric>`; `loss`, the sum of the val losses, has no panel).
pub fn task_chart(title: &str, records: &[Record], tasks: &[String], best: Option<(u64, &str, f64)>) -> Chart {
    let mut raw: Vec<Series> = Vec::new();
    let mut push = |panel: String, name: &str, split: Split, point: (f64, f64)| match raw
        .iter_mut()
        .find(|s| s.panel == panel && s.name == name && s.split == split)
    {
        Some(s) => s.points.push(point),
        None => raw.push(Series { panel, name: name.to_string(), split, points: vec![point] }),
    };
    for r in records {
        let (Some(step), Some(split)) =
            (r.get("step").and_then(|v| v.as_f64()), r.get("split").and_then(|v| v.as_str()))
        else {
            continue;
        };
        let split = Split::of(split);
        for (key, value) in r {
            let v = value.as_f64().unwrap_or(f64::NAN);
            if key == "delta_m" {
                push(DELTA_M_PANEL.into(), "Δm", split, (step, v));
                continue;
            }
            let Some((task, metric)) = key.split_once('.') else { continue };
            if !tasks.iter().any(|t| t == task) || value.is_string() {
                continue;
            }
            match (metric, split) {
                ("loss", _) => push(format!("{task}: loss"), "loss", split, (step, v)),
                ("weight", _) => push("task weights".into(), task, split, (step, v)),
                (_, Split::Val) => push(format!("{task}: val metrics"), metric, split, (step, v)),
                _ => {}
            }
        }
    }
    // Metrics outside [0, 1] (errors in metres, angles in degrees) would flatten the fractions.
    for s in raw.iter_mut() {
        if s.panel.ends_with(": val metrics") && !is_fraction(s) {
            s.panel = format!("{}: {}", s.panel.trim_end_matches(": val metrics"), s.name);
        }
    }
    let weights_vary = raw
        .iter()
        .filter(|s| s.panel == "task weights")
        .any(|s| s.points.iter().any(|p| (p.1 - s.points[0].1).abs() > 1e-12));
    raw.retain(|s| s.panel != "task weights" || weights_vary);

    let mut rows: Vec<Vec<String>> = Vec::new();
    for task in tasks {
        let mut row: Vec<String> = Vec::new();
        for s in raw.iter().filter(|s| s.panel.starts_with(&format!("{task}: "))) {
            if !row.contains(&s.panel) {
                row.push(s.panel.clone());
            }
        }
        // Loss first, then the fractions, then the metrics with panels of their own.
        row.sort_by_key(|p| (!p.ends_with(": loss"), !p.ends_with(": val metrics")));
        rows.push(row);
    }
    let extra: Vec<String> = ["task weights", DELTA_M_PANEL]
        .iter()
        .filter(|p| raw.iter().any(|s| s.panel == **p))
        .map(|p| p.to_string())
        .collect();
    if !extra.is_empty() {
        rows.push(extra);
    }
    rows.retain(|r| !r.is_empty());

    let best = best
        .map(|(step, key, value)| {
            let point = key.split_once('.').and_then(|(task, metric)| {
                raw.iter()
                    .find(|s| s.split == Split::Val && s.name == metric && s.panel.starts_with(&format!("{task}: ")))
            });
            Best { step: step as f64, name: None, point: point.map(|s| (s.panel.clone(), value)) }
        })
        .into_iter()
        .collect();
    Chart { title: title.into(), rows, series: raw, best }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn curve(panel: &str, name: &str, split: Split, n: usize, f: impl Fn(f64) -> f64) -> Series {
        let points = (0..n).map(|i| (i as f64 * 50.0, f(i as f64 * 50.0))).collect();
        Series { panel: panel.into(), name: name.into(), split, points }
    }

    fn pixels_of(img: &image::RgbImage, c: RGBColor) -> usize {
        img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_tick(12500.0, 20000.0, true), "12.5k");
        assert_eq!(format_tick(2_000_000.0, 3e6, true), "2M");
        assert_eq!(format_tick(5000.0, 20000.0, true), "5k");
        assert_eq!(format_tick(5000.0, 8000.0, true), "5000");
        assert_eq!(format_tick(300.0, 1000.0, true), "300");
        assert_eq!(format_tick(0.25, 1.0, false), "0.25");
        assert_eq!(format_tick(0.30000000000000004, 1.0, false), "0.3");
        assert_eq!(format_tick(-0.0, 1.0, false), "0");
        assert_eq!(format_tick(-1e-17, 1.0, false), "0");
        assert_eq!(format_tick(1.5, 4.0, false), "1.5");
        assert_eq!(format_tick(1e-7, 1e-6, false), "1.0e-7");
    }

    #[test]
    fn grid_layout() {
        let chart = |n: usize| {
            let series = (0..n).map(|i| curve(&format!("p{i}"), "x", Split::Val, 2, |s| s)).collect();
            Chart::grid("t", series, vec![]).dimensions()
        };
        assert_eq!(chart(0), (1, 1));
        assert_eq!(chart(1), (1, 1));
        assert_eq!(chart(2), (2, 1));
        assert_eq!(chart(3), (2, 2));
        assert_eq!(chart(5), (3, 2));
        assert_eq!(chart(10), (4, 3));
    }

    fn rows() -> Vec<Record> {
        let mut out = Vec::new();
        for step in (10..=100).step_by(10) {
            let s = step as f64;
            let train = json!({"step": step, "epoch": 0, "split": "train", "seg.loss": 2.0 / s, "seg.weight": 1.0 + s / 100.0,
                "kind.loss": 3.0 / s, "kind.weight": 1.0, "lr": 0.1});
            out.push(train.as_object().unwrap().clone());
            if step % 50 == 0 {
                let val = json!({"step": step, "epoch": 0, "split": "val", "seg.loss": 2.5 / s, "seg.miou": s / 200.0,
                    "seg.pixel_accuracy": s / 150.0, "kind.loss": 3.5 / s, "kind.accuracy": s / 120.0,
                    "depth.abs_error": 0.4, "depth.mean_angle": 35.0 - s / 10.0, "delta_m": -3.0 + s / 50.0});
                out.push(val.as_object().unwrap().clone());
            }
        }
        out
    }

    #[test]
    fn losses_metrics_and_extras_get_their_own_panels() {
        let tasks = vec!["kind".to_string(), "seg".to_string(), "depth".to_string()];
        let chart = task_chart("run", &rows(), &tasks, Some((50, "seg.miou", 0.25)));
        assert_eq!(
            chart.rows,
            vec![
                vec!["kind: loss".to_string(), "kind: val metrics".to_string()],
                vec!["seg: loss".to_string(), "seg: val metrics".to_string()],
                vec!["depth: val metrics".to_string(), "depth: mean_angle".to_string()],
                vec!["task weights".to_string(), DELTA_M_PANEL.to_string()],
            ]
        );
        let loss: Vec<_> = chart.series.iter().filter(|s| s.panel == "seg: loss").map(|s| s.split).collect();
        assert_eq!(loss, vec![Split::Train, Split::Val]);
        assert!(chart.series.iter().all(|s| s.panel != "kind: val metrics" || s.name != "loss"));
        assert_eq!(chart.best, vec![Best { step: 50.0, name: None, point: Some(("seg: val metrics".into(), 0.25)) }]);
        // Static weights say nothing: no weights panel.
        let flat: Vec<Record> = rows()
            .into_iter()
            .map(|mut r| {
                if r.contains_key("seg.weight") {
                    r.insert("seg.weight".into(), json!(1.0));
                }
                r
            })
            .collect();
        let chart = task_chart("run", &flat, &tasks, None);
        assert_eq!(chart.rows.last().unwrap(), &vec![DELTA_M_PANEL.to_string()]);
    }

    #[test]
    fn one_colour_per_name_in_every_panel() {
        let tasks = vec!["kind".to_string(), "seg".to_string()];
        let chart = task_chart("run", &rows(), &tasks, None);
        // "loss" is the first name: the first colour, in both loss panels.
        assert_eq!(chart.colour("loss"), PALETTE[0]);
        assert_ne!(chart.colour("accuracy"), chart.colour("miou"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        chart.write_png(&path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let (pw, ph) = PANEL_SIZE;
        for row in 0..2u32 {
            let panel = image::imageops::crop_imm(&img, 0, TITLE_HEIGHT + row * ph, pw, ph).to_image();
            assert!(pixels_of(&panel, PALETTE[0]) > 100, "loss colour in row {row}");
        }
    }

    #[test]
    fn writes_a_readable_png_with_best_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("curves.png");
        let series = vec![
            curve("shape: loss", "loss", Split::Train, 200, |s| 2.0 * (-s / 3000.0).exp() + 0.1),
            curve("shape: loss", "loss", Split::Val, 10, |s| 2.1 * (-s / 3000.0).exp() + 0.2),
            curve("shape: val metrics", "accuracy", Split::Val, 10, |s| 1.0 - (-s / 200.0).exp() * 0.9),
            curve("segment: loss", "loss", Split::Train, 200, |s| 1.5 * (-s / 4000.0).exp()),
            Series { panel: "depth".into(), name: "nan only".into(), split: Split::Val, points: vec![(0.0, f64::NAN)] },
        ];
        let best = vec![Best { step: 400.0, name: None, point: Some(("shape: val metrics".into(), 0.88)) }];
        let chart = Chart::grid("run test: curves", series, best);
        chart.write_png(&path).unwrap();
        assert!(!path.with_file_name("curves.png.tmp").exists());

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), chart.image_size());
        assert_eq!(img.dimensions(), (2 * PANEL_SIZE.0, 2 * PANEL_SIZE.1 + TITLE_HEIGHT));
        for c in [PALETTE[0], PALETTE[1]] {
            assert!(pixels_of(&img, c) > 100, "colour {c:?}");
        }
        // The best checkpoint's line and star change the picture.
        let without = Chart { best: vec![], ..chart.clone() };
        without.write_png(&path).unwrap();
        let plain = image::open(&path).unwrap().to_rgb8();
        let changed = img.pixels().zip(plain.pixels()).filter(|(a, b)| a != b).count();
        assert!(changed > 300, "best marks changed {changed} pixels");
        let title_ink = (0..TITLE_HEIGHT)
            .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 100))
            .count();
        assert!(title_ink > 50, "title band has {title_ink} dark pixels");
    }

    #[test]
    fn degenerate_inputs_still_plot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let empty = Chart::grid("empty", vec![], vec![]);
        empty.write_png(&path).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), empty.image_size());

        let flat = vec![
            Series { panel: "a".into(), name: "one point".into(), split: Split::Val, points: vec![(5.0, 0.3)] },
            Series {
                panel: "a".into(),
                name: "flat".into(),
                split: Split::Train,
                points: vec![(0.0, 0.3), (10.0, 0.3)],
            },
            Series { panel: "b".into(), name: "empty".into(), split: Split::Val, points: vec![] },
            Series {
                panel: "b".into(),
                name: "inf".into(),
                split: Split::Train,
                points: vec![(1.0, f64::INFINITY), (2.0, 1e9)],
            },
        ];
        let best = vec![Best { step: f64::NAN, name: Some("flat".into()), point: Some(("a".into(), f64::NAN)) }];
        let chart = Chart::grid("flat", flat, best);
        chart.write_png(&path).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), chart.image_size());
    }
}
