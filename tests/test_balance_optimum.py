"""Tests of tests/balance_optimum.py, the general-purpose-solver reference for the convex
balancing methods: each formulation against a closed form or a property it must have, so that
tests/balance_reference.rs compares the Rust solvers with something known to be right.

Run: .venv/bin/python -m pytest -q tests/test_balance_optimum.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import balance_optimum as opt  # noqa: E402


def direction(result):
    assert result["direction"] is not None, result
    return np.array(result["direction"])


def test_mgda_two_tasks_is_the_closed_form_and_zero_inside_the_hull():
    a, b = np.array([1.0, 0.5, -0.2]), np.array([-0.4, 1.0, 0.3])
    gamma = np.clip((b @ b - a @ b) / (a @ a + b @ b - 2 * a @ b), 0, 1)
    np.testing.assert_allclose(direction(opt.mgda(np.array([a, b]))), gamma * a + (1 - gamma) * b, atol=1e-9)
    # One row 1e6 larger: the min-norm point is still resolved (b projected off a here).
    big = np.array([1e6 * a, b])
    gamma = np.clip((b @ b - 1e6 * a @ b) / (1e12 * a @ a + b @ b - 2e6 * a @ b), 0, 1)
    want = gamma * 1e6 * a + (1 - gamma) * b
    np.testing.assert_allclose(direction(opt.mgda(big)), want, rtol=1e-7, atol=1e-9 * np.linalg.norm(want))
    assert opt.mgda(np.array([a, b, -(a + b)]))["zero"]


def test_cagrad_optimum_of_issue_15_and_the_worst_case_in_the_ball():
    G = np.array([[-1.48987, 0.49396], [0.58870, -0.89139], [-0.52097, 0.89135]])
    d = direction(opt.cagrad(G))
    np.testing.assert_allclose(d, [-0.335769, -0.044730], atol=5e-6)  # the issue's SLSQP value
    g0 = G.mean(0)
    r = 0.5 * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) == pytest.approx(r, rel=1e-9)
    rng = np.random.default_rng(0)
    u = rng.standard_normal((2000, 2))
    ball = g0 + r * u / np.linalg.norm(u, axis=1, keepdims=True)
    assert (ball @ G.T).min(1).max() <= (G @ d).min() + 1e-12


def test_cagrad_reports_a_non_unique_optimum():
    # [a, -a, b]: the origin is on an edge of the hull, the optimal value is 0 and every point
    # of the ball that conflicts with no task is a maximiser.
    G = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.3, 0.9, 0.2]])
    res = opt.cagrad(G)
    assert res["direction"] is None and "not be unique" in res["why"]


def test_imtl_two_tasks_closed_form_dependent_and_parallel():
    a, b = np.array([1.0, 0.5, -0.2]), np.array([-0.4, 3.0, 0.3])
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    np.testing.assert_allclose(direction(opt.imtl(np.array([a, b]))), (nb * a + na * b) / (na + nb), atol=1e-12)
    assert opt.imtl(np.array([a, b, -2 * (a + b)]))["zero"]
    assert "family" in opt.imtl(np.array([a, 2 * a]))["why"]


def test_nash_orthogonal_closed_form():
    G = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1e-4]])
    M = G @ G.T
    fro = np.linalg.norm(M)
    alpha = np.sqrt(fro / (np.diag(M) * (1 + opt.NASH_RIDGE)))
    np.testing.assert_allclose(direction(opt.nash(G)), alpha @ G, rtol=1e-10)


def test_upgrad_orthogonal_is_the_mean_and_random_is_almost_non_conflicting():
    G = np.array([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(direction(opt.upgrad(G)), G.mean(0), atol=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(5):
        G = rng.standard_normal((4, 5))
        d = direction(opt.upgrad(G))
        assert (G @ d / (np.linalg.norm(G, axis=1) * np.linalg.norm(d))).min() > -1e-3
        assert (G @ direction(opt.upgrad(G, reg=0.0))).min() > -1e-10


def test_every_family_is_solved_for_one_seed():
    cases = opt.jacobians(7)
    assert len(cases) > 25
    for name, G in cases:
        for method, f in opt.METHODS.items():
            res = f(G)
            assert res.get("zero") or res["direction"] is None or np.isfinite(res["direction"]).all(), (name, method)
