"""The two-objective toy problem of CAGrad, Nash-MTL and FAMO: do methods reach the Pareto set?

The problem (Liu et al. 2021, Fig. 1; reused by Navon et al. 2022 and Liu et al. 2023) is on
``x = (x1, x2) ∈ R²``. With the gates ``c₊ = max(tanh(x2 / 2), 0)`` and
``c₋ = max(tanh(−x2 / 2), 0)``, the floor ``ε = 5·10⁻⁶`` and a scale ``s`` of the first loss::

    a1 = log max(|−(x1 + 7) / 2 − tanh(−x2)|, ε) + 6
    a2 = log max(|(3 − x1) / 2 + tanh(−x2) + 2|, ε) + 6
    q1 = ((x1 − 7)² + 0.1 (x2 + 8)²) / 10 − 20
    q2 = ((x1 + 7)² + 0.1 (x2 + 8)²) / 10 − 20
    L1 = s (c₊ a1 + c₋ q1),   L2 = c₊ a2 + c₋ q2

CAGrad uses ``s = 1``; Nash-MTL and FAMO use ``s = 0.1`` (an imbalanced first loss). Every run
is Adam with lr 1e-3 on ``x`` from the five published starts (Nash-MTL / FAMO code)
``(−8.5, 7.5), (0, 0), (9, 9), (−7.5, −0.5), (9, −1)`` for 50 000 steps (FAMO's count).

The Pareto set, derived from the formulas (it does not depend on ``s``). For ``x2 < 0`` the
upper gate is 0, so ``Lᵢ ∝ c₋(x2) qᵢ(x)``. A convex combination ``λ1 ∇q1 + λ2 ∇q2`` vanishes in
``x1`` iff ``x1 = 7 (λ1 − λ2)``, so Pareto points have ``|x1| ≤ 7`` and ``λ1 = (1 + x1/7) / 2``.
With that λ, ``λ1 q1 + λ2 q2 = Q(x1, x2) = (49 − x1²) / 10 + 0.01 (x2 + 8)² − 20``, and the
``x2`` stationarity condition is ``φ(x2) = c₋'(x2) Q + c₋(x2) · 0.02 (x2 + 8) = 0`` with
``c₋' = −½ sech²(x2 / 2)``. Its root ``h(x1)`` in ``[−12, −8]`` is unique (``φ > 0`` at −8,
``< 0`` at −12, one sign change: checked on a grid in the tests) and is the global minimiser
of ``λ·L`` (for ``x2 > 0`` every ``λ·L ≥ −6.3`` while ``min Q ≤ −15``), so each point of
``P = {(x1, h(x1)) : |x1| ≤ 7}`` is Pareto optimal (``h ≈ −8.355``, flat in ``x1``; the
papers draw the front at ``x2 = −8.3552``). A run *reaches the Pareto set* when its final
point has ``|x1| ≤ 7 + tol`` and ``|x2 − h(clip(x1, −7, 7))| ≤ tol`` (``tol = 0.05``).

References:
  Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021, arXiv:2110.14048. Navon et al., "Multi-Task Learning as a Bargaining Game",
  ICML 2022, arXiv:2202.01017. Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask
  Optimization", NeurIPS 2023, arXiv:2306.03792.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mtljax.benchmarks._base import BenchmarkConfig, write_summary
from mtljax.methods import get_method
from mtljax.tables import format_table
from mtljax.tasks import Tasks
from mtljax.train import MultiTaskLoss, init_train_state, make_train_step

FLOOR = 5e-6
STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
METHODS = ("ew", "mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "famo", "upgrad")


def toy_losses(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """``[L1, L2]`` at ``x = [..., 2]`` (see the module docstring); shape ``[..., 2]``."""
    x1, x2 = x[..., 0], x[..., 1]
    upper = jnp.maximum(jnp.tanh(x2 / 2), 0.0)
    lower = jnp.maximum(jnp.tanh(-x2 / 2), 0.0)
    a1 = jnp.log(jnp.maximum(jnp.abs(-(x1 + 7) / 2 - jnp.tanh(-x2)), FLOOR)) + 6
    a2 = jnp.log(jnp.maximum(jnp.abs((3 - x1) / 2 + jnp.tanh(-x2) + 2), FLOOR)) + 6
    q1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    q2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    return jnp.stack([scale * (upper * a1 + lower * q1), upper * a2 + lower * q2], axis=-1)


def _phi(x1, x2):
    """``∂/∂x2`` of ``c₋(x2) Q(x1, x2)`` for ``x2 < 0`` (NumPy; see the module docstring)."""
    q = (49 - x1**2) / 10 + 0.01 * (x2 + 8) ** 2 - 20
    return -0.5 / np.cosh(x2 / 2) ** 2 * q + np.tanh(-x2 / 2) * 0.02 * (x2 + 8)


def pareto_x2(x1) -> np.ndarray:
    """``h(x1)``: the Pareto set's ``x2`` above ``x1 ∈ [−7, 7]`` (bisection, 80 halvings)."""
    x1 = np.asarray(x1, np.float64)
    lo, hi = np.full_like(x1, -12.0), np.full_like(x1, -8.0)  # φ(lo) < 0 < φ(hi)
    for _ in range(80):
        mid = (lo + hi) / 2
        negative = _phi(x1, mid) < 0
        lo, hi = np.where(negative, mid, lo), np.where(negative, hi, mid)
    return (lo + hi) / 2


def pareto_distance(x) -> np.ndarray:
    """How far ``x [..., 2]`` is from the Pareto set, ``max(|x1| − 7, |x2 − h(x1)|, 0)``."""
    x = np.asarray(x, np.float64)
    x1 = np.clip(x[..., 0], -7.0, 7.0)
    return np.maximum(np.abs(x[..., 0]) - 7.0, np.abs(x[..., 1] - pareto_x2(x1)))


def on_pareto_set(x, tol: float = 0.05) -> np.ndarray:
    """Whether ``x [..., 2]`` lies within ``tol`` of the Pareto set (module docstring)."""
    return pareto_distance(x) <= tol


def run_method(
    method: str,
    starts,
    *,
    steps: int,
    scale: float,
    lr: float = 1e-3,
    method_kw: dict | None = None,
) -> np.ndarray:
    """Adam trajectories of ``method`` from every start: ``[S, steps + 1, 2]`` (float32).

    One compiled program: ``lax.scan`` over the steps, ``vmap`` over the starts.
    """
    tasks = Tasks(["L1", "L2"])
    m = get_method(method, 2, **(method_kw or {}))
    optimizer = optax.adam(lr)
    loss = MultiTaskLoss.from_fn(lambda p, batch: toy_losses(p["shared"], scale))
    step = make_train_step(loss, tasks, m, optimizer, diagnostics=False)

    def trajectory(x0):
        state = init_train_state({"shared": x0, "heads": {}}, optimizer, m)

        def body(state, _):
            state, _ = step(state, None)
            return state, state.params["shared"]

        _, xs = lax.scan(body, state, None, length=steps)
        return jnp.concatenate([x0[None], xs])

    x0 = jnp.asarray(starts, jnp.float32)
    return np.asarray(jax.jit(jax.vmap(trajectory))(x0))


@dataclasses.dataclass(frozen=True)
class Toy2D(BenchmarkConfig):
    """Settings of the toy benchmark; ``run`` trains every method from every start.

    Attributes:
      methods: registry names to compare.
      scale: ``s``, the first loss's scale (1: CAGrad; 0.1: Nash-MTL, FAMO).
      steps: Adam steps per run.
      lr: Adam's learning rate.
      starts: the initial points.
      tol: the Pareto-set tolerance of :func:`on_pareto_set`.
      method_kw: hyper-parameters per method name.
      plot: write ``trajectories.png`` (needs matplotlib; skipped without it).
    """

    methods: tuple[str, ...] = METHODS
    scale: float = 0.1
    steps: int = 50_000
    lr: float = 1e-3
    starts: tuple[tuple[float, float], ...] = STARTS
    tol: float = 0.05
    method_kw: dict = dataclasses.field(default_factory=dict)
    plot: bool = True

    name = "toy2d"

    def run(self, workdir: str | None = None) -> dict[str, Any]:
        """Runs every method; returns (and writes) the summary."""
        results, times = {}, {}
        for method in self.methods:
            tick = time.perf_counter()
            traj = run_method(
                method,
                self.starts,
                steps=self.steps,
                scale=self.scale,
                lr=self.lr,
                method_kw=self._method_kw(method),
            )
            times[method] = time.perf_counter() - tick
            results[method] = traj
        summary = {
            "benchmark": self.name,
            "config": dataclasses.asdict(self),
            "starts": [list(s) for s in self.starts],
            "methods": {},
        }
        for method, traj in results.items():
            final = traj[:, -1]
            summary["methods"][method] = {
                "final_x": final.tolist(),
                "final_losses": np.asarray(toy_losses(final, self.scale)).tolist(),
                "pareto_distance": pareto_distance(final).tolist(),
                "on_pareto_set": on_pareto_set(final, self.tol).tolist(),
                # How far x moved over the last 1 000 steps: tells a stalled run (≈ 0) from
                # one still on its way (Adam moves at most ≈ lr·√2 per step).
                "last_1k_move": np.linalg.norm(
                    final - traj[:, max(0, traj.shape[1] - 1001)], axis=-1
                ).tolist(),
                "method_kw": self._method_kw(method),
                "time_s": times[method],
            }
        if workdir and self.plot:
            summary["plot"] = plot_trajectories(results, self.scale, workdir)
        return write_summary(workdir, summary)

    def _method_kw(self, method: str) -> dict:
        """The hyper-parameters ``method`` runs with: the user's, else the papers' toy ones."""
        return self.method_kw.get(method, _default_kw(method, self.scale))

    def table(self, summary: dict) -> str:
        """One row per method and start: ``yes``, or ``no (distance, stalled|moving)``."""
        headers = ["method", *(f"({x:g},{y:g})" for x, y in self.starts), "reached", "s"]
        rows = []
        for method, res in summary["methods"].items():
            marks = [
                "yes" if ok else f"no ({d:.2g}, {'moving' if move > 0.1 else 'stalled'})"
                for ok, d, move in zip(
                    res["on_pareto_set"], res["pareto_distance"], res["last_1k_move"], strict=True
                )
            ]
            rows.append(
                [
                    method,
                    *marks,
                    f"{sum(res['on_pareto_set'])}/{len(marks)}",
                    round(res["time_s"], 1),
                ]
            )
        return format_table(headers, rows)


def _default_kw(method: str, scale: float) -> dict:
    # FAMO needs a lower bound of the losses (they go negative): the FAMO toy's (−21 s, −21),
    # and, as in its toy script, no weight decay on the logits (γ = 0: the objective is fixed).
    # CAGrad's toy uses c = 0.5; a 50-iteration dual budget keeps its T = 2 weights within
    # 5e-4 (relative) of the 500-iteration solution at a tenth of the cost.
    return {
        "famo": {"min_loss": (-21.0 * scale, -21.0), "weight_decay": 0.0},
        "cagrad": {"c": 0.5, "max_iters": 50, "tol": 1e-5},
    }.get(method, {})


def plot_trajectories(results: dict[str, np.ndarray], scale: float, workdir: str) -> str | None:
    """Writes :func:`trajectory_figure` to ``workdir/trajectories.png``; the PNG's path, or
    ``None`` without matplotlib."""
    try:
        fig = trajectory_figure(results, scale)
    except ImportError:
        return None
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "trajectories.png")
    fig.savefig(path, dpi=80)
    return path


def trajectory_figure(results: dict[str, np.ndarray], scale: float):
    """Trajectories ``{method: [S, steps + 1, 2]}`` over the contours of ``L1 + L2``.

    One panel per method, titled with it, with axes ``x1`` and ``x2``; one legend (outside the
    panels) names the Pareto set, the trajectories, their starts and their end points. Built
    with matplotlib's object API (no ``pyplot``, no GUI backend).
    """
    from matplotlib.figure import Figure

    grid = np.stack(np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-10, 10, 200)), -1)
    total = np.asarray(toy_losses(jnp.asarray(grid), scale)).sum(-1)
    front = np.linspace(-7, 7, 100)
    fig = Figure(figsize=(3 * len(results) + 1.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (method, traj) in zip(axes[0], results.items(), strict=True):
        ax.contour(grid[..., 0], grid[..., 1], total, levels=15, cmap="viridis", linewidths=0.6)
        ax.plot(front, pareto_x2(front), color="orange", linewidth=4, label="Pareto set")
        for path in traj:
            ax.plot(path[:, 0], path[:, 1], color="k", linewidth=1, label="trajectory")
            ax.plot(*path[0], "ko", markersize=4, label="start")
            ax.plot(*path[-1], "r*", markersize=7, label="end")
        ax.set(title=method, xlabel="$x_1$", ylabel="$x_2$", xlim=(-10, 10), ylim=(-10, 10))
    handles = dict(zip(*reversed(axes[0, 0].get_legend_handles_labels()), strict=True))
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=8,
               title=f"$L_1 + L_2$ contours, s = {scale:g}", title_fontsize=8)  # fmt: skip
    return fig
