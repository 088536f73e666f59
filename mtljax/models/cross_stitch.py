"""Cross-stitch networks: one column per task, mixed by learned T×T units after each layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads
from mtljax.models.mlp import flatten_input


class StitchedColumns(nnx.Module):
    """T ReLU MLP columns whose hidden layers are mixed by cross-stitch units.

    Layer ``l`` of column ``t`` computes ``h_t^l = relu(W_t^l x̃_t^{l-1} + b_t^l)`` and the
    cross-stitch unit ``α^l ∈ R^{T×T}`` mixes the columns: ``x̃_t^l = Σ_s α^l_{ts} h_s^l``.
    ``x̃_t^0`` is the flattened input for every ``t``. The columns' weights are stored stacked,
    ``kernels[l]: [T, D_{l-1}, D_l]``, so a layer is one batched contraction.

    Args:
      in_features: the size of one flattened input.
      hidden: the widths of the layers.
      num_tasks: T, the number of columns.
      self_weight: ``α_S``, the initial diagonal of every unit; the off-diagonal entries start
        at ``α_D = (1 − α_S)/(T − 1)`` so each row sums to one (the paper's ``(α_S, α_D) =
        (0.9, 0.1)`` for two tasks).
      rngs: the parameter initialisation keys.

    Attributes:
      out_features: the width of each column's output.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_tasks: int,
        *,
        self_weight: float = 0.9,
        rngs: nnx.Rngs,
    ):
        widths = [int(in_features), *map(int, hidden)]
        if len(widths) < 2 or any(w < 1 for w in widths) or int(num_tasks) < 1:
            raise ValueError(
                f"StitchedColumns needs positive widths and at least one layer, got {widths} "
                f"for {num_tasks} tasks."
            )
        if not 0.0 <= float(self_weight) <= 1.0:
            raise ValueError(f"self_weight must lie in [0, 1], got {self_weight}.")
        t = int(num_tasks)
        self.in_features = widths[0]
        self.out_features = widths[-1]
        # Per-column LeCun-normal kernels (nnx.Linear's default); axis 0 indexes the column.
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.kernels = nnx.List([nnx.Param(init(rngs.params(), (t, a, b))) for a, b in pairs])
        self.biases = nnx.List([nnx.Param(jnp.zeros((t, b), jnp.float32)) for b in widths[1:]])
        # α_S on the diagonal, α_D = (1 − α_S)/(T − 1) elsewhere; a lone column keeps α = 1.
        diagonal = float(self_weight) if t > 1 else 1.0
        off = (1.0 - diagonal) / (t - 1) if t > 1 else 0.0
        unit = off * (np.ones((t, t)) - np.eye(t)) + diagonal * np.eye(t)
        self.stitches = nnx.Param(jnp.asarray(np.stack([unit] * (len(widths) - 1)), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, ...]`` → every column's output ``[T, B, D]``."""
        x = flatten_input(x, self.in_features, "StitchedColumns")
        h = jnp.broadcast_to(x, (self.stitches.shape[1], *x.shape))
        units = self.stitches[...]
        for layer, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            h = jax.nn.relu(jnp.einsum("tbi,tio->tbo", h, kernel[...]) + bias[...][:, None, :])
            h = jnp.einsum("ts,sbd->tbd", units[layer], h)
        return h


class CrossStitch(nnx.Module):
    """Cross-stitch network: T task columns mixed by a T×T unit after every layer, linear heads.

    With the columns of :class:`StitchedColumns`, task ``t`` predicts ``y_t = h_t(x̃_t^L)``.
    A cross-stitch unit interpolates between separate networks (``α = I``) and one shared
    network (``α = (1/T) 11ᵀ`` makes all columns equal after the unit). The paper initialises
    close to separate networks and lets training learn ``α``.

    Shared parameters: every column and the units, under ``shared`` — through the units each
    task's loss depends on all columns. The heads are task-specific. There is no single shared
    representation (one column per task): parameter level only.

    Args:
      in_features: the size of one flattened input.
      hidden: the widths of the column layers.
      head_dims: output width of each task's head, keyed by task name (order kept).
      self_weight: the initial diagonal ``α_S`` of the units (see :class:`StitchedColumns`).
      rngs: the parameter initialisation keys.

    Example:
      >>> model = CrossStitch(4, (8, 8), {"a": 3, "b": 1}, rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(jnp.ones((2, 4))).items()}
      {'a': (2, 3), 'b': (2, 1)}

    References:
      Misra, Shrivastava, Gupta and Hebert, "Cross-stitch Networks for Multi-task Learning",
      CVPR 2016, arXiv:1604.03539.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        head_dims: Mapping[str, int],
        *,
        self_weight: float = 0.9,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "CrossStitch")
        self.shared = StitchedColumns(
            in_features, hidden, len(head_dims), self_weight=self_weight, rngs=rngs
        )
        self.heads = linear_heads(self.shared.out_features, head_dims, rngs)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        columns = self.shared(x)
        return {name: head(columns[t]) for t, (name, head) in enumerate(self.heads.items())}
