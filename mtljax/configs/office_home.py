"""Office-Home: one task per domain (Art, Clipart, Product, Real_World), a shared ResNet.

Command::

    mtljax run office_home --set data.root=DIR --workdir runs/office_home         # EW
    mtljax sweep office_home --set data.root=DIR --methods ew,pcgrad --workdir runs/oh
    mtljax report runs/oh                                   # per-domain accuracy and Δm%

``DIR`` holds the released class folders or LibMTL's image lists
(:func:`mtljax.data.load_office`). The recipe is Office-31's (:mod:`mtljax.configs.office31`;
LibMTL trains both datasets the same way) on the four Office-Home domains.

Expected: not measured in this repository yet (no accelerator run). The test suite trains it
for a few steps on a tiny fixture in the real file layout. Metric per domain: accuracy (↑).
"""

from mtljax.config import RunConfig
from mtljax.configs import office31


def get_config(arg: str | None = None) -> RunConfig:
    """The Office-Home config; ``arg`` is an optional method name (default EW)."""
    return office31.get_config(arg).replace({"data.name": "office_home"})
