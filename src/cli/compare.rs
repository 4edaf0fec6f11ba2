//! `mtl-train compare`: a table of runs (method, per-task metrics, Δm, time per step), and
//! where a method ran with several seeds its mean and spread over them, and a chart of the val
//! metrics (one line per method, averaged over its seeds).
use clap::Args;
use mtl::balance::GradientSpace;
use mtl::checkpoint::RunDir;
use mtl::tasks::{delta_m, is_quality_metric, Baselines};
use mtl::train::plot::{write_curves_png, Series};
use mtl::train::report::{last_val, metric_values, read_records};
use mtl::user_bail;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Run directories to compare.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Baselines for Δm (otherwise the Δm the runs logged, if any).
    #[arg(long, value_name = "FILE")]
    baselines: Option<PathBuf>,
    /// The chart to write.
    #[arg(long, value_name = "FILE.png", default_value = "compare.png")]
    chart: PathBuf,
    /// Also write the table (Markdown) to this file.
    #[arg(long, value_name = "FILE.md")]
    table: Option<PathBuf>,
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let baselines = args.baselines.as_deref().map(Baselines::load).transpose()?;
    let rows = args.runs.iter().map(|r| summarise(r, baselines.as_ref())).collect::<anyhow::Result<Vec<_>>>()?;
    let mut table = table(&rows);
    if let Some(summary) = seed_summary(&rows) {
        table.push('\n');
        table.push_str(&summary);
    }
    print!("{table}");
    if let Some(path) = &args.table {
        super::write_file(path, &table)?;
    }
    write_curves_png(&args.chart, "comparison (val)", &comparison_series(&rows))
        .map_err(|e| mtl::user_error!("{}: cannot write chart: {e:#}", args.chart.display()))?;
    println!("chart: {}", args.chart.display());
    Ok(ExitCode::SUCCESS)
}

/// One line of the comparison table.
#[derive(Debug, Clone)]
struct RunSummary {
    run: PathBuf,
    name: String,
    method: String,
    seed: u64,
    metrics: Vec<(String, f64)>,
    delta_m: Option<f64>,
    /// Median seconds per training step over the logged windows.
    seconds_per_step: Option<f64>,
}

fn summarise(run: &Path, baselines: Option<&Baselines>) -> anyhow::Result<RunSummary> {
    let config_path = RunDir::new(run).config();
    if !config_path.is_file() {
        user_bail!("{}: not a run directory (no config.yaml)", run.display());
    }
    let resolved =
        mtl::setup::resolve(mtl::config::Config::load(&config_path, &[])?, &config_path.display().to_string(), run)?;
    let cfg = &resolved.cfg;
    let metrics = last_val(run);
    let delta_m = match baselines {
        Some(b) => delta_m(&metrics, &b.metrics, &resolved.tasks),
        None => metrics.iter().find(|(k, _)| k == "delta_m").map(|(_, v)| *v),
    };
    let mut per_step: Vec<f64> = read_records(&RunDir::new(run).metrics())
        .iter()
        .filter_map(|r| r.get("images_per_second").and_then(|v| v.as_f64()))
        .filter(|&ips| ips > 0.0)
        .map(|ips| cfg.data.batch_size as f64 / ips)
        .collect();
    per_step.sort_by(f64::total_cmp);
    // Gradient methods are labelled with the space their gradients were taken in.
    let method = match mtl::balance::build(cfg)?.space() {
        GradientSpace::Losses => cfg.balance.method.clone(),
        space => format!("{} ({space:?})", cfg.balance.method).to_lowercase(),
    };
    Ok(RunSummary {
        run: run.to_path_buf(),
        name: cfg.name.clone(),
        method,
        seed: cfg.seed,
        metrics: metrics.into_iter().filter(|(k, _)| is_quality_metric(k)).collect(),
        delta_m,
        seconds_per_step: per_step.get(per_step.len() / 2).copied(),
    })
}

/// A Markdown table of runs: method, every quality metric, Δm, time per step (and relative to
/// the first run whose method is `static`).
fn table(rows: &[RunSummary]) -> String {
    let keys = metric_keys(rows);
    let reference = rows.iter().find(|r| r.method == "static").and_then(|r| r.seconds_per_step);
    let mut out = format!("| run | method | seed | {} | Δm % | s/step | × static |\n", keys.join(" | "));
    out.push_str(&format!("|{}\n", " --- |".repeat(keys.len() + 6)));
    for r in rows {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| r.metrics.iter().find(|(m, _)| m == k).map(|(_, v)| format!("{v:.4}")).unwrap_or("–".into()))
            .collect();
        let dm = r.delta_m.map(|d| format!("{d:+.2}")).unwrap_or("–".into());
        let sps = r.seconds_per_step.map(|s| format!("{s:.4}")).unwrap_or("–".into());
        let rel = match (r.seconds_per_step, reference) {
            (Some(s), Some(b)) if b > 0.0 => format!("{:.2}", s / b),
            _ => "–".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {dm} | {sps} | {rel} |\n",
            r.name,
            r.method,
            r.seed,
            cells.join(" | ")
        ));
    }
    out
}

/// The runs of each (config name, method), in order of first appearance: the seeds of one
/// method.
fn by_method(rows: &[RunSummary]) -> Vec<Vec<&RunSummary>> {
    let mut groups: Vec<Vec<&RunSummary>> = Vec::new();
    for r in rows {
        match groups.iter_mut().find(|g| g[0].name == r.name && g[0].method == r.method) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// A Markdown table with one row per method that ran with more than one seed: the mean of
/// every quality metric, and Δm's mean, sample standard deviation and range. `None` when no
/// method has several seeds.
fn seed_summary(rows: &[RunSummary]) -> Option<String> {
    let groups: Vec<_> = by_method(rows).into_iter().filter(|g| g.len() > 1).collect();
    if groups.is_empty() {
        return None;
    }
    let keys = metric_keys(rows);
    let mut out = format!(
        "| run | method | seeds | {} | Δm % mean | Δm sd | Δm min … max |\n",
        keys.iter().map(|k| format!("{k} mean")).collect::<Vec<_>>().join(" | ")
    );
    out.push_str(&format!("|{}\n", " --- |".repeat(keys.len() + 6)));
    for g in groups {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let cells: Vec<String> = keys
            .iter()
            .map(|k| {
                let v: Vec<f64> =
                    g.iter().filter_map(|r| r.metrics.iter().find(|(m, _)| m == k).map(|(_, v)| *v)).collect();
                if v.len() == g.len() {
                    format!("{:.4}", mean(&v))
                } else {
                    "–".into()
                }
            })
            .collect();
        let dm: Vec<f64> = g.iter().filter_map(|r| r.delta_m).collect();
        let dm_cells = if dm.len() == g.len() {
            let m = mean(&dm);
            let sd = (dm.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (dm.len() - 1) as f64).sqrt();
            let (lo, hi) = dm.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &d| (a.min(d), b.max(d)));
            format!("{m:+.2} | {sd:.2} | {lo:+.2} … {hi:+.2}")
        } else {
            "– | – | –".into()
        };
        let seeds: Vec<String> = g.iter().map(|r| r.seed.to_string()).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {dm_cells} |\n",
            g[0].name,
            g[0].method,
            seeds.join(", "),
            cells.join(" | ")
        ));
    }
    Some(out)
}

/// Every quality metric of the runs, in order of first appearance.
fn metric_keys(rows: &[RunSummary]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for r in rows {
        for (k, _) in &r.metrics {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

/// One panel per val metric, one line per method against the step: the mean over the
/// method's seeds at the steps all of them evaluated.
fn comparison_series(rows: &[RunSummary]) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for group in by_method(rows) {
        let r = group[0];
        let label = match group.len() {
            1 => format!("{} [{}]", r.name, r.method),
            n => format!("{} [{}] ({n} seeds)", r.name, r.method),
        };
        // (panel, step) → (sum, count)
        let mut sums: Vec<(String, f64, f64, usize)> = Vec::new();
        for run in &group {
            for rec in read_records(&RunDir::new(&run.run).metrics()) {
                if rec.get("split").and_then(|s| s.as_str()) != Some("val") {
                    continue;
                }
                let Some(step) = rec.get("step").and_then(|s| s.as_f64()) else { continue };
                for (k, v) in metric_values(&rec).into_iter().filter(|(k, _)| is_quality_metric(k) || k == "delta_m") {
                    match sums.iter_mut().find(|(p, s, _, _)| *p == k && *s == step) {
                        Some(e) => (e.2, e.3) = (e.2 + v, e.3 + 1),
                        None => sums.push((k, step, v, 1)),
                    }
                }
            }
        }
        for (panel, step, sum, count) in sums.into_iter().filter(|e| e.3 == group.len()) {
            let point = (step, sum / count as f64);
            match series.iter_mut().find(|s| s.panel == panel && s.label == label) {
                Some(s) => s.points.push(point),
                None => series.push(Series { panel, label: label.clone(), points: vec![point] }),
            }
        }
    }
    series
}
