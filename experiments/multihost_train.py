"""Data-parallel multi-task training over several processes or hosts: the multi-host recipe.

One program, started once per process; every process feeds its own slice of each global batch,
and the step is the same as on one device (the Jacobian is all-reduced before the method).

    # rehearse on one machine: 2 processes x 2 CPU devices
    mtljax launch -n 2 --devices-per-process 2 -- python experiments/multihost_train.py

    # a GPU cluster, by hand: on host i of N (one process per host, all its GPUs)
    MTLJAX_COORDINATOR=host0:8476 MTLJAX_NUM_PROCESSES=N MTLJAX_PROCESS_ID=i \\
        python experiments/multihost_train.py

    # SLURM, Open MPI or a Cloud TPU pod: JAX reads the scheduler's variables
    srun python experiments/multihost_train.py --auto

The model is an MLP trunk with one linear head per task on synthetic regression data drawn from
a fixed teacher, so every process can build its slice of every batch without a file system.
Process 0 prints the per-task losses and, with ``--out``, saves the final parameters (``.npz``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtljax import launch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="upgrad", help="registry name (default: %(default)s)")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=64,
                        help="samples per step over all processes (default: %(default)s)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--auto", action="store_true",
                        help="join the job from the cluster scheduler's variables")
    parser.add_argument("--out", type=Path, help="process 0 writes the final parameters here")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Before any other JAX call: join the job (a no-op when run as a single process).
    launch.initialize_from_env(auto=args.auto)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import mtljax
    from mtljax import parallel

    num_tasks, inputs = args.tasks, 16
    teacher = np.random.default_rng(0).normal(size=(inputs, num_tasks)).astype(np.float32)

    def local_batch(step: int):
        # Rows [i·b, (i+1)·b) of global batch `step`: the same global batch for any process count.
        rows = args.global_batch // jax.process_count()
        x = np.random.default_rng([1, step]).normal(size=(args.global_batch, inputs))
        x = x.astype(np.float32)[jax.process_index() * rows:(jax.process_index() + 1) * rows]
        return {"x": x, "y": np.tanh(x @ teacher)}

    def dense(key, fan_in, fan_out):
        return {"w": jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in),
                "b": jnp.zeros((fan_out,))}

    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "shared": [dense(keys[0], inputs, args.width), dense(keys[1], args.width, args.width)],
        "heads": dense(keys[2], args.width, num_tasks),
    }

    def encode(params, batch):
        h = batch["x"]
        for layer in params["shared"]:
            h = jnp.tanh(h @ layer["w"] + layer["b"])
        return h

    def decode(params, rep, batch):
        pred = rep @ params["heads"]["w"] + params["heads"]["b"]
        return jnp.mean((pred - batch["y"]) ** 2, axis=0), {}

    tasks = mtljax.Tasks([f"task{t}" for t in range(num_tasks)])
    method = mtljax.get_method(args.method, num_tasks)
    opt = optax.sgd(args.lr)
    mesh = parallel.data_mesh()  # every device of every process
    step = parallel.shard_map_step(
        mtljax.make_train_step(mtljax.MultiTaskLoss(encode, decode), tasks, method, opt,
                               axis_name=parallel.AXIS),
        mesh,
    )
    state = parallel.replicate_on_mesh(mtljax.init_train_state(params, opt, method), mesh)
    for i in range(args.steps):
        state, metrics = step(state, parallel.global_batch(local_batch(i), mesh))
        if jax.process_index() == 0 and (i % 5 == 0 or i == args.steps - 1):
            losses = np.asarray(metrics["losses"].addressable_data(0))
            print(f"step {i}: losses {np.array2string(losses, precision=4)}", flush=True)
    if jax.process_index() == 0:
        print(f"{jax.process_count()} processes, {jax.device_count()} devices", flush=True)
        if args.out is not None:
            leaves = jax.tree_util.tree_leaves_with_path(state.params)
            np.savez(args.out, **{jax.tree_util.keystr(path): np.asarray(leaf.addressable_data(0))
                                  for path, leaf in leaves})


if __name__ == "__main__":
    main()
