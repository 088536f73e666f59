"""Multi-Task Attention Network (MTAN), small: per-task soft attention over a shared conv trunk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads
from mtljax.models.cnn import _adaptive_average_pool


def _pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class SharedBlock(nnx.Module):
    """``u = relu(conv_a(h))``, ``p = relu(conv_b(u))``; the next block reads ``maxpool(p)``."""

    def __init__(self, in_channels: int, channels: int, *, rngs: nnx.Rngs):
        self.conv_a = nnx.Conv(in_channels, channels, kernel_size=(3, 3), rngs=rngs)
        self.conv_b = nnx.Conv(channels, channels, kernel_size=(3, 3), rngs=rngs)

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        u = jax.nn.relu(self.conv_a(h))
        return u, jax.nn.relu(self.conv_b(u))


class AttentionModule(nnx.Module):
    """Task ``t``'s attention at block ``j``.

    The mask ``m = σ(conv₁ₓ₁(relu(conv₁ₓ₁([u^j; f^{j-1}]))))`` (``f^{j-1}`` absent at the first
    block) gates the block's output: ``a = m ⊙ p^j``. ``f^j = maxpool(relu(conv₃ₓ₃(a)))``
    carries the attended features to the next block's resolution and width (``out_channels``;
    ``None`` at the last block).
    """

    def __init__(
        self, channels: int, reads_previous: bool, out_channels: int | None, *, rngs: nnx.Rngs
    ):
        width = 2 * channels if reads_previous else channels
        self.mask_in = nnx.Conv(width, channels, kernel_size=(1, 1), rngs=rngs)
        self.mask_out = nnx.Conv(channels, channels, kernel_size=(1, 1), rngs=rngs)
        self.to_next = (
            None
            if out_channels is None
            else nnx.Conv(channels, out_channels, kernel_size=(3, 3), rngs=rngs)
        )

    def __call__(
        self, u: jax.Array, p: jax.Array, previous: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        """``(a, f)`` from the block's features and the previous attention's ``f``."""
        g = u if previous is None else jnp.concatenate([u, previous], axis=-1)
        a = jax.nn.sigmoid(self.mask_out(jax.nn.relu(self.mask_in(g)))) * p
        f = None if self.to_next is None else _pool(jax.nn.relu(self.to_next(a)))
        return a, f


class MTAN(nnx.Module):
    """A small Multi-Task Attention Network on a SmallCNN-style trunk.

    The shared trunk has blocks ``j = 1..J`` (two 3×3 convolutions each, then 2×2 max-pool):
    block ``j`` yields features ``u^j`` (first conv) and ``p^j`` (second conv). Each task has
    one :class:`AttentionModule` per block, whose soft mask ``m_t^j ∈ (0, 1)`` — computed from
    ``u^j`` and the task's previous attended features — selects from ``p^j``:
    ``a_t^j = m_t^j ⊙ p^j``. Task ``t`` predicts from ``maxpool(a_t^J)``, average-pooled onto a
    ``grid × grid`` partition (as :class:`~mtljax.models.SmallCNN`) and flattened, with a linear
    head. The paper's SegNet trunk, batch normalisation and dense decoders are shrunk to this.

    Shared parameters: the trunk's blocks, under ``shared``. The attention modules
    (``attention``) and heads are task-specific.

    Representation level: supported. :meth:`encode` returns the trunk's features
    ``((u^1, p^1), ..., (u^J, p^J))`` — every task reads all of them — and :meth:`decode` runs
    the attention modules and heads.

    Args:
      in_channels: channels of the NHWC input.
      head_dims: output width of each task's head, keyed by task name (order kept).
      features: channels of each block.
      grid: cells per side of the final average pooling.
      rngs: the parameter initialisation keys.

    Example:
      >>> model = MTAN(1, {"a": 3, "b": 1}, features=(4, 8), rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(jnp.ones((2, 12, 12, 1))).items()}
      {'a': (2, 3), 'b': (2, 1)}

    References:
      Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
      arXiv:1803.10704.
    """

    def __init__(
        self,
        in_channels: int,
        head_dims: Mapping[str, int],
        *,
        features: Sequence[int] = (16, 32),
        grid: int = 3,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "MTAN")
        channels = [int(in_channels), *map(int, features)]
        if len(channels) < 2 or any(c < 1 for c in channels) or int(grid) < 1:
            raise ValueError(
                f"MTAN needs positive sizes and at least one block, got in_channels="
                f"{in_channels}, features={tuple(features)}, grid={grid}."
            )
        self.in_channels, self.grid = channels[0], int(grid)
        self.shared = nnx.List(
            [SharedBlock(a, b, rngs=rngs) for a, b in zip(channels[:-1], channels[1:], strict=True)]
        )
        blocks = channels[1:]
        nexts = [*blocks[1:], None]

        def modules():
            return nnx.List(
                [
                    AttentionModule(c, j > 0, nxt, rngs=rngs)
                    for j, (c, nxt) in enumerate(zip(blocks, nexts, strict=True))
                ]
            )

        self.attention = nnx.Dict({name: modules() for name in head_dims})
        self.heads = linear_heads(blocks[-1] * self.grid**2, head_dims, rngs)

    def encode(self, x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """The trunk's per-block features ``((u^1, p^1), ..., (u^J, p^J))``."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"MTAN expects NHWC inputs with {self.in_channels} channels, got shape {x.shape}."
            )
        features = []
        for block in self.shared:
            u, p = block(x)
            features.append((u, p))
            x = _pool(p)
        return tuple(features)

    def decode(self, rep: Sequence[tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
        """Every task's output from the trunk's features."""
        out = {}
        for name, head in self.heads.items():
            previous = None
            for module, (u, p) in zip(self.attention[name], rep, strict=True):
                a, previous = module(u, p, previous)
            pooled = _adaptive_average_pool(_pool(a), self.grid)
            out[name] = head(pooled.reshape(pooled.shape[0], -1))
        return out

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        return self.decode(self.encode(x))
