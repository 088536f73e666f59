"""Result tables over many runs: mean ± std over seeds, Δm%, Δp and mean rank per method.

:func:`build_report` reads every ``summary.json`` under the given folders (a sweep folder, run
folders, or a mix) and groups the runs whose configs are equal apart from ``seed`` and the
output fields (:data:`mtljax.config.OUTPUT_FIELDS`: ``workdir``, the checkpoint settings,
``tensorboard``). A group is labelled by its method plus the config keys that vary between
groups (``cagrad c=0.4``). Runs with a single task are the single-task (STL) baselines.
Summaries written with the flat config names of mtljax 0.1 are read too.

Per group, over its seeds (every number is on the **test** split, at the step that the
validation split selected, as :func:`mtljax.run.run` stores it):

* each task metric: mean ± sample standard deviation (``ddof=1``; none for one seed);
* Δm% (:func:`mtljax.evaluation.delta_m`, lower is better) and Δp
  (:func:`mtljax.evaluation.delta_p`, higher is better) of every run against one baseline:
  for each task, the mean over seeds of its STL runs' test metrics; then mean ± std over the
  group's runs. Empty when a task has no STL run;
* mean rank: the groups are ranked on each task metric's mean (1 = best, in the metric's
  direction, ties share the average rank, NaN ranks last), and the ranks are averaged over
  the metrics that every group has. The STL row is not ranked.

The Pareto front (:func:`pareto_mask`) uses each task's headline metric (its first).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtljax.config import OUTPUT_FIELDS, flatten, stored_config
from mtljax.evaluation import delta_m, delta_p

Column = tuple[str, str]  # (task, metric)


@dataclasses.dataclass
class Row:
    """One line of the table: a group of runs that differ only in their seed.

    Attributes:
      label: the method and the config keys that tell the group apart.
      seeds: the seeds of its runs (for the STL row, those of the task with the most runs).
      values: per-run test values of every column it has (``[runs]`` arrays).
      delta_m, delta_p: per-run Δm% and Δp (``[runs]``), ``None`` without a full baseline.
      rank: mean rank over metrics (``None`` for the STL row).
      paths: the summary files.
    """

    label: str
    seeds: list[int]
    values: dict[Column, np.ndarray]
    delta_m: np.ndarray | None = None
    delta_p: np.ndarray | None = None
    rank: float | None = None
    paths: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    """The table: ``columns`` with their directions, an optional STL row, one row per group,
    and ``notes`` on what could not be computed (e.g. Δm% against a zero baseline)."""

    columns: list[Column]
    higher_is_better: dict[Column, bool]
    rows: list[Row]
    stl: Row | None
    notes: list[str] = dataclasses.field(default_factory=list)


# The keys of a :func:`mtljax.run.run` summary (benchmarks write other summary files).
RUN_KEYS = ("config", "tasks", "higher_is_better", "test")


def find_summaries(dirs: Iterable[str | os.PathLike]) -> list[tuple[str, dict]]:
    """``(path, summary)`` of every run's ``summary.json`` at or under ``dirs``, sorted by
    path; files without the :data:`RUN_KEYS` are left out.
    """
    paths = set()
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"No folder {folder}.")
        paths.update(folder.rglob("summary.json"))
    out = []
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
        if all(key in summary for key in RUN_KEYS):
            out.append((os.fspath(path), summary))
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value)."""
    values = np.asarray(values, float)
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else np.nan


def mean_ranks(values: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """Mean over metrics of each method's rank (1 = best).

    Args:
      values: ``[methods, metrics]``.
      higher_is_better: ``[metrics]``, the direction of each metric.

    Returns:
      ``[methods]``: on each metric, ``rank = 1 + #better + #tied / 2`` (ties share the mean
      of their ranks; NaN counts as the worst value), averaged over metrics.

    Example:
      >>> mean_ranks(np.array([[0.9, 1.0], [0.8, 2.0]]), [True, False]).tolist()
      [1.0, 2.0]
    """
    values = np.asarray(values, float)
    signed = np.where(np.asarray(higher_is_better, bool), values, -values)
    signed = np.where(np.isnan(signed), -np.inf, signed)
    better = (signed[None, :, :] > signed[:, None, :]).sum(axis=1)  # [methods, metrics]
    tied = (signed[None, :, :] == signed[:, None, :]).sum(axis=1) - 1
    return np.mean(1 + better + tied / 2, axis=1)


def pareto_mask(points: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """Which rows of ``points`` ``[methods, tasks]`` no other row dominates.

    Row ``j`` dominates row ``i`` when it is at least as good on every task and strictly
    better on one (in each task's direction). Rows with a NaN are never on the front.
    """
    signed = np.where(np.asarray(higher_is_better, bool), points, -np.asarray(points, float))
    finite = np.all(np.isfinite(signed), axis=1)
    geq = np.all(signed[None, :, :] >= signed[:, None, :], axis=2)  # [i, j]: j >= i everywhere
    gt = np.any(signed[None, :, :] > signed[:, None, :], axis=2)
    dominated = np.any(geq & gt & finite[None, :], axis=1)
    return finite & ~dominated


# Config fields that a group's runs may differ in.
SEED_FIELDS = ("seed", *OUTPUT_FIELDS)


def _flat_config(config: Mapping[str, Any]) -> dict[str, str]:
    """``{"method": {"kw": {"c": 0.4}}}`` -> ``{"method.kw.c": "0.4", ...}``, every field
    (defaults filled in), without the :data:`SEED_FIELDS`.
    """
    flat = flatten(stored_config(config))
    return {
        key: json.dumps(value, separators=(",", ":"))
        for key, value in flat.items()
        if key not in SEED_FIELDS
    }


def _group(summaries: Sequence[tuple[str, dict]]) -> list[tuple[dict, list[tuple[str, dict]]]]:
    """Runs with equal configs (apart from seed and workdir), in order of first appearance."""
    groups: dict[str, tuple[dict, list]] = {}
    for path, summary in summaries:
        flat = _flat_config(summary["config"])
        key = json.dumps(flat, sort_keys=True)
        groups.setdefault(key, (flat, []))[1].append((path, summary))
    return list(groups.values())


def _labels(configs: Sequence[dict[str, str]]) -> list[str]:
    """The method plus every key whose value is not the same in all ``configs``."""
    keys = sorted(set().union(*configs)) if configs else []
    varying = [k for k in keys if k != "method.name" and len({c.get(k) for c in configs}) > 1]
    labels = []
    for config in configs:
        parts = [json.loads(config["method.name"])]
        for key in varying:
            if key in config:
                value = json.loads(config[key])
                parts.append(f"{key.rpartition('.')[2]}={value}")
        labels.append(" ".join(parts))
    return labels


def _row(label: str, runs: Sequence[tuple[str, dict]]) -> Row:
    values: dict[Column, list[float]] = {}
    for _, summary in runs:
        for task, metrics in summary["test"].items():
            for metric, value in metrics.items():
                values.setdefault((task, metric), []).append(np.nan if value is None else value)
    return Row(
        label,
        [s["config"]["seed"] for _, s in runs],
        {c: np.array(v, float) for c, v in values.items() if len(v) == len(runs)},
        paths=[p for p, _ in runs],
    )


def _stl_row(stl_runs: Sequence[tuple[str, dict]]) -> Row | None:
    """One row whose columns hold every task's STL runs (each task from its own runs).

    Raises:
      ValueError: one task has single-task runs of two different configs.
    """
    by_task: dict[str, list] = {}
    for _, runs in _group(stl_runs):
        task = runs[0][1]["tasks"][0]
        if task in by_task:
            raise ValueError(
                f"Single-task runs of task {task!r} come from two configs "
                f"({by_task[task][0][0]} and {runs[0][0]}); pass the folders of one sweep."
            )
        by_task[task] = runs
    if not by_task:
        return None
    row = Row("STL", [], {})
    for runs in by_task.values():
        part = _row("STL", runs)
        row.values.update(part.values)
        row.paths += part.paths
        if len(part.seeds) > len(row.seeds):
            row.seeds = part.seeds
    return row


def build_report(dirs: Iterable[str | os.PathLike]) -> Report:
    """The table of every run under ``dirs``; see the module docstring.

    Raises:
      ValueError: a missing folder, no ``summary.json`` at all, or an ambiguous STL baseline.
    """
    summaries = find_summaries(dirs)
    if not summaries:
        raise ValueError("No run summary.json under the given folders.")
    stl_runs = [(p, s) for p, s in summaries if len(s["tasks"]) == 1]
    mtl_runs = [(p, s) for p, s in summaries if len(s["tasks"]) > 1]
    stl = _stl_row(stl_runs) if mtl_runs else None
    groups = _group(mtl_runs if mtl_runs else stl_runs)
    rows = [
        _row(label, runs)
        for label, (_, runs) in zip(_labels([c for c, _ in groups]), groups, strict=True)
    ]

    higher: dict[Column, bool] = {}
    for _, summary in summaries:
        for task, metrics in summary["higher_is_better"].items():
            for metric, h in metrics.items():
                higher.setdefault((task, metric), bool(h))
    columns = list(dict.fromkeys(c for row in rows for c in row.values))

    notes = []
    if stl is not None:
        baseline: dict[str, dict[str, float]] = {}
        for (task, metric), values in stl.values.items():
            baseline.setdefault(task, {})[metric] = float(np.mean(values))
        for row, (_, runs) in zip(rows, groups, strict=True):
            if all(task in baseline for _, s in runs for task in s["tasks"]):
                try:
                    row.delta_m = np.array(
                        [delta_m(s["test"], baseline, s["higher_is_better"]) for _, s in runs]
                    )
                    row.delta_p = np.array(
                        [delta_p(s["test"], baseline, s["higher_is_better"]) for _, s in runs]
                    )
                except ValueError as error:
                    notes.append(f"{row.label}: no Δm% or Δp: {error}")

    ranked = [c for c in columns if all(c in row.values for row in rows)]
    if ranked:
        means = np.array([[np.mean(row.values[c]) for c in ranked] for row in rows])
        for row, rank in zip(rows, mean_ranks(means, [higher[c] for c in ranked]), strict=True):
            row.rank = float(rank)
    return Report(columns, {c: higher[c] for c in columns}, rows, stl, notes)


def _arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def _cells(report: Report, row: Row) -> list[tuple[float, float] | None]:
    cells = [mean_std(row.values[c]) if c in row.values else None for c in report.columns]
    for values in (row.delta_m, row.delta_p):
        cells.append(None if values is None else mean_std(values))
    return cells


def to_markdown(report: Report) -> str:
    """A Markdown table: mean ± std over seeds, Δm% and Δp in percent, mean rank."""
    headers = [
        "method",
        "runs",
        *(f"{t} {m} {_arrow(report.higher_is_better[(t, m)])}" for t, m in report.columns),
        "Δm% ↓",
        "Δp ↑",
        "mean rank ↓",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    rows = ([report.stl] if report.stl else []) + report.rows
    digits = [4] * len(report.columns) + [2, 2]
    for row in rows:
        cells = [row.label, str(len(row.seeds))]
        for cell, d in zip(_cells(report, row), digits, strict=True):
            if cell is None:
                cells.append("–")
            elif np.isnan(cell[1]):
                cells.append(f"{cell[0]:.{d}f}")
            else:
                cells.append(f"{cell[0]:.{d}f} ± {cell[1]:.{d}f}")
        cells.append("–" if row.rank is None else f"{row.rank:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(report: Report) -> str:
    """CSV with full precision: ``method, runs``, then ``<task>/<metric>`` and ``... std`` per
    column, ``delta_m``, ``delta_m std``, ``delta_p``, ``delta_p std``, ``mean_rank``; empty
    cells where a value does not exist.
    """
    names = [f"{t}/{m}" for t, m in report.columns] + ["delta_m", "delta_p"]
    header = ["method", "runs", *(n + s for n in names for s in ("", " std")), "mean_rank"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in ([report.stl] if report.stl else []) + report.rows:
        cells: list[Any] = [row.label, len(row.seeds)]
        for cell in _cells(report, row):
            cells += ["", ""] if cell is None else [repr(v) if np.isfinite(v) else "" for v in cell]
        cells.append("" if row.rank is None else repr(row.rank))
        writer.writerow(cells)
    return out.getvalue()


def headline_columns(report: Report) -> list[Column]:
    """Each task's first metric, in column order."""
    first: dict[str, Column] = {}
    for task, metric in report.columns:
        first.setdefault(task, (task, metric))
    return list(first.values())


def write_plots(report: Report, folder: str | os.PathLike) -> list[str]:
    """Writes ``folder/pareto.png`` (:func:`mtljax.plots.plot_pareto`) of each task's headline
    metric when there are two tasks or more; returns the paths written.
    """
    from mtljax.plots import plot_pareto

    columns = headline_columns(report)
    if len(columns) < 2:
        return []  # one task: nothing to trade off
    rows = [row for row in report.rows if all(c in row.values for c in columns)]
    means = np.array([[np.mean(row.values[c]) for c in columns] for row in rows])
    front = pareto_mask(means, [report.higher_is_better[c] for c in columns])
    runs = {row.label: np.stack([row.values[c] for c in columns], axis=1) for row in rows}
    reference = None
    if report.stl is not None and all(c in report.stl.values for c in columns):
        reference = np.array([np.mean(report.stl.values[c]) for c in columns])
    fig = plot_pareto(
        runs,
        [f"{t} {m}" for t, m in columns],
        [report.higher_is_better[c] for c in columns],
        front=dict(zip(runs, front.tolist(), strict=True)),
        reference=reference,
    )
    path = os.path.join(os.fspath(folder), "pareto.png")
    fig.savefig(path, dpi=110)
    return [path]
