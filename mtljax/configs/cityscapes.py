"""Cityscapes (7-class segmentation, depth) in MTAN's preprocessing: the dense MTAN model.

Command::

    mtljax run cityscapes --set data.root=DIR --workdir runs/cityscapes          # EW
    mtljax sweep cityscapes --set data.root=DIR --methods ew,pcgrad --workdir runs/city
    mtljax report runs/city                                  # per-task metrics and Δm%

``DIR`` holds MTAN's ``train/`` and ``val/`` folders (:func:`mtljax.data.load_cityscapes`).
The schedule follows LibMTL's Cityscapes recipe (Adam at lr 1e-4, batches of 8, ~100 epochs
of the 2 678 training scenes left after the 10% validation hold-out).

Expected: not measured in this repository yet (no accelerator run); the full schedule needs a
GPU. The test suite trains it for a few steps on a tiny fixture in the real file layout.
Metrics: mIoU and pixel accuracy (↑), depth absolute and relative error (↓).
"""

from mtljax.config import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The Cityscapes config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {
            "data.name": "cityscapes",
            "method.name": arg or "ew",
            "optimizer.lr": 1e-4,
            "schedule": {
                "steps": 33_000,
                "batch_size": 8,
                "eval_every": 1_000,
                "eval_batch_size": 16,
                "log_every": 50,
                "diagnostics_every": 500,
            },
        }
    )
