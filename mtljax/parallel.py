"""Data parallelism: the per-device train step under ``jax.shard_map``, ``jax.pmap`` and
``jax.distributed``.

The step itself (:func:`mtljax.make_train_step`) is written per device and takes the mesh axis
name (its parallelism is a value, :mod:`mtljax.step.options`); this module is the only place
that places steps on devices (the collectives they run inside are :mod:`mtljax.step.collectives`,
re-exported here):

* :func:`shard_map_step` — build the step with ``axis_name="data", reduce="loss"``; the state is
  replicated, the batch is split along its leading axis over the ``data`` mesh axis.
* :func:`pmap_step` — build the step with ``axis_name="data", reduce="grad"``; the state has a
  leading device axis (:func:`replicate`), the batch is reshaped ``[N, B/N, ...]``
  (:func:`split_batch`).
* :func:`initialize_distributed` and :func:`global_batch` — the same ``shard_map`` step over
  several processes: every process feeds its own slice of the global batch.

* :func:`task_sharded_step` — build the step with ``task_axis="task"``: every device holds the
  whole batch and computes the gradients of T/N of the tasks; the Gram matrix is assembled by
  :func:`ring_gram` and ``Jᵀw`` by a ``psum`` of per-device partial combinations, so no device
  holds the ``[T, P]`` Jacobian.

Communication per step (P shared parameters, T tasks, N devices, b bytes per element; a ring
all-reduce of n bytes moves about ``2·(N−1)/N·n`` per device):

* data parallel, ``aggregate="global"`` (default, exact): the gradient methods all-reduce the
  whole Jacobian, ``T·P·b`` bytes, versus ``P·b`` for a loss-only method;
* data parallel, ``aggregate="local"``: every device runs the method on its own Jacobian and
  the updates are all-reduced, ``P·b`` bytes, but the result is a different method whose
  update depends on N (the mean over devices of the method's output on each shard);
* task sharded: the ring Gram passes every device's ``[T/N, P]`` block around the ring,
  ``(N−1)·(T/N)·P·b`` bytes sent per device, plus a ``P·b`` all-reduce of ``Jᵀw``; the peak
  Jacobian memory per device is two blocks, ``2·(T/N)·P·b``, instead of ``T·P·b``.

:func:`collective_bytes` measures these payloads in a compiled step.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtljax.step import TrainStep
from mtljax.step.collectives import (  # noqa: F401  (re-exported: the per-device collectives)
    from_first_device,
    gather_task_vector,
    local_task_rows,
    local_task_slice,
    ring_gram,
    task_block_size,
)

AXIS = "data"
TASK_AXIS = "task"


def data_mesh(devices=None, *, axis_name: str = AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (all global devices by default) with automatic axes."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (axis_name,))


def shard_map_step(step: Callable, mesh: Mesh, *, axis_name: str = AXIS, donate: bool = False):
    """Jits ``step`` data parallel over ``mesh``: replicated state, batch split on axis 0.

    ``step`` must come from ``make_train_step(..., axis_name=axis_name, reduce="loss")`` (or be
    any per-device function of ``(state, batch)``). The step's options say how to map it: one
    with ``aggregate="local"`` (``step.options.parallel.check_vma`` false) runs its method on
    per-device Jacobians, so it is mapped with ``check_vma=False`` (pmap semantics).
    """
    check_vma = True
    if isinstance(step, TrainStep):
        parallel = step.options.parallel
        if parallel.data_axis != axis_name:
            raise ValueError(f"shard_map_step maps over {axis_name!r}, but the step was built "
                             f"with axis_name={parallel.data_axis!r}.")
        check_vma = parallel.check_vma
    sharded = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=(P(), P()), check_vma=check_vma,
    )
    return jax.jit(sharded, donate_argnums=(0,) if donate else ())


def task_sharded_step(
    step: Callable, mesh: Mesh, *, task_axis: str = TASK_AXIS, donate: bool = False
):
    """Jits ``step`` task sharded over ``mesh``: replicated state and batch.

    ``step`` must come from ``make_train_step(..., task_axis=task_axis)``; ``mesh`` is a 1-D
    mesh with that axis name (``data_mesh(axis_name=task_axis)``). The step's result equals the
    single-device step's (up to float round-off) for loss-only and Gram-space methods.
    """
    if isinstance(step, TrainStep) and step.options.parallel.task_axis != task_axis:
        raise ValueError(f"task_sharded_step maps over {task_axis!r}, but the step was built "
                         f"with task_axis={step.options.parallel.task_axis!r}.")
    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))
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


_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>.+?)\s+(?P<op>all-reduce|all-gather|reduce-scatter|collective-permute|"
    r"all-to-all)(?:-done)?\("
)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


def collective_bytes(compiled) -> dict[str, int]:
    """The bytes each kind of collective delivers per device in one call of a compiled step.

    Reads the optimised HLO (``compiled.as_text()`` of a ``jit(...).lower(...).compile()``) and
    sums the result shapes of its all-reduce, all-gather, reduce-scatter, collective-permute
    and all-to-all ops (an asynchronous pair counts once, at its ``-done``). This is the
    payload n of each collective, before the ring factor (an all-reduce of n bytes moves about
    ``2·(N−1)/N·n`` bytes per device); ops inside loops count once.

    Returns:
      ``{op: bytes}`` for the ops present, plus ``"total"``.
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    totals: dict[str, int] = {}
    for line in text.splitlines():
        match = _COLLECTIVE.search(line.split(", metadata=")[0])
        if match is None or "-start(" in line:
            continue
        size = 0
        for dtype, dims in _ARRAY.findall(match["shape"]):
            size += _HLO_ITEMSIZE[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
        totals[match["op"]] = totals.get(match["op"], 0) + size
    totals["total"] = sum(totals.values())
    return totals


_HLO_ITEMSIZE = {
    "pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
    "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}
