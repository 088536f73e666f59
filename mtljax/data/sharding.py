"""Per-host and per-device placement of batches for data-parallel and multi-host runs.

A *global* batch of ``B`` rows is split in two stages:

1. **hosts** — process ``i`` of ``P`` owns rows ``[i·B/P, (i+1)·B/P)``. Every process draws
   the same permutation from the same seed, so the host slices are disjoint and together form
   the global batch; a host builds only its slice (``BatchIterator(..., num_shards=P,
   shard_index=i)`` or :func:`host_slice` of a batch, e.g. a padded evaluation batch).
2. **devices** — :func:`mtljax.parallel.global_batch` assembles the host slices into global
   ``jax.Array``-s sharded along the mesh's ``data`` axis (for ``shard_map_step``), each device
   holding ``B / num_devices`` consecutive rows; for ``pmap``, :func:`mtljax.parallel.split_batch`
   reshapes a host's slice to ``[local_devices, rows, ...]``.

Works on any pytree of ``[B, ...]`` arrays, including multi-input batches
``{task: {"x", "y"}}`` (each task's batch is split the same way).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from mtljax import parallel


def host_shard() -> tuple[int, int]:
    """``(process_index, process_count)`` of this process in a ``jax.distributed`` job."""
    return jax.process_index(), jax.process_count()


def host_slice(batch, shard_index: int | None = None, num_shards: int | None = None):
    """Rows ``[i·B/P, (i+1)·B/P)`` of every leaf ``[B, ...]`` of ``batch``.

    Args:
      batch: a pytree of arrays with leading batch axes (each divisible by ``P``).
      shard_index, num_shards: ``i`` and ``P``; default to this process's index and count.

    Example:
      >>> host_slice({"x": np.arange(6)}, 1, 3)["x"].tolist()
      [2, 3]
    """
    default_index, default_count = host_shard()
    index = default_index if shard_index is None else int(shard_index)
    count = default_count if num_shards is None else int(num_shards)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"Need 0 <= shard_index < num_shards, got {index} and {count}.")

    def one(path, x):
        x = np.asarray(x)
        if x.shape[0] % count:
            raise ValueError(
                f"Batch entry {jax.tree_util.keystr(path)} has {x.shape[0]} rows, not divisible "
                f"by {count} hosts."
            )
        rows = x.shape[0] // count
        return x[index * rows : (index + 1) * rows]

    return jax.tree_util.tree_map_with_path(one, batch)


def device_batches(local_batches: Iterator, mesh: Mesh, *, axis_name: str = parallel.AXIS):
    """Places each host-local batch of ``local_batches`` on ``mesh`` as a global sharded batch.

    Each host's rows must split evenly over its devices in the mesh (checked, with a clear
    error); the result feeds :func:`mtljax.parallel.shard_map_step`.
    """
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    for batch in local_batches:
        for path, x in jax.tree_util.tree_leaves_with_path(batch):
            if np.shape(x)[0] % local_devices:
                raise ValueError(
                    f"Host batch entry {jax.tree_util.keystr(path)} has {np.shape(x)[0]} rows, "
                    f"not divisible by this host's {local_devices} devices."
                )
        yield parallel.global_batch(batch, mesh, axis_name=axis_name)
