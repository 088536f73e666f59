"""The large-T solvers meet their optimality conditions at instance-wise sizes (R = 256).

UPGrad and DualProj switch from per-problem active sets to
:func:`mtljax.solvers._dual_cone_batch.project_dual_cone_batch` from ``T = BATCH_FROM`` on. Each
projection ``w = argmin_{w ≥ u} wᵀG̃w``, ``G̃ = G / tr G + reg_eps I``, is checked against its
KKT conditions, evaluated in float64 NumPy on the Gram matrix the solver was given:
``w ≥ u``, ``(G̃w)_t ≥ −δ_t`` and ``|(G̃w)_t| ≤ δ_t`` where ``w_t > u_t``, with the solver's
stated tolerance ``δ_t = 64 eps ‖g̃_t‖ Σ_k ‖g̃_k‖ |w_k|``, doubled for our re-evaluation (the
same test as ``tests/test_solver_optimality.py`` applies to the active-set solver). Gram
matrices: per-sample gradients with a shared direction, 10 % conflicting rows and norms over
a decade (``experiments/bench_solvers.py``), plus exactly duplicated and zero rows. One
compilation per test; no timing.

The batched solver's two stages are both checked: its primal-dual active-set rounds (which
solve these problems) and, with those switched off (``newton_rounds=0``), its monotone GPCG
fallback. MGDA's screened Wolfe solver (``min_norm_simplex`` from ``T = SCREEN_FROM``) is
checked on the KKT conditions of ``min_{w∈Δ} wᵀGw`` and against the float64 NNLS reference of
``tests/test_solver_optimality.py``, on the update ``Jᵀw`` (``J`` a square root of ``G``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_solver_optimality import d_distance, min_norm_gap, min_norm_reference

from experiments.bench_solvers import realistic_gram
from mtljax.methods import get_method
from mtljax.solvers import min_norm_simplex
from mtljax.solvers._dual_cone_batch import BATCH_FROM, project_dual_cone_batch
from mtljax.solvers._simplex import SCREEN_FROM

SIZE = 256
REG_EPS = 1e-4


def instance_gram(seed: int) -> np.ndarray:
    """``[R, R]`` float64 Gram matrix with duplicated rows and zero rows besides the rest."""
    g = realistic_gram(SIZE, seed=seed)
    g[1::17, :] = g[0::17, :][: len(g[1::17])]  # rows 17k + 1 copy rows 17k (then columns)
    g[:, 1::17] = g[:, 0::17][:, : len(g[1::17])]
    g[5::31, :] = 0.0
    g[:, 5::31] = 0.0
    return g


def assert_projection_kkt(g64: np.ndarray, w: np.ndarray, u: np.ndarray, eps: float, label):
    """``w`` solves ``min_{w ≥ u} wᵀG̃w`` up to the solver's stated KKT tolerance."""
    gt = g64 / np.trace(g64) + REG_EPS * np.eye(len(g64))
    norms = np.sqrt(np.diag(gt))
    delta = 2 * 64 * eps * np.maximum(norms * (norms @ np.abs(w)), 1e-300)
    residual = gt @ w
    assert np.all(w >= u), label
    assert np.all(residual >= -delta), (label, np.min(residual / delta))
    free = w > u
    assert np.all(np.abs(residual[free]) <= delta[free]), label


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_projections_meet_kkt(dtype):
    """Every one of the R projections of UPGrad (``u = e_t / R``), over a task mask."""
    assert SIZE >= BATCH_FROM
    g = jnp.asarray(instance_gram(seed=3), dtype)
    g64 = np.asarray(g, np.float64)
    mask = np.arange(SIZE) % 23 != 7
    starts = jnp.asarray(np.diag(np.where(mask, 1.0 / SIZE, 0.0)), dtype)
    w = np.asarray(jax.jit(project_dual_cone_batch)(g, starts, mask=mask), np.float64)
    assert w.shape == (SIZE, SIZE) and np.all(np.isfinite(w))
    assert np.all(w[:, ~mask] == 0.0)
    present = np.ix_(mask, mask)
    eps = float(np.finfo(dtype).eps)
    for k in np.flatnonzero(mask):
        u = np.asarray(starts, np.float64)[k][mask]
        assert_projection_kkt(g64[present], w[k][mask], u, eps, k)


def test_upgrad_and_dualproj_at_instance_scale():
    """Through the methods: UPGrad's weights conflict with no row beyond the ridge's bias
    (``g_t·d ≥ −reg_eps tr(G) w_t``, its documented guarantee), DualProj's are the KKT
    projection of the mean."""
    g64 = instance_gram(seed=4)
    g = jnp.asarray(g64, jnp.float32)
    g64 = np.asarray(g, np.float64)
    eps = float(np.finfo(np.float32).eps)
    up = get_method("upgrad", SIZE).gram_weights
    dual = get_method("dualproj", SIZE).gram_weights
    wu, wd = jax.jit(lambda g: (up(g, None)[0], dual(g, None)[0]))(g)
    wu, wd = np.asarray(wu, np.float64), np.asarray(wd, np.float64)
    assert_projection_kkt(g64, wd, np.full(SIZE, np.float32(1.0 / SIZE)), eps, "dualproj")
    trace = np.trace(g64)
    norms = np.sqrt(np.diag(g64))
    slack = REG_EPS * wu * trace + 2 * 64 * SIZE * eps * norms * (norms @ np.abs(wu))
    assert np.all(g64 @ wu >= -slack), np.min((g64 @ wu) / slack)
    assert np.all(wu >= 1.0 / SIZE - eps)


def test_gpcg_fallback_meets_kkt():
    """With no active-set round the GPCG fallback alone reaches the same KKT test (float32)."""
    size = 96
    g = jnp.asarray(realistic_gram(size, seed=6), jnp.float32)
    starts = jnp.eye(size, dtype=jnp.float32) / size
    solve = jax.jit(lambda g, s: project_dual_cone_batch(g, s, newton_rounds=0))
    w = np.asarray(solve(g, starts), np.float64)
    eps = float(np.finfo(np.float32).eps)
    for k in range(size):
        assert_projection_kkt(np.asarray(g, np.float64), w[k], np.asarray(starts[k]), eps, k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_screened_min_norm_meets_kkt(dtype):
    """MGDA at R = 256: ``w ∈ Δ``, ``(Ĝw)_t ≥ wᵀĜw − 2τ‖ĝ_t‖`` (``τ = 10 R eps``, the solver's
    test), equality on the support, and the update of the NNLS reference up to the gap bound.
    The realistic matrix has a support of ~100 vertices; the instance matrix (zero rows) has
    the min-norm point 0, reached through the duplicated rows' dependent screen."""
    assert SIZE >= SCREEN_FROM
    solve = jax.jit(min_norm_simplex)
    eps = float(np.finfo(dtype).eps)
    tau = 2 * 10 * SIZE * eps
    cases = (("realistic", realistic_gram(SIZE, seed=5)), ("instance", instance_gram(3)))
    for label, gram in cases:
        g = jnp.asarray(gram, dtype)
        g64 = np.asarray(g, np.float64)
        w = np.asarray(solve(g), np.float64)
        norms = np.sqrt(np.diag(g64) / np.max(np.diag(g64)))
        assert np.all(w >= 0.0) and abs(w.sum() - 1.0) <= SIZE * eps, label
        gap = min_norm_gap(g64, w)
        assert np.all(gap <= tau * norms), (label, np.max(gap / np.maximum(norms, 1e-300)))
        support = w > 0.0
        assert np.all(np.abs(gap[support]) <= tau * np.maximum(norms[support], 1e-3)), label
        values, vectors = np.linalg.eigh(g64)
        jac = vectors * np.sqrt(np.clip(values, 0.0, None))  # J Jᵀ = G
        w_ref = min_norm_reference(jac)
        gap_ref = min_norm_gap(g64, w_ref)
        bound = (
            np.sqrt(2 * max(gap.max(), 0.0)) + np.sqrt(2 * max(gap_ref.max(), 0.0)) + 64 * eps
        ) * np.sqrt(np.max(np.diag(g64)))
        assert d_distance(g64, w, w_ref) <= bound, (label, d_distance(g64, w, w_ref) / bound)


def test_screened_min_norm_beyond_the_candidates():
    """Support larger than the screened candidates (``3R/4``): nearly orthogonal unit rows put
    every vertex in the min-norm point, so Wolfe's loop must continue on the whole problem from
    the candidates' solution; the result meets the same KKT test (float32, R = 96)."""
    size = 96
    rng = np.random.default_rng(8)
    jac = np.eye(size) + 0.01 * rng.normal(size=(size, size))
    g = jnp.asarray(jac @ jac.T, jnp.float32)
    g64 = np.asarray(g, np.float64)
    w = np.asarray(jax.jit(min_norm_simplex)(g), np.float64)
    eps = float(np.finfo(np.float32).eps)
    norms = np.sqrt(np.diag(g64) / np.max(np.diag(g64)))
    assert np.all(w > 0.0) and abs(w.sum() - 1.0) <= size * eps
    assert np.all(np.abs(min_norm_gap(g64, w)) <= 2 * 10 * size * eps * norms)
