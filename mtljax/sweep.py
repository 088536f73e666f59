"""Sweeps: methods × hyper-parameter grid × seeds, plus single-task baselines, in one process.

A sweep expands a base :class:`~mtljax.config.RunConfig` into a deterministic list of runs and
trains them in order, in this process, loading each dataset once (so a method or dataset that
the config file registers at import is known to every run). Run folders::

    WORKDIR/stl_<task>/seed<k>            single-task baseline (method EW, data.tasks=[task],
                                          no roles: data.primary and data.levels cleared)
    WORKDIR/<method>[_<key>=<value>...]/seed<k>

Order: the single-task baselines (task, then seed), then every method in the given order, its
grid points in order, then seeds. ``--shard i/n`` keeps runs ``i, i+n, i+2n, ...`` of that list,
so ``n`` processes given ``0/n ... n-1/n`` split a sweep disjointly and completely.

Re-running a sweep is cheap and safe: a run whose ``summary.json`` exists is complete and is
skipped (after checking that its stored config matches the planned one, so a changed sweep does
not silently reuse stale results). A run folder without one (an interrupted run) resumes from
its latest checkpoint when the config has ``schedule.checkpoint_every > 0`` (``--set
schedule.checkpoint_every=N``, :mod:`mtljax.checkpoint`) and is trained again from scratch
otherwise.

Grids: ``--grid method.kw.c=0.2,0.4`` (repeatable) gives the values of one config field; the
sweep takes the Cartesian product of all grids, or ``--random N`` distinct points drawn from it
with a seeded generator. A ``method.kw.<name>`` key only applies to methods whose factory takes
``<name>``: ``--methods ew,cagrad --grid method.kw.c=0.2,0.4`` runs EW once and CAGrad twice.
Single-task baselines use the base config (method EW, no grid).

A sweep never plans one run twice: a seed, method or grid value given twice (``--seeds 0,0``)
is an error that names it. Two sweeps may work on one folder at once (two shells, or a shard
started twice): each run is trained under an exclusive lock (:mod:`mtljax.runlock`,
``<run folder>.lock``), and a sweep that finds a run locked by another process skips it with
one line naming that process; run the sweep again afterwards to pick up anything the other
process did not finish.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mtljax.config import OUTPUT_FIELDS, RunConfig, canonical_path, changed_fields, parse_value
from mtljax.methods import REGISTRY, get_factory
from mtljax.run import experiment, run
from mtljax.run.summary import SUMMARY
from mtljax.runlock import RunLock, lock_path


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its group label (the folder above ``seed<k>``) and its config."""

    label: str
    config: RunConfig  # with ``workdir`` set to WORKDIR/<label>/seed<k>

    @property
    def name(self) -> str:
        return f"{self.label}/seed{self.config.seed}"


@dataclasses.dataclass
class SweepResult:
    """Names (``label/seed<k>``) of the runs trained, skipped as complete, skipped because
    another process was training them (``busy``), and failed."""

    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    busy: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> error


def parse_list(text: str) -> list[Any]:
    """``"0.2,0.4"`` -> ``[0.2, 0.4]``; JSON values allowed (``"[64],[64,64]"``, ``"a,b"``)."""
    try:
        return list(json.loads(f"[{text}]"))
    except json.JSONDecodeError:
        return [parse_value(v.strip()) for v in text.split(",")]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["method.kw.c=0.2,0.4", "lr=1e-3,1e-2"]`` ->
    ``{"method.kw.c": [0.2, 0.4], "optimizer.lr": [...]}`` (keys in their canonical form,
    :func:`mtljax.config.canonical_path`)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = canonical_path(key)
        if not sep or not key or not values.strip():
            raise ValueError(f"--grid expects key=v1,v2,..., got {item!r}.")
        if key in ("method.name", "seed", "workdir"):
            raise ValueError(f"--grid cannot vary {key!r}; use --methods/--seeds/--workdir.")
        if key in grid:
            raise ValueError(f"--grid key {key!r} given twice.")
        grid[key] = parse_list(values)
        _check_unique(grid[key], f"--grid {key}")
    return grid


def _check_unique(values: Sequence[Any], what: str) -> None:
    """Raises ``ValueError`` naming the first value that ``values`` holds twice."""
    seen = []
    for value in values:
        if value in seen:
            raise ValueError(f"{what} lists {value!r} twice; each value is one run.")
        seen.append(value)


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``; the index counts from 0."""
    index, sep, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = -1
    if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard expects i/n with 0 <= i < n, got {text!r}.")
    return index, count


def _accepts(method: str, key: str) -> bool:
    """Whether grid ``key`` applies to ``method`` (``method.kw.x`` needs a factory taking x)."""
    if not key.startswith("method.kw."):
        return True
    sub = key.removeprefix("method.kw.")
    entry = REGISTRY.get(method)
    if entry is None or sub in entry.presets:
        return False
    parameters = inspect.signature(get_factory(method)).parameters.values()
    return any(p.name == sub or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def grid_points(
    grid: Mapping[str, Sequence[Any]], *, random: int | None = None, random_seed: int = 0
) -> list[dict[str, Any]]:
    """The Cartesian product of ``grid`` (keys in the given order, last key fastest), or
    ``random`` distinct points of it drawn with ``numpy.random.default_rng(random_seed)``
    and kept in product order.
    """
    keys = list(grid)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    if random is not None:
        if random < 1:
            raise ValueError(f"--random must be >= 1, got {random}.")
        if random < len(points):
            rng = np.random.default_rng(random_seed)
            chosen = np.sort(rng.choice(len(points), size=random, replace=False))
            points = [points[i] for i in chosen]
    return points


def _label(method: str, point: Mapping[str, Any]) -> str:
    """``cagrad`` + ``{"method.kw.c": 0.4}`` -> ``cagrad_c=0.4`` (folder-safe)."""
    short = [key.rpartition(".")[2] for key in point]
    names = short if len(set(short)) == len(short) else list(point)
    parts = [method]
    for name, value in zip(names, point.values(), strict=True):
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{name}={text}")
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", "_".join(parts))


def plan_sweep(
    base: RunConfig,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    workdir: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]] | None = None,
    random: int | None = None,
    random_seed: int = 0,
    stl_tasks: Sequence[str] = (),
) -> list[PlannedRun]:
    """Every run of a sweep, in the order of the module docstring.

    Args:
      base: the config every run starts from (``--set`` overrides already applied).
      methods: registry names.
      seeds: the ``seed`` values of every group.
      workdir: the sweep folder.
      grid: ``{config key: values}`` (see :func:`parse_grid`).
      random: draw this many grid points instead of the full product (see :func:`grid_points`).
      random_seed: the seed of those draws.
      stl_tasks: tasks that get a single-task baseline (method EW) per seed.

    Raises:
      ValueError: no methods or seeds, a method, seed or grid value given twice, an unknown
        method, a ``method.kw`` grid key that no method takes, a grid value the config
        rejects, or two runs that would share a folder.
    """
    if not methods or not seeds:
        raise ValueError("A sweep needs at least one method and one seed.")
    _check_unique(seeds, "--seeds")
    _check_unique(methods, "--methods")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; known: {', '.join(REGISTRY)}.")
    grid = dict(grid or {})
    unused = [k for k in grid if not any(_accepts(m, k) for m in methods)]
    if unused:
        raise ValueError(f"No method of {list(methods)} takes the grid key(s) {unused}.")
    runs = []

    def add(label, overrides):
        for seed in seeds:
            path = os.path.join(os.fspath(workdir), label, f"seed{seed}")
            runs.append(
                PlannedRun(label, base.replace({**overrides, "seed": seed, "workdir": path}))
            )

    for task in stl_tasks:
        # A task trained alone has no roles: its baseline is the same whichever task is primary.
        single = {"data.tasks": [task], "data.primary": None, "data.levels": {}}
        add(f"stl_{task}", {"method.name": "ew", "method.kw": {}, **single})
    for method in methods:
        applicable = {k: v for k, v in grid.items() if _accepts(method, k)}
        for point in grid_points(applicable, random=random, random_seed=random_seed):
            add(_label(method, point), {"method.name": method, **point})
    folders: dict[str, PlannedRun] = {}
    for planned in runs:
        other = folders.setdefault(planned.config.workdir, planned)
        if other is not planned:  # grid values that differ only in characters not folder-safe
            differ = changed_fields(other.config.to_dict(), planned.config.to_dict(), ())
            raise ValueError(
                f"Two runs of the sweep (differing in {differ}) would share the folder "
                f"{planned.config.workdir}; spell their grid values differently."
            )
    return runs


def shard(runs: Sequence[PlannedRun], index: int, count: int) -> list[PlannedRun]:
    """Runs ``index, index + count, ...`` of ``runs``."""
    return list(runs[index::count])


def run_status(run: PlannedRun) -> str:
    """``"complete"`` (``summary.json`` exists), ``"incomplete"`` (folder without it) or
    ``"new"``.

    Raises:
      ValueError: the stored summary's config differs from the planned one outside the
        output fields (:data:`mtljax.config.OUTPUT_FIELDS`).
    """
    folder = run.config.workdir
    path = os.path.join(folder, SUMMARY)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)["config"]
        except (json.JSONDecodeError, KeyError):
            return "incomplete"  # cut off while being written
        differ = changed_fields(stored, run.config.to_dict(), OUTPUT_FIELDS)
        if differ:
            raise ValueError(
                f"{path} was written by another config (differs in {differ}); "
                "delete that folder or use another --workdir."
            )
        return "complete"
    return "incomplete" if os.path.isdir(folder) else "new"


def _dataset_key(config: RunConfig) -> str:
    return json.dumps(dataclasses.asdict(config.data) | {"tasks": None}, sort_keys=True)


def run_sweep(
    runs: Sequence[PlannedRun],
    *,
    data: Mapping[tuple, Any] | None = None,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Trains the runs that are not complete, in order; see the module docstring.

    Each run is trained under its lock (:mod:`mtljax.runlock`); a run whose lock another
    process holds is recorded in ``busy`` and skipped. A run that raises is recorded in
    ``failed`` (its folder stays incomplete, so the next invocation retries it) and the sweep
    goes on.

    Args:
      runs: from :func:`plan_sweep` (or :func:`shard`).
      data: datasets already loaded, by their ``config.data`` as JSON (without ``tasks``);
        others are loaded once on first use.
      log: receives one progress line per run.
    """
    result = SweepResult()
    cache = dict(data or {})
    for index, planned in enumerate(runs, 1):
        prefix = f"[{index}/{len(runs)}] {planned.name}"
        lock = RunLock(lock_path(planned.config.workdir))
        try:
            acquired = lock.acquire()
        except OSError as error:  # e.g. the sweep folder is not writable
            result.failed[planned.name] = f"cannot lock the run: {error}"
            log(f"{prefix}: FAILED cannot lock the run: {error}")
            continue
        if not acquired:
            result.busy.append(planned.name)
            log(f"{prefix}: being trained by another process ({lock.holder()}), skipped")
            continue
        try:
            # The status is read under the lock: the other process may have just finished it.
            _train_one(planned, run_status(planned), prefix, cache, result, log)
        finally:
            lock.release()
    return result


def _train_one(
    planned: PlannedRun,
    status: str,
    prefix: str,
    cache: dict,
    result: SweepResult,
    log: Callable[[str], None],
) -> None:
    """Skips a complete run, or trains it and records the outcome in ``result``."""
    if status == "complete":
        result.skipped.append(planned.name)
        log(f"{prefix}: complete, skipped")
        return
    key = _dataset_key(planned.config)
    if key not in cache:
        cache[key] = experiment.load_data(planned.config)
    start = time.perf_counter()
    try:
        summary = run(
            planned.config,
            data=cache[key],
            progress=False,
            resume=status == "incomplete" and bool(planned.config.schedule.checkpoint_every),
            overwrite=True,  # a summary cut off while being written counts as incomplete
        )
    except Exception as error:  # noqa: BLE001 - one failing run must not stop the sweep
        result.failed[planned.name] = f"{type(error).__name__}: {error}"
        log(f"{prefix}: FAILED {type(error).__name__}: {error}")
        log(traceback.format_exc(limit=-3))
        return
    result.ran.append(planned.name)
    # Each task's first metric is its headline metric.
    test = ", ".join(
        f"{t} {m} {v:.4f}" for t, ms in summary["test"].items() for m, v in list(ms.items())[:1]
    )
    again = ""
    if status == "incomplete":
        resumed = summary.get("resumed_from", 0)
        again = f" (resumed from step {resumed})" if resumed else " (was incomplete: re-run)"
    log(f"{prefix}: test {test} ({time.perf_counter() - start:.1f} s){again}")


def sweep(
    base: RunConfig,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    workdir: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]] | None = None,
    random: int | None = None,
    random_seed: int = 0,
    stl: bool = True,
    shard_spec: tuple[int, int] = (0, 1),
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Plans a sweep (:func:`plan_sweep`), keeps one shard of it and runs it (:func:`run_sweep`).

    With ``stl``, every task of the base config (all of the dataset's when ``data.tasks`` is
    ``None``) gets a single-task baseline per seed. With ``dry_run``, logs each run of the
    shard with its status (:func:`run_status`) and trains nothing.
    """
    data = {}
    stl_tasks = ()
    if stl:
        stl_tasks = base.data.tasks
        if stl_tasks is None:
            data[_dataset_key(base)] = experiment.load_data(base)
            stl_tasks = data[_dataset_key(base)].tasks.names
    runs = plan_sweep(
        base,
        methods=methods,
        seeds=seeds,
        workdir=workdir,
        grid=grid,
        random=random,
        random_seed=random_seed,
        stl_tasks=stl_tasks,
    )
    runs = shard(runs, *shard_spec)
    if dry_run:
        for planned in runs:
            log(f"{planned.name}: {run_status(planned)}  {planned.config.workdir}")
        return SweepResult()
    return run_sweep(runs, data=data, log=log)
