"""Extreme gradient scales and non-finite losses: every method stays finite.

* **extreme scales** — for every registry name (built with the claims table's
  hyper-parameters), one float32 ``[T, P]`` Jacobian is run as given, with one row scaled by
  1e30 (its ``‖g‖²`` overflows float32), one row scaled by 1e-30, and with every row scaled by
  1e20 and by 1e-20 (``J Jᵀ`` over- and underflows). The update is finite in every case. Where
  the table claims a homogeneity degree ``k`` (``d(cJ) = c^k d(J)``), the uniformly scaled
  updates have the unscaled update's direction (cosine ≈ 1) and norm ``c^k ‖d‖``; methods with
  no claimed degree (``TABLE[name].degree is None``: step sizes on raw Gram entries, learned
  weights) are held to finiteness only, for the reason written in the table.
* **mtljax.aggregate** — the one-shot function gives a finite, non-zero update at 1e20 for the
  methods whose float32 Gram matrix used to overflow or underflow there.
* **FAMO's state** — a NaN loss, dropped by the train step's ``nonfinite="drop_task"``, or a
  NaN loss after the update leaves FAMO's state finite and the task's entries unchanged, and
  later steps apply.

Each method compiles once: the cases are a batch (``vmap``) of one jitted run.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from method_table import TABLE
from properties import build, extra_inputs

import mtljax
from mtljax import MultiTaskLoss, Tasks
from mtljax.methods import method_names

NUM_TASKS, DIM = 3, 6
UNIFORM = {"all_1e20": 1e20, "all_1e-20": 1e-20}
ROW = {"row0_1e30": 1e30, "row0_1e-30": 1e-30}
CASES = ("as_given", *UNIFORM, *ROW)
NAMES = sorted(TABLE)


def test_every_registered_method_is_tested():
    assert set(NAMES) == set(method_names())


def _jacobians() -> np.ndarray:
    """``[len(CASES), T, P]`` float32: the base Jacobian, then each scaled case."""
    base = np.random.default_rng(7).normal(size=(NUM_TASKS, DIM)).astype(np.float32)
    out = [base]
    out += [base * np.float32(c) for c in UNIFORM.values()]
    for c in ROW.values():
        scaled = base.copy()
        scaled[0] *= np.float32(c)
        out.append(scaled)
    return np.stack(out)


LOSSES = np.array([0.8, 1.3, 2.1], np.float32)


@functools.cache
def _updates(name: str) -> dict[str, np.ndarray]:
    """``{case: d}`` of method ``name`` from its initial state (one compilation)."""
    method = build(name, NUM_TASKS, **TABLE[name].build_hparams(NUM_TASKS))

    def one(jac):
        zeros = jnp.zeros(jac.shape[1:], jac.dtype)
        out = method.apply(jac, method.init(zeros), zeros, task_losses=jnp.asarray(LOSSES),
                           **extra_inputs(method, jac))
        return out.updates

    updates = np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(_jacobians())), np.float64)
    return dict(zip(CASES, updates, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_update_is_finite_at_extreme_scales(name):
    for case, d in _updates(name).items():
        assert np.all(np.isfinite(d)), f"{name}, {case}: non-finite update {d}"


@pytest.mark.parametrize("name", [n for n in NAMES if TABLE[n].degree is not None])
def test_uniform_scale_keeps_the_direction(name):
    """``d(cJ) = c^k d(J)`` at ``c = 1e±20`` (float32 Gram entries 1e±40): same direction
    (cosine within 1e-5 of 1) and norm ``c^k ‖d‖`` (relative 1e-3)."""
    updates, degree = _updates(name), TABLE[name].degree
    base = updates["as_given"]
    base_norm = np.linalg.norm(base)
    assert base_norm > 0, f"{name}: zero update on the base Jacobian"
    for case, c in UNIFORM.items():
        d = updates[case]
        norm = np.linalg.norm(d)
        cosine = float(d @ base / (norm * base_norm)) if norm > 0 else 0.0
        assert cosine > 1 - 1e-5, f"{name}, {case}: cosine {cosine} to the unscaled update"
        ratio = np.log10(norm / base_norm) / np.log10(c)
        assert abs(ratio - degree) < 1e-3 / 20, f"{name}, {case}: degree {ratio}, not {degree}"


# Three of the methods whose float32 Gram matrix made aggregate return NaN (ConFIG,
# MoCo) or exactly 0 (IMTL-G); aggregate runs eagerly, so the others are left to the runner
# above, which calls the same Method.apply.
@pytest.mark.parametrize("name", ["config", "imtl_g", "moco"])
def test_aggregate_is_finite_and_nonzero_at_1e20(name):
    jac = _jacobians()[CASES.index("all_1e20")]
    d = np.asarray(mtljax.aggregate(name, jac, task_losses=LOSSES))
    assert np.all(np.isfinite(d)) and np.any(d != 0), f"{name}: {d}"


def test_scaled_rows_is_exact_and_in_range():
    rows, scale = mtljax.methods._base.scaled_rows(jnp.asarray(_jacobians()[1]))
    assert float(scale) == 2.0 ** round(np.log2(np.abs(_jacobians()[1]).max()))
    np.testing.assert_array_equal(np.asarray(rows) * float(scale), _jacobians()[1])
    same, one = mtljax.methods._base.scaled_rows(jnp.asarray(_jacobians()[0]))
    assert float(one) == 1.0
    np.testing.assert_array_equal(same, _jacobians()[0])


def test_row_norms_do_not_overflow():
    jac = _jacobians()
    norms = np.asarray(mtljax.methods._base.row_norms(jnp.asarray(jac[CASES.index("row0_1e30")])))
    expected = np.linalg.norm(jac[CASES.index("row0_1e30")].astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# FAMO: a non-finite loss never reaches its state.


def test_famo_nan_losses_leave_the_state_finite_and_unchanged():
    method = mtljax.get_method("famo", NUM_TASKS)
    state = method.init(None)
    losses = jnp.asarray(LOSSES)
    _, state = method.loss_weights(state, task_losses=losses)
    state = method.after_step(state, task_losses_after=0.9 * losses)
    # Task 1's loss is NaN after the update (a diverged task): its logit and Adam rows stay.
    after = method.after_step(state, task_losses_after=jnp.array([0.5, jnp.nan, 1.0]))
    _assert_finite(after)
    assert float(after.logits[1]) == float(state.logits[1])
    adam_after, adam_before = after.opt_state[1][0], state.opt_state[1][0]
    assert float(adam_after.mu[1]) == float(adam_before.mu[1])
    assert float(adam_after.nu[1]) == float(adam_before.nu[1])
    # Task 2's loss is NaN before the update, and the caller did not mask it: NaN weights
    # (surfaced), but the state records the task as absent and keeps its log loss.
    weights, before = method.loss_weights(after, task_losses=jnp.array([0.5, 1.0, jnp.nan]))
    assert np.all(np.isnan(np.asarray(weights)))
    _assert_finite(before)
    assert not bool(before.present[2])
    assert float(before.log_gaps[2]) == float(after.log_gaps[2])
    stepped = method.after_step(before, task_losses_after=jnp.array([0.4, 0.9, jnp.nan]))
    _assert_finite(stepped)
    assert float(stepped.logits[2]) == float(before.logits[2])


def _assert_finite(state):
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(leaf))), state


def _mse(params, batch, i):
    rep = jnp.tanh(batch["x"] @ params["shared"]["w1"])
    return jnp.mean((rep @ params["heads"][f"t{i}"]["w"] - batch["y"][:, i]) ** 2)


def _nan_label_losses(params, batch):
    # On the batches flagged "bad" task t1's loss is NaN (a NaN label); its gradient rows stay
    # finite, so the step drops t1 alone and trains the others.
    bad = jnp.where(batch["bad"], jnp.nan, 0.0)
    return {"t0": _mse(params, batch, 0), "t1": _mse(params, batch, 1) + bad,
            "t2": _mse(params, batch, 2)}


def test_famo_drop_task_step_keeps_training_after_a_nan_label():
    """Through ``make_train_step(nonfinite="drop_task")``: a NaN in task t1's loss for one
    step; FAMO's state stays finite, t1's logit is unchanged by that step, and the later
    (finite) steps apply and move the logits."""
    from toy import make_problem

    _, _, params, batch = make_problem()
    method = mtljax.get_method("famo", NUM_TASKS)
    opt = optax.sgd(0.1)
    step = jax.jit(mtljax.make_train_step(
        MultiTaskLoss.from_fn(_nan_label_losses), Tasks(["t0", "t1", "t2"]), method, opt,
        nonfinite="drop_task", diagnostics=True))
    state = mtljax.init_train_state(params, opt, method)
    state, _ = step(state, dict(batch, bad=jnp.asarray(False)))
    before = state.method_state
    state, metrics = step(state, dict(batch, bad=jnp.asarray(True)))
    assert bool(metrics["nonfinite"][1])
    _assert_finite(state.method_state)
    assert float(state.method_state.logits[1]) == float(before.logits[1])
    logits = np.asarray(state.method_state.logits)
    for _ in range(2):
        state, metrics = step(state, dict(batch, bad=jnp.asarray(False)))
        assert not bool(metrics["skipped"])
        assert np.all(np.isfinite(np.asarray(metrics["weights"])))
    _assert_finite(state.method_state)
    assert np.all(np.asarray(state.method_state.logits) != logits)


def test_sdmgrad_step_with_a_loss_scaled_by_1e30_has_finite_weights():
    """SDMGrad in the train step, task t0's loss times 1e30 (its gradient rows ~1e30, their
    squared norms beyond float32): finite weights, the update applied. (With diagnostics the
    step's own Gram matrix overflows and flags t0 instead: flagged, never silent.)"""
    from toy import make_problem

    _, _, params, batch = make_problem()

    def losses(p, b):
        return {"t0": 1e30 * _mse(p, b, 0), "t1": _mse(p, b, 1), "t2": _mse(p, b, 2)}

    method = mtljax.get_method("sdmgrad", NUM_TASKS)
    opt = optax.sgd(1e-32)
    step = jax.jit(mtljax.make_train_step(MultiTaskLoss.from_fn(losses), Tasks(["t0", "t1", "t2"]),
                                          method, opt, diagnostics=False))
    state, metrics = step(mtljax.init_train_state(params, opt, method), (batch,) * 3)
    assert not bool(metrics["skipped"]) and not np.any(metrics["nonfinite"])
    assert np.all(np.isfinite(np.asarray(metrics["weights"])))
    _assert_finite(state.method_state)
