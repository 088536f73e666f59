"""CelebA: 40 binary face attributes, one task each, on a small ResNet at 64×64.

Command::

    mtljax run celeba --set data.root=DIR --workdir runs/celeba              # EW
    mtljax run celeba:mgda --set data.root=DIR --workdir runs/celeba_mgda
    mtljax run celeba --set data.root=DIR --set 'data.tasks=["Smiling","Male"]' ...

``DIR`` holds the official release (``img_align_celeba/``, ``list_attr_celeba.txt``,
``list_eval_partition.txt``; :func:`mtljax.data.load_celeba`), whose official split is used.
Forty tasks make Jacobian methods 40 backward passes a step; ``data.tasks`` trains a subset.

Expected: not measured in this repository yet (no accelerator run). The test suite trains it
for a few steps on a tiny fixture in the real file layout. Metrics per attribute: accuracy
and F1 (↑).
"""

from mtljax.config import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The CelebA config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {
            "data.name": "celeba",
            "method.name": arg or "ew",
            "schedule": {
                "steps": 10_000,
                "batch_size": 128,
                "eval_every": 1_000,
                "eval_batch_size": 256,
                "diagnostics_every": 500,
            },
        }
    )
