"""CelebA: 40 binary face attributes, one classification task each.

Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015; the 40-task MTL
benchmark of Sener & Koltun, NeurIPS 2018, arXiv:1810.04650. The loader reads the official
release, unpacked under ``root``:

* ``img_align_celeba/<file>.jpg`` — the aligned and cropped 178×218 images;
* ``list_attr_celeba.txt`` — line 1 the number of images, line 2 the 40 attribute names, then
  one line per image: the file name and 40 values in ``{-1, 1}``;
* ``list_eval_partition.txt`` — one line per image: the file name and its split, 0 (train),
  1 (val) or 2 (test); the official split keeps identities apart.

Labels become ``(v + 1) / 2 ∈ {0, 1}`` (int32). Images are resized to ``image_size`` while
loading (all 202,599 images at 64×64 take 2.5 GB as float32, 0.6 GB as uint8).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mtljax.data.layout import read_images, require_dir, require_file
from mtljax.data.splits import MultiTaskDataset
from mtljax.tasks import Tasks, classification

SPLITS = ("train", "val", "test")
NUM_ATTRIBUTES = 40


def _read_attributes(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(attribute names, file names, values [N, 40] in {-1, 1})`` of ``list_attr_celeba.txt``."""
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(f"{path}: expected the image count on line 1 and names on line 2.")
    names = lines[1]
    if len(names) != NUM_ATTRIBUTES:
        raise ValueError(f"{path}: line 2 names {len(names)} attributes, expected 40.")
    rows = lines[2:]
    if len(rows) != int(lines[0][0]):
        raise ValueError(f"{path}: line 1 announces {lines[0][0]} images, found {len(rows)}.")
    for number, row in enumerate(rows, start=3):
        if len(row) != NUM_ATTRIBUTES + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise ValueError(f"{path}: line {number} must be a file name and 40 values of ±1.")
    files = [row[0] for row in rows]
    values = np.array([[int(v) for v in row[1:]] for row in rows], np.int32).reshape(-1, 40)
    return names, files, values


def _read_partition(path: str) -> dict[str, int]:
    partition = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}: line {number} must be a file name and 0, 1 or 2.")
            partition[parts[0]] = int(parts[1])
    return partition


def load_celeba(
    root: str,
    *,
    attributes: Sequence[str] | None = None,
    image_size: tuple[int, int] = (64, 64),
    limit: int | None = None,
    dtype=np.float32,
) -> MultiTaskDataset:
    """CelebA from the official files under ``root`` (see the module docstring).

    Args:
      root: the folder holding ``img_align_celeba/`` and the two list files.
      attributes: the attribute tasks to keep (default all 40, in the file's order).
      image_size: ``(height, width)`` the images are resized to.
      limit: read at most this many images per split (quick experiments).
      dtype: the image dtype (floats in ``[0, 1]``, or ``uint8``).

    Returns:
      A :class:`MultiTaskDataset` with ``"x" [N, H, W, 3]`` and one ``[N]`` int32 label per
      attribute; ``source_ids[split]["file"]`` holds the image file names.

    Raises:
      FileNotFoundError: naming the missing directory, list file or image.
      ValueError: a malformed list file (naming the file and line), an image missing from
        the partition, or an unknown attribute.
    """
    require_dir(root, "CelebA root")
    images = require_dir(os.path.join(root, "img_align_celeba"), "CelebA images")
    names, files, values = _read_attributes(
        require_file(os.path.join(root, "list_attr_celeba.txt"), "CelebA attributes")
    )
    partition = _read_partition(
        require_file(os.path.join(root, "list_eval_partition.txt"), "CelebA partition")
    )
    keep = list(names) if attributes is None else list(attributes)
    unknown = [a for a in keep if a not in names]
    if unknown or not keep:
        raise ValueError(f"Unknown CelebA attributes {unknown}; known: {names}.")
    unassigned = [f for f in files if f not in partition]
    if unassigned:
        raise ValueError(
            f"{len(unassigned)} images of list_attr_celeba.txt are not in "
            f"list_eval_partition.txt, e.g. {unassigned[0]}."
        )
    columns = [names.index(a) for a in keep]
    split_of = np.array([partition[f] for f in files])
    splits, source_ids = {}, {}
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(split_of == code)[:limit]
        chosen = [files[i] for i in rows]
        x = read_images([os.path.join(images, f) for f in chosen], image_size, dtype)
        labels = (values[rows][:, columns] + 1) // 2
        splits[split] = {"x": x, **{a: labels[:, j] for j, a in enumerate(keep)}}
        source_ids[split] = {"file": np.array(chosen)}
    return MultiTaskDataset(
        tasks=Tasks(classification(a, 2) for a in keep),
        splits=splits,
        num_classes=dict.fromkeys(keep, 2),
        input_shape=(*image_size, 3),
        source_ids=source_ids,
    )
