"""Plots of a run's ``metrics.jsonl`` (matplotlib, optional: ``pip install mtljax[plots]``).

One function per plot, each taking the records of :func:`mtljax.metrics_log.read_jsonl` and
returning a matplotlib ``Figure``; :func:`plot_run` writes all of them as PNG files next to the
log, and :func:`plot_comparison` overlays several runs. Figures are built with the
object-oriented API (no ``pyplot``), so no GUI backend is touched: PNGs are rendered by Agg.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mtljax.metrics_log import read_jsonl


def _figure(ncols: int = 1, nrows: int = 1, size=(5.0, 3.5)):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("Plots need matplotlib: pip install 'mtljax[plots]'.") from None
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _train_records(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if "losses" in r]


def _eval_records(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if "val" in r]


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Steps and ``{task: values}`` of a per-task field (``None`` read as NaN)."""
    rows = [r for r in records if key in r]
    steps = np.array([r["step"] for r in rows])
    tasks = list(rows[0][key]) if rows else []
    values = {
        t: np.array([np.nan if r[key][t] is None else r[key][t] for r in rows], float)
        for t in tasks
    }
    return steps, values


def plot_losses(records: Sequence[dict]):
    """Training loss of every task against the step (log scale)."""
    fig, axes = _figure()
    steps, losses = _series(_train_records(records), "losses")
    for task, values in losses.items():
        axes[0, 0].plot(steps, values, label=task)
    axes[0, 0].set(xlabel="step", ylabel="training loss", yscale="log", title="Task losses")
    axes[0, 0].legend()
    return fig


def plot_val_metrics(records: Sequence[dict]):
    """Every validation metric of every task against the step."""
    rows = _eval_records(records)
    fig, axes = _figure()
    if rows:
        for task, metrics in rows[0]["val"].items():
            for metric in metrics:
                axes[0, 0].plot(
                    [r["step"] for r in rows],
                    [r["val"][task][metric] for r in rows],
                    marker="o",
                    label=f"{task} {metric}",
                )
    axes[0, 0].set(xlabel="step", ylabel="validation", title="Validation metrics")
    axes[0, 0].legend()
    return fig


def plot_weights(records: Sequence[dict]):
    """The method's task weights against the step (absent for non-weighting methods)."""
    fig, axes = _figure()
    steps, weights = _series(_train_records(records), "weights")
    for task, values in weights.items():
        axes[0, 0].plot(steps, values, label=task)
    axes[0, 0].set(xlabel="step", ylabel="weight", title="Task weights")
    axes[0, 0].legend()
    return fig


def plot_conflict(records: Sequence[dict]):
    """The fraction of task pairs with a negative gradient cosine, on diagnostics steps."""
    rows = [r for r in records if "conflict_fraction" in r]
    fig, axes = _figure()
    axes[0, 0].plot([r["step"] for r in rows], [r["conflict_fraction"] for r in rows], marker=".")
    axes[0, 0].set(
        xlabel="step",
        ylabel="conflicting pairs",
        ylim=(-0.05, 1.05),
        title="Gradient conflict rate",
    )
    return fig


def plot_cosine(records: Sequence[dict], *, last: int | None = None):
    """Heatmap of the task-gradient cosine matrix, averaged over diagnostics steps.

    Args:
      records: the run's records.
      last: average over only the last ``last`` diagnostics steps (all by default).
    """
    rows = [r for r in records if "cosine" in r]
    rows = rows[-last:] if last else rows
    fig, axes = _figure(size=(4.5, 4.0))
    ax = axes[0, 0]
    if rows:
        tasks = list(rows[0]["losses"])
        cos = np.nanmean(np.array([r["cosine"] for r in rows], float), axis=0)
        image = ax.imshow(cos, vmin=-1, vmax=1, cmap="coolwarm")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for (i, j), value in np.ndenumerate(cos):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax)
    ax.set_title(f"Mean gradient cosine ({len(rows)} steps)")
    return fig


PLOTS = {
    "losses": plot_losses,
    "val_metrics": plot_val_metrics,
    "weights": plot_weights,
    "conflict": plot_conflict,
    "cosine": plot_cosine,
}


def plot_run(workdir: str | os.PathLike) -> list[str]:
    """Writes every plot of ``workdir/metrics.jsonl`` to ``workdir/plot_<name>.png``.

    Returns:
      The paths written (plots without data, e.g. no diagnostics steps, are skipped).
    """
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    has = {
        "losses": bool(_train_records(records)),
        "val_metrics": bool(_eval_records(records)),
        "weights": any(
            v is not None for r in _train_records(records) for v in r["weights"].values()
        ),
        "conflict": any("conflict_fraction" in r for r in records),
        "cosine": any("cosine" in r for r in records),
    }
    paths = []
    for name, plot in PLOTS.items():
        if has[name]:
            path = os.path.join(workdir, f"plot_{name}.png")
            plot(records).savefig(path, dpi=110)
            paths.append(path)
    return paths


def plot_comparison(
    runs: Mapping[str, Sequence[dict]], path: str | os.PathLike, *, smooth: int = 5
) -> str:
    """Training loss (top) and validation headline metric (bottom) per task, one line per run.

    Args:
      runs: ``{label: records}``; single-task runs contribute to their task's panel only.
      path: the PNG to write.
      smooth: moving-average window over logged training losses.

    Returns:
      ``path``.
    """
    tasks = []
    for records in runs.values():
        for r in _train_records(records)[:1]:
            tasks += [t for t in r["losses"] if t not in tasks]
    fig, axes = _figure(ncols=len(tasks), nrows=2, size=(4.5, 3.2))
    for index, (label, records) in enumerate(runs.items()):
        style = {"color": f"C{index % 10}", "label": label}
        steps, losses = _series(_train_records(records), "losses")
        evals = _eval_records(records)
        for column, task in enumerate(tasks):
            if task not in losses:
                continue
            values = losses[task]
            if smooth > 1 and len(values) >= smooth:
                values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
                axes[0, column].plot(steps[smooth - 1 :], values, **style)
            else:
                axes[0, column].plot(steps, values, **style)
            if evals:
                metric = next(iter(evals[0]["val"][task]))
                axes[1, column].plot(
                    [r["step"] for r in evals],
                    [r["val"][task][metric] for r in evals],
                    marker="o",
                    **style,
                )
                axes[1, column].set(ylabel=f"val {metric}")
    for column, task in enumerate(tasks):
        axes[0, column].set(title=task, yscale="log", ylabel="training loss")
        axes[1, column].set(xlabel="step")
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    order = [label for label in runs if label in handles]
    fig.legend([handles[k] for k in order], order, loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=110)
    return os.fspath(path)
