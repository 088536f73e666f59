"""MultiDigits (two 8×8 digits on a 12×12 canvas, tasks "left" and "right"): an MLP trunk.

Command::

    mtljax run multidigits --workdir runs/md                     # EW
    mtljax run multidigits:pcgrad --workdir runs/md_pcgrad       # another method
    mtljax run multidigits --workdir runs/md --set method.name=cagrad --set method.kw.c=0.4

Expected: about 20 s on 2 CPU cores (jax 0.10, 1000 steps, ~60 steps/s for EW after
compilation; Jacobian methods ~1.3× slower) and about 0.96 test accuracy on both tasks for EW
(single-task baselines are within ±1 point; `python -m experiments.demo` compares methods).
Everything not set here is a :class:`~mtljax.config.RunConfig` default (``mtljax configs
multidigits`` lists them): 1000 Adam steps at lr 1e-3, batches of 128, the MLP's two hidden
layers of 128.
"""

from mtljax.config import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The MultiDigits config; ``arg`` is an optional method name (default EW)."""
    return RunConfig().replace(
        {"model.name": "mlp", "method.name": arg or "ew", "schedule.eval_every": 100}
    )
