"""PCD (priority-constrained descent) against torchjd, a NumPy reference and its guarantees.

* **torchjd** — every step of the cases in ``tests/fixtures/pcd_torchjd.json`` (written by
  ``experiments/pcd_reference.py`` with torchjd 0.18's ``PCD``; no torch at test time): random
  and conflicting gradients, scalar and per-secondary τ, several β over several steps, a large
  ε, infeasible constraints, a zero primary gradient, several primary tasks, a primary task
  that is not task 0.
* **the QP solver** — :func:`solve_pcd_qp` against a brute-force NumPy solution (every active
  set, KKT conditions checked), on random, rank-deficient and infeasible problems.
* **guarantees** — over several steps: every secondary gets at least ``τ_j`` of its normalised
  progress (``g̃_jᵀd̃ ≥ τ_j‖g̃_j‖²``), ``‖d‖ = ‖g_1‖``, and the primary never conflicts with
  the update at ``τ = 0``; at ``τ > 0`` an exactly opposed secondary makes it (``d = −g_1``).
* **contract** — permutation equivariance among the secondaries, float32 and float64, one
  trace under ``jit``, ``task_mask``, a non-finite Gram matrix, hyper-parameter validation.

Steps run eagerly around the jitted solver, which compiles once per shape and dtype.
"""

from __future__ import annotations

import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtljax
from mtljax.solvers._pcd_qp import solve_pcd_qp

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pcd_torchjd.json"
CASES = json.loads(FIXTURE.read_text())["cases"]
DTYPES = ("float32", "float64")
RTOL = {"float32": 5e-5, "float64": 1e-9}


def run_steps(jacs, dtype="float64", masks=None, **hparams):
    """NumPy ``(d [S, P], w [S, T], states [S, ...])`` of PCD over the steps ``jacs``, run
    eagerly: the jitted QP solver compiles once per shape and dtype for the whole file."""
    jacs = np.asarray(jacs, np.float64)
    masks = np.ones(jacs.shape[:2], bool) if masks is None else np.asarray(masks)
    method = mtljax.get_method("pcd", jacs.shape[1], **hparams)
    state, ds, ws, states = method.init(None), [], [], []
    for jac, mask in zip(jacs, masks, strict=True):
        out = method.apply(jnp.asarray(jac, dtype), state, task_mask=jnp.asarray(mask))
        assert out.updates.dtype == jnp.dtype(dtype)
        state = out.state
        ds.append(np.asarray(out.updates, np.float64))
        ws.append(np.asarray(out.weights, np.float64))
        states.append(state)
    return np.stack(ds), np.stack(ws), jax.tree.map(lambda *xs: np.stack(xs), *states)


def assert_close(actual, expected, rtol, what=""):
    scale = max(np.max(np.abs(expected)), np.max(np.abs(actual)), 1e-300)
    err = np.max(np.abs(np.asarray(actual) - np.asarray(expected)))
    assert err <= rtol * scale, f"{what}: error {err:.3g} > {rtol:g} x {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# torchjd's values.


def test_fixture_exercises_the_constraints():
    """The reference cases are not trivial: most steps move away from g_1, some so far that
    the primary itself conflicts with the update (τ > 0)."""
    moved = conflicts = 0
    for case in CASES:
        for jac, d in zip(case["steps"], case["updates"], strict=True):
            g1 = np.asarray(jac)[case["primary"]].sum(0)
            moved += not np.allclose(d, g1)
            conflicts += float(g1 @ np.asarray(d)) < 0
    assert moved >= 20 and conflicts >= 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_torchjd(case, dtype):
    d, _, _ = run_steps(case["steps"], dtype, primary=tuple(case["primary"]), tau=case["tau"],
                        beta=case["beta"], eps=case["eps"])
    for step, (ours, theirs) in enumerate(zip(d, case["updates"], strict=True)):
        assert_close(ours, np.asarray(theirs), RTOL[dtype], f"step {step}")


# ---------------------------------------------------------------------------------------------
# The QP solver against brute force.


def brute_force(gram: np.ndarray, taus: np.ndarray):
    """``(w, feasible)`` by enumeration: the active set A whose equality solution has ``μ ≥ 0``
    and satisfies every constraint (the KKT point; A with dependent gradients is skipped, a
    KKT point with independent active gradients always exists when one exists)."""
    size = gram.shape[0] - 1
    gs, b = gram[1:, 1:], taus * np.diag(gram)[1:] - gram[1:, 0]
    tol = 1e-9 * max(np.max(np.diag(gram)), 1e-300)
    for count in range(size + 1):
        for active in itertools.combinations(range(size), count):
            mu = np.zeros(size)
            block = gs[np.ix_(active, active)]
            if count and np.linalg.cond(block) > 1e8:
                continue
            if count:
                mu[list(active)] = np.linalg.solve(block, b[list(active)])
            if np.all(mu >= -tol) and np.all(gs @ mu - b >= -tol):
                return np.concatenate([[1.0], np.maximum(mu, 0.0)]), True
    return np.eye(gram.shape[0])[0], False


def qp_problems():
    """``(rows [N, M, P], taus [N, M-1], rank_deficient [N])``: random, conflicting,
    rank-deficient, infeasible."""
    rng = np.random.default_rng(11)
    rows, taus = [], []
    for i in range(24):
        jac = rng.normal(size=(5, 6))
        jac[1:] -= rng.uniform(0.0, 1.5, size=(4, 1)) * jac[0]
        if i % 4 == 1:  # rank 3: some secondaries are combinations of the others
            jac = rng.normal(size=(5, 3)) @ rng.normal(size=(3, 6))
        elif i % 4 == 2:  # two exactly opposed secondaries: infeasible for τ > 0
            jac[3] = -0.5 * jac[2]
        elif i % 4 == 3:  # a duplicated secondary
            jac[4] = jac[1]
        if i % 8 == 0:  # no conflict and τ = 0: no constraint binds
            jac = np.abs(jac)
        rows.append(jac)
        taus.append(rng.uniform(0.0, 0.4, size=4) * (i % 8 != 0))
    return np.stack(rows), np.stack(taus), np.arange(24) % 4 == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_solver_matches_brute_force(dtype):
    """float32 skips the rank-deficient problems: rounded to float32, their Gram matrix is no
    longer singular, and the solver rightly sees independent gradients (huge multipliers)."""
    rows, taus, deficient = qp_problems()
    grams = np.einsum("nip,njp->nij", rows, rows)
    sol = jax.jit(jax.vmap(solve_pcd_qp))(jnp.asarray(grams, dtype), jnp.asarray(taus, dtype))
    weights, feasible = np.asarray(sol.weights, np.float64), np.asarray(sol.feasible)
    tol = {"float32": 1e-4, "float64": 1e-9}[dtype]
    kinds = set()
    for jac, tau, w, ok, skip in zip(rows, taus, weights, feasible, deficient, strict=True):
        if skip and dtype == "float32":
            continue
        w_ref, ok_ref = brute_force(jac @ jac.T, tau)
        assert ok == ok_ref, f"feasible {ok}, brute force {ok_ref}"
        # d = Jᵀw is unique (a projection); μ is not when active gradients are dependent.
        assert_close(jac.T @ w, jac.T @ w_ref, tol, "d")
        kinds.add((ok_ref, bool(np.any(w_ref[1:] > 0))))
    assert kinds == {(True, True), (True, False), (False, False)}
    assert int(jnp.max(sol.iterations)) <= 10


# ---------------------------------------------------------------------------------------------
# The guarantees.


def normalised(jacs, states, beta, eps):
    """``g̃ = s g`` per step, the scales from the states' bias-corrected moving averages."""
    ema = np.concatenate([np.asarray(states.primary_sq_norm_ema)[:, None],
                          np.asarray(states.sq_norm_ema)[:, 1:]], axis=1)
    steps = np.concatenate([np.asarray(states.primary_steps)[:, None],
                            np.asarray(states.steps)[:, 1:]], axis=1)
    scales = 1.0 / np.sqrt(ema / (1.0 - beta**steps) + eps)
    return jacs * scales[:, :, None], scales


@pytest.mark.parametrize("dtype", DTYPES)
def test_secondaries_get_their_share_and_the_norm_is_the_primarys(dtype):
    """Random independent rows (always feasible) with norms over two decades, five steps:
    ``g̃_jᵀd̃ ≥ τ_j ‖g̃_j‖²`` with ``d̃ = d s_1 / w_1``, and ``‖d‖ = ‖g_1‖``."""
    rng = np.random.default_rng(3)
    jacs = rng.normal(size=(5, 4, 6)) * 10.0 ** rng.uniform(-1, 1, size=(5, 4, 1))
    jacs[:, 1:] -= 0.8 * jacs[:, :1] * np.linalg.norm(jacs[:, 1:], axis=2, keepdims=True) \
        / np.linalg.norm(jacs[:, :1], axis=2, keepdims=True)
    taus = np.array([0.05, 0.2, 0.5])
    d, w, states = run_steps(jacs, dtype, tau=list(taus), beta=0.6)
    tilde, scales = normalised(jacs, states, 0.6, 1e-8)
    slack_tol = {"float32": 1e-4, "float64": 1e-10}[dtype]
    for step in range(len(jacs)):
        d_tilde = d[step] * scales[step, 0] / w[step, 0]
        progress = tilde[step, 1:] @ d_tilde
        required = taus * np.sum(tilde[step, 1:] ** 2, axis=1)
        assert np.all(progress >= required - slack_tol), (progress, required)
        assert np.any(np.abs(progress - required) < 1e-3), "no active constraint"
        np.testing.assert_allclose(np.linalg.norm(d[step]), np.linalg.norm(jacs[step, 0]),
                                   rtol=RTOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tau_zero_conflicts_with_no_task(dtype):
    """At τ = 0, ``d̃`` projects ``g̃_1`` onto the secondaries' dual cone: ``J d ≥ 0``."""
    rng = np.random.default_rng(4)
    jacs = rng.normal(size=(4, 5, 6))
    jacs[:, 1:] -= rng.uniform(0.5, 2.0, size=(4, 4, 1)) * jacs[:, :1]
    d, _, _ = run_steps(jacs, dtype, tau=0.0)
    dots = np.einsum("stp,sp->st", jacs, d)
    norms = np.linalg.norm(jacs, axis=2) * np.linalg.norm(d, axis=1, keepdims=True)
    assert np.all(dots >= -RTOL[dtype] * 10 * norms), dots
    assert np.all(dots[:, 1:].min(1) < 1e-3 * norms[:, 1:].max(1)), "no secondary binds"


@pytest.mark.parametrize("dtype", DTYPES)
def test_opposed_secondary_reverses_the_primary(dtype):
    """``g_2 = −g_1/3`` and ``g_3 ⊥ g_1`` at τ > 0 (first step, unit ``g̃``): the constraints
    bind at ``d̃ = τ(−ĝ_1 + ĝ_3)``, so ``d = ‖g_1‖ (ĝ_3 − ĝ_1)/√2`` and ``g_1ᵀd < 0``; at
    τ = 0, ``d = 0`` (the cone of the secondaries meets ``g_1``'s direction only at 0)."""
    g1, g3 = np.array([3.0, 4.0, 0.0, 0, 0, 0]), np.array([0.0, 0.0, 2.0, 0, 0, 0])
    jac = np.stack([g1, -g1 / 3.0, g3])
    d, _, _ = run_steps(jac[None], dtype, tau=0.1)
    assert_close(d[0], 5.0 * (g3 / 2.0 - g1 / 5.0) / np.sqrt(2.0), RTOL[dtype])
    zero, _, _ = run_steps(jac[None], dtype, tau=0.0)
    assert_close(zero[0], np.zeros(6), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_infeasible_constraints_give_the_primary_gradient(dtype):
    rng = np.random.default_rng(5)
    jac = rng.normal(size=(3, 6))
    jac[2] = -4.0 * jac[1]
    d, w, _ = run_steps(jac[None], dtype, tau=0.01)
    assert_close(d[0], jac[0], RTOL[dtype])
    np.testing.assert_allclose(w[0], [1.0, 0.0, 0.0], rtol=RTOL[dtype], atol=0.0)


def test_secondaries_are_permutation_equivariant():
    """Permuting the secondary tasks (with their τ) over four steps leaves every ``d``."""
    rng = np.random.default_rng(6)
    jacs = rng.normal(size=(4, 5, 6))
    jacs[:, 1:] -= 0.9 * jacs[:, :1]
    taus = [0.0, 0.1, 0.2, 0.3]
    perm = np.array([0, 3, 1, 4, 2])
    d, _, _ = run_steps(jacs, tau=taus, beta=0.7)
    d_perm, _, _ = run_steps(jacs[:, perm], tau=[taus[p - 1] for p in perm[1:]], beta=0.7)
    assert_close(d_perm, d, 1e-9)


def test_a_constant_task_scale_does_not_change_the_update():
    """The normalisation makes τ scale-free: a secondary's loss × 1000 at every step (ε = 0)."""
    rng = np.random.default_rng(7)
    jacs = rng.normal(size=(3, 4, 6))
    jacs[:, 1:] -= jacs[:, :1]
    scaled = jacs * np.array([1.0, 1e3, 1.0, 1e-2])[None, :, None]
    d, _, _ = run_steps(jacs, tau=0.3, beta=0.7, eps=0.0)
    d_scaled, _, _ = run_steps(scaled, tau=0.3, beta=0.7, eps=0.0)
    assert_close(d_scaled, d, 1e-9)


def test_jit_traces_once_and_keeps_the_dtype():
    method = mtljax.get_method("pcd", 3)
    traces = []

    @jax.jit
    def step(jac, state):
        traces.append(None)
        out = method.apply(jac, state)
        return out.updates, out.state

    state = method.init(None)
    for seed in range(2):
        jac = jnp.asarray(np.random.default_rng(seed).normal(size=(3, 4)), jnp.float32)
        d, new_state = step(jac, state)
        assert d.dtype == jnp.float32
        assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
        state = new_state
    assert len(traces) == 1 and int(state.primary_steps) == 2


# ---------------------------------------------------------------------------------------------
# Task masks and non-finite input.


def test_masked_steps_equal_the_present_tasks_alone():
    """Task 2 absent at step 1 (NaN rows): ``w_2 = 0``, and the d of every step equals that of
    the method run on the present rows with the absent task's history left out."""
    rng = np.random.default_rng(8)
    jacs = rng.normal(size=(3, 4, 6))
    jacs[:, 1:] -= 0.7 * jacs[:, :1]
    masks = np.ones((3, 4), bool)
    masks[1, 2] = False
    poisoned = jacs.copy()
    poisoned[1, 2] = np.nan
    d, w, states = run_steps(poisoned, masks=masks, tau=0.2, beta=0.5)
    assert w[1, 2] == 0.0 and np.all(np.isfinite(d))
    assert int(states.steps[1, 2]) == 1 and int(states.steps[2, 2]) == 2
    assert float(states.sq_norm_ema[1, 2]) == float(states.sq_norm_ema[0, 2])
    sub, _, _ = run_steps(jacs[:2, [0, 1, 3]], tau=0.2, beta=0.5)
    assert_close(d[1], sub[1], 1e-9, "masked step")


def test_no_primary_present_gives_zero_and_keeps_the_primary_state():
    rng = np.random.default_rng(9)
    jacs = rng.normal(size=(2, 3, 6))
    masks = np.array([[True, True, True], [False, True, True]])
    jacs[1, 0] = np.inf
    d, w, states = run_steps(jacs, masks=masks)
    assert not np.any(d[1]) and not np.any(w[1])
    assert int(states.primary_steps[1]) == 1
    assert float(states.primary_sq_norm_ema[1]) == float(states.primary_sq_norm_ema[0])
    assert int(states.steps[1, 1]) == 2


def test_several_primary_tasks_are_one_objective():
    """Primary tasks 0 and 2 give the update of one primary row g_0 + g_2."""
    rng = np.random.default_rng(10)
    jacs = rng.normal(size=(3, 4, 6))
    jacs[:, [1, 3]] -= jacs[:, [0]]
    summed = np.stack([jacs[:, 0] + jacs[:, 2], jacs[:, 1], jacs[:, 3]], axis=1)
    d, w, _ = run_steps(jacs, primary=(0, 2), tau=0.2)
    d_sum, w_sum, _ = run_steps(summed, tau=0.2)
    assert_close(d, d_sum, 1e-9)
    np.testing.assert_allclose(w[:, 0], w[:, 2])
    np.testing.assert_allclose(w[:, [0, 1, 3]], w_sum, rtol=1e-9)


def test_non_finite_gram_gives_nan_and_keeps_the_state():
    jacs = np.random.default_rng(12).normal(size=(2, 3, 6))
    jacs[1, 1, 0] = np.nan
    d, w, states = run_steps(jacs)
    assert np.all(np.isnan(w[1])) and np.all(np.isnan(d[1]))
    for leaf in jax.tree.leaves(states):
        np.testing.assert_array_equal(np.asarray(leaf)[1], np.asarray(leaf)[0])


@pytest.mark.parametrize("hparams, match", [
    (dict(primary=()), "primary"),
    (dict(primary=(0, 0)), "primary"),
    (dict(primary=(3,)), "primary"),
    (dict(primary=(0.5,)), "primary"),
    (dict(tau=1.5), "tau"),
    (dict(tau=[0.1, 0.2, 0.3]), "tau"),
    (dict(beta=1.0), "beta"),
    (dict(eps=-1.0), "eps"),
])
def test_bad_hyper_parameters_raise(hparams, match):
    with pytest.raises(ValueError, match=match):
        mtljax.get_method("pcd", 3, **hparams)
