"""Two linear regression tasks on one shared linear map: joint and alternating training.

The tasks ``y1 = 0.1 x1 + 0.2 x2 + 0.3`` and ``y2 = 0.5 x1 + 0.9 x2 + 3.0`` on
``x ~ N(0, I₂)`` share one parameter set, ``ŷ = W x + b`` with ``W ∈ R^{2×2}``, ``b ∈ R²``
(row ``t`` serves task ``t``), and each task's loss is the mean squared error of its output.
The task losses have the true ``(W*, b*)`` as their joint minimiser, so both *joint* training
(EW, a step on ``L1 + L2``) and *alternating* training (one task's loss per step) must recover
the true weights: the classic worked example of multi-task training schedules.

The benchmark draws a training set, trains from zero with SGD, and reports
``max |W − W*|`` and ``max |b − b*|`` per method.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtljax.benchmarks._base import BenchmarkConfig, sample_batches, scan_train, write_summary
from mtljax.tables import format_table
from mtljax.train import MultiTaskLoss

TRUE_W = ((0.1, 0.2), (0.5, 0.9))
TRUE_B = (0.3, 3.0)
TASKS = ("y1", "y2")


def make_data(n: int, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x [n, 2] ~ N(0, I)`` and ``y [n, 2] = x W*ᵀ + b* + noise · N(0, I)`` (float32)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    y = x @ np.asarray(TRUE_W).T + np.asarray(TRUE_B) + noise * rng.standard_normal((n, 2))
    return x.astype(np.float32), y.astype(np.float32)


def _losses(params, batch):
    pred = batch["x"] @ params["shared"]["w"].T + params["shared"]["b"]
    return jnp.mean(jnp.square(pred - batch["y"]), axis=0)  # [2]: one MSE per task


@dataclasses.dataclass(frozen=True)
class Linear(BenchmarkConfig):
    """Settings of the two-linear-task benchmark.

    Attributes:
      methods: registry names to compare (``ew``: joint; ``alternating``: one task a step).
      method_kw: hyper-parameters per method name.
      n: training-set size; noise: label noise std (0: exact recovery is possible).
      steps, batch_size, lr: SGD steps, mini-batch size and learning rate.
      atol: the recovery tolerance reported as ``recovered``.
      seed: data and batch seed.
    """

    methods: tuple[str, ...] = ("ew", "alternating")
    method_kw: dict = dataclasses.field(
        default_factory=lambda: {"alternating": {"order": "round_robin"}}
    )
    n: int = 1000
    noise: float = 0.0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 0.05
    atol: float = 1e-3
    seed: int = 0

    name = "linear"

    def run(self, workdir: str | None = None) -> dict[str, Any]:
        """Trains each method; returns (and writes) the summary."""
        x, y = make_data(self.n, self.noise, self.seed)
        data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}

        batch_fn = sample_batches(self.batch_size, self.n)

        params = {"shared": {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, "heads": {}}
        summary = {"benchmark": self.name, "config": dataclasses.asdict(self), "methods": {}}
        for method in self.methods:
            tick = time.perf_counter()
            final, losses = scan_train(
                MultiTaskLoss.from_fn(_losses),
                TASKS,
                method,
                self.method_kw.get(method, {}),
                optax.sgd(self.lr),
                params,
                batch_fn,
                data,
                self.steps,
                jax.random.key(self.seed),
            )
            w, b = np.asarray(final["shared"]["w"]), np.asarray(final["shared"]["b"])
            w_err = float(np.abs(w - np.asarray(TRUE_W)).max())
            b_err = float(np.abs(b - np.asarray(TRUE_B)).max())
            summary["methods"][method] = {
                "w": w.tolist(),
                "b": b.tolist(),
                "w_error": w_err,
                "b_error": b_err,
                "recovered": max(w_err, b_err) <= self.atol,
                "final_losses": np.asarray(losses[-1]).tolist(),
                "time_s": time.perf_counter() - tick,
            }
        return write_summary(workdir, summary)

    def table(self, summary: dict) -> str:
        """One row per method: learned W and b, their errors, recovered or not."""
        rows = [
            (
                m,
                np.round(r["w"], 4).tolist(),
                np.round(r["b"], 4).tolist(),
                r["w_error"],
                r["b_error"],
                r["recovered"],
            )
            for m, r in summary["methods"].items()
        ]
        return format_table(("method", "W", "b", "max|W-W*|", "max|b-b*|", "recovered"), rows)
