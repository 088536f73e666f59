"""A small convolutional trunk for few-pixel images."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class SmallCNN(nnx.Module):
    """``(conv3×3 → ReLU → 2×2 max-pool) × k → adaptive average pool → dense → ReLU``.

    The feature map after the convolutions is average-pooled onto a fixed ``grid × grid`` of
    cells (PyTorch's adaptive pooling: cell ``i`` spans rows ``⌊iH/g⌋ .. ⌈(i+1)H/g⌉``), so the
    dense layer's size does not depend on the image size while *where* a feature fires is kept
    — the MultiDigits tasks differ only by position. Pooling uses ``SAME`` padding (``H → ⌈H/2⌉``).
    There is no batch normalisation: the functional train step carries no mutable batch
    statistics.

    Args:
      in_channels: channels of the NHWC input.
      features: output channels of the convolutions, one block each.
      out_features: width of the output representation.
      grid: cells per side of the adaptive pooling.
      rngs: the parameter initialisation keys.

    Attributes:
      out_features: the width of the output representation.

    Example:
      >>> cnn = SmallCNN(1, rngs=nnx.Rngs(0))
      >>> cnn(jnp.ones((2, 12, 12, 1))).shape
      (2, 64)
    """

    def __init__(
        self,
        in_channels: int,
        *,
        features: Sequence[int] = (16, 32),
        out_features: int = 64,
        grid: int = 3,
        rngs: nnx.Rngs,
    ):
        channels = [int(in_channels), *map(int, features)]
        if any(c < 1 for c in channels) or int(out_features) < 1 or int(grid) < 1:
            raise ValueError(
                f"SmallCNN sizes must be positive, got in_channels={in_channels}, "
                f"features={tuple(features)}, out_features={out_features}, grid={grid}."
            )
        self.in_channels = channels[0]
        self.out_features = int(out_features)
        self.grid = int(grid)
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(3, 3), padding="SAME", rngs=rngs)
                for a, b in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        self.dense = nnx.Linear(channels[-1] * self.grid**2, self.out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"SmallCNN expects NHWC inputs with {self.in_channels} channels, got shape "
                f"{x.shape}."
            )
        for conv in self.convs:
            x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2), padding="SAME")
        x = _adaptive_average_pool(x, self.grid)
        return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))


def _adaptive_average_pool(x: jax.Array, grid: int) -> jax.Array:
    """Averages ``[B, H, W, C]`` over a ``grid × grid`` partition of the image → ``[B, g, g, C]``.

    One contraction with static averaging matrices ``P_h [g, H]`` and ``P_w [g, W]``.
    """
    rows, cols = (jnp.asarray(_pooling_matrix(n, grid), x.dtype) for n in x.shape[1:3])
    return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def _pooling_matrix(size: int, grid: int) -> np.ndarray:
    matrix = np.zeros((grid, size))
    for i in range(grid):
        start, stop = i * size // grid, -(-(i + 1) * size // grid)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix
