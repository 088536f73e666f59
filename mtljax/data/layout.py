"""Reading datasets from local directories, with layout checks that name what is missing.

Nothing is ever downloaded: the loaders of :mod:`mtljax.data.scenes`, :mod:`mtljax.data.celeba`
and :mod:`mtljax.data.office` read a directory the user prepared (see ``docs/data.md``) and
raise ``FileNotFoundError`` naming the first missing file or directory, or ``ValueError``
naming a file with the wrong shape or content. Images are decoded with Pillow, an optional
dependency imported only when an image is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np


def require_dir(path: str, what: str) -> str:
    """``path`` if it is a directory, else ``FileNotFoundError`` naming it and ``what`` it is."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: missing directory {path}")
    return path


def require_file(path: str, what: str) -> str:
    """``path`` if it is a file, else ``FileNotFoundError`` naming it and ``what`` it is."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: missing file {path}")
    return path


def numbered_npy_count(directory: str, what: str) -> int:
    """The ``n`` of a directory holding exactly ``0.npy … (n-1).npy``.

    Raises:
      FileNotFoundError: the directory, or a number below the largest one, is missing.
    """
    require_dir(directory, what)
    numbers = {
        int(m.group(1)) for f in os.listdir(directory) if (m := re.fullmatch(r"(\d+)\.npy", f))
    }
    if not numbers:
        raise FileNotFoundError(f"{what}: no <i>.npy files in {directory}")
    for i in range(max(numbers) + 1):
        if i not in numbers:
            raise FileNotFoundError(f"{what}: missing file {os.path.join(directory, f'{i}.npy')}")
    return len(numbers)


def load_npy_stack(
    directory: str, count: int, shape: Sequence[int | None], dtype, what: str
) -> np.ndarray:
    """Stacks ``directory/0.npy … (count-1).npy`` into ``[count, *shape]`` of ``dtype``.

    Args:
      directory: the folder of numbered ``.npy`` files.
      count: how many to read.
      shape: the expected shape of each file; ``None`` entries match any size.
      dtype: the output dtype.
      what: names the array in error messages.
    """
    out = None
    for i in range(count):
        path = require_file(os.path.join(directory, f"{i}.npy"), what)
        item = np.load(path, allow_pickle=False)
        if len(item.shape) != len(shape) or any(
            w is not None and g != w for g, w in zip(item.shape, shape, strict=False)
        ):
            want = tuple("*" if w is None else w for w in shape)
            raise ValueError(f"{what}: {path} has shape {item.shape}, expected {want}.")
        if out is None:
            out = np.empty((count, *item.shape), dtype)
        elif item.shape != out.shape[1:]:
            raise ValueError(f"{what}: {path} has shape {item.shape}, the others {out.shape[1:]}.")
        out[i] = item
    return out


def read_image(path: str, size: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """The RGB image at ``path`` resized to ``size = (height, width)``, as ``[H, W, 3]``.

    Floating dtypes are scaled to ``[0, 1]``; ``uint8`` keeps the raw pixels (4× less memory).
    Needs Pillow (``pip install pillow``).
    """
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"Reading {path} needs Pillow, an optional dependency: pip install pillow"
        ) from None
    require_file(path, "image")
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return pixels.astype(dtype) / np.asarray(255, dtype)
    return pixels.astype(dtype)


def read_images(paths: Sequence[str], size: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """``[len(paths), H, W, 3]`` from :func:`read_image` of each path."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype)
    for i, path in enumerate(paths):
        out[i] = read_image(path, size, dtype)
    return out
