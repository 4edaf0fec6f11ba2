//! `mtl-train compare`: a table of runs (run directory, architecture, method, seed, per-task
//! metrics, Δm, time per step); where one configuration ran with several seeds, its mean and
//! spread over them; and a chart of val metrics and losses: one colour per configuration in
//! every panel (averaged over its seeds), training losses solid and val values dashed, and a
//! single run's best checkpoint starred.
//!
//! A configuration is the whole resolved config but the seed and the keys that do not change
//! what a run learns ([`NOT_RESULTS`]): two runs that differ in anything else (a learning
//! rate, a task weight, the epochs) are two configurations, shown side by side and never
//! averaged. Two runs of one configuration with the same seed are repeats, not seeds: they are
//! listed, not averaged.
use clap::Args;
use mtl::balance::GradientSpace;
use mtl::checkpoint::RunDir;
use mtl::tasks::{delta_m, is_quality_metric, signed_percent, Baselines, DELTA_M_DIRECTION};
use mtl::train::affinity::Summary;
use mtl::train::plot::{Best, Chart, Series, Split, DELTA_M_PANEL};
use mtl::train::report::{last_val, metric_values, read_records};
use mtl::user_bail;
use std::collections::BTreeMap;
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
    let groups = by_configuration(&rows);
    let mut table = table(&rows);
    if let Some(summary) = seed_summary(&rows, &groups) {
        table.push('\n');
        table.push_str(&summary);
    }
    if let Some(transfer) = transfer_table(&rows) {
        table.push('\n');
        table.push_str(&transfer);
    }
    let notes = configuration_notes(&groups);
    if !notes.is_empty() {
        table.push('\n');
        table.push_str(&notes);
    }
    print!("{table}");
    if let Some(path) = &args.table {
        super::write_file(path, &table)?;
    }
    comparison_chart(&rows, &groups)
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
    /// Δm at every evaluation, as (step, value): against `--baselines` when given, else as logged.
    delta_m_curve: Vec<(f64, f64)>,
    /// The config's leaves that can change what the run learns: equal for runs of one
    /// configuration.
    configuration: BTreeMap<String, String>,
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
    let dm_of = |values: &[(String, f64)]| match baselines {
        Some(b) => delta_m(values, &b.metrics, &resolved.tasks),
        None => values.iter().find(|(k, _)| k == "delta_m").map(|(_, v)| *v),
    };
    let delta_m = dm_of(&metrics);
    let records = read_records(&RunDir::new(run).metrics());
    let delta_m_curve = records
        .iter()
        .filter(|r| r.get("split").and_then(|s| s.as_str()) == Some("val"))
        .filter_map(|r| Some((r.get("step")?.as_f64()?, dm_of(&metric_values(r))?)))
        .collect();
    let mut per_step: Vec<f64> = records
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
        delta_m_curve,
        configuration: cfg.leaves().into_iter().filter(|(k, _)| changes_results(k)).collect(),
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

/// A Markdown table with one row per run that measured transfer between its tasks
/// (`report.affinity`, docs/TRANSFER.md): measured steps and their cost, the mean off-diagonal
/// lookahead affinity and gradient cosine, and the pairs that helped and hurt most. `None`
/// when no run measured it.
fn transfer_table(rows: &[RunSummary]) -> Option<String> {
    let measured: Vec<(&RunSummary, Summary)> =
        rows.iter().filter_map(|r| Some((r, Summary::read(&r.run).ok()?))).collect();
    if measured.is_empty() {
        return None;
    }
    let mut out = String::from(
        "| run | measured steps | s/measurement | mean affinity | mean cosine | most helpful i→j | most harmful i→j |\n",
    );
    out.push_str(&format!("|{}\n", " --- |".repeat(7)));
    for (r, s) in measured {
        let t = s.tasks.len();
        let pairs: Vec<(usize, usize)> =
            (0..t).flat_map(|i| (0..t).map(move |j| (i, j))).filter(|(i, j)| i != j).collect();
        let mean = |m: &[Vec<f64>]| pairs.iter().map(|&(i, j)| m[i][j]).sum::<f64>() / pairs.len().max(1) as f64;
        let by = |(i, j): (usize, usize)| s.affinity[i][j];
        let most = pairs.iter().copied().max_by(|&a, &b| by(a).total_cmp(&by(b)));
        let least = pairs.iter().copied().min_by(|&a, &b| by(a).total_cmp(&by(b)));
        let name = |p: Option<(usize, usize)>| {
            p.map(|(i, j)| format!("{}→{} {:+.2e}", s.tasks[i], s.tasks[j], s.affinity[i][j])).unwrap_or("–".into())
        };
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:+.2e} | {:+.3} | {} | {} |\n",
            shown(r),
            s.steps,
            s.seconds_per_step,
            mean(&s.affinity),
            mean(&s.cosine),
            name(most),
            name(least)
        ));
    }
    Some(out)
}

/// Config keys (and sections) that do not change what a run learns: labels, where and how fast
/// it runs, what it logs and which checkpoints it keeps, the data's transport, and the
/// baselines its Δm is logged against (a sweep gives each seed its own single-task baselines,
/// scripts/methods_sweep.sh). With the seed, the only keys in which runs of one configuration
/// may differ. Everything else, `data.root` included, tells configurations apart.
const NOT_RESULTS: &[&str] = &[
    "seed",
    "name",
    "device",
    "threads",
    "speed",
    "report",
    "checkpoint",
    "train.log_every",
    "train.eval_every",
    "train.baselines",
    "train.stop_grace_seconds",
    "train.dist_timeout_seconds",
    "data.download",
    "data.mirror",
    "data.max_memory_mb",
    "data.decode_threads",
    "data.prefetch_batches",
    "data.eval_batch_size",
];

/// Whether a config leaf (`optim.lr`, `tasks[1].weight`) can change what a run learns.
fn changes_results(key: &str) -> bool {
    !NOT_RESULTS.iter().any(|k| key == *k || key.starts_with(&format!("{k}.")))
}

/// A run's name in the tables and the chart: its directory as given.
fn shown(r: &RunSummary) -> String {
    r.run.display().to_string()
}

/// A Markdown table of runs: run directory, architecture, method, seed, every quality metric,
/// Δm, time per step (and relative to the first hard-sharing run whose method is `static`, or
/// else the first `static` one).
fn table(rows: &[RunSummary]) -> String {
    let keys = metric_keys(rows);
    let statics = || rows.iter().filter(|r| r.method == "static");
    let reference = statics()
        .find(|r| r.architecture == mtl::config::DEFAULT_ARCHITECTURE)
        .or_else(|| statics().next())
        .and_then(|r| r.seconds_per_step);
    let mut out = format!(
        "| run | architecture | method | seed | {} | Δm % ({DELTA_M_DIRECTION}) | s/step | × static |\n",
        keys.join(" | ")
    );
    out.push_str(&format!("|{}\n", " --- |".repeat(keys.len() + 7)));
    for r in rows {
        let cells: Vec<String> = keys
            .iter()
            .map(|k| r.metrics.iter().find(|(m, _)| m == k).map(|(_, v)| format!("{v:.4}")).unwrap_or("–".into()))
            .collect();
        let dm = r.delta_m.map(signed_percent).unwrap_or("–".into());
        let sps = r.seconds_per_step.map(|s| format!("{s:.4}")).unwrap_or("–".into());
        let rel = match (r.seconds_per_step, reference) {
            (Some(s), Some(b)) if b > 0.0 => format!("{:.2}", s / b),
            _ => "–".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {dm} | {sps} | {rel} |\n",
            shown(r),
            r.architecture,
            r.method,
            r.seed,
            cells.join(" | ")
        ));
    }
    out
}

/// The runs of each configuration (equal [`RunSummary::configuration`]), in order of first
/// appearance.
fn by_configuration(rows: &[RunSummary]) -> Vec<Vec<&RunSummary>> {
    let mut groups: Vec<Vec<&RunSummary>> = Vec::new();
    for r in rows {
        match groups.iter_mut().find(|g| g[0].configuration == r.configuration) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

/// Whether a configuration's runs are seeds: more than one, each with its own seed.
fn are_seeds(group: &[&RunSummary]) -> bool {
    let mut seeds: Vec<u64> = group.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    group.len() > 1 && seeds.len() == group.len()
}

/// A Markdown table with one row per configuration that ran with several seeds: the mean of
/// every quality metric, and Δm's mean, sample standard deviation and range. `None` when no
/// configuration has several seeds.
fn seed_summary(rows: &[RunSummary], groups: &[Vec<&RunSummary>]) -> Option<String> {
    let groups: Vec<_> = groups.iter().filter(|g| are_seeds(g)).collect();
    if groups.is_empty() {
        return None;
    }
    let keys = metric_keys(rows);
    let mut out = format!(
        "| runs | architecture | method | seeds | {} | Δm % mean ({DELTA_M_DIRECTION}) | Δm sd | Δm min … max |\n",
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
            format!("{} | {sd:.2} | {} … {}", signed_percent(m), signed_percent(lo), signed_percent(hi))
        } else {
            "– | – | –".into()
        };
        let runs: Vec<String> = g.iter().map(|r| shown(r)).collect();
        let seeds: Vec<String> = g.iter().map(|r| r.seed.to_string()).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {dm_cells} |\n",
            runs.join(", "),
            g[0].architecture,
            g[0].method,
            seeds.join(", "),
            cells.join(" | ")
        ));
    }
    Some(out)
}

/// What keeps runs apart that a reader could take for one experiment: runs of one
/// configuration with the same seed (repeats, not seeds), and configurations of one config
/// name, architecture and method that differ in other keys (named, up to five).
fn configuration_notes(groups: &[Vec<&RunSummary>]) -> String {
    let mut out = String::new();
    for g in groups.iter().filter(|g| g.len() > 1 && !are_seeds(g)) {
        let runs: Vec<String> = g.iter().map(|r| shown(r)).collect();
        out.push_str(&format!(
            "note: {} are one configuration with repeated seeds ({}): repeats, not seeds; not averaged\n",
            runs.join(", "),
            g.iter().map(|r| r.seed.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    for (i, g) in groups.iter().enumerate() {
        let same_label = |h: &&Vec<&RunSummary>| {
            h[0].name == g[0].name && h[0].architecture == g[0].architecture && h[0].method == g[0].method
        };
        let Some(first) = groups[..i].iter().find(same_label) else { continue };
        let (a, b) = (&first[0].configuration, &g[0].configuration);
        let mut differ: Vec<&String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
        differ.sort();
        differ.dedup();
        let more = differ.len().saturating_sub(5);
        let named: Vec<String> = differ.iter().take(5).map(|k| k.to_string()).collect();
        out.push_str(&format!(
            "note: {} and {} differ in {}{}: two configurations, not averaged\n",
            shown(first[0]),
            shown(g[0]),
            named.join(", "),
            if more > 0 { format!(" and {more} more keys") } else { String::new() }
        ));
    }
    out
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

/// The chart's lines: one per configuration run with several seeds (their mean), one per
/// run otherwise (a single run, or repeats of one seed).
fn chart_lines<'a>(groups: &[Vec<&'a RunSummary>]) -> Vec<Vec<&'a RunSummary>> {
    groups
        .iter()
        .flat_map(|g| match are_seeds(g) {
            true => vec![g.clone()],
            false => g.iter().map(|r| vec![*r]).collect(),
        })
        .collect()
}

/// Per task a row of panels: its loss (train solid, val dashed) and each quality metric; then
/// Δm (every run the table gives a Δm). One line per configuration in its colour, the mean
/// over its seeds at the steps every seed logged; a single run's best checkpoint starred where
/// the monitored metric has a panel.
fn comparison_chart(rows: &[RunSummary], groups: &[Vec<&RunSummary>]) -> Chart {
    let mut series: Vec<Series> = Vec::new();
    let mut best = Vec::new();
    for group in chart_lines(groups) {
        let r = group[0];
        let who = match group.len() {
            1 => shown(r),
            n => format!("{} ({n} seeds)", group.iter().map(|r| shown(r)).collect::<Vec<_>>().join(", ")),
        };
        let label = match r.architecture.as_str() {
            mtl::config::DEFAULT_ARCHITECTURE => format!("{who} [{}]", r.method),
            arch => format!("{who} [{arch}, {}]", r.method),
        };
        // (panel, split, step) → (sum, count) over the group's runs
        let mut sums: Vec<(String, Split, f64, f64, usize)> = Vec::new();
        let mut add = |panel: String, split: Split, step: f64, v: f64| match sums
            .iter_mut()
            .find(|e| e.0 == panel && e.1 == split && e.2 == step)
        {
            Some(e) => (e.3, e.4) = (e.3 + v, e.4 + 1),
            None => sums.push((panel, split, step, v, 1)),
        };
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
                        Split::Val => is_quality_metric(&k) || k.ends_with(".loss"),
                        Split::Train => k.ends_with(".loss"),
                    };
                    if shown {
                        add(k, split, step, v);
                    }
                }
            }
            // Δm as the table computes it (against --baselines when given).
            for &(step, v) in &run.delta_m_curve {
                add(DELTA_M_PANEL.to_string(), Split::Val, step, v);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory with the default config (at `lr`) and val rows with these seg.miou values.
    fn run_dir(root: &Path, name: &str, lr: f64, mious: &[f64]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = mtl::config::DEFAULT_CONFIG.replace("lr: 0.003", &format!("lr: {lr}"));
        assert_ne!(cfg, mtl::config::DEFAULT_CONFIG, "the default config's lr moved");
        std::fs::write(dir.join("config.yaml"), cfg).unwrap();
        let rows: Vec<String> = mious
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(r#"{{"step":{},"epoch":{},"split":"val","kind.accuracy":0.5,"seg.miou":{m}}}"#, i + 1, i + 1)
            })
            .collect();
        std::fs::write(dir.join("metrics.jsonl"), rows.join("\n") + "\n").unwrap();
        dir
    }

    #[test]
    fn delta_m_against_baselines_is_drawn_for_every_run_the_table_shows() {
        let tmp = tempfile::tempdir().unwrap();
        let baselines = Baselines {
            config: "shapes_seg".into(),
            metrics: [("kind.accuracy".to_string(), 0.5), ("seg.miou".to_string(), 0.5)].into(),
            runs: Default::default(),
        };
        // Neither run logged Δm: both have it only through --baselines.
        let a = run_dir(tmp.path(), "a", 0.01, &[0.4, 0.6]);
        let b = run_dir(tmp.path(), "b", 0.02, &[0.5]);
        let rows = vec![summarise(&a, Some(&baselines)).unwrap(), summarise(&b, Some(&baselines)).unwrap()];
        // seg.miou 0.6 against 0.5 is 20 % better, kind.accuracy equal: Δm = −10 %.
        assert!((rows[0].delta_m.unwrap() + 10.0).abs() < 1e-9, "{:?}", rows[0].delta_m);
        assert_eq!(rows[0].delta_m_curve.len(), 2);
        assert!((rows[0].delta_m_curve[0].1 - 10.0).abs() < 1e-9, "{:?}", rows[0].delta_m_curve);
        let groups = by_configuration(&rows);
        assert_eq!(groups.len(), 2, "two learning rates are two configurations");
        let chart = comparison_chart(&rows, &groups);
        let mut drawn: Vec<&str> =
            chart.series.iter().filter(|s| s.panel == DELTA_M_PANEL).map(|s| s.name.as_str()).collect();
        drawn.sort();
        let (a, b) = (format!("{} [static]", a.display()), format!("{} [static]", b.display()));
        assert_eq!(drawn, [a.as_str(), b.as_str()]);
        assert!(table(&rows).contains("| \u{2212}10.00 |"), "{}", table(&rows));
    }

    #[test]
    fn only_keys_that_change_what_a_run_learns_tell_configurations_apart() {
        for key in [
            "seed",
            "name",
            "device",
            "threads",
            "speed.channels_last",
            "report.tensorboard",
            "checkpoint.every",
            "train.baselines",
        ] {
            assert!(!changes_results(key), "{key}");
        }
        for key in ["optim.lr", "tasks[1].weight", "train.epochs", "data.root", "data.train_size", "balance.method"] {
            assert!(changes_results(key), "{key}");
        }
    }
}
