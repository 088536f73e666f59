"""Two linear tasks sharing one linear map: joint (EW) and alternating training recover W*, b*.

Command::

    mtljax run linear --workdir runs/linear
    mtljax run linear --workdir runs/linear_noisy --set noise=0.1 --set atol=0.02

Expected: about 5 s on 2 CPU cores. Both ``ew`` and ``alternating`` (round robin) end with
``W ≈ [[0.1, 0.2], [0.5, 0.9]]`` and ``b ≈ [0.3, 3.0]`` to within 1e-3 (noise-free labels).
"""

from mtljax.benchmarks.linear import Linear


def get_config(arg: str | None = None) -> Linear:
    """The linear benchmark; ``arg`` is an optional comma-separated list of methods."""
    return Linear(methods=tuple(arg.split(","))) if arg else Linear()
