"""NYUv2 (segmentation, depth, surface normals) in MTAN's preprocessing: the dense MTAN model.

Command::

    mtljax run nyuv2 --set data.root=DIR --workdir runs/nyuv2            # EW
    mtljax run nyuv2:cagrad --set data.root=DIR --workdir runs/nyuv2_cagrad
    mtljax sweep nyuv2 --set data.root=DIR --methods ew,pcgrad --seeds 0 --workdir runs/nyu
    mtljax report runs/nyu                                  # per-task metrics and Δm%

``DIR`` holds MTAN's ``train/`` and ``val/`` folders (:func:`mtljax.data.load_nyuv2`). The
schedule follows LibMTL's NYUv2 recipe (Adam at lr 1e-4, batches of 8, ~200 epochs of the 716
training scenes left after the 10% validation hold-out); the model is the registry's small
dense MTAN (``mtljax.models.registry``; ``model.kwargs.cnn_features`` widens it).

Expected: not measured in this repository yet (no accelerator run); on 2 CPU cores one step
at 288×384 takes seconds, so the full schedule needs a GPU. The test suite trains it for a few
steps on a tiny fixture in the real file layout. Metrics: mIoU and pixel accuracy (↑), depth
absolute and relative error (↓), normal mean and median angle (↓) and the share within 11.25°,
22.5° and 30° (↑) (docs/data.md).
"""

from mtljax.config import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The NYUv2 config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {
            "data.name": "nyuv2",
            "method.name": arg or "ew",
            "optimizer.lr": 1e-4,
            "schedule": {
                "steps": 18_000,
                "batch_size": 8,
                "eval_every": 900,
                "eval_batch_size": 8,
                "log_every": 50,
                "diagnostics_every": 500,
            },
        }
    )
