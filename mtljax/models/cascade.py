"""A task cascade: a shared trunk, and heads that may read other tasks' predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtljax.models._heads import check_heads


def _topological_order(tasks: Sequence[str], reads: Mapping[str, Sequence[str]]) -> list[str]:
    """The tasks ordered so that every task comes after those it reads; raises on a cycle."""
    order, state = [], {}

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise ValueError(f"Cascade reads form a cycle: {' -> '.join([*chain, name])}.")
        state[name] = "open"
        for upstream in reads.get(name, ()):
            visit(upstream, [*chain, name])
        state[name] = "done"
        order.append(name)

    for name in tasks:
        visit(name, [])
    return order


class Cascade(nnx.Module):
    """A shared trunk whose task heads may read upstream tasks' predictions.

    With the trunk's representation ``z = f(x)``, task ``t`` predicts
    ``y_t = W_t [z; sg(y_{s_1}); ...; sg(y_{s_k})] + b_t`` where ``s_1..s_k = reads[t]`` are its
    upstream tasks (their raw outputs, e.g. logits) and ``sg`` is ``jax.lax.stop_gradient``
    when ``stop_gradient`` is set, the identity otherwise. Heads run in a topological order of
    ``reads``. With the stop-gradient, a downstream task's loss sends no gradient into its
    upstream heads (nor, through them, into the trunk); without, it trains them as well.

    Shared parameters: the trunk, under ``shared``. The heads are task-specific (without the
    stop-gradient an upstream head also receives its downstream tasks' gradients).

    Representation level: supported. :meth:`encode` gives ``z``; :meth:`decode` runs the heads.

    Args:
      trunk: any module with an ``out_features`` attribute mapping ``x`` to ``[B, D]``.
      head_dims: output width of each task's head, keyed by task name (order kept).
      reads: ``{task: [upstream tasks]}``; tasks not listed read only ``z``.
      stop_gradient: block the gradient through the predictions read.
      rngs: the parameter initialisation keys.

    Example:
      >>> from mtljax.models import MLP
      >>> rngs = nnx.Rngs(0)
      >>> model = Cascade(MLP(4, (8,), rngs=rngs), {"a": 3, "b": 1}, {"b": ["a"]}, rngs=rngs)
      >>> model.heads["b"].in_features
      11

    References:
      Dai, He and Sun, "Instance-aware Semantic Segmentation via Multi-task Network Cascades",
      CVPR 2016, arXiv:1512.04412; Hashimoto, Xiong, Tsuruoka and Socher, "A Joint Many-Task
      Model: Growing a Neural Network for Multiple NLP Tasks", EMNLP 2017, arXiv:1611.01587.
    """

    def __init__(
        self,
        trunk: nnx.Module,
        head_dims: Mapping[str, int],
        reads: Mapping[str, Sequence[str]],
        *,
        stop_gradient: bool = True,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "Cascade")
        if not hasattr(trunk, "out_features"):
            raise ValueError(f"The trunk {type(trunk).__name__} needs an out_features attribute.")
        named = set(reads).union(*map(set, reads.values()))
        unknown = sorted(named - set(head_dims))
        if unknown:
            raise ValueError(
                f"Cascade reads name unknown tasks {unknown}; tasks: {list(head_dims)}."
            )
        # Static, hashable attributes: ((task, (upstream, ...)), ...) in head order.
        self.reads = tuple((name, tuple(reads.get(name, ()))) for name in head_dims)
        self.order = tuple(_topological_order(list(head_dims), dict(self.reads)))
        self.stop_gradient = bool(stop_gradient)
        self.shared = trunk
        self.heads = nnx.Dict(
            {
                name: nnx.Linear(
                    trunk.out_features + sum(head_dims[up] for up in reads.get(name, ())),
                    dim,
                    rngs=rngs,
                )
                for name, dim in head_dims.items()
            }
        )

    def encode(self, x: jax.Array) -> jax.Array:
        """The shared representation ``z`` ``[B, D]``."""
        return self.shared(x)

    def decode(self, rep: jax.Array) -> dict[str, jax.Array]:
        """Every task's output, upstream tasks first."""
        out, reads = {}, dict(self.reads)
        for name in self.order:
            upstream = [out[up] for up in reads[name]]
            if self.stop_gradient:
                upstream = [jax.lax.stop_gradient(y) for y in upstream]
            out[name] = self.heads[name](jnp.concatenate([rep, *upstream], axis=-1))
        return {name: out[name] for name in self.heads.keys()}

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        return self.decode(self.encode(x))
