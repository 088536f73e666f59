"""The MMoE paper's synthetic tasks of controlled correlation: MMoE versus hard sharing.

The generator (Ma et al. 2018, §4.2): two orthonormal vectors ``u1, u2 ∈ R^d``, a scale ``c``
and a correlation ``p ∈ [−1, 1]`` give ``w1 = c u1`` and ``w2 = c (p u1 + √(1 − p²) u2)``, so
``cos(w1, w2) = p``. With ``x ~ N(0, I_d)`` the labels are

    y_t = w_tᵀ x + Σ_{i=1}^m sin(α_i w_tᵀ x + β_i) + ε_t,   ε_t ~ N(0, 0.01²),

the same ``α_i, β_i`` for both tasks. The linear parts ``w_tᵀ x`` have Pearson correlation
exactly ``p``; the sine terms make the labels' correlation a monotone, slightly lower function
of ``p`` (the paper's Fig. 2 plots both). The paper's ``d = 100``; ``m = 10``, ``c = 1`` and
``α_i, β_i ~ N(0, 1)`` are our reading of its "given parameters".

The benchmark trains, for each ``p``, a hard-sharing model (one ReLU layer of ``experts ×
expert_width`` units, linear heads) and an MMoE (``experts`` one-layer ReLU experts of
``expert_width`` units, a softmax gate per task, linear heads) of about the same size, with
equal weights and Adam, over several seeds, and reports the test MSE averaged over the two
tasks. The paper's claim: both get worse as the correlation drops, hard sharing more so; the
gap (hard sharing − MMoE) grows as ``p`` falls.

References:
  Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in Multi-task Learning with
  Multi-gate Mixture-of-Experts", KDD 2018.
"""

from __future__ import annotations

import dataclasses
import functools
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
from mtljax.models import MLP, HardSharing, MMoE
from mtljax.tables import format_table

TASKS = ("y1", "y2")
MODELS = ("hard_sharing", "mmoe")


def make_data(
    p: float,
    n: int,
    *,
    dim: int = 100,
    scale: float = 1.0,
    num_sines: int = 10,
    noise: float = 0.01,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Draws ``n`` samples of the generator (module docstring) at correlation ``p``.

    Returns:
      ``x [n, dim]``, the labels ``y1, y2 [n]``, their noise-free parts ``f1, f2 [n]`` and the
      weight vectors ``w1, w2 [dim]`` (float32, except the weights).
    """
    if not -1.0 <= p <= 1.0:
        raise ValueError(f"The correlation p must be in [-1, 1], got {p}.")
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((dim, 2)))  # two orthonormal columns
    w1 = scale * u[:, 0]
    w2 = scale * (p * u[:, 0] + np.sqrt(1.0 - p**2) * u[:, 1])
    alpha, beta = rng.standard_normal(num_sines), rng.standard_normal(num_sines)
    x = rng.standard_normal((n, dim))
    out = {"x": x.astype(np.float32), "w1": w1, "w2": w2}
    for name, w in (("1", w1), ("2", w2)):
        z = x @ w
        f = z + np.sin(alpha * z[:, None] + beta).sum(1)
        out["f" + name] = f.astype(np.float32)
        out["y" + name] = (f + noise * rng.standard_normal(n)).astype(np.float32)
    return out


def build_model(kind: str, dim: int, experts: int, width: int, seed: int) -> nnx.Module:
    """The hard-sharing or MMoE model of the benchmark (module docstring)."""
    rngs = nnx.Rngs(seed)
    heads = {t: 1 for t in TASKS}
    if kind == "hard_sharing":
        return HardSharing(MLP(dim, (experts * width,), rngs=rngs), heads, rngs=rngs)
    return MMoE([MLP(dim, (width,), rngs=rngs) for _ in range(experts)], dim, heads, rngs=rngs)


def _test_mse(predict, params, data) -> jax.Array:
    """``[2]``: each task's mean squared error on ``data``."""
    out = predict(params, data["x"])
    return jnp.stack([jnp.mean((out[t][:, 0] - data[t]) ** 2) for t in TASKS])


@dataclasses.dataclass(frozen=True)
class MMoESynthetic(BenchmarkConfig):
    """Settings of the MMoE synthetic benchmark.

    Attributes:
      correlations: the values of ``p``.
      seeds: independent datasets and initialisations per ``p``.
      method, method_kw: the training method (equal weights by default).
      dim, num_sines, scale: the generator's ``d``, ``m`` and ``c``.
      experts, expert_width: MMoE's experts; hard sharing gets ``experts × expert_width`` units.
      n_train, n_test, steps, batch_size, lr: data sizes and Adam training.
    """

    correlations: tuple[float, ...] = (1.0, 0.9, 0.5)
    seeds: int = 3
    method: str = "ew"
    method_kw: dict = dataclasses.field(default_factory=dict)
    dim: int = 100
    num_sines: int = 10
    scale: float = 1.0
    experts: int = 8
    expert_width: int = 16
    n_train: int = 10_000
    n_test: int = 2_000
    steps: int = 3_000
    batch_size: int = 128
    lr: float = 1e-3

    name = "mmoe_synthetic"

    def run(self, workdir: str | None = None) -> dict[str, Any]:
        """Trains both models at every correlation and seed; returns (and writes) the summary."""
        runs = [(p, s) for p in self.correlations for s in range(self.seeds)]
        sets = [
            make_data(
                p,
                self.n_train + self.n_test,
                dim=self.dim,
                scale=self.scale,
                num_sines=self.num_sines,
                seed=s,
            )
            for p, s in runs
        ]
        arrays = {k: jnp.stack([d[k] for d in sets]) for k in ("x", *TASKS)}
        train = jax.tree.map(lambda a: a[:, : self.n_train], arrays)
        test = jax.tree.map(lambda a: a[:, self.n_train :], arrays)

        batch_fn = sample_batches(self.batch_size, self.n_train)

        keys = jax.random.split(jax.random.key(0), len(runs))
        results = {}
        for kind in MODELS:
            tick = time.perf_counter()
            models = [
                build_model(kind, self.dim, self.experts, self.expert_width, s) for _, s in runs
            ]
            built = [regression_model(m, TASKS) for m in models]
            loss, predict = built[0][0], built[0][2]
            params = jax.tree.map(lambda *a: jnp.stack(a), *[b[1] for b in built])
            final, _ = scan_train(
                loss,
                TASKS,
                self.method,
                self.method_kw,
                optax.adam(self.lr),
                params,
                batch_fn,
                train,
                self.steps,
                keys,
                batched=True,
            )
            test_mse = jax.jit(jax.vmap(functools.partial(_test_mse, predict)))
            results[kind] = np.asarray(test_mse(final, test))  # [runs, 2]
            results[kind + "_time_s"] = time.perf_counter() - tick
        summary = {
            "benchmark": self.name,
            "config": dataclasses.asdict(self),
            "label_correlation": {},
            "models": {kind: {} for kind in MODELS},
            "time_s": {kind: results[kind + "_time_s"] for kind in MODELS},
        }
        for p in self.correlations:
            rows = [i for i, (q, _) in enumerate(runs) if q == p]
            summary["label_correlation"][str(p)] = float(
                np.mean([np.corrcoef(sets[i]["y1"], sets[i]["y2"])[0, 1] for i in rows])
            )
            for kind in MODELS:
                per_run = results[kind][rows].mean(1)  # mean over the two tasks
                summary["models"][kind][str(p)] = {
                    "test_mse": float(per_run.mean()),
                    "test_mse_std": float(per_run.std()),
                    "per_task": results[kind][rows].mean(0).tolist(),
                }
        return write_summary(workdir, summary)

    def table(self, summary: dict) -> str:
        """One row per correlation: test MSE of each model and the gap."""
        rows = []
        for p, corr in summary["label_correlation"].items():
            hard = summary["models"]["hard_sharing"][p]["test_mse"]
            mmoe = summary["models"]["mmoe"][p]["test_mse"]
            rows.append((p, corr, hard, mmoe, hard - mmoe))
        headers = ("p", "label corr", "hard-sharing MSE", "MMoE MSE", "gap (hard - MMoE)")
        return format_table(headers, rows)
