//! `mtl-train groups`: which tasks should share a network, from a run's measured affinity
//! (docs/TRANSFER.md).
//!
//! - `groups RUN --budget K`: the grouping of at most K networks that maximizes the affinity
//!   each task receives from its group (exact search), printed, one config per network written.
//! - `... --train`: trains those networks (and the all-in-one network and the single-task
//!   baselines, reusing finished runs) for every seed, and prints the Δm of each.
//! - `groups CONFIG --exhaustive`: trains every grouping (T ≤ 4; every pair beside singletons
//!   for larger T) and prints each one's real Δm beside its predicted score, with the rank
//!   correlation between them.
use super::baselines::{single_task, task_subset};
use clap::Args;
use mtl::config::AffinityConfig;
use mtl::setup::Resolved;
use mtl::tasks::grouping::{self, Grouping};
use mtl::tasks::is_quality_metric;
use mtl::train::affinity::Summary;
use mtl::train::TrainOptions;
use mtl::{user_bail, user_error};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Tasks up to which `--exhaustive` trains every partition (15 groupings at 4).
const EXHAUSTIVE_MAX_TASKS: usize = 4;

#[derive(Args, Debug, Clone)]
pub struct GroupsArgs {
    /// A run directory trained with report.affinity (or, with --exhaustive, a config).
    target: PathBuf,
    /// At most this many networks (1..=the number of tasks).
    #[arg(long)]
    budget: Option<usize>,
    /// Train the chosen networks and print the grouping's Δm against the all-in-one run and
    /// the single-task baselines.
    #[arg(long)]
    train: bool,
    /// Train every grouping of the config's tasks and compare the real Δm with the prediction.
    #[arg(long)]
    exhaustive: bool,
    /// Seeds to train with (default: the run's or config's seed), e.g. 0,1,2.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Where trained runs go (default: runs/); finished runs there are reused.
    #[arg(long, value_name = "DIR", default_value = mtl::setup::RUNS_DIR)]
    runs: PathBuf,
    /// `--set` overrides for every run trained (e.g. threads=2).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// With --exhaustive: report.affinity.every for the all-in-one run that measures it.
    #[arg(long, default_value_t = 10)]
    every: u64,
}

pub fn run(args: GroupsArgs) -> anyhow::Result<ExitCode> {
    if args.exhaustive {
        if args.budget.is_some() || args.train {
            user_bail!("groups: --exhaustive trains every grouping; it takes no --budget or --train");
        }
        return exhaustive(&args);
    }
    let Some(budget) = args.budget else {
        user_bail!("groups: give --budget K (at most K networks) or --exhaustive");
    };
    let run = &args.target;
    if !run.is_dir() {
        user_bail!(
            "{}: not a run directory (groups RUN --budget K reads a trained run's affinity.json)",
            run.display()
        );
    }
    let summary = Summary::read(run)?;
    let t = summary.tasks.len();
    if !(1..=t).contains(&budget) {
        user_bail!("--budget: {budget} is out of range (1..={t}, the tasks of {})", run.display());
    }
    if t > grouping::MAX_TASKS {
        user_bail!("{}: {t} tasks; the exact search covers at most {}", run.display(), grouping::MAX_TASKS);
    }
    let started = std::time::Instant::now();
    let best = grouping::best_grouping(&summary.affinity, budget);
    let searched = started.elapsed();
    print!("{}", describe(&summary, &best));
    println!("  exact search over every grouping of {t} tasks into at most {budget} networks: {searched:.1?}");
    let base = resolve_run_config(run)?;
    let out_dir = run.join("groups");
    std::fs::create_dir_all(&out_dir).map_err(|e| user_error!("{}: cannot create: {e}", out_dir.display()))?;
    for g in &best.groups {
        let cfg = task_subset(&base, g, group_name(&base, g, None));
        let path = out_dir.join(format!("{}.yaml", cfg.name));
        mtl::checkpoint::write_atomically(&path, cfg.to_yaml().as_bytes())?;
        println!("  wrote {}", path.display());
    }
    if args.train {
        let seeds = seeds(&args, &base);
        let report = train_groupings(&args, &base, std::slice::from_ref(&best), &seeds)?;
        print!("{}", report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The grouping, each network with the tasks it serves and what it gives them.
fn describe(s: &Summary, g: &Grouping) -> String {
    let mut out = format!(
        "grouping from {} measured steps (lookahead affinity, mean Z[i→j]; predicted score {:.5}):\n",
        s.steps, g.score
    );
    for (k, group) in g.groups.iter().enumerate() {
        let names: Vec<&str> = group.iter().map(|&i| s.tasks[i].as_str()).collect();
        let served: Vec<String> = (0..s.tasks.len())
            .filter(|&j| g.served_by[j] == k)
            .map(|j| format!("{} {:+.5}", s.tasks[j], grouping::served(&s.affinity, j, mask(group))))
            .collect();
        out.push_str(&format!("  network {}: {{{}}}  serves {}\n", k + 1, names.join(", "), served.join(", ")));
    }
    let all: Vec<usize> = (0..s.tasks.len()).collect();
    let alone: Vec<Vec<usize>> = all.iter().map(|&i| vec![i]).collect();
    let score = |gs: &[Vec<usize>]| grouping::score(&s.affinity, gs).unwrap_or(f64::NAN);
    out.push_str(&format!(
        "  for reference: all in one network {:.5}, every task alone {:.5}\n",
        score(&[all]),
        score(&alone)
    ));
    out
}

fn mask(group: &[usize]) -> usize {
    group.iter().fold(0, |m, &i| m | (1 << i))
}

/// The run's `config.yaml`, resolved (its paths are already absolute).
fn resolve_run_config(run: &Path) -> anyhow::Result<Resolved> {
    let path = run.join("config.yaml");
    if !path.is_file() {
        user_bail!("{}: missing (not a run directory?)", path.display());
    }
    mtl::setup::load(Some(&path), &[])
}

/// `<name>-group-<task>-<task>` (with `-s<seed>` when training seeds): a valid config name.
fn group_name(base: &Resolved, group: &[usize], seed: Option<u64>) -> String {
    let names: Vec<&str> = group.iter().map(|&i| base.tasks[i].name.as_str()).collect();
    let seed = seed.map(|s| format!("-s{s}")).unwrap_or_default();
    format!("{}-group-{}{seed}", base.cfg.name, names.join("-"))
}

fn seeds(args: &GroupsArgs, base: &Resolved) -> Vec<u64> {
    if args.seeds.is_empty() {
        vec![base.cfg.seed]
    } else {
        args.seeds.clone()
    }
}

/// The val metrics of `r` trained in `runs/<name>`: the finished run when there is one.
fn trained(args: &GroupsArgs, r: Resolved, device: tch::Device) -> anyhow::Result<Vec<(String, f64)>> {
    let run_dir = args.runs.join(&r.cfg.name);
    let done = mtl::train::report::last_val(&run_dir);
    if !done.is_empty() && run_dir.join("config.yaml").is_file() {
        println!("{}: reusing the finished run", run_dir.display());
        return Ok(done);
    }
    let opts = TrainOptions { run_dir, ..Default::default() };
    Ok(super::train::train(r, device, &opts, false)?.final_metrics)
}

/// `base` with `seed` and the command line's `--set` overrides, re-resolved.
fn with_seed(base: &Resolved, seed: u64, sets: &[String]) -> anyhow::Result<Resolved> {
    let mut sets = sets.to_vec();
    sets.push(format!("seed={seed}"));
    let yaml = base.cfg.to_yaml();
    let cfg = mtl::config::Config::parse(&yaml, &base.cfg.name, &sets)?;
    mtl::setup::resolve(cfg, &base.cfg.name, Path::new("."))
}

/// Δm of each grouping, every seed: each task's metrics come from the network serving it
/// (a task alone is its own baseline, so it adds 0).
struct Outcome {
    /// Per grouping, per seed.
    delta_m: Vec<Vec<f64>>,
    /// The all-in-one network, per seed.
    all_in_one: Vec<f64>,
}

fn train_groupings(
    args: &GroupsArgs,
    base: &Resolved,
    groupings: &[Grouping],
    seeds: &[u64],
) -> anyhow::Result<String> {
    let outcome = measure_groupings(args, base, groupings, seeds, None)?;
    let mut out = format!("Δm against the single-task baselines (%, lower is better; seeds {seeds:?}):\n");
    out.push_str(&format!("  the grouping    {}\n", mean_spread(&outcome.delta_m[0])));
    out.push_str(&format!("  all in one      {}\n", mean_spread(&outcome.all_in_one)));
    out.push_str(&format!("  every task alone {:+.2} (the baselines themselves)\n", 0.0));
    Ok(out)
}

/// Trains what `groupings` need for every seed (the all-in-one network too, with affinity
/// measured when `affinity_every` is set) and computes their Δm.
fn measure_groupings(
    args: &GroupsArgs,
    base: &Resolved,
    groupings: &[Grouping],
    seeds: &[u64],
    affinity_every: Option<u64>,
) -> anyhow::Result<Outcome> {
    let device = mtl::setup::device(&base.cfg.device)?;
    mtl::setup::init_runtime(&base.cfg, device);
    let t = base.tasks.len();
    let mut outcome = Outcome { delta_m: vec![Vec::new(); groupings.len()], all_in_one: Vec::new() };
    for &seed in seeds {
        let r = with_seed(base, seed, &args.set)?;
        // Every network any grouping uses, trained once per seed.
        let mut networks: BTreeMap<Vec<usize>, Vec<(String, f64)>> = BTreeMap::new();
        let mut wanted: Vec<Vec<usize>> = groupings.iter().flat_map(|g| g.groups.iter().cloned()).collect();
        // The all-in-one network, and every task alone: the baselines Δm is measured against.
        wanted.push((0..t).collect());
        wanted.extend((0..t).map(|i| vec![i]));
        wanted.sort();
        wanted.dedup();
        for g in wanted {
            let metrics = if g.len() == 1 {
                let mut single = single_task(&r, &r.tasks[g[0]].name)?;
                single.cfg.name = format!("{}-s{seed}", single.cfg.name);
                trained(args, single, device)?
            } else {
                let mut cfg = task_subset(&r, &g, group_name(&r, &g, Some(seed)));
                if g.len() == t {
                    cfg.report.affinity = affinity_every.map(|every| AffinityConfig { every });
                }
                let sub = mtl::setup::resolve(cfg, &r.cfg.name, Path::new("."))?;
                trained(args, sub, device)?
            };
            networks.insert(g, metrics.into_iter().filter(|(k, _)| is_quality_metric(k)).collect());
        }
        let baselines: BTreeMap<String, f64> = (0..t).flat_map(|i| networks[&vec![i]].iter().cloned()).collect();
        let delta = |grouping: &Grouping| -> anyhow::Result<f64> {
            let mut metrics = Vec::new();
            for (i, task) in r.tasks.iter().enumerate() {
                let g = &grouping.groups[grouping.served_by[i]];
                let prefix = format!("{}.", task.name);
                metrics.extend(networks[g].iter().filter(|(k, _)| k.starts_with(&prefix)).cloned());
            }
            mtl::tasks::delta_m(&metrics, &baselines, &r.tasks)
                .ok_or_else(|| anyhow::anyhow!("groups: no metric to compute Δm from"))
        };
        for (k, grouping) in groupings.iter().enumerate() {
            outcome.delta_m[k].push(delta(grouping)?);
        }
        outcome.all_in_one.push(delta(&partition(vec![(0..t).collect()], t))?);
    }
    Ok(outcome)
}

/// A partition of `t` tasks as a [`Grouping`] (each task served by its one group).
fn partition(groups: Vec<Vec<usize>>, t: usize) -> Grouping {
    let served_by = (0..t).map(|i| groups.iter().position(|g| g.contains(&i)).expect("a partition covers every task"));
    Grouping { served_by: served_by.collect(), groups, score: f64::NAN }
}

fn mean_spread(v: &[f64]) -> String {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    match v.len() {
        0 => "n/a".into(),
        1 => format!("{mean:+.2}"),
        _ => format!("{mean:+.2} ± {std:.2} (n={})", v.len()),
    }
}

/// `groups CONFIG --exhaustive`.
fn exhaustive(args: &GroupsArgs) -> anyhow::Result<ExitCode> {
    let base = mtl::setup::load(Some(&args.target), &[])?;
    let t = base.tasks.len();
    if t < 2 {
        user_bail!("{}: {t} task; groupings need at least two", args.target.display());
    }
    let parts: Vec<Vec<Vec<usize>>> = if t <= EXHAUSTIVE_MAX_TASKS {
        grouping::partitions(t)
    } else {
        // Every pair together, the other tasks alone.
        let mut out = Vec::new();
        for i in 0..t {
            for j in i + 1..t {
                let mut g = vec![vec![i, j]];
                g.extend((0..t).filter(|&k| k != i && k != j).map(|k| vec![k]));
                out.push(g);
            }
        }
        out
    };
    let groupings: Vec<Grouping> = parts.into_iter().map(|p| partition(p, t)).collect();
    let seeds = seeds(args, &base);
    let outcome = measure_groupings(args, &base, &groupings, &seeds, Some(args.every))?;
    // The affinity of each seed's all-in-one run, averaged over the seeds.
    let mut affinity = vec![vec![0.0; t]; t];
    for &seed in &seeds {
        let all: Vec<usize> = (0..t).collect();
        let r = with_seed(&base, seed, &args.set)?;
        let s = Summary::read(&args.runs.join(group_name(&r, &all, Some(seed))))?;
        for (row, other) in affinity.iter_mut().zip(&s.affinity) {
            for (a, b) in row.iter_mut().zip(other) {
                *a += b / seeds.len() as f64;
            }
        }
    }
    let predicted: Vec<f64> = groupings
        .iter()
        .map(|g| grouping::score(&affinity, &g.groups).expect("a partition covers every task"))
        .collect();
    let real: Vec<f64> = outcome.delta_m.iter().map(|v| v.iter().sum::<f64>() / v.len() as f64).collect();
    let mut order: Vec<usize> = (0..groupings.len()).collect();
    order.sort_by(|&a, &b| predicted[b].total_cmp(&predicted[a]));
    println!("every grouping of {t} tasks, best predicted first (Δm in %, lower is better; seeds {seeds:?}):");
    println!("  {:<40} {:>10}  {:>22}", "grouping", "predicted", "real Δm");
    for &k in &order {
        let text: Vec<String> = groupings[k]
            .groups
            .iter()
            .map(|g| format!("{{{}}}", g.iter().map(|&i| base.tasks[i].name.as_str()).collect::<Vec<_>>().join(",")))
            .collect();
        println!("  {:<40} {:>10.5}  {:>22}", text.join(" "), predicted[k], mean_spread(&outcome.delta_m[k]));
    }
    // Higher predicted score should mean lower Δm.
    let negated: Vec<f64> = real.iter().map(|v| -v).collect();
    match grouping::spearman(&predicted, &negated) {
        Some(rho) => println!("  rank correlation (Spearman) of predicted score with −Δm: {rho:+.3}"),
        None => println!("  rank correlation: undefined (no spread)"),
    }
    let best_real = (0..real.len()).min_by(|&a, &b| real[a].total_cmp(&real[b])).unwrap_or(0);
    let chosen = order[0];
    println!(
        "  predicted best: Δm {}; real best: Δm {} ({})",
        mean_spread(&outcome.delta_m[chosen]),
        mean_spread(&outcome.delta_m[best_real]),
        if chosen == best_real { "the same grouping" } else { "another grouping" }
    );
    Ok(ExitCode::SUCCESS)
}
