"""Office-31: one classification task per domain (amazon, dslr, webcam), a shared ResNet.

Command::

    mtljax run office31 --set data.root=DIR --workdir runs/office31         # EW
    mtljax sweep office31 --set data.root=DIR --methods ew,pcgrad --workdir runs/o31
    mtljax report runs/o31                                # per-domain accuracy and Δm%

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
    """The Office-31 config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {
            "data.name": "office31",
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
