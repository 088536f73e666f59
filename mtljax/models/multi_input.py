"""The loss of a model on a multi-input batch: every task scored on its own inputs.

In the multi-input setting (:class:`~mtljax.data.MultiInputDataset`, e.g. Office-31) a batch
is ``{task: {"x": [b_t, ...], "y": [b_t, ...]}}``. Task ``t``'s loss reads the model's output
for task ``t`` on task ``t``'s inputs only:

    L_t(θ) = ℓ_t(f_t(x_t; θ), y_t),

so the shared parameters receive one gradient per task, as in the single-input case, and every
method and engine of the train step applies unchanged (parameter level; there is no single
representation that every task reads).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mtljax.nnx_bridge import TaskLossesFn, merge_params
from mtljax.train import MultiTaskLoss


def multi_input_loss(
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    task_losses_fn: TaskLossesFn,
    *,
    input_key: str = "x",
    target_key: str = "y",
) -> MultiTaskLoss:
    """The :class:`~mtljax.MultiTaskLoss` of a model on multi-input batches.

    The tasks' inputs are concatenated along the batch axis and go through the model once
    (one trace, one compiled forward pass); task ``t`` keeps its own rows of its own output.
    The per-task outputs and targets then go to ``task_losses_fn({t: out_t}, {t: y_t})``, the
    same function a single-input dataset uses (it reads task ``t``'s target under key ``t``).

    Args:
      graphdef, rest: from :func:`mtljax.nnx_bridge.split_params`.
      task_losses_fn: ``(outputs, targets) -> (losses, aux)`` (e.g.
        ``mtljax.metrics.task_losses(tasks)``).
      input_key, target_key: the entries of each task's batch.

    Returns:
      A parameter-level ``MultiTaskLoss`` (its ``encode`` returns ``None``) for
      :func:`mtljax.make_train_step`, whose batches are ``{task: {"x": ..., "y": ...}}``.

    Example:
      >>> import jax
      >>> from mtljax import nnx_bridge
      >>> from mtljax.models import MLP, HardSharing
      >>> rngs = nnx.Rngs(0)
      >>> model = HardSharing(MLP(2, (4,), rngs=rngs), {"a": 1, "b": 1}, rngs=rngs)
      >>> graphdef, params, rest = nnx_bridge.split_params(model)
      >>> mse = lambda out, y: ({t: ((out[t][:, 0] - y[t]) ** 2).mean() for t in out}, {})
      >>> loss = multi_input_loss(graphdef, rest, mse)
      >>> batch = {"a": {"x": jnp.ones((3, 2)), "y": jnp.zeros(3)},
      ...          "b": {"x": jnp.zeros((5, 2)), "y": jnp.ones(5)}}
      >>> sorted(loss.decode(params, None, batch)[0])
      ['a', 'b']
    """

    def fn(params, batch):
        model = merge_params(graphdef, params, rest)
        names = list(batch)
        outputs = model(jnp.concatenate([batch[t][input_key] for t in names]))
        starts, own = 0, {}
        for t in names:
            size = batch[t][input_key].shape[0]
            own[t] = outputs[t][starts : starts + size]
            starts += size
        return task_losses_fn(own, {t: batch[t][target_key] for t in names})

    return MultiTaskLoss.from_fn(fn)
