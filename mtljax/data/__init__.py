"""Datasets and host-side batching: fixed-shape batches, missing labels, multi-input tasks,
task sampling, leakage-free splits, host sharding, local-directory loaders and the dataset
registry (:mod:`mtljax.data.registry`)."""

from mtljax.data.auxdigits import load_auxdigits
from mtljax.data.celeba import load_celeba
from mtljax.data.loader import BatchIterator, eval_batches
from mtljax.data.missing import (
    LABEL_MASK,
    fill_missing,
    label_mask,
    masked_task_losses,
    with_label_masks,
)
from mtljax.data.multi_input import AlternatingIterator, MultiInputDataset, MultiInputIterator
from mtljax.data.multidigits import load_multidigits
from mtljax.data.office import load_office
from mtljax.data.registry import (
    DATASETS,
    DatasetEntry,
    dataset_entry,
    dataset_names,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from mtljax.data.sampling import SCHEMES, TaskSampler, task_probabilities
from mtljax.data.scenes import load_cityscapes, load_nyuv2
from mtljax.data.sharding import device_batches, host_shard, host_slice
from mtljax.data.splits import MultiTaskDataset, group_split, stratified_group_split

__all__ = [
    "DATASETS",
    "LABEL_MASK",
    "SCHEMES",
    "AlternatingIterator",
    "BatchIterator",
    "DatasetEntry",
    "MultiInputDataset",
    "MultiInputIterator",
    "MultiTaskDataset",
    "TaskSampler",
    "dataset_entry",
    "dataset_names",
    "device_batches",
    "eval_batches",
    "fill_missing",
    "group_split",
    "host_shard",
    "host_slice",
    "label_mask",
    "load_auxdigits",
    "load_celeba",
    "load_cityscapes",
    "load_dataset",
    "load_multidigits",
    "load_nyuv2",
    "load_office",
    "masked_task_losses",
    "register_dataset",
    "stratified_group_split",
    "task_probabilities",
    "unregister_dataset",
    "with_label_masks",
]
