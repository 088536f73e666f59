"""Placing a federated step on a mesh of parties, and its pooled-data reference.

Outside the mapped step, the private parts of the state (``heads``, ``head_opt``) and every
batch leaf carry a leading *party* axis of size N, sharded over the mesh axis: party p's slice
lives only on party p's device. In a multi-process job each process builds, and places, only
the slices of the parties on its own devices (:func:`local_parties`, :func:`place_parties`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtljax.federated._parties import Parties
from mtljax.federated._step import FederatedState
from mtljax.methods import Method
from mtljax.parallel import replicate_on_mesh


def init_federated_state(shared, heads, optimizer: optax.GradientTransformation,
                         method: Method) -> FederatedState:
    """The initial state; ``heads`` has a leading party axis (this process's parties)."""
    return FederatedState(
        step=jnp.zeros((), jnp.int32),
        shared=shared,
        heads=heads,
        shared_opt=optimizer.init(shared),
        head_opt=jax.vmap(optimizer.init)(heads),
        method_state=method.init(shared),
    )


def state_specs(axis_name: str) -> FederatedState:
    """The ``PartitionSpec`` of each part of a :class:`FederatedState` on the mesh."""
    return FederatedState(P(), P(), P(axis_name), P(), P(axis_name), P())


def federated_on_mesh(step: Callable, mesh: Mesh, *, axis_name: str = "party",
                      donate: bool = False):
    """Jits a per-party step (a :class:`~mtljax.federated.FederatedStep`, or one of its
    ``sync_step``/``local_step``) over ``mesh``, one party per device of ``axis_name``.

    The mapped function takes the state and the batch with their leading party axis, drops it
    for the party's own program and puts it back. ``check_vma=False``: each party
    differentiates its own losses (pmap semantics), and the step sums what it must itself.
    """
    specs = state_specs(axis_name)

    def per_party(state, batch):
        private = (state.heads, state.head_opt, batch)
        heads, head_opt, batch = jax.tree.map(lambda x: x[0], private)
        new, metrics = step(state._replace(heads=heads, head_opt=head_opt), batch)
        heads, head_opt = jax.tree.map(lambda x: x[None], (new.heads, new.head_opt))
        return new._replace(heads=heads, head_opt=head_opt), metrics

    mapped = jax.shard_map(per_party, mesh=mesh, in_specs=(specs, P(axis_name)),
                           out_specs=(specs, P()), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def local_parties(mesh: Mesh) -> tuple[int, ...]:
    """The parties (positions on the 1-D ``mesh``) whose device belongs to this process."""
    return tuple(i for i, d in enumerate(mesh.devices.flat)
                 if d.process_index == jax.process_index())


def place_parties(tree, mesh: Mesh, *, axis_name: str = "party"):
    """Global arrays, sharded on the party axis, from this process's parties' slices
    (``[n_local, ...]`` leaves, in the order of :func:`local_parties`)."""
    sharding = NamedSharding(mesh, P(axis_name))
    size = mesh.shape[axis_name]

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (size, *x.shape[1:]))

    return jax.tree.map(one, tree)


def place_state(state: FederatedState, mesh: Mesh, *, axis_name: str = "party"):
    """The state on ``mesh``: shared parts replicated, heads and their optimizer state
    sharded over the parties (this process's slices only)."""
    shared = replicate_on_mesh((state.step, state.shared, state.shared_opt,
                                state.method_state), mesh)
    heads, head_opt = place_parties((state.heads, state.head_opt), mesh, axis_name=axis_name)
    step, shared_params, shared_opt, method_state = shared
    return FederatedState(step, shared_params, heads, shared_opt, head_opt, method_state)


def pooled_loss(loss_fn: Callable, owners: Sequence[int]) -> Callable:
    """The pooled-data reference: ``fn(params, batch) -> [T]`` losses in task order, with
    ``params = {"shared", "heads"}`` and every batch leaf carrying the party axis; task t's
    loss is computed on its owner's slice. ``mtljax.make_train_step`` on
    ``MultiTaskLoss.from_fn(pooled_loss(...))`` is the step a federated step equals."""
    parties = Parties(tuple(owners))

    def fn(params, batch):
        per_party = []
        for p in range(parties.num_parties):
            heads, data = jax.tree.map(lambda x, p=p: x[p], (params["heads"], batch))
            losses = jnp.asarray(loss_fn({"shared": params["shared"], "heads": heads}, data))
            per_party.append(losses.reshape(parties.tasks_per_party))
        return jnp.concatenate(per_party)[parties.position]

    return fn
