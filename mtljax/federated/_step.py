"""The federated step of one party: local head steps, then one synchronous exchange."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtljax.federated._exchange import (
    EXCHANGE_FUNCTIONS,
    FederatedContext,
    exchange_bytes,
    resolve_exchange,
)
from mtljax.federated._parties import as_parties
from mtljax.methods import Method
from mtljax.tasks import Tasks, as_tasks


class FederatedState(NamedTuple):
    """One party's train state. ``shared``, ``shared_opt`` and ``method_state`` are the same
    at every party; ``heads`` and ``head_opt`` are the party's own (on a mesh they carry a
    leading party axis, sharded: party p's slice lives only on its device)."""

    step: jax.Array  # [] int32, synchronous steps taken
    shared: Any  # the shared parameters
    heads: Any  # this party's task-specific parameters
    shared_opt: Any  # optimizer state of the shared parameters
    head_opt: Any  # optimizer state of this party's heads
    method_state: Any


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _select(keep_new: jax.Array, new, old):
    return jax.tree.map(lambda a, b: jnp.where(keep_new, a, b), new, old)


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedStep:
    """One party's step ``(state, batch) -> (state, metrics)``, to run under
    :func:`mtljax.federated.federated_on_mesh` (not jitted).

    With ``local_head_steps = k > 0`` every leaf of ``batch`` has a leading axis of k + 1:
    the first k slices feed :meth:`local_step` (no communication), the last one
    :meth:`sync_step`.

    Attributes:
      context: the loss function, method and task → party map.
      optimizer: the optax transformation, applied to the shared parameters and to each
        party's heads separately (elementwise optimizers such as SGD and Adam give the pooled
        step's update; one that couples leaves, e.g. a global-norm clip, acts per part).
      exchange: ``"loss"``, ``"gram"`` or ``"rows"`` (:mod:`mtljax.federated._exchange`).
      local_head_steps: head-only steps before each synchronous one.
    """

    context: FederatedContext
    optimizer: optax.GradientTransformation
    exchange: str
    local_head_steps: int = 0

    def __call__(self, state: FederatedState, batch) -> tuple[FederatedState, dict]:
        if self.local_head_steps == 0:
            return self.sync_step(state, batch)
        local = jax.tree.map(lambda x: x[:-1], batch)
        state, _ = lax.scan(lambda s, b: (self.local_step(s, b)[0], None), state, local)
        return self.sync_step(state, jax.tree.map(lambda x: x[-1], batch))

    def sync_step(self, state: FederatedState, batch) -> tuple[FederatedState, dict]:
        """Exchange, method, optimizer. The update is skipped at every party alike when a
        task's loss or the shared update is non-finite; a party whose own head update is
        non-finite keeps its heads."""
        fc = self.context
        fc.parties.check_axis()
        params = {"shared": state.shared, "heads": state.heads}
        out = EXCHANGE_FUNCTIONS[self.exchange](fc, state.method_state, params, batch)
        shared_up, shared_opt = self.optimizer.update(out.shared_update, state.shared_opt,
                                                      state.shared)
        head_up, head_opt = self.optimizer.update(out.head_update, state.head_opt, state.heads)
        shared = optax.apply_updates(state.shared, shared_up)
        heads = optax.apply_updates(state.heads, head_up)
        method_state = out.method_state
        if fc.method.after_step is not None:
            after = fc.parties.gather(fc.party_losses({"shared": shared, "heads": heads}, batch))
            method_state = fc.method.after_step(method_state, task_losses_after=after,
                                                task_mask=fc.task_mask)
        applied = jnp.all(jnp.isfinite(out.losses)) & _all_finite(shared_up)
        heads_ok = applied & _all_finite(head_up)
        new = FederatedState(
            state.step + 1,
            _select(applied, shared, state.shared),
            _select(heads_ok, heads, state.heads),
            _select(applied, shared_opt, state.shared_opt),
            _select(heads_ok, head_opt, state.head_opt),
            _select(applied, method_state, state.method_state),
        )
        return new, {"losses": out.losses, "weights": out.weights, "skipped": ~applied}

    def local_step(self, state: FederatedState, batch) -> tuple[FederatedState, dict]:
        """A head-only step: each party descends ``Σ_{t∈p} L_t`` in its own heads, with the
        shared parameters frozen; nothing is sent. A non-finite update is skipped."""
        fc = self.context
        fc.parties.check_axis()

        def own_loss(heads):
            return jnp.sum(fc.party_losses({"shared": state.shared, "heads": heads}, batch))

        grads = jax.grad(own_loss)(state.heads)
        head_up, head_opt = self.optimizer.update(grads, state.head_opt, state.heads)
        ok = _all_finite(head_up)
        heads = _select(ok, optax.apply_updates(state.heads, head_up), state.heads)
        return state._replace(heads=heads, head_opt=_select(ok, head_opt, state.head_opt)), {}

    def bytes_per_step(self, shared_size: int, itemsize: int) -> dict[str, int]:
        """The collectives' payload of one call, by the formula of
        :func:`~mtljax.federated._exchange.exchange_bytes` (local head steps send nothing)."""
        parties = self.context.parties
        return exchange_bytes(self.exchange, num_tasks=parties.num_tasks,
                              num_parties=parties.num_parties, shared_size=shared_size,
                              itemsize=itemsize,
                              after_step=self.context.method.after_step is not None)


def make_federated_step(
    loss_fn: Callable[[Any, Any], jax.Array],
    tasks: Tasks | Sequence[str],
    method: Method,
    optimizer: optax.GradientTransformation,
    *,
    owners: Sequence[int],
    axis_name: str = "party",
    exchange: str = "auto",
    local_head_steps: int = 0,
    weight_heads: bool | None = None,
    strategy: str = "auto",
) -> FederatedStep:
    """Builds the per-party step of task-private (federated) multi-task training.

    Party p (position p on the mesh axis ``axis_name``) holds the data and the heads of the
    tasks ``t`` with ``owners[t] == p``; ``loss_fn({"shared": s, "heads": h_p}, batch_p)``
    returns those tasks' ``[k]`` losses from the party's own batch. A synchronous step sends
    only the T losses and what the method needs of the shared parameters (see
    :mod:`mtljax.federated._exchange`); its result equals :func:`mtljax.make_train_step` on
    the pooled batch in which task t's loss is computed on its owner's batch
    (:func:`mtljax.federated.pooled_loss`).

    Args:
      loss_fn: ``(params, batch) -> [k]`` losses of the party's own tasks, in task order.
      tasks: the T tasks (names), the order of the method's weights.
      method: a method built for T tasks, drawing one batch per step.
      optimizer: an optax transformation (applied to the shared parameters and the heads
        separately).
      owners: the party of each task; every party owns the same number k of tasks.
      axis_name: the mesh axis of the parties (one device per party).
      exchange: ``"auto"`` (``"loss"`` for loss-only methods, ``"gram"`` for Gram-space
        methods, else ``"rows"``) or one of those names.
      local_head_steps: head-only steps (no communication, shared parameters frozen) before
        each synchronous step; the batch then has a leading axis of this + 1.
      weight_heads: heads get the method's weights (default: for loss-only methods, as in
        :func:`mtljax.make_train_step`), else weight 1.
      strategy: how the k backward passes run (:func:`mtljax.jacobian.pull_back`).

    Returns:
      A :class:`FederatedStep`.
    """
    tasks = as_tasks(tasks)
    if method.num_tasks != len(tasks):
        raise ValueError(f"The method is built for {method.num_tasks} tasks, tasks has "
                         f"{len(tasks)}.")
    if isinstance(local_head_steps, bool) or not isinstance(local_head_steps, int) or (
            local_head_steps < 0):
        raise ValueError(f"local_head_steps must be an int >= 0, got {local_head_steps!r}.")
    weight_heads = method.kind == "loss" if weight_heads is None else bool(weight_heads)
    context = FederatedContext(loss_fn, method, as_parties(owners, axis_name, len(tasks)),
                               weight_heads, strategy)
    return FederatedStep(context, optimizer, resolve_exchange(method, exchange),
                         local_head_steps)
