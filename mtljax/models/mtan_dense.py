"""MTAN for dense prediction: per-task attention masks over a shared SegNet, per-pixel heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtljax.models._heads import check_heads, dense_heads
from mtljax.models.segnet import SegNet


class AttentionMask(nnx.Module):
    """A task's soft mask ``m = σ(conv₁ₓ₁(relu(conv₁ₓ₁(g)))) ∈ (0, 1)`` (MTAN's attention
    layer, without batch normalisation)."""

    def __init__(self, in_channels: int, channels: int, *, rngs: nnx.Rngs):
        self.mask_in = nnx.Conv(in_channels, channels, (1, 1), rngs=rngs)
        self.mask_out = nnx.Conv(channels, channels, (1, 1), rngs=rngs)

    def __call__(self, g: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.mask_out(jax.nn.relu(self.mask_in(g))))


class SharedTrunk(nnx.Module):
    """MTAN's shared parts: the SegNet, and the 3×3 convolutions that carry every task's
    attended features from one block (or stage) to the next (one per block, shared by the
    tasks as in the paper)."""

    def __init__(self, in_channels, features, convs, norm, *, rngs: nnx.Rngs):
        self.segnet = SegNet(in_channels, features=features, convs=convs, norm=norm, rngs=rngs)
        blocks = [int(c) for c in features]
        # The encoder's last carry keeps c_J channels: it feeds the first decoder stage.
        nexts = [*blocks[1:], blocks[-1]]
        outs = [blocks[0], *blocks[:-1]]
        self.encoder_carry = nnx.List(
            [nnx.Conv(c, n, (3, 3), rngs=rngs) for c, n in zip(blocks, nexts, strict=True)]
        )
        self.decoder_carry = nnx.List(
            [nnx.Conv(c, o, (3, 3), rngs=rngs) for c, o in zip(blocks, outs, strict=True)][::-1]
        )


class DenseMTAN(nnx.Module):
    """The Multi-Task Attention Network of the NYUv2 and Cityscapes benchmarks.

    A shared :class:`~mtljax.models.SegNet` has encoder blocks ``j = 1..J`` (first activation
    ``u_j``, output ``p_j``) and decoder stages (unpooled input ``up_j``, output ``p'_j``). Each
    task ``t`` owns one :class:`AttentionMask` per block and stage, which selects from the
    shared features; shared 3×3 convolutions ``φ_j`` (one per block and stage, used by every
    task) carry the attended features ``f`` onwards:

    * encoder: ``a_j = m_tj([u_j; f]) ⊙ p_j`` (``[u_1]`` alone at the first block) and
      ``f = maxpool(relu(φ_j(a_j)))``;
    * decoder: ``a'_j = m'_tj([up_j; relu(φ'_j(resize(f)))]) ⊙ p'_j`` and ``f = a'_j``.

    The last ``f``, at the input resolution, goes through the task's per-pixel head
    (:class:`~mtljax.models._heads.DenseHead`), so every task predicts ``[B, H, W, dim]``. Heads
    give raw values: the task's loss applies its link (softmax, normalisation).

    Shared parameters (``shared``): the SegNet and the carrying convolutions. The masks
    (``attention``) and heads are task-specific. Parameter level only: the carrying
    convolutions are shared and run after the task split, so no single representation is read
    by every task (as :class:`~mtljax.models.PLE`).

    Deviations from the paper's network: no batch normalisation (``norm="group"`` puts group
    normalisation in the SegNet), bilinear resizing without aligned corners, and the small
    default size; ``features=SEGNET_FEATURES, convs=SEGNET_CONVS`` (:mod:`mtljax.models.segnet`)
    give the published channels and depth (about 44M parameters for NYUv2's three tasks).

    Args:
      in_channels: channels of the NHWC input.
      head_dims: output channels of each task's head, keyed by task name (order kept).
      features, convs, norm: the SegNet's (see :class:`~mtljax.models.SegNet`).
      rngs: the parameter initialisation keys.

    Example:
      >>> model = DenseMTAN(3, {"seg": 5, "depth": 1}, features=(4, 8), rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(jnp.ones((2, 8, 12, 3))).items()}
      {'seg': (2, 8, 12, 5), 'depth': (2, 8, 12, 1)}

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
        convs: int | Sequence[int] = 2,
        norm: str = "none",
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "DenseMTAN")
        self.shared = SharedTrunk(in_channels, features, convs, norm, rngs=rngs)
        blocks = [int(c) for c in features]
        outs = [blocks[0], *blocks[:-1]]

        def masks():
            encoder = [AttentionMask(c * (1 + (j > 0)), c, rngs=rngs) for j, c in enumerate(blocks)]
            decoder = [
                AttentionMask(c + o, o, rngs=rngs) for c, o in zip(blocks, outs, strict=True)
            ]
            return nnx.List(encoder + decoder[::-1])

        self.num_blocks = len(blocks)
        self.attention = nnx.Dict({name: masks() for name in head_dims})
        self.heads = dense_heads(blocks[0], head_dims, rngs)

    def _attend(self, masks, stages) -> jax.Array:
        """Task's last attended features ``[B, H, W, c_1]`` from the SegNet's stages."""
        j, shared = self.num_blocks, self.shared
        f = None
        for mask, carry, (u, p) in zip(masks[:j], shared.encoder_carry, stages[:j], strict=True):
            g = u if f is None else jnp.concatenate([u, f], axis=-1)
            f = nnx.max_pool(jax.nn.relu(carry(mask(g) * p)), (2, 2), (2, 2), padding="SAME")
        for mask, carry, (up, p) in zip(masks[j:], shared.decoder_carry, stages[j:], strict=True):
            # Bilinear upsampling as in MTAN (which aligns corners; jax.image.resize does not).
            f = jax.image.resize(f, (*up.shape[:3], f.shape[-1]), "bilinear")
            f = mask(jnp.concatenate([up, jax.nn.relu(carry(f))], axis=-1)) * p
        return f

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        stages = self.shared.segnet.stages(x)
        return {
            name: head(self._attend(self.attention[name], stages))
            for name, head in self.heads.items()
        }
