"""The Gramian engine: ``G = J Jᵀ`` without the ``[T, P]`` Jacobian (see :mod:`.engine`).

* :mod:`mtljax.gramian.taps` — which shared leaves are dense kernels, biases or fallbacks;
* :mod:`mtljax.gramian.layers` — a dense layer's Gram contribution from ``A`` and ``δ``;
* :mod:`mtljax.gramian.engine` — the forward pass, the pullbacks, ``G`` and the update.

The train step's ``engine="gramian"`` (:mod:`mtljax.step.engines`) runs it.
"""

from mtljax.gramian.engine import trace_plan
from mtljax.gramian.taps import TapPlan, find_taps

__all__ = ["TapPlan", "find_taps", "trace_plan"]
