"""Per-task objectives and metrics: batch means with an optional mask for missing labels.

Each function reduces over the batch axis to a scalar. With ``mask`` (``[B]``, bool or 0/1) the
mean runs over the kept samples only, ``Σ_i m_i ℓ_i / max(Σ_i m_i, 1)``: padding and missing
labels do not count, and an all-masked batch gives 0 (not NaN), so the task contributes no
gradient. Masked labels may hold any value (e.g. -1): they are never read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return values.mean()
    mask = jnp.asarray(mask)
    if mask.shape != values.shape:
        raise ValueError(f"mask must have shape {values.shape} (the batch), got {mask.shape}.")
    keep = mask.astype(bool)
    # `where`, not a product: a masked NaN (e.g. a missing regression target) must not leak.
    total = jnp.sum(jnp.where(keep, values, jnp.zeros_like(values)))
    return total / jnp.maximum(jnp.sum(keep), 1).astype(values.dtype)


def _safe_labels(labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    labels = jnp.asarray(labels)
    return labels if mask is None else jnp.where(jnp.asarray(mask, bool), labels, 0)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy of ``logits [B, K]`` against integer ``labels [B]``.

    Example:
      >>> float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
      1.3862943649291992
    """
    labels = _safe_labels(labels, mask)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _masked_mean(losses, mask)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of samples whose ``argmax`` of ``logits [B, K]`` equals ``labels [B]``."""
    correct = (jnp.argmax(logits, axis=-1) == jnp.asarray(labels)).astype(
        jnp.promote_types(logits.dtype, jnp.float32)
    )
    return _masked_mean(correct, mask)


def mse(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error; per sample it averages over the non-batch axes of ``pred [B, ...]``."""
    target = jnp.asarray(target).reshape(pred.shape)
    squared = jnp.square(pred - target.astype(pred.dtype))
    per_sample = squared.reshape(pred.shape[0], -1).mean(axis=1) if pred.ndim > 1 else squared
    return _masked_mean(per_sample, mask)
