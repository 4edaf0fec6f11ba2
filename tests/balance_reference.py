"""Independent numpy reference for the deterministic gradient-balancing methods.

Prints JSON: for a few fixed 3-task gradient matrices (a conflicting case, a near-parallel
case, a case with very different scales), the weights and direction of each method as
defined in their papers. tests/balance_reference.rs compares the Rust implementations
with it.

The algorithms here are deliberately different from the Rust ones: vector operations
instead of the Gram-matrix bookkeeping (PCGrad, GradVac), enumeration of every face / active
set with an exact KKT check instead of an active-set QP (MGDA, UPGrad, CAGrad), Newton on
log-weights instead of damped Newton on the barrier function (Nash-MTL), and numpy's LAPACK
eigh / inverse instead of Jacobi / elimination (Aligned-MTL, IMTL-G).

Usage: python tests/balance_reference.py > expected.json   (numpy only)
"""
import itertools
import json
import sys

import numpy as np

CAGRAD_ALPHA = 0.5
UPGRAD_REG = 1e-4
NASH_RIDGE = 1e-6  # solvers::NASH_RIDGE, relative to each task's squared norm
DBMTL_BETA = 0.9
DBMTL_EPS = 1e-8
GRADVAC_BETA = 0.5


def cases():
    rng = np.random.default_rng(20240611)
    base = rng.standard_normal((3, 6))
    conflicting = np.array(
        [
            [1.0, 0.5, -0.3, 0.2, 0.0, 0.7],
            [-0.8, 0.9, 0.4, -0.5, 0.3, -0.2],
            [0.3, -1.1, 0.6, 0.9, -0.4, 0.1],
        ]
    )
    # g1 and g2 at a cosine of about 0.9999, g3 conflicting with both.
    near_parallel = np.array(
        [base[0], base[0] + 0.01 * base[1], 0.5 * base[2] - 0.8 * base[0]]
    )
    scales = base * np.array([[10.0], [0.1], [1.0]])
    return [
        ("conflicting", conflicting, np.array([1.2, 0.7, 2.5])),
        ("near_parallel", near_parallel, np.array([0.3, 0.31, 1.0])),
        ("scales", scales, np.array([5.0, 0.05, 1.0])),
    ]


def result(weights, direction):
    return {"weights": list(map(float, weights)), "direction": list(map(float, direction))}


def mgda(G, losses, normalization):
    T = G.shape[0]
    norms = np.linalg.norm(G, axis=1)
    s = {"none": np.ones(T), "l2": norms, "loss": losses, "loss+l2": losses * norms}[normalization]
    s = np.where((s > 0) & np.isfinite(s), s, 1.0)
    Gn = G / s[:, None]
    M = Gn @ Gn.T
    best = None
    # Every face of the simplex: the affine minimiser on it, kept if it is a KKT point.
    for k in range(1, T + 1):
        for S in itertools.combinations(range(T), k):
            S = list(S)
            A = np.zeros((k + 1, k + 1))
            A[:k, :k] = M[np.ix_(S, S)]
            A[:k, k] = 1.0
            A[k, :k] = 1.0
            rhs = np.zeros(k + 1)
            rhs[k] = 1.0
            sol = np.linalg.lstsq(A, rhs, rcond=None)[0]
            a = np.zeros(T)
            a[S] = sol[:k]
            if a.min() < -1e-12:
                continue
            Ma = M @ a
            if Ma.min() < a @ Ma - 1e-10 * np.trace(M):
                continue
            if best is None or a @ Ma < best @ M @ best:
                best = a
    return result(best, best @ Gn)


def pcgrad(G, orders):
    out = []
    for i, order in enumerate(orders):
        g = G[i].copy()
        for j in order:
            d = g @ G[j]
            if d < 0:
                g = g - d / (G[j] @ G[j]) * G[j]
        out.append(g)
    out = np.array(out)
    # Weights: the coefficient of each original gradient in the sum (solve, G has full rank).
    w = np.linalg.lstsq(G.T, out.sum(0), rcond=None)[0]
    return result(w, out.sum(0))


def gradvac(G, orders, targets):
    targets = targets.copy()
    out = []
    for i, order in enumerate(orders):
        g = G[i].copy()
        for j in order:
            nj = np.linalg.norm(G[j])
            rho = np.clip(g @ G[j] / (np.linalg.norm(g) * nj), -1.0, 1.0)
            phi = min(targets[i, j], 1.0 - 1e-6)
            if rho < phi:
                g = g + G[j] * np.linalg.norm(g) * (
                    phi * np.sqrt(1 - rho**2) - rho * np.sqrt(1 - phi**2)
                ) / (nj * np.sqrt(1 - phi**2))
            targets[i, j] = (1 - GRADVAC_BETA) * targets[i, j] + GRADVAC_BETA * rho
        out.append(g)
    d = np.array(out).sum(0)
    return np.linalg.lstsq(G.T, d, rcond=None)[0], d, targets


def cagrad(G):
    T = G.shape[0]
    M = G @ G.T
    g0 = G.mean(0)
    c = CAGRAD_ALPHA * np.linalg.norm(g0)
    Mb = M @ np.full(T, 1.0 / T)

    def F(w):
        return w @ Mb + c * np.sqrt(max(w @ M @ w, 0.0))

    best, best_f = None, np.inf
    for k in range(1, T + 1):
        for S in itertools.combinations(range(T), k):
            S = list(S)
            cands = []
            if k == 1:
                w = np.zeros(T)
                w[S] = 1.0
                cands.append(w)
            else:
                # On the face: (Mb)_S + (c/s) (Mw)_S = nu 1, sum w = 1, and s = ||g_w||.
                def w_of(s):
                    A = np.zeros((k + 1, k + 1))
                    A[:k, :k] = (c / s) * M[np.ix_(S, S)]
                    A[:k, k] = -1.0
                    A[k, :k] = 1.0
                    rhs = np.concatenate([-Mb[S], [1.0]])
                    sol = np.linalg.solve(A, rhs)
                    w = np.zeros(T)
                    w[S] = sol[:k]
                    return w

                def phi(s):
                    w = w_of(s)
                    return np.sqrt(max(w @ M @ w, 0.0)) - s

                grid = np.geomspace(1e-9, 10.0, 400) * np.sqrt(np.max(np.diag(M)))
                vals = [phi(s) for s in grid]
                for a, b, fa, fb in zip(grid[:-1], grid[1:], vals[:-1], vals[1:]):
                    if fa == 0 or fa * fb < 0:
                        lo, hi = a, b
                        for _ in range(200):
                            mid = 0.5 * (lo + hi)
                            if phi(lo) * phi(mid) <= 0:
                                hi = mid
                            else:
                                lo = mid
                        cands.append(w_of(0.5 * (lo + hi)))
            for w in cands:
                if w.min() >= -1e-12 and F(w) < best_f:
                    best, best_f = np.clip(w, 0, None), F(w)
    gw = best @ G
    lam = c / np.linalg.norm(gw)
    coef = (np.full(T, 1.0 / T) + lam * best) / (1 + CAGRAD_ALPHA**2)
    return result(coef, coef @ G)


def imtl(G):
    U = G / np.linalg.norm(G, axis=1, keepdims=True)
    D = G[0:1] - G[1:]
    Ud = U[0:1] - U[1:]
    a = G[0] @ Ud.T @ np.linalg.inv(D @ Ud.T)
    alpha = np.concatenate([[1 - a.sum()], a])
    return result(alpha, alpha @ G)


def nash(G):
    T = G.shape[0]
    M = G @ G.T
    Mt = (M + NASH_RIDGE * np.diag(np.diag(M))) / np.linalg.norm(M)
    # Coordinate descent on f(a) = a'Mt a / 2 - sum(log a): each coordinate is minimised
    # exactly (the positive root of Mt_ii a^2 + b a - 1 = 0) ...
    a = np.ones(T)
    for _ in range(3000):
        for i in range(T):
            b = Mt[i] @ a - Mt[i, i] * a[i]
            a[i] = (-b + np.sqrt(b * b + 4 * Mt[i, i])) / (2 * Mt[i, i])
    # ... then Newton on the stationarity equations Mt a - 1/a = 0 for the last digits.
    for _ in range(50):
        r = Mt @ a - 1 / a
        step = np.linalg.solve(Mt + np.diag(1 / a**2), -r)
        t = 1.0
        while np.any(a + t * step <= 0) or np.linalg.norm(
            Mt @ (a + t * step) - 1 / (a + t * step)
        ) > np.linalg.norm(r):
            t /= 2
            if t < 1e-12:
                break
        if t < 1e-12:
            break
        a = a + t * step
    return result(a, a @ G)


def aligned(G):
    T = G.shape[0]
    M = G @ G.T
    lam, V = np.linalg.eigh(M)
    tol = lam.max() * T * np.finfo(np.float32).eps
    keep = lam > tol
    lam, V = lam[keep], V[:, keep]
    B = np.sqrt(lam.min()) * (V @ np.diag(1 / np.sqrt(lam)) @ V.T)
    alpha = B.sum(0)
    return result(alpha, alpha @ G)


def dbmtl(steps):
    ema = None
    for G, losses in steps:
        lg = G / (losses + DBMTL_EPS)[:, None]
        ema = (1 - DBMTL_BETA) * lg if ema is None else DBMTL_BETA * ema + (1 - DBMTL_BETA) * lg
        n = np.linalg.norm(ema, axis=1)
        alpha = n.max() / n
    return result(alpha, alpha @ ema)


def upgrad(G):
    T = G.shape[0]
    M = G @ G.T
    Mt = M / np.trace(M) + UPGRAD_REG * np.eye(T)
    w = np.zeros(T)
    for i in range(T):
        u = np.zeros(T)
        u[i] = 1.0 / T
        found = None
        # Every active set A (v_A = u_A): v_F from the stationarity rows, then the KKT checks.
        for k in range(T + 1):
            for A in itertools.combinations(range(T), k):
                A = list(A)
                F = [j for j in range(T) if j not in A]
                v = u.copy()
                if F:
                    v[F] = np.linalg.solve(Mt[np.ix_(F, F)], -Mt[np.ix_(F, A)] @ u[A])
                mu = 2 * Mt @ v
                if all(v[j] >= u[j] - 1e-13 for j in F) and all(mu[j] >= -1e-13 for j in A):
                    found = v
                    break
            if found is not None:
                break
        w += found
    return result(w, w @ G)


def main():
    out = []
    natural = [[1, 2], [0, 2], [0, 1]]
    shuffled = [[2, 1], [0, 2], [1, 0]]
    for name, G, losses in cases():
        res = {
            "mgda": mgda(G, losses, "none"),
            "mgda_l2": mgda(G, losses, "l2"),
            "mgda_loss_l2": mgda(G, losses, "loss+l2"),
            "pcgrad_natural": pcgrad(G, natural),
            "pcgrad_shuffled": pcgrad(G, shuffled),
            "cagrad": cagrad(G),
            "imtl": imtl(G),
            "nash": nash(G),
            "aligned": aligned(G),
            "upgrad": upgrad(G),
        }
        # GradVac: two steps on the same matrix, so the second uses non-zero targets.
        targets = np.zeros((3, 3))
        _, _, targets = gradvac(G, shuffled, targets)
        w, d, targets = gradvac(G, natural, targets)
        res["gradvac_two_steps"] = result(w, d)
        # DB-MTL: one step, and two steps (the second on a rescaled, rotated matrix).
        G2 = np.roll(G, 1, axis=1) * 0.5
        res["dbmtl_one_step"] = dbmtl([(G, losses)])
        res["dbmtl_two_steps"] = dbmtl([(G, losses), (G2, losses * 0.9)])
        out.append(
            {
                "name": name,
                "grads": G.tolist(),
                "losses": losses.tolist(),
                "second_grads": G2.tolist(),
                "orders": {"natural": natural, "shuffled": shuffled},
                "results": res,
            }
        )
    json.dump({"cases": out}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
