//! Small dense solvers for the gradient methods, in plain `f64` on the host.
//!
//! Every gradient method reduces the T per-task gradients to their Gram matrix `M = G Gᵀ`
//! (T ≤ ~16), so these problems are tiny and are solved exactly (active-set QP, Newton,
//! Jacobi) instead of by a few iterations of a first-order method: the weights are then
//! reproducible to many digits, which the reference test relies on. Every routine is
//! deterministic and returns finite numbers for zero, parallel and opposite gradients.

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

fn uniform(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// A Gram matrix whose trace (or norm) is below this is all zeros: there is nothing to balance.
const TINY: f64 = 1e-300;

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
fn clean_simplex(mut w: Vec<f64>) -> Vec<f64> {
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

/// UPGrad's projection of each preference row `e_i/T` onto the dual cone:
/// `v⁽ⁱ⁾ = argmin vᵀ M v s.t. v ≥ e_i/T`, returned as the sum `w = Σ_i v⁽ⁱ⁾`.
/// `m` should already be normalized and regularised.
pub fn upgrad_weights(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let mut w = vec![0.0; n];
    for i in 0..n {
        // v = u + x with x ≥ 0:  min xᵀMx + 2 (Mu)ᵀx.
        let mut u = vec![0.0; n];
        u[i] = 1.0 / n as f64;
        let x = qp_nonneg(m, &m.mul_vec(&u), None);
        for k in 0..n {
            w[k] += u[k] + x[k];
        }
    }
    w
}

/// The smallest norm of a combination `g_w = Σ w_i g_i` the Gram matrix resolves, relative
/// to `Σ w_i ‖g_i‖`: `‖g_w‖² = wᵀMw` is a sum of terms up to `(Σ w_i ‖g_i‖)²` computed
/// with relative rounding ε, so a norm below ~`√ε·Σ w_i ‖g_i‖` (1.5e-8) is noise; at 1e-6
/// it carries about four digits.
pub const RESOLUTION: f64 = 1e-6;

/// CAGrad's direction as `d = g0 + Gᵀy` (`g0 = Gᵀ1/T` the mean gradient, `c = α‖g0‖`):
/// returns `y`, the coefficients of the correction, which has norm `≤ c`.
///
/// The paper's problem is `max_d min_i g_i·d` over the ball `‖d − g0‖ ≤ c`; its dual is
/// `w = argmin_{w ∈ Δ} wᵀ M b + c √(wᵀ M w)` (`b = 1/T`) and `d = g0 + c g_w/‖g_w‖` with
/// `g_w = Gᵀw`, so `y = c w/‖g_w‖`. The dual is solved through
/// `c‖x‖ = min_{t>0} (c/2)(‖x‖²/t + t)`: for fixed `t` it is a simplex QP (solved exactly)
/// whose `g_{w(t)}` is the point of the convex hull `H` of the gradients nearest to
/// `−(t/c) g0`, and the optimal `t` is the root of `φ(t) = ‖g_{w(t)}‖ − t` (decreasing, the
/// derivative of a convex function of `t`), found by bisection in `log t`.
///
/// Where `‖g_{w(t)}‖` is too small for the Gram matrix to resolve (below [`RESOLUTION`]) the
/// hull reaches the origin, and there `g_{w(t)} = (t/c) Π` exactly for small `t`, with
/// `Π = Π_K(−g0)` the projection onto the cone `K` spanned by the gradients: one
/// non-negative least-squares problem with O(1) terms, exact whatever the scale. So the sign
/// of `φ` there is that of `‖Π‖ − c`, and if the root lies in that range the correction is
/// `c Π/‖Π‖`. If there is no root (`‖Π‖ ≤ c`: `g_w = 0` at the optimum, whose direction is
/// undefined), every point of the ball that conflicts with no task is optimal, and the one
/// nearest the mean is `g0 + Π` (the dual cone's projection of `g0`): the mean itself when it
/// conflicts with no task.
///
/// (Deciding at a tiny `t` instead let the QP's linear term fall below rounding, so the mean
/// was returned exactly when the origin lies inside the hull, where the optimum is elsewhere.)
pub fn cagrad_correction(m: &Mat, c: f64) -> Vec<f64> {
    let n = m.n();
    let norms: Vec<f64> = (0..n).map(|i| m[(i, i)].max(0.0).sqrt()).collect();
    let max_norm = norms.iter().copied().fold(0.0, f64::max);
    let smallest = norms.iter().copied().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min);
    if n == 0 || max_norm <= 0.0 || c.is_nan() || c <= 0.0 {
        return vec![0.0; n];
    }
    let lin = m.mul_vec(&uniform(n));
    // Π_K(−g0) = Gᵀw with w = argmin_{w ≥ 0} ½‖Gᵀw + g0‖² = ½wᵀMw + (Mb)ᵀw + const.
    let cone = qp_nonneg(m, &lin, None);
    let cone_norm = m.quad(&cone, &cone).max(0.0).sqrt();
    let q = m.scaled(c);
    // min (c/2t) wᵀMw + linᵀw  ⇔  min ½ wᵀ(cM)w + t·linᵀw
    let solve = |t: f64| clean_simplex(qp_nonneg(&q, &lin.iter().map(|v| v * t).collect::<Vec<_>>(), Some(1.0)));
    // ‖g_w‖ when it is resolved, `None` when it is not.
    let resolved_norm = |w: &[f64]| {
        let norm = m.quad(w, w).max(0.0).sqrt();
        let terms: f64 = w.iter().zip(&norms).map(|(w, n)| w.abs() * n).sum();
        (norm > RESOLUTION * terms).then_some(norm)
    };
    let positive = |t: f64| resolved_norm(&solve(t)).map_or(cone_norm > c, |norm| norm > t);
    // Below the resolution, along the cone: the correction c Π/‖Π‖, or Π when ‖Π‖ ≤ c.
    let along_cone = || cone.iter().map(|v| v * (c / cone_norm).min(1.0)).collect::<Vec<_>>();
    // A resolved g_w has ‖g_w‖ > RESOLUTION·Σ w_i‖g_i‖ ≥ RESOLUTION·min‖g_i‖, so a root below
    // that lies in the unresolved range. φ(max‖g_i‖) ≤ 0 since ‖g_w‖ ≤ max‖g_i‖.
    let (mut lo, mut hi) = ((RESOLUTION * smallest).ln(), max_norm.ln());
    if !positive(lo.exp()) {
        return along_cone();
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if positive(mid.exp()) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let w = solve((0.5 * (lo + hi)).exp());
    match resolved_norm(&w) {
        Some(norm) => w.iter().map(|v| v * c / norm).collect(),
        None => along_cone(),
    }
}

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

/// Nash-MTL's ridge, relative to each task's squared gradient norm: it keeps the problem
/// bounded when gradients are parallel or opposite (weights then stay within ~1/√ridge =
/// 1000 of their scale) and, being relative, leaves the method invariant to each task's scale.
pub const NASH_RIDGE: f64 = 1e-6;

/// Nash-MTL's bargaining weights: the `α > 0` with `(M̃ α)_i = 1/α_i`, where
/// `M̃ = (M + ridge·diag(M)) / ‖M‖_F`.
///
/// The solution scales as `α_i ∝ 1/‖g_i‖` when a task's gradient is rescaled (the direction
/// `Σ α_i g_i` does not change), so it is computed on the cosine matrix: `α_i = √‖M‖_F β_i/‖g_i‖`
/// with `((C + ridge·I) β)_i = 1/β_i`, whose terms are O(1) whatever the norms. That system is
/// the stationarity condition of the strictly convex, self-concordant
/// `f(β) = ½ βᵀ(C + ridge·I)β − Σ log β_i`, so damped Newton (step `1/(1+λ)` while the Newton
/// decrement `λ` is large, full steps after) converges globally and quadratically and never
/// leaves `β > 0`. `init` (e.g. last step's α) only changes the speed.
///
/// A task with a zero gradient has no stake in the shared direction (its equation has no
/// solution): it gets `α_i = 0` and the others bargain without it. All ones for an all-zero `M`.
pub fn nash_weights(m: &Mat, init: Option<&[f64]>) -> Vec<f64> {
    let n = m.n();
    let fro = m.frobenius();
    let Cosines { norms, active, cos } = Cosines::of(m);
    if active.is_empty() || !(fro > TINY && fro.is_finite()) {
        return vec![1.0; n];
    }
    let k = active.len();
    let scale = fro.sqrt();
    let ct = cos.with_ridge(NASH_RIDGE);
    let warm: Option<Vec<f64>> = init
        .filter(|v| v.len() == n)
        .map(|v| active.iter().map(|&i| v[i] * norms[i] / scale).collect::<Vec<_>>())
        .filter(|b| b.iter().all(|x| x.is_finite() && *x > 0.0));
    let mut b: Vec<f64> = warm.unwrap_or_else(|| {
        // Best multiple of the ones vector: t² = k / 1ᵀC̃1.
        let s = ct.quad(&vec![1.0; k], &vec![1.0; k]).max(f64::MIN_POSITIVE);
        vec![(k as f64 / s).sqrt(); k]
    });
    for _ in 0..200 {
        let cb = ct.mul_vec(&b);
        let grad: Vec<f64> = (0..k).map(|i| cb[i] - 1.0 / b[i]).collect();
        let hess = Mat::from_fn(k, |i, j| ct[(i, j)] + if i == j { 1.0 / (b[i] * b[i]) } else { 0.0 });
        let Some(step) = solve_linear(&hess, &grad.iter().map(|g| -g).collect::<Vec<_>>()) else {
            break;
        };
        let decrement = hess.quad(&step, &step).max(0.0).sqrt();
        let tau = if decrement > 0.25 { 1.0 / (1.0 + decrement) } else { 1.0 };
        let next: Vec<f64> = (0..k).map(|i| b[i] + tau * step[i]).collect();
        if next.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            break;
        }
        b = next;
        if decrement < 1e-13 {
            break;
        }
    }
    let mut alpha = vec![0.0; n];
    for (r, &i) in active.iter().enumerate() {
        alpha[i] = scale * b[r] / norms[i];
    }
    alpha
}

/// Aligned-MTL's balance weights `α = B 1` with `B = √λ_min V Λ^{-1/2} Vᵀ` over the
/// eigenpairs `(λ, V)` of `M` on the span of the gradients. All ones for an all-zero `M`.
///
/// Dependent gradients make `M` singular and its zero eigenvalues must be left out (`Λ^{-1/2}`
/// would amplify rounding). The reference code drops eigenvalues below `λ_max · T · ε_f32`,
/// which also drops a task whose gradient is ~2000× smaller than another's (its eigenvalue is
/// ~4e-7 of the largest), so the step then ignores or opposes that task. Here dependence is
/// decided where it is scale-free: on the cosine matrix `C`, with the reference's threshold
/// (`λ ≤ λ_max(C) · T · ε_f32`, the precision of f32 gradients' directions, whatever their
/// norms). Each such eigenvector `w` of `C` is the dependence `α = w / ‖g‖` of `M` (zero
/// gradients count too); `M` is projected off them and the rest of its spectrum is kept, however
/// small: a graded matrix's small eigenvalues are accurate ([`sym_eigen`]).
pub fn aligned_weights(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let Cosines { norms, active, cos } = Cosines::of(m);
    if active.is_empty() {
        return vec![1.0; n];
    }
    let (cl, cv) = sym_eigen(&cos);
    let cut = n as f64 * f32::EPSILON as f64 * cl[0];
    let mut dependences: Vec<Vec<f64>> =
        (0..n).filter(|&i| norms[i] == 0.0).map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect();
    for k in (0..active.len()).filter(|&k| cl[k] <= cut) {
        let mut z = vec![0.0; n];
        for (r, &i) in active.iter().enumerate() {
            z[i] = cv[(r, k)] / norms[i];
        }
        dependences.push(z);
    }
    // P = I − ZZᵀ with Z an orthonormal basis of the dependences (Gram–Schmidt, twice).
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for mut z in dependences {
        for _ in 0..2 {
            for b in &basis {
                let p = dot(&z, b);
                z.iter_mut().zip(b).for_each(|(zi, bi)| *zi -= p * bi);
            }
        }
        let norm = dot(&z, &z).sqrt();
        if norm > 1e-8 {
            basis.push(z.iter().map(|v| v / norm).collect());
        }
    }
    let proj =
        Mat::from_fn(n, |i, j| (if i == j { 1.0 } else { 0.0 }) - basis.iter().map(|b| b[i] * b[j]).sum::<f64>());
    let on_span = if basis.is_empty() { m.clone() } else { proj.matmul(m).matmul(&proj) };
    let (lam, v) = sym_eigen(&on_span);
    // The eigenvectors of P M P lie either in the span (‖P v‖ = 1) or in the dependences (0).
    let kept: Vec<usize> = (0..n)
        .filter(|&k| {
            lam[k] > 0.0 && {
                let col: Vec<f64> = (0..n).map(|i| v[(i, k)]).collect();
                proj.quad(&col, &col) > 0.5
            }
        })
        .collect();
    let lmin = kept.iter().map(|&k| lam[k]).fold(f64::INFINITY, f64::min);
    let mut alpha = vec![0.0; n];
    for &k in &kept {
        // B 1 = √λ_min Σ_k v_k (v_kᵀ 1) / √λ_k
        let proj_one: f64 = (0..n).map(|i| v[(i, k)]).sum();
        let f = (lmin / lam[k]).sqrt() * proj_one;
        for (i, a) in alpha.iter_mut().enumerate() {
            *a += f * v[(i, k)];
        }
    }
    alpha
}

#[cfg(test)]
mod tests {
    use super::*;

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
