"""GradNorm's synthetic regression tasks of very different scales (Chen et al. 2018, §4).

Task ``i`` regresses ``f_i(x) = σ_i tanh((B + ε_i) x)`` with ``x ∈ R^250``, ``f_i ∈ R^100``.
``B`` and ``ε_i`` are fixed ``100 × 250`` matrices with i.i.d. entries ``N(0, 10²)`` and
``N(0, 3.5²)``: the paper writes ``N(0, 10)`` and ``N(0, 3.5)``; we read the second argument as
the standard deviation (as a variance the pre-activations would still saturate ``tanh``, so the
tasks look alike either way). Inputs are ``x ~ N(0, I)``. The scales ``σ_i`` make the L2 losses
differ by up to ``10⁴``: the paper's two-task case has ``σ = (1, 100)``; for ``T = 10`` we
space ``σ_i`` geometrically from 1 to 100 (our choice: the paper draws several scales in that
range). The model is a 4-layer, 100-unit ReLU trunk with one linear head per task, trained
with Adam; the metric is the paper's test-time ``Σ_i L_i(t) / L_i(0)`` (lower is better), with
``L_i(0)`` the test loss at initialisation.

The paper's claim: GradNorm (α = 0.12) ends with a lower ``Σ_i L_i / L_i(0)`` than equal
weights and uncertainty weighting, for ``T = 2`` and ``T = 10``: under equal weights the
large-σ task dominates the shared trunk and the small-σ task barely trains.

References:
  Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
  Balancing in Deep Multitask Networks", ICML 2018, arXiv:1711.02257.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mtljax.benchmarks._base import (
    BenchmarkConfig,
    regression_model,
    sample_batches,
    scan_train,
    write_summary,
)
from mtljax.models import MLP, HardSharing
from mtljax.tables import format_table

IN_FEATURES, OUT_FEATURES = 250, 100


def task_scales(num_tasks: int) -> tuple[float, ...]:
    """``σ``: ``(1, 100)`` for two tasks, else geometric from 1 to 100 (module docstring)."""
    if num_tasks == 2:
        return (1.0, 100.0)
    return tuple(np.geomspace(1.0, 100.0, num_tasks).tolist())


def make_data(
    sigmas, n: int, *, b_std: float = 10.0, eps_std: float = 3.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x [n, 250], y [T, n, 100], B [100, 250], ε [T, 100, 250])`` as float32."""
    rng = np.random.default_rng(seed)
    b = b_std * rng.standard_normal((OUT_FEATURES, IN_FEATURES))
    eps = eps_std * rng.standard_normal((len(sigmas), OUT_FEATURES, IN_FEATURES))
    x = rng.standard_normal((n, IN_FEATURES))
    y = np.stack([s * np.tanh(x @ (b + e).T) for s, e in zip(sigmas, eps, strict=True)])
    return x.astype(np.float32), y.astype(np.float32), b, eps


@dataclasses.dataclass(frozen=True)
class GradNormSynthetic(BenchmarkConfig):
    """Settings of the GradNorm synthetic benchmark.

    Attributes:
      num_tasks: T; ``sigmas`` overrides :func:`task_scales` when given.
      methods: registry names to compare; method_kw: their hyper-parameters.
      n_train, n_test: dataset sizes; steps, batch_size, lr: Adam training.
      hidden: the trunk's widths; seed: data, initialisation and batch seed.
    """

    num_tasks: int = 2
    sigmas: tuple[float, ...] | None = None
    methods: tuple[str, ...] = ("ew", "uw", "gradnorm")
    method_kw: dict = dataclasses.field(
        default_factory=lambda: {"gradnorm": {"alpha": 0.12}, "uw": {"lr": 0.025}}
    )
    n_train: int = 5000
    n_test: int = 2000
    steps: int = 3000
    batch_size: int = 100
    lr: float = 1e-3
    hidden: tuple[int, ...] = (100, 100, 100, 100)
    seed: int = 0

    name = "gradnorm_synthetic"

    def run(self, workdir: str | None = None) -> dict[str, Any]:
        """Trains each method from the same initialisation; returns (and writes) the summary."""
        sigmas = self.sigmas or task_scales(self.num_tasks)
        names = tuple(f"task{i}" for i in range(len(sigmas)))
        x, y, _, _ = make_data(sigmas, self.n_train + self.n_test, seed=self.seed)
        x, y = jnp.asarray(x), jnp.asarray(y)
        train = {"x": x[: self.n_train], **{t: y[i, : self.n_train] for i, t in enumerate(names)}}
        test = {"x": x[self.n_train :], **{t: y[i, self.n_train :] for i, t in enumerate(names)}}
        model = HardSharing(
            MLP(IN_FEATURES, self.hidden, rngs=nnx.Rngs(self.seed)),
            {t: OUT_FEATURES for t in names},
            rngs=nnx.Rngs(self.seed + 1),
        )
        loss, params, _ = regression_model(model, names)
        test_losses = jax.jit(lambda p: loss.decode(p, loss.encode(p, test), test)[0])
        initial = np.array([float(test_losses(params)[t]) for t in names])

        batch_fn = sample_batches(self.batch_size, self.n_train)

        summary = {
            "benchmark": self.name,
            "config": dataclasses.asdict(self),
            "sigmas": list(sigmas),
            "initial_test_losses": initial.tolist(),
            "methods": {},
        }
        for method in self.methods:
            tick = time.perf_counter()
            final, train_losses = scan_train(
                loss,
                names,
                method,
                self.method_kw.get(method, {}),
                optax.adam(self.lr),
                params,
                batch_fn,
                train,
                self.steps,
                jax.random.key(self.seed),
            )
            final_test = np.array([float(test_losses(final)[t]) for t in names])
            ratios = final_test / initial
            curve = np.asarray(train_losses) / np.asarray(train_losses[0])
            summary["methods"][method] = {
                "normalized_test_loss": float(ratios.sum()),
                "task_ratios": ratios.tolist(),
                "train_curve": curve.sum(1)[:: max(1, self.steps // 50)].tolist(),
                "time_s": time.perf_counter() - tick,
            }
        return write_summary(workdir, summary)

    def table(self, summary: dict) -> str:
        """One row per method: ``Σ L_i/L_i(0)`` on the test set and the per-task extremes."""
        rows = []
        for method, r in summary["methods"].items():
            ratios = r["task_ratios"]
            rows.append(
                (method, r["normalized_test_loss"], ratios[0], ratios[-1], round(r["time_s"], 1))
            )
        headers = ("method", "sum L_i/L_i(0)", "smallest-σ task", "largest-σ task", "s")
        return format_table(headers, rows)
