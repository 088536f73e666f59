"""A small residual convolutional trunk (basic blocks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from mtljax.models.cnn import _adaptive_average_pool


def _norm(channels: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(channels, num_groups=math.gcd(channels, 8), rngs=rngs)


class BasicBlock(nnx.Module):
    """``relu(shortcut(x) + norm(conv₃ₓ₃(relu(norm(conv₃ₓ₃(x))))))`` (He et al.'s basic block).

    The first convolution has stride ``stride``; the shortcut is the identity, or a strided
    1×1 convolution and a norm when the shape changes.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, *, rngs: nnx.Rngs):
        strides = (stride, stride)
        self.conv1 = nnx.Conv(
            in_channels, channels, (3, 3), strides=strides, use_bias=False, rngs=rngs
        )
        self.norm1 = _norm(channels, rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), use_bias=False, rngs=rngs)
        self.norm2 = _norm(channels, rngs)
        if stride != 1 or in_channels != channels:
            self.project = nnx.Conv(
                in_channels, channels, (1, 1), strides=strides, use_bias=False, rngs=rngs
            )
            self.project_norm = _norm(channels, rngs)
        else:
            self.project = self.project_norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm2(self.conv2(jax.nn.relu(self.norm1(self.conv1(x)))))
        shortcut = x if self.project is None else self.project_norm(self.project(x))
        return jax.nn.relu(shortcut + y)


class ResNet(nnx.Module):
    """A small ResNet trunk: ``stem → stages of basic blocks → pooling → dense → ReLU``.

    The stem is a 3×3 convolution with ``features[0]`` channels; stage ``s`` has
    ``blocks_per_stage`` :class:`BasicBlock` s of ``features[s]`` channels, the first of each
    stage after the first with stride 2. The feature map is average-pooled onto a
    ``grid × grid`` partition (``grid=1`` is the paper's global average pooling; a larger grid
    keeps where features fire, as :class:`~mtljax.models.SmallCNN`), flattened, and mapped to
    ``out_features`` by a dense layer and a ReLU. Group normalisation (Wu & He, ECCV 2018;
    ``gcd(C, 8)`` groups) replaces batch normalisation: the functional train step carries no
    batch statistics.

    Args:
      in_channels: channels of the NHWC input.
      features: channels of each stage.
      blocks_per_stage: basic blocks per stage.
      out_features: width of the output representation.
      grid: cells per side of the final average pooling.
      rngs: the parameter initialisation keys.

    Attributes:
      out_features: the width of the output representation.

    Example:
      >>> import jax.numpy as jnp
      >>> ResNet(1, features=(8, 16), out_features=32, rngs=nnx.Rngs(0))(
      ...     jnp.ones((2, 12, 12, 1))).shape
      (2, 32)

    References:
      He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
      arXiv:1512.03385.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        features: Sequence[int] = (16, 32),
        blocks_per_stage: int = 1,
        out_features: int = 64,
        grid: int = 1,
        rngs: nnx.Rngs,
    ):
        channels = [int(in_channels), *map(int, features)]
        sizes = (int(blocks_per_stage), int(out_features), int(grid))
        if len(channels) < 2 or any(c < 1 for c in channels) or min(sizes) < 1:
            raise ValueError(
                f"ResNet sizes must be positive with at least one stage, got in_channels="
                f"{in_channels}, features={tuple(features)}, blocks_per_stage={blocks_per_stage},"
                f" out_features={out_features}, grid={grid}."
            )
        self.in_channels = channels[0]
        self.out_features = int(out_features)
        self.grid = int(grid)
        self.stem = nnx.Conv(channels[0], channels[1], (3, 3), rngs=rngs)
        blocks = []
        previous = channels[1]
        for stage, width in enumerate(channels[1:]):
            for i in range(int(blocks_per_stage)):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(previous, width, stride, rngs=rngs))
                previous = width
        self.blocks = nnx.List(blocks)
        self.dense = nnx.Linear(previous * self.grid**2, self.out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ResNet expects NHWC inputs with {self.in_channels} channels, got shape {x.shape}."
            )
        x = jax.nn.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = _adaptive_average_pool(x, self.grid)
        return jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
