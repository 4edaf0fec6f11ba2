//! `affinity.png`: a run's mean inter-task affinity (TAG's lookahead, row i = the task whose
//! step it is, column j = the task whose loss moved) beside the mean gradient cosine, as two
//! annotated heatmaps. Colour: red where a task's step lowered the other's loss (or the
//! gradients agree), blue where it raised it, white at zero; each panel scaled to its own
//! largest magnitude, so the sign is always readable.
use super::affinity::Summary;
use super::plot::{plot_err, register_fonts, save_png, FAMILY};
use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Pixels of one matrix cell, and of the margins around a panel.
const CELL: u32 = 64;
const MARGIN: u32 = 120;
const TITLE: u32 = 56;

/// Draws the two matrices of `summary` into `path`.
pub fn affinity_heatmap(run_name: &str, summary: &Summary, path: &Path) -> Result<()> {
    register_fonts()?;
    let t = summary.tasks.len() as u32;
    let panel = (t * CELL + MARGIN + 24, t * CELL + MARGIN);
    let (w, h) = (2 * panel.0, panel.1 + TITLE);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (head, body) = root.split_vertically(TITLE);
        let title = format!("{run_name}: transfer between tasks ({} measured steps)", summary.steps);
        let style = TextStyle::from((FAMILY, 22).into_font()).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
        head.draw_text(&title, &style, (w as i32 / 2, TITLE as i32 / 2)).map_err(plot_err)?;
        let (left, right) = body.split_horizontally(panel.0);
        draw_matrix(
            &left,
            "lookahead affinity Z[i→j] (row i steps, column j's loss)",
            &summary.tasks,
            &summary.affinity,
        )?;
        draw_matrix(&right, "gradient cosine on the shared parameters", &summary.tasks, &summary.cosine)?;
        root.present().map_err(plot_err)?;
    }
    save_png(path, &buf, (w, h))
}

fn draw_matrix(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    tasks: &[String],
    m: &[Vec<f64>],
) -> Result<()> {
    let scale = m.iter().flatten().fold(0f64, |a, v| a.max(v.abs())).max(1e-12);
    let label = |size: u32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
    let at = |h, v| label(14).pos(Pos::new(h, v));
    area.draw_text(title, &label(14), (8, 8)).map_err(plot_err)?;
    let (x0, y0) = (MARGIN as i32, 40);
    let cell = CELL as i32;
    for (i, row) in m.iter().enumerate() {
        let name = short(&tasks[i]);
        area.draw_text(&name, &at(HPos::Right, VPos::Center), (x0 - 6, y0 + i as i32 * cell + cell / 2))
            .map_err(plot_err)?;
        for (j, &v) in row.iter().enumerate() {
            let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
            let fill = diverging(v / scale);
            area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], fill.filled())).map_err(plot_err)?;
            area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], RGBColor(200, 200, 200))).map_err(plot_err)?;
            let text = if v.abs() >= 0.01 || v == 0.0 { format!("{v:.2}") } else { format!("{v:.0e}") };
            area.draw_text(&text, &at(HPos::Center, VPos::Center), (x + cell / 2, y + cell / 2)).map_err(plot_err)?;
        }
    }
    let below = y0 + tasks.len() as i32 * cell + 6;
    for (j, name) in tasks.iter().enumerate() {
        area.draw_text(&short(name), &at(HPos::Center, VPos::Top), (x0 + j as i32 * cell + cell / 2, below))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// A task name that fits under a cell.
fn short(name: &str) -> String {
    match name.chars().count() {
        n if n <= 9 => name.to_string(),
        _ => format!("{}…", name.chars().take(8).collect::<String>()),
    }
}

/// White at 0, red towards +1, blue towards −1.
fn diverging(x: f64) -> RGBColor {
    let x = x.clamp(-1.0, 1.0);
    let fade = |c: u8| (255.0 - (255.0 - c as f64) * x.abs()) as u8;
    if x >= 0.0 {
        RGBColor(fade(214), fade(39), fade(40))
    } else {
        RGBColor(fade(31), fade(119), fade(180))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_of_both_matrices() {
        let dir = tempfile::tempdir().unwrap();
        let m = vec![vec![0.1, -0.05], vec![0.02, 0.3]];
        let s = Summary {
            tasks: vec!["kind".into(), "a_rather_long_name".into()],
            every: 1,
            steps: 3,
            seconds_per_step: 0.1,
            affinity: m.clone(),
            affinity_std: m.clone(),
            cosine: m.clone(),
            cosine_std: m,
        };
        let png = dir.path().join("affinity.png");
        affinity_heatmap("run", &s, &png).unwrap();
        let img = image::open(&png).unwrap();
        assert!(img.width() > 2 * 2 * CELL && img.height() > 2 * CELL);
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
        assert_eq!(diverging(1.0), RGBColor(214, 39, 40));
    }
}
