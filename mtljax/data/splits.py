"""Leakage-free splits: whole groups go to one split; the split-up dataset container.

A *group* is the unit that must not cross splits (a source image, a patient, a scene).
:func:`group_split` assigns each group to one split, so that no group is seen in training and
evaluated on; :class:`MultiTaskDataset` holds the resulting arrays with their tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from mtljax.tasks import Tasks


@dataclasses.dataclass(frozen=True)
class MultiTaskDataset:
    """A multi-task dataset split into ``"train"``, ``"val"`` and ``"test"`` arrays.

    Attributes:
      tasks: the tasks, each with its metrics (the first is the headline metric).
      splits: ``{split: {"x": inputs [N, ...], task name: labels [N], ...}}``, ready for
        :class:`mtljax.data.loader.BatchIterator`.
      num_classes: the number of classes of each classification task.
      input_shape: the shape of one input, without the batch axis.
      source_ids: per split, provenance arrays ``[N]`` (e.g. the source images a sample was
        built from), kept apart from ``splits`` so they never reach the model.
    """

    tasks: Tasks
    splits: dict[str, dict[str, np.ndarray]]
    num_classes: dict[str, int]
    input_shape: tuple[int, ...]
    source_ids: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)


def group_split(
    groups: np.ndarray,
    fractions: Mapping[str, float],
    *,
    seed: int,
    stratify: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Splits sample indices so that every group lies in exactly one split.

    Groups (not samples) are shuffled and cut in the proportions ``fractions``: the groups of
    one stratum are permuted with a generator seeded by ``seed`` and split at the boundaries
    ``round(n · cumsum(fractions))``, one stratum at a time, so each split gets its share of
    every stratum up to rounding. The result depends only on ``seed`` and the inputs.

    Args:
      groups: ``[N]`` group id of each sample (any sortable dtype).
      fractions: ``{split name: fraction of the groups}``, non-negative, summing to 1; the
        order of the mapping is the order of the cuts.
      seed: seeds the shuffle.
      stratify: optional ``[N]`` class of each sample, constant within a group.

    Returns:
      ``{split name: sorted sample indices [n_split]}``; the splits partition ``range(N)``.

    Raises:
      ValueError: bad fractions, mismatched lengths, or a group spanning several strata.

    Example:
      >>> parts = group_split(np.array([0, 0, 1, 1, 2, 3]), {"a": 0.5, "b": 0.5}, seed=0)
      >>> sorted(np.concatenate(list(parts.values())).tolist())
      [0, 1, 2, 3, 4, 5]
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be one-dimensional, got shape {groups.shape}.")
    names = list(fractions)
    values = np.array([fractions[n] for n in names], dtype=np.float64)
    if not names or np.any(values < 0) or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {dict(fractions)}.")
    unique, inverse = np.unique(groups, return_inverse=True)
    if stratify is None:
        strata = np.zeros(len(unique), np.int64)
    else:
        stratify = np.asarray(stratify)
        if stratify.shape != groups.shape:
            raise ValueError(
                f"stratify must have the shape of groups {groups.shape}, got {stratify.shape}."
            )
        _, labels = np.unique(stratify, return_inverse=True)
        strata = np.full(len(unique), -1, np.int64)
        strata[inverse] = labels
        if np.any(strata[inverse] != labels):
            bad = unique[np.unique(inverse[strata[inverse] != labels])]
            raise ValueError(
                f"Each group must lie in one stratum; groups {bad[:5]} do not (use "
                "stratified_group_split for groups with mixed labels)."
            )
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(unique), np.int64)
    cuts = np.cumsum(values)
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        bounds = np.round(cuts * len(members)).astype(np.int64)
        for split, part in enumerate(np.split(members, bounds[:-1])):
            assignment[part] = split
    sample_split = assignment[inverse]
    return {name: np.flatnonzero(sample_split == i) for i, name in enumerate(names)}


def stratified_group_split(
    groups: np.ndarray,
    labels: np.ndarray,
    fractions: Mapping[str, float],
    *,
    seed: int,
) -> dict[str, np.ndarray]:
    """Splits samples with whole groups per split and each label's share close to ``fractions``.

    Unlike :func:`group_split` with ``stratify``, a group may mix labels (a patient with
    healthy and diseased scans, a scene with several classes). Groups are placed greedily,
    largest first (ties in a seeded random order): with ``c_l`` the group's count of label
    ``l``, ``a_sl`` the count already in split ``s``, ``t_sl = f_s · n_l`` the target and
    ``n_l`` the total of label ``l``, the group joins the split that least increases the
    label-balanced squared error ``Σ_l ((a_sl + c_l − t_sl)² − (a_sl − t_sl)²) / n_l``. Each
    split's count of every label is thus within about one group of its target.

    Args:
      groups: ``[N]`` group id of each sample.
      labels: ``[N]`` discrete label of each sample (any sortable dtype).
      fractions: ``{split name: fraction}``, non-negative, summing to 1.
      seed: breaks ties between equally large groups.

    Returns:
      ``{split name: sorted sample indices}``; the splits partition ``range(N)``.

    Example:
      >>> parts = stratified_group_split(np.array([0, 0, 1, 1, 2, 3]),
      ...                                np.array([0, 1, 0, 1, 0, 1]), {"a": 0.5, "b": 0.5}, seed=0)
      >>> sorted(len(p) for p in parts.values())
      [2, 4]
    """
    groups, labels = np.asarray(groups), np.asarray(labels)
    if groups.ndim != 1 or labels.shape != groups.shape:
        raise ValueError(
            f"groups and labels must be one-dimensional of one length, got {groups.shape} "
            f"and {labels.shape}."
        )
    names = list(fractions)
    values = np.array([fractions[n] for n in names], dtype=np.float64)
    if not names or np.any(values < 0) or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {dict(fractions)}.")
    _, group_of = np.unique(groups, return_inverse=True)
    _, label_of = np.unique(labels, return_inverse=True)
    counts = np.zeros((group_of.max(initial=-1) + 1, label_of.max(initial=-1) + 1), np.float64)
    np.add.at(counts, (group_of, label_of), 1.0)
    totals = counts.sum(axis=0)
    targets = values[:, None] * totals[None, :]  # [S, L]
    current = np.zeros_like(targets)
    shuffled = np.random.default_rng(seed).permutation(len(counts))
    order = shuffled[np.argsort(-counts[shuffled].sum(axis=1), kind="stable")]
    assignment = np.empty(len(counts), np.int64)
    for g in order:
        c = counts[g]
        cost = ((c * (c + 2.0 * (current - targets))) / np.maximum(totals, 1.0)).sum(axis=1)
        split = int(np.argmin(cost))
        assignment[g] = split
        current[split] += c
    sample_split = assignment[group_of]
    return {name: np.flatnonzero(sample_split == i) for i, name in enumerate(names)}
