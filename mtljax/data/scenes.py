"""Dense scene understanding: NYUv2 and Cityscapes in the MTAN preprocessing.

Both datasets come as the ``.npy`` files released with MTAN (Liu, Johns & Davison, "End-to-End
Multi-Task Learning with Attention", CVPR 2019, arXiv:1803.10704) and used by LibMTL:

* NYUv2 (Silberman et al., ECCV 2012): ``root/{train,val}/{image,label,depth,normal}/<i>.npy``
  with 795 training and 654 validation scenes at 288×384; ``image`` ``[H, W, 3]``, ``label``
  ``[H, W]`` (13 classes, ``-1`` unlabelled), ``depth`` ``[H, W, 1]`` (0 where missing),
  ``normal`` ``[H, W, 3]`` (0 where missing).
* Cityscapes (Cordts et al., CVPR 2016): ``root/{train,val}/{image,label_7,depth}/<i>.npy``
  with 2975 training and 500 validation scenes at 128×256 and 7 classes (MTAN also ships
  ``label_2`` and ``label_19``; LibMTL's copy names the 7-class folder ``label``).

MTAN and LibMTL report results on the ``val`` folder. Here it is the ``"test"`` split; the
``"val"`` split used for model selection is a seeded random share of the training scenes
(``val_fraction > 0``, default 0.1, leakage-free), or, with ``val_fraction=0``, the test
arrays themselves (the published protocol, where model selection sees the test set). Inputs
stay ``[N, H, W, 3]`` (NHWC) and segmentation labels become int32 with ``-1`` for unlabelled
pixels.
"""

from __future__ import annotations

import os

import numpy as np

from mtljax.data.layout import load_npy_stack, numbered_npy_count, require_dir
from mtljax.data.splits import MultiTaskDataset, group_split
from mtljax.tasks import Tasks, depth, normals, segmentation

NYUV2_SIZE = (288, 384)
NYUV2_CLASSES = 13
CITYSCAPES_SIZE = (128, 256)
CITYSCAPES_CLASSES = 7


def _read_folder(root, dataset, folder, files, size, limit, dtype, num_classes):
    """``{task: [N, ...]}`` of one MTAN folder; ``files`` maps task -> (subdir, channels).

    Every file must have the ``size = (height, width)`` given, or, with ``None``, the size of
    the first image.
    """
    base = require_dir(os.path.join(root, folder), f"{dataset} {folder} split")
    what = f"{dataset} {folder} images"
    count = numbered_npy_count(os.path.join(base, "image"), what)
    count = count if limit is None else min(count, int(limit))
    arrays = {}
    for key, (subdir, channels) in files.items():
        directory = require_dir(os.path.join(base, subdir), f"{dataset} {folder} {key}")
        height, width = size if size is not None else (None, None)
        shape = (height, width) if channels is None else (height, width, channels)
        if channels is None:  # segmentation labels: stored as floats, -1 unlabelled
            labels = load_npy_stack(directory, count, shape, np.float64, f"{dataset} {key}")
            bad = ~np.isin(labels, np.arange(-1, num_classes))
            if np.any(bad):
                i = int(np.argwhere(bad)[0, 0])
                raise ValueError(
                    f"{dataset} {key}: {os.path.join(directory, f'{i}.npy')} holds values "
                    f"outside -1..{num_classes - 1} (e.g. {labels[bad][0]})."
                )
            arrays[key] = labels.astype(np.int32)
        else:
            arrays[key] = load_npy_stack(directory, count, shape, dtype, f"{dataset} {key}")
        size = arrays[key].shape[1:3]  # the other folders must match the images
    return arrays


def _build(root, dataset, files, tasks, size, num_classes, val_fraction, seed, limit, dtype):
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}.")
    require_dir(root, f"{dataset} root")
    train = _read_folder(root, dataset, "train", files, size, limit, dtype, num_classes)
    size = train["x"].shape[1:3]  # the test scenes must have the training scenes' size
    test = _read_folder(root, dataset, "val", files, size, limit, dtype, num_classes)
    n_train = len(train["x"])
    ids = {"train": np.arange(n_train), "test": np.arange(len(test["x"]))}
    if val_fraction > 0:
        if n_train < 2:
            raise ValueError(
                f"{dataset}: holding out validation scenes needs at least 2 training scenes, "
                f"found {n_train}; pass val_fraction=0 to validate on the test scenes."
            )
        # At least one validation scene, however small the folder (e.g. with ``limit``).
        share = max(val_fraction, 1.0 / n_train)
        parts = group_split(np.arange(n_train), {"train": 1 - share, "val": share}, seed=seed)
        splits = {name: {k: a[idx] for k, a in train.items()} for name, idx in parts.items()}
        ids.update(parts)
    else:
        splits = {"train": train, "val": test}
        ids["val"] = ids["test"]
    splits["test"] = test
    return MultiTaskDataset(
        tasks=tasks,
        splits=splits,
        num_classes={"segmentation": num_classes},
        input_shape=tuple(train["x"].shape[1:]),
        source_ids={name: {"file_index": index} for name, index in ids.items()},
    )


def load_nyuv2(
    root: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    size: tuple[int, int] | None = None,
    dtype=np.float32,
) -> MultiTaskDataset:
    """NYUv2 with segmentation, depth and surface normals (see the module docstring).

    Args:
      root: the folder holding ``train/`` and ``val/``.
      val_fraction: the share of training scenes held out for validation (default 0.1; 0:
        validate on the test scenes, as MTAN and LibMTL do).
      seed: seeds the validation hold-out.
      limit: read at most this many scenes per folder (quick experiments).
      size: the expected ``(height, width)`` of every file (checked; :data:`NYUV2_SIZE` is the
        published 288×384); ``None`` accepts any size that every file shares.
      dtype: the floating dtype of images, depth and normals.

    Returns:
      A :class:`MultiTaskDataset` with ``"x" [N, H, W, 3]``, ``"segmentation" [N, H, W]``
      (int32, ``-1`` unlabelled), ``"depth" [N, H, W, 1]`` and ``"normal" [N, H, W, 3]``.

    Raises:
      FileNotFoundError: naming the missing directory or ``<i>.npy`` file.
      ValueError: naming a file with the wrong shape or labels out of range.
    """
    files = {
        "x": ("image", 3),
        "segmentation": ("label", None),
        "depth": ("depth", 1),
        "normal": ("normal", 3),
    }
    tasks = Tasks([segmentation("segmentation", NYUV2_CLASSES), depth("depth"), normals("normal")])
    return _build(
        root, "NYUv2", files, tasks, size, NYUV2_CLASSES, val_fraction, seed, limit, dtype
    )


def load_cityscapes(
    root: str,
    *,
    label_dir: str = "label_7",
    num_classes: int = CITYSCAPES_CLASSES,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    size: tuple[int, int] | None = None,
    dtype=np.float32,
) -> MultiTaskDataset:
    """Cityscapes with segmentation and depth (see the module docstring).

    Args:
      root: the folder holding ``train/`` and ``val/``.
      label_dir: the segmentation folder: ``"label_7"`` (MTAN), ``"label"`` (LibMTL's copy),
        or ``"label_2"`` / ``"label_19"`` with the matching ``num_classes``.
      num_classes: the number of segmentation classes.
      val_fraction, seed, limit, size, dtype: as for :func:`load_nyuv2`.

    Returns:
      A :class:`MultiTaskDataset` with ``"x" [N, H, W, 3]``, ``"segmentation" [N, H, W]``
      (int32, ``-1`` unlabelled) and ``"depth" [N, H, W, 1]``.
    """
    files = {"x": ("image", 3), "segmentation": (label_dir, None), "depth": ("depth", 1)}
    tasks = Tasks([segmentation("segmentation", int(num_classes)), depth("depth")])
    return _build(
        root, "Cityscapes", files, tasks, size, int(num_classes), val_fraction, seed, limit, dtype
    )
