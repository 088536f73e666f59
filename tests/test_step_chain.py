"""Every registered method: one train step is the method chained with the optimizer in optax.

The reference is independent of the step's engines: per-task gradients by ``jax.jacrev`` of the
per-task losses, then ``optax.chain(method.as_optax(), optimizer)`` on the shared parameters,
and the heads' rule written out (``Σ_t c_t ∇_heads L_t`` with ``c = w`` for loss-only methods,
``c = 1`` for gradient methods). FAMO's ``after_step`` hook sees the losses at the new
parameters, as the step promises. Two steps, so that the method state carried by the step is
the one the reference carries. float64, parameter level. The step and the reference are
compiled together, one program per method: cheaper than compiling the step and dispatching
the reference op by op (eagerly), and the two still share no code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from method_table import TABLE
from toy import make_problem

import mtljax
from mtljax.methods import method_names

NUM_TASKS = 3
LR = 0.1


def problem(num_batches):
    tasks, loss, params, batch = make_problem(num_tasks=NUM_TASKS, dim=4, hidden=5, batch=8,
                                              dtype=jnp.float64)
    extra = [make_problem(num_tasks=NUM_TASKS, dim=4, hidden=5, batch=8, seed=s,
                          dtype=jnp.float64)[3] for s in range(1, num_batches)]
    return tasks, loss, params, (batch, *extra) if num_batches > 1 else batch


def reference_step(method, tasks, loss, optimizer):
    """``(params, method_state, opt_state, batch) -> (params, method_state, opt_state)``."""
    tx = optax.chain(method.as_optax(), optimizer)

    def losses_at(params, batch):
        raw, _ = loss.decode(params, loss.encode(params, batch), batch)
        return tasks.stack_losses(raw)

    def step(params, chain_state, head_state, batch):
        batches = batch if method.num_batches > 1 else (batch,)
        losses = losses_at(params, batches[0])
        jacs = [jax.jacrev(losses_at)(params, b) for b in batches]
        extra = {}
        if method.num_batches > 1:
            extra["extra_per_task_grads"] = tuple(j["shared"] for j in jacs[1:])
        c = jnp.ones(NUM_TASKS, losses.dtype)
        if method.kind == "loss":  # weighted heads: the weights the method gives
            c, _ = method.loss_weights(chain_state[0], task_losses=losses)
        shared_updates, chain_state = tx.update(jacs[0]["shared"], chain_state,
                                                params["shared"], task_losses=losses, **extra)
        head_grads = jax.tree.map(lambda j: jnp.tensordot(c, j, axes=1), jacs[0]["heads"])
        head_updates, head_state = optimizer.update(head_grads, head_state, params["heads"])
        new = {"shared": optax.apply_updates(params["shared"], shared_updates),
               "heads": optax.apply_updates(params["heads"], head_updates)}
        if method.after_step is not None:
            method_state = method.after_step(chain_state[0],
                                             task_losses_after=losses_at(new, batches[0]))
            chain_state = (method_state, *chain_state[1:])
        return new, chain_state, head_state

    return step, tx


def assert_trees_close(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        # Some method states are float32 whatever the parameters' dtype (FAMO's logits).
        rtol = 1e-7 if x.dtype == jnp.float64 else 1e-5
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * 1e-2,
                                   err_msg=what)


@pytest.mark.parametrize("name", method_names())
def test_step_equals_method_chained_with_the_optimizer(name):
    method = mtljax.get_method(name, NUM_TASKS, **TABLE[name].build_hparams(NUM_TASKS))
    tasks, loss, params, batch = problem(method.num_batches)
    optimizer = optax.sgd(LR, momentum=0.5)
    state = mtljax.init_train_state(params, optimizer, method)
    step = mtljax.make_train_step(loss, tasks, method, optimizer, level="parameters",
                                  diagnostics=False)
    reference, tx = reference_step(method, tasks, loss, optimizer)

    @jax.jit
    def both(state, ref_state, batch):
        return step(state, batch), reference(*ref_state, batch)

    ref_state = (params, tx.init(params["shared"]), optimizer.init(params["heads"]))
    for _ in range(2):
        (state, metrics), ref_state = both(state, ref_state, batch)
        ref_params, chain_state, _ = ref_state
        assert not bool(metrics["skipped"])
        assert_trees_close(state.params, ref_params, f"{name}: parameters")
        assert_trees_close(state.method_state, chain_state[0], f"{name}: method state")
