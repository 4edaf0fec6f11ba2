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
pub fn sym_eigen(m: &Mat) -> (Vec<f64>, Mat) {
    let n = m.n();
    let mut a = m.clone();
    let mut v = Mat::identity(n);
    let total = m.frobenius();
    if total == 0.0 {
        return (vec![0.0; n], v);
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[(i, j)] * a[(i, j)])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[(p, q)];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[(q, q)] - a[(p, p)]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
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
                for k in 0..n {
                    let vkp = v[(k, p)];
                    let vkq = v[(k, q)];
                    v[(k, p)] = c * vkp - s * vkq;
                    v[(k, q)] = s * vkp + c * vkq;
                }
            }
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
/// `1e-12 · tr(Q)/n`, which picks one of the optimal points without moving the optimum.
pub fn qp_nonneg(q: &Mat, c: &[f64], sum_to: Option<f64>) -> Vec<f64> {
    let n = q.n();
    active_set(q, c, sum_to)
        .or_else(|| {
            let ridge = 1e-12 * (q.trace() / n as f64).max(f64::MIN_POSITIVE);
            active_set(&q.with_ridge(ridge), c, sum_to)
        })
        .unwrap_or_else(|| match sum_to {
            Some(s) => vec![s / n as f64; n],
            None => vec![0.0; n],
        })
}

/// The active-set iteration of [`qp_nonneg`]; `None` on a singular KKT system (or, never
/// seen, when the iteration cap is reached).
fn active_set(q: &Mat, c: &[f64], sum_to: Option<f64>) -> Option<Vec<f64>> {
    let n = q.n();
    if n == 0 {
        return Some(Vec::new());
    }
    let scale = q.max_abs().max(c.iter().fold(0.0, |m: f64, v| m.max(v.abs())));
    let tol = 1e-13 * scale.max(f64::MIN_POSITIVE);
    // Feasible start: the barycentre of the simplex (all free), or the origin (all fixed).
    let (mut x, mut free) = match sum_to {
        Some(s) => (vec![s / n as f64; n], vec![true; n]),
        None => (vec![0.0; n], vec![false; n]),
    };
    for _ in 0..(50 * n + 100) {
        let idx: Vec<usize> = (0..n).filter(|&i| free[i]).collect();
        let (xf, nu) = face_minimiser(q, c, &idx, sum_to)?;
        if xf.iter().all(|&v| v >= 0.0) {
            for (k, &i) in idx.iter().enumerate() {
                x[i] = xf[k];
            }
            // Multipliers of the bounds x_j ≥ 0 that are held fixed.
            let grad = q.mul_vec(&x);
            let worst =
                (0..n).filter(|&j| !free[j]).map(|j| (j, grad[j] + c[j] - nu)).min_by(|a, b| a.1.total_cmp(&b.1));
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
fn face_minimiser(q: &Mat, c: &[f64], idx: &[usize], sum_to: Option<f64>) -> Option<(Vec<f64>, f64)> {
    let k = idx.len();
    match sum_to {
        None => {
            let x = solve_linear(&q.sub(idx), &idx.iter().map(|&i| -c[i]).collect::<Vec<_>>())?;
            Some((x, 0.0))
        }
        Some(s) => {
            if k == 0 {
                return None;
            }
            // [Q_FF 1; 1ᵀ 0] [x; -ν] = [-c_F; s]
            let mut kkt = Mat::zeros(k + 1);
            for a in 0..k {
                for b in 0..k {
                    kkt[(a, b)] = q[(idx[a], idx[b])];
                }
                kkt[(a, k)] = 1.0;
                kkt[(k, a)] = 1.0;
            }
            let mut rhs: Vec<f64> = idx.iter().map(|&i| -c[i]).collect();
            rhs.push(s);
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

/// CAGrad's inner problem: `argmin_{w ∈ Δ} wᵀ M b + c √(wᵀ M w)` with `b = 1/T`.
///
/// Uses `c‖x‖ = min_{t>0} (c/2)(‖x‖²/t + t)`: for fixed `t` the problem in `w` is a simplex
/// QP (solved exactly), and the optimal `t` is the root of `t − ‖g_{w(t)}‖`, which is
/// monotone (the derivative of a convex function of `t`); it is found by bisection in
/// `log t` to machine precision. Returns `None` when the optimum is at `g_w = 0` (then the
/// direction of `g_w` is undefined and CAGrad reduces to the mean gradient).
pub fn cagrad_weights(m: &Mat, c: f64) -> Option<Vec<f64>> {
    let n = m.n();
    let max_norm = (0..n).map(|i| m[(i, i)].max(0.0).sqrt()).fold(0.0, f64::max);
    if n == 0 || max_norm <= 0.0 || c <= 0.0 {
        return None;
    }
    let lin = m.mul_vec(&uniform(n));
    let solve = |t: f64| -> Vec<f64> {
        // min (c/2t) wᵀMw + linᵀw  ⇔  min ½ wᵀ(cM)w + t·linᵀw
        let q = m.scaled(c);
        let lt: Vec<f64> = lin.iter().map(|v| v * t).collect();
        clean_simplex(qp_nonneg(&q, &lt, Some(1.0)))
    };
    let norm_of = |w: &[f64]| m.quad(w, w).max(0.0).sqrt();
    let (mut lo, mut hi) = ((1e-12 * max_norm).ln(), max_norm.ln() + 1e-9);
    if norm_of(&solve(lo.exp())) <= lo.exp() {
        return None;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if norm_of(&solve(mid.exp())) > mid.exp() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(solve((0.5 * (lo + hi)).exp()))
}

/// Relative ridge added to Nash-MTL's normalized Gram matrix: it keeps the problem bounded
/// when gradients are parallel, opposite or zero (weights then stay below ~1/√ridge = 1000).
pub const NASH_RIDGE: f64 = 1e-6;

/// Nash-MTL's bargaining weights: the `α > 0` with `(M̃ α)_i = 1/α_i`, `M̃ = M/‖M‖_F + ridge·I`.
///
/// That system is the stationarity condition of the strictly convex, self-concordant
/// `f(α) = ½ αᵀM̃α − Σ log α_i`, so damped Newton (step `1/(1+λ)` while the Newton decrement
/// `λ` is large, full steps after) converges globally and quadratically and never leaves
/// `α > 0`. `init` (e.g. last step's α) only changes the speed. All ones for an all-zero `M`.
pub fn nash_weights(m: &Mat, init: Option<&[f64]>) -> Vec<f64> {
    let n = m.n();
    let fro = m.frobenius();
    if n == 0 || fro <= TINY {
        return vec![1.0; n];
    }
    let mt = m.scaled(1.0 / fro).with_ridge(NASH_RIDGE);
    let mut a: Vec<f64> = match init {
        Some(v) if v.len() == n && v.iter().all(|x| x.is_finite() && *x > 0.0) => v.to_vec(),
        _ => {
            // Best multiple of the ones vector: t² = T / 1ᵀM̃1.
            let s = mt.quad(&vec![1.0; n], &vec![1.0; n]).max(f64::MIN_POSITIVE);
            vec![(n as f64 / s).sqrt(); n]
        }
    };
    for _ in 0..200 {
        let ma = mt.mul_vec(&a);
        let grad: Vec<f64> = (0..n).map(|i| ma[i] - 1.0 / a[i]).collect();
        let hess = Mat::from_fn(n, |i, j| mt[(i, j)] + if i == j { 1.0 / (a[i] * a[i]) } else { 0.0 });
        let Some(step) = solve_linear(&hess, &grad.iter().map(|g| -g).collect::<Vec<_>>()) else {
            break;
        };
        let decrement = hess.quad(&step, &step).max(0.0).sqrt();
        let tau = if decrement > 0.25 { 1.0 / (1.0 + decrement) } else { 1.0 };
        let next: Vec<f64> = (0..n).map(|i| a[i] + tau * step[i]).collect();
        if next.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            break;
        }
        a = next;
        if decrement < 1e-13 {
            break;
        }
    }
    a
}

/// Aligned-MTL's balance weights `α = B 1` with `B = √λ_min V Λ^{-1/2} Vᵀ`, over the
/// eigenpairs of `M` above `λ_max · T · ε_f32` (the threshold of the reference code).
/// All ones for an all-zero `M`.
pub fn aligned_weights(m: &Mat) -> Vec<f64> {
    let n = m.n();
    let (lam, v) = sym_eigen(m);
    let lmax = lam.first().copied().unwrap_or(0.0);
    if lmax <= TINY {
        return vec![1.0; n];
    }
    let tol = lmax * n as f64 * f32::EPSILON as f64;
    let kept: Vec<usize> = (0..n).filter(|&k| lam[k] > tol).collect();
    let lmin = kept.iter().map(|&k| lam[k]).fold(f64::INFINITY, f64::min);
    let mut alpha = vec![0.0; n];
    for &k in &kept {
        // B 1 = √λ_min Σ_k v_k (v_kᵀ 1) / √λ_k
        let proj: f64 = (0..n).map(|i| v[(i, k)]).sum();
        let f = (lmin / lam[k]).sqrt() * proj;
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
            if let Some(w) = cagrad_weights(m, 0.5) {
                assert_simplex(&w);
            }
        }
    }

    #[test]
    fn nash_solves_the_bargaining_system() {
        let m = gram(&[vec![1.0, 0.2, -0.3], vec![-0.5, 1.0, 0.1], vec![0.3, -0.8, 0.9]]);
        let a = nash_weights(&m, None);
        let mt = m.scaled(1.0 / m.frobenius()).with_ridge(NASH_RIDGE);
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
