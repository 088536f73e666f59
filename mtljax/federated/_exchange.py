"""What one synchronous federated step exchanges: three ways, one function each.

Every party runs the same program on its own batch and its own heads. Write ``L_t`` for task
t's loss on its owner's batch, ``J`` for the ``[T, P]`` Jacobian of the losses with respect to
the shared parameters (P of them), ``J_p`` for party p's k rows and ``w`` for the method's
weights. Each party first computes its k losses and all-gathers them (T values). Then:

* ``"loss"`` (loss-only methods): ``w`` from the losses; each party back-propagates
  ``Σ_{t∈p} w_t L_t`` once and the shared gradients are summed (``psum``, P values):
  ``Jᵀw = Σ_p J_pᵀ w_p``.
* ``"gram"`` (Gram-space methods): each party pulls back its k rows; ``G = J Jᵀ`` is formed by
  :func:`mtljax.parallel.ring_gram` (the ``[k, P]`` blocks travel N − 1 hops around the ring,
  then the ``[T, T]`` matrix is summed), the method reads ``G`` and the losses, and
  ``Jᵀw = Σ_p J_pᵀ w_p`` is one ``psum`` of P values.
* ``"rows"`` (any method of one batch): the rows are all-gathered (``T·P`` values) and every
  party runs the method on the whole Jacobian, as the pooled step does.

Heads are private: a party's head gradients are its own tasks' rows, combined with its own
coefficients (``w_p``, or 1 for gradient methods, as in :mod:`mtljax.step`); they are never
sent. Inputs, labels and activations never leave the party.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtljax import linalg
from mtljax.federated._parties import Parties
from mtljax.jacobian import pull_back
from mtljax.methods import Method
from mtljax.step.collectives import ring_gram

EXCHANGES = ("loss", "gram", "rows")


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedContext:
    """The fixed inputs of a federated step (the same at every party)."""

    loss_fn: Callable[[Any, Any], jax.Array]
    method: Method
    parties: Parties
    weight_heads: bool
    strategy: str = "auto"

    def party_losses(self, params, batch) -> jax.Array:
        """This party's ``[k]`` losses from its own batch and heads."""
        k = self.parties.tasks_per_party
        losses = jnp.asarray(self.loss_fn(params, batch))
        if losses.shape == () and k == 1:
            return losses.reshape(1)
        if losses.shape != (k,):
            raise ValueError(f"loss_fn must return the losses of the party's {k} task(s) as a "
                             f"[{k}] array, got shape {losses.shape}.")
        return losses

    @property
    def task_mask(self) -> jax.Array:
        """The method's ``task_mask``: every task takes part."""
        return jnp.ones((self.parties.num_tasks,), bool)

    def head_coefficients(self, own_weights: jax.Array | None, dtype) -> jax.Array:
        """``c_p`` of this party's heads' update ``Σ_{t∈p} c_t ∇L_t``."""
        if self.weight_heads and own_weights is not None:
            return own_weights.astype(dtype)
        return jnp.ones((self.parties.tasks_per_party,), dtype)


class Exchanged(NamedTuple):
    """What a synchronous step's exchange gives every party."""

    losses: jax.Array  # [T], every task's, in task order (the same at every party)
    weights: jax.Array  # [T]; NaN for a method that is no weighting
    method_state: Any  # the same at every party
    shared_update: Any  # Jᵀw, summed over the parties (the same at every party)
    head_update: Any  # this party's heads only


def loss_exchange(fc: FederatedContext, method_state, params, batch) -> Exchanged:
    """Losses (T values) out, ``w`` from them, one backward pass, ``psum`` of P values."""
    local, vjp_fn = jax.vjp(lambda p: fc.party_losses(p, batch), params)
    losses = fc.parties.gather(local)
    weights, method_state = fc.method.loss_weights(
        method_state, task_losses=losses, task_mask=fc.task_mask)
    own = fc.parties.own(weights).astype(local.dtype)
    (grads,) = vjp_fn(own)
    heads = grads["heads"]
    if not fc.weight_heads:
        (unweighted,) = vjp_fn(fc.head_coefficients(None, local.dtype))
        heads = unweighted["heads"]
    shared = lax.psum(grads["shared"], fc.parties.axis_name)
    return Exchanged(losses, weights, method_state, shared, heads)


def _own_rows(fc: FederatedContext, params, batch):
    local, vjp_fn = jax.vjp(lambda p: fc.party_losses(p, batch), params)
    eye = jnp.eye(fc.parties.tasks_per_party, dtype=local.dtype)
    (rows,) = pull_back(vjp_fn, eye, strategy=fc.strategy)
    return fc.parties.gather(local), rows


def gram_exchange(fc: FederatedContext, method_state, params, batch) -> Exchanged:
    """Losses out, ``G`` by the ring, ``w`` from ``G``, ``psum`` of each party's ``J_pᵀ w_p``."""
    losses, rows = _own_rows(fc, params, batch)
    gram = fc.parties.task_gram(ring_gram(rows["shared"], fc.parties.axis_name))
    weights, method_state = fc.method.gram_weights(
        gram, method_state, task_losses=losses, task_mask=fc.task_mask)
    own = fc.parties.own(weights)
    shared = lax.psum(linalg.combine(rows["shared"], own), fc.parties.axis_name)
    heads = linalg.combine(rows["heads"], fc.head_coefficients(own, losses.dtype))
    return Exchanged(losses, weights, method_state, shared, heads)


def rows_exchange(fc: FederatedContext, method_state, params, batch) -> Exchanged:
    """Losses and the shared rows out (all-gathered); the method on the whole Jacobian."""
    losses, rows = _own_rows(fc, params, batch)
    jac = jax.tree.map(fc.parties.gather, rows["shared"])
    out = fc.method.apply(jac, method_state, params["shared"], task_losses=losses,
                          task_mask=fc.task_mask)
    own = None if out.weights is None else fc.parties.own(out.weights)
    heads = linalg.combine(rows["heads"], fc.head_coefficients(own, losses.dtype))
    weights = out.weights
    if weights is None:
        weights = jnp.full((fc.parties.num_tasks,), jnp.nan, losses.dtype)
    return Exchanged(losses, weights, out.state, out.updates, heads)


EXCHANGE_FUNCTIONS = {"loss": loss_exchange, "gram": gram_exchange, "rows": rows_exchange}


def resolve_exchange(method: Method, exchange: str) -> str:
    """The exchange for ``method``: ``"auto"`` picks the cheapest one it can run on."""
    if method.num_batches != 1:
        raise ValueError(f"Method {method.name!r} draws {method.num_batches} batches per step; "
                         "a federated step takes one batch per party.")
    if exchange == "auto":
        if method.kind == "loss":
            return "loss"
        return "gram" if method.gram_weights is not None else "rows"
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be 'auto' or one of {EXCHANGES}, got {exchange!r}.")
    possible = ("loss",) if method.kind == "loss" else (
        ("gram", "rows") if method.gram_weights is not None else ("rows",))
    if exchange not in possible:
        raise ValueError(f"Method {method.name!r} runs on the exchanges {possible}, not "
                         f"{exchange!r}.")
    return exchange


def exchange_bytes(exchange: str, *, num_tasks: int, num_parties: int, shared_size: int,
                   itemsize: int, after_step: bool = False) -> dict[str, int]:
    """The payload of one synchronous step's collectives, per party, by kind.

    With T tasks, N parties of k = T/N tasks, P shared parameters and b bytes per element:
    the losses' all-gather is ``T·b`` (``2·T·b`` with an after-step hook, FAMO); then
    ``"loss"``: an all-reduce of ``P·b``; ``"gram"``: N − 1 collective-permutes of ``k·P·b``
    and all-reduces of ``T²·b + P·b``; ``"rows"``: an all-gather of ``T·P·b``. These are the
    figures :func:`mtljax.parallel.collective_bytes` reads from the compiled step (payloads,
    before the ring factor of an all-reduce).
    """
    t, n, p, b = num_tasks, num_parties, shared_size, itemsize
    gather = t * b * (2 if after_step else 1)
    if exchange == "loss":
        out = {"all-gather": gather, "all-reduce": p * b}
    elif exchange == "gram":
        out = {"all-gather": gather, "all-reduce": (t * t + p) * b}
        if n > 1:
            out["collective-permute"] = (n - 1) * (t // n) * p * b
    elif exchange == "rows":
        out = {"all-gather": gather + t * p * b}
    else:
        raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}.")
    out["total"] = sum(out.values())
    return out
