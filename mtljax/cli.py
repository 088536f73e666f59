"""The ``mtljax`` command line.

::

    mtljax methods                                   # every method: kind, level, summary, paper
    mtljax run multidigits --workdir runs/md --set method=cagrad --set method_kw.c=0.4
    mtljax run path/to/config.py:ARG --workdir DIR  # any file with get_config(arg=None)
    mtljax run multidigits --workdir runs/md --set checkpoint_every=100 --resume  # restartable
    mtljax plot runs/md                              # PNG plots of a run's metrics.jsonl
    mtljax sweep multidigits --methods ew,pcgrad --seeds 0,1,2 --workdir runs/sweep
    mtljax report runs/sweep --plots                 # mean ± std, Δm%, Δp, rank; pareto.png

``sweep`` and ``report`` are described in :mod:`mtljax.sweep`, :mod:`mtljax.report` and
docs/workflow.md.

A config is a module of ``experiments/configs`` (by name) or a Python file, whose
``get_config(arg=None)`` returns a :class:`~mtljax.runner.RunConfig` or a dict of its fields;
``CONFIG:ARG`` passes ``ARG`` to it. ``--set key=value`` overrides a field (``method_kw.c``
sets one key of a dict field); values are parsed as JSON when they are valid JSON
(``steps=100``, ``hidden=[64,64]``, ``tasks=["left"]``, ``level=null``) and kept as strings
otherwise (``method=cagrad``).

A config may instead return a built-in benchmark (:mod:`mtljax.benchmarks`, e.g. ``mtljax run
toy2d --workdir DIR``): ``--set`` then overrides the benchmark's fields, which runs itself,
prints its result table and writes ``summary.json`` to the workdir.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_DIRS = (
    Path.cwd() / "experiments" / "configs",
    Path(__file__).resolve().parents[1] / "experiments" / "configs",
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with left-aligned columns; floats printed with 4 significant digits."""

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def parse_value(text: str) -> Any:
    """A JSON literal when ``text`` is one (numbers, lists, true/null...), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b.c": "x"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}.")
        out[key.strip()] = parse_value(value)
    return out


def available_configs() -> list[str]:
    return sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("[!_]*.py")})


def load_config(spec: str):
    """Calls ``get_config(arg)`` of the config named by ``spec`` (``NAME[:ARG]`` or a path)."""
    from mtljax.runner import as_config

    name, _, arg = spec.partition(":")
    path = Path(name)
    if not (path.suffix == ".py" and path.is_file()):
        path = next((d / f"{name}.py" for d in CONFIG_DIRS if (d / f"{name}.py").is_file()), None)
    if path is not None:
        module_spec = importlib.util.spec_from_file_location(f"_mtljax_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise ValueError(
                f"No config {name!r}: not a file, not in experiments/configs "
                f"({', '.join(available_configs())}), not an importable module."
            ) from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"Config {name!r} has no get_config(arg=None) function.")
    config = module.get_config(arg or None)
    # A built-in benchmark (mtljax.benchmarks) runs itself: returned as is.
    return config if hasattr(config, "run") and hasattr(config, "table") else as_config(config)


def methods_table() -> str:
    """Every registry name with its kind, level, summary and paper."""
    import inspect

    from mtljax.methods import REGISTRY, get_factory, get_method

    rows = []
    for name, entry in REGISTRY.items():
        # Kind and level do not depend on T; T = 3 also builds the robust aggregators (T ≥ 3).
        required = [
            p.name
            for p in inspect.signature(get_factory(name)).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in entry.presets
        ]
        try:
            if required:
                kind, level = "?", "needs " + ", ".join(f"{p}=" for p in required)
            else:
                method = get_method(name, 3)
                kind, level = method.kind, method.level
        except Exception as error:  # noqa: BLE001 - one broken module must not hide the rest
            kind, level = "unavailable", type(error).__name__
        rows.append((name, kind, level, entry.summary, entry.paper))
    return format_table(("name", "kind", "level", "summary", "paper"), rows)


def results_table(summary: dict) -> str:
    """Per-task validation and test metrics of a run summary."""
    rows = []
    for task in summary["tasks"]:
        for metric, value in summary["test"][task].items():
            rows.append((task, metric, summary["val"][task][metric], value))
    return format_table(("task", "metric", f"val@{summary['best_step']}", "test"), rows)


def _cmd_methods(args) -> int:
    del args
    print(methods_table())
    return 0


def _cmd_run(args) -> int:
    from mtljax.runner import run

    config = load_config(args.config)
    overrides = parse_overrides(args.set or [])
    if hasattr(config, "run"):
        benchmark = config.replace(overrides)
        print(benchmark.table(benchmark.run(args.workdir)))
        if args.workdir:
            print(f"summary: {Path(args.workdir) / 'summary.json'}")
        return 0
    if args.workdir:
        overrides["workdir"] = args.workdir
    config = config.replace(overrides)
    summary = run(config, resume=args.resume)
    print(results_table(summary))
    print(
        f"best step {summary['best_step']} · {summary['steps_per_s']:.1f} steps/s · "
        f"{summary['wall_time_s']:.1f} s wall" + (f" · {config.workdir}" if config.workdir else "")
    )
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}.") from None


def _cmd_sweep(args) -> int:
    from mtljax.sweep import parse_grid, parse_shard, sweep

    config = load_config(args.config)
    if hasattr(config, "run"):
        raise ValueError(f"{args.config!r} is a benchmark; mtljax sweep runs RunConfig configs.")
    config = config.replace(parse_overrides(args.set or []))
    result = sweep(
        config,
        methods=args.methods.split(",") if args.methods else [config.method],
        seeds=_int_list(args.seeds, "--seeds") if args.seeds else [config.seed],
        workdir=args.workdir,
        grid=parse_grid(args.grid or []),
        random=args.random,
        random_seed=args.random_seed,
        stl=args.stl,
        shard_spec=parse_shard(args.shard),
        dry_run=args.dry_run,
    )
    if not args.dry_run:
        print(
            f"ran {len(result.ran)}, skipped {len(result.skipped)} (complete), "
            f"failed {len(result.failed)}"
            + (f": {', '.join(result.failed)}" if result.failed else "")
        )
    return 1 if result.failed else 0


def _cmd_report(args) -> int:
    from mtljax.report import build_report, to_csv, to_markdown, write_plots

    report = build_report(args.dirs)
    text = to_markdown(report) + "\n" if args.format == "md" else to_csv(report)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.plots:
        for path in write_plots(report, args.dirs[0]):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_plot(args) -> int:
    from mtljax.plots import plot_run

    for path in plot_run(args.workdir):
        print(path)
    return 0


def _cmd_launch(args) -> int:
    from mtljax.launch import launch_local

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    codes = launch_local(command, args.num_processes, devices_per_process=args.devices_per_process,
                         port=args.port, timeout=args.timeout)
    for process_id, code in enumerate(codes):
        if code:
            print(f"mtljax launch: process {process_id} exited with {code}", file=sys.stderr)
    return next((abs(code) for code in codes if code), 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtljax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the methods").set_defaults(fn=_cmd_methods)
    run_parser = sub.add_parser("run", help="train one config")
    run_parser.add_argument("config", help="NAME[:ARG] under experiments/configs, or a .py path")
    run_parser.add_argument("--workdir", help="output folder (metrics.jsonl, summary.json)")
    run_parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config field; repeatable"
    )
    run_parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --workdir (see --set checkpoint_every=N)",
    )
    run_parser.set_defaults(fn=_cmd_run)
    sweep_parser = sub.add_parser(
        "sweep", help="methods x grid x seeds (+ single-task baselines), resumable, shardable"
    )
    sweep_parser.add_argument("config", help="NAME[:ARG] under experiments/configs, or a .py path")
    sweep_parser.add_argument("--workdir", required=True, help="sweep folder")
    sweep_parser.add_argument("--methods", help="comma-separated names (default: the config's)")
    sweep_parser.add_argument("--seeds", help="comma-separated seeds (default: the config's)")
    sweep_parser.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2", help="values of a config key; repeatable"
    )
    sweep_parser.add_argument("--random", type=int, help="N random grid points, not all")
    sweep_parser.add_argument("--random-seed", type=int, default=0, help="seed of --random")
    sweep_parser.add_argument("--shard", default="0/1", help="i/n: run runs i, i+n, ... only")
    sweep_parser.add_argument(
        "--stl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="single-task baseline runs per task and seed (for Δm%%; default on)",
    )
    sweep_parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and their status, train nothing"
    )
    sweep_parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config field; repeatable"
    )
    sweep_parser.set_defaults(fn=_cmd_sweep)
    report_parser = sub.add_parser("report", help="table over runs: mean ± std, Δm%%, rank")
    report_parser.add_argument("dirs", nargs="+", help="folders holding summary.json files")
    report_parser.add_argument("--format", choices=("md", "csv"), default="md")
    report_parser.add_argument("--out", help="write the table to this file (default: stdout)")
    report_parser.add_argument(
        "--plots", action="store_true", help="also write the Pareto plot into the first folder"
    )
    report_parser.set_defaults(fn=_cmd_report)
    plot_parser = sub.add_parser("plot", help="plot a run's metrics.jsonl")
    plot_parser.add_argument("workdir")
    plot_parser.set_defaults(fn=_cmd_plot)
    launch_parser = sub.add_parser(
        "launch", help="run a command as N processes of one jax.distributed job on this machine"
    )
    launch_parser.add_argument("-n", "--num-processes", type=int, required=True)
    launch_parser.add_argument("--devices-per-process", type=int,
                               help="force this many CPU devices in each process")
    launch_parser.add_argument("--port", type=int, help="coordinator port (default: a free one)")
    launch_parser.add_argument("--timeout", type=float, help="stop every process after S seconds")
    launch_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    launch_parser.set_defaults(fn=_cmd_launch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtljax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, RuntimeError, TimeoutError) as error:
        print(f"mtljax: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
