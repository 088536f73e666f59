"""Missing labels: one shared input, one label per task, and some labels absent.

When not every sample is annotated for every task (e.g. CelebA attributes collected for part of
the images, or two datasets merged on a shared input), each batch carries a per-task boolean
mask ``batch["label_mask"] = {task: [B]}``, true where the task's label is present. A task's
loss is then the mean over its labelled samples only,

    L_t = Σ_i m_ti ℓ_ti / max(Σ_i m_ti, 1),

so a missing label contributes neither loss nor gradient, and a task with no label in the batch
has ``L_t = 0`` (no NaN) and a reported count ``n_t = Σ_i m_ti = 0``. The placeholder written
where a label is missing (``-1``, ``NaN``) is never read by the loss, provided the per-sample
losses are computed from labels sanitised with :func:`fill_missing` (a ``NaN`` that enters a
loss poisons its gradient even when the mean masks it out).

A user's loss function::

    def task_losses(outputs, batch):
        mask = batch[LABEL_MASK]
        per_sample = {
            t: optax.softmax_cross_entropy_with_integer_labels(
                outputs[t], fill_missing(batch[t], mask[t], 0))
            for t in tasks.names
        }
        losses, counts = masked_task_losses(per_sample, mask)
        return losses, {"label_count": counts}

Under data parallelism each device averages over its own labelled samples and the step averages
the devices, which equals the global masked mean when every device has the same count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.objectives import _masked_mean

LABEL_MASK = "label_mask"


def label_mask(labels: np.ndarray, missing: float | int | None = -1) -> np.ndarray:
    """``[N]`` bool, true where a sample has a label (host side, numpy).

    A sample's label is missing when every entry of ``labels[i]`` equals ``missing`` or is NaN
    (so a segmentation map whose pixels are all ``-1`` counts as missing, one with some labelled
    pixels as present).

    Args:
      labels: ``[N, ...]`` labels, with ``missing`` or NaN where absent.
      missing: the placeholder value; ``None`` to treat only NaN as missing.

    Example:
      >>> label_mask(np.array([3, -1, 0])).tolist()
      [True, False, True]
    """
    labels = np.asarray(labels)
    flat = labels.reshape(len(labels), -1)
    absent = np.zeros(flat.shape, bool)
    if np.issubdtype(flat.dtype, np.floating):
        absent |= np.isnan(flat)
    if missing is not None:
        absent |= flat == missing
    return ~absent.all(axis=1)


def with_label_masks(
    arrays: Mapping[str, np.ndarray], tasks: Sequence[str], missing: float | int | None = -1
) -> dict:
    """``arrays`` plus ``arrays["label_mask"] = {task: label_mask(arrays[task], missing)}``."""
    if LABEL_MASK in arrays:
        raise ValueError(f'arrays already holds a "{LABEL_MASK}" entry.')
    unknown = [t for t in tasks if t not in arrays]
    if unknown:
        raise KeyError(f"No label arrays for tasks {unknown}; arrays has {sorted(arrays)}.")
    return {**arrays, LABEL_MASK: {t: label_mask(arrays[t], missing) for t in tasks}}


def fill_missing(labels: jax.Array, mask: jax.Array, value=0) -> jax.Array:
    """``labels`` with the rows of missing samples (``mask [B]`` false) replaced by ``value``."""
    labels = jnp.asarray(labels)
    keep = jnp.asarray(mask, bool).reshape((-1,) + (1,) * (labels.ndim - 1))
    return jnp.where(keep, labels, jnp.asarray(value, labels.dtype))


def masked_task_losses(
    per_sample_losses: Mapping[str, jax.Array], label_masks: Mapping[str, jax.Array]
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Per-task masked means ``L_t = Σ_i m_ti ℓ_ti / max(Σ_i m_ti, 1)`` and counts ``n_t``.

    Args:
      per_sample_losses: ``{task: [B]}`` per-sample losses.
      label_masks: ``{task: [B]}`` bool (or 0/1), true where the label is present; a task
        without an entry has all its labels.

    Returns:
      ``(losses, counts)``: ``{task: []}`` masked means (0 for a task with no label in the
      batch) and ``{task: []}`` int32 label counts.

    Example:
      >>> losses, counts = masked_task_losses(
      ...     {"a": jnp.array([1.0, 3.0]), "b": jnp.array([5.0, 7.0])},
      ...     {"a": jnp.array([True, False]), "b": jnp.array([False, False])})
      >>> float(losses["a"]), float(losses["b"]), int(counts["a"]), int(counts["b"])
      (1.0, 0.0, 1, 0)
    """
    unknown = sorted(set(label_masks) - set(per_sample_losses))
    if unknown:
        raise KeyError(f"label masks for unknown tasks {unknown}.")
    losses, counts = {}, {}
    for task, values in per_sample_losses.items():
        values = jnp.asarray(values)
        if values.ndim != 1:
            raise ValueError(
                f"Per-sample losses of task {task!r} must have shape [B], got {values.shape}."
            )
        mask = label_masks.get(task)
        mask = jnp.ones(values.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
        losses[task] = _masked_mean(values, mask)
        counts[task] = jnp.sum(mask, dtype=jnp.int32)
    return losses, counts
