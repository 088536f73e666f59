"""The train step: every method reduces the losses; data parallel equals one device."""

import jax
import numpy as np
import optax
import pytest
from method_table import TABLE
from toy import make_problem

import mtljax
from mtljax import parallel


def run_steps(method_name, steps=3, *, level="parameters", devices=1, mode="shard_map", **kw):
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method(method_name, len(tasks), **kw)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    if devices == 1:
        step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, level=level))
        for _ in range(steps):
            state, metrics = step(state, batch)
        return state, metrics
    if mode == "shard_map":
        step = mtljax.make_train_step(loss, tasks, method, opt, level=level, axis_name="data")
        mesh = parallel.data_mesh(jax.devices()[:devices])
        pstep = parallel.shard_map_step(step, mesh)
        for _ in range(steps):
            state, metrics = pstep(state, batch)
        return state, metrics
    step = mtljax.make_train_step(
        loss, tasks, method, opt, level=level, axis_name="data", reduce="grad"
    )
    pstep = parallel.pmap_step(step, devices=jax.devices()[:devices])
    rstate = parallel.replicate(state, devices)
    for _ in range(steps):
        rstate, metrics = pstep(rstate, parallel.split_batch(batch, devices))
    return parallel.unreplicate(rstate), parallel.unreplicate(metrics)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_method_reduces_every_loss(name):
    """40 SGD steps of every registered method reduce each task's loss on the toy problem.

    Methods drawing several batches per step get bootstrap resamples of the batch.
    """
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method(name, len(tasks), **TABLE[name].build_hparams(len(tasks)))
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, level=method.level))
    rng = np.random.default_rng(0)
    size = batch["x"].shape[0]

    def batches():
        if method.num_batches == 1:
            return batch
        picks = [rng.integers(0, size, size) for _ in range(method.num_batches)]
        return tuple(jax.tree.map(lambda x, i=i: x[i], batch) for i in picks)

    state, first = step(state, batches())
    for _ in range(40):
        state, last = step(state, batches())
    assert np.all(np.isfinite(last["losses"]))
    assert np.all(np.asarray(last["losses"]) < np.asarray(first["losses"])), (
        f"{name}: losses {np.asarray(first['losses'])} -> {np.asarray(last['losses'])}")


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("name", ["pcgrad", "mgda", "ew"])
def test_device_count_invariance(name, level, mode):
    single, m1 = run_steps(name, level=level)
    multi, m8 = run_steps(name, level=level, devices=8, mode=mode)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1["losses"], m8["losses"], rtol=1e-5)
    np.testing.assert_allclose(m1["weights"], m8["weights"], rtol=1e-5, atol=1e-6)


def test_loss_shortcut_equals_jacobian_path():
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method("ew", len(tasks))
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    fast = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=False))
    full = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=True))
    a, _ = fast(state, batch)
    b, _ = full(state, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_cr_mogm_forwards_the_base_after_step_hook():
    """CR-MOGM over FAMO: the train step's after-step losses still move FAMO's logits."""
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method("cr_mogm", len(tasks), base="famo")
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt))
    for _ in range(3):
        state, _ = step(state, batch)
    assert np.any(np.asarray(state.method_state.base.logits) != 0.0)
