"""Every method against the properties its paper claims (tests/method_table.py), on the zoo.

Each (method, property, dtype) is one test that runs over every zoo member; failures name the
member. Reductions to known methods and the optax contract are tested per method below.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from method_table import TABLE
from properties import (
    DTYPES,
    SCALES,
    assert_close,
    assert_homogeneous,
    assert_non_conflicting,
    assert_permutation_equivariant,
    assert_shape_and_finite,
    assert_zero_for_zero_jacobian,
    build,
    extra_inputs,
    natural_scale,
    permutation,
    run,
    runner,
    shapes,
    zoo,
)

from mtljax.methods import REGISTRY

CLAIMS = {
    # Shape, dtype, finiteness, and d = 0 for the zero Jacobian.
    "shape_and_finite": lambda c: True,
    "non_conflicting": lambda c: c.non_conflicting is not None,
    "permutation_equivariant": lambda c: c.permutation,
    "homogeneous": lambda c: c.degree is not None,
}


def claimed(prop):
    """``pytest.param(name, dtype)`` for every method claiming ``prop``; xfail where listed."""
    out = []
    for name, claims in TABLE.items():
        if not CLAIMS[prop](claims):
            continue
        marks = ()
        if prop in claims.xfail:
            marks = pytest.mark.xfail(reason=claims.xfail[prop], strict=True)
        out += [pytest.param(name, dtype, marks=marks, id=f"{name}-{dtype}") for dtype in DTYPES]
    return out


def members(name, dtype, num_tasks_filter=lambda t: True):
    """The zoo members of ``dtype``'s shapes method ``name`` is defined for (T ≥ its
    ``min_tasks``)."""
    for t, p in shapes(dtype):
        if t >= TABLE[name].min_tasks and num_tasks_filter(t):
            yield from zoo(t, p)


def check_all(check, members_iter):
    """Runs ``check(member)`` on every member and reports every failing one at once."""
    failures = []
    for member in members_iter:
        try:
            check(member)
        except AssertionError as err:
            failures.append(f"{member!r}: {err}")
    assert not failures, "\n\n".join(failures)


def test_table_matches_registry():
    assert set(TABLE) == set(REGISTRY)


@pytest.mark.parametrize("name, dtype", claimed("shape_and_finite"))
def test_shape_and_finite(name, dtype):
    def check(m):
        d, w = run(runner(name, m.num_tasks), m.jac, m.losses, dtype)
        assert_shape_and_finite(d, m.jac.shape[1], dtype)
        assert_zero_for_zero_jacobian(m.jac, d)
        if w is not None:
            assert w.shape == (m.num_tasks,) and np.all(np.isfinite(w)), f"weights {w}"

    check_all(check, members(name, dtype))


@pytest.mark.parametrize("name, dtype", claimed("non_conflicting"))
def test_non_conflicting(name, dtype):
    claims = TABLE[name]
    where = {
        "all": lambda m: True,
        "independent": lambda m: m.independent,
        "two_tasks": lambda m: m.num_tasks == 2,
        "primary": lambda m: True,
    }[claims.non_conflicting]

    def check(m):
        d, _ = run(runner(name, m.num_tasks), m.jac, m.losses, dtype)
        jac = np.asarray(jnp.asarray(m.jac, dtype), np.float64)
        if claims.non_conflicting == "primary":  # the primary objective: the primary rows' sum
            jac = jac[claims.primary_tasks(m.num_tasks)].sum(0, keepdims=True)
        assert_non_conflicting(jac, d, claims.rtol[dtype], natural_scale(jac, claims.degree))

    check_all(check, filter(where, members(name, dtype)))


@pytest.mark.parametrize("name, dtype", claimed("permutation_equivariant"))
def test_permutation_equivariant(name, dtype):
    claims = TABLE[name]

    def check(m):
        perm = permutation(m.num_tasks)
        d, _ = run(runner(name, m.num_tasks), m.jac, m.losses, dtype)
        moved = tuple(perm) if claims.task_hparams else None
        d_perm, _ = run(runner(name, m.num_tasks, moved), m.jac[perm], m.losses[perm], dtype)
        assert_permutation_equivariant(d, d_perm, claims.rtol[dtype],
                                       natural_scale(m.jac, claims.degree))

    check_all(check, members(name, dtype, lambda t: t >= claims.permutation_min_tasks))


@pytest.mark.parametrize("name, dtype", claimed("homogeneous"))
def test_homogeneous(name, dtype):
    claims = TABLE[name]

    def check(m):
        d, _ = run(runner(name, m.num_tasks), m.jac, m.losses, dtype)
        for c in SCALES:
            d_scaled, _ = run(runner(name, m.num_tasks), c * m.jac, m.losses, dtype)
            assert_homogeneous(d, d_scaled, c, claims.degree, claims.rtol[dtype],
                               natural_scale(m.jac, claims.degree))

    check_all(check, members(name, dtype))


# ---------------------------------------------------------------------------------------------
# Reductions to known methods.


def orthonormal_rows(num_tasks, dim=17, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, num_tasks)))
    return q.T


def non_conflicting_rows(num_tasks, dim=17, seed=0):
    """Rows with pairwise non-negative dot products (positive entries), scaled differently."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, size=(num_tasks, dim)) * rng.uniform(0.5, 3.0, (num_tasks, 1))


# The reductions run at T = 5, a zoo shape of both dtypes, so they reuse the zoo's compilations.
T = 5
LOSSES = np.array([0.7, 1.3, 2.1, 0.9, 1.6])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cagrad_without_conflict_aversion_is_mean(dtype):
    """CAGrad with c = 0 is the mean gradient g0."""
    jac = np.random.default_rng(3).normal(size=(T, 17))
    d, _ = run(runner("cagrad", T, overrides=(("c", 0.0),)), jac, LOSSES, dtype)
    assert_close(d, jac.mean(0), TABLE["cagrad"].rtol[dtype], 1.0, "cagrad(c=0) vs mean")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pcgrad_on_non_conflicting_gradients_is_sum(dtype):
    jac = non_conflicting_rows(T)
    d, w = run(runner("pcgrad", T), jac, LOSSES, dtype)
    assert_close(d, jac.sum(0), TABLE["pcgrad"].rtol[dtype], 1.0, "pcgrad vs sum")
    np.testing.assert_allclose(w, np.ones(T), rtol=TABLE["pcgrad"].rtol[dtype])


@pytest.mark.parametrize("name", ["mgda", "imtl_g"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_orthonormal_rows_give_equal_weights(name, dtype):
    """MGDA's min-norm point and IMTL-G's equal projections are the mean on orthonormal rows."""
    jac = orthonormal_rows(T)
    d, w = run(runner(name, T), jac, LOSSES, dtype)
    rtol = TABLE[name].rtol[dtype]
    np.testing.assert_allclose(w, np.full(T, 1 / T), rtol=rtol, atol=rtol)
    assert_close(d, jac.mean(0), rtol, 1.0, f"{name} on orthonormal rows vs mean")


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dual_cone_projection_keeps_non_conflicting_mean(name, dtype):
    """On non-conflicting J every gradient (so the mean) lies in the dual cone: d = mean."""
    jac = non_conflicting_rows(T)
    d, _ = run(runner(name, T), jac, LOSSES, dtype)
    assert_close(d, jac.mean(0), TABLE[name].rtol[dtype], 1.0, f"{name} vs mean")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nash_mtl_two_tasks_is_scaled_sum_of_unit_gradients(dtype):
    """At T = 2, G α = 1/α gives α_t = 1/(‖g_t‖ √(1+cos)): d = √2 (u1+u2)/‖u1+u2‖ (norm
    clip disabled)."""
    jac = np.random.default_rng(4).normal(size=(2, 17)) * np.array([[0.5], [4.0]])
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    expected = np.sqrt(2.0) * units.sum(0) / np.linalg.norm(units.sum(0))
    d, _ = run(runner("nash_mtl", 2, overrides=(("max_norm", 0.0),)), jac, LOSSES[:2], dtype)
    assert_close(d, expected, TABLE["nash_mtl"].rtol[dtype], 1.0, "nash_mtl at T=2")


# ---------------------------------------------------------------------------------------------
# The optax contract.


@pytest.mark.parametrize("name", sorted(TABLE))
def test_contract(name):
    """jit traces once for two calls; the state is a pytree of arrays; ``update`` equals
    ``apply(...).updates``; the method chains in front of ``optax.sgd`` with the losses passed
    as an extra argument; a pytree Jacobian, with a state initialised from pytree parameters
    (methods with P-sized state keep one copy per leaf), gives the flat Jacobian's update up to
    the table's float32 tolerance (deterministic methods: the Gram matrix summed leaf by leaf
    differs from the flat one by round-off, which an iterative solver may amplify up to its
    tested accuracy)."""
    num_tasks, dim, lr = 3, 17, 0.1
    claims = TABLE[name]
    method = build(name, num_tasks, **claims.build_hparams(num_tasks))
    tx = optax.chain(method.as_optax(), optax.sgd(lr))
    params = jnp.zeros((dim,), jnp.float32)
    tree_params = {"a": jnp.zeros((5,), jnp.float32), "b": jnp.zeros((3, 4), jnp.float32)}
    traces = []

    @jax.jit
    def step(jac, losses, state, tx_state, tree_state):
        traces.append(None)
        extra = extra_inputs(method, jac)
        out = method.apply(jac, state, params, task_losses=losses, **extra)
        updates, new_state = method.update(jac, state, params, task_losses=losses, **extra)
        tx_updates, new_tx_state = tx.update(jac, tx_state, params, task_losses=losses, **extra)
        tree = {"a": jac[:, :5], "b": jac[:, 5:].reshape(num_tasks, 3, 4)}
        tree_extra = {k: tuple({"a": e[:, :5], "b": e[:, 5:].reshape(num_tasks, 3, 4)}
                               for e in v) for k, v in extra.items()}
        tree_out = method.apply(tree, tree_state, tree_params, task_losses=losses, **tree_extra)
        return out, updates, new_state, tx_updates, new_tx_state, tree_out

    rng = np.random.default_rng(5)
    state, tx_state = method.init(params), tx.init(params)
    tree_state = method.init(tree_params)
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf, jax.Array), f"state leaf {leaf!r} is not an array"
    for _ in range(2):
        jac = jnp.asarray(rng.normal(size=(num_tasks, dim)), jnp.float32)
        losses = jnp.asarray(rng.uniform(0.5, 2.0, num_tasks), jnp.float32)
        out, updates, new_state, tx_updates, tx_state, tree_out = step(
            jac, losses, state, tx_state, tree_state
        )
        np.testing.assert_allclose(updates, out.updates, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(tx_updates, -lr * out.updates, rtol=1e-6, atol=1e-7)
        assert jax.tree.structure(new_state) == jax.tree.structure(out.state)
        if claims.permutation:
            tree_d = tree_out.updates
            flat = np.concatenate([tree_d["a"], np.asarray(tree_d["b"]).reshape(-1)])
            assert_close(flat, out.updates, claims.rtol["float32"], 1.0, "pytree vs flat J")
        state, tree_state = out.state, tree_out.state
    assert len(traces) == 1, f"{name} retraced: {len(traces)} traces for two calls"
