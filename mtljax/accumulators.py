"""Metric accumulators: jittable sums over evaluation batches, then a value per metric.

A metric over a whole split is computed in two stages, so the split never needs to sit on the
host at once:

* a *statistic* (``init() -> stats``, ``update(stats, pred, target, mask) -> stats``) adds one
  batch's sufficient statistics (counts, sums, a confusion matrix, a histogram) to a pytree of
  int32/float32 arrays; ``update`` is pure and jittable, and ``mask [B]`` marks the real
  (non-padding) samples of the batch;
* a *reduction* (``stats -> scalar``) turns the accumulated statistics into the metric's value.

Several metrics may read one statistic (mIoU and pixel accuracy read one confusion matrix, the
five normal metrics one angle histogram); statistics are frozen dataclasses compared by value, so
an evaluator can keep one copy per distinct statistic. Undefined values (no valid element in
the split) are NaN.

The dense definitions follow the published NYUv2/Cityscapes protocol of MTAN, CAGrad, Nash-MTL
and LibMTL (``shared/DENSE_METRICS.md`` in the team notes):

References:
  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
  arXiv:1803.10704. Lin & Zhang, "LibMTL: A Python Library for Multi-Task Learning",
  JMLR 2023, arXiv:2203.14338.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.objectives import (
    BinaryLabels,
    ClassLabels,
    FiniteTargets,
    NonzeroPixels,
    fill_invalid,
    pixel_absolute_error,
    unit_normals,
    valid_elements,
)

Stats = dict[str, jax.Array]
Reduction = Callable[[Stats], jax.Array]

# Angle thresholds (degrees) of the published normal metrics, and their stats keys.
WITHIN = (11.25, 22.5, 30.0)


def within_key(threshold: float) -> str:
    """``"within_11.25"``, ``"within_22.5"``, ``"within_30"``: the stats key and metric name."""
    return f"within_{threshold:g}"


class Statistic(Protocol):
    """Sufficient statistics of one or more metrics, accumulated batch by batch."""

    def init(self) -> Stats: ...

    def update(
        self, stats: Stats, pred: jax.Array, target: jax.Array, mask: jax.Array | None = None
    ) -> Stats: ...


def _compute_dtype(pred: jax.Array) -> jnp.dtype:
    """At least float32: bfloat16 outputs are measured in float32."""
    return jnp.promote_types(jnp.asarray(pred).dtype, jnp.float32)


def _count(values: jax.Array) -> jax.Array:
    return jnp.sum(values, dtype=jnp.int32)


def _sum(values: jax.Array, keep: jax.Array) -> jax.Array:
    """``Σ_e k_e v_e`` in float32 (``where``, not a product: an invalid NaN must not leak)."""
    return jnp.sum(jnp.where(keep, values, 0)).astype(jnp.float32)


def _add(stats: Stats, increments: Stats) -> Stats:
    return {key: stats[key] + increments[key].astype(stats[key].dtype) for key in stats}


@dataclasses.dataclass(frozen=True)
class Hits:
    """``correct`` and ``count``: samples whose ``argmax`` of ``pred [..., K]`` is the label."""

    valid: Callable[[jax.Array], jax.Array]

    def init(self) -> Stats:
        return {"correct": jnp.zeros((), jnp.int32), "count": jnp.zeros((), jnp.int32)}

    def update(self, stats, pred, target, mask=None):
        keep = valid_elements(self.valid, target, mask)
        hit = jnp.argmax(pred, axis=-1) == fill_invalid(target, keep)
        return _add(stats, {"correct": _count(hit & keep), "count": _count(keep)})


@dataclasses.dataclass(frozen=True)
class BinaryCounts:
    """Per label ``tp, fp, fn, tn`` ``[L]`` of logits ``[B, L]`` (positive when > 0)."""

    num_labels: int

    def init(self) -> Stats:
        return {k: jnp.zeros((self.num_labels,), jnp.int32) for k in ("tp", "fp", "fn", "tn")}

    def update(self, stats, pred, target, mask=None):
        keep = valid_elements(BinaryLabels(), target, mask).reshape(-1, self.num_labels)
        truth = (fill_invalid(target, keep) > 0).reshape(-1, self.num_labels)
        guess = (pred > 0).reshape(-1, self.num_labels)

        def count(a, b):
            return jnp.sum(a & b & keep, axis=0, dtype=jnp.int32)

        return _add(
            stats,
            {
                "tp": count(guess, truth),
                "fp": count(guess, ~truth),
                "fn": count(~guess, truth),
                "tn": count(~guess, ~truth),
            },
        )


@dataclasses.dataclass(frozen=True)
class ErrorSums:
    """``absolute = Σ|p − t|``, ``squared = Σ(p − t)²`` and ``count`` over finite targets."""

    def init(self) -> Stats:
        zero = jnp.zeros((), jnp.float32)
        return {"absolute": zero, "squared": zero, "count": jnp.zeros((), jnp.int32)}

    def update(self, stats, pred, target, mask=None):
        keep = valid_elements(FiniteTargets(), target, mask)
        dtype = _compute_dtype(pred)
        error = pred.astype(dtype).reshape(keep.shape) - fill_invalid(target, keep).astype(dtype)
        return _add(
            stats,
            {
                "absolute": _sum(jnp.abs(error), keep),
                "squared": _sum(jnp.square(error), keep),
                "count": _count(keep),
            },
        )


@dataclasses.dataclass(frozen=True)
class ConfusionMatrix:
    """``confusion [C, C]`` int32: row = label, column = ``argmax`` of ``pred [..., C]``.

    Accumulated over every valid pixel of every image of the split (the published protocol,
    not a per-image mean).
    """

    valid: ClassLabels

    def init(self) -> Stats:
        c = self.valid.num_classes
        return {"confusion": jnp.zeros((c, c), jnp.int32)}

    def update(self, stats, pred, target, mask=None):
        c = self.valid.num_classes
        if pred.shape[-1] != c:  # an out-of-range cell would be dropped silently
            raise ValueError(f"Segmentation logits need {c} channels, got shape {pred.shape}.")
        keep = valid_elements(self.valid, target, mask)
        cell = fill_invalid(target, keep) * c + jnp.argmax(pred, axis=-1)
        counts = jnp.zeros((c * c,), jnp.int32).at[cell.ravel()].add(keep.ravel().astype(jnp.int32))
        return _add(stats, {"confusion": counts.reshape(c, c)})


@dataclasses.dataclass(frozen=True)
class DepthErrors:
    """Absolute and relative depth errors of ``pred, target [B, H, W, 1]`` on valid pixels.

    Two accumulations of ``e_abs = |p − t|`` and ``e_rel = |p − t| / t`` are kept:

    * the published protocol (MTAN, LibMTL): per batch the mean over its valid pixels, summed
      with weights ``n_b`` = the batch's real samples: ``batch_abs = Σ_b n_b·mean_b(e_abs)``,
      ``batch_rel``, ``samples = Σ_b n_b``. A batch without a valid pixel is left out. The value
      depends on the batch size of the evaluation;
    * the pooled pixel sums ``abs``, ``rel`` and ``pixels``, independent of batching.
    """

    def init(self) -> Stats:
        zero, count = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        keys = ("batch_abs", "batch_rel", "abs", "rel")
        return {**{k: zero for k in keys}, "samples": count, "pixels": count}

    def update(self, stats, pred, target, mask=None):
        keep = valid_elements(NonzeroPixels(), target, mask)
        dtype = _compute_dtype(pred)
        truth = fill_invalid(target, keep).astype(dtype)
        absolute = pixel_absolute_error(pred.astype(dtype), truth)
        relative = absolute / jnp.where(keep, jnp.sum(truth, axis=-1), 1)
        pixels = _count(keep)
        samples = jnp.where(
            pixels > 0, keep.shape[0] if mask is None else _count(jnp.asarray(mask, bool)), 0
        )
        abs_sum, rel_sum = _sum(absolute, keep), _sum(relative, keep)
        per_pixel = samples.astype(jnp.float32) / jnp.maximum(pixels, 1).astype(jnp.float32)
        return _add(
            stats,
            {
                "batch_abs": abs_sum * per_pixel,
                "batch_rel": rel_sum * per_pixel,
                "samples": samples,
                "abs": abs_sum,
                "rel": rel_sum,
                "pixels": pixels,
            },
        )


@dataclasses.dataclass(frozen=True)
class AngleErrors:
    """Angles between predicted and true normals ``[B, H, W, 3]`` over valid pixels.

    Per valid pixel ``θ = degrees(arccos(clip(⟨p / ‖p‖, t⟩, −1, 1)))``. Kept: ``sum`` of the
    angles, ``count``, exact counts ``within_<x>`` of ``θ < x`` for ``x`` in 11.25°, 22.5°, 30°,
    and ``histogram``, the counts in ``180 · bins_per_degree`` bins of width
    ``1 / bins_per_degree`` degrees over ``[0°, 180°]``, from which the median is read. With the
    default 100 bins per degree the median is within 0.005° (half a bin) of the exact median of
    the pooled angles, with no host copy of the pixels.
    """

    bins_per_degree: int = 100

    def init(self) -> Stats:
        return {
            "sum": jnp.zeros((), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
            **{within_key(x): jnp.zeros((), jnp.int32) for x in WITHIN},
            "histogram": jnp.zeros((180 * self.bins_per_degree,), jnp.int32),
        }

    def update(self, stats, pred, target, mask=None):
        keep = valid_elements(NonzeroPixels(), target, mask)
        dtype = _compute_dtype(pred)
        truth = fill_invalid(target, keep).astype(dtype)
        cosine = jnp.sum(unit_normals(pred.astype(dtype)) * truth, axis=-1)
        angle = jnp.degrees(jnp.arccos(jnp.clip(cosine, -1.0, 1.0)))
        bins = 180 * self.bins_per_degree
        index = jnp.clip(jnp.floor(angle * self.bins_per_degree).astype(jnp.int32), 0, bins - 1)
        histogram = (
            jnp.zeros((bins,), jnp.int32).at[index.ravel()].add(keep.ravel().astype(jnp.int32))
        )
        within = {within_key(x): _count((angle < x) & keep) for x in WITHIN}
        increments = {"sum": _sum(angle, keep), "count": _count(keep), "histogram": histogram}
        return _add(stats, {**increments, **within})


# --- Reductions: accumulated statistics -> the metric's value ----------------------------
#
# A reduction runs inside jit on device arrays (training logs) and on the host on NumPy arrays
# (evaluation results, in float64 there); it uses the namespace of its input.


def _namespace(stats: Stats):
    """``numpy`` when every statistic is a host array, else ``jax.numpy``."""
    host = all(isinstance(x, np.ndarray | np.generic | int | float) for x in jax.tree.leaves(stats))
    return np if host else jnp


def _real(xp, x):
    """As a float array: float64 on the host, the default float dtype under jit."""
    return xp.asarray(x, np.float64 if xp is np else jnp.result_type(float))


def _mean_defined(xp, values, defined):
    """Mean of ``values`` over the ``defined`` entries (NaN when none is defined)."""
    with np.errstate(invalid="ignore"):
        return xp.sum(xp.where(defined, values, 0)) / _real(xp, xp.sum(defined))


def _divide(xp, numerator, denominator):
    """``numerator / denominator`` as floats; 0 / 0 is NaN (an undefined metric)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _real(xp, numerator) / _real(xp, denominator)


@dataclasses.dataclass(frozen=True)
class Ratio:
    """``stats[numerator] / stats[denominator]`` (NaN for 0 / 0).

    Example:
      >>> float(Ratio("correct", "count")({"correct": np.int32(2), "count": np.int32(3)}))
      0.6666666666666666
    """

    numerator: str
    denominator: str

    def __call__(self, stats: Stats):
        return _divide(_namespace(stats), stats[self.numerator], stats[self.denominator])


def root_mean_squared(stats: Stats):
    """RMSE ``sqrt(Σ(p − t)² / n)`` over every valid entry of the split."""
    xp = _namespace(stats)
    return xp.sqrt(_divide(xp, stats["squared"], stats["count"]))


def label_accuracy(stats: Stats):
    """Multi-label accuracy: ``(tp + tn) / n`` per label, then the mean over labels.

    Labels without a valid entry in the split are left out of the mean.
    """
    xp = _namespace(stats)
    total = stats["tp"] + stats["fp"] + stats["fn"] + stats["tn"]
    per_label = _divide(xp, stats["tp"] + stats["tn"], xp.maximum(total, 1))
    return _mean_defined(xp, per_label, total > 0)


def macro_f1(stats: Stats):
    """Macro F1: ``F1_l = 2 tp / (2 tp + fp + fn)`` per label, then the mean over labels.

    A label with ``2 tp + fp + fn = 0`` (never positive, never predicted positive) has no F1
    and is left out of the mean, like an absent class in mIoU.
    """
    xp = _namespace(stats)
    denominator = 2 * stats["tp"] + stats["fp"] + stats["fn"]
    per_label = _divide(xp, 2 * stats["tp"], xp.maximum(denominator, 1))
    return _mean_defined(xp, per_label, denominator > 0)


def mean_iou(stats: Stats):
    """mIoU: ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` of the accumulated confusion matrix.

    The mean runs over the classes with ``TP + FP + FN > 0``; a class absent from both the
    labels and the predictions of the whole split is left out (the published code would give
    NaN; on the full NYUv2/Cityscapes test splits every class occurs, so the values agree).
    """
    xp = _namespace(stats)
    confusion = stats["confusion"]
    tp = xp.diagonal(confusion)
    union = xp.sum(confusion, axis=0) + xp.sum(confusion, axis=1) - tp
    return _mean_defined(xp, _divide(xp, tp, xp.maximum(union, 1)), union > 0)


def pixel_accuracy(stats: Stats):
    """Pixel accuracy: ``trace(confusion) / Σ confusion`` over every valid pixel."""
    xp = _namespace(stats)
    return _divide(xp, xp.trace(stats["confusion"]), xp.sum(stats["confusion"]))


def median_angle(stats: Stats):
    """Median angle read from the histogram: bin centres of the middle rank(s).

    For ``n`` pooled angles the ranks ``⌊(n−1)/2⌋`` and ``⌊n/2⌋`` (0-based) are located in the
    cumulative histogram and the centres of their bins averaged, like ``numpy.median``; the
    result lies within half a bin of the exact median. NaN when ``n = 0``.
    """
    xp = _namespace(stats)
    histogram = stats["histogram"]
    width = 180.0 / histogram.shape[0]
    cumulative = xp.cumsum(histogram)
    n = cumulative[-1]
    ranks = xp.stack([xp.maximum(n - 1, 0) // 2, n // 2])
    bins = xp.searchsorted(cumulative, ranks, side="right")
    return xp.where(n > 0, xp.mean((_real(xp, bins) + 0.5) * width), np.nan)
