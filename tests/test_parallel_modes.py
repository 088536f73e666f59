"""Engine modes for scale: per-device aggregation, task sharding, chunk size from a budget.

* ``aggregate="local"``: on one device it is the exact (global) step; on N devices its update
  is the mean of the method's outputs on each data shard, computed here shard by shard.
* ``task_axis``: the task-sharded step equals the single-device step for loss-only and
  Gram-space methods, with T divisible by the device count or not; other methods raise.
* ``chunk_size``: the compiled step's temporary memory grows with the chunk size, and
  :func:`mtljax.jacobian.chunk_size_for_budget` follows its formula.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy import make_problem

import mtljax
from mtljax import parallel
from mtljax.jacobian import chunk_size_for_budget
from mtljax.step import DataParallel, TaskSharded

NUM_DEVICES = 8


def sgd_state(name, num_tasks=3):
    tasks, loss, params, batch = make_problem(num_tasks=num_tasks)
    method = mtljax.get_method(name, num_tasks)
    opt = optax.sgd(1.0)  # the update is params - new params
    return tasks, loss, batch, method, opt, mtljax.init_train_state(params, opt, method)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# aggregate="local"


@functools.cache  # one compilation per configuration in this module
def local_step(name, num_devices, *, aggregate="local", reduce="loss"):
    tasks, loss, batch, method, opt, state = sgd_state(name)
    step = mtljax.make_train_step(loss, tasks, method, opt, axis_name="data",
                                  aggregate=aggregate, reduce=reduce)
    devices = jax.devices()[:num_devices]
    if reduce == "loss":
        new, metrics = parallel.shard_map_step(step, parallel.data_mesh(devices))(state, batch)
        return state, new, metrics
    new, metrics = parallel.pmap_step(step, devices=devices)(
        parallel.replicate(state, num_devices), parallel.split_batch(batch, num_devices))
    return state, parallel.unreplicate(new), parallel.unreplicate(metrics)


def mean_of_shard_outputs(name, num_devices):
    """The method run by hand on each data shard's Jacobian; updates and float state averaged
    over shards (the other state leaves, PRNG keys here, are shard 0's)."""
    tasks, loss, batch, method, _, state = sgd_state(name)
    params = state.params
    size = batch["x"].shape[0] // num_devices

    def shard_losses(p, shard):
        raw, _ = loss.decode(p, loss.encode(p, shard), shard)
        return tasks.stack_losses(raw)

    @jax.jit
    def on_shard(shard):
        jac = jax.jacrev(shard_losses)(params, shard)
        out = method.apply(jac["shared"], state.method_state, params["shared"],
                           task_losses=shard_losses(params, shard))
        # Gradient methods give every head its own loss's gradient (unweighted).
        heads = jax.tree.map(lambda g: g.sum(0), jac["heads"])
        return {"shared": out.updates, "heads": heads}, out.state

    updates, states = zip(*(
        on_shard(jax.tree.map(lambda x, i=i: x[i * size:(i + 1) * size], batch))
        for i in range(num_devices)
    ), strict=True)
    mean_update = jax.tree.map(lambda *xs: sum(xs) / num_devices, *updates)

    def state_leaf(*xs):
        return sum(xs) / num_devices if jnp.issubdtype(xs[0].dtype, jnp.floating) else xs[0]

    return mean_update, jax.tree.map(state_leaf, *states)


@pytest.mark.parametrize("name", ["pcgrad"])
def test_local_on_one_device_is_global(name):
    state, local, m_local = local_step(name, 1)
    _, exact, m_exact = local_step(name, 1, aggregate="global")
    assert_trees_close(local.params, exact.params)
    np.testing.assert_allclose(m_local["weights"], m_exact["weights"], rtol=1e-5, atol=1e-6)


# gradvac: an EMA of cosines in its state (averaged over devices) and a key (shared).
@pytest.mark.parametrize("name", ["mgda", "gradvac"])
def test_local_is_mean_of_per_shard_outputs(name):
    state, new, _ = local_step(name, NUM_DEVICES)
    expected_update, expected_state = mean_of_shard_outputs(name, NUM_DEVICES)
    update = jax.tree.map(lambda a, b: a - b, state.params, new.params)
    assert_trees_close(update, expected_update)
    assert_trees_close(new.method_state, expected_state)


def test_local_differs_from_global_and_pmap_agrees():
    """On 8 devices "local" is another method than the exact step (MGDA is not linear), and
    the pmap form (reduce="grad") computes the same local aggregation as shard_map."""
    state, local, _ = local_step("mgda", NUM_DEVICES)
    _, exact, _ = local_step("mgda", NUM_DEVICES, aggregate="global")
    _, local_pmap, _ = local_step("mgda", NUM_DEVICES, reduce="grad")
    gap = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree.leaves(local.params["shared"]),
                  jax.tree.leaves(exact.params["shared"]), strict=True))
    assert gap > 1e-3
    assert_trees_close(local_pmap.params, local.params)


def test_aggregate_is_validated():
    tasks, loss, _, method, opt, _ = sgd_state("mgda")
    with pytest.raises(ValueError, match="aggregate must be"):
        mtljax.make_train_step(loss, tasks, method, opt, axis_name="data", aggregate="mean")
    with pytest.raises(ValueError, match="parameter level"):
        mtljax.make_train_step(loss, tasks, method, opt, axis_name="data", aggregate="local",
                               level="representation")


def test_parallelism_is_a_value_the_wrappers_read():
    """The step carries its parallelism as a value; ``parallel`` maps it from there and
    refuses a mesh axis other than the step's."""
    tasks, loss, _, method, opt, _ = sgd_state("mgda")
    local = mtljax.make_train_step(loss, tasks, method, opt, axis_name="data",
                                   aggregate="local")
    assert local.options.parallel == DataParallel("data", "loss", "local")
    assert not local.options.parallel.check_vma
    assert local.engine == "auto"  # the Jacobian engine at this size (engines.auto_engine)
    mesh = parallel.data_mesh(jax.devices()[:2])
    with pytest.raises(ValueError, match="maps over 'data'.*axis_name=None"):
        parallel.shard_map_step(mtljax.make_train_step(loss, tasks, method, opt), mesh)
    sharded = mtljax.make_train_step(loss, tasks, method, opt, task_axis="task")
    assert sharded.options.parallel == TaskSharded("task")
    with pytest.raises(ValueError, match="maps over 'tasks'"):
        parallel.task_sharded_step(sharded, mesh, task_axis="tasks")


# ---------------------------------------------------------------------------------------------
# Task sharding


def run_two_steps(name, num_tasks, *, task_sharded, nonfinite="raise", nan_task=None):
    tasks, loss, batch, method, opt, state = sgd_state(name, num_tasks)
    if nan_task is not None:
        # A NaN loss whose gradient stays finite: in a shared backward pass a NaN gradient
        # would reach every task's row (0 · NaN), so this isolates the flagged task.
        def decode(params, rep, batch, decode=loss.decode):
            losses, aux = decode(params, rep, batch)
            bad = tasks.names[nan_task]
            return dict(losses, **{bad: losses[bad] + jax.lax.stop_gradient(jnp.nan)}), aux

        loss = loss._replace(decode=decode)
    kw = dict(nonfinite=nonfinite, diagnostics=True)
    if task_sharded:
        step = mtljax.make_train_step(loss, tasks, method, opt, task_axis="task", **kw)
        mesh = parallel.data_mesh(jax.devices()[:NUM_DEVICES], axis_name="task")
        step = parallel.task_sharded_step(step, mesh)
    else:
        step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, **kw))
    state, _ = step(state, batch)
    return step(state, batch)


# EW with diagnostics goes through the Jacobian; T = 3 and 11 pad to 8 and 16 rows on 8
# devices, T = 8 needs no padding.
@pytest.mark.parametrize(("name", "num_tasks"), [("ew", 11), ("mgda", 3), ("pcgrad", 8)])
def test_task_sharded_equals_unsharded(name, num_tasks):
    plain, m_plain = run_two_steps(name, num_tasks, task_sharded=False)
    sharded, m_sharded = run_two_steps(name, num_tasks, task_sharded=True)
    assert_trees_close(sharded.params, plain.params)
    assert_trees_close(sharded.method_state, plain.method_state)
    assert set(m_sharded) == set(m_plain)
    for key in ("losses", "weights", "gram_cond", "nonfinite"):
        if key in m_plain:
            np.testing.assert_allclose(m_sharded[key], m_plain[key], rtol=1e-5, atol=1e-6)


def test_task_sharded_nonfinite_drop_task():
    """A task whose loss is NaN is dropped from the step the same way as on one device."""
    plain, m_plain = run_two_steps("mgda", 3, task_sharded=False, nonfinite="drop_task", nan_task=1)
    sharded, m_sharded = run_two_steps("mgda", 3, task_sharded=True, nonfinite="drop_task",
                                       nan_task=1)
    assert np.asarray(m_sharded["nonfinite"]).tolist() == [False, True, False]
    assert not bool(m_sharded["skipped"])
    assert_trees_close(sharded.params, plain.params)


@pytest.mark.parametrize("name", ["moco", "db_mtl", "trimmed_mean"])
def test_task_sharding_rejects_non_gram_methods(name):
    tasks, loss, _, method, opt, _ = sgd_state(name)
    with pytest.raises(ValueError, match="P-sized data beyond the Gram matrix"):
        mtljax.make_train_step(loss, tasks, method, opt, task_axis="task")


def test_task_sharding_options_are_validated():
    tasks, loss, _, method, opt, _ = sgd_state("mgda")
    with pytest.raises(ValueError, match="cannot be combined"):
        mtljax.make_train_step(loss, tasks, method, opt, task_axis="task", axis_name="data")
    with pytest.raises(ValueError, match="parameter level"):
        mtljax.make_train_step(loss, tasks, method, opt, task_axis="task",
                               level="representation")


def test_ring_gram_matches_gram_without_gathering_the_jacobian():
    """The ring Gram of row blocks equals J Jᵀ; every device only ever holds [k, P] blocks."""
    rng = np.random.default_rng(0)
    jac = {"a": jnp.asarray(rng.normal(size=(16, 5))),
           "b": jnp.asarray(rng.normal(size=(16, 2, 3)))}
    mesh = parallel.data_mesh(jax.devices()[:NUM_DEVICES], axis_name="task")

    def gram_of_blocks(block):
        shapes = {x.shape for x in jax.tree.leaves(block)}
        assert all(s[0] == 2 for s in shapes), shapes  # the local block, not the full J
        return parallel.ring_gram(block, "task")

    ring = jax.jit(jax.shard_map(gram_of_blocks, mesh=mesh, in_specs=jax.sharding.PartitionSpec(
        "task"), out_specs=jax.sharding.PartitionSpec()))(jac)
    np.testing.assert_allclose(ring, mtljax.linalg.gram(jac), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Chunk size and memory


def test_compiled_memory_grows_with_chunk_size():
    """XLA's memory analysis of the compiled step: k pullbacks in flight hold k sets of
    cotangents, so the temporary bytes strictly increase with the chunk size."""
    num_tasks = 8
    tasks, loss, params, batch = make_problem(num_tasks=num_tasks, dim=32, hidden=64, batch=64)
    method = mtljax.get_method("mgda", num_tasks)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    temp = []
    for chunk in (1, 2, 8):
        step = mtljax.make_train_step(loss, tasks, method, opt, chunk_size=chunk,
                                      diagnostics=False)
        analysis = jax.jit(step).lower(state, batch).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend gives no memory analysis")
        temp.append(analysis.temp_size_in_bytes)
    assert all(a < b for a, b in zip(temp, temp[1:], strict=False)), temp


def test_chunk_size_for_budget_formula():
    # k = clip(⌊budget / (P·b + activation_bytes)⌋, 1, T)
    assert chunk_size_for_budget(10 * 4000, 1000, jnp.float32, 16) == 10
    assert chunk_size_for_budget(10 * 4000 - 1, 1000, jnp.float32, 16) == 9
    assert chunk_size_for_budget(10 * 4000, 1000, jnp.bfloat16, 16) == 16  # clipped to T
    assert chunk_size_for_budget(10 * 4000, 1000, jnp.bfloat16, 32) == 20
    assert chunk_size_for_budget(10 * 4000, 1000, jnp.float32, 16, activation_bytes=6000) == 4
    assert chunk_size_for_budget(1, 1000, jnp.float32, 16) == 1  # at least one row
    with pytest.raises(ValueError, match="budget_bytes > 0"):
        chunk_size_for_budget(0, 1000, jnp.float32, 16)
