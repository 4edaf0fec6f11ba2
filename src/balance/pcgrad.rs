//! PCGrad (Yu et al. 2020): for each task `i`, `g̃_i = g_i`, then for every other task `j`
//! in a random order, if `g̃_i · g_j < 0`, `g̃_i −= (g̃_i · g_j / ‖g_j‖²) g_j` (projection onto
//! the *original* `g_j`); `d = Σ g̃_i`.
//!
//! Every `g̃_i` stays a combination `Σ_k C_ik g_k` of the original gradients, so the whole
//! procedure runs on the host on the Gram matrix (`g̃_i · g_j = (C M)_ij`) and the direction
//! is one `[T] × [T, P]` product. Weights: the coefficients `w_k = Σ_i C_ik` (`d = Σ w_k g_k`);
//! the heads get weight 1 (PCGrad leaves task-specific gradients alone).
//!
//! The order is injectable ([`pcgrad`] takes it); in training it is [`random_orders`] of
//! `rng::stream(seed, Balance, step)`.
use super::autograd::gram;
use super::gradient_method::{Combination, GradientMethod};
use super::options::Options;
use super::solvers::Mat;
use super::Balancer;
use super::StepContext;
use crate::rng::{self, Purpose};
use rand::seq::SliceRandom;
use tch::Tensor;

pub(super) fn build(o: &mut Options, _tasks: usize) -> anyhow::Result<Box<dyn Balancer>> {
    o.gradient_method(PcGrad)
}

/// For each task `i`, the other tasks in a random order drawn from `(seed, step)`.
pub fn random_orders(tasks: usize, seed: u64, step: u64) -> Vec<Vec<usize>> {
    let mut rng = rng::stream(seed, Purpose::Balance, step);
    (0..tasks)
        .map(|i| {
            let mut others: Vec<usize> = (0..tasks).filter(|&j| j != i).collect();
            others.shuffle(&mut rng);
            others
        })
        .collect()
}

/// Checks that `orders[i]` is a permutation of the tasks other than `i`.
pub(crate) fn check_orders(orders: &[Vec<usize>], tasks: usize) -> anyhow::Result<()> {
    anyhow::ensure!(orders.len() == tasks, "balance: {} orders for {tasks} tasks", orders.len());
    for (i, order) in orders.iter().enumerate() {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let expected: Vec<usize> = (0..tasks).filter(|&j| j != i).collect();
        anyhow::ensure!(
            sorted == expected,
            "balance: order {order:?} for task {i} is not a permutation of the other tasks"
        );
    }
    Ok(())
}

/// `(C M)_ij`: the dot product of the combination `row` with the original gradient `j`.
pub(crate) fn dot_with(row: &[f64], m: &Mat, j: usize) -> f64 {
    (0..m.n()).map(|k| row[k] * m[(k, j)]).sum()
}

/// `C = I`: every `g̃_i` starts as `g_i`.
pub(crate) fn identity_rows(n: usize) -> Vec<Vec<f64>> {
    (0..n).map(|i| (0..n).map(|k| if i == k { 1.0 } else { 0.0 }).collect()).collect()
}

/// Sum of each column of `C`: the coefficient of every original gradient in `Σ_i g̃_i`.
pub(crate) fn column_sums(c: &[Vec<f64>]) -> Vec<f64> {
    (0..c.len()).map(|k| c.iter().map(|row| row[k]).sum()).collect()
}

/// The PCGrad coefficients `C` (`g̃_i = Σ_k C_ik g_k`) for the Gram matrix `m`.
pub fn pcgrad_coefficients(m: &Mat, orders: &[Vec<usize>]) -> Vec<Vec<f64>> {
    let n = m.n();
    let mut c = identity_rows(n);
    for (i, order) in orders.iter().enumerate() {
        for &j in order {
            let d = dot_with(&c[i], m, j);
            if d < 0.0 && m[(j, j)] > 0.0 {
                c[i][j] -= d / m[(j, j)];
            }
        }
    }
    c
}

/// PCGrad on per-task gradients `[T, P]` with the given projection orders.
pub fn pcgrad(grads: &Tensor, orders: &[Vec<usize>]) -> anyhow::Result<Combination> {
    let m = gram(grads)?;
    check_orders(orders, m.n())?;
    let coef = column_sums(&pcgrad_coefficients(&m, orders));
    Ok(Combination::weighted(grads, &coef))
}

pub struct PcGrad;

impl GradientMethod for PcGrad {
    fn name(&self) -> &'static str {
        "pcgrad"
    }

    fn combine_step(&mut self, grads: &Tensor, _losses: &Tensor, ctx: &StepContext) -> anyhow::Result<Combination> {
        pcgrad(grads, &random_orders(ctx.losses.len(), ctx.seed, ctx.step))
    }

    fn head_weights(&self, comb: &Combination, _losses: &Tensor) -> Tensor {
        comb.weights.ones_like()
    }
}
