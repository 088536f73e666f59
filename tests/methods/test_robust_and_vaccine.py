"""GradVac, GradDrop, Krum and the trimmed mean against independent NumPy references.

Each reference is written from the paper's formulas on a flat ``[T, P]`` matrix; the library
runs on a two-leaf tree (``{"a": [T, 3], "b": [T, 1, 2]}``) in float32 and float64. GradVac and
GradDrop draw random numbers: GradVac's visiting orders are recovered from its EMA targets (each
order of the other tasks gives a different target row), GradDrop is checked draw by draw (every
coordinate keeps exactly one sign's sum) and in expectation over many keys.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trees import as_tree, flat

from mtljax.methods import get_method

DTYPES = [jnp.float32, jnp.float64]
RTOL = {jnp.float32: 2e-4, jnp.float64: 1e-10}


@functools.cache
def compiled(name, num_tasks, hparams):
    """The method and its jitted ``apply``, compiled once per (method, hparams, shape, dtype)."""
    method = get_method(name, num_tasks, **dict(hparams))
    return method, jax.jit(method.apply)


def run(name, jac, dtype, state=None, **hparams):
    """One jitted step on the tree form of ``jac``: (weights or None, flat update, state)."""
    method, apply = compiled(name, jac.shape[0], tuple(sorted(hparams.items())))
    state = method.init(None) if state is None else state
    out = apply(as_tree(jac, dtype), state)
    for leaf in jax.tree.leaves(out.updates):
        assert leaf.dtype == dtype
    weights = None if out.weights is None else np.asarray(out.weights, np.float64)
    return weights, flat(out.updates), out.state


def tol(dtype, scale=1.0):
    return {"rtol": scale * RTOL[dtype], "atol": scale * RTOL[dtype]}


# --- GradVac ------------------------------------------------------------------------------


def np_gradvac_row(jac, i, order, targets_i, beta):
    """Algorithm 1 of Wang et al. for task i: returns (coefficients c with g_i' = cᵀJ, targets).

    For each j in ``order``: φ = cos(g_i', g_j); if φ < φ̂_ij, move g_i' along g_j until the
    cosine is φ̂_ij; then φ̂_ij ← (1 − β) φ̂_ij + β φ (φ measured before the move).
    """
    coeffs = np.eye(len(jac))[i]
    targets_i = targets_i.copy()
    for j in order:
        g_i, g_j = coeffs @ jac, jac[j]
        phi = g_i @ g_j / (np.linalg.norm(g_i) * np.linalg.norm(g_j))
        target = targets_i[j]
        if phi < target:
            scale = np.linalg.norm(g_i) / np.linalg.norm(g_j)
            coeffs[j] += (
                scale
                * (target * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - target**2))
                / np.sqrt(1 - target**2)
            )
        targets_i[j] = (1 - beta) * target + beta * phi
    return coeffs, targets_i


def np_gradvac_step(jac, targets, got_targets, beta):
    """One step; each task's random order is the one whose targets match the library's."""
    num_tasks = len(jac)
    weights, new_targets = np.zeros(num_tasks), np.zeros_like(targets)
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        candidates = [
            np_gradvac_row(jac, i, order, targets[i], beta)
            for order in itertools.permutations(others)
        ]
        coeffs, new_targets[i] = min(candidates, key=lambda c: np.abs(c[1] - got_targets[i]).max())
        weights += coeffs
    return weights, new_targets


def gradvac_jacobians(seed, num_tasks, steps):
    """Gradients that mostly agree (positive targets build up) with varying conflicts."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=5)
    return [
        base + rng.normal(size=(num_tasks, 5)) * rng.uniform(0.5, 2.0, size=(num_tasks, 1))
        for _ in range(steps)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tasks", [2, 3])
def test_gradvac_matches_paper_over_steps(num_tasks, dtype):
    beta = 0.5
    targets, state = np.zeros((num_tasks, num_tasks)), None
    adjusted = 0
    for jac in gradvac_jacobians(num_tasks, num_tasks, steps=6):
        weights, update, state = run("gradvac", jac, dtype, state, ema_rate=beta)
        got_targets = np.asarray(state.targets, np.float64)
        ref_w, new_targets = np_gradvac_step(jac, targets, got_targets, beta)
        cosines = (jac @ jac.T) / np.outer(*2 * [np.linalg.norm(jac, axis=1)])
        adjusted += int(np.sum(cosines < targets))
        np.testing.assert_allclose(got_targets, new_targets, **tol(dtype, 10))
        np.testing.assert_allclose(weights, ref_w, **tol(dtype, 10))
        np.testing.assert_allclose(update, jac.T @ ref_w, **tol(dtype, 10))
        # The EMA state is carried by the reference itself, not copied from the library.
        targets = new_targets
    assert adjusted >= 2  # the sequence does exercise the vaccine, not only the EMA


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradvac_first_step_is_pcgrad_at_two_tasks(dtype):
    jac = np.array([[2.0, 1.0, 0.0, 0.5, 0.0], [-1.0, 1.0, 1.0, 0.0, -0.5]])
    _, update, _ = run("gradvac", jac, dtype, ema_rate=0.5)
    g1, g2 = jac
    ref = g1 - (g1 @ g2) / (g2 @ g2) * g2 + g2 - (g1 @ g2) / (g1 @ g1) * g1
    np.testing.assert_allclose(update, ref, **tol(dtype))


# --- GradDrop -----------------------------------------------------------------------------


def graddrop_draws(jac, dtype, num_draws, **hparams):
    """Updates ``[num_draws, ...]`` for ``num_draws`` independent keys (vmapped)."""
    method = get_method("graddrop", jac.shape[0], **hparams)
    state0 = method.init(None)
    keys = jax.random.split(jax.random.key(7), num_draws)
    updates = jax.jit(
        jax.vmap(lambda k: method.apply(jnp.asarray(jac, dtype), state0._replace(key=k)).updates)
    )(keys)
    assert updates.dtype == dtype
    return np.asarray(updates, np.float64)


def np_sign_sums(jac):
    """Per element, the sums of the positive and of the negative task gradients."""
    return np.where(jac > 0, jac, 0).sum(0), np.where(jac < 0, jac, 0).sum(0)


def np_purity(signal):
    """P = ½ (1 + Σ_t g_t / Σ_t |g_t|), the chance of keeping the positive gradients."""
    return 0.5 * (1 + signal.sum(0) / np.abs(signal).sum(0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_graddrop_pure_coordinates_keep_everything(level, dtype):
    # Every element has one sign (or zero) across tasks: P ∈ {0, 1}, so d = Σ_t g_t.
    jac = np.array(
        [
            [[1.0, -2.0, 0.0, 3.0], [0.5, -1.0, 2.0, 1.0]],
            [[2.0, -0.5, 1.0, 0.0], [0.0, -3.0, 1.0, 4.0]],
            [[0.0, -1.0, 2.0, 1.0], [1.5, 0.0, 0.5, 2.0]],
        ]
    )  # [T=3, B=2, 4]: at "representation" level P uses the batch sums, still pure.
    updates = graddrop_draws(jac, dtype, 32, level=level)
    np.testing.assert_allclose(updates, np.broadcast_to(jac.sum(0), updates.shape), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_graddrop_parameters_level_draws_and_expectation(dtype):
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 12))
    jac[:, 0] = [1.0, -1.0, 2.0]  # P = ¾
    jac[:, 1] = [-3.0, 1.0, 0.0]  # P = ¼
    positive, negative = np_sign_sums(jac)
    purity = np_purity(jac)
    num_draws = 4000
    updates = graddrop_draws(jac, dtype, num_draws, level="parameters")
    # Each draw keeps, per coordinate, exactly one sign: the sum of positive or of negative parts.
    kept_positive = np.isclose(updates, positive, **tol(dtype))
    kept_negative = np.isclose(updates, negative, **tol(dtype))
    assert np.all(kept_positive ^ kept_negative)
    # The positive side is kept with probability P (5 sigma Monte-Carlo bound).
    bound = 5 * np.sqrt(purity * (1 - purity) / num_draws) + 1e-3
    np.testing.assert_array_less(np.abs(kept_positive.mean(0) - purity), bound)
    expected = purity * positive + (1 - purity) * negative
    spread = np.abs(positive - negative) * bound
    np.testing.assert_array_less(np.abs(updates.mean(0) - expected), spread + 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graddrop_leak_expectation(dtype):
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(3, 8))
    leak = np.array([0.0, 0.5, 1.0])
    purity = np_purity(jac)
    num_draws = 4000
    updates = graddrop_draws(jac, dtype, num_draws, level="parameters", leak=tuple(leak))
    # d = Σ_t ℓ_t g_t + (1 − ℓ_t) (P g_t⁺ + (1 − P) g_t⁻) in expectation.
    dropped = (1 - leak)[:, None] * jac
    expected = (
        (leak[:, None] * jac).sum(0)
        + purity * np.where(jac > 0, dropped, 0).sum(0)
        + (1 - purity) * np.where(jac < 0, dropped, 0).sum(0)
    )
    pos, neg = np_sign_sums(dropped)
    bound = 5 * np.sqrt(purity * (1 - purity) / num_draws) * np.abs(pos - neg) + 1e-3
    np.testing.assert_array_less(np.abs(updates.mean(0) - expected), bound)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graddrop_representation_level_uses_batch_sums(dtype):
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(3, 4, 6))  # [T, B, features]
    purity = np_purity(jac.sum(1))  # [features], from the batch-summed gradients
    positive, negative = np_sign_sums(jac)  # [B, features], per example
    num_draws = 3000
    updates = graddrop_draws(jac, dtype, num_draws, level="representation")
    kept_positive = np.isclose(updates, positive, **tol(dtype))
    kept_negative = np.isclose(updates, negative, **tol(dtype))
    both = np.isclose(positive, negative)  # an example whose tasks all share one sign
    assert np.all((kept_positive ^ kept_negative) | both)
    # One threshold U per feature, shared over the batch: the kept sign agrees across examples.
    side = np.where(both, np.nan, kept_positive.astype(float))
    assert np.all(np.nanmin(side, 1) == np.nanmax(side, 1))
    freq = np.nanmean(side, axis=(0, 1))
    bound = 5 * np.sqrt(purity * (1 - purity) / num_draws) + 1e-3
    np.testing.assert_array_less(np.abs(freq - purity), bound)


# --- Krum ---------------------------------------------------------------------------------


def np_krum(jac, n_byzantine, n_selected):
    """Blanchard et al.: score_i = Σ of the T − f − 2 smallest ‖g_i − g_j‖², j ≠ i; average the
    ``n_selected`` lowest scores (ties to the lower index). Returns (weights, score margin)."""
    num_tasks = len(jac)
    distances = np.sum((jac[:, None] - jac[None]) ** 2, axis=-1)
    scores = np.array(
        [
            np.sort(np.delete(distances[i], i))[: num_tasks - n_byzantine - 2].sum()
            for i in range(num_tasks)
        ]
    )
    order = np.argsort(scores, kind="stable")
    weights = np.zeros(num_tasks)
    weights[order[:n_selected]] = 1.0 / n_selected
    margin = (
        np.inf
        if n_selected == num_tasks
        else (scores[order[n_selected]] - scores[order[n_selected - 1]])
        / scores[order[n_selected - 1]]
    )
    return weights, margin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_selected", [1, 2])
@pytest.mark.parametrize("num_tasks", [5, 6, 7])
def test_krum_matches_reference(num_tasks, n_selected, dtype):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        jac = rng.normal(size=(num_tasks, 5))
        jac[-1] *= 10.0  # one Byzantine-looking gradient
        ref_w, margin = np_krum(jac, 1, n_selected)
        assert margin > 1e-3  # a clear winner, so float32 must agree too
        weights, update, _ = run("krum", jac, dtype, n_byzantine=1, n_selected=n_selected)
        np.testing.assert_array_equal(weights, ref_w)
        np.testing.assert_allclose(update, jac.T @ ref_w, **tol(dtype))
        assert weights[-1] == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_krum_ties_go_to_lower_index(dtype):
    # Rows 1, 2, 3, 4 all score 2 (one duplicate at distance 0 plus one at distance 2).
    jac = np.array(
        [
            [5.0, 5.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    for n_selected in (1, 2):
        ref_w, margin = np_krum(jac, 1, n_selected)
        assert margin == 0.0
        weights, update, _ = run("krum", jac, dtype, n_byzantine=1, n_selected=n_selected)
        np.testing.assert_array_equal(weights, ref_w)
        np.testing.assert_allclose(update, jac.T @ ref_w, **tol(dtype))
    np.testing.assert_array_equal(np.flatnonzero(weights), [1, 2])


# --- Trimmed mean -------------------------------------------------------------------------


def np_trimmed_mean(jac, trim_number):
    """Yin et al.: per coordinate, drop the k largest and k smallest values, average the rest."""
    ordered = np.sort(jac, axis=0)
    return ordered[trim_number : len(jac) - trim_number].mean(0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tasks", "trim_number"), [(3, 0), (3, 1), (5, 1), (6, 2), (7, 3)])
def test_trimmed_mean_matches_reference(num_tasks, trim_number, dtype):
    for seed in range(2):
        rng = np.random.default_rng(seed)
        jac = rng.normal(size=(num_tasks, 5)) * rng.uniform(0.1, 10.0, size=(num_tasks, 1))
        jac[0, 0] = 1e3  # an outlier, trimmed whenever trim_number ≥ 1
        weights, update, _ = run("trimmed_mean", jac, dtype, trim_number=trim_number)
        assert weights is None
        np.testing.assert_allclose(update, np_trimmed_mean(jac, trim_number), **tol(dtype))


def test_trimmed_mean_hand_made_golden():
    jac = np.array(
        [
            [1.0, -5.0, 0.0, 2.0, 2.0],
            [2.0, 0.0, 0.0, 2.0, -1.0],
            [100.0, 1.0, 3.0, 2.0, 4.0],
            [3.0, 2.0, -9.0, 2.0, 0.0],
            [-50.0, 3.0, 1.0, 2.0, 1.0],
        ]
    )
    _, update, _ = run("trimmed_mean", jac, jnp.float64, trim_number=1)
    np.testing.assert_allclose(update, [2.0, 1.0, 1.0 / 3.0, 2.0, 1.0])
    np.testing.assert_allclose(update, np_trimmed_mean(jac, 1))
