"""AuxDigits (a data-starved digit, a helpful and a harmful auxiliary task): roles at work.

Command::

    mtljax run auxdigits --workdir runs/aux                      # EW on digit, coarse, right
    mtljax run auxdigits:pcd --workdir runs/aux_pcd              # a role-aware method
    mtljax run auxdigits --set data.tasks=[digit,coarse,shuffled] --workdir runs/aux_noise
    python -m experiments.auxiliary                              # the whole benchmark

Tasks (:mod:`mtljax.data.auxdigits`): ``digit``, the left digit with 10 labelled training
images per class, is the primary task (level 0); ``coarse`` (the digit modulo 5, labelled
everywhere) is the helpful auxiliary and ``right`` (the other digit, competing for the narrow
16-unit trunk) the harmful one, both at level 1. Both auxiliaries share one level on purpose: a
user declares which task matters, not which auxiliary will turn out harmful, so a method gets
no hint beyond the roles (``--set data.levels.right=2`` tries the other choice).

Expected: 5 to 10 s per run on 2 shared CPU cores (1500 Adam steps at lr 3e-3, batches of 128,
an MLP trunk of one 16-unit layer; the Jacobian methods a little slower). The model is selected
on the primary's validation accuracy. Over 5 seeds EW reaches about 0.85 test accuracy on
``digit``, below EW without ``right`` (about 0.90) and below the primary trained alone (about
0.88); PCD about 0.88. The full table and its verdict are in docs/reproductions.md.
"""

from mtljax.config import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The AuxDigits config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {
            "data.name": "auxdigits",
            "data.tasks": ["digit", "coarse", "right"],
            "data.primary": ["digit"],
            "model.name": "mlp",
            "model.kwargs.hidden": [16],
            "method.name": arg or "ew",
            "optimizer.lr": 3e-3,
            "schedule.steps": 1500,
            "schedule.eval_every": 150,
            "schedule.diagnostics_every": 100,
        }
    )
