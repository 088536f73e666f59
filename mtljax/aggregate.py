"""One-shot aggregation of a Jacobian matrix, for notebooks and quick experiments."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp

from mtljax.methods import get_factory, get_method


def aggregate(name: str, jacobian, *, task_losses=None, key=None, **hparams) -> jax.Array:
    """Applies method ``name`` once to a ``[T, P]`` matrix, from the method's initial state.

    Args:
      name: a registry name (``mtljax methods`` lists them).
      jacobian: ``[T, P]`` array of per-task gradients (rows).
      task_losses: ``[T]`` losses, for methods that read them.
      key: PRNG key or seed, for randomised methods (ignored by deterministic ones).
      **hparams: the method's hyper-parameters.

    Returns:
      The ``[P]`` update ``d``.

    Example:
      >>> import numpy as np
      >>> aggregate("mgda", np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
      [0.5, 0.5]
    """
    jac = jnp.asarray(jacobian)
    if jac.ndim != 2:
        raise ValueError(f"aggregate expects a [T, P] matrix, got shape {jac.shape}.")
    if key is not None and "key" in inspect.signature(get_factory(name)).parameters:
        hparams["key"] = key
    method = get_method(name, jac.shape[0], **hparams)
    state = method.init(jnp.zeros(jac.shape[1:], jac.dtype))
    if task_losses is not None:
        task_losses = jnp.asarray(task_losses, jac.dtype)
    return method.apply(jac, state, task_losses=task_losses).updates
