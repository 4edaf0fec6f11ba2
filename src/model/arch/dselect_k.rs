//! DSelect-k (Hazimeh et al. 2021): `experts` shared backbones (`experts.<e>.…`) and per task
//! a differentiable gate that selects at most `k` of them. The gate reads the flattened image:
//! `z_logits` (a linear layer, `k · m` outputs with `m = ⌈log₂ experts⌉`) pass through the
//! smooth step `S` (0 below −γ/2, 1 above γ/2, `−2t³/γ³ + 3t/(2γ) + ½` between); selector `i`
//! gives expert `e` the weight `Π_b (S(z_ib) if bit b of e is set else 1 − S(z_ib))`, and
//! `w_logits` (a linear layer, `k` outputs) weigh the `k` selectors through a softmax. The
//! experts' outputs are mixed with the resulting weights, stage by stage. Initialisation as
//! the official code: `z_logits` U(±γ/100), `w_logits` U(±0.05).
//!
//! Training adds the paper's regularizer to each gate: `entropy_reg` times the selectors'
//! entropy (pushing each selector to one expert), and when `experts` is not a power of two
//! `Σ 1 / (selector weight on real experts)`, which keeps the selectors off the codes that
//! name no expert. Both are summed over the batch, as the official code does, and reach only
//! the gates.
//!
//! Ownership: the experts are shared, each gate is its task's. Representation: the experts'
//! outputs.
use super::mmoe::mix;
use super::{Architecture, Build, Pass, Plan, Setting};
use crate::config::OptionMap;
use crate::model::backbone::Backbone;
use crate::model::layers::{Compute, Linear};
use tch::{Kind, Tensor};

pub(super) fn plan(o: &mut OptionMap, _: &Setting) -> anyhow::Result<Box<dyn Plan>> {
    let experts = o.int("experts", 3, 2..=64)? as usize;
    let k = o.int("k", 2, 1..=experts as u64)? as usize;
    let gamma = o.positive("gamma", 1.0)?;
    let entropy_reg = o.non_negative("entropy_reg", 1e-6)?;
    Ok(Box::new(DselectKPlan { experts, k, gamma, entropy_reg }))
}

struct DselectKPlan {
    experts: usize,
    k: usize,
    gamma: f64,
    entropy_reg: f64,
}

/// Bits needed to number `experts`: `⌈log₂ experts⌉`.
fn bits(experts: usize) -> usize {
    (usize::BITS - (experts - 1).leading_zeros()) as usize
}

impl Plan for DselectKPlan {
    fn gates_read_the_image(&self) -> bool {
        true
    }

    fn build(&self, b: &Build) -> Box<dyn Architecture> {
        let experts = b.experts(&(b.root / "experts"), self.experts);
        let m = bits(self.experts);
        let gates = b
            .tasks
            .iter()
            .map(|t| {
                let p = b.root / "gates" / t.as_str();
                let z = Linear::uniform(&p / "z_logits", b.input_features(), (self.k * m) as i64, self.gamma / 100.0);
                let w = Linear::uniform(&p / "w_logits", b.input_features(), self.k as i64, 0.05);
                (z, w)
            })
            .collect();
        // Row e: the m bits of e, most significant first.
        let codes: Vec<bool> =
            (0..self.experts).flat_map(|e| (0..m).rev().map(move |bit| (e >> bit) & 1 == 1)).collect();
        let codes =
            Tensor::from_slice(&codes).reshape([1, 1, self.experts as i64, m as i64]).to_device(b.root.device());
        Box::new(DselectK {
            experts,
            gates,
            codes,
            k: self.k as i64,
            m: m as i64,
            gamma: self.gamma,
            entropy_reg: self.entropy_reg,
            power_of_two: self.experts.is_power_of_two(),
            tasks: b.tasks.to_vec(),
        })
    }
}

pub struct DselectK {
    experts: Vec<Backbone>,
    /// Per task: `z_logits`, `w_logits`.
    gates: Vec<(Linear, Linear)>,
    /// `[1, 1, experts, m]`: the binary code of every expert.
    codes: Tensor,
    k: i64,
    m: i64,
    gamma: f64,
    entropy_reg: f64,
    power_of_two: bool,
    tasks: Vec<String>,
}

impl DselectK {
    /// The smooth step of width γ.
    fn smooth_step(&self, t: &Tensor) -> Tensor {
        let g = self.gamma;
        let cubic = t.pow_tensor_scalar(3) * (-2.0 / g.powi(3)) + t * (3.0 / (2.0 * g)) + 0.5;
        let upper = t.ones_like().where_self(&t.ge(g / 2.0), &cubic);
        t.zeros_like().where_self(&t.le(-g / 2.0), &upper)
    }

    /// Task `task`'s expert weights `[N, experts]` and its selectors `[N, k, experts]`.
    fn select(&self, task: usize, x: &Tensor, c: Compute) -> (Tensor, Tensor) {
        let (z, w) = &self.gates[task];
        let flat = c.cast(&x.flatten(1, -1));
        let s = self.smooth_step(&z.forward(&flat, c).reshape([-1, self.k, 1, self.m]));
        let selectors = s.where_self(&self.codes, &s.rsub_scalar(1.0)).prod_dim_int(-1, false, None::<Kind>);
        let weights = w.forward(&flat, c).softmax(1, None::<Kind>);
        ((weights.unsqueeze(-1) * &selectors).sum_dim_intlist(1, false, None::<Kind>), selectors)
    }

    /// The regularizer of one gate's selectors.
    fn regularizer(&self, selectors: &Tensor) -> Tensor {
        let s = selectors.to_kind(Kind::Float);
        let entropy = -(&s * (&s + 1e-6).log()).sum(Kind::Float);
        let r = entropy * self.entropy_reg;
        if self.power_of_two {
            r
        } else {
            r + s.sum_dim_intlist(-1, false, None::<Kind>).reciprocal().sum(Kind::Float)
        }
    }
}

impl Architecture for DselectK {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> Vec<Vec<Tensor>> {
        let c = pass.compute;
        let outputs: Vec<Vec<Tensor>> = self
            .experts
            .iter()
            .map(|e| {
                let features = e.forward(x, pass.train, c);
                pass.cross_all(&features)
            })
            .collect();
        let all: Vec<&Vec<Tensor>> = outputs.iter().collect();
        (0..self.gates.len())
            .map(|t| {
                let (weights, _) = self.select(t, x, c);
                pass.record_gate(t, &weights);
                if pass.train {
                    // From a second evaluation of the gate: a graph of its own (see Pass::add_regularizer).
                    // On the detached input: a table's embedded rows are themselves on the loss graph,
                    // so the regularizer trains the gates, not the embeddings (images: no change).
                    let (_, selectors) = self.select(t, &x.detach(), c);
                    pass.add_regularizer(self.regularizer(&selectors));
                }
                mix(&weights, &all)
            })
            .collect()
    }

    fn private(&self, task: usize) -> Vec<String> {
        vec![format!("gates.{}", self.tasks[task])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_number_the_experts() {
        assert_eq!([2, 3, 4, 5, 8, 9].map(bits), [1, 2, 2, 3, 3, 4]);
    }
}
