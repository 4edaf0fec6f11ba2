//! `mtl-train groups`: which tasks should share a network, from a run's measured affinity
//! (docs/TRANSFER.md).
//!
//! - `groups RUN... --budget K`: the grouping of at most K networks that maximizes the affinity
//!   each task receives from its group (exact search), counting each affinity only as far as it
//!   stands out of its measured spread (its mean less `--z` standard errors; pooled over the
//!   runs given, e.g. seeds), printed, one config per network written.
//! - `... --train`: trains those networks (and the all-in-one network and the single-task
//!   baselines, reusing finished runs) for every seed, and prints the Δm of each.
//! - `groups CONFIG --exhaustive`: trains every grouping (T ≤ 4; every pair beside singletons
//!   for larger T) and prints each one's real Δm beside its predicted score, with the rank
//!   correlation between them.
use super::baselines::{single_task, task_subset};
use clap::Args;
use mtl::config::AffinityConfig;
use mtl::setup::Resolved;
use mtl::tasks::grouping::{self, Estimate, Grouping};
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
    /// Run directories trained with report.affinity, e.g. one per seed, pooled (or, with
    /// --exhaustive, one config).
    #[arg(required = true, num_args = 1..)]
    targets: Vec<PathBuf>,
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
    /// Count each affinity at its mean less this many standard errors (a lower confidence
    /// bound; 1.645: one-sided 95 %), so tasks share a network only where the gain stands out
    /// of its measured spread. 0: TAG's point estimate.
    #[arg(long, default_value_t = grouping::DEFAULT_Z)]
    z: f64,
}

pub fn run(args: GroupsArgs) -> anyhow::Result<ExitCode> {
    if !(args.z.is_finite() && args.z >= 0.0) {
        user_bail!("--z: {} is not a number of standard errors (0 or more)", args.z);
    }
    if args.exhaustive {
        if args.budget.is_some() || args.train {
            user_bail!("groups: --exhaustive trains every grouping; it takes no --budget or --train");
        }
        return exhaustive(&args);
    }
    let Some(budget) = args.budget else {
        user_bail!("groups: give --budget K (at most K networks) or --exhaustive");
    };
    for run in &args.targets {
        if !run.is_dir() {
            user_bail!(
                "{}: not a run directory (groups RUN --budget K reads a trained run's affinity.json)",
                run.display()
            );
        }
    }
    let run = &args.targets[0];
    let summaries = args.targets.iter().map(|r| Summary::read(r)).collect::<anyhow::Result<Vec<_>>>()?;
    let (tasks, estimate) = pooled(&summaries, &args.targets)?;
    let t = tasks.len();
    if !(1..=t).contains(&budget) {
        user_bail!("--budget: {budget} is out of range (1..={t}, the tasks of {})", run.display());
    }
    if t > grouping::MAX_TASKS {
        user_bail!("{}: {t} tasks; the exact search covers at most {}", run.display(), grouping::MAX_TASKS);
    }
    let bound = estimate.lower_bound(args.z);
    let started = std::time::Instant::now();
    let best = grouping::best_grouping(&bound, budget);
    let searched = started.elapsed();
    let steps: u64 = summaries.iter().map(|s| s.steps).sum();
    println!("affinity from {} run(s), {steps} measured steps (mean ± standard error):", summaries.len());
    print!("{}", affinity_table(tasks, &estimate));
    print!("{}", describe(tasks, &estimate, args.z, &best));
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

/// The runs' tasks (the same in every run) and their affinity, pooled.
fn pooled<'a>(summaries: &'a [Summary], runs: &[PathBuf]) -> anyhow::Result<(&'a [String], Estimate)> {
    let tasks = &summaries[0].tasks;
    if let Some(k) = summaries.iter().position(|s| s.tasks != *tasks) {
        user_bail!(
            "{}: tasks {:?}, not those of {} ({tasks:?})",
            runs[k].display(),
            summaries[k].tasks,
            runs[0].display()
        );
    }
    let measured: Vec<_> = summaries.iter().map(Summary::measured).collect();
    let Some(estimate) = Estimate::pool(&measured) else {
        let k = summaries.iter().position(|s| s.steps < 2).unwrap_or(0);
        user_bail!("{}: {} measured step(s); a spread needs at least 2", runs[k].display(), summaries[k].steps);
    };
    Ok((tasks, estimate))
}

/// Every Z[i→j] as mean ± standard error, a row per task whose step it is.
fn affinity_table(tasks: &[String], e: &Estimate) -> String {
    let mut out = format!(
        "  {:<12}{}\n",
        "Z[i→j]",
        tasks.iter().map(|t| format!("{:>24}", format!("→ {t}"))).collect::<String>()
    );
    for (i, task) in tasks.iter().enumerate() {
        let cells: String =
            (0..tasks.len()).map(|j| format!("{:>24}", format!("{:+.5} ± {:.5}", e.mean[i][j], e.se[i][j]))).collect();
        out.push_str(&format!("  {task:<12}{cells}\n"));
    }
    out
}

/// The grouping, each network with the tasks it serves and what it gives them: the bound the
/// search counted and, beside it, the mean (TAG's point estimate).
fn describe(tasks: &[String], e: &Estimate, z: f64, g: &Grouping) -> String {
    let bound = e.lower_bound(z);
    let mut out = format!("grouping counting each affinity at its mean − {z}·SE (score {:+.5}):\n", g.score);
    for (k, group) in g.groups.iter().enumerate() {
        let names: Vec<&str> = group.iter().map(|&i| tasks[i].as_str()).collect();
        let served: Vec<String> = (0..tasks.len())
            .filter(|&j| g.served_by[j] == k)
            .map(|j| {
                let (at_bound, at_mean) =
                    (grouping::served(&bound, j, mask(group)), grouping::served(&e.mean, j, mask(group)));
                format!("{} {at_bound:+.5} (mean {at_mean:+.5})", tasks[j])
            })
            .collect();
        out.push_str(&format!("  network {}: {{{}}}  serves {}\n", k + 1, names.join(", "), served.join(", ")));
    }
    let all: Vec<usize> = (0..tasks.len()).collect();
    let score = |a: &[Vec<f64>]| grouping::score(a, std::slice::from_ref(&all)).unwrap_or(f64::NAN);
    out.push_str(&format!(
        "  for reference: all in one network {:+.5} (mean {:+.5}); every task alone 0\n",
        score(&bound),
        score(&e.mean)
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
    let t = base.tasks.len();
    let mut outcome = Outcome { delta_m: vec![Vec::new(); groupings.len()], all_in_one: Vec::new() };
    for &seed in seeds {
        let r = with_seed(base, seed, &args.set)?;
        // After the overrides: `--set threads=N` is a process-wide setting.
        mtl::setup::init_runtime(&r.cfg, device);
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

/// The mean and the sample standard deviation (0 for one value).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt())
}

fn mean_spread(v: &[f64]) -> String {
    let (mean, std) = mean_sd(v);
    match v.len() {
        0 => "n/a".into(),
        1 => format!("{mean:+.2}"),
        _ => format!("{mean:+.2} ± {std:.2} (n={})", v.len()),
    }
}

/// `groups CONFIG --exhaustive`.
fn exhaustive(args: &GroupsArgs) -> anyhow::Result<ExitCode> {
    let [config] = args.targets.as_slice() else {
        user_bail!("groups --exhaustive: give one config ({} given)", args.targets.len());
    };
    let base = mtl::setup::load(Some(config), &[])?;
    let t = base.tasks.len();
    if t < 2 {
        user_bail!("{}: {t} task; groupings need at least two", config.display());
    }
    let mut groupings: Vec<Grouping> = candidates(t).into_iter().map(|p| partition(p, t)).collect();
    let seeds = seeds(args, &base);
    let mut delta_m = measure_groupings(args, &base, &groupings, &seeds, Some(args.every))?.delta_m;
    // The affinity of each seed's all-in-one run, pooled over the seeds.
    let all: Vec<usize> = (0..t).collect();
    let mut summaries = Vec::new();
    let mut runs = Vec::new();
    for &seed in &seeds {
        let r = with_seed(&base, seed, &args.set)?;
        runs.push(args.runs.join(group_name(&r, &all, Some(seed))));
        summaries.push(Summary::read(runs.last().expect("just pushed"))?);
    }
    let (tasks, estimate) = pooled(&summaries, &runs)?;
    println!("affinity of the all-in-one runs, pooled over seeds {seeds:?} (mean ± standard error):");
    print!("{}", affinity_table(tasks, &estimate));
    // The search's own pick, which may serve a task from a network it shares with tasks served
    // elsewhere (not a partition): its networks are trained already for T ≤ 4.
    let pick = grouping::best_grouping(&estimate.lower_bound(args.z), t);
    let chosen = match groupings.iter().position(|g| g.groups == pick.groups && g.served_by == pick.served_by) {
        Some(k) => k,
        None => {
            let measured = measure_groupings(args, &base, std::slice::from_ref(&pick), &seeds, Some(args.every))?;
            delta_m.extend(measured.delta_m);
            groupings.push(pick);
            groupings.len() - 1
        }
    };
    print!("{}", compare(&base, &groupings, chosen, &delta_m, &estimate, args.z, &seeds));
    Ok(ExitCode::SUCCESS)
}

/// The groupings `--exhaustive` trains: every partition for up to [`EXHAUSTIVE_MAX_TASKS`]
/// tasks, every pair together with the other tasks alone beyond.
fn candidates(t: usize) -> Vec<Vec<Vec<usize>>> {
    if t <= EXHAUSTIVE_MAX_TASKS {
        return grouping::partitions(t);
    }
    let mut out = Vec::new();
    for i in 0..t {
        for j in i + 1..t {
            let mut g = vec![vec![i, j]];
            g.extend((0..t).filter(|&k| k != i && k != j).map(|k| vec![k]));
            out.push(g);
        }
    }
    out
}

/// Every grouping's predicted score (at the bound, and TAG's at the mean) beside its real Δm
/// per seed, best predicted first; the rank correlations; whether the search's pick, `chosen`,
/// is the real best or within the seeds' spread of it.
fn compare(
    base: &Resolved,
    groupings: &[Grouping],
    chosen: usize,
    delta_m: &[Vec<f64>],
    estimate: &Estimate,
    z: f64,
    seeds: &[u64],
) -> String {
    let score = |a: &[Vec<f64>]| -> Vec<f64> {
        groupings.iter().map(|g| grouping::score(a, &g.groups).expect("a partition covers every task")).collect()
    };
    let (predicted, tag) = (score(&estimate.lower_bound(z)), score(&estimate.mean));
    let real: Vec<f64> = delta_m.iter().map(|v| mean_sd(v).0).collect();
    // Best predicted first; on a tie the grouping with more networks, as the search prefers.
    let mut order: Vec<usize> = (0..groupings.len()).collect();
    order.sort_by(|&a, &b| {
        predicted[b].total_cmp(&predicted[a]).then(groupings[b].groups.len().cmp(&groupings[a].groups.len()))
    });
    let t = base.tasks.len();
    let mut out = format!(
        "every grouping of {t} tasks, best predicted first (predicted: affinities at mean − {z}·SE; \
         TAG: at the mean; Δm in %, lower is better; seeds {seeds:?}):\n"
    );
    out.push_str(&format!("  {:<40} {:>10} {:>10}  {:>22}\n", "grouping", "predicted", "TAG", "real Δm"));
    for &k in &order {
        out.push_str(&format!(
            "  {:<40} {:>+10.5} {:>+10.5}  {:>22}\n",
            grouping_text(base, &groupings[k]),
            predicted[k],
            tag[k],
            mean_spread(&delta_m[k])
        ));
    }
    // Higher predicted score should mean lower Δm.
    let negated: Vec<f64> = real.iter().map(|v| -v).collect();
    let rho =
        |p: &[f64]| grouping::spearman(p, &negated).map_or("undefined (no spread)".into(), |r| format!("{r:+.3}"));
    out.push_str(&format!(
        "  rank correlation (Spearman) with −Δm: predicted {}, TAG {}\n",
        rho(&predicted),
        rho(&tag)
    ));
    let best_real = (0..real.len()).min_by(|&a, &b| real[a].total_cmp(&real[b])).unwrap_or(0);
    let verdict = if chosen == best_real {
        "the same grouping".to_string()
    } else if within_spread(&delta_m[chosen], &delta_m[best_real]) {
        "another grouping, within the seeds' spread".to_string()
    } else {
        "another grouping, outside the seeds' spread".to_string()
    };
    out.push_str(&format!(
        "  predicted best: Δm {}; real best: Δm {} ({verdict})\n",
        mean_spread(&delta_m[chosen]),
        mean_spread(&delta_m[best_real])
    ));
    out
}

/// `{kind,seg} {color}`; a network that serves only some of its tasks names them:
/// `{kind,seg}→kind`.
fn grouping_text(base: &Resolved, g: &Grouping) -> String {
    let name = |i: usize| base.tasks[i].name.as_str();
    let network = |(k, group): (usize, &Vec<usize>)| {
        let served: Vec<&str> = (0..g.served_by.len()).filter(|&j| g.served_by[j] == k).map(name).collect();
        let members: Vec<&str> = group.iter().map(|&i| name(i)).collect();
        let only = if served.len() < members.len() { format!("→{}", served.join(",")) } else { String::new() };
        format!("{{{}}}{only}", members.join(","))
    };
    g.groups.iter().enumerate().map(network).collect::<Vec<_>>().join(" ")
}

/// Whether `chosen`'s mean Δm is within one seed standard deviation (the larger of the two
/// groupings') of `best`'s.
fn within_spread(chosen: &[f64], best: &[f64]) -> bool {
    let ((c, c_sd), (b, b_sd)) = (mean_sd(chosen), mean_sd(best));
    c - b <= c_sd.max(b_sd)
}
