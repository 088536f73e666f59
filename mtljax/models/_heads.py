"""Task heads shared by the multi-task architectures: validation, one linear layer per task, and
per-pixel convolutional heads for the dense architectures."""

from __future__ import annotations

from collections.abc import Mapping

import jax
from flax import nnx


def check_heads(head_dims: Mapping[str, int], owner: str) -> dict[str, int]:
    """Validated head widths ``{task: dim}`` (order kept); a task cannot be named ``"shared"``."""
    if not head_dims:
        raise ValueError(f"{owner} needs at least one task head.")
    if "shared" in head_dims:
        # split_params selects the shared parameters by the path element "shared".
        raise ValueError(f'A task cannot be named "shared" ({owner}).')
    bad = {name: dim for name, dim in head_dims.items() if int(dim) < 1}
    if bad:
        raise ValueError(f"Head widths must be positive, got {bad}.")
    return {name: int(dim) for name, dim in head_dims.items()}


def linear_heads(in_features: int, head_dims: Mapping[str, int], rngs: nnx.Rngs) -> nnx.Dict:
    """One ``nnx.Linear(in_features, dim)`` per task, keyed by task name."""
    return nnx.Dict(
        {name: nnx.Linear(in_features, int(dim), rngs=rngs) for name, dim in head_dims.items()}
    )


class DenseHead(nnx.Module):
    """A per-pixel head ``conv₁ₓ₁(relu(conv₃ₓ₃(h)))``: ``[B, H, W, C] → [B, H, W, dim]`` (MTAN's
    prediction layers, without batch normalisation)."""

    def __init__(self, in_channels: int, dim: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Conv(in_channels, in_channels, (3, 3), rngs=rngs)
        self.out = nnx.Conv(in_channels, int(dim), (1, 1), rngs=rngs)

    def __call__(self, h):
        return self.out(jax.nn.relu(self.hidden(h)))


def dense_heads(in_channels: int, head_dims: Mapping[str, int], rngs: nnx.Rngs) -> nnx.Dict:
    """One :class:`DenseHead` per task, keyed by task name."""
    return nnx.Dict(
        {name: DenseHead(in_channels, dim, rngs=rngs) for name, dim in head_dims.items()}
    )
