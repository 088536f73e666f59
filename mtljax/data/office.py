"""Office-31 and Office-Home: one image-classification task per domain (multi-input).

Office-31 (Saenko et al., ECCV 2010): domains ``amazon``, ``dslr``, ``webcam``, 31 classes,
4,110 images. Office-Home (Venkateswara et al., CVPR 2017): domains ``Art``, ``Clipart``,
``Product``, ``Real_World``, 65 classes, 15,500 images. Each domain is its own task with its
own images (LibMTL's multi-input setting), so the result is a
:class:`~mtljax.data.multi_input.MultiInputDataset`.

Two layouts are read:

* **image lists** (LibMTL's ``data_txt``): ``list_dir/<domain>_{train,val,test}.txt``, one
  ``<relative image path> <label>`` line per image, paths relative to ``root`` (e.g.
  ``dslr/images/bike/frame_0001.jpg 27``). The lists fix the split (LibMTL: 60/20/20).
* **class folders** (the datasets as released): ``root/<domain>/<class>/*.jpg`` or, as in
  Office-31, ``root/<domain>/images/<class>/*.jpg``. Classes are numbered in sorted order of
  their folder names (the same set in every domain, checked) and each domain is split by
  ``fractions`` stratified by class, deterministically from ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mtljax.data.layout import read_images, require_dir, require_file
from mtljax.data.multi_input import MultiInputDataset
from mtljax.data.splits import group_split
from mtljax.tasks import Tasks, classification

DOMAINS = {
    "office-31": ("amazon", "dslr", "webcam"),
    "office-home": ("Art", "Clipart", "Product", "Real_World"),
}
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _read_list(path: str) -> tuple[list[str], np.ndarray]:
    paths, labels = [], []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
                raise ValueError(f"{path}: line {number} must be '<image path> <label>'.")
            paths.append(parts[0])
            labels.append(int(parts[1]))
    return paths, np.array(labels, np.int32)


def _from_lists(root, list_dir, domains):
    """``{split: {domain: (paths, labels)}}`` from the image lists."""
    require_dir(list_dir, "Office image lists")
    out = {split: {} for split in SPLITS}
    for domain in domains:
        for split in SPLITS:
            path = require_file(
                os.path.join(list_dir, f"{domain}_{split}.txt"), f"Office {domain} {split} list"
            )
            paths, labels = _read_list(path)
            out[split][domain] = ([os.path.join(root, p) for p in paths], labels)
    return out


def _class_dir(root, domain):
    base = require_dir(os.path.join(root, domain), f"Office domain {domain}")
    images = os.path.join(base, "images")
    return images if os.path.isdir(images) else base


def _from_folders(root, domains, fractions, seed):
    """``{split: {domain: (paths, labels)}}`` from class folders, split per domain."""
    bases = {d: _class_dir(root, d) for d in domains}
    classes = {
        d: sorted(c for c in os.listdir(b) if os.path.isdir(os.path.join(b, c)))
        for d, b in bases.items()
    }
    reference = classes[domains[0]]
    if not reference:
        raise FileNotFoundError(
            f"Office domain {domains[0]}: no class folders in {bases[domains[0]]}"
        )
    for d in domains[1:]:
        missing = sorted(set(reference) - set(classes[d]))
        extra = sorted(set(classes[d]) - set(reference))
        if missing or extra:
            raise ValueError(
                f"Office domain {d} has different classes than {domains[0]}: missing "
                f"{missing[:5]}, extra {extra[:5]} (in {bases[d]})."
            )
    out = {split: {} for split in SPLITS}
    for i, d in enumerate(domains):
        paths, labels = [], []
        for label, name in enumerate(reference):
            folder = os.path.join(bases[d], name)
            for f in sorted(os.listdir(folder)):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(folder, f))
                    labels.append(label)
        if not paths:
            raise FileNotFoundError(f"Office domain {d}: no images under {bases[d]}")
        labels = np.array(labels, np.int32)
        parts = group_split(np.arange(len(paths)), fractions, seed=[seed, i], stratify=labels)
        for split in SPLITS:
            idx = parts[split]
            out[split][d] = ([paths[j] for j in idx], labels[idx])
    return out


def load_office(
    root: str,
    dataset: str = "office-31",
    *,
    domains: Sequence[str] | None = None,
    list_dir: str | None = None,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    image_size: tuple[int, int] = (224, 224),
    limit: int | None = None,
    dtype=np.float32,
) -> MultiInputDataset:
    """Office-31 or Office-Home from a local directory (see the module docstring).

    Args:
      root: the dataset folder (the image paths of the lists are relative to it).
      dataset: ``"office-31"`` or ``"office-home"``; picks the default domains.
      domains: the domains (tasks) to load, overriding ``dataset``'s.
      list_dir: read the image-list layout from this folder; if ``None``, the class-folder
        layout under ``root``.
      fractions: ``{"train", "val", "test"}`` fractions of the class-folder layout (default
        0.6 / 0.2 / 0.2, as LibMTL).
      seed: seeds the class-folder split.
      image_size: ``(height, width)`` the images are resized to (LibMTL: 224×224).
      limit: read at most this many images per domain and split (quick experiments).
      dtype: the image dtype (floats in ``[0, 1]``, or ``uint8``).

    Returns:
      A :class:`MultiInputDataset` with tasks named after the domains and
      ``splits[split][domain] = {"x": [N, H, W, 3], "y": [N] int32}``;
      ``source_ids[split][domain]`` holds the image paths.

    Raises:
      FileNotFoundError: naming the missing folder, list or image.
      ValueError: a malformed list line, or class folders differing between domains.
    """
    if dataset not in DOMAINS:
        raise ValueError(f"Unknown Office dataset {dataset!r}; known: {list(DOMAINS)}.")
    domains = tuple(DOMAINS[dataset] if domains is None else domains)
    if not domains:
        raise ValueError("load_office needs at least one domain.")
    fractions = dict(fractions or {"train": 0.6, "val": 0.2, "test": 0.2})
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must name {list(SPLITS)}, got {sorted(fractions)}.")
    require_dir(root, f"{dataset} root")
    if list_dir is not None:
        listed = _from_lists(root, list_dir, domains)
    else:
        listed = _from_folders(root, domains, fractions, seed)
    splits, source_ids = {}, {}
    for split in SPLITS:
        splits[split], source_ids[split] = {}, {}
        for d in domains:
            paths, labels = listed[split][d]
            paths, labels = paths[:limit], labels[:limit]
            splits[split][d] = {"x": read_images(paths, image_size, dtype), "y": labels}
            source_ids[split][d] = np.array(paths)
    num_classes = 1 + max(int(listed[s][d][1].max(initial=-1)) for s in SPLITS for d in domains)
    return MultiInputDataset(
        tasks=Tasks(classification(d, num_classes) for d in domains),
        splits=splits,
        num_classes=dict.fromkeys(domains, num_classes),
        input_shape=(*image_size, 3),
        source_ids=source_ids,
    )
