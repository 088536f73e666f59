"""Task-private (federated) multi-task training: each party builds and keeps its own tasks' data.

One program, started once per process; each device of the job is one party. A party generates
only its own tasks' examples and holds only its own heads; a step sends the T losses and what
the method needs of the shared trunk (docs/federated.md).

    # 2 processes = 2 parties, one task each
    mtljax launch -n 2 --devices-per-process 1 -- python experiments/federated.py --tasks 2
    # 4 processes = 4 parties
    mtljax launch -n 4 --devices-per-process 1 -- python experiments/federated.py --tasks 4
    # one process, 4 devices as 4 parties; or 2 parties of 2 tasks each (--parties 2)
    mtljax launch -n 1 --devices-per-process 4 -- python experiments/federated.py --tasks 4
    # the pooled-data reference: one process, mtljax.make_train_step on every task's batch
    python experiments/federated.py --tasks 4 --pooled
    # a cluster: on host i of N (one process, one device each), or --auto under SLURM/MPI
    MTLJAX_COORDINATOR=host0:8476 MTLJAX_NUM_PROCESSES=N MTLJAX_PROCESS_ID=i \\
        python experiments/federated.py --tasks N

Task t is a synthetic regression ``y = tanh(x·u_t) + 0.1 ε`` with its own inputs; the model
is a tanh MLP trunk (shared) with a linear head per task. Runs in a few seconds on a CPU.
Process 0 prints the losses and the bytes per step (measured in the compiled step and by
formula); with ``--out DIR`` each process writes ``DIR/process{i}.npz`` (the shared parameters,
its own parties' heads only, the final losses and the bytes per step), and ``--pooled`` writes
``DIR/pooled.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtljax import launch

INPUTS = 5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--parties", type=int,
                        help="parties (default: every device of the job; must divide --tasks)")
    parser.add_argument("--method", default="upgrad", help="registry name (default: %(default)s)")
    parser.add_argument("--exchange", default="auto",
                        help="auto, loss, gram or rows (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=37, help="examples per task and step")
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--local-head-steps", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--pooled", action="store_true",
                        help="run the pooled-data reference in this one process")
    parser.add_argument("--auto", action="store_true",
                        help="join the job from the cluster scheduler's variables")
    parser.add_argument("--out", type=Path, help="directory for the .npz results")
    return parser.parse_args(argv)


def task_batch(task: int, step: int, args, dtype):
    """Task ``task``'s examples of step ``step``: built by its owner alone."""
    import numpy as np

    teacher = np.random.default_rng([7, task]).normal(size=(INPUTS,))
    rng = np.random.default_rng([8, task, step])
    x = rng.normal(size=(args.batch, INPUTS))
    y = np.tanh(x @ teacher) + 0.1 * rng.normal(size=(args.batch,))
    return {"x": x.astype(dtype), "y": y.astype(dtype)}


def party_batch(tasks, step: int, args, dtype):
    """``{"x": [k, B, D], "y": [k, B]}``: one party's tasks, stacked."""
    import numpy as np

    parts = [task_batch(t, step, args, dtype) for t in tasks]
    return {key: np.stack([p[key] for p in parts]) for key in ("x", "y")}


def init_params(args, dtype):
    """The shared trunk and every task's head (``{"w": [H], "b": []}``), by task index."""
    import numpy as np

    rng = np.random.default_rng(0)
    shared = {"w1": rng.normal(size=(INPUTS, args.width)) / np.sqrt(INPUTS),
              "b1": np.zeros(args.width),
              "w2": rng.normal(size=(args.width, args.width)) / np.sqrt(args.width),
              "b2": np.zeros(args.width)}
    heads = [{"w": np.random.default_rng([9, t]).normal(size=args.width) / np.sqrt(args.width),
              "b": np.zeros(())} for t in range(args.tasks)]
    cast = lambda tree: {k: np.asarray(v, dtype) for k, v in tree.items()}  # noqa: E731
    return cast(shared), [cast(h) for h in heads]


def loss_fn(params, batch):
    """The ``[k]`` losses of a party's k tasks, each on its own inputs."""
    import jax.numpy as jnp

    s, h = params["shared"], params["heads"]
    rep = jnp.tanh(jnp.tanh(batch["x"] @ s["w1"] + s["b1"]) @ s["w2"] + s["b2"])
    pred = jnp.einsum("kbh,kh->kb", rep, h["w"]) + h["b"][:, None]
    return jnp.mean((pred - batch["y"]) ** 2, axis=1)


def stack(trees):
    import numpy as np

    return {key: np.stack([t[key] for t in trees]) for key in trees[0]}


def setup(args, num_parties: int):
    """``(owners, table, method, optimizer, task names)`` with contiguous ownership."""
    import optax

    import mtljax

    if num_parties < 1 or args.tasks % num_parties:
        raise SystemExit(f"--tasks {args.tasks} must be a multiple of the {num_parties} parties.")
    k = args.tasks // num_parties
    owners = [t // k for t in range(args.tasks)]
    table = [list(range(p * k, (p + 1) * k)) for p in range(num_parties)]
    names = [f"task{t}" for t in range(args.tasks)]
    return owners, table, mtljax.get_method(args.method, args.tasks), optax.sgd(args.lr), names


def party_batches(parties, table, step: int, args, dtype):
    """The batches of ``parties`` at step ``step`` (``[n, (m+1), k, B, ...]`` leaves)."""
    m = args.local_head_steps
    per_party = []
    for p in parties:
        if m:
            slices = [party_batch(table[p], step * (m + 1) + j, args, dtype) for j in range(m + 1)]
            per_party.append(stack(slices))
        else:
            per_party.append(party_batch(table[p], step, args, dtype))
    return stack(per_party)


def run_federated(args) -> dict:
    """Trains with task-private data; returns this process's view (shared params, own heads)."""
    import jax
    import numpy as np

    from mtljax import federated, parallel

    dtype = np.dtype(args.dtype)
    num_parties = args.parties or jax.device_count()
    owners, table, method, opt, names = setup(args, num_parties)
    mesh = parallel.data_mesh(jax.devices()[:num_parties], axis_name="party")
    mine = federated.local_parties(mesh)
    shared, heads = init_params(args, dtype)
    own_heads = stack([stack([heads[t] for t in table[p]]) for p in mine])
    step = federated.make_federated_step(loss_fn, names, method, opt, owners=owners,
                                         exchange=args.exchange,
                                         local_head_steps=args.local_head_steps)
    state = federated.place_state(
        federated.init_federated_state(shared, own_heads, opt, method), mesh)
    batch = federated.place_parties(party_batches(mine, table, 0, args, dtype), mesh)
    compiled = federated.federated_on_mesh(step, mesh).lower(state, batch).compile()
    size = sum(np.size(x) for x in jax.tree.leaves(shared))
    measured = parallel.collective_bytes(compiled)
    formula = step.bytes_per_step(size, dtype.itemsize)
    say(f"federated: {num_parties} parties ({jax.process_count()} processes), {args.tasks} "
        f"tasks, {args.method}, exchange {step.exchange!r}, P = {size} shared parameters")
    for i in range(args.steps):
        if i:
            batch = federated.place_parties(party_batches(mine, table, i, args, dtype), mesh)
        state, metrics = compiled(state, batch)
        say(f"step {i}: losses {np.array2string(replicated(metrics['losses']), precision=5)}")
    say(f"bytes per step: measured {measured}; formula {formula}")
    for p in mine:
        print(f"process {jax.process_index()}: party {p} holds tasks {table[p]}; their data "
              "and heads never left it", flush=True)
    out = {f"shared/{k}": replicated(v) for k, v in state.shared.items()}
    out["losses"] = replicated(metrics["losses"])
    out.update({f"bytes/measured/{k}": v for k, v in measured.items()})
    out.update({f"bytes/formula/{k}": v for k, v in formula.items()})
    for p, party_heads in owned_slices(state.heads).items():
        for j, t in enumerate(table[p]):
            out.update({f"heads/task{t}/{k}": v[j] for k, v in party_heads.items()})
    return out


def replicated(x):
    """A replicated global array's value, from this process's first shard."""
    import numpy as np

    return np.asarray(x.addressable_data(0))


def owned_slices(heads) -> dict:
    """``{party: its heads}`` for the parties of this process (their shards only)."""
    import numpy as np

    out: dict = {}
    for key, leaf in heads.items():
        for shard in leaf.addressable_shards:
            out.setdefault(shard.index[0].start, {})[key] = np.asarray(shard.data)[0]
    return out


def run_pooled(args) -> dict:
    """The pooled-data reference: ``mtljax.make_train_step`` with every task's batch."""
    import jax
    import numpy as np

    import mtljax
    from mtljax import federated

    if args.local_head_steps:
        raise SystemExit("--pooled has no local head steps.")
    dtype = np.dtype(args.dtype)
    num_parties = args.parties or 1
    owners, table, method, opt, names = setup(args, num_parties)
    shared, heads = init_params(args, dtype)
    params = {"shared": shared,
              "heads": stack([stack([heads[t] for t in table[p]]) for p in range(num_parties)])}
    loss = mtljax.MultiTaskLoss.from_fn(federated.pooled_loss(loss_fn, owners))
    step = jax.jit(mtljax.make_train_step(loss, names, method, opt, diagnostics=False,
                                          level="parameters", strategy="vmap"))
    state = mtljax.init_train_state(jax.tree.map(np.asarray, params), opt, method)
    parties = range(num_parties)
    for i in range(args.steps):
        state, metrics = step(state, party_batches(parties, table, i, args, dtype))
        say(f"step {i}: losses {np.array2string(np.asarray(metrics['losses']), precision=5)}")
    out = {f"shared/{k}": np.asarray(v) for k, v in state.params["shared"].items()}
    out["losses"] = np.asarray(metrics["losses"])
    for p in parties:
        for j, t in enumerate(table[p]):
            out.update({f"heads/task{t}/{k}": np.asarray(v[p, j])
                        for k, v in state.params["heads"].items()})
    return out


def say(line: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(line, flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Before any other JAX call: join the job (a no-op when run as a single process).
    launch.initialize_from_env(auto=args.auto)
    import jax
    import numpy as np

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    result = run_pooled(args) if args.pooled else run_federated(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "pooled" if args.pooled else f"process{jax.process_index()}"
        np.savez(args.out / f"{name}.npz", **result)


if __name__ == "__main__":
    main()
