//! How far apart the data groups' images look to a BatchNorm they share: the diagnosis a
//! multi-input run logs once when its groups share BatchNorm statistics
//! (`model.domain_norm: shared`). Training normalizes each group's batch with its own batch
//! statistics, evaluation with running statistics that mix every group's, which fit none of
//! them when the groups differ (docs/MULTI_INPUT.md).
//!
//! The measurement is an eval-mode forward of each group's first training batch without
//! gradients: it updates no statistic, draws no random number and changes no weight.
use super::inputs::Inputs;
use crate::model::layers::probe::{self, Moments};
use crate::model::{Mode, MultiTaskModel};
use tch::Tensor;

/// The largest gap between two groups at the first BatchNorm layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    /// Mean over the channels of `|μ_a − μ_b| / √((σ²_a + σ²_b) / 2)`: how many pooled standard
    /// deviations the groups' channel means lie apart.
    pub mean_distance: f64,
    /// The largest ratio of the two groups' variances of a channel (≥ 1).
    pub variance_ratio: f64,
    /// The two groups (indices) whose means lie furthest apart.
    pub groups: (usize, usize),
}

/// Below both, the groups look alike to a shared BatchNorm (then the log line is info).
const ALIKE_DISTANCE: f64 = 0.25;
const ALIKE_RATIO: f64 = 1.5;

/// The gap between the data groups at step `step`'s batches (None with one group or no
/// BatchNorm).
pub fn measure(model: &MultiTaskModel, inputs: &Inputs, step: u64) -> Option<Gap> {
    if inputs.groups.len() < 2 {
        return None;
    }
    let moments: Vec<Moments> = tch::no_grad(|| {
        inputs
            .groups
            .iter()
            .enumerate()
            .map(|(g, input)| {
                let batch = input.train.train_batch_at(step);
                probe::first_norm_input(|| {
                    model.forward_on(&batch.images, g, Mode::Eval);
                })
            })
            .collect::<Option<Vec<_>>>()
    })?;
    let mut worst: Option<Gap> = None;
    for a in 0..moments.len() {
        for b in a + 1..moments.len() {
            let gap = between(&moments[a], &moments[b], (a, b));
            if worst.as_ref().is_none_or(|w| gap.mean_distance > w.mean_distance) {
                let ratio = worst.as_ref().map_or(1.0, |w| w.variance_ratio).max(gap.variance_ratio);
                worst = Some(Gap { variance_ratio: ratio, ..gap });
            } else if let Some(w) = worst.as_mut() {
                w.variance_ratio = w.variance_ratio.max(gap.variance_ratio);
            }
        }
    }
    worst
}

fn between((mean_a, var_a): &Moments, (mean_b, var_b): &Moments, groups: (usize, usize)) -> Gap {
    let pooled = ((var_a + var_b) / 2.0 + 1e-12).sqrt();
    let mean_distance = ((mean_a - mean_b).abs() / pooled).mean(None).double_value(&[]);
    let (va, vb) = (var_a.clamp_min(1e-12), var_b.clamp_min(1e-12));
    let variance_ratio = Tensor::maximum(&(&va / &vb), &(&vb / &va)).max().double_value(&[]);
    Gap { mean_distance, variance_ratio, groups }
}

impl Gap {
    /// Whether the groups look alike enough that one set of statistics fits them.
    pub fn alike(&self) -> bool {
        self.mean_distance < ALIKE_DISTANCE && self.variance_ratio < ALIKE_RATIO
    }

    /// The log line; `names` are each group's task names.
    pub fn describe(&self, names: &[Vec<String>]) -> String {
        let (a, b) = self.groups;
        format!(
            "model.domain_norm: shared: the data groups share BatchNorm statistics; at the first BatchNorm their \
             training batches lie {:.2} pooled standard deviations apart on average (channel means of {} vs {}), \
             channel variances up to {:.1}× apart; evaluation normalizes every group with statistics of their \
             mixture{}",
            self.mean_distance,
            names[a].join("+"),
            names[b].join("+"),
            self.variance_ratio,
            if self.alike() {
                ""
            } else {
                ", which fit none of them: model.domain_norm: statistics gives each its own"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn moments(mean: &[f64], var: &[f64]) -> Moments {
        let t = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Double).to_device(Device::Cpu);
        (t(mean), t(var))
    }

    #[test]
    fn the_gap_is_the_mean_distance_in_pooled_deviations_and_the_largest_variance_ratio() {
        // Channel 0: means 0 and 2, variances 1 and 3 (pooled sd √2); channel 1: equal.
        let gap = between(&moments(&[0.0, 5.0], &[1.0, 4.0]), &moments(&[2.0, 5.0], &[3.0, 4.0]), (0, 1));
        let want = (2.0 / 2f64.sqrt()) / 2.0;
        assert!((gap.mean_distance - want).abs() < 1e-12, "{gap:?}");
        assert!((gap.variance_ratio - 3.0).abs() < 1e-12, "{gap:?}");
        assert!(!gap.alike());
        let same = between(&moments(&[1.0], &[2.0]), &moments(&[1.0], &[2.0]), (0, 1));
        assert_eq!((same.mean_distance, same.variance_ratio), (0.0, 1.0));
        assert!(same.alike());
    }
}
