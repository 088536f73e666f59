"""Office-Home: one task per domain (Art, Clipart, Product, Real_World), a shared ResNet.

Command::

    mtljax run office_home --set data.root=DIR --workdir runs/office_home         # EW
    mtljax sweep office_home --set data.root=DIR --methods ew,pcgrad --workdir runs/oh
    mtljax report runs/oh                                   # per-domain accuracy and Δm%

``DIR`` holds the released class folders (:func:`mtljax.data.load_office`). Each domain is
a task with its own images (multi-input): a step sees one batch of every domain and the
shared trunk gets one gradient per domain (:func:`mtljax.models.multi_input_loss`, the
parameter level). The schedule follows LibMTL's Office recipe (Adam, batches of 64 per
domain, lr 1e-4).

Expected: not measured in this repository yet (no accelerator run). The test suite trains it
for a few steps on a tiny fixture in the real file layout. Metric per domain: accuracy (↑).
"""

from mtljax.config import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The Office-Home config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {
            "data.name": "office_home",
            "method.name": arg or "ew",
            "optimizer.lr": 1e-4,
            "schedule": {
                "steps": 5_000,
                "batch_size": 64,
                "eval_every": 250,
                "eval_batch_size": 64,
                "diagnostics_every": 250,
            },
        }
    )
