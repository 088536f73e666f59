"""GradNorm's synthetic regression tasks with loss scales σ = (1, 100): GradNorm vs EW vs UW.

Command::

    mtljax run gradnorm_synthetic --workdir runs/gn2          # T = 2, σ = (1, 100)
    mtljax run gradnorm_synthetic:10 --workdir runs/gn10      # T = 10, σ from 1 to 100

Expected: about 20 s (T = 2) and 70 s (T = 10) on 2 CPU cores for 3 000 Adam steps × 3
methods. The paper's claim: GradNorm (α = 0.12) ends with a lower test-time
``Σ_i L_i(t) / L_i(0)`` than equal weights and uncertainty weighting. Measured: T = 2, EW
2.61, UW 1.70, GradNorm 1.74; T = 10, EW 8.51, UW 8.05, GradNorm 7.23
(``docs/reproductions.md``).
"""

from mtljax.benchmarks.gradnorm_synthetic import GradNormSynthetic


def get_config(arg: str | None = None) -> GradNormSynthetic:
    """The benchmark; ``arg`` is the number of tasks T (default 2)."""
    return GradNormSynthetic(num_tasks=int(arg) if arg else 2)
