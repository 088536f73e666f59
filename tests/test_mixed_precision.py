"""Mixed precision: bf16 Jacobians give float32 weights and solves, and bf16 updates.

A method fed a bfloat16 Jacobian computes its Gram matrix and T×T solves in at least float32
(:func:`mtljax.linalg.gram_dtype`) and returns the update in bfloat16. Compared with the same
method on the float32 copy of the *same* (bf16-rounded) Jacobian, the only differences are the
final rounding of the update to bf16 (at most half a bf16 ulp, 2⁻⁸ relative) and, for
methods that do elementwise work on the gradients, bf16 arithmetic there (measured ≤ 2.8e-3 on
this input). Tolerances, relative to ``max(‖d‖∞, ‖J‖^k)`` (k the method's homogeneity degree,
see ``tests/properties.py``), with ε_bf16 = 2⁻⁷ the bf16 machine epsilon:

* closed-form and finite (active-set) methods: ``ε_bf16`` ≈ 7.8e-3;
* iterative solvers (the table's ``SOLVER`` rows): ``2·ε_bf16`` ≈ 1.6e-2.

Randomised methods compare two runs from the same initial state, hence the same key.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from method_table import SOLVER, TABLE
from properties import assert_close, natural_scale, runner, zoo
from toy import make_problem

import mtljax

BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2⁻⁷: one ulp at 1; rounding errs ≤ 2⁻⁸
CLOSED_FORM_RTOL = BF16_EPS
SOLVER_RTOL = 2 * BF16_EPS
# (T, P) of the method check: a zoo shape, so the float32 runner is shared with the property
# tests when they run in the same session.
SHAPE = (3, 17)


def tolerance(name: str) -> float:
    iterative = TABLE[name].rtol["float32"] >= SOLVER["float32"]
    return SOLVER_RTOL if iterative else CLOSED_FORM_RTOL


@pytest.mark.parametrize("name", sorted(TABLE))
def test_bf16_jacobian_matches_float32(name):
    member = zoo(*SHAPE)[0]  # the Gaussian member
    jac_bf16 = jnp.asarray(member.jac, jnp.bfloat16)
    jac_f32 = jac_bf16.astype(jnp.float32)
    losses = jnp.asarray(member.losses, jnp.float32)
    fn = runner(name, SHAPE[0])
    d_bf16, w_bf16 = fn(jac_bf16, losses.astype(jnp.bfloat16))
    d_f32, w_f32 = fn(jac_f32, losses.astype(jnp.bfloat16).astype(jnp.float32))

    assert d_bf16.dtype == jnp.bfloat16, f"{name}: update dtype {d_bf16.dtype}"
    assert d_bf16.shape == (SHAPE[1],)
    d = np.asarray(d_bf16, np.float64)
    assert np.all(np.isfinite(d)), f"{name}: non-finite bf16 update {d}"
    if w_bf16 is not None:
        # The weights (and so the T×T solves that give them) are at least float32.
        assert jnp.promote_types(w_bf16.dtype, jnp.float32) == w_bf16.dtype, (
            f"{name}: weights in {w_bf16.dtype}")
        assert np.all(np.isfinite(np.asarray(w_bf16)))
    scale = natural_scale(np.asarray(jac_f32, np.float64), TABLE[name].degree)
    assert_close(d, d_f32, tolerance(name), scale, f"{name}: bf16 vs float32 update")


def run_step(name, compute_dtype, diagnostics):
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method(name, len(tasks))
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=diagnostics,
                                          compute_dtype=compute_dtype))
    new, metrics = step(state, batch)
    return state, new, metrics


# EW without diagnostics takes the one-backward-pass shortcut; MGDA the Jacobian path.
@pytest.mark.parametrize(("name", "diagnostics"), [("ew", False), ("mgda", True)])
def test_train_step_compute_dtype(name, diagnostics):
    """``compute_dtype=bf16``: float32 master parameters and optimizer state; the update is
    the float32 step's up to the bf16 forward/backward round-off: within ``4·ε_bf16`` of each
    leaf's largest entry (measured ≤ 1.0e-2), the losses within ``ε_bf16`` (measured 2.4e-3)."""
    state, mixed, m_mixed = run_step(name, jnp.bfloat16, diagnostics)
    _, full, m_full = run_step(name, None, diagnostics)
    for leaf in jax.tree.leaves((mixed.params, mixed.opt_state)):
        assert leaf.dtype != jnp.bfloat16
    for leaf in jax.tree.leaves(mixed.params):
        assert leaf.dtype == jnp.float32
    assert m_mixed["losses"].dtype == jnp.float32
    assert not bool(m_mixed["skipped"])
    # With SGD(1) the update is params - new_params.
    for p0, a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(mixed.params),
                        jax.tree.leaves(full.params), strict=True):
        d_mixed, d_full = np.asarray(p0 - a, np.float64), np.asarray(p0 - b, np.float64)
        assert_close(d_mixed, d_full, 4 * BF16_EPS, 0.0, f"{name}: bf16 step vs float32 step")
    np.testing.assert_allclose(m_mixed["losses"], m_full["losses"], rtol=BF16_EPS)


def test_compute_dtype_must_be_floating():
    tasks, loss, params, _ = make_problem()
    method = mtljax.get_method("ew", len(tasks))
    with pytest.raises(ValueError, match="floating"):
        mtljax.make_train_step(loss, tasks, method, optax.sgd(0.1), compute_dtype=jnp.int32)
