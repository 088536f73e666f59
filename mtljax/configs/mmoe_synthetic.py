"""The MMoE paper's synthetic tasks: MMoE versus hard sharing as the task correlation drops.

Command::

    mtljax run mmoe_synthetic --workdir runs/mmoe
    mtljax run mmoe_synthetic:1.0,0.9,0.8,0.5 --workdir runs/mmoe4 --set seeds=5

Expected: about 40 s on 2 CPU cores (3 correlations × 3 seeds × 2 models × 3 000 Adam steps;
the seeds and correlations of one model train together under ``vmap``). The paper's claim:
hard sharing degrades more than MMoE as the correlation falls, so the gap (hard − MMoE test
MSE) grows. Measured gap 0.24, 0.29, 0.28 at p = 1, 0.9, 0.5, within the seed spread
(``docs/reproductions.md``).
"""

from mtljax.benchmarks.mmoe_synthetic import MMoESynthetic


def get_config(arg: str | None = None) -> MMoESynthetic:
    """The benchmark; ``arg`` is an optional comma-separated list of correlations."""
    if arg:
        return MMoESynthetic(correlations=tuple(float(p) for p in arg.split(",")))
    return MMoESynthetic()
