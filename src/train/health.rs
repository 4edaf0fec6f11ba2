//! Catching divergence. Every step records, on the device, whether its losses and gradients
//! are finite; the loop reads that record at the boundaries it already has (log lines,
//! evaluations, checkpoints), so a healthy step waits for nothing. A checkpoint is written
//! only after a clean record and only with finite weights, so LATEST and BEST are always finite.
use crate::error::Diverged;
use tch::{Device, Kind, Tensor};

/// Which step went wrong first since the last check, and how.
pub struct Health {
    /// The first bad step (0-based update index) since the last check; -1: none.
    first_bad_step: Tensor,
    /// The task whose loss was non-finite at that step; -1: the losses were finite but a
    /// gradient was not.
    bad_task: Tensor,
}

/// One step's verdict, on the device: `finite` (bool scalar) and the first task with a
/// non-finite loss (-1 when only the gradients are bad, or nothing is).
pub struct StepFlags {
    pub finite: Tensor,
    pub bad_task: Tensor,
}

impl StepFlags {
    /// From the step's detached losses `[T]` and other tensors the step produced (the flat
    /// gradient buffer, and in `skip_step` mode the BatchNorm statistics).
    pub fn of<'a>(losses: &Tensor, produced: impl IntoIterator<Item = &'a Tensor>) -> Self {
        let loss_ok = losses.isfinite();
        let finite = match all_finite(produced) {
            Some(ok) => loss_ok.all().logical_and(&ok),
            None => loss_ok.all(),
        };
        // argmin of [ok as int] is the first non-finite loss; it is meaningless when all are
        // finite, which the `where` below maps to -1.
        let first = loss_ok.to_kind(Kind::Int64).argmin(0, false);
        let bad_task = first.where_scalarother(&loss_ok.all().logical_not(), -1);
        Self { finite, bad_task }
    }
}

impl Health {
    pub fn new(device: Device) -> Self {
        let none = || Tensor::full([], -1, (Kind::Int64, device));
        Self { first_bad_step: none(), bad_task: none() }
    }

    /// Notes step `step`'s flags without reading them.
    pub fn record(&mut self, step: u64, flags: &StepFlags) {
        let first = self.first_bad_step.lt(0).logical_and(&flags.finite.logical_not());
        let step = Tensor::full([], step as i64, (Kind::Int64, self.first_bad_step.device()));
        self.bad_task = flags.bad_task.where_self(&first, &self.bad_task);
        self.first_bad_step = step.where_self(&first, &self.first_bad_step);
    }

    /// Reads the record (the one host read) and clears it; a bad step is a [`Diverged`] error
    /// naming it and its task.
    pub fn check(&mut self, task_names: &[String]) -> Result<(), Diverged> {
        let step = self.first_bad_step.int64_value(&[]);
        if step < 0 {
            return Ok(());
        }
        let task = self.bad_task.int64_value(&[]);
        let _ = self.first_bad_step.fill_(-1);
        let _ = self.bad_task.fill_(-1);
        Err(Diverged(match task_names.get(task as usize).filter(|_| task >= 0) {
            Some(t) => format!("step {}: task '{t}' has a non-finite loss (NaN or Inf)", step + 1),
            None => format!(
                "step {}: a gradient or BatchNorm statistic is non-finite (NaN or Inf) although every loss is finite",
                step + 1
            ),
        }))
    }
}

/// Whether every floating-point tensor is finite, as one device flag (no host read).
pub fn all_finite<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Option<Tensor> {
    tensors.into_iter().filter(|t| t.is_floating_point()).map(finite).reduce(|a, b| a.logical_and(&b))
}

/// Whether every value of a floating-point tensor is finite, as a boolean scalar: its minimum
/// and maximum are (a NaN propagates into both, an infinity is one of them). Min and max read
/// the buffer once with no temporary of its size, where `isfinite().all()` or a sum would make
/// one over the whole gradient buffer every step.
fn finite(t: &Tensor) -> Tensor {
    if t.numel() == 0 {
        return Tensor::from(true).to_device(t.device());
    }
    let (lo, hi) = t.aminmax(None::<i64>, false);
    lo.isfinite().logical_and(&hi.isfinite())
}

/// The first of `variables` holding a NaN or Inf, if any: one host read when all are finite,
/// a search when one is not.
pub fn first_non_finite(variables: &[(String, Tensor)]) -> Option<String> {
    let ok = all_finite(variables.iter().map(|(_, t)| t))?;
    if ok.int64_value(&[]) != 0 {
        return None;
    }
    variables
        .iter()
        .filter(|(_, t)| t.is_floating_point())
        .find(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        .map(|(n, _)| n.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn a_clean_record_passes_and_the_first_bad_step_is_named() {
        let mut h = Health::new(Device::Cpu);
        let grads = Tensor::from_slice(&[1.0f32, 2.0]);
        h.record(0, &StepFlags::of(&Tensor::from_slice(&[0.5f32, 1.0, 2.0]), [&grads]));
        assert!(h.check(&names()).is_ok());
        h.record(4, &StepFlags::of(&Tensor::from_slice(&[0.5f32, f32::NAN, f32::INFINITY]), [&grads]));
        h.record(5, &StepFlags::of(&Tensor::from_slice(&[f32::NAN, 1.0, 1.0]), [&grads]));
        let e = h.check(&names()).unwrap_err().to_string();
        assert!(e.contains("step 5") && e.contains("task 'b'"), "{e}");
        assert!(h.check(&names()).is_ok(), "checking clears the record");
        let bad = Tensor::from_slice(&[1.0f32, f32::NAN]);
        h.record(9, &StepFlags::of(&Tensor::from_slice(&[0.5f32, 1.0, 2.0]), [&grads, &bad]));
        let e = h.check(&names()).unwrap_err().to_string();
        assert!(e.contains("step 10") && e.contains("gradient"), "{e}");
    }

    #[test]
    fn min_and_max_tell_finiteness_like_isfinite_all() {
        let max = f32::MAX;
        let cases: [(&[f32], bool); 7] = [
            (&[1.0, -2.0, 0.0], true),
            (&[max, max, max, max, -max], true), // a sum would overflow
            (&[1.0, f32::INFINITY], false),
            (&[f32::NEG_INFINITY, 1.0], false),
            (&[f32::INFINITY, f32::NEG_INFINITY], false),
            (&[f32::NAN, 1.0], false),
            (&[], true),
        ];
        for (values, want) in cases {
            for kind in [Kind::Float, Kind::BFloat16] {
                let t = Tensor::from_slice(values).to_kind(kind);
                let want = want && (kind == Kind::Float || values.iter().all(|v| v.abs() < 1e38));
                assert_eq!(finite(&t).int64_value(&[]) != 0, want, "{values:?} as {kind:?}");
                assert_eq!(t.isfinite().all().int64_value(&[]) != 0, want, "{values:?} as {kind:?}: the reference");
            }
        }
        // f64 values whose sum would overflow are finite.
        assert!(finite(&Tensor::from_slice(&[f64::MAX, f64::MAX])).int64_value(&[]) != 0);
        assert!(finite(&Tensor::from_slice(&[1.0f64, f64::NAN])).int64_value(&[]) == 0);
    }

    #[test]
    fn non_finite_variables_are_named() {
        let v = vec![
            ("w".to_string(), Tensor::from_slice(&[1.0f32])),
            ("n".to_string(), Tensor::from_slice(&[3i64])),
            ("x".to_string(), Tensor::from_slice(&[f32::INFINITY])),
        ];
        assert_eq!(first_non_finite(&v).as_deref(), Some("x"));
        assert_eq!(first_non_finite(&v[..2]), None);
    }
}
