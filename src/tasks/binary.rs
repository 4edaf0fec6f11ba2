//! `binary`: one 0/1 label per row (click, conversion, income over 50k), one logit per row.
//! BCE with logits; AUC (exact, ties counted half, the Mann–Whitney statistic), logloss and
//! accuracy at 0.5, all computed from every evaluated score: in a distributed evaluation the
//! ranks' scores are gathered first, never per-rank AUCs averaged.
//!
//! ESMM (Ma et al., SIGIR 2018): a task `given` a parent reads `[own, parent]` logits and
//! labels ([`super::paired`]). Its loss is the paper's CTCVR term, BCE of pCTCVR = pCVR × pCTR
//! against (own label AND parent label) on every row; its AUC, logloss and accuracy score pCVR
//! on the rows whose parent label is 1 (clicked), and `ctcvr_auc` scores pCTCVR on every row.
use super::{Metric, Prediction, QualityMeter, Task, TaskKind};
use crate::data::TargetShape;
use crate::model::HeadKind;
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug)]
pub struct Binary;

impl TaskKind for Binary {
    fn name(&self) -> &'static str {
        "binary"
    }

    fn target_shape(&self) -> TargetShape {
        TargetShape::Binary
    }

    fn has_classes(&self) -> bool {
        false
    }

    fn head(&self, _task: &Task) -> HeadKind {
        HeadKind::Vector { outputs: 1 }
    }

    /// `output` `[N, 1]` logits, `target` int64 `[N]` of 0/1; for a task `given` another,
    /// `[N, 2]` and `[N, 2]` (own, parent): the CTCVR loss.
    fn loss(&self, _task: &Task, output: &Tensor, target: &Tensor) -> Tensor {
        if output.size()[1] == 2 {
            let (log_p, label) = ctcvr(output, target);
            // log(1 − p) = log(−expm1(log p)), kept finite where p rounds to 1.
            let log_not_p = (-log_p.clamp_max(-1e-7).expm1()).log();
            return -(&label * &log_p + (label.rsub_scalar(1.0)) * log_not_p).mean(Kind::Float);
        }
        bce_with_logits(&output.view([-1]), &target.to_kind(Kind::Float))
    }

    fn metrics(&self, task: &Task) -> Vec<Metric> {
        let mut m = vec![Metric::higher("auc"), Metric::lower("logloss"), Metric::higher("accuracy")];
        if task.given.is_some() {
            m.push(Metric::higher("ctcvr_auc"));
        }
        m
    }

    fn meter(&self, task: &Task, _device: Device) -> Box<dyn QualityMeter> {
        let joint = task.given.map(|_| Scores::default());
        Box::new(Meter { own: Scores::default(), joint })
    }

    fn prediction(&self) -> Prediction {
        Prediction::Class
    }
}

/// Mean binary cross-entropy of `logits` against 0/1 float `labels` (PyTorch's
/// `binary_cross_entropy_with_logits`).
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(labels, None, None, Reduction::Mean)
}

/// The area under the ROC curve of `scores` for 0/1 `labels`: the probability that a positive
/// scores above a negative, ties counting half (Mann–Whitney U / (P·N), from average ranks).
/// NaN when the labels hold one class only (the AUC is undefined, as scikit-learn says).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut positives) = (0f64, 0u64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let rank = (i + j + 2) as f64 / 2.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += rank;
                positives += 1;
            }
        }
        i = j + 1;
    }
    let (p, n) = (positives as f64, (scores.len() as u64 - positives) as f64);
    if p == 0.0 || n == 0.0 {
        return f64::NAN;
    }
    (rank_sum - p * (p + 1.0) / 2.0) / (p * n)
}

/// ESMM: log pCTCVR = log σ(own) + log σ(parent), and the CTCVR label (own AND parent).
fn ctcvr(output: &Tensor, target: &Tensor) -> (Tensor, Tensor) {
    let log_p = output.select(1, 0).log_sigmoid() + output.select(1, 1).log_sigmoid();
    let label = (target.select(1, 0) * target.select(1, 1)).to_kind(Kind::Float);
    (log_p, label)
}

/// Scores and 0/1 labels, kept on the device until read.
#[derive(Default)]
struct Scores {
    scores: Vec<Tensor>,
    labels: Vec<Tensor>,
}

impl Scores {
    fn push(&mut self, scores: Tensor, labels: Tensor) {
        self.scores.push(scores.detach().to_kind(Kind::Float));
        self.labels.push(labels.to_kind(Kind::Float));
    }

    fn host(&self) -> (Vec<f64>, Vec<f64>) {
        if self.scores.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let host = |v: &[Tensor]| Vec::<f64>::try_from(&Tensor::cat(v, 0).to_kind(Kind::Double).to_device(Device::Cpu));
        (host(&self.scores).expect("scores"), host(&self.labels).expect("labels"))
    }

    fn gather(&mut self, gather: &dyn Fn(&Tensor) -> Tensor) {
        let cat = |v: &[Tensor]| match v.is_empty() {
            true => Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            false => Tensor::cat(v, 0),
        };
        self.scores = vec![gather(&cat(&self.scores))];
        self.labels = vec![gather(&cat(&self.labels))];
    }
}

/// Every score and label of the evaluation (the task's own; for ESMM also pCTCVR's).
struct Meter {
    own: Scores,
    joint: Option<Scores>,
}

impl QualityMeter for Meter {
    fn update(&mut self, output: &Tensor, target: &Tensor) {
        match &mut self.joint {
            None => self.own.push(output.view([-1]), target.view([-1])),
            Some(joint) => {
                let (log_p, label) = ctcvr(output, target);
                joint.push(log_p, label);
                // pCVR is scored where the parent's label is 1 (a clicked row).
                let clicked = target.select(1, 1).eq(1).nonzero().view([-1]);
                self.own
                    .push(output.select(1, 0).index_select(0, &clicked), target.select(1, 0).index_select(0, &clicked));
            }
        }
    }

    fn finish(&self) -> Vec<(&'static str, f64)> {
        let (scores, labels) = self.own.host();
        let n = scores.len().max(1) as f64;
        let positive: Vec<bool> = labels.iter().map(|&l| l > 0.5).collect();
        // log(1 + e^-|s|) + max(s, 0) − s·y: the stable form of −y·log σ(s) − (1−y)·log(1−σ(s)).
        let logloss =
            scores.iter().zip(&labels).map(|(&s, &y)| (-s.abs()).exp().ln_1p() + s.max(0.0) - s * y).sum::<f64>() / n;
        let correct = scores.iter().zip(&positive).filter(|(&s, &y)| (s > 0.0) == y).count() as f64;
        let mut out = vec![("auc", auc(&scores, &positive)), ("logloss", logloss), ("accuracy", correct / n)];
        if let Some(joint) = &self.joint {
            let (scores, labels) = joint.host();
            let positive: Vec<bool> = labels.iter().map(|&l| l > 0.5).collect();
            out.push(("ctcvr_auc", auc(&scores, &positive)));
        }
        out
    }

    /// Nothing to sum: [`QualityMeter::gather`] brings every rank's scores together.
    fn reduce(&mut self, _sum: &dyn Fn(&Tensor) -> Tensor) {}

    fn gather(&mut self, gather: &dyn Fn(&Tensor) -> Tensor) {
        self.own.gather(gather);
        if let Some(joint) = &mut self.joint {
            joint.gather(gather);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over every (positive, negative) pair: 1 when the positive scores higher,
    /// ½ on a tie.
    fn pairwise(scores: &[f64], labels: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &a) in scores.iter().enumerate().filter(|(i, _)| labels[*i]) {
            for (_, &b) in scores.iter().enumerate().filter(|(j, _)| !labels[*j]) {
                wins += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
                pairs += 1.0;
            }
            let _ = i;
        }
        wins / pairs
    }

    #[test]
    fn auc_equals_the_pairwise_count_with_ties() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for n in [2usize, 7, 50, 301] {
            // Scores on a coarse grid: many ties, within and across the classes.
            let scores: Vec<f64> = (0..n).map(|_| rng.gen_range(0..6) as f64 / 2.0).collect();
            let mut labels: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.3)).collect();
            labels[0] = true;
            labels[1] = false;
            assert!((auc(&scores, &labels) - pairwise(&scores, &labels)).abs() < 1e-12, "n {n}");
        }
        assert_eq!(auc(&[0.1, 0.9], &[false, true]), 1.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert!(auc(&[0.1, 0.2], &[true, true]).is_nan());
    }

    #[test]
    fn loss_is_pytorch_bce_with_logits_and_metrics_read_every_score() {
        let task = crate::tasks::test_task("binary", 0);
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, -3.0]).view([4, 1]);
        let labels = Tensor::from_slice(&[1i64, 0, 0, 1]);
        let loss = Binary.loss(&task, &logits, &labels).double_value(&[]);
        let p = |s: f64| 1.0 / (1.0 + (-s).exp());
        let want = -((p(2.0)).ln() + (1.0 - p(-1.0)).ln() + (1.0 - p(0.5)).ln() + p(-3.0).ln()) / 4.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        let mut m = Binary.meter(&task, Device::Cpu);
        m.update(&logits.narrow(0, 0, 2), &labels.narrow(0, 0, 2));
        m.update(&logits.narrow(0, 2, 2), &labels.narrow(0, 2, 2));
        let got = m.finish();
        assert!((got[1].1 - want).abs() < 1e-6);
        assert_eq!(got[2].1, 0.5);
        assert_eq!(got[0].1, 0.5); // 2.0 > 0.5, -1.0 ; -3.0 below both negatives
    }

    /// ESMM: the loss is BCE of σ(cvr)·σ(ctr) against click AND conversion on every row;
    /// pCVR's metrics read the clicked rows only; ctcvr_auc every row.
    #[test]
    fn esmm_loss_is_ctcvr_bce_and_cvr_is_scored_on_clicked_rows() {
        let mut task = crate::tasks::test_task("binary", 0);
        task.given = Some(0);
        // Columns: (cvr logit, ctr logit); labels (conversion, click).
        let out = Tensor::from_slice(&[0.3f32, 1.0, -0.5, 2.0, 1.5, -1.0, 2.0, 0.5]).view([4, 2]);
        let y = Tensor::from_slice(&[1i64, 1, 0, 1, 1, 0, 0, 0]).view([4, 2]);
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let p = [s(0.3) * s(1.0), s(-0.5) * s(2.0), s(1.5) * s(-1.0), s(2.0) * s(0.5)];
        let label = [1.0, 0.0, 0.0, 0.0]; // conversion 1 on an unclicked row is no CTCVR positive
        let want = -p.iter().zip(label).map(|(p, y)| y * p.ln() + (1.0 - y) * (1.0 - p).ln()).sum::<f64>() / 4.0;
        let got = Binary.loss(&task, &out, &y).double_value(&[]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let mut m = Binary.meter(&task, Device::Cpu);
        m.update(&out, &y);
        let r = m.finish();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), ["auc", "logloss", "accuracy", "ctcvr_auc"]);
        // Clicked rows 0 and 1: cvr logits 0.3 (converted) and −0.5 (not): AUC 1, both right.
        assert_eq!((r[0].1, r[2].1), (1.0, 1.0));
        let ll = -(s(0.3).ln() + (1.0 - s(-0.5)).ln()) / 2.0;
        assert!((r[1].1 - ll).abs() < 1e-6); // logits kept as f32
                                             // pCTCVR: row 0 (the one positive) 0.42 beats rows 1 (0.33) and 2 (0.22), not row 3 (0.55).
        assert!((r[3].1 - 2.0 / 3.0).abs() < 1e-12, "{}", r[3].1);
    }

    /// Two ranks' meters, each gathering the other's scores (what the evaluation's all-gather
    /// does): both report the whole split's AUC, not the mean of the per-rank AUCs.
    #[test]
    fn ranks_gather_scores_rather_than_average_aucs() {
        let task = crate::tasks::test_task("binary", 0);
        let parts = [([3.0f32, 1.0, 2.0], [1i64, 0, 0]), ([0.5f32, -1.0, 4.0], [1i64, 0, 0])];
        let meters: Vec<Box<dyn QualityMeter>> = parts
            .iter()
            .map(|(s, y)| {
                let mut m = Binary.meter(&task, Device::Cpu);
                m.update(&Tensor::from_slice(s).view([3, 1]), &Tensor::from_slice(y));
                m
            })
            .collect();
        let per_rank: Vec<f64> = meters.iter().map(|m| m.finish()[0].1).collect();
        assert_eq!(per_rank, [1.0, 0.5]); // their mean, 0.75, is not the split's AUC
        let all_scores = Tensor::from_slice(&[3.0f32, 1.0, 2.0, 0.5, -1.0, 4.0]);
        let all_labels = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.0, 0.0]);
        for mut m in meters {
            // Scores are gathered first, then labels (the order Meter::gather asks in).
            let calls = std::cell::Cell::new(0);
            m.gather(&|_t| {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    all_scores.shallow_clone()
                } else {
                    all_labels.shallow_clone()
                }
            });
            let whole = m.finish()[0].1;
            let want = auc(&[3.0, 1.0, 2.0, 0.5, -1.0, 4.0], &[true, false, false, true, false, false]);
            assert_eq!(whole, want);
            assert!((whole - 0.5).abs() < 1e-12, "{whole}");
        }
    }
}
