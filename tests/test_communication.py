"""Measured communication of the data-parallel step against the formula of ``mtljax.parallel``.

On 8 devices, the all-reduce payload of the compiled step is ``(P + H)·b`` for a loss-only
method, ``T·(P + H)·b`` for a gradient method (the whole Jacobian, exact mode) and
``(P + H)·b`` again in the local mode (P shared and H head parameters), plus a few T-sized
vectors (losses, weights).
"""

import jax
import numpy as np
import optax
import pytest
from toy import make_problem

import mtljax
from mtljax import parallel

NUM_TASKS = 4
SMALL = 256  # bytes allowed beyond the formula: the T-sized losses, weights and flags


def compiled_step(name, aggregate="global"):
    tasks, loss, params, batch = make_problem(num_tasks=NUM_TASKS, dim=64, hidden=128, batch=64)
    method = mtljax.get_method(name, NUM_TASKS)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    # diagnostics=False: the conflict metrics need the Jacobian even for a loss-only method.
    step = mtljax.make_train_step(loss, tasks, method, opt, axis_name=parallel.AXIS,
                                  aggregate=aggregate, diagnostics=False)
    pstep = parallel.shard_map_step(step, parallel.data_mesh())
    sizes = {part: sum(x.size for x in jax.tree.leaves(params[part]))
             for part in ("shared", "heads")}
    return pstep.lower(state, batch).compile(), sizes


@pytest.mark.parametrize(
    "name, aggregate, rows",
    [("ew", "global", 1), ("mgda", "global", NUM_TASKS), ("trimmed_mean", "global", NUM_TASKS),
     ("mgda", "local", 1)],
)
def test_all_reduce_bytes_follow_the_formula(name, aggregate, rows):
    assert jax.device_count() == 8
    compiled, sizes = compiled_step(name, aggregate)
    measured = parallel.collective_bytes(compiled)
    expected = rows * (sizes["shared"] + sizes["heads"]) * 4
    assert expected <= measured["all-reduce"] <= expected + SMALL, (measured, expected)
    assert measured["total"] == sum(v for k, v in measured.items() if k != "total")


def test_collective_bytes_reads_shapes_tuples_and_async_pairs():
    hlo = "\n".join([
        "  %a = f32[10,20]{1,0} all-reduce(f32[10,20]{1,0} %x), replica_groups={}",
        "  %b = (bf16[8]{0}, s32[2,2]{1,0}) all-reduce(%y, %z), to_apply=%sum",
        "  %c = f32[4]{0} all-reduce-start(f32[4]{0} %w), to_apply=%sum",
        "  %d = f32[4]{0} all-reduce-done(f32[4]{0} %c)",
        "  ROOT %e = f64[3]{0} collective-permute(f64[3]{0} %v), source_target_pairs={{0,1}}",
        "  %f = f32[100]{0} add(f32[100]{0} %p, f32[100]{0} %q)",
    ])
    assert parallel.collective_bytes(hlo) == {
        "all-reduce": 10 * 20 * 4 + 8 * 2 + 4 * 4 + 4 * 4,
        "collective-permute": 3 * 8,
        "total": 800 + 16 + 16 + 16 + 24,
    }


def test_task_sharded_step_sends_blocks_around_the_ring():
    """The ring Gram sends N−1 blocks of ⌈T/N⌉ rows; Jᵀw is one all-reduce of P (+ H)."""
    num_tasks = 16
    tasks, loss, params, batch = make_problem(num_tasks=num_tasks, dim=64, hidden=128, batch=64)
    method = mtljax.get_method("mgda", num_tasks)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    mesh = parallel.data_mesh(axis_name=parallel.TASK_AXIS)
    step = parallel.task_sharded_step(
        mtljax.make_train_step(loss, tasks, method, opt, task_axis=parallel.TASK_AXIS,
                               diagnostics=False),
        mesh,
    )
    measured = parallel.collective_bytes(step.lower(state, batch).compile())
    shared = sum(x.size for x in jax.tree.leaves(params["shared"]))
    block = num_tasks // 8 * shared * 4
    # ppermutes inside a loop count once (one block); unrolled, N−1 of them.
    assert measured["collective-permute"] in (block, 7 * block), measured
    assert measured["all-reduce"] >= shared * 4
    np.testing.assert_array_less(measured["all-reduce"], num_tasks * shared * 4)


def test_pmap_step_all_reduces_the_jacobian_once():
    """pmap (``reduce="grad"``) all-reduces each Jacobian row once, as shard_map does."""
    tasks, loss, params, batch = make_problem(num_tasks=NUM_TASKS, dim=64, hidden=128, batch=64)
    method = mtljax.get_method("mgda", NUM_TASKS)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = mtljax.make_train_step(loss, tasks, method, opt, axis_name=parallel.AXIS,
                                  reduce="grad", diagnostics=False)
    compiled = parallel.pmap_step(step).lower(
        parallel.replicate(state), parallel.split_batch(batch)).compile()
    expected = NUM_TASKS * sum(x.size for x in jax.tree.leaves(params)) * 4
    measured = parallel.collective_bytes(compiled)["all-reduce"]
    assert expected <= measured <= expected + SMALL
