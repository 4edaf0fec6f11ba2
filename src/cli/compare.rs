//! `mtl-train compare`: a table of runs (architecture, method, per-task metrics, Δm, time per
//! step); where one configuration (name, architecture, method) ran with several seeds, its mean
//! and spread over them; and a chart of val metrics and losses: one colour per configuration in
//! every panel (averaged over its seeds), training losses solid and val values dashed, and a
//! single run's best checkpoint starred.
use clap::Args;
use mtl::balance::GradientSpace;
use mtl::checkpoint::RunDir;
use mtl::tasks::{delta_m, is_quality_metric, Baselines};
use mtl::train::plot::{Best, Chart, Series, Split};
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
    comparison_chart(&rows)
        .write_png(&args.chart)
        .map_err(|e| mtl::user_error!("{}: cannot write chart: {e:#}", args.chart.display()))?;
    println!("chart: {}", args.chart.display());
    Ok(ExitCode::SUCCESS)
}

/// One line of the comparison table.
#[derive(Debug, Clone)]
struct RunSummary {
    run: PathBuf,
    name: String,
    architecture: String,
    method: String,
    seed: u64,
    metrics: Vec<(String, f64)>,
    delta_m: Option<f64>,
    /// Median seconds per training step over the logged windows.
    seconds_per_step: Option<f64>,
    /// `<task>.<metric>` in chart order: per task its loss, then its metrics (main first).
    keys: Vec<String>,
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
        architecture: cfg.model.architecture.kind.clone(),
        method,
        seed: cfg.seed,
        metrics: metrics.into_iter().filter(|(k, _)| is_quality_metric(k)).collect(),
        delta_m,
        seconds_per_step: per_step.get(per_step.len() / 2).copied(),
        keys: resolved
            .tasks
            .iter()
            .flat_map(|t| {
                let metrics = t.metric_names().into_iter().filter(|m| *m != "loss");
                std::iter::once("loss").chain(metrics).map(|m| format!("{}.{m}", t.name)).collect::<Vec<_>>()
            })
            .collect(),
    })
}

/// A Markdown table of runs: architecture, method, every quality metric, Δm, time per step
/// (and relative to the first hard-sharing run whose method is `static`, or else the first
/// `static` one).
fn table(rows: &[RunSummary]) -> String {
    let keys = metric_keys(rows);
    let statics = || rows.iter().filter(|r| r.method == "static");
    let reference = statics()
        .find(|r| r.architecture == mtl::config::DEFAULT_ARCHITECTURE)
        .or_else(|| statics().next())
        .and_then(|r| r.seconds_per_step);
    let mut out = format!("| run | architecture | method | seed | {} | Δm % | s/step | × static |\n", keys.join(" | "));
    out.push_str(&format!("|{}\n", " --- |".repeat(keys.len() + 7)));
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
            "| {} | {} | {} | {} | {} | {dm} | {sps} | {rel} |\n",
            r.name,
            r.architecture,
            r.method,
            r.seed,
            cells.join(" | ")
        ));
    }
    out
}

/// The runs of each configuration (config name, architecture, method), in order of first
/// appearance: the seeds of one configuration.
fn by_configuration(rows: &[RunSummary]) -> Vec<Vec<&RunSummary>> {
    let mut groups: Vec<Vec<&RunSummary>> = Vec::new();
    for r in rows {
        let same = |g: &Vec<&RunSummary>| {
            g[0].name == r.name && g[0].architecture == r.architecture && g[0].method == r.method
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// A Markdown table with one row per configuration that ran with more than one seed: the mean of
/// every quality metric, and Δm's mean, sample standard deviation and range. `None` when no
/// method has several seeds.
fn seed_summary(rows: &[RunSummary]) -> Option<String> {
    let groups: Vec<_> = by_configuration(rows).into_iter().filter(|g| g.len() > 1).collect();
    if groups.is_empty() {
        return None;
    }
    let keys = metric_keys(rows);
    let mut out = format!(
        "| run | architecture | method | seeds | {} | Δm % mean | Δm sd | Δm min … max |\n",
        keys.iter().map(|k| format!("{k} mean")).collect::<Vec<_>>().join(" | ")
    );
    out.push_str(&format!("|{}\n", " --- |".repeat(keys.len() + 7)));
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
            "| {} | {} | {} | {} | {} | {dm_cells} |\n",
            g[0].name,
            g[0].architecture,
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

/// Per task a row of panels: its loss (train solid, val dashed) and each quality metric; then
/// Δm. One line per configuration in its colour, the mean over its seeds at the steps every seed
/// logged; a single run's best checkpoint starred where the monitored metric has a panel.
fn comparison_chart(rows: &[RunSummary]) -> Chart {
    let mut series: Vec<Series> = Vec::new();
    let mut best = Vec::new();
    for group in by_configuration(rows) {
        let r = group[0];
        let label = match (r.architecture.as_str(), group.len()) {
            (mtl::config::DEFAULT_ARCHITECTURE, 1) => format!("{} [{}]", r.name, r.method),
            (mtl::config::DEFAULT_ARCHITECTURE, n) => format!("{} [{}] ({n} seeds)", r.name, r.method),
            (arch, 1) => format!("{} [{arch}, {}]", r.name, r.method),
            (arch, n) => format!("{} [{arch}, {}] ({n} seeds)", r.name, r.method),
        };
        // (panel, split, step) → (sum, count) over the group's runs
        let mut sums: Vec<(String, Split, f64, f64, usize)> = Vec::new();
        for run in &group {
            for rec in read_records(&RunDir::new(&run.run).metrics()) {
                let (Some(step), Some(split)) =
                    (rec.get("step").and_then(|s| s.as_f64()), rec.get("split").and_then(|s| s.as_str()))
                else {
                    continue;
                };
                let split = Split::of(split);
                for (k, v) in metric_values(&rec) {
                    let shown = match split {
                        Split::Val => is_quality_metric(&k) || k == "delta_m" || k.ends_with(".loss"),
                        Split::Train => k.ends_with(".loss"),
                    };
                    if !shown {
                        continue;
                    }
                    let panel = if k == "delta_m" { "Δm (%)".to_string() } else { k };
                    match sums.iter_mut().find(|e| e.0 == panel && e.1 == split && e.2 == step) {
                        Some(e) => (e.3, e.4) = (e.3 + v, e.4 + 1),
                        None => sums.push((panel, split, step, v, 1)),
                    }
                }
            }
        }
        for (panel, split, step, sum, count) in sums.into_iter().filter(|e| e.4 == group.len()) {
            let point = (step, sum / count as f64);
            match series.iter_mut().find(|s| s.panel == panel && s.name == label && s.split == split) {
                Some(s) => s.points.push(point),
                None => series.push(Series { panel, name: label.clone(), split, points: vec![point] }),
            }
        }
        // Seeds stop at different best steps: only a single run's best is drawn.
        if let (1, Some(b)) = (group.len(), RunDir::new(&r.run).best()) {
            let point = series.iter().any(|s| s.panel == b.metric).then(|| (b.metric.clone(), b.value));
            best.push(Best { step: b.step as f64, name: Some(label.clone()), point });
        }
    }
    let mut chart = Chart::grid("comparison (★ and dotted line: each single run's best checkpoint)", series, best);
    let mut order: Vec<&str> = Vec::new();
    for k in rows.iter().flat_map(|r| &r.keys) {
        if !order.contains(&k.as_str()) {
            order.push(k);
        }
    }
    chart.rows = panel_rows(&chart.series, &order);
    chart
}

/// One row per task, panels in `order` (the runs' tasks and metrics), anything else after
/// them; Δm last.
fn panel_rows(series: &[Series], order: &[&str]) -> Vec<Vec<String>> {
    let rank = |panel: &str| order.iter().position(|k| *k == panel).unwrap_or(order.len());
    let mut panels: Vec<&str> = Vec::new();
    for s in series {
        if !panels.contains(&s.panel.as_str()) {
            panels.push(&s.panel);
        }
    }
    panels.sort_by_key(|p| rank(p)); // stable: unknown panels keep their order
    let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
    for p in panels {
        let task = p.split_once('.').map_or(p, |(t, _)| t);
        match rows.iter_mut().find(|(t, _)| *t == task) {
            Some((_, row)) => row.push(p.to_string()),
            None => rows.push((task, vec![p.to_string()])),
        }
    }
    rows.into_iter().map(|(_, r)| r).collect()
}
