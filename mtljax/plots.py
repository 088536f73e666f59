"""Plots of a run's ``metrics.jsonl`` (matplotlib, optional: the ``plots`` extra).

One function per plot, each taking the records of :func:`mtljax.metrics_log.read_jsonl` and
returning a matplotlib ``Figure``; :func:`plot_run` (``mtljax plot RUN_DIR``) writes all of them
as PNG files next to the log: losses, validation metrics, task weights, the gradient conflict
rate, the mean cosine matrix and the cosine of every task pair over time.
:func:`plot_comparison` overlays several runs, and :func:`plot_pareto` (``mtljax report
--plots``) places the final results of several methods with their Pareto front. Figures are
built with the object-oriented API (no ``pyplot``), so no GUI backend is touched: PNGs are
rendered by Agg. Per-run figures name their run in the title (``run=``; :func:`plot_run` reads
the method from ``summary.json``). matplotlib comes with ``make demo``/``make test`` (the
``dev`` extra) or ``pip install -e '.[plots]'`` in a clone of the repository.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mtljax.metrics_log import read_jsonl


def _figure(ncols: int = 1, nrows: int = 1, size=(5.0, 3.5)):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "Plots need matplotlib: run `pip install -e '.[plots]'` in the mtljax repository "
            "(`make demo` and `make test` install it too)."
        ) from None
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _title(text: str, run: str | None) -> str:
    """A per-run figure's title: ``text``, then the run's name on a second line."""
    return f"{text}\n{run}" if run else text


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


def plot_losses(records: Sequence[dict], *, run: str | None = None):
    """Training loss of every task against the step (log scale); ``run`` names the run."""
    fig, axes = _figure()
    steps, losses = _series(_train_records(records), "losses")
    for task, values in losses.items():
        axes[0, 0].plot(steps, values, label=task)
    axes[0, 0].set(
        xlabel="step", ylabel="training loss", yscale="log", title=_title("Task losses", run)
    )
    axes[0, 0].legend()
    return fig


def plot_val_metrics(records: Sequence[dict], *, run: str | None = None):
    """Every validation metric of every task against the step; ``run`` names the run."""
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
    axes[0, 0].set(xlabel="step", ylabel="validation", title=_title("Validation metrics", run))
    axes[0, 0].legend()
    return fig


def plot_weights(records: Sequence[dict], *, run: str | None = None):
    """The method's task weights against the step (absent for non-weighting methods)."""
    fig, axes = _figure()
    steps, weights = _series(_train_records(records), "weights")
    for task, values in weights.items():
        axes[0, 0].plot(steps, values, label=task)
    axes[0, 0].set(xlabel="step", ylabel="weight", title=_title("Task weights", run))
    axes[0, 0].legend()
    return fig


def plot_conflict(records: Sequence[dict], *, run: str | None = None):
    """The fraction of task pairs with a negative gradient cosine, on diagnostics steps."""
    rows = [r for r in records if "conflict_fraction" in r]
    fig, axes = _figure()
    axes[0, 0].plot([r["step"] for r in rows], [r["conflict_fraction"] for r in rows], marker=".")
    axes[0, 0].set(
        xlabel="step",
        ylabel="conflicting pairs",
        ylim=(-0.05, 1.05),
        title=_title("Gradient conflict rate", run),
    )
    return fig


def _cosine_label(value: float) -> str:
    """A cosine as its cell text: two decimals, or two significant digits when it would round
    to ``±0.00`` (so a small negative keeps its sign and size: ``-0.0012``)."""
    if not np.isfinite(value):
        return "n/a"
    if value == 0 or abs(value) >= 0.005:
        return f"{value:.2f}"
    return f"{value:.2g}"


def _symmetric_limit(values: np.ndarray) -> float:
    """``max |v|`` over the finite values (1 when there are none): a colour scale ``±limit``
    centred on 0 keeps the sign of every cell readable."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def plot_cosine(records: Sequence[dict], *, last: int | None = None, run: str | None = None):
    """Heatmap of the task-gradient cosine matrix, averaged over diagnostics steps.

    The colour scale is ``[-1, 1]`` (the diagonal is 1); each cell shows its value, with two
    significant digits when it is below 0.005 in size, so a sign flip near 0 stays visible.

    Args:
      records: the run's records.
      last: average over only the last ``last`` diagnostics steps (all by default).
      run: the run's name, shown in the title.
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
            ax.text(j, i, _cosine_label(value), ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, label="cosine")
    ax.set_title(_title(f"Mean gradient cosine ({len(rows)} steps)", run))
    return fig


def plot_cosine_time(records: Sequence[dict], *, run: str | None = None):
    """Heatmap of the gradient cosine of every task pair (rows) against the step (columns).

    The colour scale is symmetric about 0 and spans the data, ``±max |cos|`` over the plotted
    cells (the colour bar's label says so): cosines between task gradients are often within
    ±0.2, which a ``[-1, 1]`` scale would leave all but white.
    """
    rows = [r for r in records if "cosine" in r]
    fig, axes = _figure(size=(6.0, 3.5))
    ax = axes[0, 0]
    if rows:
        tasks = list(rows[0]["losses"])
        cos = np.array(
            [[np.nan if v is None else v for v in row] for r in rows for row in r["cosine"]], float
        ).reshape(len(rows), len(tasks), len(tasks))
        upper = np.triu_indices(len(tasks), k=1)
        pairs = cos[:, upper[0], upper[1]].T  # [pairs, diagnostics steps]
        steps = np.array([r["step"] for r in rows], float)
        # Diagnostics steps need not be evenly spaced (step 1, then every N): cells span the
        # midpoints between them.
        gaps = np.diff(steps) if len(steps) > 1 else np.ones(1)
        edges = np.concatenate(
            [[steps[0] - gaps[0] / 2], steps[:-1] + gaps / 2, [steps[-1] + gaps[-1] / 2]]
        )
        limit = _symmetric_limit(pairs)
        image = ax.pcolormesh(
            edges, np.arange(len(pairs) + 1) - 0.5, pairs, vmin=-limit, vmax=limit,
            cmap="coolwarm",
        )  # fmt: skip
        labels = [f"{tasks[i]}·{tasks[j]}" for i, j in zip(*upper, strict=True)]
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        fig.colorbar(image, ax=ax, label=f"cosine (scale ±{limit:.2g}: the data's range)")
    ax.set(xlabel="step", title=_title("Gradient cosine per task pair over time", run))
    return fig


# Hollow markers of distinct shapes: two methods at the same point stay both visible.
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")


def _style(index: int, on_front: bool) -> dict:
    """The line/marker style of the ``index``-th method (thicker edges on the front)."""
    return {
        "color": f"C{index % 10}",
        "marker": MARKERS[index % len(MARKERS)],
        "markerfacecolor": "none",
        "markeredgewidth": 2.0 if on_front else 1.2,
    }


def _label_coincident(ax, means: Mapping[str, np.ndarray]) -> None:
    """Writes the names of methods whose means (nearly) coincide next to the shared point.

    Points closer than 1% of the plotted range on both axes count as one; their names are
    joined with " = " so that a method hidden under another is still named on the plot.
    """
    points = np.array(list(means.values()))
    span = np.ptp(points, axis=0)
    span = np.where(span > 0, span, 1.0)
    groups: list[list[str]] = []
    for label, point in means.items():
        for group in groups:
            if np.all(np.abs(point - means[group[0]]) <= 0.01 * span):
                group.append(label)
                break
        else:
            groups.append([label])
    for group in groups:
        if len(group) > 1:
            ax.annotate(" = ".join(group), means[group[0]], xytext=(8, 8),
                        textcoords="offset points", fontsize=8)  # fmt: skip


def _pareto_scatter(ax, runs, means, front) -> None:
    """Two objectives: seeds as small dots, the mean ± std per method, the front's line."""
    for index, (label, values) in enumerate(runs.items()):
        values = np.asarray(values, float)
        style = _style(index, bool(front.get(label)))
        ax.scatter(values[:, 0], values[:, 1], s=12, alpha=0.4, color=style["color"])
        std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else None
        ax.errorbar(
            *means[label],
            xerr=None if std is None else std[0],
            yerr=None if std is None else std[1],
            markersize=8,
            linestyle="none",
            label=label + (" (front)" if front.get(label) else ""),
            **style,
        )
    on_front = sorted(tuple(means[label]) for label in runs if front.get(label))
    if len(on_front) > 1:
        ax.plot(*np.array(on_front).T, "k--", linewidth=0.8)
    _label_coincident(ax, means)


def _parallel_coordinates(ax, means, objectives, higher_is_better, front, reference) -> None:
    """More objectives: one axis per objective scaled to ``[0, 1]``, flipped so up is better."""
    table = np.array(list(means.values()) + ([reference] if reference is not None else []))
    low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
    span = np.where(high > low, high - low, 1.0)

    def scaled(values):
        unit = (values - low) / span
        return np.where(np.asarray(higher_is_better, bool), unit, 1.0 - unit)

    x = np.arange(len(objectives))
    for index, (label, mean) in enumerate(means.items()):
        ax.plot(
            x,
            scaled(mean),
            "-" if front.get(label) else "--",
            label=label + (" (front)" if front.get(label) else ""),
            **_style(index, bool(front.get(label))),
        )
    if reference is not None:
        ax.plot(x, scaled(reference), "k:", marker="*", label="STL")
    ax.set_xticks(x, objectives, rotation=30, ha="right")


def plot_pareto(
    runs: Mapping[str, np.ndarray],
    objectives: Sequence[str],
    higher_is_better: Sequence[bool],
    *,
    front: Mapping[str, bool] | None = None,
    reference: np.ndarray | None = None,
):
    """Final per-task results of several methods, with their Pareto front.

    Each method has its own colour and hollow marker shape (a thicker edge on the front), so a
    method exactly under another stays visible; coinciding means are also named together on
    the plot. The legend sits outside the axes, so it never covers data.

    Two objectives: a scatter; small dots are seeds, the marker with error bars the mean ± std,
    and a dashed line joins the means on the front. More objectives: parallel coordinates, one
    axis per objective scaled to ``[0, 1]`` over the plotted means and flipped where lower is
    better (so up is always better); methods on the front are solid lines, dominated ones
    dashed.

    Args:
      runs: ``{method: [seeds, objectives]}`` values.
      objectives: the axis names (e.g. ``"left accuracy"``).
      higher_is_better: the direction of each objective.
      front: ``{method: on the Pareto front}`` (see :func:`mtljax.report.pareto_mask`).
      reference: ``[objectives]`` values drawn as a black star (e.g. single-task baselines).
    """
    front = front or {}
    means = {label: np.nanmean(np.asarray(v, float), axis=0) for label, v in runs.items()}
    if len(objectives) == 2:
        fig, axes = _figure(size=(6.5, 4.5))
        ax = axes[0, 0]
        _pareto_scatter(ax, runs, means, front)
        if reference is not None:
            ax.plot(*reference, "k*", markersize=12, linestyle="none", label="STL")
        ax.set(xlabel=objectives[0], ylabel=objectives[1], title="Final test results")
    else:
        fig, axes = _figure(size=(max(5.0, 1.4 * len(objectives)) + 1.5, 4.0))
        ax = axes[0, 0]
        _parallel_coordinates(ax, means, objectives, higher_is_better, front, reference)
        ax.set(ylabel="scaled, up is better", title="Final test results (parallel coordinates)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return fig


PLOTS = {
    "losses": plot_losses,
    "val_metrics": plot_val_metrics,
    "weights": plot_weights,
    "conflict": plot_conflict,
    "cosine": plot_cosine,
    "cosine_time": plot_cosine_time,
}


def run_name(workdir: str | os.PathLike) -> str:
    """A run's name for titles: its folder's last two parts (``pcgrad/seed0``), preceded by the
    method when ``summary.json`` names one that the folder does not (``ew: runs/x``)."""
    path = Path(os.path.abspath(workdir))
    name = "/".join(path.parts[-2:])
    try:
        method = json.loads((path / "summary.json").read_text())["config"]["method"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return name  # no (readable) summary yet: a run in progress
    return name if method in path.parts[-2:] else f"{method}: {name}"


def plot_run(workdir: str | os.PathLike) -> list[str]:
    """Writes every plot of ``workdir/metrics.jsonl`` to ``workdir/plot_<name>.png``.

    Each title names the run (:func:`run_name`).

    Returns:
      The paths written (plots without data, e.g. no diagnostics steps, are skipped).
    """
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    run = run_name(workdir)
    has = {
        "losses": bool(_train_records(records)),
        "val_metrics": bool(_eval_records(records)),
        "weights": any(
            v is not None for r in _train_records(records) for v in r["weights"].values()
        ),
        "conflict": any("conflict_fraction" in r for r in records),
        "cosine": any("cosine" in r for r in records),
        "cosine_time": any("cosine" in r for r in records),
    }
    paths = []
    for name, plot in PLOTS.items():
        if has[name]:
            path = os.path.join(workdir, f"plot_{name}.png")
            plot(records, run=run).savefig(path, dpi=110)
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
