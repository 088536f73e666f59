"""The method value (a frozen dataclass with a T-sized core), registration and hparam aliases."""

import dataclasses
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtljax
from mtljax.methods import (
    BUILTINS,
    REGISTRY,
    GradientTransform,
    GramWeighting,
    LossWeighting,
    Method,
    get_factory,
    get_method,
    gram_weighting,
    method_names,
    register_method,
    unregister_method,
)


@pytest.fixture
def registry():
    """Restores the registry after a test that registers methods."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def unit_sum(num_tasks, *, scale=1.0):
    """A user's Gram-space method: ``d = scale · Σ_t g_t / ‖g_t‖`` (zero rows get weight 0)."""

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 0.0))
        live = norms > 0 if task_mask is None else (norms > 0) & task_mask
        return jnp.where(live, scale / jnp.where(live, norms, 1.0), 0.0), state

    return gram_weighting("unit_sum", num_tasks, optax.EmptyState, weights_fn)


# --- The value ----------------------------------------------------------------------------


def test_method_is_a_plain_value():
    method = get_method("pcgrad", 3)
    assert jax.tree.map(lambda x: x, method) is method  # a leaf, not half a pytree
    assert jax.tree.leaves({"m": method}) == [method]
    moved = dataclasses.replace(method, level="representation")
    assert moved.level == "representation"
    for field in ("name", "num_tasks", "init", "core", "num_batches", "after_step"):
        assert getattr(moved, field) == getattr(method, field)
    assert moved.gram_weights is method.gram_weights and moved.kind == "gradient"
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.level = "representation"


def test_equality_and_hash():
    method = get_method("mgda", 2)
    same = dataclasses.replace(method)
    assert same == method and hash(same) == hash(method)
    assert dataclasses.replace(method, level="representation") != method
    assert len({method, same, get_method("mgda_ub", 2)}) == 2
    # Hashable, so it can be a static argument of jit.
    apply = jax.jit(lambda m, j: m.apply(j, m.init(None)).updates, static_argnums=0)
    np.testing.assert_allclose(apply(method, jnp.eye(2)), [0.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "core", "kind"),
    [("dwa", LossWeighting, "loss"), ("upgrad", GramWeighting, "gradient"),
     ("graddrop", GradientTransform, "gradient")],
)
def test_core_gives_kind_and_weight_functions(name, core, kind):
    method = get_method(name, 2)
    assert isinstance(method.core, core) and method.kind == kind
    assert (method.loss_weights is not None) == (core is LossWeighting)
    assert (method.gram_weights is not None) == (core is GramWeighting)


def test_as_optax_chains_and_passes_the_losses():
    """``optax.chain(method.as_optax(), sgd)`` forwards task_losses: SI's weights are 1/L."""
    method = get_method("si", 3)
    tx = optax.chain(method.as_optax(), optax.sgd(0.5))
    assert isinstance(method.as_optax(), optax.GradientTransformationExtraArgs)
    params = jnp.zeros(3)
    losses = jnp.array([1.0, 2.0, 4.0])
    updates, _ = jax.jit(lambda s: tx.update(jnp.eye(3), s, params, task_losses=losses))(
        tx.init(params)
    )
    np.testing.assert_allclose(updates, -0.5 / losses, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"name": ""}, "name"), ({"num_tasks": 0}, "num_tasks"), ({"init": 3}, "init"),
     ({"core": lambda g, s: (g, s)}, "core"), ({"level": "layer"}, "level"),
     ({"num_batches": 0}, "num_batches"), ({"num_batches": True}, "num_batches"),
     ({"after_step": "famo"}, "after_step")],
)
def test_invalid_method_fields_raise(change, match):
    method = get_method("pcgrad", 2)
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(method, **change)


@pytest.mark.parametrize("core", [LossWeighting, GramWeighting, GradientTransform])
def test_cores_need_a_callable(core):
    with pytest.raises(ValueError, match="callable"):
        core(None)


# --- Registration -------------------------------------------------------------------------


def test_registered_gram_method_works_everywhere(registry):
    from mtljax.cli import methods_table

    register_method("unit_sum", unit_sum, summary="sum of the unit gradients", paper="-")
    assert "unit_sum" in method_names() and get_factory("unit_sum") is unit_sum
    jac = np.array([[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(mtljax.aggregate("unit_sum", jac, scale=2.0), [2.0, 2.0])
    method = get_method("unit_sum", 3)
    assert isinstance(method, Method) and method.gram_weights is not None
    masked = method.apply(jnp.asarray(jac), method.init(None),
                          task_mask=jnp.array([True, False, True]))
    np.testing.assert_allclose(masked.weights, [0.5, 0.0, 0.0])
    row = [line for line in methods_table().splitlines() if line.startswith("unit_sum ")]
    assert row and "gradient" in row[0] and "sum of the unit gradients" in row[0]
    unregister_method("unit_sum")
    assert "unit_sum" not in method_names()
    with pytest.raises(ValueError, match="Unknown method 'unit_sum'"):
        get_method("unit_sum", 2)


def test_register_presets(registry):
    register_method("unit_sum_2", unit_sum, summary="2 × sum of unit gradients", paper="-",
                    presets={"scale": 2.0})
    np.testing.assert_allclose(mtljax.aggregate("unit_sum_2", np.eye(2)), [2.0, 2.0])
    with pytest.raises(ValueError, match="fixes"):
        get_method("unit_sum_2", 2, scale=1.0)


def test_overwrite_a_builtin_and_restore_it(registry):
    with pytest.raises(ValueError, match="built-in.*overwrite=True"):
        register_method("mgda", unit_sum, summary="s", paper="p")
    register_method("mgda", unit_sum, summary="s", paper="p", overwrite=True)
    assert get_method("mgda", 2).name == "unit_sum"
    assert mtljax.methods.mgda is not unit_sum  # the module attribute stays the built-in
    unregister_method("mgda")
    assert REGISTRY["mgda"] is BUILTINS["mgda"] and get_method("mgda", 2).name == "mgda"


def test_registration_errors(registry):
    with pytest.raises(ValueError, match="callable"):
        register_method("mine", "mtljax.methods.mgda", summary="s", paper="p")
    with pytest.raises(ValueError, match="name"):
        register_method("my method", unit_sum, summary="s", paper="p")
    with pytest.raises(ValueError, match="presets"):
        register_method("mine", unit_sum, summary="s", paper="p", presets={"c": 0.5})
    register_method("mine", unit_sum, summary="s", paper="p")
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        register_method("mine", unit_sum, summary="s", paper="p")
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        unregister_method("nope")
    with pytest.raises(ValueError, match="built in"):
        unregister_method("pcgrad")
    register_method("not_a_method", lambda num_tasks: "pcgrad", summary="s", paper="p")
    with pytest.raises(ValueError, match="returned str"):
        get_method("not_a_method", 2)
    register_method("wrong_t", lambda num_tasks: unit_sum(2), summary="s", paper="p")
    with pytest.raises(ValueError, match="for 2 tasks, not 3"):
        get_method("wrong_t", 3)


# --- Hyper-parameter aliases --------------------------------------------------------------

# Old spelling -> current name (same meaning), per factory.
ALIASES = [
    ("sdmgrad", "niter", "max_iters", 7),
    ("nash_mtl", "optim_niter", "max_iters", 5),
    ("gradvac", "beta", "ema_rate", 0.3),
    ("moco", "beta", "ema_rate", 0.3),
    ("moco", "beta_sigma", "ema_rate_sigma", 0.0),
    ("famo", "gamma", "weight_decay", 0.01),
]


@pytest.mark.parametrize(("name", "old", "new", "value"), ALIASES)
def test_old_hparam_names_are_aliases(name, old, new, value):
    parameters = inspect.signature(get_factory(name)).parameters
    assert new in parameters and old not in parameters
    with pytest.warns(DeprecationWarning, match=f"'{old}' is now called '{new}'"):
        old_method = get_method(name, 3, **{old: value})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new_method = get_method(name, 3, **{new: value})
    jac = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    extra = {"task_losses": jnp.array([1.0, 2.0, 3.0])}
    if old_method.num_batches > 1:
        extra["extra_per_task_grads"] = (jac,) * (old_method.num_batches - 1)
    outs = [m.apply(jac, m.init(jac[0]), **extra) for m in (old_method, new_method)]
    np.testing.assert_array_equal(outs[0].updates, outs[1].updates)
    with pytest.raises(ValueError, match=f"'{old}' is the old name of '{new}'"):
        get_method(name, 3, **{old: value, new: value})


def test_iteration_budget_and_tolerance_have_one_name():
    """Every factory's iteration budget is ``max_iters`` and its tolerance ``tol``."""
    for name in BUILTINS:
        parameters = set(inspect.signature(get_factory(name)).parameters)
        assert not parameters & {"niter", "optim_niter", "num_iters", "n_iter", "tolerance",
                                 "eps_tol", "atol"}, name


def test_beta_weighs_the_old_value():
    """``beta`` is the coefficient of the old value (``new = β·old + (1 − β)·x``): at β → 1
    the average does not move from its start, at β = 0 it is the fresh value."""
    jac1, jac2 = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([[3.0, 0.0], [0.0, 1.0]])
    for beta, expected in ((0.0, "second"), (0.999999, "first")):
        method = get_method("cr_mogm", 2, base="mgda", beta=beta)
        first = method.apply(jac1, method.init(jac1[0]))
        second = method.apply(jac2, first.state)
        fresh = get_method("mgda", 2).apply(jac2, get_method("mgda", 2).init(None)).weights
        target = fresh if expected == "second" else first.weights
        np.testing.assert_allclose(second.weights, target, rtol=1e-4)
    for name in BUILTINS:
        if "beta" in inspect.signature(get_factory(name)).parameters:
            assert name in {"cr_mogm", "db_mtl", "pcd"}, name  # PCD: the EMA of ‖g‖²
