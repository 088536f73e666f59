"""Task presence: a task without labels in the batch is left out of the method, not fed to it
as a zero gradient.

With MGDA a zero row would make the min-norm point 0 (weights [0, 1, 0]-like, no update of the
shared parameters); left out, the update is MGDA's on the other tasks alone. The reference is
computed independently: ``jax.jacrev`` of the losses, MGDA built for 2 tasks on their rows,
each present head descending its own loss, the absent head unchanged.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy import make_problem

import mtljax
from mtljax import MultiTaskLoss, parallel

LR = 0.5
ABSENT = 1


def labelled_problem():
    """The toy problem with a per-task label mask; task 1 has no label in the batch."""
    tasks, loss, params, batch = make_problem(dtype=jnp.float64)
    labels = np.ones((batch["x"].shape[0], len(tasks)), bool)
    labels[:, ABSENT] = False
    batch = dict(batch, labelled=jnp.asarray(labels))

    def decode(params, rep, batch):
        mask = batch["labelled"]
        count = jnp.sum(mask, axis=0)
        losses = {
            name: jnp.sum(jnp.where(mask[:, i], (rep @ params["heads"][name]["w"]
                                                 - batch["y"][:, i]) ** 2, 0.0))
            / jnp.maximum(count[i], 1)
            for i, name in enumerate(tasks.names)
        }
        return losses, {"present": count > 0}

    return tasks, MultiTaskLoss(loss.encode, decode), params, batch


def mgda_without_the_absent_task(loss, tasks, params, batch):
    """New params: MGDA(2) on the present tasks' rows; present heads on their own losses."""
    def losses(p):
        raw, _ = loss.decode(p, loss.encode(p, batch), batch)
        return tasks.stack_losses(raw)

    jac = jax.jacrev(losses)(params)
    keep = [t for t in range(len(tasks)) if t != ABSENT]
    rows = jax.tree.map(lambda j: j[jnp.asarray(keep)], jac["shared"])
    mgda = mtljax.get_method("mgda", len(keep))
    out = mgda.apply(rows, mgda.init(params["shared"]), params["shared"])
    heads = {name: jax.tree.map(lambda p, j, t=t: p - LR * j[t] if t != ABSENT else p,
                                params["heads"][name], jac["heads"][name])
             for t, name in enumerate(tasks.names)}
    shared = jax.tree.map(lambda p, d: p - LR * d, params["shared"], out.updates)
    return {"shared": shared, "heads": heads}, out.weights


@pytest.mark.parametrize("devices", [1, 8])
def test_absent_task_is_left_out_of_mgda(devices):
    tasks, loss, params, batch = labelled_problem()
    method = mtljax.get_method("mgda", len(tasks))
    opt = optax.sgd(LR)
    state = mtljax.init_train_state(params, opt, method)
    if devices == 1:
        step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt))
    else:
        step = parallel.shard_map_step(
            mtljax.make_train_step(loss, tasks, method, opt, axis_name=parallel.AXIS),
            parallel.data_mesh(jax.devices()[:devices]))
    new, metrics = step(state, batch)
    expected, weights = mgda_without_the_absent_task(loss, tasks, params, batch)
    np.testing.assert_array_equal(metrics["present"], [True, False, True])
    assert not bool(metrics["skipped"]) and not np.any(metrics["nonfinite"])
    np.testing.assert_allclose(metrics["weights"], [weights[0], 0.0, weights[1]], atol=1e-6)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    # The shared parameters moved: a zero row for the absent task would have stopped them.
    assert not np.allclose(new.params["shared"]["w1"], params["shared"]["w1"])
    if devices > 1:
        # A task labelled on one device only is present for the whole step (OR over devices).
        labels = np.asarray(batch["labelled"]).copy()
        labels[:2, ABSENT] = True
        _, metrics = step(state, dict(batch, labelled=jnp.asarray(labels)))
        np.testing.assert_array_equal(metrics["present"], [True, True, True])


def test_presence_as_a_dict_and_for_a_loss_only_method():
    """``{task: bool}`` works too; EW's weight and head update of the absent task are 0."""
    tasks, loss, params, batch = labelled_problem()

    def decode(params, rep, batch):
        losses, aux = loss.decode(params, rep, batch)
        return losses, {"present": dict(zip(tasks.names, aux["present"], strict=True))}

    method = mtljax.get_method("ew", len(tasks))
    opt = optax.sgd(LR)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss._replace(decode=decode), tasks, method, opt,
                                          diagnostics=False))
    new, metrics = step(state, batch)
    np.testing.assert_array_equal(metrics["present"], [True, False, True])
    np.testing.assert_array_equal(metrics["weights"], [1.0, 0.0, 1.0])
    name = tasks.names[ABSENT]
    np.testing.assert_array_equal(new.params["heads"][name]["w"], params["heads"][name]["w"])
