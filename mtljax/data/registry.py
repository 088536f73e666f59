"""Datasets by name, for the runner's ``data.name``: the built-ins and the user's own.

Each entry holds a loader and what a runner needs to know before loading: the default model,
whether the dataset is multi-input (one input set per task), and for on-disk datasets the
expected layout of the folder ``root`` (named in every layout error). Built in:

| name | loader | tasks | default model |
|---|---|---|---|
| ``multidigits`` | :func:`~mtljax.data.load_multidigits` (in memory) | 2 digits | ``cnn`` |
| ``nyuv2`` | :func:`~mtljax.data.load_nyuv2` | segmentation, depth, normals | ``dense_mtan`` |
| ``cityscapes`` | :func:`~mtljax.data.load_cityscapes` | segmentation, depth | ``dense_mtan`` |
| ``celeba`` | :func:`~mtljax.data.load_celeba` | 40 binary attributes | ``resnet`` |
| ``office31`` | :func:`~mtljax.data.load_office` (multi-input) | 3 domains | ``resnet`` |
| ``office_home`` | :func:`~mtljax.data.load_office` (multi-input) | 4 domains | ``resnet`` |
| ``auxdigits`` | :func:`~mtljax.data.load_auxdigits` (in memory) | primary + 3 aux | ``mlp`` |

Example:
  >>> import numpy as np
  >>> from mtljax.data import MultiTaskDataset
  >>> from mtljax.tasks import Tasks, regression
  >>> def toy(*, seed, n=8):
  ...     rng = np.random.default_rng(seed)
  ...     split = {"x": rng.normal(size=(n, 3)), "y": rng.normal(size=(n, 1))}
  ...     return MultiTaskDataset(Tasks([regression("y")]), dict.fromkeys(
  ...         ("train", "val", "test"), split), {}, (3,))
  >>> register_dataset("toy", toy, default_model="mlp", summary="a toy regression")
  >>> load_dataset("toy", seed=1, n=4).splits["train"]["x"].shape
  (4, 3)
  >>> unregister_dataset("toy")
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
from collections.abc import Callable
from typing import Any

from mtljax.data.auxdigits import load_auxdigits
from mtljax.data.celeba import load_celeba
from mtljax.data.multi_input import MultiInputDataset
from mtljax.data.multidigits import load_multidigits
from mtljax.data.office import load_office
from mtljax.data.scenes import load_cityscapes, load_nyuv2
from mtljax.data.splits import MultiTaskDataset
from mtljax.models.registry import ARCHITECTURES

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset.

    Attributes:
      name: the registry name.
      loader: ``loader(root, *, seed, **options)`` for on-disk datasets, ``loader(*, seed,
        **options)`` for in-memory ones (``seed`` only if the loader takes it), returning a
        :class:`~mtljax.data.MultiTaskDataset` or, if ``multi_input``, a
        :class:`~mtljax.data.MultiInputDataset`.
      default_model: the architecture used when a config names none
        (:data:`mtljax.models.registry.ARCHITECTURES`).
      summary: one line for listings.
      multi_input: each task has its own inputs (train with
        :func:`mtljax.models.multi_input_loss`).
      layout: the expected content of ``root``, in words; ``None`` for a dataset built in
        memory (which takes no ``root``).
    """

    name: str
    loader: Callable[..., MultiTaskDataset | MultiInputDataset]
    default_model: str
    summary: str
    multi_input: bool = False
    layout: str | None = None

    @property
    def needs_root(self) -> bool:
        return self.layout is not None


def _office(dataset: str) -> Callable[..., MultiInputDataset]:
    return functools.partial(load_office, dataset=dataset)


BUILTINS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            "multidigits",
            load_multidigits,
            "cnn",
            "two overlapping 8x8 digits, one 10-way classification each (built in memory)",
        ),
        DatasetEntry(
            "nyuv2",
            load_nyuv2,
            "dense_mtan",
            "NYUv2 scenes: 13-class segmentation, depth, surface normals (MTAN preprocessing)",
            layout="train/ and val/, each holding image/, label/, depth/ and normal/ with "
            "0.npy, 1.npy, ... (MTAN's preprocessed NYUv2)",
        ),
        DatasetEntry(
            "cityscapes",
            load_cityscapes,
            "dense_mtan",
            "Cityscapes scenes: 7-class segmentation, depth (MTAN preprocessing)",
            layout="train/ and val/, each holding image/, label_7/ and depth/ with 0.npy, "
            "1.npy, ... (MTAN's preprocessed Cityscapes)",
        ),
        DatasetEntry(
            "celeba",
            load_celeba,
            "resnet",
            "CelebA faces: 40 binary attributes, one task each (official split)",
            layout="img_align_celeba/*.jpg, list_attr_celeba.txt and list_eval_partition.txt "
            "(the official release)",
        ),
        DatasetEntry(
            "office31",
            _office("office-31"),
            "resnet",
            "Office-31: 31-class classification in 3 domains, one task (and input set) each",
            multi_input=True,
            layout="amazon/, dslr/ and webcam/, each holding <class>/*.jpg or "
            "images/<class>/*.jpg (or image lists: pass list_dir)",
        ),
        DatasetEntry(
            "office_home",
            _office("office-home"),
            "resnet",
            "Office-Home: 65-class classification in 4 domains, one task (and input set) each",
            multi_input=True,
            layout="Art/, Clipart/, Product/ and Real_World/, each holding <class>/*.jpg (or "
            "image lists: pass list_dir)",
        ),
        DatasetEntry(
            "auxdigits",
            load_auxdigits,
            "mlp",
            "a data-starved digit task, one helpful and two harmful auxiliary tasks (in memory)",
        ),
    )
}
DATASETS: dict[str, DatasetEntry] = dict(BUILTINS)


def register_dataset(
    name: str,
    loader: Callable[..., MultiTaskDataset | MultiInputDataset],
    *,
    default_model: str,
    summary: str,
    multi_input: bool = False,
    layout: str | None = None,
    overwrite: bool = False,
) -> None:
    """Adds a dataset, so that ``name`` works wherever a built-in's does (``load_dataset``,
    the runner's ``data.name``).

    Args:
      name: the registry name (letters, digits, ``_``, ``.``, ``-``).
      loader: see :class:`DatasetEntry`; its tasks should come from the constructors of
        :mod:`mtljax.tasks` so that each knows its loss, metrics and output width.
      default_model: an architecture name (:data:`mtljax.models.registry.ARCHITECTURES`).
      summary: one line for listings.
      multi_input: the loader returns a :class:`~mtljax.data.MultiInputDataset`.
      layout: for a dataset read from a folder, the expected content of that folder (errors
        quote it); ``None`` for a dataset built in memory.
      overwrite: replace a dataset already registered under ``name`` (built-in or not).

    Raises:
      ValueError: a bad name, a loader that is not callable, an unknown model, or a name
        already registered without ``overwrite=True``.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"A dataset name is letters, digits, '_', '.' and '-', got {name!r}.")
    if not callable(loader):
        raise ValueError(f"The loader of dataset {name!r} must be callable, got {loader!r}.")
    if default_model not in ARCHITECTURES:
        raise ValueError(
            f"Dataset {name!r}: unknown default_model {default_model!r}; known: "
            f"{list(ARCHITECTURES)}."
        )
    if name in DATASETS and not overwrite:
        raise ValueError(
            f"Dataset {name!r} is already registered; pass overwrite=True to replace it."
        )
    DATASETS[name] = DatasetEntry(
        name, loader, default_model, str(summary), bool(multi_input), layout
    )


def unregister_dataset(name: str) -> None:
    """Removes a registered dataset; a replaced built-in gets its built-in entry back.

    Raises:
      ValueError: an unknown name, or a built-in that was not replaced.
    """
    entry = dataset_entry(name)
    if name in BUILTINS:
        if entry is BUILTINS[name]:
            raise ValueError(f"Dataset {name!r} is built in and cannot be unregistered.")
        DATASETS[name] = BUILTINS[name]
    else:
        del DATASETS[name]


def dataset_names() -> list[str]:
    """Every registered dataset name: the built-ins in order, then the user's."""
    return list(DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """The entry of ``name``; ``ValueError`` listing the known names if there is none."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}; known: {', '.join(DATASETS)}.") from None


def _check_options(entry: DatasetEntry, options: dict[str, Any]) -> None:
    parameters = list(inspect.signature(entry.loader).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = [p.name for p in parameters[int(entry.needs_root) :] if p.kind in named]
    known = [n for n in known if n != "seed"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"Dataset {entry.name!r} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(known) or 'none'}."
        )


def load_dataset(
    name: str, *, root: str | None = None, seed: int = 0, **options
) -> MultiTaskDataset | MultiInputDataset:
    """Loads the registered dataset ``name``.

    Args:
      name: a registered name (:func:`dataset_names`).
      root: the folder of an on-disk dataset (required for those, refused for in-memory ones).
      seed: the data seed (held-out validation share, composition), passed to loaders that take
        one; datasets with an official split ignore it.
      **options: the loader's keyword options (e.g. ``limit``, ``image_size``).

    Returns:
      The loader's :class:`~mtljax.data.MultiTaskDataset` or
      :class:`~mtljax.data.MultiInputDataset`.

    Raises:
      ValueError: an unknown name or option, a missing or superfluous ``root``, or a loader
        that returned the wrong kind of dataset.
      FileNotFoundError: ``root`` or something under it is missing; the message names the
        dataset and its expected layout.
    """
    entry = dataset_entry(name)
    if entry.needs_root and root is None:
        raise ValueError(
            f"Dataset {name!r} is read from disk: set its root (data.root=DIR) to a folder "
            f"holding {entry.layout}."
        )
    if not entry.needs_root and root is not None:
        raise ValueError(f"Dataset {name!r} is built in memory and takes no root (got {root!r}).")
    _check_options(entry, options)
    if "seed" in inspect.signature(entry.loader).parameters:
        options = {"seed": seed, **options}
    if not entry.needs_root:
        data = entry.loader(**options)
    else:
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"Dataset {name!r}: root {root} is not a directory; expected a folder holding "
                f"{entry.layout}."
            )
        try:
            data = entry.loader(root, **options)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error} (dataset {name!r} expects under root: {entry.layout})"
            ) from error
    kind = MultiInputDataset if entry.multi_input else MultiTaskDataset
    if not isinstance(data, kind):
        raise ValueError(
            f"The loader of dataset {name!r} returned a {type(data).__name__}, expected a "
            f"{kind.__name__} (multi_input={entry.multi_input})."
        )
    return data
