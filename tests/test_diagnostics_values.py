"""The training diagnostics' values, against NumPy on known Jacobians.

:func:`mtljax.gram_diagnostics` and the diagnostics in a train step's metrics are compared with
their definitions computed in NumPy from the Jacobian itself (not from the Gram matrix):

* ``grad_norms[t] = ‖g_t‖``; ``cosine[s, t] = g_s·g_t / (‖g_s‖‖g_t‖)`` (0 for a zero row);
* ``conflict_fraction``: the fraction of the pairs s < t with a negative cosine;
* ``magnitude_similarity[s, t] = 2‖g_s‖‖g_t‖ / (‖g_s‖² + ‖g_t‖²)``;
* ``update_norm = ‖d‖`` and ``update_cosine[t] = g_t·d / (‖g_t‖‖d‖)``.

The Jacobian is chosen so that a wrong value shows: 2 of the 6 pairs conflict (not half), the
norms are not 1, and the update is not along any task. The step runs a linear model whose
shared Jacobian is known exactly, on one device and data parallel over 8 (shard_map, where the
losses are averaged over devices, and pmap, where the gradients are).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtljax
from mtljax import parallel

# 4 tasks, 5 parameters. Conflicting pairs: (0, 2) and (1, 3); norms 1.5 to 2.9.
JAC = np.array([
    [1.0, 1.0, 0.0, 0.5, 0.0],
    [0.0, 2.0, 1.0, 0.0, 0.0],
    [-1.2, 0.5, 0.3, -0.4, 1.0],
    [1.0, -0.9, 1.5, 0.5, 2.0],
])
NAMES = ("a", "b", "c", "d")


def numpy_diagnostics(jac: np.ndarray, d: np.ndarray) -> dict:
    """The definitions, from the rows and the update themselves (float64)."""
    norms = np.linalg.norm(jac, axis=1)
    t = len(jac)
    cos = np.zeros((t, t))
    gms = np.zeros((t, t))
    for s in range(t):
        for r in range(t):
            if norms[s] > 0 and norms[r] > 0:
                cos[s, r] = jac[s] @ jac[r] / (norms[s] * norms[r])
                gms[s, r] = 2 * norms[s] * norms[r] / (norms[s] ** 2 + norms[r] ** 2)
    pairs = [(s, r) for s in range(t) for r in range(s + 1, t)]
    conflicts = sum(cos[s, r] < 0 for s, r in pairs)
    d_norm = np.linalg.norm(d)
    update_cos = np.array([
        jac[s] @ d / (norms[s] * d_norm) if norms[s] > 0 and d_norm > 0 else 0.0
        for s in range(t)
    ])
    return {
        "grad_norms": norms,
        "cosine": cos,
        "conflict_fraction": conflicts / len(pairs),
        "magnitude_similarity": gms,
        "update_norm": d_norm,
        "update_cosine": update_cos,
    }


def assert_diagnostics(got: dict, jac: np.ndarray, d: np.ndarray, rtol: float):
    want = numpy_diagnostics(jac, d)
    for key, value in want.items():
        np.testing.assert_allclose(np.asarray(got[key], np.float64), value, rtol=rtol,
                                   atol=rtol, err_msg=key)


def test_numpy_definitions_on_the_chosen_jacobian():
    """The fixture does what its comment says (so the checks below can tell right from wrong):
    2 of 6 pairs conflict, norms differ from 1, and a zero row gives zero cosines."""
    want = numpy_diagnostics(JAC, JAC.sum(0))
    assert want["conflict_fraction"] == pytest.approx(2 / 6)
    assert np.all(np.abs(want["grad_norms"] - 1.0) > 0.4)
    zero = numpy_diagnostics(np.vstack([JAC, np.zeros(5)]), JAC.sum(0))
    assert np.all(zero["cosine"][-1] == 0) and zero["update_cosine"][-1] == 0


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (0.7, 0.1, 0.0, 0.2)])
@pytest.mark.parametrize("zero_row", [False, True])
def test_gram_diagnostics_match_numpy(dtype, rtol, weights, zero_row):
    """``gram_diagnostics(G, G w, wᵀGw)`` equals the definitions at ``d = Jᵀw``."""
    jac = np.vstack([JAC, np.zeros((1, 5))]) if zero_row else JAC
    w = np.array(weights + ((0.3,) if zero_row else ()))
    g = jnp.asarray(jac @ jac.T, dtype)
    wj = jnp.asarray(w, dtype)
    got = jax.jit(mtljax.gram_diagnostics)(g, g @ wj, wj @ g @ wj)
    assert_diagnostics(got, jac, jac.T @ w, rtol)


# ---------------------------------------------------------------------------------------------
# The train step: L_t(θ, h) = mean_i a_it · θ + ½ h_t², so the shared Jacobian is mean_i a_i.

BATCH = 16


def linear_problem():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(BATCH, len(NAMES), JAC.shape[1]))
    a = JAC[None] + noise - noise.mean(0, keepdims=True)  # mean over the batch: JAC exactly
    tasks = mtljax.Tasks(list(NAMES))

    def encode(params, batch):
        del batch
        return params["shared"]["theta"]

    def decode(params, theta, batch):
        losses = {
            name: jnp.mean(batch["a"][:, i] @ theta) + 0.5 * params["heads"][name] ** 2
            for i, name in enumerate(NAMES)
        }
        return losses, {}

    params = {
        "shared": {"theta": jnp.asarray(rng.normal(size=JAC.shape[1]), jnp.float32)},
        "heads": {name: jnp.asarray(1.0, jnp.float32) for name in NAMES},
    }
    return tasks, mtljax.MultiTaskLoss(encode, decode), params, {
        "a": jnp.asarray(a, jnp.float32)
    }


@functools.cache
def run_step(method_name: str, mode: str):
    """One SGD(1) step; returns (metrics, shared update d) as float64 NumPy."""
    tasks, loss, params, batch = linear_problem()
    method = mtljax.get_method(method_name, len(NAMES))
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    if mode == "single":
        step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt))
        new, metrics = step(state, batch)
    elif mode == "shard_map":
        step = mtljax.make_train_step(loss, tasks, method, opt, axis_name="data")
        mapped = parallel.shard_map_step(step, parallel.data_mesh(jax.devices()[:8]))
        new, metrics = mapped(state, batch)
    else:
        step = mtljax.make_train_step(loss, tasks, method, opt, axis_name="data", reduce="grad")
        new, metrics = parallel.pmap_step(step, devices=jax.devices()[:8])(
            parallel.replicate(state, 8), parallel.split_batch(batch, 8))
        new, metrics = parallel.unreplicate(new), parallel.unreplicate(metrics)
    d = np.asarray(state.params["shared"]["theta"], np.float64) - np.asarray(
        new.params["shared"]["theta"], np.float64)
    return jax.tree.map(lambda x: np.asarray(x, np.float64), metrics), d


# mgda: a Gram-space method (diagnostics from G and w), on 1 and 8 devices; ew: a loss method
# (diagnostics force the Jacobian); trimmed_mean: no weights (diagnostics from J d and ‖d‖).
@pytest.mark.parametrize("method_name, mode", [
    ("mgda", "single"), ("mgda", "shard_map"), ("mgda", "pmap"), ("ew", "single"),
    ("trimmed_mean", "single"),
])
def test_step_metrics_match_numpy(method_name, mode):
    """The step's diagnostics equal the definitions on the known Jacobian and the update the
    step applied (float32 model: rtol 2e-5), and the update is ``Jᵀ weights`` when there are
    weights."""
    metrics, d = run_step(method_name, mode)
    if np.all(np.isfinite(metrics["weights"])):
        np.testing.assert_allclose(d, JAC.T @ metrics["weights"], rtol=2e-5, atol=2e-5)
    assert_diagnostics(metrics, JAC, d, 2e-5)


def test_data_parallel_metrics_equal_single_device():
    """Averaging over 8 devices does not change any diagnostic (the Jacobian is global)."""
    single, _ = run_step("mgda", "single")
    for mode in ("shard_map", "pmap"):
        other, _ = run_step("mgda", mode)
        for key in ("cosine", "conflict_fraction", "update_norm", "update_cosine"):
            np.testing.assert_allclose(other[key], single[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{mode}: {key}")
