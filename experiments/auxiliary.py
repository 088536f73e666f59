"""The auxiliary-task benchmark: what task roles buy on AuxDigits, over several seeds.

Command::

    python -m experiments.auxiliary                      # 7 groups × 5 seeds, runs/auxiliary
    python -m experiments.auxiliary --harmful shuffled   # the random-label auxiliary instead
    python -m experiments.auxiliary --quick --seeds 1    # a smoke run (20 steps)

One sweep (:func:`mtljax.sweep.plan_sweep` / :func:`~mtljax.sweep.run_sweep`, so the folders
are those of ``mtljax sweep`` and ``mtljax report DIR`` reads them) of the config
:mod:`mtljax.configs.auxdigits` (primary ``digit``, auxiliaries ``coarse`` (helpful) and
``--harmful`` (``right`` by default), both at level 1) with

* the role-blind methods EW and UPGrad and the role-aware PCD, gradsim and lexicographic,
  trained on all three tasks;
* ``stl_digit``: the primary trained alone (the single-task baseline);
* ``without_<harmful>/ew``: EW on the primary and the helpful auxiliary only, the oracle that
  knows which auxiliary to drop.

Every number is the primary's **test** accuracy at the step its validation accuracy selected
(mean ± sample std over seeds), and Δ its paired difference from the single-task run of the
same seed, in points (mean ± std over seeds). The table is printed and written to
``OUT/auxiliary.md`` (with the date, versions and command); the results to
``OUT/results.json``. Re-running skips the runs already complete, as a sweep does.

Expected: about 5 minutes on 2 shared CPU cores for the default 35 runs. The measured table
and its verdict are in docs/reproductions.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence

import flax
import jax
import numpy as np
import optax

from mtljax import configs
from mtljax.config import RunConfig
from mtljax.methods import REGISTRY
from mtljax.run.summary import SUMMARY
from mtljax.sweep import PlannedRun, plan_sweep, run_sweep
from mtljax.tables import format_table

METHODS = ("ew", "upgrad", "pcd", "gradsim", "lexicographic")
PRIMARY, HELPFUL = "digit", "coarse"
HARMFUL = ("right", "shuffled")
STL = f"stl_{PRIMARY}"
QUICK = {"schedule.steps": 20, "schedule.eval_every": 20, "schedule.diagnostics_every": 0}


def base_config(harmful: str, overrides: Mapping[str, object] | None = None) -> RunConfig:
    """The AuxDigits config training ``digit``, ``coarse`` and ``harmful``, plus ``overrides``."""
    config = configs.load("auxdigits")
    return config.replace({"data.tasks": [PRIMARY, HELPFUL, harmful], **(overrides or {})})


def plan(
    base: RunConfig, *, methods: Sequence[str], seeds: Sequence[int], out: str
) -> list[PlannedRun]:
    """The single-task baseline, every method on all tasks, then EW without the harmful task."""
    harmful = base.data.tasks[-1]
    runs = plan_sweep(base, methods=methods, seeds=seeds, workdir=out, stl_tasks=(PRIMARY,))
    without = base.replace({"data.tasks": [PRIMARY, HELPFUL]})
    folder = os.path.join(out, f"without_{harmful}")
    return runs + plan_sweep(without, methods=["ew"], seeds=seeds, workdir=folder)


def collect(runs: Sequence[PlannedRun], out: str) -> dict[str, list[dict]]:
    """``{group folder relative to out: [summary of each finished run]}``, in plan order."""
    groups: dict[str, list[dict]] = {}
    for planned in runs:
        group = os.path.relpath(os.path.dirname(planned.config.workdir), out)
        path = os.path.join(planned.config.workdir, SUMMARY)
        summaries = groups.setdefault(group, [])
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                summaries.append(json.load(f))
    return groups


def _accuracy(summary: Mapping, task: str) -> float:
    return float(summary["test"][task]["accuracy"]) if task in summary["test"] else np.nan


def _mean_std(values: Sequence[float], *, digits: int = 4, sign: str = "") -> str:
    """``mean ± std`` (sample std) of ``values``, the value alone for one, ``—`` for none."""
    values = np.asarray(values, np.float64)
    if len(values) == 0 or np.isnan(values).all():
        return "—"
    mean = f"{values.mean():{sign}.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {values.std(ddof=1):.{digits}f}"


def table_rows(groups: Mapping[str, Sequence[Mapping]], harmful: str) -> list[tuple[str, ...]]:
    """One row per group: label, seeds, primary test accuracy, Δ vs STL (points, paired by
    seed), helpful and harmful auxiliaries' test accuracy, mean wall time per run.

    Example:
      >>> run = lambda seed, acc: {"config": {"seed": seed}, "wall_time_s": 2.0,
      ...                          "test": {"digit": {"accuracy": acc}}}
      >>> rows = table_rows({"stl_digit": [run(0, 0.8)], "ew": [run(0, 0.85)]}, "right")
      >>> rows[1][:4]
      ('ew', '1', '0.8500', '+5.00')
    """
    stl = {s["config"]["seed"]: _accuracy(s, PRIMARY) for s in groups.get(STL, [])}
    rows = []
    for group, summaries in groups.items():
        seeds = [s["config"]["seed"] for s in summaries]
        primary = [_accuracy(s, PRIMARY) for s in summaries]
        paired = [100 * (a - stl[k]) for k, a in zip(seeds, primary, strict=True) if k in stl]
        rows.append(
            (
                group,
                str(len(summaries)),
                _mean_std(primary),
                "—" if group == STL else _mean_std(paired, digits=2, sign="+"),
                _mean_std([_accuracy(s, HELPFUL) for s in summaries]),
                _mean_std([_accuracy(s, harmful) for s in summaries]),
                f"{np.mean([s['wall_time_s'] for s in summaries]):.1f}" if summaries else "—",
            )
        )
    return rows


def headers(harmful: str) -> tuple[str, ...]:
    """The column names of :func:`table_rows`."""
    return (
        "group",
        "seeds",
        f"{PRIMARY} acc ↑ (primary)",
        "Δ vs STL (points)",
        f"{HELPFUL} acc (helpful)",
        f"{harmful} acc (harmful)",
        "s/run",
    )


def markdown(rows: Sequence[Sequence[str]], harmful: str) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(headers(harmful)) + " |", "|" + "---|" * len(headers(harmful))]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(argv: Sequence[str]) -> str:
    """Date, machine, versions and command, one line each."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"- date: {date}",
            f"- device: {jax.devices()[0].platform}, {os.cpu_count()} cores ({platform.machine()})",
            f"- versions: python {platform.python_version()}, jax {jax.__version__}, "
            f"flax {flax.__version__}, optax {optax.__version__}",
            f"- command: `{' '.join(['python -m experiments.auxiliary', *argv])}`",
        ]
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/auxiliary", help="the sweep folder")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--harmful", choices=HARMFUL, default=HARMFUL[0])
    parser.add_argument("--quick", action="store_true", help="20 steps: a smoke run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns 1 when a run failed or a method is not registered."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    methods = [m for m in args.methods.split(",") if m]
    missing = [m for m in methods if m not in REGISTRY]
    if missing:
        print(f"not registered, left out: {', '.join(missing)}")
    base = base_config(args.harmful, QUICK if args.quick else None)
    available = [m for m in methods if m in REGISTRY]
    runs = plan(base, methods=available, seeds=range(args.seeds), out=args.out)
    result = run_sweep(runs)
    rows = table_rows(collect(runs, args.out), args.harmful)
    print(format_table(headers(args.harmful), rows))
    report = f"{provenance(argv)}\n\n{markdown(rows, args.harmful)}\n"
    with open(os.path.join(args.out, "auxiliary.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"headers": headers(args.harmful), "rows": rows}, f, indent=1)
    return int(bool(result.failed or missing))


if __name__ == "__main__":
    raise SystemExit(main())
