"""Step-time benchmark: every gradient method against EW, the Jacobian floor and torchjd.

Workload ``hps-mlp`` (hard parameter sharing): a batch of 256 inputs of size 256, a shared trunk
of 4 × 1024 ReLU layers, T linear regression heads, mean squared error per task, SGD. The model
is two pure functions over ``params = {"shared", "heads"}`` (:class:`mtljax.MultiTaskLoss`).

For each T and method it reports the median step time after warm-up, the compile time, and the
ratios to two references measured in the same run:

* ``ew`` — equal weights through the loss shortcut (one backward pass): what plain training costs;
* ``jacobian_mean`` — the mean of the task gradients *through the Jacobian* (one forward pass,
  T backward passes, ``Jᵀ w``): the floor of every gradient method, so ``× floor`` is the price
  of the method itself.

It also times each method's aggregation alone (``method.apply`` on a random ``[T, P]``
Jacobian, jitted) for T up to 128. When torch and torchjd are importable (``.venv-bench``, see
``docs/benchmarks.md``) the same workload runs side by side in PyTorch: a plain ``backward`` of
the summed losses for ``ew``, and ``torchjd.autojac.mtl_backward`` + ``jac_to_grad`` with the
matching aggregator for the methods both libraries have.

Run (< 10 min on 2 CPU cores with the defaults)::

    make bench                                   # mtljax only (.venv)
    .venv-bench/bin/python experiments/benchmark.py --out runs/bench.json   # with torchjd

Prints Markdown tables; ``--out`` also writes every timing and the environment as JSON. A
benchmark, never a test: timings on shared machines vary ±30% between runs, so compare ratios
taken in one run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtljax
from mtljax import linalg
from mtljax.methods import Method, MethodOutput, gradient_transform

BATCH, INPUTS, WIDTH, DEPTH = 256, 256, 1024, 4
LEARNING_RATE = 1e-3
DEFAULT_METHODS = "ew,mean,mgda,pcgrad,cagrad,upgrad,dualproj,nash_mtl,imtl_g,aligned_mtl"
# mtljax name -> torchjd aggregator class and keyword arguments (built per T).
TORCHJD = {
    "jacobian_mean": ("Mean", {}),
    "mgda": ("MGDA", {}),
    "pcgrad": ("PCGrad", {}),
    "cagrad": ("CAGrad", {"c": 0.5}),
    "upgrad": ("UPGrad", {}),
    "dualproj": ("DualProj", {}),
    "nash_mtl": ("NashMTL", {"n_tasks": None}),
    "imtl_g": ("IMTLG", {}),
    "aligned_mtl": ("AlignedMTL", {}),
}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchjd")


# The workload in JAX.


def hps_mlp(num_tasks: int, *, seed: int = 0):
    """Returns ``(tasks, loss, params, batch)`` of the hps-mlp workload for ``num_tasks`` tasks.

    The T linear heads are stored as one ``[WIDTH, T]`` matrix (the same math as T separate
    heads, one matmul instead of T).
    """
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        w = rng.normal(size=(fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros((fan_out,), jnp.float32)}

    sizes = [INPUTS] + [WIDTH] * DEPTH
    params = {
        "shared": [dense(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)],
        "heads": dense(WIDTH, num_tasks),
    }
    batch = {
        "x": jnp.asarray(rng.normal(size=(BATCH, INPUTS)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(BATCH, num_tasks)), jnp.float32),
    }

    def encode(params, batch):
        h = batch["x"]
        for layer in params["shared"]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return h

    def decode(params, rep, batch):
        pred = rep @ params["heads"]["w"] + params["heads"]["b"]
        return jnp.mean((pred - batch["y"]) ** 2, axis=0), {}

    tasks = mtljax.Tasks([f"t{i}" for i in range(num_tasks)])
    return tasks, mtljax.MultiTaskLoss(encode, decode), params, batch


CONV_BATCH, IMAGE, CHANNELS = 64, 32, (32, 64)


def conv_resnet(num_tasks: int, *, seed: int = 0):
    """Returns ``(tasks, loss, params, batch)`` of the ``conv`` workload for ``num_tasks`` tasks.

    A small ResNet-style trunk on ``[64, 32, 32, 3]`` images (NHWC): a 3×3 stem conv to 32
    channels, a residual block (two 3×3 convs + identity), a stride-2 3×3 conv to 64 channels,
    a second residual block, global average pooling; T linear regression heads as one matrix.
    """
    rng = np.random.default_rng(seed)

    def conv(cin, cout):
        w = rng.normal(size=(3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))
        return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros((cout,), jnp.float32)}

    c1, c2 = CHANNELS
    params = {
        "shared": {
            "stem": conv(3, c1), "block1": [conv(c1, c1), conv(c1, c1)],
            "down": conv(c1, c2), "block2": [conv(c2, c2), conv(c2, c2)],
        },
        "heads": {
            "w": jnp.asarray(rng.normal(size=(c2, num_tasks)) / np.sqrt(c2), jnp.float32),
            "b": jnp.zeros((num_tasks,), jnp.float32),
        },
    }
    batch = {
        "x": jnp.asarray(rng.normal(size=(CONV_BATCH, IMAGE, IMAGE, 3)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(CONV_BATCH, num_tasks)), jnp.float32),
    }

    def apply_conv(layer, h, stride=1):
        out = jax.lax.conv_general_dilated(h, layer["w"], (stride, stride), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + layer["b"]

    def block(layers, h):
        inner = jax.nn.relu(apply_conv(layers[0], h))
        return jax.nn.relu(h + apply_conv(layers[1], inner))

    def encode(params, batch):
        p = params["shared"]
        h = jax.nn.relu(apply_conv(p["stem"], batch["x"]))
        h = block(p["block1"], h)
        h = jax.nn.relu(apply_conv(p["down"], h, stride=2))
        return jnp.mean(block(p["block2"], h), axis=(1, 2))

    def decode(params, rep, batch):
        pred = rep @ params["heads"]["w"] + params["heads"]["b"]
        return jnp.mean((pred - batch["y"]) ** 2, axis=0), {}

    tasks = mtljax.Tasks([f"t{i}" for i in range(num_tasks)])
    return tasks, mtljax.MultiTaskLoss(encode, decode), params, batch


WORKLOADS = {"hps-mlp": hps_mlp, "conv": conv_resnet}


def jacobian_mean(num_tasks: int) -> Method:
    """The mean of the task gradients computed through the Jacobian: every gradient method's floor.

    A ``"gradient"`` method, so the train step builds the whole ``[T, P]`` Jacobian, and nothing
    more than ``Jᵀ w`` with ``w = 1/T`` (no Gram matrix).
    """
    weights = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)

    def apply(per_task_grads, state, params=None, **extra):
        del params, extra
        return MethodOutput(linalg.combine(per_task_grads, weights), state, weights)

    return gradient_transform("jacobian_mean", num_tasks, lambda params: optax.EmptyState(), apply)


def build_method(name: str, num_tasks: int) -> Method:
    return (
        jacobian_mean(num_tasks) if name == "jacobian_mean" else mtljax.get_method(name, num_tasks)
    )


def median_time(call: Callable[[], Any], *, warmup: int, repeats: int) -> tuple[float, list]:
    """Median wall time of ``call`` (which must block until done) after ``warmup`` calls."""
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]), times[warmup:]


def time_jax_step(name: str, num_tasks: int, args, *, chunk_size: int | None = None) -> dict:
    """Compile time and median step time of the jitted mtljax train step."""
    tasks, loss, params, batch = WORKLOADS[args.workload](num_tasks, seed=args.seed)
    method = build_method(name, num_tasks)
    opt = optax.sgd(LEARNING_RATE)
    # diagnostics=False: time the method, not the optional conflict metrics.
    step = jax.jit(
        mtljax.make_train_step(loss, tasks, method, opt, strategy=args.strategy,
                               chunk_size=chunk_size, diagnostics=False),
        donate_argnums=0,
    )
    state = mtljax.init_train_state(params, opt, method)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    # Arguments (the donated state and the batch), outputs and XLA's temporaries: the
    # compiled step's device memory footprint.
    peak_bytes = None if memory is None else (
        memory.argument_size_in_bytes + memory.output_size_in_bytes
        - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    holder = [state]

    def call():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready((holder[0], metrics))

    median, times = median_time(call, warmup=args.warmup, repeats=args.repeats)
    return {"compile_s": compile_s, "step_s": median, "times_s": times, "peak_bytes": peak_bytes}


def random_jacobian(num_tasks: int, num_params: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ``[T, P]`` Jacobian and ``[T]`` positive losses (float32)."""
    rng = np.random.default_rng(seed)
    jac = rng.standard_normal((num_tasks, num_params), dtype=np.float32)
    return jac, rng.uniform(0.5, 1.5, num_tasks).astype(np.float32)


def time_jax_aggregation(name: str, jac: jax.Array, losses: jax.Array, args) -> dict:
    """Median time of ``method.apply`` alone on the ``[T, P]`` Jacobian ``jac``, jitted."""
    method = build_method(name, jac.shape[0])
    state = method.init(jac[0])
    apply = jax.jit(lambda j, s, task_losses: method.apply(j, s, None, task_losses=task_losses))
    start = time.perf_counter()
    compiled = apply.lower(jac, state, losses).compile()
    compile_s = time.perf_counter() - start
    median, times = median_time(
        lambda: jax.block_until_ready(compiled(jac, state, losses)),
        warmup=args.warmup,
        repeats=args.repeats,
    )
    return {"compile_s": compile_s, "agg_s": median, "times_s": times}


# The same workload in PyTorch / torchjd (optional).


def load_torch(threads: int):
    """``(torch, torchjd)`` modules, or ``(None, reason)`` when they are not installed."""
    try:
        import torch
        import torchjd  # noqa: F401
        from torchjd import aggregation, autojac
    except ImportError as err:
        return None, f"torch/torchjd not importable ({err}); use .venv-bench for the peers"
    torch.set_num_threads(threads)
    return (torch, aggregation, autojac), None


def torch_aggregator(mods, name: str, num_tasks: int):
    _, aggregation, _ = mods
    cls_name, kwargs = TORCHJD[name]
    kwargs = {k: (num_tasks if v is None else v) for k, v in kwargs.items()}
    return getattr(aggregation, cls_name)(**kwargs)


def torch_model(torch, workload: str, num_tasks: int):
    """``(shared trunk, heads, x, y)`` of a workload in PyTorch, the same shapes as in JAX."""
    nn = torch.nn
    if workload == "hps-mlp":
        layers = []
        for fan_in in [INPUTS] + [WIDTH] * (DEPTH - 1):
            layers += [nn.Linear(fan_in, WIDTH), nn.ReLU()]
        shared, width = nn.Sequential(*layers), WIDTH
        x = torch.randn(BATCH, INPUTS)
    else:
        c1, c2 = CHANNELS

        class Block(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

            def forward(self, h):
                return torch.relu(h + self.b(torch.relu(self.a(h))))

        shared = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), Block(c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(), Block(c2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        width = c2
        x = torch.randn(CONV_BATCH, 3, IMAGE, IMAGE)
    heads = nn.ModuleList(nn.Linear(width, 1) for _ in range(num_tasks))
    return shared, heads, x, torch.randn(x.shape[0], num_tasks)


def time_torch_step(mods, name: str, num_tasks: int, args) -> dict:
    """Median step time of the workload in PyTorch: plain ``backward`` or torchjd's JD step."""
    torch, _, autojac = mods
    torch.manual_seed(args.seed)
    shared, heads, x, y = torch_model(torch, args.workload, num_tasks)
    opt = torch.optim.SGD([*shared.parameters(), *heads.parameters()], lr=LEARNING_RATE)
    aggregator = None if name in ("ew", "mean") else torch_aggregator(mods, name, num_tasks)

    def call():
        opt.zero_grad()
        rep = shared(x)
        losses = [((head(rep)[:, 0] - y[:, t]) ** 2).mean() for t, head in enumerate(heads)]
        if aggregator is None:
            total = torch.stack(losses)
            (total.sum() if name == "ew" else total.mean()).backward()
        else:
            autojac.mtl_backward(losses, features=rep)
            autojac.jac_to_grad(shared.parameters(), aggregator)
        opt.step()

    median, times = median_time(call, warmup=args.warmup, repeats=args.repeats)
    return {"step_s": median, "times_s": times}


def time_torch_aggregation(mods, name: str, jac, args) -> dict:
    """Median time of torchjd's aggregator alone on the ``[T, P]`` torch tensor ``jac``."""
    aggregator = torch_aggregator(mods, name, jac.shape[0])
    median, times = median_time(lambda: aggregator(jac), warmup=args.warmup, repeats=args.repeats)
    return {"agg_s": median, "times_s": times}


# The run and its report.


def environment(threads: int) -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": f"{device.platform}: {device.device_kind} × {jax.device_count()}",
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": versions,
        "load_average_start": list(os.getloadavg()),
    }


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1e3 * seconds:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}"


def megabytes(num_bytes: int | None) -> str:
    return "—" if num_bytes is None else f"{num_bytes / 2**20:.0f}"


def step_table(rows: list[dict]) -> str:
    lines = [
        "| T | method | mtljax step (ms) | compile (s) | memory (MB) | × EW | × floor "
        "| torch step (ms) | torch × EW | torch × floor | mtljax speed-up |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    refs = {}
    for r in rows:
        refs.setdefault(r["tasks"], {})[r["method"]] = r
    for r in rows:
        ew, floor = refs[r["tasks"]].get("ew", {}), refs[r["tasks"]].get("jacobian_mean", {})
        lines.append(
            f"| {r['tasks']} | {r['method']} | {ms(r.get('step_s'))} "
            f"| {r['compile_s']:.1f} | {megabytes(r.get('peak_bytes'))} "
            f"| {ratio(r.get('step_s'), ew.get('step_s'))} "
            f"| {ratio(r.get('step_s'), floor.get('step_s'))} | {ms(r.get('torch_step_s'))} "
            f"| {ratio(r.get('torch_step_s'), ew.get('torch_step_s'))} "
            f"| {ratio(r.get('torch_step_s'), floor.get('torch_step_s'))} "
            f"| {ratio(r.get('torch_step_s'), r.get('step_s'))} |"
        )
    return "\n".join(lines)


def chunk_table(rows: list[dict], steps: list[dict]) -> str:
    """Markdown table of the chunked-Jacobian rows against the same method unchunked."""
    unchunked = {(r["tasks"], r["method"]): r for r in steps}
    lines = ["| T | method | chunk_size | step (ms) | memory (MB) | × unchunked time "
             "| × unchunked memory |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = unchunked.get((r["tasks"], r["method"]), {})
        lines.append(
            f"| {r['tasks']} | {r['method']} | {r['chunk_size']} | {ms(r['step_s'])} "
            f"| {megabytes(r['peak_bytes'])} | {ratio(r['step_s'], ref.get('step_s'))} "
            f"| {ratio(r['peak_bytes'], ref.get('peak_bytes'))} |"
        )
    return "\n".join(lines)


def aggregation_table(rows: list[dict]) -> str:
    lines = [
        "| T | method | mtljax apply (ms) | torchjd aggregator (ms) |",
        "|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tasks']} | {r['method']} | {ms(r.get('agg_s'))} | {ms(r.get('torch_agg_s'))} |"
        )
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated registry names (default: %(default)s)",
    )
    parser.add_argument(
        "--tasks",
        type=int_list,
        default=[2, 10, 40],
        help="numbers of tasks for the train step (default: 2,10,40)",
    )
    parser.add_argument(
        "--agg-tasks",
        type=int_list,
        default=[2, 10, 40, 128],
        help="numbers of tasks for the aggregation alone (default: 2,10,40,128)",
    )
    parser.add_argument(
        "--agg-params",
        type=int,
        default=None,
        help="P of the random Jacobian (default: the workload's shared P)",
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="hps-mlp",
                        help="model of the train-step timings (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
    parser.add_argument("--strategy", default="auto", help='Jacobian strategy (default "auto")')
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: the cores this process may use)",
    )
    parser.add_argument(
        "--chunks",
        type=int_list,
        default=[],
        help="chunk sizes to time with --chunk-method at the largest T (default: none)",
    )
    parser.add_argument("--chunk-method", default="upgrad",
                        help="method of the chunked-Jacobian rows (default: %(default)s)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = environment(args.threads)
    mods, torch_note = (None, "--no-torch") if args.no_torch else load_torch(args.threads)
    notes = [] if torch_note is None else [torch_note]
    names = [n for n in args.methods.split(",") if n]
    available = []
    for name in ["ew", "jacobian_mean", *[n for n in names if n != "ew"]]:
        try:
            build_method(name, 2)
        except (ImportError, AttributeError) as err:
            notes.append(f"{name}: skipped, not importable ({err})")
            continue
        available.append(name)
    gradient_methods = [n for n in available if build_method(n, 2).kind == "gradient"]
    shared_params = sum(
        x.size for x in jax.tree.leaves(WORKLOADS[args.workload](1, seed=args.seed)[2]["shared"])
    )
    num_params = args.agg_params or shared_params

    steps = []
    for num_tasks in args.tasks:
        for name in available:
            row = {"tasks": num_tasks, "method": name, **time_jax_step(name, num_tasks, args)}
            if mods is not None and (name in ("ew", "mean") or name in TORCHJD):
                torch_row = time_torch_step(mods, name, num_tasks, args)
                row.update(torch_step_s=torch_row["step_s"], torch_times_s=torch_row["times_s"])
            steps.append(row)
            print(f"step T={num_tasks} {name}: {ms(row['step_s'])} ms", flush=True)
    chunks = []
    for chunk_size in args.chunks:
        num_tasks = max(args.tasks)
        row = {"tasks": num_tasks, "method": args.chunk_method, "chunk_size": chunk_size,
               **time_jax_step(args.chunk_method, num_tasks, args, chunk_size=chunk_size)}
        chunks.append(row)
        print(f"chunked T={num_tasks} k={chunk_size}: {ms(row['step_s'])} ms", flush=True)
    aggs = []
    for num_tasks in args.agg_tasks:
        host_jac, host_losses = random_jacobian(num_tasks, num_params, args.seed)
        jac, losses = jnp.asarray(host_jac), jnp.asarray(host_losses)
        torch_jac = None if mods is None else mods[0].from_numpy(host_jac)
        for name in gradient_methods:
            row = {
                "tasks": num_tasks,
                "method": name,
                "params": num_params,
                **time_jax_aggregation(name, jac, losses, args),
            }
            if mods is not None and name in TORCHJD:
                torch_row = time_torch_aggregation(mods, name, torch_jac, args)
                row.update(torch_agg_s=torch_row["agg_s"], torch_times_s=torch_row["times_s"])
            aggs.append(row)
            print(f"aggregation T={num_tasks} {name}: {ms(row['agg_s'])} ms", flush=True)
    env["load_average_end"] = list(os.getloadavg())

    report = {
        "workload": {
            "name": args.workload,
            "shape": ({"batch": BATCH, "inputs": INPUTS, "width": WIDTH, "depth": DEPTH}
                      if args.workload == "hps-mlp" else
                      {"batch": CONV_BATCH, "image": IMAGE, "channels": CHANNELS}),
            "shared_params": shared_params,
            "optimizer": "sgd",
            "strategy": args.strategy,
            "repeats": args.repeats,
            "warmup": args.warmup,
        },
        "environment": env,
        "notes": notes,
        "steps": steps,
        "chunks": chunks,
        "aggregation": aggs,
    }
    print()
    print(f"## {args.workload} train step (P = {shared_params:,} shared parameters)\n")
    print(step_table(steps))
    if chunks:
        print("\n## Chunked Jacobian\n")
        print(chunk_table(chunks, steps))
    print(f"\n## Aggregation alone on a random [T, {num_params:,}] Jacobian\n")
    print(aggregation_table(aggs))
    print("\n## Environment\n")
    print(json.dumps(env, indent=2))
    for note in notes:
        print(f"- {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
