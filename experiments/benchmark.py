"""Step-time benchmark: methods and engines against EW, the Jacobian floor and torchjd.

Workloads (``--workload``; ``--quick`` shrinks each to a smoke-test size):

* ``hps-mlp`` (hard parameter sharing): a batch of 256 inputs of size 256, a shared trunk of
  4 × 1024 ReLU layers, T linear regression heads, mean squared error per task, SGD.
* ``conv``: 64 images 32×32×3, a small ResNet-style trunk, T linear heads.
* ``iwrm`` (instance-wise risk minimisation): the ``hps-mlp`` trunk with ONE regression head and
  the per-sample squared errors ``[B]`` as the objectives; the method weighs the B rows
  (``make_train_step(..., instance_wise=True)``, a method built for B rows).

The models are pure functions over ``params = {"shared", "heads"}``
(:class:`mtljax.MultiTaskLoss`). For each T and method the T-task workloads report the median
step time after warm-up, the compile time, the compiled memory, and the ratios to two references
measured in the same run:

* ``ew`` — equal weights through the loss shortcut (one backward pass): what plain training costs;
* ``jacobian_mean`` — the mean of the task gradients *through the Jacobian* (one forward pass,
  T backward passes, ``Jᵀ w``): the floor of every gradient method, so ``× floor`` is the price
  of the method itself.

``--engines jacobian,gramian`` times each method once per engine of
``make_train_step(engine=...)`` instead (the keyword is passed only then). ``iwrm`` compares each
weighting with the plain mean-loss SGD step of the same model. The aggregation alone
(``method.apply`` on a random ``[T, P]`` Jacobian, jitted) is timed for ``--agg-tasks``.

The PyTorch peers (``experiments/torch_peers.py``) run when torch and torchjd are importable,
each in its own process (so its peak RSS is its own), on the same model sizes and batches (the
MLPs with the very same weights and data): a plain ``backward``, torchjd's autojac
(``mtl_backward`` + ``jac_to_grad``) and autogram (``autogram.Engine``, then
``losses.backward(weights)``) with the matching aggregator. Without torch they are skipped.

Run (see ``docs/benchmarks.md`` for the exact commands of each table)::

    make bench                                   # the method table, mtljax only
    make bench-gpu                               # the engine and IWRM tables, JSON to $OUT
    .venv/bin/python experiments/benchmark.py --tasks 10,40 --methods mean,mgda,upgrad \\
        --engines jacobian,gramian --agg-tasks "" --out runs/engines.json

Prints Markdown tables; ``--out`` also writes every timing and the environment as JSON. A
benchmark, never a test: timings on shared machines vary ±30% between runs, so compare ratios
taken in one run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mtljax
from mtljax import linalg
from mtljax.methods import Method, MethodOutput, gradient_transform

sys.path.insert(0, str(Path(__file__).parent))
from torch_peers import median_time, mlp_arrays, random_jacobian  # noqa: E402

MLP = {"batch": 256, "inputs": 256, "width": 1024, "depth": 4}
SHAPES = {
    "hps-mlp": MLP,
    "conv": {"batch": 64, "image": 32, "channels": [32, 64]},
    "iwrm": MLP,
}
QUICK_MLP = {"batch": 16, "inputs": 8, "width": 32, "depth": 2}
QUICK_SHAPES = {
    "hps-mlp": QUICK_MLP,
    "conv": {"batch": 4, "image": 8, "channels": [4, 8]},
    "iwrm": QUICK_MLP,
}
# SGD learning rates: the plain IWRM step (per-sample squared errors of one head) diverges at 1e-3.
LEARNING_RATES = {"hps-mlp": 1e-3, "conv": 1e-3, "iwrm": 1e-4}
DEFAULT_METHODS = {
    "hps-mlp": "ew,mean,mgda,pcgrad,cagrad,upgrad,dualproj,nash_mtl,imtl_g,aligned_mtl",
    "conv": "ew,mean,mgda,pcgrad,cagrad,upgrad,dualproj,nash_mtl,imtl_g,aligned_mtl",
    "iwrm": "mean,upgrad,mgda",
}
# mtljax name -> torchjd aggregator class and keyword arguments (built per T); autogram uses
# the class's "<name>Weighting" where torchjd has one.
TORCHJD = {
    "jacobian_mean": ("Mean", {}),
    "mean": ("Mean", {}),
    "mgda": ("MGDA", {}),
    "pcgrad": ("PCGrad", {}),
    "cagrad": ("CAGrad", {"c": 0.5}),
    "upgrad": ("UPGrad", {}),
    "dualproj": ("DualProj", {}),
    "nash_mtl": ("NashMTL", {"n_tasks": None}),
    "imtl_g": ("IMTLG", {}),
    "aligned_mtl": ("AlignedMTL", {}),
}
NO_WEIGHTING = {"NashMTL"}  # torchjd aggregators without a Gramian weighting (no autogram)
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "torchjd")
PEERS = Path(__file__).with_name("torch_peers.py")


# The workloads in JAX.


def hps_mlp(num_tasks: int, shape: dict, *, seed: int = 0):
    """Returns ``(tasks, loss, params, batch)`` of the hps-mlp workload for ``num_tasks`` tasks.

    The T linear heads are stored as one ``[width, T]`` matrix (the same math as T separate
    heads, one matmul instead of T); the arrays are :func:`torch_peers.mlp_arrays`'s.
    """
    params, batch = jax.tree.map(jnp.asarray, mlp_arrays(shape, num_tasks, seed))

    def decode(params, rep, batch):
        pred = rep @ params["heads"]["w"] + params["heads"]["b"]
        return jnp.mean((pred - batch["y"]) ** 2, axis=0), {}

    tasks = mtljax.Tasks([f"t{i}" for i in range(num_tasks)])
    return tasks, mtljax.MultiTaskLoss(mlp_trunk, decode), params, batch


def mlp_trunk(params, batch):
    """The MLP workloads' shared trunk: dense layers with ReLU."""
    h = batch["x"]
    for layer in params["shared"]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    return h


def iwrm(shape: dict, *, seed: int = 0):
    """``(tasks, loss, params, batch)`` of instance-wise risk minimisation on the MLP trunk.

    One task ``"y"``, one linear regression head; its loss is the vector of the B per-sample
    squared errors ``(f(x_i) - y_i)²`` — B objectives, one per example.
    """
    params, batch = jax.tree.map(jnp.asarray, mlp_arrays(shape, 1, seed))

    def decode(params, rep, batch):
        pred = rep @ params["heads"]["w"] + params["heads"]["b"]
        return {"y": (pred[:, 0] - batch["y"][:, 0]) ** 2}, {}

    return mtljax.Tasks(["y"]), mtljax.MultiTaskLoss(mlp_trunk, decode), params, batch


def conv_resnet(num_tasks: int, shape: dict, *, seed: int = 0):
    """Returns ``(tasks, loss, params, batch)`` of the ``conv`` workload for ``num_tasks`` tasks.

    A small ResNet-style trunk on ``[batch, image, image, 3]`` images (NHWC): a 3×3 stem conv to
    c1 channels, a residual block (two 3×3 convs + identity), a stride-2 3×3 conv to c2
    channels, a second residual block, global average pooling; T linear regression heads as one
    matrix.
    """
    rng = np.random.default_rng(seed)

    def conv(cin, cout):
        w = rng.normal(size=(3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))
        return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros((cout,), jnp.float32)}

    c1, c2 = shape["channels"]
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
    size = (shape["batch"], shape["image"], shape["image"], 3)
    batch = {
        "x": jnp.asarray(rng.normal(size=size), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(shape["batch"], num_tasks)), jnp.float32),
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


# Timing a jitted step.


def time_compiled(step, state, batch, args) -> dict:
    """Compiles ``step(state, batch) -> (state, metrics)`` (state donated) and times it.

    Returns the compile time, the median step time, every timed step, the compiled memory
    (arguments + outputs - aliased buffers + XLA's temporaries, from ``memory_analysis()``:
    the step's device footprint) and ``final_loss``, the mean of ``metrics["losses"]`` at the
    last call (after ``warmup + repeats - 1`` updates; equal across exact engines).
    """
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak_bytes = None if memory is None else (
        memory.argument_size_in_bytes + memory.output_size_in_bytes
        - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    holder = [state, None]

    def call():
        holder[0], holder[1] = compiled(holder[0], batch)
        jax.block_until_ready(holder)

    median, times = median_time(call, warmup=args.warmup, repeats=args.repeats)
    final_loss = float(jnp.mean(holder[1]["losses"]))
    return {"compile_s": compile_s, "step_s": median, "times_s": times,
            "peak_bytes": peak_bytes, "final_loss": final_loss}


def time_jax_step(name: str, num_tasks: int, args, *, chunk_size: int | None = None,
                  engine: str | None = None) -> dict:
    """The mtljax train step of a T-task workload; ``engine`` is passed only when given."""
    tasks, loss, params, batch = WORKLOADS[args.workload](num_tasks, args.shape, seed=args.seed)
    method = build_method(name, num_tasks)
    opt = optax.sgd(args.lr)
    extra = {} if engine is None else {"engine": engine}
    # diagnostics=False: time the method, not the optional conflict metrics.
    step = mtljax.make_train_step(loss, tasks, method, opt, strategy=args.strategy,
                                  chunk_size=chunk_size, diagnostics=False, **extra)
    return time_compiled(step, mtljax.init_train_state(params, opt, method), batch, args)


def time_iwrm_step(name: str, args, *, engine: str) -> dict:
    """The instance-wise mtljax step: ``name`` built for B rows, ``engine`` as given."""
    tasks, loss, params, batch = iwrm(args.shape, seed=args.seed)
    method = mtljax.get_method(name, args.shape["batch"])
    opt = optax.sgd(args.lr)
    step = mtljax.make_train_step(loss, tasks, method, opt, diagnostics=False,
                                  instance_wise=True, engine=engine)
    return time_compiled(step, mtljax.init_train_state(params, opt, method), batch, args)


def time_plain_step(args) -> dict:
    """The plain SGD step of the IWRM model on the mean of its per-sample losses."""
    _, loss, params, batch = iwrm(args.shape, seed=args.seed)
    opt = optax.sgd(args.lr)

    def mean_loss(params):
        losses, _ = loss.decode(params, loss.encode(params, batch), batch)
        return jnp.mean(losses["y"])

    def step(state, batch):
        params, opt_state = state
        value, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"losses": value}

    return time_compiled(step, (params, opt.init(params)), batch, args)


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


# The PyTorch peers, each in its own process.


def torch_missing() -> str | None:
    """Why the peers cannot run (torch or torchjd not installed), or ``None``."""
    missing = [m for m in ("torch", "torchjd") if importlib.util.find_spec(m) is None]
    return f"{'/'.join(missing)} not importable: PyTorch peers skipped" if missing else None


def aggregator_spec(name: str, num_tasks: int) -> tuple[str, dict]:
    cls_name, kwargs = TORCHJD[name]
    return cls_name, {k: (num_tasks if v is None else v) for k, v in kwargs.items()}


def run_peer(args, kind: str, num_tasks: int, name: str | None = None, **extra) -> dict:
    """Runs ``torch_peers.py`` for ``kind`` and returns its JSON (or ``{"error": ...}``)."""
    spec = {"workload": args.workload, "shape": args.shape, "num_tasks": num_tasks,
            "kind": kind, "seed": args.seed, "lr": args.lr, "warmup": args.warmup,
            "repeats": args.repeats, "threads": args.threads, **extra}
    if name is not None:
        spec["aggregator"], spec["kwargs"] = aggregator_spec(name, num_tasks)
    done = subprocess.run([sys.executable, str(PEERS), json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def peer_summary(result: dict) -> dict:
    """A peer's figures in the engine rows' units (ms, MB)."""
    if "error" in result:
        return result
    return {"step_ms": 1e3 * result["step_s"], "peak_rss_mb": result["peak_rss_mb"],
            "rss_before_mb": result["rss_before_mb"], "final_loss": result["final_loss"],
            "times_ms": [1e3 * t for t in result["times_s"]]}


def jd_peers(args, name: str, num_tasks: int) -> dict:
    """torchjd's autojac and autogram figures for ``name`` (``None`` where torchjd lacks it)."""
    peers = {"torchjd_autojac": None, "torchjd_autogram": None}
    if args.no_peers or name not in TORCHJD:
        return peers
    if args.workload != "iwrm":
        peers["torchjd_autojac"] = peer_summary(run_peer(args, "autojac", num_tasks, name))
    if TORCHJD[name][0] not in NO_WEIGHTING:
        peers["torchjd_autogram"] = peer_summary(run_peer(args, "autogram", num_tasks, name))
    return peers


# The runs.


def method_rows(args, names: list[str]) -> list[dict]:
    """The method table: every method's step, with torch's plain or autojac step beside it."""
    rows = []
    for num_tasks in args.tasks:
        for name in names:
            row = {"tasks": num_tasks, "method": name, **time_jax_step(name, num_tasks, args)}
            if not args.no_peers and (name in ("ew", "mean") or name in TORCHJD):
                plain = {"ew": "plain_sum", "mean": "plain_mean"}
                kind = plain.get(name, "autojac")
                peer = run_peer(args, kind, num_tasks, None if kind != "autojac" else name)
                row.update({f"torch_{k}": v for k, v in peer.items() if k != "final_loss"})
            rows.append(row)
            print(f"step T={num_tasks} {name}: {ms(row['step_s'])} ms", flush=True)
    return rows


def engine_row(result: dict) -> dict:
    """An mtljax timing in the engine rows' units (ms, MB)."""
    return {"step_ms": 1e3 * result["step_s"], "memory_mb": mb(result["peak_bytes"]),
            "compile_s": result["compile_s"], "final_loss": result["final_loss"],
            "times_ms": [1e3 * t for t in result["times_s"]]}


def try_engine(timer, *args, engine: str) -> dict:
    """The engine row of ``timer(*args, engine=engine)``; ``{"error": ...}`` if it is refused."""
    try:
        return engine_row(timer(*args, engine=engine))
    except (TypeError, ValueError, NotImplementedError) as err:
        return {"error": f"engine={engine!r}: {type(err).__name__}: {err}"}


def engine_rows(args, names: list[str]) -> list[dict]:
    """The engine table: each (T, method) once per engine, torchjd's two engines beside it."""
    rows = []
    for num_tasks in args.tasks:
        for name in names:
            peers = jd_peers(args, name, num_tasks)
            for engine in args.engines:
                row = try_engine(time_jax_step, name, num_tasks, args, engine=engine)
                rows.append({"T": num_tasks, "method": name, "engine": engine, **row, **peers})
                print(f"T={num_tasks} {name} engine={engine}: "
                      f"{row.get('step_ms', row.get('error'))}", flush=True)
    return rows


def iwrm_rows(args, names: list[str]) -> list[dict]:
    """IWRM: the plain mean-loss step, then each weighting of the B rows per engine."""
    rows_b = args.shape["batch"]
    plain = {"T": 1, "rows": rows_b, "method": "plain", "engine": None,
             **engine_row(time_plain_step(args)), "torchjd_autogram": None,
             "torch_plain": None if args.no_peers else peer_summary(
                 run_peer(args, "plain_mean", 1))}
    rows = [plain]
    print(f"iwrm plain: {plain['step_ms']:.1f} ms", flush=True)
    for name in names:
        peers = jd_peers(args, name, 1)
        for engine in args.engines:
            row = try_engine(time_iwrm_step, name, args, engine=engine)
            rows.append({"T": 1, "rows": rows_b, "method": name, "engine": engine, **row,
                         "torchjd_autogram": peers["torchjd_autogram"]})
            print(f"iwrm {name} engine={engine}: {row.get('step_ms', row.get('error'))}",
                  flush=True)
    return rows


def chunk_rows(args) -> list[dict]:
    """The chunked-Jacobian rows: ``--chunk-method`` at the largest T per chunk size."""
    rows = []
    for chunk_size in args.chunks:
        num_tasks = max(args.tasks)
        row = {"tasks": num_tasks, "method": args.chunk_method, "chunk_size": chunk_size,
               **time_jax_step(args.chunk_method, num_tasks, args, chunk_size=chunk_size)}
        rows.append(row)
        print(f"chunked T={num_tasks} k={chunk_size}: {ms(row['step_s'])} ms", flush=True)
    return rows


def aggregation_rows(args, names: list[str], num_params: int) -> list[dict]:
    """``method.apply`` alone on a random ``[T, P]`` Jacobian, and torchjd's aggregators."""
    rows = []
    for num_tasks in args.agg_tasks:
        host_jac, host_losses = random_jacobian(num_tasks, num_params, args.seed)
        jac, losses = jnp.asarray(host_jac), jnp.asarray(host_losses)
        for name in names:
            row = {"tasks": num_tasks, "method": name, "params": num_params,
                   **time_jax_aggregation(name, jac, losses, args)}
            if not args.no_peers and name in TORCHJD:
                peer = run_peer(args, "aggregate", num_tasks, name, params=num_params)
                row.update({f"torch_{k}": v for k, v in peer.items()})
            rows.append(row)
            print(f"aggregation T={num_tasks} {name}: {ms(row['agg_s'])} ms", flush=True)
    return rows


# The report.


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


def mb(num_bytes: int | None) -> float | None:
    return None if num_bytes is None else num_bytes / 2**20


def fig(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
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


def peer_cells(peer: dict | None, step_ms: float | None) -> str:
    """``step | peak RSS | peer / mtljax`` cells of one torchjd engine."""
    if not peer or "error" in peer:
        return "— | — | —"
    speedup = None if step_ms is None else peer["step_ms"] / step_ms
    return f"{fig(peer['step_ms'])} | {fig(peer['peak_rss_mb'], 0)} | {fig(speedup, 2)}"


def engine_table(rows: list[dict]) -> str:
    """Markdown table of the engine rows, with ratios to the ``jacobian`` engine and torchjd."""
    lines = [
        "| T | method | engine | mtljax step (ms) | memory (MB) | × jacobian time "
        "| × jacobian memory | autojac (ms) | autojac RSS (MB) | autojac / mtljax "
        "| autogram (ms) | autogram RSS (MB) | autogram / mtljax |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    exact = {(r["T"], r["method"]): r for r in rows if r["engine"] == "jacobian"}
    for r in rows:
        ref = exact.get((r["T"], r["method"]), {})
        step, memory = r.get("step_ms"), r.get("memory_mb")
        lines.append(
            f"| {r['T']} | {r['method']} | {r['engine']} | {fig(step)} | {fig(memory, 0)} "
            f"| {ratio(step, ref.get('step_ms'))} | {ratio(memory, ref.get('memory_mb'))} "
            f"| {peer_cells(r['torchjd_autojac'], step)} "
            f"| {peer_cells(r['torchjd_autogram'], step)} |"
        )
    return "\n".join(lines)


def iwrm_table(rows: list[dict]) -> str:
    """Markdown table of the IWRM rows: × the plain step, and the torch peer against mtljax.

    The peer is torch's plain step on the plain row and torchjd's autogram on the others.
    """
    plain = rows[0]
    torch_plain = plain["torch_plain"] or {}
    lines = [
        "| weighting | engine | mtljax step (ms) | memory (MB) | × plain | torch (ms) "
        "| torch RSS (MB) | torch / mtljax | torch × torch plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        step = r.get("step_ms")
        peer = (r["torch_plain"] if r is plain else r["torchjd_autogram"]) or {}
        lines.append(
            f"| {r['method']} | {r['engine'] or '—'} | {fig(step)} | {fig(r.get('memory_mb'), 0)} "
            f"| {ratio(step, plain['step_ms'])} | {peer_cells(peer, step)} "
            f"| {ratio(peer.get('step_ms'), torch_plain.get('step_ms'))} |"
        )
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def name_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--workload", choices=[*WORKLOADS, "iwrm"], default="hps-mlp",
        help="model of the train-step timings (default: %(default)s)")
    add("--methods", type=name_list,
        help="comma-separated registry names (default: every method; iwrm: mean,upgrad,mgda)")
    add("--engines", type=name_list,
        help='engines of make_train_step(engine=...) to time, e.g. "jacobian,gramian" '
             "(default: the method table, no engine keyword; iwrm: gramian)")
    add("--tasks", type=int_list, default=[2, 10, 40],
        help="numbers of tasks for the train step (default: 2,10,40)")
    add("--agg-tasks", type=int_list, default=[2, 10, 40, 128],
        help="numbers of tasks for the aggregation alone (default: 2,10,40,128; iwrm: none)")
    add("--agg-params", type=int, default=None,
        help="P of the random Jacobian (default: the workload's shared P)")
    add("--quick", action="store_true", help="tiny model sizes: a smoke test, not a benchmark")
    add("--repeats", type=int, default=3, help="timed calls (median)")
    add("--warmup", type=int, default=1, help="untimed calls after compiling")
    add("--strategy", default="auto", help='Jacobian strategy (default "auto")')
    add("--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="torch threads (default: the cores this process may use)")
    add("--chunks", type=int_list, default=[],
        help="chunk sizes to time with --chunk-method at the largest T (default: none)")
    add("--chunk-method", default="upgrad",
        help="method of the chunked-Jacobian rows (default: %(default)s)")
    add("--no-torch", dest="no_peers", action="store_true", help="skip the PyTorch peers")
    add("--lr", type=float, help="SGD learning rate (default: 1e-3; iwrm: 1e-4)")
    add("--seed", type=int, default=0)
    add("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.shape = (QUICK_SHAPES if args.quick else SHAPES)[args.workload]
    args.methods = args.methods or name_list(DEFAULT_METHODS[args.workload])
    args.lr = args.lr or LEARNING_RATES[args.workload]
    if args.workload == "iwrm":
        args.engines = args.engines or ["gramian"]
        args.agg_tasks = []
    return args


def available_methods(names: list[str], notes: list[str]) -> list[str]:
    """The names that build (``ew`` and ``jacobian_mean`` first); the others go to ``notes``."""
    available = []
    for name in names:
        try:
            build_method(name, 2)
        except (ImportError, AttributeError, ValueError) as err:
            notes.append(f"{name}: skipped, not buildable ({err})")
            continue
        available.append(name)
    return available


def shared_size(args) -> int:
    """P, the number of shared parameters of the workload."""
    params = iwrm(args.shape)[2] if args.workload == "iwrm" else (
        WORKLOADS[args.workload](1, args.shape, seed=args.seed)[2])
    return sum(x.size for x in jax.tree.leaves(params["shared"]))


def run(args, notes: list[str]) -> dict:
    """Every requested section of the benchmark, as the JSON report's result fields."""
    if args.workload == "iwrm":
        return {"iwrm": iwrm_rows(args, available_methods(args.methods, notes))}
    if args.engines:
        return {"engines": engine_rows(args, available_methods(args.methods, notes)),
                "chunks": chunk_rows(args)}
    names = ["ew", "jacobian_mean", *[n for n in args.methods if n != "ew"]]
    available = available_methods(names, notes)
    gradient = [n for n in available if build_method(n, 2).kind == "gradient"]
    return {"steps": method_rows(args, available), "chunks": chunk_rows(args),
            "aggregation": aggregation_rows(args, gradient, args.agg_params or shared_size(args))}


def print_report(args, report: dict) -> None:
    """The Markdown tables of ``report``, the environment and the notes."""
    print(f"\n## {args.workload} (P = {report['workload']['shared_params']:,} shared parameters)\n")
    tables = {"iwrm": iwrm_table, "engines": engine_table, "steps": step_table}
    for key, table in tables.items():
        if report.get(key):
            print(table(report[key]))
    if report.get("chunks"):
        print("\n## Chunked Jacobian\n")
        print(chunk_table(report["chunks"], report.get("steps", [])))
    if report.get("aggregation"):
        print("\n## Aggregation alone on a random [T, P] Jacobian\n")
        print(aggregation_table(report["aggregation"]))
    print("\n## Environment\n")
    print(json.dumps(report["environment"], indent=2))
    for note in report["notes"]:
        print(f"- {note}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    env = environment(args.threads)
    missing = None if args.no_peers else torch_missing()
    args.no_peers = args.no_peers or missing is not None
    notes = [missing or "--no-torch: PyTorch peers skipped"] if args.no_peers else []
    results = run(args, notes)
    env["load_average_end"] = list(os.getloadavg())
    report = {
        "workload": {"name": args.workload, "shape": args.shape, "quick": args.quick,
                     "shared_params": shared_size(args), "optimizer": "sgd",
                     "learning_rate": args.lr, "strategy": args.strategy,
                     "engines": args.engines, "repeats": args.repeats, "warmup": args.warmup},
        "environment": env,
        "notes": notes,
        **results,
    }
    print_report(args, report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
