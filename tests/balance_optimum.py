"""Independent optimum of every gradient-balancing method that is a convex program.

tests/balance_reference.py re-implements our reading of each method with numpy, so it checks
that the Rust code matches that reading. This script checks the reading itself: it states each
method's problem as the paper does and hands it to a general-purpose solver (scipy's SLSQP and
trust-constr), on many random Jacobians including the hard shapes: more tasks than parameters,
near-duplicate and identical rows, rank-deficient Jacobians, rows 1e6 apart in scale, and
[a, b, -k(a+b)]. It prints JSON that tests/balance_reference.rs compares with the Rust solvers
(cosine of the directions).

Formulations, deliberately unlike the Rust solvers (which all work on the Gram matrix):
- MGDA: the primal of the min-norm problem, over the direction d in parameter space:
  max_d min_i g_i.d - |d|^2 / 2 (its maximiser is the min-norm point of the convex hull).
- CAGrad: the paper's primal, max_d min_i g_i.d subject to |d - g0| <= c (Rust: the dual in w).
- UPGrad: each preference g_i / T projected onto the dual cone {x : G~ x >= 0} in the space of
  the ridge-augmented gradients G~ = [G / sqrt(tr M), sqrt(eps) I] (Rust: T dual QPs in v).
- Nash-MTL: minimise a'Ma/2 - sum(log a) over a > 0 with trust-constr, polished by a root
  finder (MINPACK's hybrd) on the stationarity equations (Rust: damped Newton).
- IMTL-G: the linear system M a = k |g| (equal projections k on the unit gradients),
  sum(a) = 1, by least squares (Rust: the paper's (D U')^-1 system on unit gradients).

Every problem is posed on rescaled variables (each constraint divided by its gradient's norm,
directions measured in units of the smallest gradient or of |g0|); that is conditioning for the
solver, not part of the method, so rows 1e6 apart are solved as accurately as equal ones.

A direction is reported only where the optimum is unique: otherwise "direction" is null and
"why" says what makes it ambiguous. A zero optimum is reported as "zero": true.

Usage: python tests/balance_optimum.py [SEED ...] > optimum.json   (numpy and scipy)
"""
import json
import sys

import numpy as np
from scipy.optimize import Bounds, minimize, root

CAGRAD_ALPHA = 0.5
UPGRAD_REG = 1e-4  # upgrad::DEFAULT_REG_EPS
NASH_RIDGE = 1e-6  # solvers::NASH_RIDGE (relative to each task's squared norm)
# |d| below this fraction of the smallest gradient's norm is a zero direction.
ZERO = 1e-9
# CAGrad's optimum is unique exactly when its value is not 0; below this (relative) it is
# treated as 0.
CAGRAD_FLAT = 1e-7
# A matrix whose singular values fall below this fraction of the largest is singular: rows
# dependent to rounding (f64) have ~1e-16, near-duplicate rows 1e-5 apart ~1e-11.
SINGULAR = 1e-13


def jacobians(seed):
    """(name, G) for one seed: every family of the issue, several sizes each."""
    rng = np.random.default_rng(seed)
    out = []
    for t, p in [(2, 2), (2, 5), (3, 3), (3, 6), (4, 4), (4, 7), (5, 8), (6, 6)]:
        out.append((f"random {t}x{p}", rng.standard_normal((t, p))))
    for t, p in [(3, 2), (4, 2), (4, 3), (5, 3), (6, 4)]:
        out.append((f"more tasks than params {t}x{p}", rng.standard_normal((t, p))))
    for t, p in [(2, 4), (3, 5), (4, 5)]:
        g = rng.standard_normal((t, p))
        g[1] = g[0] + 1e-5 * rng.standard_normal(p)
        out.append((f"near-duplicate rows {t}x{p}", g))
    for t, p in [(2, 3), (3, 4), (4, 6)]:
        g = rng.standard_normal((t, p))
        g[0] *= 1e6
        out.append((f"one row 1e6 larger {t}x{p}", g))
        g = rng.standard_normal((t, p))
        g[-1] *= 1e-6
        out.append((f"one row 1e6 smaller {t}x{p}", g))
    for t, p, r in [(4, 5, 2), (5, 6, 3)]:
        out.append((f"rank {r} {t}x{p}", rng.standard_normal((t, r)) @ rng.standard_normal((r, p))))
    g = rng.standard_normal((3, 4))
    out.append(("identical rows 3x4", np.array([g[0], g[0], g[1]])))
    out.append(("norms 1e-3 to 1e3 4x5", np.logspace(-3, 3, 4)[:, None] * rng.standard_normal((4, 5))))
    for k in [0.5, 1.0, 2.0]:
        for p in [2, 4]:
            a, b = rng.standard_normal(p), rng.standard_normal(p)
            out.append((f"[a, b, -{k}(a+b)] 3x{p}", np.array([a, b, -k * (a + b)])))
    # The origin strictly inside the hull of three gradients in the plane (CAGrad's g_w != 0).
    angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
    out.append(("around the origin 3x2", rng.uniform(0.5, 2.0, (3, 1)) * np.c_[np.cos(angles), np.sin(angles)]))
    return out


def slsqp(what, fun, x0, jac, constraints, feasible=lambda x: x):
    """SLSQP to the last digits, checked: the answer must satisfy every constraint to 1e-12.
    SLSQP sometimes stops a hair outside the feasible set ("positive directional derivative
    in linesearch") or on an "incompatible" subproblem; restarted from the feasible point
    `feasible(x)` next to where it stopped, it then finishes. If it keeps stopping within
    1e-8 of the set, that feasible neighbour is the answer (its value is within ~1e-8)."""
    x, best = x0, None
    for _ in range(5):
        res = minimize(fun, x, jac=jac, constraints=constraints, method="SLSQP",
                       options={"ftol": 1e-16, "maxiter": 3000})
        worst = min(np.min(c["fun"](res.x)) for c in constraints)
        if res.status in (0, 8) and worst >= -1e-12:
            return res.x
        if res.status in (0, 8) and worst >= -1e-8 and (best is None or worst > best[1]):
            best = (res.x, worst)
        x = feasible(res.x)
    if best is not None:
        return feasible(best[0])
    raise RuntimeError(f"{what}: {res.message}, constraints violated by {-worst:.1e}")


def unit_rows(G):
    n = np.linalg.norm(G, axis=1)
    assert n.min() > 0, "every family has non-zero rows"
    return G / n[:, None], n


def mgda(G):
    """max_d min_i g_i.d - |d|^2/2, in units d = r e, s = r^2 sigma (r: the optimum's scale)."""
    U, n = unit_rows(G)
    T, P = G.shape

    def solve(r):
        # u_i.e >= sigma r / n_i  <=>  g_i.d >= s
        coef = r / n
        z = slsqp(
            "mgda",
            lambda z: 0.5 * z[:P] @ z[:P] - z[P],
            np.zeros(P + 1),
            lambda z: np.r_[z[:P], -1.0],
            [{"type": "ineq", "fun": lambda z: U @ z[:P] - coef * z[P], "jac": lambda z: np.c_[U, -coef]}],
            feasible=lambda z: np.r_[z[:P], (U @ z[:P] / coef).min() - 1e-9],
        )
        return r * z[:P]

    d = solve(n.min())
    if np.linalg.norm(d) <= ZERO * n.min():
        return {"direction": None, "zero": True}
    d = solve(np.linalg.norm(d))  # again with the optimum's own scale
    return {"direction": d.tolist(), "zero": False}


def cagrad(G, alpha=CAGRAD_ALPHA):
    """max_d min_i g_i.d s.t. |d - g0| <= alpha |g0|, with d = |g0| (g0^ + alpha v), |v| <= 1."""
    U, n = unit_rows(G)
    T, P = G.shape
    g0 = G.mean(0)
    r = np.linalg.norm(g0)
    if r <= ZERO * n.min() or alpha == 0:
        return {"direction": None, "zero": True} if r <= ZERO * n.min() else {"direction": g0.tolist(), "zero": False}
    h = g0 / r
    coef = n.min() / n  # g_i.d >= s  <=>  u_i.(h + alpha v) >= sigma n_min / n_i

    def start(z):
        # v inside the ball, sigma just below the worst task's value: strictly feasible.
        v = z[:P] / max(1.0, np.linalg.norm(z[:P]))
        return np.r_[v, (U @ (h + alpha * v) / coef).min() - 1e-6]

    z = slsqp(
        "cagrad",
        lambda z: -z[P],
        start(np.zeros(P + 1)),
        lambda z: np.r_[np.zeros(P), -1.0],
        [
            {"type": "ineq", "fun": lambda z: U @ (h + alpha * z[:P]) - coef * z[P],
             "jac": lambda z: np.c_[alpha * U, -coef]},
            {"type": "ineq", "fun": lambda z: 1.0 - z[:P] @ z[:P], "jac": lambda z: np.r_[-2 * z[:P], 0.0]},
        ],
        feasible=start,
    )
    # The optimal value sigma (in units of n_min |g0|) is 0 exactly when the maximiser is not
    # unique (a maximiser inside the ball is then one of many).
    if abs(z[P]) <= CAGRAD_FLAT:
        return {"direction": None, "why": f"optimal value {z[P]:.1e}: the maximiser may not be unique"}
    return {"direction": (r * (h + alpha * z[:P])).tolist(), "zero": False, "value": float(z[P])}


def upgrad(G, reg=UPGRAD_REG):
    """Each g~_i / T projected onto {x : G~ x >= 0}; d = sqrt(tr M) * (sum of projections)[:P]."""
    T, P = G.shape
    tr = np.trace(G @ G.T)
    Gt = np.c_[G / np.sqrt(tr), np.sqrt(reg) * np.eye(T)]
    A = Gt / np.linalg.norm(Gt, axis=1)[:, None]  # the same cone, rows of unit norm
    total = np.zeros(P + T)
    for i in range(T):
        target = Gt[i] / T
        s = np.linalg.norm(target)
        total += s * slsqp(
            "upgrad",
            lambda x: 0.5 * (x - target / s) @ (x - target / s),
            np.zeros(P + T),
            lambda x: x - target / s,
            [{"type": "ineq", "fun": lambda x: A @ x, "jac": lambda x: A}],
        )
    return {"direction": (np.sqrt(tr) * total[:P]).tolist(), "zero": False}


def nash(G, ridge=NASH_RIDGE):
    """argmin a'Ma/2 - sum(log a), M = (G G' + ridge diag(G G')) / |G G'|_F, over a > 0."""
    T = G.shape[0]
    M0 = G @ G.T
    M = (M0 + ridge * np.diag(np.diag(M0))) / np.linalg.norm(M0)
    # In the variables b_i = a_i |g_i| the problem is the same one on the cosine matrix, O(1).
    n = np.sqrt(np.diag(M))
    C = M / np.outer(n, n)
    res = minimize(
        lambda b: 0.5 * b @ C @ b - np.log(b).sum(),
        np.ones(T),
        jac=lambda b: C @ b - 1 / b,
        hess=lambda b: C + np.diag(1 / b**2),
        method="trust-constr",
        bounds=Bounds(np.full(T, 1e-12), np.full(T, np.inf)),
        options={"gtol": 1e-13, "xtol": 1e-15, "maxiter": 5000},
    )
    # trust-constr stops on its step size with the stationarity residual near 1e-6 when the
    # ridge makes the weights large (dependent gradients); polish with a root finder on the
    # stationarity equations C b = 1/b.
    polished = root(lambda b: C @ b - 1 / b, res.x, jac=lambda b: C + np.diag(1 / b**2), method="hybr")

    def residual(b):
        # |b_i (Cb)_i - 1| relative to the terms of the sum (Cb cancels when the ridge rules).
        return np.max(np.abs(b * (C @ b) - 1) / (b * (np.abs(C) @ b))) if b.min() > 0 else np.inf

    b = min((res.x, polished.x), key=residual)
    if not residual(b) <= 1e-13:
        raise RuntimeError(f"nash: {res.message}; relative residual {residual(b):.1e}")
    a = b / n
    return {"direction": (a @ G).tolist(), "zero": False}


def imtl(G):
    """[M, -|g|; 1', 0] [a; k] = [0; 1]: d.u_i = k for all i and sum(a) = 1."""
    T = G.shape[0]
    U, n = unit_rows(G)
    # Columns in units of each gradient (b = a |g|) and rows per unit gradient: O(1) entries.
    C = U @ U.T
    A = np.zeros((T + 1, T + 1))
    A[:T, :T] = C
    A[:T, T] = -1.0
    A[T, :T] = 1.0 / n * n.min()
    rhs = np.r_[np.zeros(T), n.min()]
    sol, _, _, sv = np.linalg.lstsq(A, rhs, rcond=None)
    b = sol[:T]
    d = b @ U
    if sv[-1] <= SINGULAR * sv[0]:
        # A singular system: unique d only if every null vector (db, dk) leaves b @ U alone.
        null = np.linalg.svd(A)[2][sv <= SINGULAR * sv[0]]
        if any(np.linalg.norm(v[:T] @ U) > 1e-8 * np.linalg.norm(v[:T]) for v in null):
            return {"direction": None, "why": "singular system with a family of directions"}
    if np.linalg.norm(d) <= ZERO * np.abs(b).sum():
        return {"direction": None, "zero": True}
    return {"direction": d.tolist(), "zero": False}


METHODS = {"mgda": mgda, "cagrad": cagrad, "upgrad": upgrad, "nash": nash, "imtl": imtl}


def main(seeds):
    cases = []
    for seed in seeds:
        for name, G in jacobians(seed):
            cases.append({"name": f"seed {seed}: {name}", "grads": G.tolist(),
                          "results": {m: f(G) for m, f in METHODS.items()}})
    json.dump({"cagrad_alpha": CAGRAD_ALPHA, "upgrad_reg": UPGRAD_REG, "zero": ZERO, "cases": cases}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0, 1, 2])
