"""gradsim and lexicographic (task roles) against hand-made answers, NumPy references and the
properties their docstrings prove.

The references work in parameter space on the rows of J: gradsim's cosines from the rows
themselves, the dual-cone projections by enumerating every face of ``{w ≥ e_t}`` restricted to
the support (the exact minimiser of ``wᵀGw``, independent of the active-set solver). Every
(method, hyper-parameters, T, dtype) compiles once; the masks are arguments.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.methods import get_method

NUM_TASKS, DIM = 4, 6
LEVELS = (0, 1, 1, 2)
TOL = {np.float32: 2e-4, np.float64: 1e-9}


@functools.cache
def compiled(name, num_tasks, hparams):
    """``(method, step, traces)``: ``step(J, mask) -> (d, w)`` jitted, and one entry in
    ``traces`` per trace of it."""
    method = get_method(name, num_tasks, **dict(hparams))
    traces = []

    @jax.jit
    def step(jac, mask):
        traces.append(None)
        out = method.apply(jac, method.init(None), task_mask=mask)
        return out.updates, out.weights

    return method, step, traces


def apply(name, jac, dtype=np.float64, mask=None, **hparams):
    """The method's ``(d, w)`` on ``jac`` as float64 NumPy (``mask`` None: every task)."""
    jac = jnp.asarray(jac, dtype)
    mask = np.ones(len(jac), bool) if mask is None else np.asarray(mask)
    _, step, _ = compiled(name, len(jac), tuple(sorted(hparams.items())))
    d, w = step(jac, jnp.asarray(mask))
    assert d.dtype == dtype and w.dtype == dtype
    return np.asarray(d, np.float64), np.asarray(w, np.float64)


def padded(rows):
    """Hand-made rows padded with zero columns to DIM, the one width every test compiles for."""
    rows = np.asarray(rows, np.float64)
    return np.pad(rows, ((0, 0), (0, DIM - rows.shape[1])))


def conflicting(seed, num_tasks=NUM_TASKS, dim=DIM):
    """Random rows with a common conflicting component, so that projections are active."""
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(num_tasks, dim))
    jac[1::2] -= 1.5 * jac[0]
    return jac


# ----------------------------------------------------------------------------- references


def np_gradsim(jac, primary, weighted):
    """Du et al.'s rule on the rows: ``w_a = [cos > 0]`` or ``max(0, cos)``, primaries 1."""
    main = jac[list(primary)].sum(0)
    w = np.zeros(len(jac))
    for t, g in enumerate(jac):
        if t in primary:
            w[t] = 1.0
            continue
        norms = np.linalg.norm(main) * np.linalg.norm(g)
        cos = main @ g / norms if norms > 0 else 0.0
        w[t] = max(cos, 0.0) if weighted else float(cos > 0)
    return w @ jac, w


def np_project(jac, t, support):
    """Weights of the projection of ``g_t`` onto ``{x : g_i·x ≥ 0, i ∈ support}``: the best
    feasible stationary point over every face of ``{w ≥ e_t, w = 0 off the support}``."""
    idx = np.flatnonzero(support)
    g = jac[idx] @ jac[idx].T
    u = (idx == t).astype(float)
    best, best_value = None, np.inf
    for free in itertools.product([False, True], repeat=len(idx)):
        free = np.array(free)
        w = u.copy()
        if free.any():
            w[free] = np.linalg.lstsq(g[np.ix_(free, free)], -g[np.ix_(free, ~free)] @ u[~free],
                                      rcond=None)[0]
        if np.all(w >= u - 1e-12) and w @ g @ w < best_value - 1e-15:
            best, best_value = w, w @ g @ w
    out = np.zeros(len(jac))
    out[idx] = best
    return out


def np_lexicographic_parts(jac, levels):
    """``{k: d_k}`` with ``d_k = (1/T) Σ_{t at level k} Π_{C(S_k)}(g_t)``, and the weights."""
    levels = np.asarray(levels)
    parts, w = {}, np.zeros(len(jac))
    for k in np.unique(levels):
        w_k = sum(np_project(jac, t, levels <= k) for t in np.flatnonzero(levels == k))
        w_k = w_k / len(jac)
        parts[int(k)] = w_k @ jac
        w += w_k
    return parts, w


# ----------------------------------------------------------------------------- gradsim


def test_gradsim_known_answers():
    jac = padded([[1.0, 0.0], [1.0, 1.0], [-1.0, 2.0], [0.0, 3.0]])
    d, w = apply("gradsim", jac)
    np.testing.assert_allclose(w, [1.0, 1.0, 0.0, 0.0])  # cos = 1/√2, −1/√5, 0 (dropped)
    np.testing.assert_allclose(d, padded([[2.0, 1.0]])[0])
    d, w = apply("gradsim", jac, weighted=True)
    np.testing.assert_allclose(w, [1.0, 2**-0.5, 0.0, 0.0], rtol=1e-12)
    # Two primary tasks: their sum (0, 3) is the primary objective, both keep weight 1.
    d, w = apply("gradsim", jac, primary=(0, 2))
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(d, padded([[1.0, 6.0]])[0])


@pytest.mark.parametrize("weighted", [False, True])
def test_gradsim_matches_reference_and_protects_the_primary(weighted):
    for seed in range(6):
        jac = conflicting(seed)
        jac[3] *= 10.0 ** (seed - 3)  # auxiliary scales over six decades
        for primary in ((0,), (0, 2)):
            d, w = apply("gradsim", jac, primary=primary, weighted=weighted)
            d_ref, w_ref = np_gradsim(jac, primary, weighted)
            np.testing.assert_allclose(w, w_ref, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(d, d_ref, rtol=1e-10, atol=1e-10 * np.abs(jac).max())
            main = jac[list(primary)].sum(0)
            assert main @ d >= main @ main * (1 - 1e-12)  # g_P·d ≥ ‖g_P‖²


def test_gradsim_zero_primary_drops_the_auxiliaries():
    jac = conflicting(1)
    jac[0] = 0.0
    for weighted in (False, True):
        d, w = apply("gradsim", jac, weighted=weighted)
        np.testing.assert_array_equal(w, [1.0, 0.0, 0.0, 0.0])
        np.testing.assert_array_equal(d, np.zeros(DIM))


def test_gradsim_equivariance_and_scale():
    """Permuting the auxiliaries leaves d unchanged (moving the primary index with the tasks
    is the shared permutation test's); the weights are scale-free, whether the whole J, the
    primary alone or one auxiliary is rescaled."""
    jac = conflicting(2)
    d, w = apply("gradsim", jac, weighted=True)
    d_aux, _ = apply("gradsim", jac[[0, 3, 1, 2]], weighted=True)
    np.testing.assert_allclose(d_aux, d, rtol=1e-12)
    _, w_all = apply("gradsim", 1e-3 * jac, weighted=True)
    np.testing.assert_allclose(w_all, w, rtol=1e-12)
    for row in (0, 1):
        scaled = jac.copy()
        scaled[row] *= 37.0
        _, w_row = apply("gradsim", scaled, weighted=True)
        np.testing.assert_allclose(w_row, w, rtol=1e-12)


def test_gradsim_task_mask():
    """Absent tasks get weight 0 and the rest is the rule on the present rows; with no
    primary task present there is nothing to agree with and d = 0."""
    jac = conflicting(3)
    for weighted in (False, True):
        d, w = apply("gradsim", jac, mask=[True, True, False, True], weighted=weighted)
        d_sub, w_sub = np_gradsim(jac[[0, 1, 3]], (0,), weighted)
        assert w[2] == 0.0
        np.testing.assert_allclose(w[[0, 1, 3]], w_sub, rtol=1e-12)
        np.testing.assert_allclose(d, d_sub, rtol=1e-12)
        d, w = apply("gradsim", jac, mask=[False, True, True, True], weighted=weighted)
        assert not np.any(w) and not np.any(d)
    # One of two primaries absent: the other one alone is the primary objective.
    d, _ = apply("gradsim", jac, mask=[False, True, True, True], primary=(0, 2))
    np.testing.assert_allclose(d, np_gradsim(jac[1:], (1,), False)[0], rtol=1e-12)


def test_gradsim_float32_and_bad_hparams():
    jac = conflicting(4)
    d32, _ = apply("gradsim", jac, np.float32, weighted=True)
    d64, _ = apply("gradsim", jac, weighted=True)
    np.testing.assert_allclose(d32, d64, rtol=TOL[np.float32], atol=TOL[np.float32])
    for primary in ((), (4,), (0, 0), (-1,), (0.5,)):
        with pytest.raises(ValueError, match="primary"):
            get_method("gradsim", NUM_TASKS, primary=primary)
    with pytest.raises(ValueError, match="weighted"):
        get_method("gradsim", NUM_TASKS, weighted="yes")


# ----------------------------------------------------------------------------- lexicographic


def test_lexicographic_known_answers():
    """Two decoupled blocks (orthogonal coordinates). Block 1, levels (0, 1): g_0 = (1, 0),
    g_1 = (−1, 1) projected onto {x_1 ≥ 0, x_2 ≥ x_1} is (0, 1) = g_0 + g_1. Block 2, levels
    (1, 2): g_2 = (−1, 1) is in its own cone; g_3 = (1, 0) projects to (1/2, 1/2) = g_3 + g_2/2,
    and g_3·d = −1/8 < 0: the higher level's part conflicts with the lower task, by design."""
    jac = padded([[1.0, 0, 0, 0], [-1, 1, 0, 0], [0, 0, -1, 1], [0, 0, 1, 0]])
    d, w = apply("lexicographic", jac, levels=LEVELS)
    np.testing.assert_allclose(w, [0.5, 0.25, 0.375, 0.25], atol=1e-15)
    np.testing.assert_allclose(d, padded([[0.25, 0.25, -0.125, 0.375]])[0], atol=1e-15)


def test_one_level_is_upgrad():
    """One level is UPGrad, at any ridge (here UPGrad's default, reg_eps = 1e-4): the same
    solves, equal to the last bits (one vmapped mask per start changes XLA's fusion)."""
    for seed in range(4):
        jac = conflicting(seed)
        d, w = apply("lexicographic", jac, reg_eps=1e-4)
        d_up, w_up = apply("upgrad", jac)
        np.testing.assert_allclose(w, w_up, rtol=1e-14)
        np.testing.assert_allclose(d, d_up, rtol=1e-14, atol=1e-15)


def test_lexicographic_matches_enumerated_projections():
    for seed in range(5):
        jac = conflicting(seed)
        jac[2] *= 10.0 ** (seed - 2)
        d, w = apply("lexicographic", jac, levels=LEVELS)
        parts, w_ref = np_lexicographic_parts(jac, LEVELS)
        np.testing.assert_allclose(w, w_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(d, sum(parts.values()), rtol=1e-9,
                                   atol=1e-9 * np.abs(jac).max())


def _parts_below(jac, levels, dtype=np.float64):
    """``Σ_{j ≤ k} d_j`` for every level k, from the method itself: the tasks at levels ≤ k
    alone (a mask) give ``(T / K_k) Σ_{j ≤ k} d_j``."""
    levels = np.asarray(levels)
    out = {}
    for k in np.unique(levels):
        present = levels <= k
        d_k, _ = apply("lexicographic", jac, dtype, mask=present, levels=tuple(levels))
        out[int(k)] = d_k * present.sum() / len(levels)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lexicographic_priority_guarantees(dtype):
    """For a task i at level k: g_i·d ≥ g_i·Σ_{j≤k} d_j (lower levels take nothing from it),
    g_i·Σ_{j≥k} d_j ≥ 0, and g_i·d ≥ 0 at level 0. Some seeds make the level-0 part conflict
    with lower-level tasks, which the guarantees allow."""
    levels = np.asarray(LEVELS)
    higher_conflicts = 0
    for seed in range(8):
        jac = np.asarray(np.asarray(conflicting(seed), dtype), np.float64)
        d, _ = apply("lexicographic", jac, dtype, levels=LEVELS)
        below = _parts_below(jac, LEVELS, dtype)
        slack = 10 * TOL[dtype] * np.linalg.norm(jac, axis=1) * np.linalg.norm(jac, axis=1).max()
        for i, k in enumerate(levels):
            g = jac[i]
            assert g @ d >= g @ below[k] - slack[i], (seed, i)
            own_and_lower = d - below[k - 1] if k > 0 else d
            assert g @ own_and_lower >= -slack[i], (seed, i)
            if k == 0:
                assert g @ d >= -slack[i], (seed, i)
            higher_conflicts += int(k > 0 and g @ below[0] < -slack[i])
    assert higher_conflicts > 0  # the zoo does exercise conflicts from higher levels


def test_lexicographic_equivariance_and_scale():
    """Swapping two tasks of one level leaves d unchanged (moving the levels with the tasks
    is the shared permutation test's); the weights are scale-free."""
    jac = conflicting(5)
    d, w = apply("lexicographic", jac, levels=LEVELS)
    d_swap, _ = apply("lexicographic", jac[[0, 2, 1, 3]], levels=LEVELS)
    np.testing.assert_allclose(d_swap, d, rtol=1e-10, atol=1e-12)
    _, w_scaled = apply("lexicographic", 3e-5 * jac, levels=LEVELS)
    np.testing.assert_allclose(w_scaled, w, rtol=1e-10)


def test_lexicographic_task_mask_and_float32():
    """Without its level-0 task the step solves the levels present, (1, 1, 2): only the order
    of the levels counts. float32 follows float64."""
    jac = conflicting(6)
    d, w = apply("lexicographic", jac, mask=[False, True, True, True], levels=LEVELS)
    parts, w_sub = np_lexicographic_parts(jac[1:], (1, 1, 2))
    assert w[0] == 0.0
    np.testing.assert_allclose(w[1:], w_sub, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(d, sum(parts.values()), rtol=1e-9, atol=1e-12)
    d32, _ = apply("lexicographic", jac, np.float32, levels=LEVELS)
    np.testing.assert_allclose(d32, apply("lexicographic", jac, levels=LEVELS)[0],
                               rtol=TOL[np.float32], atol=TOL[np.float32])


def test_lexicographic_bad_hparams():
    for levels in ((0, 1, 2), (0, -1, 0, 0), (0, 0.5, 0, 0), (0, np.nan, 0, 0), "0112"):
        with pytest.raises(ValueError, match="levels"):
            get_method("lexicographic", NUM_TASKS, levels=levels)
    with pytest.raises(ValueError, match="reg_eps"):
        get_method("lexicographic", NUM_TASKS, reg_eps=-1.0)


def test_lexicographic_many_tasks():
    """From T = 64 on, one batched solve per level: 32 decoupled copies of the two-task
    problem of the known answers (levels 0 and 1) give each block (1, 1) / T."""
    blocks, num_tasks = 32, 64
    jac = np.zeros((num_tasks, 2 * blocks))
    for b in range(blocks):
        jac[b, 2 * b] = 1.0
        jac[blocks + b, 2 * b: 2 * b + 2] = (-1.0, 1.0)
    d, _ = apply("lexicographic", jac, levels=(0,) * blocks + (1,) * blocks)
    np.testing.assert_allclose(d, np.full(2 * blocks, 1.0 / num_tasks), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name, hparams", [("gradsim", (("weighted", True),)),
                                           ("lexicographic", (("levels", LEVELS),))])
def test_traced_once(name, hparams):
    jac = conflicting(8)
    apply(name, jac, **dict(hparams))
    _, _, traces = compiled(name, NUM_TASKS, tuple(sorted(hparams)))
    count = len(traces)
    apply(name, 2.0 * jac, mask=[True, False, True, True], **dict(hparams))
    assert len(traces) == count
