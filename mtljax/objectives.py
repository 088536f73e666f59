"""Per-task objectives: batch means over the labelled samples, pixels or entries.

``softmax_cross_entropy``, ``accuracy`` and ``mse`` reduce over the batch axis to a scalar. With
``mask`` (``[B]``, bool or 0/1) the mean runs over the kept samples only,
``Σ_i m_i ℓ_i / max(Σ_i m_i, 1)``: padding and missing labels do not count, and an all-masked
batch gives 0 (not NaN), so the task contributes no gradient. Masked labels may hold any value
(e.g. -1): they are never read.

The built-in task types of :mod:`mtljax.tasks` build their losses from the pieces below: a
validity rule (which elements of a target are labelled), a per-element loss, and
:class:`MaskedLoss`, the mean over the valid elements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


# --- Built-in task objectives -------------------------------------------------------------
#
# A task's loss is a masked mean over its *valid elements*: samples for classification, labels
# for multi-label, entries for regression, pixels for dense tasks. A validity rule maps a target
# to a bool array of the element shape; an optional ``mask [B]`` (padding, missing samples)
# removes whole samples on top. Invalid targets are replaced by 0 before any arithmetic, so a
# NaN or -1 placeholder never reaches a loss or its gradient.


@dataclasses.dataclass(frozen=True)
class ClassLabels:
    """Integer labels, valid where ``0 <= label < num_classes`` and ``label != ignore``.

    The element shape is the label shape: ``[B]`` for classification, ``[B, H, W]`` for
    segmentation.

    Example:
      >>> ClassLabels(3)(jnp.array([0, 2, 3, -1])).tolist()
      [True, True, False, False]
    """

    num_classes: int
    ignore: int = -1

    def __call__(self, labels: jax.Array) -> jax.Array:
        labels = jnp.asarray(labels)
        return (labels >= 0) & (labels < self.num_classes) & (labels != self.ignore)


@dataclasses.dataclass(frozen=True)
class BinaryLabels:
    """Binary labels in ``{0, 1}``, valid where ``label >= 0`` (a negative label is missing).

    Example:
      >>> BinaryLabels()(jnp.array([[1, 0, -1]])).tolist()
      [[True, True, False]]
    """

    def __call__(self, labels: jax.Array) -> jax.Array:
        return jnp.asarray(labels) >= 0


@dataclasses.dataclass(frozen=True)
class FiniteTargets:
    """Real targets, valid where finite (``NaN`` marks a missing entry); element = entry.

    Example:
      >>> FiniteTargets()(jnp.array([1.0, jnp.nan])).tolist()
      [True, False]
    """

    def __call__(self, target: jax.Array) -> jax.Array:
        return jnp.isfinite(jnp.asarray(target))


@dataclasses.dataclass(frozen=True)
class NonzeroPixels:
    """Dense targets ``[B, H, W, C]``, a pixel valid where ``Σ_c target ≠ 0``.

    This is the rule of the published NYUv2/Cityscapes evaluation code (MTAN, LibMTL): missing
    depth and normals are stored as zeros. Element shape ``[B, H, W]``.

    Example:
      >>> NonzeroPixels()(jnp.array([[[[0.0], [2.0]]]])).tolist()
      [[[False, True]]]
    """

    def __call__(self, target: jax.Array) -> jax.Array:
        return jnp.sum(jnp.asarray(target), axis=-1) != 0


def valid_elements(valid: Callable, target: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``valid(target)`` and, with ``mask [B]``, only the elements of kept samples."""
    keep = valid(target)
    if mask is None:
        return keep
    mask = jnp.asarray(mask, bool)
    if mask.shape != keep.shape[:1]:
        raise ValueError(f"mask must have shape {keep.shape[:1]} (the batch), got {mask.shape}.")
    return keep & mask.reshape(mask.shape + (1,) * (keep.ndim - 1))


def fill_invalid(target: jax.Array, keep: jax.Array) -> jax.Array:
    """``target`` with 0 wherever ``keep`` (an element mask, a prefix of its shape) is false."""
    target = jnp.asarray(target)
    keep = keep.reshape(keep.shape + (1,) * (target.ndim - keep.ndim))
    return jnp.where(keep, target, jnp.zeros((), target.dtype))


def cross_entropy_elements(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy per element: ``logits [..., K]``, integer ``labels [...]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def binary_cross_entropy_elements(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sigmoid cross-entropy per label: ``logits [B, L]``, ``labels [B, L]`` (1 = positive)."""
    return optax.sigmoid_binary_cross_entropy(logits, (labels > 0).astype(logits.dtype))


def squared_error_elements(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``(p − t)²`` per entry, in the shape of ``target`` (``pred`` is reshaped to it)."""
    return jnp.square(pred.reshape(target.shape) - target.astype(pred.dtype))


def absolute_error_elements(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``|p − t|`` per entry, in the shape of ``target`` (``pred`` is reshaped to it)."""
    return jnp.abs(pred.reshape(target.shape) - target.astype(pred.dtype))


def pixel_absolute_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``Σ_c |p − t|`` per pixel of ``[B, H, W, C]`` maps (the depth L1 for ``C = 1``)."""
    return jnp.sum(jnp.abs(pred - target.reshape(pred.shape).astype(pred.dtype)), axis=-1)


def unit_normals(pred: jax.Array) -> jax.Array:
    """``p / max(‖p‖, 1e-6)`` over the last axis, in at least float32.

    The guard keeps a zero vector zero with a finite gradient (``rsqrt`` of the smallest
    normal float would overflow in the backward pass and turn 0 · ∞ into NaN).
    """
    pred = pred.astype(jnp.promote_types(pred.dtype, jnp.float32))
    squared = jnp.sum(jnp.square(pred), axis=-1, keepdims=True)
    return pred * jax.lax.rsqrt(jnp.maximum(squared, 1e-12))


def cosine_distance(pred: jax.Array, target: jax.Array) -> jax.Array:
    """``1 − ⟨p / ‖p‖, t⟩`` per pixel of ``[B, H, W, 3]`` maps (targets are unit vectors)."""
    unit = unit_normals(pred)
    return 1.0 - jnp.sum(unit * target.astype(unit.dtype), axis=-1)


@dataclasses.dataclass(frozen=True)
class MaskedLoss:
    """A task loss: the mean of ``elementwise(pred, target)`` over the valid elements.

    ``L = Σ_e k_e ℓ_e / max(Σ_e k_e, 1)`` with ``k = valid(target)`` (and-ed with the sample
    ``mask [B]`` when given): 0, not NaN, when no element is valid. Being a frozen dataclass of
    module-level functions, two equal tasks have equal losses.

    Example:
      >>> loss = MaskedLoss(absolute_error_elements, FiniteTargets())
      >>> float(loss(jnp.array([1.0, 5.0]), jnp.array([3.0, jnp.nan])))
      2.0
    """

    elementwise: Callable[[jax.Array, jax.Array], jax.Array]
    valid: Callable[[jax.Array], jax.Array]

    def __call__(self, pred: jax.Array, target: jax.Array, mask: jax.Array | None = None):
        keep = valid_elements(self.valid, target, mask)
        values = self.elementwise(pred, fill_invalid(target, keep))
        return _masked_mean(values, keep)


@dataclasses.dataclass(frozen=True)
class ValidCount:
    """``target -> int32`` number of valid elements (of kept samples when ``mask`` is given).

    Example:
      >>> int(ValidCount(ClassLabels(3))(jnp.array([0, -1, 2])))
      2
    """

    valid: Callable[[jax.Array], jax.Array]

    def __call__(self, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return jnp.sum(valid_elements(self.valid, target, mask), dtype=jnp.int32)
