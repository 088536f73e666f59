"""Multi-gate Mixture-of-Experts (MMoE)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads
from mtljax.models._mixture import GatedExperts, check_experts, softmax_gate


class MMoE(GatedExperts):
    """Shared experts mixed by one softmax gate per task (Multi-gate Mixture-of-Experts).

    With experts ``f_1..f_E`` (any trunks with a common ``out_features``) and per-task gates
    ``g_t(x) = softmax(W_t x + b_t) ∈ Δ^E`` on the flattened input, task ``t`` predicts
    ``y_t = h_t(Σ_e g_t(x)_e f_e(x))``. The paper's towers are here linear heads.

    Shared parameters: the experts, under ``shared``. The gates (``gates``) and heads are
    task-specific: gate ``t`` only feeds task ``t``.

    Representation level: supported. :meth:`encode` gives the experts' outputs ``[B, E, D]``,
    read by every task; :meth:`decode` applies the gates (which read the input ``x``) and heads.

    Args:
      experts: the expert trunks, each mapping ``x`` to ``[B, D]`` (same ``out_features``).
      gate_features: the size of one flattened input (the gates' input width).
      head_dims: output width of each task's head, keyed by task name (order kept).
      rngs: the parameter initialisation keys.

    Example:
      >>> from mtljax.models import MLP
      >>> rngs = nnx.Rngs(0)
      >>> model = MMoE([MLP(4, (8,), rngs=rngs) for _ in range(3)], 4, {"a": 3, "b": 1},
      ...              rngs=rngs)
      >>> model.encode(jax.numpy.ones((2, 4))).shape
      (2, 3, 8)

    References:
      Ma, Zhao, Yi, Chen, Hong and Chi, "Modeling Task Relationships in Multi-task Learning
      with Multi-gate Mixture-of-Experts", KDD 2018.
    """


    def __init__(
        self,
        experts: Sequence[nnx.Module],
        gate_features: int,
        head_dims: Mapping[str, int],
        *,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "MMoE")
        width = check_experts(experts, "MMoE")
        self.shared = nnx.List(list(experts))
        self.gates = nnx.Dict(
            {name: nnx.Linear(int(gate_features), len(experts), rngs=rngs) for name in head_dims}
        )
        self.heads = linear_heads(width, head_dims, rngs)

    def gate_weights(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every task's mixture weights over the experts, ``[B, E]`` each."""
        return {name: softmax_gate(gate, x) for name, gate in self.gates.items()}
