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
  group's runs. Empty, with a note, when a task has no STL run or an incomplete one (below);
* mean rank: the groups are ranked on each task metric's mean (1 = best, in the metric's
  direction, ties share the average rank, NaN ranks last), and the ranks are averaged over
  the metrics that every group has. The STL row is not ranked.

**Task roles.** When the multi-task runs declare auxiliary tasks (``data.primary`` or
``data.levels``; each summary records its tasks' ``levels``), Δm% and Δp count the primary
tasks only, since the auxiliary ones exist to help them, and the table's headers say so
(``Δm% (primary: digit)``); ``all_tasks=True`` (``mtljax report --all-tasks``) counts every
task. Only the counted tasks need a single-task baseline. Runs that declare different primary
tasks are never averaged into one Δm%: their rows get none (``roles differ``) and a note says
why.

The Pareto front (:func:`pareto_mask`) uses each task's headline metric (its first).

A run the table cannot use is never dropped silently, and never stops the report: a
``summary.json`` that is unreadable, not JSON (cut off while being written), empty (``{}``)
or incomplete, and a run folder with a ``metrics.jsonl`` but no ``summary.json`` (still
training, or interrupted), are each named in one note (:attr:`Report.notes`, which
``mtljax report`` prints as warnings) and listed under the Markdown table. When such a run is
a single-task baseline (its folder is ``stl_<task>/...`` or its summary names one task), or
a task's baseline lacks seeds that the other tasks' baselines have, the baseline of that task
is incomplete: the groups with that task get no Δm% or Δp (the table says "baseline
incomplete", a note says why) instead of numbers against a different baseline. Summaries of
other tools (benchmarks: a ``"benchmark"`` or ``"methods"`` key) are not runs and are skipped.
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
from mtljax.tasks import Tasks

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
      baseline_note: why Δm% and Δp are missing although there are STL runs
        (``"baseline incomplete"``, ``"no baseline"``, ``"roles differ"``), else ``None``.
      delta_tasks: the tasks that Δm% and Δp count (``None`` without them).
    """

    label: str
    seeds: list[int]
    values: dict[Column, np.ndarray]
    delta_m: np.ndarray | None = None
    delta_p: np.ndarray | None = None
    rank: float | None = None
    paths: list[str] = dataclasses.field(default_factory=list)
    baseline_note: str | None = None
    delta_tasks: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Excluded:
    """A run left out of the table: its ``summary.json`` (or its folder, when it has none),
    why, and the task whose single-task baseline it is (``None``: not one, or not known)."""

    path: str
    reason: str
    stl_task: str | None


@dataclasses.dataclass
class Report:
    """The table: ``columns`` with their directions, an optional STL row, one row per group,
    the runs left out (``excluded``), ``notes``: one line per excluded run and per thing
    that could not be computed (e.g. Δm% against a zero or incomplete baseline), and
    ``delta_scope``: which tasks Δm% and Δp count when the runs declare auxiliary tasks
    (``"primary: digit"`` or ``"all tasks"``), ``None`` when every task is primary."""

    columns: list[Column]
    higher_is_better: dict[Column, bool]
    rows: list[Row]
    stl: Row | None
    notes: list[str] = dataclasses.field(default_factory=list)
    excluded: list[Excluded] = dataclasses.field(default_factory=list)
    delta_scope: str | None = None


# The keys of a :func:`mtljax.run.run` summary.
RUN_KEYS = ("config", "tasks", "higher_is_better", "test")
# Keys that mark another tool's summary.json (mtljax.benchmarks, experiments/demo.py).
OTHER_FORMATS = ("benchmark", "methods")


def find_runs(dirs: Iterable[str | os.PathLike]) -> tuple[list[tuple[str, dict]], list[Excluded]]:
    """Every run at or under ``dirs``: ``(path, summary)`` of each usable ``summary.json``,
    sorted by path, and the runs that cannot be used (see the module docstring).

    Raises:
      ValueError: one of ``dirs`` is not a folder.
    """
    summaries, logs = set(), set()
    for folder in dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"No folder {folder}.")
        summaries.update(folder.rglob("summary.json"))
        logs.update(folder.rglob("metrics.jsonl"))
    runs, excluded = [], []
    for path in sorted(summaries):
        summary, reason = _read_summary(path)
        if reason is not None:
            excluded.append(Excluded(os.fspath(path), reason, _stl_task(path.parent, summary)))
        elif summary is not None:
            runs.append((os.fspath(path), summary))
    for log in sorted(logs):
        if not (log.parent / "summary.json").exists():
            reason = "no summary.json (still training, or interrupted)"
            excluded.append(Excluded(os.fspath(log.parent), reason, _stl_task(log.parent, None)))
    return runs, excluded


def _read_summary(path: Path) -> tuple[Any, str | None]:
    """``(summary, None)`` for a usable run summary, ``(None, None)`` for another tool's,
    ``(what was read, why it is unusable)`` otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, f"unreadable ({error})"
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as error:
        what = "empty file" if not text.strip() else f"not valid JSON ({error})"
        return None, f"{what}; cut off while being written?"
    if not isinstance(summary, dict) or not summary:
        return summary, f"empty ({text.strip()[:20]})" if not summary else "not a JSON object"
    if "test" not in summary and any(key in summary for key in OTHER_FORMATS):
        return None, None
    missing = [key for key in RUN_KEYS if key not in summary]
    if missing:
        return summary, f"incomplete (no {', '.join(missing)})"
    return summary, _problem(summary)


def _problem(summary: dict) -> str | None:
    """Why a summary with every :data:`RUN_KEYS` still cannot be read, or ``None``."""
    tasks, test = summary["tasks"], summary["test"]
    if not (isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks)):
        return "incomplete (tasks is not a list of task names)"
    for part in ("test", "higher_is_better"):
        if not all(isinstance(summary[part], dict) and t in summary[part] for t in tasks):
            return f"incomplete ({part} lacks a task of {tasks})"
    numbers = [v for t in tasks if isinstance(test[t], dict) for v in test[t].values()]
    if len(numbers) < len(tasks) or not all(
        v is None or isinstance(v, int | float) for v in numbers
    ):
        return "incomplete (a test metric is missing or not a number)"
    try:
        _flat_config(summary["config"])
        int(summary["config"]["seed"])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        return f"config unreadable ({error})"
    try:
        run_levels(summary)
    except (ValueError, TypeError) as error:
        return f"task levels unreadable ({error})"
    return None


def run_levels(summary: Mapping[str, Any]) -> dict[str, int]:
    """``{task: priority level}`` of a run (0 = primary): its summary's ``levels``, else (a
    summary written before task roles, or by hand) the roles of its config's ``data.primary``
    and ``data.levels``.

    Raises:
      ValueError: levels that name other tasks, are not ints >= 0, or leave no task primary.
    """
    tasks = Tasks(summary["tasks"])
    if "levels" in summary:
        levels = summary["levels"]
        if not isinstance(levels, dict) or set(levels) != set(tasks.names):
            raise ValueError(f"levels {levels!r} do not name the tasks {list(tasks.names)}")
        tasks = tasks.with_levels(levels)
    else:
        data = stored_config(summary["config"])["data"]
        tasks = tasks.with_roles(data["primary"], data["levels"])
    return dict(zip(tasks.names, tasks.levels, strict=True))


def primary_tasks(summary: Mapping[str, Any]) -> tuple[str, ...]:
    """The run's primary (level-0) tasks, in task order (:func:`run_levels`)."""
    return tuple(task for task, level in run_levels(summary).items() if level == 0)


def _stl_task(folder: Path, summary: Any) -> str | None:
    """The task of a single-task run: from its summary's ``tasks``, else from the sweep's
    folder name (``stl_<task>/seed<k>``)."""
    tasks = summary.get("tasks") if isinstance(summary, dict) else None
    if isinstance(tasks, list) and len(tasks) == 1:
        return str(tasks[0])
    group = folder.parent.name
    return group.removeprefix("stl_") if group.startswith("stl_") else None


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


def build_report(dirs: Iterable[str | os.PathLike], *, all_tasks: bool = False) -> Report:
    """The table of every run under ``dirs``; see the module docstring.

    When the multi-task runs declare auxiliary tasks, Δm% and Δp count their primary tasks
    only, or every task with ``all_tasks=True`` (:func:`_delta_scope`).

    Raises:
      ValueError: a missing folder, no usable ``summary.json`` at all, or an ambiguous STL
        baseline.
    """
    summaries, excluded = find_runs(dirs)
    notes = [f"excluded {e.path}: {e.reason}" for e in excluded]
    if not summaries:
        left_out = f" ({len(excluded)} excluded: {', '.join(e.path for e in excluded)})"
        raise ValueError(
            "No run summary.json under the given folders" + (left_out if excluded else "") + "."
        )
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

    scope, counted, why_not = _delta_scope(mtl_runs, all_tasks=all_tasks)
    if stl is not None and why_not is not None:
        for row in rows:
            row.baseline_note = "roles differ"
        notes.append(why_not)
    elif stl is not None:
        problems = _baseline_problems(stl_runs, excluded)
        for row, (_, runs) in zip(rows, groups, strict=True):
            notes += _add_deltas(row, runs, stl, problems, counted)

    ranked = [c for c in columns if all(c in row.values for row in rows)]
    if ranked:
        means = np.array([[np.mean(row.values[c]) for c in ranked] for row in rows])
        for row, rank in zip(rows, mean_ranks(means, [higher[c] for c in ranked]), strict=True):
            row.rank = float(rank)
    return Report(columns, {c: higher[c] for c in columns}, rows, stl, notes, excluded, scope)


def _delta_scope(
    runs: Sequence[tuple[str, dict]], *, all_tasks: bool
) -> tuple[str | None, tuple[str, ...] | None, str | None]:
    """Which tasks Δm% and Δp count: ``(scope, tasks, why not)``.

    When no run declares an auxiliary task, or with ``all_tasks``, every row counts all its
    tasks (``tasks`` is ``None``; ``scope`` is ``"all tasks"`` only when some run declares an
    auxiliary task). Otherwise every run must declare the same primary tasks, and only those
    count (``scope`` ``"primary: a, b"``); runs that declare different primary tasks get no
    Δm% (``why not`` says so), since their figures would average different tasks.
    """
    primaries = {path: primary_tasks(s) for path, s in runs}
    auxiliary = any(len(primaries[path]) < len(s["tasks"]) for path, s in runs)
    if not auxiliary:
        return None, None, None
    if all_tasks:
        return "all tasks", None, None
    distinct = sorted(set(primaries.values()))
    if len(distinct) == 1:
        return f"primary: {', '.join(distinct[0])}", distinct[0], None
    declared = "; ".join(f"[{', '.join(p)}]" for p in distinct)
    why = (
        f"no Δm% or Δp: the runs declare different primary tasks ({declared}), so their Δm% "
        "would average different tasks; report them separately, or pass --all-tasks "
        "(build_report(all_tasks=True)) for Δm% over every task"
    )
    return None, None, why


def _baseline_problems(
    stl_runs: Sequence[tuple[str, dict]], excluded: Sequence[Excluded]
) -> dict[str, str]:
    """``{task: why its single-task baseline is incomplete}``: an excluded STL run of it, or
    fewer seeds than another task's baseline."""
    problems: dict[str, list[str]] = {}
    for e in excluded:
        if e.stl_task is not None:
            problems.setdefault(e.stl_task, []).append(f"{e.path} excluded")
    seeds: dict[str, set[int]] = {}
    for _, summary in stl_runs:
        seeds.setdefault(summary["tasks"][0], set()).add(int(summary["config"]["seed"]))
    every = set().union(*seeds.values()) if seeds else set()
    for task, have in seeds.items():
        if have != every and task not in problems:  # an excluded run already says why
            problems[task] = [f"no seed {sorted(every - have)}"]
    return {task: "; ".join(why) for task, why in problems.items()}


def _add_deltas(
    row: Row,
    runs: Sequence[tuple[str, dict]],
    stl: Row,
    problems: Mapping[str, str],
    counted: Sequence[str] | None,
) -> list[str]:
    """Sets ``row``'s Δm% and Δp over the tasks ``counted`` (``None``: all of its runs'
    tasks) against the STL row when their baseline is complete; returns the notes on what
    kept them from being computed."""
    tasks = list(counted or dict.fromkeys(t for _, s in runs for t in s["tasks"]))
    baseline: dict[str, dict[str, float]] = {}
    for (task, metric), values in stl.values.items():
        baseline.setdefault(task, {})[metric] = float(np.mean(values))
    missing = [t for t in tasks if t not in baseline]
    broken = {t: problems[t] for t in tasks if t in problems}
    if missing or broken:
        row.baseline_note = "baseline incomplete" if broken else "no baseline"
        why = [f"no single-task run of task(s) {missing}"] if missing else []
        why += [
            f"the single-task baseline of task {t!r} is incomplete ({w})" for t, w in broken.items()
        ]
        return [f"{row.label}: no Δm% or Δp: {'; '.join(why)}"]
    try:
        for name, score in (("delta_m", delta_m), ("delta_p", delta_p)):
            values = [
                score(s["test"], baseline, {t: s["higher_is_better"][t] for t in tasks})
                for _, s in runs
            ]
            setattr(row, name, np.array(values))
    except ValueError as error:
        row.delta_m = row.delta_p = None
        return [f"{row.label}: no Δm% or Δp: {error}"]
    row.delta_tasks = tuple(tasks)
    return []


def _arrow(higher: bool) -> str:
    return "↑" if higher else "↓"


def _cells(report: Report, row: Row) -> list[tuple[float, float] | None]:
    cells = [mean_std(row.values[c]) if c in row.values else None for c in report.columns]
    for values in (row.delta_m, row.delta_p):
        cells.append(None if values is None else mean_std(values))
    return cells


def to_markdown(report: Report) -> str:
    """A Markdown table: mean ± std over seeds, Δm% and Δp in percent, mean rank; then the
    notes (excluded runs first), when there are any. The Δm% and Δp headers name the tasks
    they count when the runs declare auxiliary tasks (``Δm% (primary: digit) ↓``)."""
    scope = f" ({report.delta_scope})" if report.delta_scope else ""
    headers = [
        "method",
        "runs",
        *(f"{t} {m} {_arrow(report.higher_is_better[(t, m)])}" for t, m in report.columns),
        f"Δm%{scope} ↓",
        f"Δp{scope} ↑",
        "mean rank ↓",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    rows = ([report.stl] if report.stl else []) + report.rows
    digits = [4] * len(report.columns) + [2, 2]
    for row in rows:
        cells = [row.label, str(len(row.seeds))]
        deltas = len(report.columns)
        for i, (cell, d) in enumerate(zip(_cells(report, row), digits, strict=True)):
            if cell is None:
                cells.append(row.baseline_note if i >= deltas and row.baseline_note else "–")
            elif np.isnan(cell[1]):
                cells.append(f"{cell[0]:.{d}f}")
            else:
                cells.append(f"{cell[0]:.{d}f} ± {cell[1]:.{d}f}")
        cells.append("–" if row.rank is None else f"{row.rank:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if report.notes:
        count = len(report.excluded)
        left_out = f" ({count} run{'s' * (count != 1)} excluded)" if count else ""
        lines += ["", f"Notes{left_out}:", *(f"- {note}" for note in report.notes)]
    return "\n".join(lines)


def to_csv(report: Report) -> str:
    """CSV with full precision: ``method, runs``, then ``<task>/<metric>`` and ``... std`` per
    column, ``delta_m``, ``delta_m std``, ``delta_p``, ``delta_p std``, ``mean_rank``,
    ``delta_tasks`` (the tasks Δm% and Δp count, joined by ``+``); empty cells where a value
    does not exist.
    """
    names = [f"{t}/{m}" for t, m in report.columns] + ["delta_m", "delta_p"]
    header = ["method", "runs", *(n + s for n in names for s in ("", " std"))]
    header += ["mean_rank", "delta_tasks"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in ([report.stl] if report.stl else []) + report.rows:
        cells: list[Any] = [row.label, len(row.seeds)]
        for cell in _cells(report, row):
            cells += ["", ""] if cell is None else [repr(v) if np.isfinite(v) else "" for v in cell]
        cells.append("" if row.rank is None else repr(row.rank))
        cells.append("+".join(row.delta_tasks or ()))
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
