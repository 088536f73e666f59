"""A ReLU multi-layer perceptron trunk."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


def flatten_input(x: jax.Array, in_features: int, owner: str) -> jax.Array:
    """``[B, ...]`` → ``[B, in_features]``; raises naming ``owner`` if the sizes differ."""
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != in_features:
        raise ValueError(
            f"{owner} expects {in_features} features per sample, got input shape "
            f"{x.shape} after flattening."
        )
    return x


class MLP(nnx.Module):
    """A ReLU MLP: ``x -> relu(W_k ... relu(W_1 flatten(x)))``.

    Inputs are flattened beyond the batch axis, so ``[B, H, W, C]`` images work directly. Every
    layer, the last included, is followed by a ReLU: the MLP is a trunk whose output feeds task
    heads. With ``hidden=()`` it is the flattening identity.

    Args:
      in_features: the size of one flattened input.
      hidden: the widths of the hidden layers.
      rngs: the parameter initialisation keys.

    Attributes:
      out_features: the width of the output representation.

    Example:
      >>> import jax.numpy as jnp
      >>> mlp = MLP(64, (32, 16), rngs=nnx.Rngs(0))
      >>> mlp(jnp.ones((5, 8, 8, 1))).shape
      (5, 16)
    """

    def __init__(self, in_features: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
        widths = [int(in_features), *map(int, hidden)]
        if any(w < 1 for w in widths):
            raise ValueError(f"MLP widths must be positive, got {widths}.")
        self.in_features = widths[0]
        self.out_features = widths[-1]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = flatten_input(x, self.in_features, "MLP")
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x
