"""Collectives the per-device step runs inside ``shard_map``/``pmap`` (no device placement).

:mod:`mtljax.parallel` places steps on devices and re-exports these; the step imports only
this module, so neither imports the other back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mtljax import linalg


def task_block_size(num_tasks: int, axis_name: str) -> int:
    """Tasks per device, ``⌈T/N⌉``; the last devices hold zero padding rows when N ∤ T."""
    return -(-num_tasks // lax.axis_size(axis_name))


def local_task_rows(num_tasks: int, dtype, axis_name: str) -> jax.Array:
    """This device's rows of the ``T×T`` identity, ``[k, T]`` with k = ⌈T/N⌉.

    Device i gets tasks ``i·k, …, i·k+k−1``; rows past T are zero, so their pullbacks are zero
    gradients (padding tasks).
    """
    k = task_block_size(num_tasks, axis_name)
    eye = jnp.eye(k * lax.axis_size(axis_name), num_tasks, dtype=dtype)
    return lax.dynamic_slice_in_dim(eye, lax.axis_index(axis_name) * k, k)


def local_task_slice(vector: jax.Array, axis_name: str) -> jax.Array:
    """This device's entries ``[k]`` of a ``[T]`` vector (zero for padding tasks)."""
    k = task_block_size(vector.shape[0], axis_name)
    padded = jnp.zeros((k * lax.axis_size(axis_name),), vector.dtype)
    padded = padded.at[: vector.shape[0]].set(vector)
    return lax.dynamic_slice_in_dim(padded, lax.axis_index(axis_name) * k, k)


def gather_task_vector(local: jax.Array, num_tasks: int, axis_name: str) -> jax.Array:
    """The ``[T]`` vector whose device blocks are ``local`` (``[k]``), replicated.

    A ``psum`` of zero-padded blocks, so the result is typed device-invariant.
    """
    if local.dtype == jnp.bool_:
        return gather_task_vector(local.astype(jnp.int32), num_tasks, axis_name) > 0
    n, k = lax.axis_size(axis_name), local.shape[0]
    padded = jnp.zeros((n * k, *local.shape[1:]), local.dtype)
    padded = lax.dynamic_update_slice_in_dim(padded, local, lax.axis_index(axis_name) * k, axis=0)
    return lax.psum(padded, axis_name)[:num_tasks]


def gather_task_rows(local: jax.Array, axis_name: str) -> jax.Array:
    """Every device's ``[k, ...]`` rows stacked ``[N·k, ...]`` in device order, replicated."""
    return gather_task_vector(local, local.shape[0] * lax.axis_size(axis_name), axis_name)


def _cross_gram(a, b) -> jax.Array:
    # A_i B_jᵀ summed over leaves, in at least float32 like linalg.gram.
    dtype = linalg.gram_dtype(a)
    blocks = [
        lax.dot_general(
            x.reshape(x.shape[0], -1),
            y.reshape(y.shape[0], -1),
            (((1,), (1,)), ((), ())),
            precision=lax.Precision.HIGHEST,
            preferred_element_type=dtype,
        )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(blocks[1:], blocks[0]).astype(dtype)


def ring_gram(local_jac, axis_name: str) -> jax.Array:
    """The Gram matrix ``J Jᵀ`` (``[N·k, N·k]``, replicated) of a row-sharded Jacobian.

    Device i holds the block ``J_i`` (``[k, *p]`` leaves). The blocks travel N−1 times one step
    around the ring (``ppermute``); at step s device i computes ``J_i J_{i+s}ᵀ``, so it holds
    at most two blocks at a time. The ``[k, N·k]`` row blocks are then summed (zero padded)
    into the full matrix: ``(N−1)·k·P`` elements sent per device, plus the ``N·k × N·k``
    reduction.
    """
    n, i = lax.axis_size(axis_name), lax.axis_index(axis_name)
    k = linalg.num_tasks(local_jac)
    perm = [(j, (j - 1) % n) for j in range(n)]  # device j receives from device j + 1
    rows = None
    other = local_jac
    for s in range(n):
        block = _cross_gram(local_jac, other)
        if rows is None:
            rows = jnp.zeros((k, n * k), block.dtype)
        rows = lax.dynamic_update_slice_in_dim(rows, block, ((i + s) % n) * k, axis=1)
        if s < n - 1:
            other = lax.ppermute(other, axis_name, perm)
    full = jnp.zeros((n * k, n * k), rows.dtype)
    full = lax.dynamic_update_slice_in_dim(full, rows, i * k, axis=0)
    return lax.psum(full, axis_name)


def from_first_device(tree, axis_name: str):
    """Device 0's value of every leaf, typed device-invariant (a masked ``psum``).

    For values equal on every device that the type system sees as per-device (computed from a
    ``pcast`` input); typed PRNG keys travel as their key data.
    """
    first = lax.axis_index(axis_name) == 0

    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if x.dtype == jnp.bool_:
            return one(x.astype(jnp.int32)).astype(jnp.bool_)
        return lax.psum(jnp.where(first, x, jnp.zeros_like(x)), axis_name)

    return jax.tree.map(one, tree)


def any_device(flags: jax.Array, axis_name: str) -> jax.Array:
    """The logical OR of a bool array over the devices of ``axis_name`` (replicated)."""
    return lax.psum(flags.astype(jnp.int32), axis_name) > 0


def gather_batch(x: jax.Array, axis_name: str) -> jax.Array:
    """All-gathers axis 1 (the batch axis of ``[T, B_local, ...]``) as a device-invariant value.

    A ``psum`` of zero-padded slices gives the same array as ``all_gather`` but is typed as
    replicated under ``shard_map``, so methods with loops over it need no device annotations.
    """
    n, index = lax.axis_size(axis_name), lax.axis_index(axis_name)
    local = x.shape[1]
    padded = jnp.zeros((x.shape[0], local * n, *x.shape[2:]), x.dtype)
    padded = lax.dynamic_update_slice_in_dim(padded, x, index * local, axis=1)
    return lax.psum(padded, axis_name)


def local_batch_slice(tree, axis_name: str):
    """This device's rows of a gathered batch axis (axis 0 of every leaf)."""
    index = lax.axis_index(axis_name)

    def one(x):
        size = x.shape[0] // lax.axis_size(axis_name)
        return lax.dynamic_slice_in_dim(x, index * size, size, axis=0)

    return jax.tree.map(one, tree)
