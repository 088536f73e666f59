"""Data parallelism: the per-device train step under ``jax.shard_map``, ``jax.pmap`` and
``jax.distributed``.

The step itself (:func:`mtljax.make_train_step`) is written per device and takes the mesh axis
name; this module is the only place that knows about devices:

* :func:`shard_map_step` — build the step with ``axis_name="data", reduce="loss"``; the state is
  replicated, the batch is split along its leading axis over the ``data`` mesh axis.
* :func:`pmap_step` — build the step with ``axis_name="data", reduce="grad"``; the state has a
  leading device axis (:func:`replicate`), the batch is reshaped ``[N, B/N, ...]``
  (:func:`split_batch`).
* :func:`initialize_distributed` and :func:`global_batch` — the same ``shard_map`` step over
  several processes: every process feeds its own slice of the global batch.

Communication per step (P shared parameters, T tasks, N devices, b bytes per element): the
gradient methods all-reduce the whole Jacobian, ``T·P·b`` bytes per device and step (ring
all-reduce moves about ``2·(N−1)/N·T·P·b``), versus ``P·b`` for a loss-only method.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def data_mesh(devices=None, *, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (all global devices by default) with automatic axes."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (axis_name,))


def shard_map_step(step: Callable, mesh: Mesh, *, axis_name: str = AXIS, donate: bool = False):
    """Jits ``step`` data parallel over ``mesh``: replicated state, batch split on axis 0.

    ``step`` must come from ``make_train_step(..., axis_name=axis_name, reduce="loss")``.
    """
    sharded = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=(P(), P())
    )
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def pmap_step(step: Callable, *, axis_name: str = AXIS, devices=None):
    """``jax.pmap`` of ``step``, built with ``axis_name=axis_name, reduce="grad"``."""
    return jax.pmap(step, axis_name=axis_name, devices=devices)


def replicate(tree, num_devices: int | None = None):
    """Stacks ``tree`` ``num_devices`` times along a new leading axis (for ``pmap``)."""
    n = jax.local_device_count() if num_devices is None else num_devices
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


def unreplicate(tree):
    """The first device's copy of a ``pmap``-replicated tree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(batch, num_devices: int | None = None):
    """Reshapes every leaf ``[B, ...]`` to ``[N, B/N, ...]`` (for ``pmap``)."""
    n = jax.local_device_count() if num_devices is None else num_devices

    def one(x):
        if x.shape[0] % n:
            raise ValueError(f"Batch size {x.shape[0]} is not divisible by {n} devices.")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(one, batch)


def initialize_distributed(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_count: int | None = None,
    initialization_timeout: int = 60,
    heartbeat_timeout_seconds: int = 10,
) -> None:
    """Joins a multi-process JAX job; call before any other JAX operation.

    The coordinator binds to the host part of ``coordinator_address`` only (not to every
    interface). ``local_device_count`` forces that many CPU devices in this process (for tests
    and CPU clusters). A dead peer aborts the survivors after ``heartbeat_timeout_seconds``.
    """
    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        coordinator_bind_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )


def global_batch(local_batch, mesh: Mesh, *, axis_name: str = AXIS):
    """Assembles each process's slice ``[B/num_processes, ...]`` into global sharded arrays."""
    sharding = NamedSharding(mesh, P(axis_name))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def replicate_on_mesh(tree, mesh: Mesh):
    """Places ``tree`` replicated on every device of ``mesh`` (works across processes).

    Typed PRNG keys travel as their raw key data and are re-wrapped on the mesh.
    """
    sharding = NamedSharding(mesh, P())

    def place(x):
        if jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
            data = place(jax.random.key_data(x))
            return jax.jit(
                lambda d: jax.random.wrap_key_data(d, impl=jax.random.key_impl(x)),
                out_shardings=sharding,
            )(data)
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(place, tree)
