"""The PyTorch side of ``experiments/benchmark.py``: its workloads in torch, timed with torchjd.

Imports NumPy only at module level, so ``benchmark.py`` (JAX) can share the workloads' arrays
(:func:`mlp_arrays`) and the timer (:func:`median_time`) without importing torch. Each peer runs
in its own process::

    python experiments/torch_peers.py '{"workload": "hps-mlp", "kind": "autogram", ...}'

which prints one JSON line: the median step time, the process's peak resident set size (torch,
the model, the batch and the step's buffers; no JAX in the process), the resident set size
before the first step, and the mean task loss of the last step. The spec's ``kind``:

* ``plain_sum`` / ``plain_mean``: one ``backward`` of the summed / averaged losses;
* ``autojac``: ``torchjd.autojac.mtl_backward`` + ``jac_to_grad`` with the aggregator
  ``aggregator`` (the ``[T, P]`` Jacobian of the shared parameters, then aggregation);
* ``autogram``: ``torchjd.autogram.Engine`` on the shared trunk (``batch_dim=None``, T losses)
  or on the whole model (``batch_dim=0``, the ``[B]`` per-sample losses of ``iwrm``), then the
  weighting of the Gramian and ``losses.backward(weights)``;
* ``aggregate``: the aggregator alone on a random ``[T, P]`` Jacobian (:func:`random_jacobian`).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def median_time(call: Callable[[], Any], *, warmup: int, repeats: int) -> tuple[float, list]:
    """Median wall time of ``call`` (which must block until done) after ``warmup`` calls."""
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]), times[warmup:]


def mlp_arrays(shape: dict, num_outputs: int, seed: int) -> tuple[dict, dict]:
    """``(params, batch)`` of the MLP workloads as float32 NumPy arrays (He-normal weights).

    ``params = {"shared": [{"w": [fan_in, width], "b"}] * depth, "heads": {"w": [width,
    num_outputs], "b"}}``; ``batch = {"x": [batch, inputs], "y": [batch, num_outputs]}``.
    """
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        w = rng.normal(size=(fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        return {"w": w.astype(np.float32), "b": np.zeros((fan_out,), np.float32)}

    sizes = [shape["inputs"]] + [shape["width"]] * shape["depth"]
    params = {
        "shared": [dense(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)],
        "heads": dense(shape["width"], num_outputs),
    }
    batch = {
        "x": rng.normal(size=(shape["batch"], shape["inputs"])).astype(np.float32),
        "y": rng.normal(size=(shape["batch"], num_outputs)).astype(np.float32),
    }
    return params, batch


def random_jacobian(num_tasks: int, num_params: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random ``[T, P]`` Jacobian and ``[T]`` positive losses (float32)."""
    rng = np.random.default_rng(seed)
    jac = rng.standard_normal((num_tasks, num_params), dtype=np.float32)
    return jac, rng.uniform(0.5, 1.5, num_tasks).astype(np.float32)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size of this process now, MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def mlp_model(torch, spec: dict):
    """``(trunk, heads, x, y)`` in torch with the same arrays as the JAX side's MLP.

    The heads are one ``nn.Linear(width, 1)`` per task (column t of the JAX head matrix):
    ``mtl_backward`` needs each task's head apart from the others'.
    """
    nn = torch.nn
    num_outputs = 1 if spec["workload"] == "iwrm" else spec["num_tasks"]
    params, batch = mlp_arrays(spec["shape"], num_outputs, spec["seed"])

    def linear(layer):
        module = nn.Linear(*layer["w"].shape)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(layer["w"].T.copy()))
            module.bias.copy_(torch.from_numpy(layer["b"]))
        return module

    layers = []
    for layer in params["shared"]:
        layers += [linear(layer), nn.ReLU()]
    w, b = params["heads"]["w"], params["heads"]["b"]
    heads = nn.ModuleList(linear({"w": w[:, t:t + 1], "b": b[t:t + 1]}) for t in range(len(b)))
    x, y = (torch.from_numpy(batch[k]) for k in ("x", "y"))
    return nn.Sequential(*layers), heads, x, y


def conv_model(torch, spec: dict):
    """``(trunk, heads, x, y)`` of the ``conv`` workload in torch (torch's own initialisation)."""
    nn = torch.nn
    shape, num_tasks = spec["shape"], spec["num_tasks"]
    c1, c2 = shape["channels"]

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, h):
            return torch.relu(h + self.b(torch.relu(self.a(h))))

    trunk = nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), Block(c1),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(), Block(c2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    x = torch.randn(shape["batch"], 3, shape["image"], shape["image"])
    heads = nn.ModuleList(nn.Linear(c2, 1) for _ in range(num_tasks))
    return trunk, heads, x, torch.randn(shape["batch"], num_tasks)


def step_fn(torch, spec: dict) -> tuple[Callable[[], float], float]:
    """The workload's SGD step in torch (returns the mean loss) and the RSS before it, MB.

    Losses: ``[T]`` per-task mean squared errors (``hps-mlp``, ``conv``), or ``[B]`` per-sample
    squared errors of the one head (``iwrm``).
    """
    from torchjd import aggregation, autogram, autojac

    build = conv_model if spec["workload"] == "conv" else mlp_model
    trunk, heads, x, y = build(torch, spec)
    opt = torch.optim.SGD([*trunk.parameters(), *heads.parameters()], lr=spec["lr"])
    kind, per_sample = spec["kind"], spec["workload"] == "iwrm"
    if kind == "autojac":
        aggregator = getattr(aggregation, spec["aggregator"])(**spec["kwargs"])
    if kind == "autogram":
        weighting = getattr(aggregation, spec["aggregator"] + "Weighting")(**spec["kwargs"])
        model = torch.nn.Sequential(trunk, heads[0])
        engine = (autogram.Engine(model, batch_dim=0) if per_sample
                  else autogram.Engine(trunk, batch_dim=None))

    def call() -> float:
        opt.zero_grad()
        rep = trunk(x)
        errors = [(head(rep)[:, 0] - y[:, t]) ** 2 for t, head in enumerate(heads)]
        task_losses = [e.mean() for e in errors]
        losses = errors[0] if per_sample else torch.stack(task_losses)
        if kind == "autojac":
            autojac.mtl_backward(task_losses, features=rep)
            autojac.jac_to_grad(trunk.parameters(), aggregator)
        elif kind == "autogram":
            losses.backward(weighting(engine.compute_gramian(losses)))
        else:
            (losses.sum() if kind == "plain_sum" else losses.mean()).backward()
        opt.step()
        return float(losses.detach().mean())

    return call, current_rss_mb()


def run(spec: dict) -> dict:
    """Times the peer ``spec`` describes (see the module docstring); returns its figures."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    if spec["kind"] == "aggregate":
        from torchjd import aggregation

        aggregator = getattr(aggregation, spec["aggregator"])(**spec["kwargs"])
        jac = torch.from_numpy(random_jacobian(spec["num_tasks"], spec["params"], spec["seed"])[0])
        median, times = median_time(lambda: aggregator(jac), warmup=spec["warmup"],
                                    repeats=spec["repeats"])
        return {"agg_s": median, "times_s": times}
    call, before_mb = step_fn(torch, spec)
    last = []
    median, times = median_time(lambda: last.append(call()), warmup=spec["warmup"],
                                repeats=spec["repeats"])
    return {"step_s": median, "times_s": times, "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": before_mb, "final_loss": last[-1]}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
