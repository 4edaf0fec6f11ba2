//! Training curves as one PNG: a panel per distinct [`Series::panel`] (laid out in a grid, in
//! order of first appearance), each series a coloured line with a legend entry, x = step.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (the `dejavu` crate), registered
//! with plotters' `ab_glyph` renderer, so plotting works on machines without system fonts.
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

/// One curve: `points` are `(step, value)`; non-finite points are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The panel it is drawn in, e.g. a task name.
    pub panel: String,
    /// Its legend entry, e.g. "train loss" or "val accuracy".
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Pixels of one panel.
pub const PANEL_SIZE: (u32, u32) = (560, 380);
/// Pixels of the title band above the panels.
pub const TITLE_HEIGHT: u32 = 44;

/// The family every text style here uses; it is also registered as "serif" and "monospace"
/// so no plotters default can ask for a font that is not there.
const FAMILY: &str = "sans-serif";

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

fn centre() -> Pos {
    Pos::new(HPos::Center, VPos::Center)
}

/// Series with at most this many points also get a dot at each point (one evaluation per
/// epoch would otherwise be hard to see, and a single point would not show at all).
const MARKER_MAX_POINTS: usize = 40;

fn register_fonts() -> Result<()> {
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

/// Columns and rows of the panel grid for `n` panels (at least one).
pub fn grid(n: usize) -> (u32, u32) {
    let n = n.max(1) as u32;
    let cols = (1..).find(|c| c * c >= n).unwrap_or(1);
    (cols, n.div_ceil(cols))
}

/// Width and height of the PNG for `n` panels.
pub fn image_size(n: usize) -> (u32, u32) {
    let (cols, rows) = grid(n);
    (cols * PANEL_SIZE.0, rows * PANEL_SIZE.1 + TITLE_HEIGHT)
}

/// The distinct panels in order of first appearance.
fn panels(series: &[Series]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for s in series {
        if !names.contains(&s.panel.as_str()) {
            names.push(&s.panel);
        }
    }
    names
}

/// Writes the curves to `path` as a PNG (through a temporary file and a rename, so a reader
/// never sees half a file); creates the parent directory if needed.
pub fn write_curves_png(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    register_fonts()?;
    let names = panels(series);
    let (w, h) = image_size(names.len());
    let mut buf = vec![255u8; (w * h * 3) as usize];
    render(&mut buf, (w, h), title, &names, series)?;

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
            &buf,
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

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

fn render(buf: &mut [u8], (w, h): (u32, u32), title: &str, names: &[&str], series: &[Series]) -> Result<()> {
    let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (head, body) = root.split_vertically(TITLE_HEIGHT);
    let style = TextStyle::from((FAMILY, 26).into_font()).color(&BLACK).pos(centre());
    head.draw_text(title, &style, (w as i32 / 2, TITLE_HEIGHT as i32 / 2)).map_err(plot_err)?;

    let (cols, rows) = grid(names.len());
    let cells = body.split_evenly((rows as usize, cols as usize));
    if names.is_empty() {
        draw_panel(&cells[0], "no data", &[])?;
    }
    for (cell, name) in cells.iter().zip(names) {
        let own: Vec<&Series> = series.iter().filter(|s| s.panel == *name).collect();
        draw_panel(cell, name, &own)?;
    }
    root.present().map_err(plot_err)
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

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, name: &str, series: &[&Series]) -> Result<()> {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
        .collect();
    let all = || finite.iter().flatten();
    let (x0, x1) = range(all().map(|p| p.0), 0.0);
    let (y0, y1) = range(all().map(|p| p.1), 0.05);

    let mut chart = ChartBuilder::on(area)
        .caption(name, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    let (xs, ys) = (x1 - x0, y1 - y0);
    let xfmt = move |v: &f64| format_tick(*v, xs, true);
    let yfmt = move |v: &f64| format_tick(*v, ys, false);
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .x_desc("step")
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
        .map_err(plot_err)?;

    if finite.iter().all(|p| p.is_empty()) {
        let style = TextStyle::from((FAMILY, 16).into_font()).color(&RGBColor(120, 120, 120)).pos(centre());
        chart
            .draw_series(std::iter::once(Text::new("no data", ((x0 + x1) / 2.0, (y0 + y1) / 2.0), style)))
            .map_err(plot_err)?;
    }
    for (i, (s, pts)) in series.iter().zip(&finite).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    // Markers over every line, so a lone point is not hidden under a later series' line.
    for (i, pts) in finite.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if pts.len() <= MARKER_MAX_POINTS {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(plot_err)?;
        }
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(legend_corner(&finite, (x0, x1), (y0, y1)))
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// The right-hand corner with fewer points under it (losses fall, accuracies rise).
fn legend_corner(points: &[Vec<(f64, f64)>], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let (mut upper, mut lower) = (0usize, 0usize);
    for &(x, y) in points.iter().flatten() {
        let (u, v) = ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
        if u > 0.45 {
            upper += usize::from(v > 0.55);
            lower += usize::from(v < 0.45);
        }
    }
    if upper > lower {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// One panel per task: its training loss and every val metric, against the step, from the
/// rows of `metrics.jsonl`.
pub fn task_series(records: &[super::report::Record], tasks: &[String]) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for r in records {
        let (Some(step), Some(split)) =
            (r.get("step").and_then(|v| v.as_f64()), r.get("split").and_then(|v| v.as_str()))
        else {
            continue;
        };
        for (key, value) in r {
            let (Some((task, metric)), Some(v)) = (key.split_once('.'), value.as_f64()) else { continue };
            if !tasks.iter().any(|t| t == task) {
                continue;
            }
            let label = format!("{split} {metric}");
            match out.iter_mut().find(|s| s.panel == task && s.label == label) {
                Some(s) => s.points.push((step, v)),
                None => out.push(Series { panel: task.to_string(), label, points: vec![(step, v)] }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(panel: &str, label: &str, n: usize, f: impl Fn(f64) -> f64) -> Series {
        let points = (0..n).map(|i| (i as f64 * 50.0, f(i as f64 * 50.0))).collect();
        Series { panel: panel.into(), label: label.into(), points }
    }

    #[test]
    fn grid_layout() {
        assert_eq!(grid(0), (1, 1));
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(2), (2, 1));
        assert_eq!(grid(3), (2, 2));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(5), (3, 2));
        assert_eq!(grid(10), (4, 3));
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
    fn writes_a_readable_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("curves.png");
        let series = vec![
            curve("shape", "train loss", 200, |s| 2.0 * (-s / 3000.0).exp() + 0.1),
            curve("shape", "val accuracy", 10, |s| 1.0 - (-s / 200.0).exp() * 0.9),
            curve("segment", "train loss", 200, |s| 1.5 * (-s / 4000.0).exp()),
            curve("segment", "val miou", 10, |s| 0.6 - 0.5 * (-s / 250.0).exp()),
            Series { panel: "depth".into(), label: "nan only".into(), points: vec![(0.0, f64::NAN)] },
        ];
        write_curves_png(&path, "run test: curves", &series).unwrap();
        assert!(!path.with_file_name("curves.png.tmp").exists());

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), image_size(3));
        assert_eq!(img.dimensions(), (2 * PANEL_SIZE.0, 2 * PANEL_SIZE.1 + TITLE_HEIGHT));

        let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 2000, "only {non_white} drawn pixels");
        // Both lines of the first panel are there in their palette colours.
        for c in [PALETTE[0], PALETTE[1]] {
            let n = img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
            assert!(n > 100, "colour {c:?}: {n} pixels");
        }
        // The title is rendered text: dark pixels in the title band.
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
        write_curves_png(&path, "empty", &[]).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), image_size(1));

        let flat = vec![
            Series { panel: "a".into(), label: "one point".into(), points: vec![(5.0, 0.3)] },
            Series { panel: "a".into(), label: "flat".into(), points: vec![(0.0, 0.3), (10.0, 0.3)] },
            Series { panel: "b".into(), label: "empty".into(), points: vec![] },
            Series { panel: "b".into(), label: "inf".into(), points: vec![(1.0, f64::INFINITY), (2.0, 1e9)] },
        ];
        write_curves_png(&path, "flat", &flat).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), image_size(2));
    }
}
