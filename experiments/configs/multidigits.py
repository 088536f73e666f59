"""MultiDigits (two 8×8 digits on a 12×12 canvas, tasks "left" and "right"): an MLP trunk.

Command::

    mtljax run multidigits --workdir runs/md                     # EW
    mtljax run multidigits:pcgrad --workdir runs/md_pcgrad       # another method
    mtljax run multidigits --workdir runs/md --set method=cagrad --set method_kw.c=0.4

Expected: about 20 s on 2 CPU cores (jax 0.10, 1000 steps, ~60 steps/s for EW after
compilation; Jacobian methods ~1.3× slower) and about 0.96 test accuracy on both tasks for EW
(single-task baselines are within ±1 point; `python -m experiments.demo` compares methods).
"""

from mtljax.runner import RunConfig


def get_config(arg: str | None = None) -> RunConfig:
    """The MultiDigits config; ``arg`` is an optional method name (default ``"ew"``)."""
    return RunConfig(
        dataset="multidigits",
        model="mlp",
        hidden=(128, 128),
        method=arg or "ew",
        steps=1000,
        batch_size=128,
        optimizer="adam",
        lr=1e-3,
        seed=0,
        eval_every=100,
        log_every=10,
        diagnostics_every=50,
    )
