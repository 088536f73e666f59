"""MultiDigits: two handwritten digits on one canvas, one classification task per digit.

A small offline stand-in for MultiMNIST (Sabour et al., NeurIPS 2017, arXiv:1710.09829; the
multi-task version of Sener & Koltun, NeurIPS 2018, arXiv:1810.04650), built from the 1797
8×8 digits bundled with scikit-learn (``sklearn.datasets.load_digits``, no download).

Each sample puts one digit in the top-left corner (rows and columns 0–7) and another in the
bottom-right corner (rows and columns 4–11) of a 12×12 canvas; the two overlap on the central
4×4 pixels, where the canvas keeps the brighter pixel (as MultiMNIST does). Pixels are scaled
from 0..16 to [0, 1]; inputs have shape ``[N, 12, 12, 1]`` (NHWC). The tasks ``"left"`` and
``"right"`` are the two digits' classes (10 each), scored by accuracy.

No leakage: the source images are first split into disjoint train/val/test pools (stratified
by digit, deterministic from the seed, :func:`mtljax.data.splits.group_split`), and pairs are
composed within a pool only, so no digit image appears in two splits. Within a pool every
image is the left digit of exactly ``pairs_per_image`` samples and the right digit of exactly
``pairs_per_image`` samples (one random permutation of the pool per repetition and side); a
sample may show the same image twice. The source image ids are kept in
``MultiTaskDataset.source_ids[split]["left_id" / "right_id"]``.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from mtljax.data.splits import MultiTaskDataset, group_split
from mtljax.tasks import Tasks, classification

DIGIT_SIZE = 8
CANVAS_SIZE = 12
TASK_NAMES = ("left", "right")
NUM_CLASSES = 10


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Places ``left [N, 8, 8]`` top-left and ``right [N, 8, 8]`` bottom-right on 12×12 canvases.

    Returns:
      ``[N, 12, 12]``, the pixelwise maximum of the two placed digits.
    """
    n = len(left)
    canvas = np.zeros((n, CANVAS_SIZE, CANVAS_SIZE), np.result_type(left, right))
    offset = CANVAS_SIZE - DIGIT_SIZE
    canvas[:, :DIGIT_SIZE, :DIGIT_SIZE] = left
    bottom_right = canvas[:, offset:, offset:]
    np.maximum(bottom_right, right, out=bottom_right)
    return canvas


def load_multidigits(
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    pairs_per_image: int = 4,
    dtype=np.float32,
) -> MultiTaskDataset:
    """Builds the MultiDigits dataset (see the module docstring).

    With the defaults there are about 5030 / 1080 / 1080 train / val / test samples.

    Args:
      seed: determines the source image split and the pairing.
      val_fraction, test_fraction: fractions of the source images in the val and test pools.
      pairs_per_image: how many samples use each source image on each side.
      dtype: the floating dtype of the inputs.

    Returns:
      A :class:`~mtljax.data.splits.MultiTaskDataset` with splits ``"train"``, ``"val"`` and
      ``"test"``, each holding ``"x" [N, 12, 12, 1]``, ``"left" [N]`` and ``"right" [N]``
      (int32 labels), and ``source_ids`` with ``"left_id"`` and ``"right_id"`` per split.

    Example:
      >>> data = load_multidigits(pairs_per_image=1)
      >>> data.input_shape, data.tasks.names
      ((12, 12, 1), ('left', 'right'))
    """
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
                 "test": test_fraction}
    if min(fractions.values()) < 0 or fractions["train"] <= 0:
        raise ValueError(
            f"val_fraction and test_fraction must be non-negative and leave training images, "
            f"got {val_fraction} and {test_fraction}."
        )
    if int(pairs_per_image) < 1:
        raise ValueError(f"pairs_per_image must be a positive integer, got {pairs_per_image}.")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    digits = load_digits()
    images = (digits.images / 16.0).astype(dtype)
    labels = digits.target.astype(np.int32)
    ids = np.arange(len(images))
    pools = group_split(ids, fractions, seed=seed, stratify=labels)
    splits, source_ids = {}, {}
    for index, (name, pool) in enumerate(pools.items()):
        rng = np.random.default_rng([seed, index])
        left, right = (
            np.concatenate([rng.permutation(pool) for _ in range(int(pairs_per_image))])
            for _ in TASK_NAMES
        )
        splits[name] = {
            "x": compose(images[left], images[right])[..., None],
            "left": labels[left],
            "right": labels[right],
        }
        source_ids[name] = {"left_id": left, "right_id": right}
    return MultiTaskDataset(
        tasks=Tasks(classification(name, NUM_CLASSES) for name in TASK_NAMES),
        splits=splits,
        num_classes=dict.fromkeys(TASK_NAMES, NUM_CLASSES),
        input_shape=(CANVAS_SIZE, CANVAS_SIZE, 1),
        source_ids=source_ids,
    )
