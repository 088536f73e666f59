"""One process of a multi-process data-parallel run, for ``tests/test_multihost.py``.

Run as::

    python tests/multihost_worker.py --process-id 0 --num-processes 2 --port 12345 \
        --out result0.npz --devices-per-process 2

Every process joins ``jax.distributed`` on 127.0.0.1 before any other JAX call, builds the toy
problem of ``tests/toy.py``, feeds its own slice of the global batch and trains PCGrad and MGDA
with :func:`mtljax.parallel.shard_map_step` over the global mesh of all processes' devices. The
final parameters and losses go to ``--out`` (``.npz``). With ``--hold`` the process instead
writes an empty ``--out`` once the job is up and sleeps, so the test can kill a peer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).parent))
from toy import make_problem  # noqa: E402

import mtljax  # noqa: E402
from mtljax import parallel  # noqa: E402

METHODS = ("pcgrad", "mgda")
STEPS = 3


def train(mesh, method_name: str, *, steps: int = STEPS) -> dict[str, np.ndarray]:
    """Trains the toy problem data parallel over ``mesh``; returns the final params and losses.

    Each process feeds the rows of the global batch that belong to it, in process order, so the
    global batch is the same whatever the number of processes.
    """
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method(method_name, len(tasks))
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = parallel.shard_map_step(
        mtljax.make_train_step(loss, tasks, method, opt, axis_name=parallel.AXIS), mesh
    )
    rows = batch["x"].shape[0] // jax.process_count()
    local = jax.tree.map(
        lambda x: np.asarray(x)[jax.process_index() * rows : (jax.process_index() + 1) * rows],
        batch,
    )
    state = parallel.replicate_on_mesh(state, mesh)
    gbatch = parallel.global_batch(local, mesh)
    for _ in range(steps):
        state, metrics = step(state, gbatch)
    out = {"losses": metrics["losses"], "weights": metrics["weights"]}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        out["params" + jax.tree_util.keystr(path)] = leaf
    # Replicated global arrays: every process holds the full value on its first shard.
    return {f"{method_name}/{k}": np.asarray(v.addressable_data(0)) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices-per-process", type=int, default=2)
    parser.add_argument("--heartbeat-timeout", type=int, default=10)
    parser.add_argument("--hold", action="store_true", help="join, write --out, sleep")
    args = parser.parse_args()

    parallel.initialize_distributed(
        f"127.0.0.1:{args.port}",
        args.num_processes,
        args.process_id,
        local_device_count=args.devices_per_process,
        initialization_timeout=30,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
    )
    jax.config.update("jax_enable_x64", True)  # as in tests/conftest.py, for identical dtypes
    mesh = parallel.data_mesh()
    if args.hold:
        np.savez(args.out)
        time.sleep(120)
        return
    results = {}
    for name in METHODS:
        results.update(train(mesh, name))
    np.savez(args.out, **results)


if __name__ == "__main__":
    main()
