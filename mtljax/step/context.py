"""What every stage of the train step reads: the model's losses, the tasks, the method and the
validated options, with the few operations they share (the losses in compute dtype and across
devices, the backward passes, the cross-device mean)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.jacobian import pull_back
from mtljax.methods import Method
from mtljax.step.options import StepOptions
from mtljax.step.state import MultiTaskLoss, losses_and_aux
from mtljax.tasks import Tasks


@dataclasses.dataclass(frozen=True, eq=False)
class StepContext:
    """The fixed inputs of a train step."""

    loss: MultiTaskLoss
    tasks: Tasks
    method: Method
    options: StepOptions

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def gram_space(self) -> bool:
        """Whether the method is defined on ``G = J Jᵀ`` alone (the step computes G and Jᵀw)."""
        return self.method.gram_weights is not None and self.method.num_batches == 1

    def decode_losses(self, params, rep, batch) -> tuple[jax.Array, Any]:
        """``[T]`` losses (at least float32 under mixed precision; the ``pmean`` over the data
        axis when ``reduce="loss"``) and the loss function's aux."""
        raw, aux = losses_and_aux(self.loss.decode(params, rep, batch))
        if self.options.instance_wise:
            return self.tasks.stack_instance_losses(raw), aux
        losses = self.tasks.stack_losses(raw)
        if self.options.compute_dtype is not None:
            losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
        if self.options.parallel.pmean_losses:
            losses = lax.pmean(losses, self.options.parallel.data_axis)
        return losses, aux

    def losses(self, params, batch) -> tuple[jax.Array, Any]:
        """:meth:`decode_losses` of the encoded batch."""
        return self.decode_losses(params, self.loss.encode(params, batch), batch)

    def varying(self, tree):
        """``tree`` cast device-varying over the parallelism's ``vary_axis`` (if any)."""
        axis = self.options.parallel.vary_axis
        return tree if axis is None else lax.pcast(tree, axis, to="varying")

    def global_mean(self, tree):
        """The mean over the data axis under ``reduce="grad"`` (``pmap``); else ``tree``."""
        parallel = self.options.parallel
        return lax.pmean(tree, parallel.data_axis) if parallel.pmean_grads else tree

    def pull_back(self, vjp_fn, cotangents):
        """The pullback of every row of ``cotangents`` with the step's strategy."""
        return pull_back(vjp_fn, cotangents, strategy=self.options.strategy,
                         chunk_size=self.options.chunk_size)

    def identity(self, dtype) -> jax.Array:
        """The ``T×T`` identity, typed like the losses (device-varying in the local mode)."""
        return self.varying(jnp.eye(self.num_tasks, dtype=dtype))
