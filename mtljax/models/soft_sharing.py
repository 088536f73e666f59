"""Soft parameter sharing: one trunk per task, pulled together by an L2 penalty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads

PENALTIES = ("pairs", "mean")


class SoftSharing(nnx.Module):
    """One trunk and one linear head per task; an L2 penalty keeps the trunks close.

    Task ``t`` computes ``y_t = h_t(f_{θ_t}(x))`` with its own trunk parameters ``θ_t``. The
    trunks (same architecture) are coupled only by the penalty

    * ``penalty="pairs"``: ``Ω = λ Σ_{i<j} ‖θ_i − θ_j‖²`` (Duong et al.'s distance, summed over
      all pairs of tasks);
    * ``penalty="mean"``: ``Ω = λ Σ_i ‖θ_i − θ̄‖²`` with ``θ̄ = (1/T) Σ_j θ_j``.

    The two differ by a factor: ``Σ_{i<j} ‖θ_i − θ_j‖² = T Σ_i ‖θ_i − θ̄‖²``, which is also how
    both are computed (``O(T·P)`` memory rather than ``O(T²·P)``).

    How the penalty enters the per-task losses: :meth:`task_penalties` splits ``Ω`` into one
    share per task, ``Ω = Σ_t Ω_t``, and :func:`mtljax.nnx_bridge.model_loss` adds ``Ω_t`` to
    task ``t``'s loss. Task ``t``'s share is its trunk's distance to the others:
    ``Ω_t = (λ/2) Σ_{j≠t} ‖θ_t − θ_j‖²`` ("pairs") or ``Ω_t = λ ‖θ_t − θ̄‖²`` ("mean"). So
    equal weighting minimises exactly ``Σ_t L_t + Ω``, and every gradient method sees the
    penalty inside the task rows of its Jacobian. With ``λ = 0`` task ``t``'s loss depends on
    ``θ_t`` and its head only.

    Shared parameters: the trunks, under ``shared`` — every task's penalised loss depends on all
    of them (through ``Ω``), so they form the Jacobian. The heads are task-specific. There is no
    single shared representation (one per task): parameter level only.

    Args:
      trunks: one module per task, in the order of ``head_dims``, with identical parameter
        structures and an ``out_features`` attribute.
      head_dims: output width of each task's head, keyed by task name (order kept).
      weight: the penalty weight ``λ >= 0``.
      penalty: ``"pairs"`` or ``"mean"``.
      rngs: the parameter initialisation keys.

    Example:
      >>> from mtljax.models import MLP
      >>> rngs = nnx.Rngs(0)
      >>> model = SoftSharing([MLP(4, (8,), rngs=rngs) for _ in range(2)], {"a": 3, "b": 1},
      ...                     weight=0.1, rngs=rngs)
      >>> {k: v.shape for k, v in model(jnp.ones((2, 4))).items()}
      {'a': (2, 3), 'b': (2, 1)}

    References:
      Duong, Cohn, Bird and Cook, "Low Resource Dependency Parsing: Cross-lingual Parameter
      Sharing in a Neural Network Parser", ACL 2015.
    """

    def __init__(
        self,
        trunks: Sequence[nnx.Module],
        head_dims: Mapping[str, int],
        *,
        weight: float = 1e-3,
        penalty: str = "pairs",
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "SoftSharing")
        if len(trunks) != len(head_dims):
            raise ValueError(
                f"SoftSharing needs one trunk per task: {len(trunks)} trunks for "
                f"{len(head_dims)} tasks {list(head_dims)}."
            )
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}.")
        if not float(weight) >= 0:
            raise ValueError(f"The penalty weight must be >= 0, got {weight}.")
        shapes = {str(jax.tree.map(jnp.shape, nnx.state(t, nnx.Param))) for t in trunks}
        widths = {getattr(t, "out_features", None) for t in trunks}
        if len(shapes) != 1 or len(widths) != 1 or None in widths:
            raise ValueError(
                "SoftSharing trunks need identical parameter structures and an out_features."
            )
        self.weight = float(weight)
        self.penalty_kind = penalty
        self.shared = nnx.List(list(trunks))
        self.heads = linear_heads(trunks[0].out_features, head_dims, rngs)

    def _distances(self) -> tuple[jax.Array, jax.Array]:
        """``d_t = ‖θ_t − θ̄‖²`` ``[T]`` and ``D = Σ_t d_t``."""
        stacked = [
            jnp.stack(leaves)
            for leaves in zip(
                *(jax.tree.leaves(nnx.state(t, nnx.Param)) for t in self.shared), strict=True
            )
        ]
        d = sum(jnp.sum(jnp.square(x - x.mean(0)).reshape(x.shape[0], -1), axis=1) for x in stacked)
        return d, jnp.sum(d)

    def penalty(self) -> jax.Array:
        """``Ω``, the whole penalty (a scalar); equal to ``Σ_t`` of :meth:`task_penalties`."""
        d, total = self._distances()
        return self.weight * (len(d) * total if self.penalty_kind == "pairs" else total)

    def task_penalties(self) -> dict[str, jax.Array]:
        """Each task's share ``Ω_t`` of the penalty, keyed by task name (see the class doc).

        For "pairs", ``Σ_{j≠t} ‖θ_t − θ_j‖² = T d_t + D`` with ``d_t = ‖θ_t − θ̄‖²`` and
        ``D = Σ_j d_j``.
        """
        d, total = self._distances()
        if self.penalty_kind == "pairs":
            shares = 0.5 * self.weight * (len(d) * d + total)
        else:
            shares = self.weight * d
        return {name: shares[i] for i, name in enumerate(self.heads.keys())}

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        return {
            name: head(trunk(x))
            for (name, head), trunk in zip(self.heads.items(), self.shared, strict=True)
        }
