"""Task-private (federated) multi-task training: each party keeps its own tasks' data.

A *party* is one device of a mesh axis (under ``mtljax launch`` / ``jax.distributed``, one
process with one device). Party p owns the tasks ``t`` with ``owners[t] == p``: their data
(inputs, labels, activations) and their heads never leave it. A synchronous step exchanges
the T losses and what the method needs of the *shared* parameters:

* loss-only methods: one ``psum`` of the combined gradient ``Jᵀw`` (P values);
* Gram-space methods: the Gram matrix ``G = J Jᵀ`` by a ring of the parties' ``[k, P]``
  gradient blocks, then one ``psum`` of ``Jᵀw``;
* other methods: the per-task shared gradients (``[T, P]``, all-gathered).

The result equals :func:`mtljax.make_train_step` on the pooled batch in which task t's loss is
computed on its owner's batch (:func:`pooled_loss`). ``local_head_steps=k`` adds k head-only
steps (no communication, shared parameters frozen) before each synchronous one.

Example (8 parties on one host, one task each)::

    step = federated.make_federated_step(loss_fn, tasks, method, opt, owners=range(8))
    mesh = parallel.data_mesh(axis_name="party")
    run = federated.federated_on_mesh(step, mesh)
    state = federated.place_state(federated.init_federated_state(shared, heads, opt, method),
                                  mesh)
    state, metrics = run(state, federated.place_parties(batch, mesh))

See ``docs/federated.md`` for the bytes sent per step and what they can reveal.
"""

from mtljax.federated._exchange import EXCHANGES, Exchanged, FederatedContext, exchange_bytes
from mtljax.federated._mesh import (
    federated_on_mesh,
    init_federated_state,
    local_parties,
    place_parties,
    place_state,
    pooled_loss,
    state_specs,
)
from mtljax.federated._parties import Parties
from mtljax.federated._step import FederatedState, FederatedStep, make_federated_step

__all__ = [
    "EXCHANGES",
    "Exchanged",
    "FederatedContext",
    "FederatedState",
    "FederatedStep",
    "Parties",
    "exchange_bytes",
    "federated_on_mesh",
    "init_federated_state",
    "local_parties",
    "make_federated_step",
    "place_parties",
    "place_state",
    "pooled_loss",
    "state_specs",
]
