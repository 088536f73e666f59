"""A SegNet-style encoder-decoder: the shared trunk of the dense (per-pixel) architectures."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("none", "group")
# The published size (MTAN's SegNet, after VGG-16): channels and 3×3 convolutions per block.
SEGNET_FEATURES = (64, 128, 256, 512, 512)
SEGNET_CONVS = (2, 3, 3, 3, 3)


def max_pool_with_indices(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """2×2 max-pooling of ``[B, H, W, C]`` that also returns where each maximum was.

    Odd sizes are padded with ``-inf`` (``H → ⌈H/2⌉``, as ``SAME`` pooling). The gradient
    reaches the chosen element only (the first maximum of its window).

    Returns:
      ``(pooled [B, ⌈H/2⌉, ⌈W/2⌉, C], index [B, ⌈H/2⌉, ⌈W/2⌉, C])``, ``index ∈ {0..3}`` the
      row-major position of the maximum in its 2×2 window.
    """
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    rows, cols = x.shape[1] // 2, x.shape[2] // 2
    windows = x.reshape(b, rows, 2, cols, 2, c).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(b, rows, cols, c, 4)
    index = jnp.argmax(windows, axis=-1)
    pooled = jnp.take_along_axis(windows, index[..., None], axis=-1)[..., 0]
    return pooled, index


def max_unpool(x: jax.Array, index: jax.Array, size: tuple[int, int]) -> jax.Array:
    """SegNet's upsampling: each value back to where its maximum was, zeros elsewhere.

    The inverse placement of :func:`max_pool_with_indices`: ``x [B, h, w, C]`` and ``index``
    give ``[B, H, W, C]`` with ``size = (H, W)`` the size before pooling.
    """
    b, rows, cols, c = x.shape
    windows = jax.nn.one_hot(index, 4, dtype=x.dtype) * x[..., None]  # [B, h, w, C, 4]
    out = windows.reshape(b, rows, cols, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return out.reshape(b, 2 * rows, 2 * cols, c)[:, : size[0], : size[1]]


class ConvBlock(nnx.Module):
    """``n`` 3×3 convolutions with ReLU (a norm before each ReLU with ``norm="group"``).

    Returns the first convolution's activation ``u`` and the last one's ``p`` (MTAN's
    attention reads both).
    """

    def __init__(self, in_channels: int, channels: int, n: int, norm: str, *, rngs: nnx.Rngs):
        widths = [in_channels] + [channels] * n
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.convs = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in pairs])
        # Group normalisation (Wu & He, ECCV 2018) stands in for SegNet's batch
        # normalisation: the functional train step carries no batch statistics.
        self.norms = nnx.List(
            [
                nnx.GroupNorm(channels, num_groups=math.gcd(channels, 8), rngs=rngs)
                for _ in range(n if norm == "group" else 0)
            ]
        )

    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        outputs = []
        for i, conv in enumerate(self.convs):
            h = conv(h)
            h = jax.nn.relu(self.norms[i](h) if len(self.norms) else h)
            outputs.append(h)
        return outputs[0], outputs[-1]


def _per_block(value: int | Sequence[int], count: int, name: str) -> tuple[int, ...]:
    values = (int(value),) * count if isinstance(value, int) else tuple(map(int, value))
    if len(values) != count or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a positive int or {count} positive ints, got {value}.")
    return values


class SegNet(nnx.Module):
    """A SegNet encoder-decoder mapping ``[B, H, W, C_in]`` to features ``[B, H, W, c_1]``.

    Encoder block ``j = 1..J``: a :class:`ConvBlock` to ``c_j`` channels, then 2×2 max-pooling
    that remembers where each maximum was. Decoder stage ``j = J..1``: max-unpooling with
    block ``j``'s indices back to its resolution, then a :class:`ConvBlock` to ``c_{j-1}``
    channels (``c_1`` at the last stage). The output has the input's resolution for any
    ``H, W`` (odd sizes are padded while pooling and cropped while unpooling).

    :meth:`stages` exposes what MTAN's attention modules read: for every encoder block
    ``(u, p)`` (its first and last activation) and for every decoder stage ``(up, p)`` (its
    unpooled input and last activation).

    Args:
      in_channels: channels of the NHWC input.
      features: the channels ``c_1..c_J`` of the encoder blocks.
      convs: 3×3 convolutions per block (an int for all, or one per block); the decoder
        mirrors the encoder.
      norm: ``"none"`` or ``"group"`` (group normalisation after every convolution).
      rngs: the parameter initialisation keys.

    Attributes:
      out_features: ``c_1``, the channels of the output.

    Example:
      >>> net = SegNet(3, features=(4, 8), rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, 10, 14, 3))).shape
      (2, 10, 14, 4)

    References:
      Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
      Architecture for Image Segmentation", TPAMI 2017, arXiv:1511.00561.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        features: Sequence[int] = (16, 32),
        convs: int | Sequence[int] = 2,
        norm: str = "none",
        rngs: nnx.Rngs,
    ):
        channels = [int(in_channels), *map(int, features)]
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(
                f"SegNet needs positive sizes and at least one block, got in_channels="
                f"{in_channels}, features={tuple(features)}."
            )
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
        counts = _per_block(convs, len(channels) - 1, "convs")
        self.in_channels, self.out_features = channels[0], channels[1]
        self.encoder = nnx.List(
            [
                ConvBlock(a, b, n, norm, rngs=rngs)
                for a, b, n in zip(channels[:-1], channels[1:], counts, strict=True)
            ]
        )
        outs = [channels[1], *channels[1:-1]]  # decoder stage j maps c_j to c_{j-1} (c_1 last)
        self.decoder = nnx.List(
            [
                ConvBlock(a, b, n, norm, rngs=rngs)
                for a, b, n in reversed(list(zip(channels[1:], outs, counts, strict=True)))
            ]
        )

    def stages(self, x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """``((u_1, p_1), ..., (u_J, p_J), (up_J, p'_J), ..., (up_1, p'_1))``: encoder blocks,
        then decoder stages (deepest first); ``p'_1`` is the output."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"SegNet expects NHWC inputs with {self.in_channels} channels, got shape {x.shape}."
            )
        out, pools = [], []
        for block in self.encoder:
            u, p = block(x)
            out.append((u, p))
            x, index = max_pool_with_indices(p)
            pools.append((index, p.shape[1:3]))
        for block, (index, size) in zip(self.decoder, reversed(pools), strict=True):
            up = max_unpool(x, index, size)
            _, x = block(up)
            out.append((up, x))
        return tuple(out)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.stages(x)[-1][1]
