"""Hard parameter sharing: one shared trunk, one head per task (linear, or per-pixel)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
from flax import nnx


class HardSharing(nnx.Module):
    """A shared trunk followed by one linear head per task (hard parameter sharing).

    The parts are named for :func:`mtljax.nnx_bridge.split_params`: ``shared`` is the trunk (its
    parameters form the Jacobian of gradient methods) and ``heads`` holds the task-specific
    layers. ``encode`` gives the shared representation, the input of representation-level
    methods; ``decode`` maps it to every task's output.

    Args:
      trunk: any module with an ``out_features`` attribute mapping ``x`` to ``[B, D]`` (or
        ``[B, H, W, D]`` for a dense trunk such as :class:`~mtljax.models.SegNet`).
      head_dims: output width of each task's head, keyed by task name (order kept).
      head: builds one head as ``head(D, dim, rngs=rngs)``; ``nnx.Linear`` by default (on
        ``[B, H, W, D]`` a per-pixel 1×1 map), :class:`~mtljax.models._heads.DenseHead` for
        MTAN's 3×3 + 1×1 per-pixel head.
      rngs: the parameter initialisation keys.

    Example:
      >>> from mtljax.models import MLP
      >>> rngs = nnx.Rngs(0)
      >>> model = HardSharing(MLP(4, (8,), rngs=rngs), {"a": 3, "b": 1}, rngs=rngs)
      >>> {k: v.shape for k, v in model(jax.numpy.ones((2, 4))).items()}
      {'a': (2, 3), 'b': (2, 1)}
    """

    def __init__(
        self,
        trunk: nnx.Module,
        head_dims: Mapping[str, int],
        *,
        head: Callable[..., nnx.Module] = nnx.Linear,
        rngs: nnx.Rngs,
    ):
        if not head_dims:
            raise ValueError("HardSharing needs at least one task head.")
        if "shared" in head_dims:
            # split_params selects the trunk by the path element "shared".
            raise ValueError('A task cannot be named "shared" (the trunk\'s name).')
        if not hasattr(trunk, "out_features"):
            raise ValueError(f"The trunk {type(trunk).__name__} needs an out_features attribute.")
        bad = {name: dim for name, dim in head_dims.items() if int(dim) < 1}
        if bad:
            raise ValueError(f"Head widths must be positive, got {bad}.")
        self.shared = trunk
        self.heads = nnx.Dict(
            {name: head(trunk.out_features, int(dim), rngs=rngs) for name, dim in head_dims.items()}
        )

    def encode(self, x: jax.Array) -> jax.Array:
        """The shared representation ``[B, D]``."""
        return self.shared(x)

    def decode(self, rep: jax.Array) -> dict[str, jax.Array]:
        """Every task's output from the shared representation."""
        return {name: head(rep) for name, head in self.heads.items()}

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        return self.decode(self.encode(x))
