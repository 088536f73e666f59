"""AuxDigits: a data-starved primary task, a helpful auxiliary and two harmful ones.

Built on MultiDigits (:func:`mtljax.data.load_multidigits`: a left and a right 8×8 digit on a
12×12 canvas, train/val/test pools of disjoint source images). Four classification tasks:

| task | role | label | training labels |
|---|---|---|---|
| ``digit`` | primary | left digit's class (10) | ``labels_per_class`` images per class |
| ``coarse`` | helpful auxiliary | left digit's class mod ``coarse_classes`` | all |
| ``right`` | harmful auxiliary (competing) | right digit's class (10) | all |
| ``shuffled`` | harmful auxiliary (noise) | left digit's class, shuffled across images | all |

The primary is data-starved: in the training split its label is kept on the samples whose left
image is one of ``labels_per_class`` images per class (drawn with the data seed) and is ``-1``
(missing, :func:`mtljax.tasks.classification`) elsewhere, so an auxiliary task labelled
everywhere can shape the shared features. ``coarse`` needs the features of ``digit`` (with
``coarse_classes = 5`` it tells apart all but the pairs {0, 5}, {1, 6}, ...): the auxiliary
that should help. ``right`` is an unrelated task: it needs features of the other half of the
canvas, so with a narrow shared trunk it competes with the primary for capacity. ``shuffled``
is the classic random-label task (Zhang et al., "Understanding deep learning requires
rethinking generalization", ICLR 2017, arXiv:1611.03530): within each split, a fraction
``shuffle_fraction`` of the source images (drawn with the data seed) have their class labels
permuted among themselves, and every sample of a left image carries that image's label. With
``shuffle_fraction = 1`` the label is independent of the digit (agreement ``Σ_c p_c² ≈ 0.1``),
so fitting it is memorisation; its val/test metric is chance. Val and test carry every label.

Which auxiliaries to train is the config's ``data.tasks`` (e.g. ``[digit, coarse, right]``);
``data.primary=[digit]`` makes ``digit`` the primary task (level 0) and the others auxiliary.
"""

from __future__ import annotations

import numpy as np

from mtljax.data.multidigits import NUM_CLASSES, load_multidigits
from mtljax.data.splits import MultiTaskDataset
from mtljax.tasks import Tasks, classification

TASK_NAMES = ("digit", "coarse", "right", "shuffled")
MISSING = -1


def shuffled_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``labels [N]`` with a random ``fraction`` of its entries permuted among themselves.

    ``round(fraction · N)`` positions are drawn without replacement and their labels are
    permuted uniformly; the other entries are kept. The class counts are unchanged.

    Example:
      >>> labels = np.arange(6)
      >>> out = shuffled_labels(labels, 1.0, np.random.default_rng(0))
      >>> sorted(out.tolist()) == labels.tolist()
      True
    """
    out = np.array(labels, copy=True)
    chosen = rng.choice(len(out), size=int(round(fraction * len(out))), replace=False)
    out[chosen] = out[rng.permutation(chosen)]
    return out


def labelled_images(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``[N]`` bool: ``per_class`` entries of every class of ``labels [N]``, drawn by ``rng``
    (all of a class that has fewer)."""
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        keep[members[:per_class]] = True
    return keep


def load_auxdigits(
    *,
    seed: int = 0,
    labels_per_class: int = 10,
    coarse_classes: int = 5,
    shuffle_fraction: float = 1.0,
    pairs_per_image: int = 4,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    dtype=np.float32,
) -> MultiTaskDataset:
    """Builds the AuxDigits dataset (see the module docstring).

    Args:
      seed: the MultiDigits seed (pools, pairing) and the seed of the labelled images and of
        the shuffle.
      labels_per_class: left images per class whose training samples keep the primary label.
      coarse_classes: the helpful task's label is the digit modulo this (2 to 10).
      shuffle_fraction: the fraction of each split's source images whose ``shuffled`` label
        is permuted (0: ``shuffled`` equals ``digit``; 1: independent of it).
      pairs_per_image, val_fraction, test_fraction, dtype: as in
        :func:`~mtljax.data.load_multidigits`.

    Returns:
      A :class:`~mtljax.data.splits.MultiTaskDataset` with the tasks :data:`TASK_NAMES`
      (int32 labels, ``-1`` where missing) and MultiDigits' ``source_ids``.

    Example:
      >>> data = load_auxdigits(pairs_per_image=1)
      >>> data.tasks.names, int((data.splits["train"]["digit"] >= 0).sum())
      (('digit', 'coarse', 'right', 'shuffled'), 100)
    """
    if int(labels_per_class) < 1:
        raise ValueError(f"labels_per_class must be a positive integer, got {labels_per_class}.")
    if not 2 <= int(coarse_classes) <= NUM_CLASSES:
        raise ValueError(f"coarse_classes must be in 2..{NUM_CLASSES}, got {coarse_classes}.")
    if not 0.0 <= shuffle_fraction <= 1.0:
        raise ValueError(f"shuffle_fraction must be in [0, 1], got {shuffle_fraction}.")
    base = load_multidigits(
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        pairs_per_image=pairs_per_image,
        dtype=dtype,
    )
    splits = {}
    for index, (name, arrays) in enumerate(base.splits.items()):
        rng = np.random.default_rng([seed, index, 1])
        image_ids, inverse = np.unique(base.source_ids[name]["left_id"], return_inverse=True)
        image_labels = np.zeros(len(image_ids), np.int32)
        image_labels[inverse] = arrays["left"]
        digit = arrays["left"].copy()
        if name == "train":
            digit[~labelled_images(image_labels, int(labels_per_class), rng)[inverse]] = MISSING
        splits[name] = {
            "x": arrays["x"],
            "digit": digit,
            "coarse": arrays["left"] % np.int32(coarse_classes),
            "right": arrays["right"],
            "shuffled": shuffled_labels(image_labels, shuffle_fraction, rng)[inverse],
        }
    classes = {**dict.fromkeys(TASK_NAMES, NUM_CLASSES), "coarse": int(coarse_classes)}
    return MultiTaskDataset(
        tasks=Tasks(classification(name, classes[name]) for name in TASK_NAMES),
        splits=splits,
        num_classes=classes,
        input_shape=base.input_shape,
        source_ids=base.source_ids,
    )
