"""DSelect-k: differentiable, k-sparse gates for a multi-task mixture of experts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads
from mtljax.models._mixture import GatedExperts, check_experts


def smooth_step(t: jax.Array, gamma: float) -> jax.Array:
    """The cubic smooth-step ``S``: ``0`` below ``−γ/2``, ``1`` above ``γ/2``, and in between

    ``S(t) = −(2/γ³) t³ + (3/(2γ)) t + 1/2``,

    continuously differentiable, with ``S'(±γ/2) = 0``: once ``|t| >= γ/2`` the output is
    exactly binary and its gradient zero (Hazimeh et al., NeurIPS 2020, used by DSelect-k).
    """
    # The cubic is 0 and 1 at ∓γ/2: clipping first gives the plateaus, with zero gradients and
    # no overflow of t³ for huge logits.
    t = jnp.clip(t, -gamma / 2, gamma / 2)
    return -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5


def binary_codes(num_experts: int) -> np.ndarray:
    """``[n, m]``: row ``l`` holds the ``m = log₂ n`` bits of ``l`` (least significant first)."""
    bits = int(np.log2(num_experts))
    return (np.arange(num_experts)[:, None] >> np.arange(bits)[None, :]) & 1


def dselect_weights(selector_logits: jax.Array, mix_logits: jax.Array, gamma: float) -> jax.Array:
    """The DSelect-k gate from ``z [..., k, m]`` and ``α [..., k]``: weights ``[..., n]``.

    Selector ``i`` puts ``r(z_i)_l = Π_j S(z_ij)^{b_lj} (1 − S(z_ij))^{1 − b_lj}`` on expert
    ``l`` (bits ``b_l`` of ``l``): a product of ``m`` Bernoulli probabilities, so ``r(z_i)``
    sums to one over the ``n = 2^m`` experts and is one-hot once every ``|z_ij| >= γ/2``. The
    gate is ``q = Σ_i softmax(α)_i r(z_i)``: on the simplex, with at most ``k`` non-zeros once
    the selectors are binary.
    """
    s = smooth_step(selector_logits, gamma)[..., None, :]  # [..., k, 1, m]
    codes = jnp.asarray(binary_codes(2 ** selector_logits.shape[-1]), s.dtype)  # [n, m]
    r = jnp.prod(codes * s + (1 - codes) * (1 - s), axis=-1)  # [..., k, n]
    return jnp.einsum("...k,...kn->...n", jax.nn.softmax(mix_logits, axis=-1), r)


class DSelectGate(nnx.Module):
    """One task's DSelect-k gate over ``n = 2^m`` experts with ``k`` selectors.

    Per-example (``per_example=True``): ``z(x) = W_z x``, ``α(x) = W_α x`` from the flattened
    input. Static: ``z`` and ``α`` are parameters, the same gate for every example; ``z``
    starts uniform in ``[−γ/2, γ/2]`` and ``α`` at zero.
    """

    def __init__(
        self,
        gate_features: int,
        num_experts: int,
        k: int,
        *,
        gamma: float,
        per_example: bool,
        rngs: nnx.Rngs,
    ):
        self.k, self.bits, self.gamma = int(k), int(np.log2(num_experts)), float(gamma)
        size = self.k * (self.bits + 1)
        if per_example:
            self.logits = nnx.Linear(int(gate_features), size, rngs=rngs)
        else:
            z = jax.random.uniform(
                rngs.params(),
                (self.k * self.bits,),
                minval=-gamma / 2,
                maxval=gamma / 2,
                dtype=jnp.float32,
            )
            self.logits = nnx.Param(jnp.concatenate([z, jnp.zeros((self.k,), jnp.float32)]))

    def __call__(self, x: jax.Array) -> jax.Array:
        """The weights ``[B, n]`` for the inputs ``x [B, ...]``."""
        if isinstance(self.logits, nnx.Linear):
            logits = self.logits(x.reshape(x.shape[0], -1))
        else:
            logits = jnp.broadcast_to(self.logits[...], (x.shape[0], self.logits.shape[0]))
        z = logits[:, : self.k * self.bits].reshape(-1, self.k, self.bits)
        return dselect_weights(z, logits[:, self.k * self.bits :], self.gamma)


class DSelectK(GatedExperts):
    """A multi-task mixture of experts with one DSelect-k gate per task.

    As :class:`~mtljax.models.MMoE` with the softmax gates replaced by DSelect-k gates
    (:func:`dselect_weights`): task ``t`` predicts ``y_t = h_t(Σ_e q_t(x)_e f_e(x))`` where
    ``q_t`` selects at most ``k`` experts once its selectors have converged to binary codes,
    while staying differentiable during training (unlike top-k gating). The paper's optional
    entropy regulariser, which speeds up that convergence, is not included.

    This implementation needs a power-of-two number of experts (every binary code names an
    expert).

    Shared parameters: the experts, under ``shared``; gates and heads are task-specific.
    Representation level: supported, as for MMoE (:meth:`encode` gives ``[B, E, D]``).

    Args:
      experts: the expert trunks (same ``out_features``); ``2^m`` of them.
      gate_features: the size of one flattened input (the per-example gates' input width).
      head_dims: output width of each task's head, keyed by task name (order kept).
      k: the number of selectors (non-zeros of a converged gate), ``1 <= k``.
      gamma: the width ``γ`` of the smooth-step's transition.
      per_example: per-example gates (on the input) or static gates.
      rngs: the parameter initialisation keys.

    References:
      Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong and Chi, "DSelect-k:
      Differentiable Selection in the Mixture of Experts with Applications to Multi-Task
      Learning", NeurIPS 2021, arXiv:2106.03760.
    """


    def __init__(
        self,
        experts: Sequence[nnx.Module],
        gate_features: int,
        head_dims: Mapping[str, int],
        *,
        k: int = 2,
        gamma: float = 1.0,
        per_example: bool = True,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "DSelectK")
        width = check_experts(experts, "DSelectK")
        n = len(experts)
        if n < 2 or n & (n - 1):
            raise ValueError(f"DSelectK needs a power-of-two number (>= 2) of experts, got {n}.")
        if int(k) < 1 or not float(gamma) > 0:
            raise ValueError(f"DSelectK needs k >= 1 and gamma > 0, got k={k}, gamma={gamma}.")
        self.shared = nnx.List(list(experts))
        self.gates = nnx.Dict(
            {
                name: DSelectGate(
                    gate_features, n, k, gamma=gamma, per_example=per_example, rngs=rngs
                )
                for name in head_dims
            }
        )
        self.heads = linear_heads(width, head_dims, rngs)

    def gate_weights(self, x: jax.Array) -> dict[str, jax.Array]:
        """Every task's weights over the experts, ``[B, E]`` each."""
        return {name: gate(x) for name, gate in self.gates.items()}
