"""Pytree Jacobians for the method tests: a ``[T, 5]`` matrix split into two leaves, and back."""

import jax
import jax.numpy as jnp
import numpy as np


def as_tree(matrix, dtype):
    """Splits a ``[T, 5]`` matrix into ``{"a": [T, 3], "b": [T, 1, 2]}``."""
    matrix = np.asarray(matrix)
    return {
        "a": jnp.asarray(matrix[:, :3], dtype),
        "b": jnp.asarray(matrix[:, 3:].reshape(matrix.shape[0], 1, 2), dtype),
    }


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])
