"""Mixture-of-experts plumbing shared by MMoE, CGC/PLE and DSelect-k."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def stack_experts(experts: Sequence[nnx.Module], x: jax.Array) -> jax.Array:
    """Every expert's output on ``x``, stacked: ``[B, E, D]``."""
    return jnp.stack([expert(x) for expert in experts], axis=1)


def mix(weights: jax.Array, expert_outputs: jax.Array) -> jax.Array:
    """``Σ_e w_{b,e} f_e(x_b)``: ``[B, E]`` weights times ``[B, E, D]`` outputs → ``[B, D]``."""
    return jnp.einsum("be,bed->bd", weights, expert_outputs)


def softmax_gate(gate: nnx.Linear, x: jax.Array) -> jax.Array:
    """``softmax(W flatten(x) + b)`` over the experts: ``[B, E]``, rows on the simplex."""
    return jax.nn.softmax(gate(x.reshape(x.shape[0], -1)), axis=-1)


def check_experts(experts: Sequence[nnx.Module], owner: str) -> int:
    """The common ``out_features`` of ``experts``; raises if they have none or differ."""
    if not experts:
        raise ValueError(f"{owner} needs at least one expert.")
    widths = {getattr(expert, "out_features", None) for expert in experts}
    if len(widths) != 1 or None in widths:
        raise ValueError(
            f"{owner} experts need one common out_features attribute, got "
            f"{sorted(map(str, widths))}."
        )
    return int(widths.pop())


class GatedExperts(nnx.Module):
    """Shared experts (``self.shared``) mixed per task by gates (``self.gates``), then heads.

    Subclasses define :meth:`gate_weights`; task ``t`` predicts
    ``y_t = h_t(Σ_e q_t(x)_e f_e(x))``. The experts' outputs ``[B, E, D]`` are the shared
    representation, and the gates read the input, so :meth:`decode` takes ``x`` too.
    """

    decode_reads_input = True

    def gate_weights(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every task's weights over the experts, ``[B, E]`` each."""
        raise NotImplementedError

    def encode(self, x: jax.Array) -> jax.Array:
        """The experts' outputs ``[B, E, D]`` (the shared representation)."""
        return stack_experts(self.shared, x)

    def decode(self, rep: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
        """Every task's output from the experts' outputs ``rep`` and the gates' input ``x``."""
        weights = self.gate_weights(x)
        return {name: head(mix(weights[name], rep)) for name, head in self.heads.items()}

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        return self.decode(self.encode(x), x)
