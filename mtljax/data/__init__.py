"""Datasets and host-side batching: MultiDigits, leakage-free splits, fixed-shape batches."""

from mtljax.data.loader import BatchIterator, eval_batches
from mtljax.data.multidigits import load_multidigits
from mtljax.data.splits import MultiTaskDataset, group_split

__all__ = ["BatchIterator", "MultiTaskDataset", "eval_batches", "group_split", "load_multidigits"]
