"""Synthetic token sequences with two targets read from different features (presence, parity).

Command::

    mtljax run text --workdir runs/text
    mtljax run text:ew,upgrad --workdir runs/text_upgrad

Expected: about 50 s on 2 CPU cores (3 methods × 2 000 Adam steps, a one-block Transformer
encoder). A shared encoder learns both targets well above the majority-class rates (0.56,
0.58): measured test accuracy presence / parity: EW 1.00 / 0.996, MGDA 1.00 / 0.83, PCGrad
1.00 / 0.994 (``docs/reproductions.md``).
"""

from mtljax.benchmarks.text import Text


def get_config(arg: str | None = None) -> Text:
    """The text benchmark; ``arg`` is an optional comma-separated list of methods."""
    return Text(methods=tuple(arg.split(","))) if arg else Text()
