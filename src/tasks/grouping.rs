//! Which tasks should share a network, from their measured affinity (TAG's network
//! selection, Fifty et al. 2021; docs/TRANSFER.md).
//!
//! `affinity[i][j]` is the mean lookahead affinity `Z_{i→j}` (i's step, j's loss). A group G
//! gives task j ∈ G the mean affinity it receives from the other members,
//! `s(j, G) = mean_{i ∈ G, i ≠ j} Z_{i→j}`; a task alone gets 0 (the single-task level).
//! A grouping is a set of at most `budget` groups covering every task (a task may sit in more
//! than one); each task is served by the group that gives it the most, and the grouping's
//! score is the sum over tasks of what they are served.
//!
//! Counting only what is measured: the search runs on [`Estimate::lower_bound`], each affinity
//! less `z` standard errors, so a group is worth forming only where its members' gains are
//! distinguishable from zero. The mean of the pairs' bounds is itself a bound on `s(j, G)`
//! whatever the pairs' correlation (a sum's standard deviation is at most the sum of its
//! terms'), so no correlation has to be known.
//!
//! Exact search: any grouping induces a partition of the tasks by serving group, so the best
//! score is the best partition into at most `budget` parts S, each worth
//! `best(S) = max_{G ⊇ S} Σ_{j ∈ S} s(j, G)`. `best` over every S costs O(T · 3^T), the
//! partition O(budget · 3^T): at T = 12, about 6 million and 6 million steps (milliseconds).

/// The default `z` of [`Estimate::lower_bound`]: a one-sided 95 % bound, so a task is counted
/// as gaining from its group only when a gain is 95 % likely on its own measurement.
pub const DEFAULT_Z: f64 = 1.645;

/// One run's measured affinity: the mean of `Z_{i→j}` over `steps` measured steps and the
/// (population) standard deviation of the per-step values.
#[derive(Debug, Clone, Copy)]
pub struct RunAffinity<'a> {
    pub mean: &'a [Vec<f64>],
    pub std: &'a [Vec<f64>],
    pub steps: u64,
}

/// The affinity with its standard error, pooled over one or more runs of the same tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub mean: Vec<Vec<f64>>,
    pub se: Vec<Vec<f64>>,
}

impl Estimate {
    /// The mean over the runs of their means, and its standard error: within a run, the
    /// per-step spread over √(steps − 1) (the sample standard error; steps in sequence are
    /// treated as independent draws); across runs (seeds), the larger of the run means'
    /// own spread over √runs and the within-run errors combined, so that a few seeds which
    /// happen to agree do not claim more precision than each measurement has. None without
    /// runs, with a run of fewer than two measured steps (no spread), or with matrices of
    /// different sizes.
    pub fn pool(runs: &[RunAffinity]) -> Option<Self> {
        let t = runs.first()?.mean.len();
        let square = |m: &[Vec<f64>]| m.len() == t && m.iter().all(|r| r.len() == t);
        if runs.iter().any(|r| r.steps < 2 || !square(r.mean) || !square(r.std)) {
            return None;
        }
        let n = runs.len() as f64;
        let cell = |i: usize, j: usize| -> (f64, f64) {
            let means: Vec<f64> = runs.iter().map(|r| r.mean[i][j]).collect();
            let mean = means.iter().sum::<f64>() / n;
            let within_var: f64 =
                runs.iter().map(|r| r.std[i][j].powi(2) / (r.steps - 1) as f64).sum::<f64>() / (n * n);
            let between_var = match runs.len() {
                1 => 0.0,
                _ => means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (n - 1.0) / n,
            };
            (mean, within_var.max(between_var).sqrt())
        };
        let cells: Vec<Vec<(f64, f64)>> = (0..t).map(|i| (0..t).map(|j| cell(i, j)).collect()).collect();
        let part = |pick: fn(&(f64, f64)) -> f64| cells.iter().map(|row| row.iter().map(pick).collect()).collect();
        Some(Self { mean: part(|c| c.0), se: part(|c| c.1) })
    }

    /// Each affinity less `z` standard errors: what the search counts.
    pub fn lower_bound(&self, z: f64) -> Vec<Vec<f64>> {
        self.mean.iter().zip(&self.se).map(|(m, s)| m.iter().zip(s).map(|(m, s)| m - z * s).collect()).collect()
    }
}

/// The most tasks [`best_grouping`] searches over exactly.
pub const MAX_TASKS: usize = 12;

/// A grouping: the networks (sorted task indices) and, for each task, the network that
/// serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    pub groups: Vec<Vec<usize>>,
    pub served_by: Vec<usize>,
    pub score: f64,
}

fn members(mask: usize, tasks: usize) -> impl Iterator<Item = usize> {
    (0..tasks).filter(move |&i| mask & (1 << i) != 0)
}

fn mask_of(group: &[usize]) -> usize {
    group.iter().fold(0, |m, &i| m | (1 << i))
}

/// What group `mask` gives task `j` (a member): the mean affinity onto j from the others.
pub fn served(affinity: &[Vec<f64>], j: usize, mask: usize) -> f64 {
    let others: Vec<usize> = members(mask, affinity.len()).filter(|&i| i != j).collect();
    match others.len() {
        0 => 0.0,
        n => others.iter().map(|&i| affinity[i][j]).sum::<f64>() / n as f64,
    }
}

/// The score of a set of groups: each task served by its best group; None when a task is in
/// none of them.
pub fn score(affinity: &[Vec<f64>], groups: &[Vec<usize>]) -> Option<f64> {
    let t = affinity.len();
    let mut total = 0.0;
    for j in 0..t {
        let best = groups
            .iter()
            .filter(|g| g.contains(&j))
            .map(|g| served(affinity, j, mask_of(g)))
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
        total += best?;
    }
    Some(total)
}

/// The grouping of at most `budget` networks with the highest [`score`] (exact). Among equal
/// scores it splits: the network serving the first task as small as it can be, then the
/// next task's, and so on, so sharing that gains nothing measurable is not formed. `affinity` must be square, with
/// 1..=[`MAX_TASKS`] tasks, and `budget` ≥ 1.
pub fn best_grouping(affinity: &[Vec<f64>], budget: usize) -> Grouping {
    let t = affinity.len();
    assert!((1..=MAX_TASKS).contains(&t) && budget >= 1, "best_grouping: {t} tasks, budget {budget}");
    let full = (1usize << t) - 1;
    // best[S]: the most the tasks of S can be served by one group containing them, and that group.
    let mut best = vec![(f64::NEG_INFINITY, 0usize); full + 1];
    let mut by_size: Vec<usize> = (1..=full).collect();
    by_size.sort_by_key(|g| (g.count_ones(), *g));
    for &g in &by_size {
        let gives: Vec<f64> = (0..t).map(|j| if g & (1 << j) != 0 { served(affinity, j, g) } else { 0.0 }).collect();
        let mut s = g;
        while s > 0 {
            let v: f64 = members(s, t).map(|j| gives[j]).sum();
            if v > best[s].0 + 1e-12 {
                best[s] = (v, g);
            }
            s = (s - 1) & g;
        }
    }
    // parts[b][m]: the best partition of m into at most b parts (value, first part).
    let mut parts = vec![vec![(f64::NEG_INFINITY, 0usize); full + 1]; budget + 1];
    parts[0][0].0 = 0.0;
    for b in 1..=budget {
        parts[b][0].0 = 0.0;
        for m in 1..=full {
            let low = m & m.wrapping_neg();
            let mut top = parts[b - 1][m];
            let rest = m ^ low;
            // Every part S of m that holds m's lowest task, largest first: on a tie the later,
            // smaller part (and the split over fewer parts before it) gives way.
            let mut r = rest;
            loop {
                let s = r | low;
                let v = best[s].0 + parts[b - 1][m ^ s].0;
                if v > f64::NEG_INFINITY && v >= top.0 - 1e-12 {
                    top = (v, s);
                }
                if r == 0 {
                    break;
                }
                r = (r - 1) & rest;
            }
            parts[b][m] = top;
        }
    }
    let (mut groups, mut served_by) = (Vec::<Vec<usize>>::new(), vec![usize::MAX; t]);
    let (mut b, mut m) = (budget, full);
    while m != 0 {
        let s = parts[b][m].1;
        if s == 0 {
            b -= 1;
            continue;
        }
        let g: Vec<usize> = members(best[s].1, t).collect();
        let k = groups.iter().position(|x| *x == g).unwrap_or_else(|| {
            groups.push(g);
            groups.len() - 1
        });
        for j in members(s, t) {
            served_by[j] = k;
        }
        m ^= s;
        b -= 1;
    }
    groups.sort();
    let served_by = (0..t)
        .map(|j| {
            let scores =
                groups.iter().map(|g| if g.contains(&j) { served(affinity, j, mask_of(g)) } else { f64::NEG_INFINITY });
            scores.enumerate().fold((0, f64::NEG_INFINITY), |a, (k, v)| if v > a.1 { (k, v) } else { a }).0
        })
        .collect();
    Grouping { score: parts[budget][full].0, groups, served_by }
}

/// Every partition of `tasks` tasks into groups (the groupings without overlap), each part
/// sorted, parts in order of their first task.
pub fn partitions(tasks: usize) -> Vec<Vec<Vec<usize>>> {
    fn extend(i: usize, tasks: usize, current: &mut Vec<Vec<usize>>, out: &mut Vec<Vec<Vec<usize>>>) {
        if i == tasks {
            out.push(current.clone());
            return;
        }
        for k in 0..current.len() {
            current[k].push(i);
            extend(i + 1, tasks, current, out);
            current[k].pop();
        }
        current.push(vec![i]);
        extend(i + 1, tasks, current, out);
        current.pop();
    }
    let mut out = Vec::new();
    extend(0, tasks, &mut Vec::new(), &mut out);
    out
}

/// Spearman's rank correlation (average ranks for ties); None with fewer than two values or
/// no spread.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        let mut k = 0;
        while k < idx.len() {
            let mut e = k;
            while e + 1 < idx.len() && x[idx[e + 1]] == x[idx[k]] {
                e += 1;
            }
            for &i in &idx[k..=e] {
                r[i] = (k + e) as f64 / 2.0;
            }
            k = e + 1;
        }
        r
    }
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The reference: every multiset of at most `budget` non-empty groups, scored directly.
    fn brute_force(affinity: &[Vec<f64>], budget: usize) -> f64 {
        let t = affinity.len();
        let candidates: Vec<Vec<usize>> = (1..(1usize << t)).map(|m| members(m, t).collect()).collect();
        fn choose(
            a: &[Vec<f64>],
            c: &[Vec<usize>],
            from: usize,
            left: usize,
            chosen: &mut Vec<Vec<usize>>,
            best: &mut f64,
        ) {
            if let Some(v) = score(a, chosen) {
                *best = best.max(v);
            }
            if left == 0 {
                return;
            }
            for k in from..c.len() {
                chosen.push(c[k].clone());
                choose(a, c, k, left - 1, chosen, best);
                chosen.pop();
            }
        }
        let mut best = f64::NEG_INFINITY;
        choose(affinity, &candidates, 0, budget, &mut Vec::new(), &mut best);
        best
    }

    fn random_affinity(rng: &mut impl Rng, t: usize) -> Vec<Vec<f64>> {
        (0..t).map(|_| (0..t).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect()
    }

    #[test]
    fn exact_search_matches_brute_force_on_random_matrices() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..60 {
            let t = rng.gen_range(1..=4);
            let budget = rng.gen_range(1..=3);
            let a = random_affinity(&mut rng, t);
            let got = best_grouping(&a, budget);
            let want = brute_force(&a, budget);
            assert!((got.score - want).abs() < 1e-9, "{a:?} budget {budget}: {} vs {want}", got.score);
            assert!(got.groups.len() <= budget);
            let direct = score(&a, &got.groups).expect("every task is covered");
            assert!((direct - got.score).abs() < 1e-9, "the groups returned score what was promised");
            for (j, &k) in got.served_by.iter().enumerate() {
                assert!(got.groups[k].contains(&j));
            }
        }
    }

    #[test]
    fn obvious_cases() {
        // Two pairs that help each other and hurt the other pair.
        let mut a = vec![vec![-0.5; 4]; 4];
        for (i, j) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
            a[i][j] = 0.4;
        }
        assert_eq!(best_grouping(&a, 2).groups, vec![vec![0, 1], vec![2, 3]]);
        // One network: all tasks together, whatever the affinity.
        assert_eq!(best_grouping(&a, 1).groups, vec![vec![0, 1, 2, 3]]);
        // Everything hurts: every task alone once the budget allows.
        let hurt = vec![vec![-0.1; 3]; 3];
        assert_eq!(best_grouping(&hurt, 3).groups, vec![vec![0], vec![1], vec![2]]);
        assert_eq!(best_grouping(&hurt, 3).score, 0.0);
    }

    /// Three tasks whose affinity is `off` everywhere but between tasks 0 and 1 (`pair`), each
    /// measured over `steps` steps with per-step spread `std`.
    fn three_tasks(pair: f64, off: f64, std: f64, steps: u64) -> Estimate {
        let mut mean = vec![vec![off; 3]; 3];
        (mean[0][1], mean[1][0]) = (pair, pair);
        let std = vec![vec![std; 3]; 3];
        Estimate::pool(&[RunAffinity { mean: &mean, std: &std, steps }]).expect("a run with a spread")
    }

    #[test]
    fn a_gain_within_its_noise_does_not_group_and_a_clear_one_does() {
        // shapes_methods' kind↔seg: +0.0002 on average, but a step's value spreads ±0.004 over
        // 17 steps (standard error 0.001); the others clearly hurt each other.
        let noisy = three_tasks(0.0002, -0.01, 0.004, 17);
        assert!((noisy.se[0][1] - 0.001).abs() < 1e-12);
        assert_eq!(best_grouping(&noisy.mean, 3).groups, vec![vec![0, 1], vec![2]], "the point estimate shares");
        let honest = best_grouping(&noisy.lower_bound(DEFAULT_Z), 3);
        assert_eq!(honest.groups, vec![vec![0], vec![1], vec![2]], "the bound does not");
        assert_eq!(honest.score, 0.0);
        // Ten times the gain over the same noise: 0.002 − 1.645 · 0.001 > 0 still groups.
        let clear = three_tasks(0.002, -0.01, 0.004, 17);
        assert_eq!(best_grouping(&clear.lower_bound(DEFAULT_Z), 3).groups, vec![vec![0, 1], vec![2]]);
        // z = 0 is TAG's point estimate.
        assert_eq!(noisy.lower_bound(0.0), noisy.mean);
    }

    #[test]
    fn under_a_tight_budget_the_least_harmful_bound_shares() {
        // Two networks for three tasks: 0 and 1 hurt each other a little, precisely; 0 and 2
        // neither help nor hurt on average but could hurt a lot; 1 and 2 hurt clearly.
        let mean = vec![vec![0.0, -0.001, 0.0], vec![-0.001, 0.0, -0.02], vec![0.0, -0.02, 0.0]];
        let mut std = vec![vec![0.001; 3]; 3];
        (std[0][2], std[2][0]) = (0.04, 0.04);
        let e = Estimate::pool(&[RunAffinity { mean: &mean, std: &std, steps: 17 }]).unwrap();
        assert_eq!(best_grouping(&e.mean, 2).groups, vec![vec![0, 2], vec![1]], "the point estimate risks it");
        assert_eq!(best_grouping(&e.lower_bound(DEFAULT_Z), 2).groups, vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn ties_split_rather_than_share() {
        let zero = vec![vec![0.0; 3]; 3];
        assert_eq!(best_grouping(&zero, 3).groups, vec![vec![0], vec![1], vec![2]]);
        assert_eq!(best_grouping(&zero, 2).groups.len(), 2);
        assert_eq!(best_grouping(&zero, 1).groups, vec![vec![0, 1, 2]]);
    }

    #[test]
    fn pooled_error_is_the_seeds_spread_or_the_runs_own_whichever_is_larger() {
        let m = |v: f64| vec![vec![v; 2]; 2];
        let (std, agree, apart) = (m(0.3), [m(0.1), m(0.1), m(0.1)], [m(0.0), m(0.1), m(0.2)]);
        fn runs<'a>(means: &'a [Vec<Vec<f64>>], std: &'a [Vec<f64>], steps: u64) -> Vec<RunAffinity<'a>> {
            means.iter().map(|mean| RunAffinity { mean, std, steps }).collect()
        }
        // Seeds that agree: the within-run errors, 0.3 / √9 each, combined over three runs.
        let e = Estimate::pool(&runs(&agree, &std, 10)).unwrap();
        assert!((e.mean[0][1] - 0.1).abs() < 1e-12);
        assert!((e.se[0][1] - 0.1 / 3f64.sqrt()).abs() < 1e-12, "{}", e.se[0][1]);
        // Seeds 0.1 apart, each measured precisely: their spread, 0.1 / √3.
        let e = Estimate::pool(&runs(&apart, &std, 10_001)).unwrap();
        assert!((e.se[0][1] - 0.1 / 3f64.sqrt()).abs() < 1e-12, "{}", e.se[0][1]);
        assert!(Estimate::pool(&runs(&agree, &std, 1)).is_none(), "one step has no spread");
        assert!(Estimate::pool(&[]).is_none());
    }

    #[test]
    fn twelve_tasks_are_searched_quickly_and_beat_every_partition_sampled() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let a = random_affinity(&mut rng, MAX_TASKS);
        let g = best_grouping(&a, 3);
        assert!(g.groups.len() <= 3);
        for p in partitions(5) {
            // Any partition of the first five tasks, the rest together: never better.
            let mut groups = p.clone();
            groups.push((5..MAX_TASKS).collect());
            if groups.len() <= 3 {
                assert!(score(&a, &groups).unwrap() <= g.score + 1e-9);
            }
        }
    }

    #[test]
    fn partitions_are_counted_by_bell_numbers_and_spearman_is_right() {
        assert_eq!([1, 2, 3, 4, 5].map(|t| partitions(t).len()), [1, 2, 5, 15, 52]);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]).statistic = 0.9486832980505139
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((r - 0.9486832980505139).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    }
}
