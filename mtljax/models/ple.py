"""Progressive Layered Extraction (PLE): stacked CGC levels with shared gates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads
from mtljax.models.cgc import ExtractionLevel


class PLE(nnx.Module):
    """Progressive Layered Extraction: ``num_levels`` :class:`~mtljax.models.cgc.ExtractionLevel` s.

    Level ``j`` maps ``(x_1^{j-1}, ..., x_T^{j-1}, x_s^{j-1})`` to ``(x_1^j, ..., x_T^j,
    x_s^j)`` with ``x_t^0 = x_s^0 = x``: task ``t``'s gate mixes its own and the shared
    experts, the shared gate mixes all experts. The last level has no shared gate, and task
    ``t`` predicts ``y_t = h_t(x_t^L)``. With one level PLE is :class:`~mtljax.models.CGC`.

    Shared parameters: every level but the last (its task experts feed the shared gate, hence
    every task's loss) and the last level's shared experts — ``shared`` and ``level.shared``.
    The last level's task experts and gates and the heads are task-specific.

    Representation level: not supported — no single tensor carries everything the tasks share
    (the last level reads per-task inputs that depend on shared parameters); use
    :class:`~mtljax.models.CGC` for a representation-level MoE.

    Args:
      in_features: the size of one flattened input.
      hidden: the experts' hidden widths (every level; later levels read ``hidden[-1]``).
      head_dims: output width of each task's head, keyed by task name (order kept).
      num_levels: the number of extraction levels, ``>= 1``.
      num_shared, num_task_experts: shared experts, and experts per task, at every level.
      rngs: the parameter initialisation keys.

    Example:
      >>> model = PLE(4, (8,), {"a": 3, "b": 1}, num_levels=2, rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(jax.numpy.ones((2, 4))).items()}
      {'a': (2, 3), 'b': (2, 1)}

    References:
      Tang, Liu, Zhao and Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task
      Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        head_dims: Mapping[str, int],
        *,
        num_levels: int = 2,
        num_shared: int = 2,
        num_task_experts: int = 1,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "PLE")
        if int(num_levels) < 1 or not hidden:
            raise ValueError(
                f"PLE needs num_levels >= 1 and expert widths, got {num_levels}, {tuple(hidden)}."
            )
        tasks = list(head_dims)
        widths = [int(in_features)] + [int(hidden[-1])] * (int(num_levels) - 1)

        def level(width, last):
            return ExtractionLevel(
                width,
                hidden,
                tasks,
                num_shared=num_shared,
                num_task_experts=num_task_experts,
                shared_gate=not last,
                rngs=rngs,
            )

        self.shared = nnx.List([level(w, False) for w in widths[:-1]])
        self.level = level(widths[-1], True)
        self.heads = linear_heads(self.level.out_features, head_dims, rngs)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        task_inputs, shared_input = {name: x for name in self.heads.keys()}, x
        for lower in self.shared:
            task_inputs, shared_input = lower(
                task_inputs, shared_input, lower.shared_outputs(shared_input)
            )
        features, _ = self.level(task_inputs, shared_input, self.level.shared_outputs(shared_input))
        return {name: head(features[name]) for name, head in self.heads.items()}
