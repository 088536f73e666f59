"""The CAGrad / Nash-MTL / FAMO two-objective toy: which methods reach the Pareto set, from where.

Command::

    mtljax run toy2d --workdir runs/toy2d              # s = 0.1 (Nash-MTL, FAMO)
    mtljax run toy2d:1 --workdir runs/toy2d_s1         # s = 1 (CAGrad)
    mtljax run toy2d --workdir runs/t --set 'methods=["mgda","cagrad"]' --set steps=20000

Expected: 40–55 s on 2 CPU cores for the 8 default methods × 5 starts × 50 000 Adam steps
(one ``lax.scan`` per method, ``vmap`` over starts). The papers' claim: EW (linear
scalarisation) and PCGrad miss the Pareto set from some starts, MGDA reaches its ends,
CAGrad, Nash-MTL and FAMO reach it from every start. Measured at s = 0.1: Nash-MTL, MGDA and
FAMO 5/5, EW, PCGrad, CAGrad, IMTL-G, UPGrad 4/5 (details and s = 1 in
``docs/reproductions.md``); ``trajectories.png`` shows the paths over the loss landscape.
"""

from mtljax.benchmarks.toy2d import Toy2D


def get_config(arg: str | None = None) -> Toy2D:
    """The toy benchmark; ``arg`` is the first loss's scale ``s`` (default 0.1)."""
    return Toy2D(scale=float(arg) if arg else 0.1)
