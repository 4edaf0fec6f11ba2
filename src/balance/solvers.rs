//! Small dense solvers for the gradient methods, in plain `f64` on the host.
//!
//! Every gradient method reduces the T per-task gradients to their Gram matrix `M = G Gᵀ`
//! (T ≤ ~16), so these problems are tiny and are solved exactly (active-set QP, Newton,
//! Jacobi) instead of by a few iterations of a first-order method: the weights are then
//! reproducible to many digits, which the reference test relies on. Every routine is
//! deterministic and returns finite numbers for zero, parallel and opposite gradients.
//! What is general lives here (linear systems, eigenpairs, non-negative and simplex QPs, the
//! cosine form of a Gram matrix); a method's own problem lives in its file (`nash.rs`,
//! `aligned.rs`, `cagrad.rs`, `upgrad.rs`).

/// A square, row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    n: usize,
    a: Vec<f64>,
}

impl Mat {
    pub fn zeros(n: usize) -> Self {
        Self { n, a: vec![0.0; n * n] }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n);
        for i in 0..n {
            m[(i, i)] = 1.0;
        }
        m
    }

    /// Builds an `n × n` matrix from row-major values. Panics on a length mismatch (a bug).
    pub fn from_rows(n: usize, values: Vec<f64>) -> Self {
        assert_eq!(values.len(), n * n, "Mat::from_rows: need {} values", n * n);
        Self { n, a: values }
    }

    pub fn from_fn(n: usize, f: impl Fn(usize, usize) -> f64) -> Self {
        Self { n, a: (0..n * n).map(|k| f(k / n, k % n)).collect() }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn values(&self) -> &[f64] {
        &self.a
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.a[i * self.n..(i + 1) * self.n]
    }

    pub fn trace(&self) -> f64 {
        (0..self.n).map(|i| self[(i, i)]).sum()
    }

    pub fn frobenius(&self) -> f64 {
        self.a.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    pub fn max_abs(&self) -> f64 {
        self.a.iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    pub fn scaled(&self, s: f64) -> Self {
        Self { n: self.n, a: self.a.iter().map(|x| x * s).collect() }
    }

    /// `M + δ I`.
    pub fn with_ridge(&self, delta: f64) -> Self {
        let mut m = self.clone();
        for i in 0..self.n {
            m[(i, i)] += delta;
        }
        m
    }

    /// `D M D` with `D = diag(d)`.
    pub fn scale_sym(&self, d: &[f64]) -> Self {
        Self::from_fn(self.n, |i, j| d[i] * self[(i, j)] * d[j])
    }

    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        (0..self.n).map(|i| dot(self.row(i), x)).collect()
    }

    /// `xᵀ M y`.
    pub fn quad(&self, x: &[f64], y: &[f64]) -> f64 {
        dot(x, &self.mul_vec(y))
    }

    pub fn transpose(&self) -> Self {
        Self::from_fn(self.n, |i, j| self[(j, i)])
    }

    pub fn matmul(&self, other: &Self) -> Self {
        Self::from_fn(self.n, |i, j| (0..self.n).map(|k| self[(i, k)] * other[(k, j)]).sum())
    }

    /// The principal submatrix on `idx`.
    pub fn sub(&self, idx: &[usize]) -> Self {
        Self::from_fn(idx.len(), |i, j| self[(idx[i], idx[j])])
    }
}

impl std::ops::Index<(usize, usize)> for Mat {
    type Output = f64;
    fn index(&self, (i, j): (usize, usize)) -> &f64 {
        &self.a[i * self.n + j]
    }
}

impl std::ops::IndexMut<(usize, usize)> for Mat {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f64 {
        &mut self.a[i * self.n + j]
    }
}

pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

pub(super) fn uniform(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// A Gram matrix whose trace (or norm) is below this is all zeros: there is nothing to balance.
pub(super) const TINY: f64 = 1e-300;

/// Solves `A x = b` by Gaussian elimination with partial pivoting. `None` when a pivot is
/// below `1e-13 · max|A|` (numerically singular).
pub fn solve_linear(a: &Mat, b: &[f64]) -> Option<Vec<f64>> {
    let n = a.n();
    let scale = a.max_abs();
    if n == 0 {
        return Some(Vec::new());
    }
    if scale == 0.0 {
        return None;
    }
    let mut m = a.clone();
    let mut x = b.to_vec();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| m[(i, col)].abs().total_cmp(&m[(j, col)].abs()))?;
        if m[(piv, col)].abs() <= 1e-13 * scale {
            return None;
        }
        if piv != col {
            for k in 0..n {
                m.a.swap(piv * n + k, col * n + k);
            }
            x.swap(piv, col);
        }
        for r in col + 1..n {
            let f = m[(r, col)] / m[(col, col)];
            if f != 0.0 {
                for k in col..n {
                    m[(r, k)] -= f * m[(col, k)];
                }
                x[r] -= f * x[col];
            }
        }
    }
    for col in (0..n).rev() {
        let s: f64 = (col + 1..n).map(|k| m[(col, k)] * x[k]).sum();
        x[col] = (x[col] - s) / m[(col, col)];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations.
///
/// Returns the eigenvalues in descending order and the matching eigenvectors as the
/// columns of the second matrix (`M = V diag(λ) Vᵀ`). Jacobi is slow for big matrices but
/// exact to rounding and fully deterministic, which is what a T ≤ 16 Gram matrix needs.
/// An off-diagonal entry counts as zero once it is below `ε·√|a_pp a_qq|`, relative to its
/// own row and column rather than to the largest entry: with gradients of very different
/// norms (a graded Gram matrix) the small eigenvalues then keep their relative accuracy
/// (Demmel & Veselić 1992) instead of being swamped by the large ones' rounding.
pub fn sym_eigen(m: &Mat) -> (Vec<f64>, Mat) {
    let n = m.n();
    let mut a = m.clone();
    let mut v = Mat::identity(n);
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[(p, q)];
                if apq.abs() <= f64::EPSILON * (a[(p, p)] * a[(q, q)]).abs().sqrt() {
                    continue;
                }
                rotated = true;
                let theta = (a[(q, q)] - a[(p, p)]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else if theta.abs() > 1e150 {
                    0.5 / theta // θ² would overflow; tan of the rotation angle ≈ 1/(2θ)
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[(k, p)];
                    let akq = a[(k, q)];
                    a[(k, p)] = c * akp - s * akq;
                    a[(k, q)] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[(p, k)];
                    let aqk = a[(q, k)];
                    a[(p, k)] = c * apk - s * aqk;
                    a[(q, k)] = s * apk + c * aqk;
                }
                // The rotation annihilates a_pq; its rounding residue would only slow the
                // convergence test down.
                a[(p, q)] = 0.0;
                a[(q, p)] = 0.0;
                for k in 0..n {
                    let vkp = v[(k, p)];
                    let vkq = v[(k, q)];
                    v[(k, p)] = c * vkp - s * vkq;
                    v[(k, q)] = s * vkp + c * vkq;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[(j, j)].total_cmp(&a[(i, i)]).then(i.cmp(&j)));
    let values = order.iter().map(|&i| a[(i, i)]).collect();
    let vectors = Mat::from_fn(n, |r, c| v[(r, order[c])]);
    (values, vectors)
}

/// Minimum-norm solution of `A x = b` in the least-squares sense (pseudo-inverse via the
/// eigen-decomposition of `AᵀA`, cutting eigenvalues below `1e-12 · λ_max`).
pub fn lstsq_min_norm(a: &Mat, b: &[f64]) -> Vec<f64> {
    let n = a.n();
    let at = a.transpose();
    let (lam, v) = sym_eigen(&at.matmul(a));
    let atb = at.mul_vec(b);
    let cut = 1e-12 * lam.first().copied().unwrap_or(0.0);
    let mut x = vec![0.0; n];
    for (k, &l) in lam.iter().enumerate() {
        if l > cut && l > 0.0 {
            let coef: f64 = (0..n).map(|i| v[(i, k)] * atb[i]).sum::<f64>() / l;
            for (i, xi) in x.iter_mut().enumerate() {
                *xi += coef * v[(i, k)];
            }
        }
    }
    x
}

/// Minimises `½ xᵀ Q x + cᵀ x` subject to `x ≥ 0` and, if `sum_to` is given, `Σ x = sum_to`,
/// by a primal active-set method (exact: it ends on the optimal face and solves the KKT
/// system there). `Q` must be symmetric positive semi-definite. When a KKT system is
/// singular (parallel or zero gradients make `Q` singular) the solve restarts with a ridge of
/// `1e-12` (relative to the unit diagonal below), which picks one of the optimal points
/// without moving the optimum.
///
/// The problem is solved in the variables `y_i = √Q_ii · x_i`, whose Hessian has a unit
/// diagonal: with gradients of very different norms (rows 1e6 apart make `Q`'s diagonal span
/// 1e12) the active-set decisions and pivots are then all made on O(1) numbers instead of
/// against tolerances relative to the largest entry.
pub fn qp_nonneg(q: &Mat, c: &[f64], sum_to: Option<f64>) -> Vec<f64> {
    let n = q.n();
    let scale: Vec<f64> = (0..n)
        .map(|i| if q[(i, i)] >= f64::MIN_POSITIVE && q[(i, i)].is_finite() { q[(i, i)].sqrt() } else { 1.0 })
        .collect();
    let qs = Mat::from_fn(n, |i, j| q[(i, j)] / scale[i] / scale[j]);
    let cs: Vec<f64> = c.iter().zip(&scale).map(|(c, s)| c / s).collect();
    // Σ x = s  ⇔  Σ y_i (s_min / s_i) = s · s_min, with weights in (0, 1].
    let smallest = scale.iter().copied().fold(f64::INFINITY, f64::min);
    let sum =
        sum_to.map(|total| Sum { weights: scale.iter().map(|s| smallest / s).collect(), total: total * smallest });
    let y = active_set(&qs, &cs, sum.as_ref())
        .or_else(|| active_set(&qs.with_ridge(1e-12), &cs, sum.as_ref()))
        .unwrap_or_else(|| match &sum {
            Some(sum) => sum.barycentre(),
            None => vec![0.0; n],
        });
    y.iter().zip(&scale).map(|(y, s)| y / s).collect()
}

/// The equality constraint `Σ weights_i y_i = total` (weights positive).
struct Sum {
    weights: Vec<f64>,
    total: f64,
}

impl Sum {
    /// The feasible point with equal `weights_i y_i`: in the original variables of
    /// [`qp_nonneg`] the barycentre of the simplex.
    fn barycentre(&self) -> Vec<f64> {
        let n = self.weights.len() as f64;
        self.weights.iter().map(|w| self.total / (n * w)).collect()
    }
}

/// The active-set iteration of [`qp_nonneg`]; `None` on a singular KKT system (or, never
/// seen, when the iteration cap is reached).
fn active_set(q: &Mat, c: &[f64], sum: Option<&Sum>) -> Option<Vec<f64>> {
    let n = q.n();
    if n == 0 {
        return Some(Vec::new());
    }
    let scale = q.max_abs().max(c.iter().fold(0.0, |m: f64, v| m.max(v.abs())));
    let tol = 1e-13 * scale.max(f64::MIN_POSITIVE);
    // Feasible start: the barycentre (all free), or the origin (all fixed).
    let (mut x, mut free) = match sum {
        Some(sum) => (sum.barycentre(), vec![true; n]),
        None => (vec![0.0; n], vec![false; n]),
    };
    for _ in 0..(50 * n + 100) {
        let idx: Vec<usize> = (0..n).filter(|&i| free[i]).collect();
        let (xf, nu) = face_minimiser(q, c, &idx, sum)?;
        if xf.iter().all(|&v| v >= 0.0) {
            for (k, &i) in idx.iter().enumerate() {
                x[i] = xf[k];
            }
            // Multipliers of the bounds x_j ≥ 0 that are held fixed.
            let grad = q.mul_vec(&x);
            let weight = |j: usize| sum.map_or(0.0, |s| s.weights[j]);
            let worst = (0..n)
                .filter(|&j| !free[j])
                .map(|j| (j, grad[j] + c[j] - nu * weight(j)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match worst {
                Some((j, lam)) if lam < -tol => free[j] = true,
                _ => return Some(x),
            }
        } else {
            // Move toward the face minimiser until the first free variable hits zero.
            let (mut tau, mut block) = (1.0f64, idx[0]);
            for (k, &i) in idx.iter().enumerate() {
                if xf[k] < 0.0 {
                    let t = x[i] / (x[i] - xf[k]);
                    if t < tau {
                        (tau, block) = (t, i);
                    }
                }
            }
            for (k, &i) in idx.iter().enumerate() {
                x[i] += tau * (xf[k] - x[i]);
                if i == block || x[i] <= 0.0 {
                    x[i] = 0.0;
                    free[i] = false;
                }
            }
        }
    }
    None
}

/// Minimiser of the QP on the face where only `idx` are free (the rest fixed at 0), with the
/// multiplier `ν` of the sum constraint (0 without one).
fn face_minimiser(q: &Mat, c: &[f64], idx: &[usize], sum: Option<&Sum>) -> Option<(Vec<f64>, f64)> {
    let k = idx.len();
    match sum {
        None => {
            let x = solve_linear(&q.sub(idx), &idx.iter().map(|&i| -c[i]).collect::<Vec<_>>())?;
            Some((x, 0.0))
        }
        Some(sum) => {
            if k == 0 {
                return None;
            }
            // [Q_FF a; aᵀ 0] [x; -ν] = [-c_F; total], a = the free weights.
            let mut kkt = Mat::zeros(k + 1);
            for r in 0..k {
                for col in 0..k {
                    kkt[(r, col)] = q[(idx[r], idx[col])];
                }
                kkt[(r, k)] = sum.weights[idx[r]];
                kkt[(k, r)] = sum.weights[idx[r]];
            }
            let mut rhs: Vec<f64> = idx.iter().map(|&i| -c[i]).collect();
            rhs.push(sum.total);
            let sol = solve_linear(&kkt, &rhs)?;
            Some((sol[..k].to_vec(), -sol[k]))
        }
    }
}

/// The minimum-norm point of the convex hull of the gradients: `argmin_{α ∈ Δ} αᵀ M α`.
/// Closed form for T = 2 (as in Sener & Koltun), the exact active-set QP otherwise.
/// Uniform weights when every gradient is zero.
pub fn min_norm_simplex(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let scale = m.trace();
    if n <= 1 || scale <= TINY {
        return uniform(n);
    }
    if n == 2 {
        let denom = m[(0, 0)] + m[(1, 1)] - 2.0 * m[(0, 1)];
        let gamma = if denom <= 1e-14 * scale { 0.5 } else { ((m[(1, 1)] - m[(0, 1)]) / denom).clamp(0.0, 1.0) };
        return vec![gamma, 1.0 - gamma];
    }
    let mn = m.scaled(n as f64 / scale);
    clean_simplex(qp_nonneg(&mn, &vec![0.0; n], Some(1.0)))
}

/// Clamps rounding-level negatives and renormalizes, so a simplex point is exactly on it.
pub(super) fn clean_simplex(mut w: Vec<f64>) -> Vec<f64> {
    for v in w.iter_mut() {
        *v = v.max(0.0);
    }
    let s: f64 = w.iter().sum();
    if s > 0.0 && s.is_finite() {
        w.iter_mut().for_each(|v| *v /= s);
        w
    } else {
        uniform(w.len())
    }
}

/// The smallest norm of a combination `g_w = Σ w_i g_i` the Gram matrix resolves, relative
/// to `Σ w_i ‖g_i‖`: `‖g_w‖² = wᵀMw` is a sum of terms up to `(Σ w_i ‖g_i‖)²` computed
/// with relative rounding ε, so a norm below ~`√ε·Σ w_i ‖g_i‖` (1.5e-8) is noise; at 1e-6
/// it carries about four digits.
pub const RESOLUTION: f64 = 1e-6;

/// The Gram matrix as norms and cosines, `M_ij = n_i n_j C_ij`, over the tasks whose
/// gradient is not zero (`active`). Methods whose direction does not depend on each task's
/// scale (Nash-MTL, IMTL-G) and decisions about linear dependence (Aligned-MTL) work on `C`,
/// whose entries are O(1) whatever the norms: rows 1e6 apart cost no precision there.
pub struct Cosines {
    /// `‖g_i‖` for every task (0 for the inactive ones).
    pub norms: Vec<f64>,
    /// The tasks with a non-zero gradient (`‖g_i‖²` a normal positive number), in order.
    pub active: Vec<usize>,
    /// `C` on `active` (`k × k`, unit diagonal).
    pub cos: Mat,
}

impl Cosines {
    pub fn of(m: &Mat) -> Self {
        let norms: Vec<f64> = (0..m.n())
            .map(|i| if m[(i, i)] >= f64::MIN_POSITIVE && m[(i, i)].is_finite() { m[(i, i)].sqrt() } else { 0.0 })
            .collect();
        let active: Vec<usize> = (0..m.n()).filter(|&i| norms[i] > 0.0).collect();
        let cos = Mat::from_fn(active.len(), |r, c| {
            let (i, j) = (active[r], active[c]);
            if i == j {
                1.0
            } else {
                m[(i, j)] / norms[i] / norms[j]
            }
        });
        Self { norms, active, cos }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{
        aligned::aligned_weights,
        cagrad::cagrad_correction,
        nash::{nash_weights, NASH_RIDGE},
        upgrad::upgrad_weights,
    };

    fn gram(rows: &[Vec<f64>]) -> Mat {
        Mat::from_fn(rows.len(), |i, j| dot(&rows[i], &rows[j]))
    }

    fn assert_simplex(w: &[f64]) {
        assert!(w.iter().all(|v| v.is_finite() && *v >= -1e-12), "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn linear_solve_and_singular() {
        let a = Mat::from_rows(2, vec![2.0, 1.0, 1.0, 3.0]);
        let x = solve_linear(&a, &[3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-14 && (x[1] - 1.4).abs() < 1e-14);
        assert!(solve_linear(&Mat::from_rows(2, vec![1.0, 1.0, 1.0, 1.0]), &[1.0, 1.0]).is_none());
        let ls = lstsq_min_norm(&Mat::from_rows(2, vec![1.0, 1.0, 0.0, 0.0]), &[1.0, 0.0]);
        assert!((ls[0] - 0.5).abs() < 1e-12 && (ls[1] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn jacobi_reconstructs() {
        let m = gram(&[vec![1.0, 2.0, 0.5, 0.0], vec![-1.0, 0.3, 2.0, 1.0], vec![0.2, 0.2, -0.1, 3.0]]);
        let (lam, v) = sym_eigen(&m);
        assert!(lam.windows(2).all(|p| p[0] >= p[1]));
        let rec = Mat::from_fn(3, |i, j| (0..3).map(|k| v[(i, k)] * lam[k] * v[(j, k)]).sum());
        for (a, b) in rec.values().iter().zip(m.values()) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let vtv = v.transpose().matmul(&v);
        for i in 0..3 {
            for j in 0..3 {
                assert!((vtv[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn min_norm_matches_two_task_closed_form_and_enumeration() {
        let rows = [vec![1.0, 0.2, -0.3], vec![-0.5, 1.0, 0.1], vec![0.3, -0.8, 0.9], vec![0.1, 0.1, 0.1]];
        let m = gram(&rows);
        let w = min_norm_simplex(&m);
        assert_simplex(&w);
        // KKT: (Mw)_i ≥ wᵀMw, equality where w_i > 0.
        let mw = m.mul_vec(&w);
        let norm2 = dot(&w, &mw);
        for i in 0..4 {
            assert!(mw[i] >= norm2 - 1e-10);
            if w[i] > 1e-9 {
                assert!((mw[i] - norm2).abs() < 1e-10);
            }
        }
        // The general QP agrees with the T = 2 closed form.
        let m2 = gram(&rows[..2]);
        let closed = min_norm_simplex(&m2);
        let qp = clean_simplex(qp_nonneg(&m2, &[0.0, 0.0], Some(1.0)));
        assert!((closed[0] - qp[0]).abs() < 1e-9, "{closed:?} vs {qp:?}");
    }

    #[test]
    fn degenerate_inputs_stay_finite() {
        let zero = Mat::zeros(3);
        let par = gram(&[vec![1.0, 2.0], vec![2.0, 4.0], vec![-1.0, -2.0]]);
        let same = gram(&[vec![1.0, 0.0], vec![1.0, 0.0], vec![1.0, 0.0]]);
        for m in [&zero, &par, &same] {
            assert_simplex(&min_norm_simplex(m));
            assert!(upgrad_weights(&m.with_ridge(1e-4)).iter().all(|v| v.is_finite()));
            assert!(nash_weights(m, None).iter().all(|v| v.is_finite() && *v > 0.0));
            assert!(aligned_weights(m).iter().all(|v| v.is_finite()));
            assert!(cagrad_correction(m, 0.5).iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }

    #[test]
    fn nash_solves_the_bargaining_system() {
        let m = gram(&[vec![1.0, 0.2, -0.3], vec![-0.5, 1.0, 0.1], vec![0.3, -0.8, 0.9]]);
        let a = nash_weights(&m, None);
        let mt = Mat::from_fn(3, |i, j| m[(i, j)] * if i == j { 1.0 + NASH_RIDGE } else { 1.0 } / m.frobenius());
        let ma = mt.mul_vec(&a);
        for i in 0..3 {
            assert!((ma[i] * a[i] - 1.0).abs() < 1e-10, "{ma:?} {a:?}");
        }
        let warm = nash_weights(&m, Some(&[0.3, 3.0, 1.0]));
        for i in 0..3 {
            assert!((warm[i] - a[i]).abs() < 1e-10);
        }
    }

    #[test]
    fn jacobi_keeps_the_small_eigenvalues_of_a_graded_matrix() {
        // M = D C D with norms 1e6, 1, 1e-3: every entry of V Λ Vᵀ must match relative to its
        // own row and column, and λ_min to the product of the others (det M = det C ∏ d²).
        let rows = [vec![1e6, 2e5, -3e5], vec![0.3, -0.8, 0.6], vec![-4e-4, 6e-4, 7e-4]];
        let m = gram(&rows);
        let (lam, v) = sym_eigen(&m);
        for i in 0..3 {
            for j in 0..3 {
                let rec: f64 = (0..3).map(|k| v[(i, k)] * lam[k] * v[(j, k)]).sum();
                assert!((rec - m[(i, j)]).abs() <= 1e-13 * (m[(i, i)] * m[(j, j)]).sqrt(), "({i},{j})");
            }
        }
        // det M by the triple product of the rows (no cancellation against the big entries).
        let (a, b, c) = (&rows[0], &rows[1], &rows[2]);
        let triple = a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0]);
        let want = triple * triple / (lam[0] * lam[1]);
        assert!((lam[2] - want).abs() <= 1e-9 * want, "{} vs {want}", lam[2]);
    }

    #[test]
    fn qp_handles_a_graded_hessian() {
        // Rows 1e6 apart: the min-norm point lies on the small rows and must satisfy its KKT
        // conditions relative to them (Q_ii spans 1e12: the unscaled tolerances could not).
        // (A case of tests/balance_optimum.py where the unscaled active set stopped on a wrong
        // face: cosine 0.79 to the optimum.)
        let rows = [
            vec![-1207871.314751, -137724.098283, -183757.572193, -259854.192064],
            vec![-0.160704, 0.173152, 0.1035, -0.135695],
            vec![0.390706, -0.027381, 0.121264, 0.011574],
        ];
        let m = gram(&rows);
        let w = min_norm_simplex(&m);
        assert_simplex(&w);
        let d: Vec<f64> = (0..4).map(|k| (0..3).map(|i| w[i] * rows[i][k]).sum()).collect();
        let d2 = dot(&d, &d);
        for (i, r) in rows.iter().enumerate() {
            let gd = dot(r, &d);
            let tol = 1e-9 * dot(r, r).sqrt() * d2.sqrt();
            assert!(gd >= d2 - tol, "row {i}: {gd} < {d2}");
            if w[i] * dot(r, r).sqrt() > 1e-9 * d2.sqrt() {
                assert!((gd - d2).abs() <= tol, "support {i}: {gd} vs {d2}");
            }
        }
    }

    #[test]
    fn cagrad_finds_the_optimum_with_the_origin_inside_the_hull() {
        // Three gradients around the origin (a reported failure case): g_w ≠ 0 at the optimum.
        let rows = [vec![-1.48987, 0.49396], vec![0.58870, -0.89139], vec![-0.52097, 0.89135]];
        let m = gram(&rows);
        let b = [1.0 / 3.0; 3];
        let c = 0.5 * m.quad(&b, &b).sqrt();
        let y = cagrad_correction(&m, c);
        // y = c w/‖g_w‖ with w on the simplex and ‖g_y‖ = c.
        let s: f64 = y.iter().sum();
        let w: Vec<f64> = y.iter().map(|v| v / s).collect();
        assert_simplex(&w);
        assert!((m.quad(&y, &y).sqrt() - c).abs() < 1e-12 * c);
        // Optimality of F(w) = wᵀMb + c‖g_w‖ on the simplex: (Mb + c Mw/‖g_w‖)_i ≥ ν, with
        // equality on the support.
        let norm = m.quad(&w, &w).sqrt();
        let mb = m.mul_vec(&b);
        let grad: Vec<f64> = m.mul_vec(&w).iter().zip(&mb).map(|(mw, mb)| mb + c * mw / norm).collect();
        let nu = (0..3).filter(|&i| w[i] > 1e-9).map(|i| grad[i]).fold(f64::INFINITY, f64::min);
        for i in 0..3 {
            assert!(grad[i] >= nu - 1e-10, "{grad:?}");
            if w[i] > 1e-9 {
                assert!((grad[i] - nu).abs() < 1e-10, "{grad:?}");
            }
        }
    }

    #[test]
    fn upgrad_qp_is_feasible_and_optimal() {
        let m = gram(&[vec![1.0, 0.0], vec![-0.9, 0.5], vec![0.0, 1.0]]);
        let mt = m.scaled(1.0 / m.trace()).with_ridge(1e-4);
        for i in 0..3 {
            let mut u = vec![0.0; 3];
            u[i] = 1.0 / 3.0;
            let x = qp_nonneg(&mt, &mt.mul_vec(&u), None);
            let v: Vec<f64> = (0..3).map(|k| u[k] + x[k]).collect();
            // KKT: Mv ≥ 0 with complementarity on x.
            let mv = mt.mul_vec(&v);
            for k in 0..3 {
                assert!(x[k] >= 0.0 && mv[k] >= -1e-12, "{v:?} {mv:?}");
                assert!((x[k] * mv[k]).abs() < 1e-12);
            }
        }
    }
}
