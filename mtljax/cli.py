"""The ``mtljax`` command line.

::

    mtljax methods                                   # every method: kind, level, summary, paper
    mtljax datasets                                  # the registered datasets (data.name)
    mtljax configs                                   # the shipped configs; `configs NAME`: fields
    mtljax run multidigits --workdir runs/md --set method.name=cagrad --set method.kw.c=0.4
    mtljax run nyuv2 --set data.root=DIR --workdir runs/nyu     # a dataset read from disk
    mtljax run path/to/config.py:ARG --workdir DIR  # any file with get_config(arg=None)
    mtljax run multidigits --workdir runs/md --set schedule.checkpoint_every=100 --resume
    mtljax plot runs/md                              # PNG plots of a run's metrics.jsonl
    mtljax sweep multidigits --methods ew,pcgrad --seeds 0,1,2 --workdir runs/sweep
    mtljax report runs/sweep --plots                 # mean ± std, Δm%, Δp, rank; pareto.png

``sweep`` and ``report`` are described in :mod:`mtljax.sweep`, :mod:`mtljax.report` and
docs/workflow.md.

A config is a shipped one (:mod:`mtljax.configs`, by name), a Python file or a module whose
``get_config(arg=None)`` returns a :class:`~mtljax.config.RunConfig` or a dict of its fields;
``CONFIG:ARG`` passes ``ARG`` to it. ``--set path=value`` overrides a field
(``schedule.steps=20``, ``method.kw.c=0.4``, ``data.root=DIR``); the value is checked against
the field's type (:mod:`mtljax.config`; ``mtljax run CONFIG --help`` lists the fields). The
flat names of mtljax 0.1 (``steps``, ``method_kw.c``...) are accepted as aliases.

``mtljax run`` into a workdir that holds a finished run (a ``summary.json``) refuses unless
given ``--resume`` (continue from its last checkpoint) or ``--overwrite`` (clear it first).

A config may instead return a built-in benchmark (:mod:`mtljax.benchmarks`, e.g. ``mtljax run
toy2d --workdir DIR``): ``--set`` then overrides the benchmark's fields, which runs itself,
prints its result table and writes ``summary.json`` to the workdir.

Errors: a mistake in the user's input (a :class:`~mtljax.config.ConfigError`: a field, a
value, a config file, a workdir) is one line on stderr, ``mtljax: error: ...``, and exit status
2, the argparse convention for usage errors; an error that mtljax raises with a message for a
run that cannot go on (a missing dataset file, a non-finite loss under ``nonfinite=raise``, a
damaged checkpoint) is one line and status 1 (:func:`failure`). Anything else is a bug and
keeps its traceback, as does every error when ``MTLJAX_DEBUG=1`` is set. Ctrl-C prints one
line (with a run: the step, and whether ``--resume`` continues it) and exits 130; a closed
pipe (``mtljax methods | head -3``) ends the command quietly with 141, the status of a process
killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import linecache
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import mtljax
from mtljax import configs
from mtljax._version import __version__
from mtljax.config import ConfigError, RunConfig, fields, parse_overrides, type_name
from mtljax.tables import format_table


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


def configs_table() -> str:
    """The shipped configs with the first line of their docstrings."""
    return format_table(("config", "summary"), [(n, configs.summary(n)) for n in configs.names()])


def fields_table(config: RunConfig) -> str:
    """Every field of ``config``: its path, type, default and value in this config."""
    rows = [
        (path, type_name(hint), repr(default), repr(value) if value != default else "", text)
        for path, hint, default, value, text in fields(config)
    ]
    return format_table(("field", "type", "default", "this config", "help"), rows)


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


def _cmd_datasets(args) -> int:
    del args
    from mtljax.data.registry import DATASETS

    rows = [
        (e.name, e.default_model, "yes" if e.multi_input else "", e.summary)
        for e in DATASETS.values()
    ]
    print(format_table(("dataset", "default model", "multi-input", "summary"), rows))
    return 0


def _cmd_configs(args) -> int:
    if args.config is None:
        print(configs_table())
        return 0
    return _describe(args.config)


def load_config(spec: str):
    """:func:`mtljax.configs.load`, with the errors of the user's config as ``ConfigError``.

    Raises:
      ConfigError: a syntax error in the config file (its file and line), no such config, no
        ``get_config``, or a value ``get_config`` returns that is not a config.
    """
    try:
        return configs.load(spec)
    except SyntaxError as error:
        raise ConfigError(
            f"syntax error in config file {error.filename}, line {error.lineno}: {error.msg}."
        ) from error
    except ValueError as error:
        if isinstance(error, ConfigError) or not _raised_by_mtljax(error):
            raise
        raise ConfigError(str(error)) from error


def _describe(spec: str) -> int:
    config = load_config(spec)
    if isinstance(config, RunConfig):
        print(f"{spec}: --set FIELD=VALUE overrides any of\n")
        print(fields_table(config))
    else:
        print(f"{spec} is a benchmark; --set FIELD=VALUE overrides any of\n")
        rows = [(k, repr(v)) for k, v in vars(config).items()]
        print(format_table(("field", "value"), rows))
    return 0


def _cmd_run(args) -> int:
    from mtljax.run import run

    if args.help or args.config is None:
        print(args.parser.format_help())
        if args.config is not None:
            return _describe(args.config)
        print(configs_table())
        return 0 if args.help else 2
    config = load_config(args.config)
    overrides = parse_overrides(args.set or [])
    if not isinstance(config, RunConfig):
        try:
            benchmark = config.replace(overrides)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        print(benchmark.table(benchmark.run(args.workdir)))
        if args.workdir:
            print(f"summary: {Path(args.workdir) / 'summary.json'}")
        return 0
    if args.workdir:
        overrides["workdir"] = args.workdir
    config = config.replace(overrides)
    summary = run(config, resume=args.resume, overwrite=args.overwrite)
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
        raise ConfigError(f"{flag} expects comma-separated integers, got {text!r}.") from None


def _cmd_sweep(args) -> int:
    from mtljax.sweep import parse_grid, parse_shard, sweep

    config = load_config(args.config)
    if not isinstance(config, RunConfig):
        raise ConfigError(f"{args.config!r} is a benchmark; mtljax sweep runs RunConfig configs.")
    config = config.replace(parse_overrides(args.set or []))
    result = sweep(
        config,
        methods=args.methods.split(",") if args.methods else [config.method.name],
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

    report = build_report(args.dirs, all_tasks=args.all_tasks)
    for note in report.notes:
        print(f"mtljax report: {note}", file=sys.stderr)
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

    if not (Path(args.workdir) / "metrics.jsonl").is_file():
        what = "holds no metrics.jsonl" if Path(args.workdir).is_dir() else "is not a folder"
        raise ConfigError(
            f"{args.workdir} {what}; mtljax plot takes the --workdir of one run (mtljax run)."
        )
    for path in plot_run(args.workdir):
        print(path)
    return 0


def _cmd_launch(args) -> int:
    from mtljax.launch import launch_local

    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    codes = launch_local(
        command,
        args.num_processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        timeout=args.timeout,
    )
    for process_id, code in enumerate(codes):
        if code:
            print(f"mtljax launch: process {process_id} exited with {code}", file=sys.stderr)
    return next((abs(code) for code in codes if code), 0)


CONFIG_HELP = "a shipped config NAME[:ARG] (mtljax configs), a .py file or a module"


def _add_run_parser(sub) -> None:
    run_parser = sub.add_parser(
        "run",
        help="train one config",
        add_help=False,
        epilog="`mtljax run CONFIG --help` lists the config's fields, types and defaults.",
    )
    run_parser.add_argument("config", nargs="?", help=CONFIG_HELP)
    run_parser.add_argument(
        "-h",
        "--help",
        action="store_true",
        help="show this help (and with CONFIG, its fields) and exit",
    )
    run_parser.add_argument("--workdir", help="output folder (metrics.jsonl, summary.json)")
    run_parser.add_argument(
        "--set",
        action="append",
        metavar="FIELD=VALUE",
        help="override a config field (schedule.steps=20, method.kw.c=0.4); repeatable",
    )
    finished = run_parser.add_mutually_exclusive_group()
    finished.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --workdir (see schedule.checkpoint_every)",
    )
    finished.add_argument(
        "--overwrite", action="store_true", help="replace a finished run in --workdir"
    )
    run_parser.set_defaults(fn=_cmd_run, parser=run_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtljax", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mtljax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the methods").set_defaults(fn=_cmd_methods)
    datasets_parser = sub.add_parser("datasets", help="list the datasets (data.name)")
    datasets_parser.set_defaults(fn=_cmd_datasets)
    configs_parser = sub.add_parser("configs", help="list the configs, or one config's fields")
    configs_parser.add_argument("config", nargs="?", help="NAME[:ARG] or a .py path")
    configs_parser.set_defaults(fn=_cmd_configs)
    _add_run_parser(sub)
    sweep_parser = sub.add_parser(
        "sweep", help="methods x grid x seeds (+ single-task baselines), resumable, shardable"
    )
    sweep_parser.add_argument("config", help=CONFIG_HELP)
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
        "--set", action="append", metavar="FIELD=VALUE", help="override a config field; repeatable"
    )
    sweep_parser.set_defaults(fn=_cmd_sweep)
    report_parser = sub.add_parser("report", help="table over runs: mean ± std, Δm%%, rank")
    report_parser.add_argument("dirs", nargs="+", help="folders holding summary.json files")
    report_parser.add_argument("--format", choices=("md", "csv"), default="md")
    report_parser.add_argument("--out", help="write the table to this file (default: stdout)")
    report_parser.add_argument(
        "--plots", action="store_true", help="also write the Pareto plot into the first folder"
    )
    report_parser.add_argument(
        "--all-tasks",
        action="store_true",
        help="Δm%% and Δp over every task, not only the primary ones (when runs declare "
        "auxiliary tasks)",
    )
    report_parser.set_defaults(fn=_cmd_report)
    plot_parser = sub.add_parser("plot", help="plot a run's metrics.jsonl")
    plot_parser.add_argument("workdir")
    plot_parser.set_defaults(fn=_cmd_plot)
    launch_parser = sub.add_parser(
        "launch", help="run a command as N processes of one jax.distributed job on this machine"
    )
    launch_parser.add_argument("-n", "--num-processes", type=int, required=True)
    launch_parser.add_argument(
        "--devices-per-process", type=int, help="force this many CPU devices in each process"
    )
    launch_parser.add_argument("--port", type=int, help="coordinator port (default: a free one)")
    launch_parser.add_argument("--timeout", type=float, help="stop every process after S seconds")
    launch_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    launch_parser.set_defaults(fn=_cmd_launch)
    return parser


# The types of the errors mtljax raises with a message for a run that cannot go on.
RUN_ERRORS = (ValueError, RuntimeError, OSError, KeyError, ImportError)


def _raised_by_mtljax(error: BaseException) -> bool:
    """Whether a ``raise`` statement of mtljax's own code raised ``error``: a message written
    for the user. An error from inside JAX, NumPy or Python, or from an operation in mtljax
    (``int("x")``, ``d[key]``), is not: it is a bug, and keeps its traceback."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return _in_package(filename) and line.startswith("raise ")


def failure(error: BaseException) -> tuple[int, str] | None:
    """``(exit status, one-line message)`` of an error the command line reports without a
    traceback (see the module docstring); ``None`` for a bug."""
    if isinstance(error, KeyboardInterrupt):
        return 130, f"mtljax: {str(error) or 'interrupted'}"
    if isinstance(error, ConfigError):
        status = 2
    elif isinstance(error, RUN_ERRORS) and _raised_by_mtljax(error):
        status = 1
    else:
        return None
    # A KeyError's str() is the repr of its argument; the message is the argument itself.
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return status, "mtljax: error: " + " ".join(str(text).split())


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's last flush into a closed pipe does not
    fail again (the recipe of Python's ``signal`` documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no file descriptor (replaced in-process)
        pass
    finally:
        os.close(devnull)


def _in_package(filename: str) -> bool:
    package = os.path.dirname(os.path.abspath(mtljax.__file__))
    return os.path.abspath(filename).startswith(package + os.sep)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning mtljax issues is one line, ``mtljax: warning: ...``; others keep Python's
    format (their source line helps whoever reports them)."""
    if _in_package(filename):
        text = f"mtljax: warning: {' '.join(str(message).split())}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mtljax`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error argparse reported
        return 0 if done.code is None else done.code
    debug = os.environ.get("MTLJAX_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        return _run_command(args, debug)


def _run_command(args, debug: bool) -> int:
    try:
        status = args.fn(args)
        sys.stdout.flush()  # a closed pipe fails here, not after main returns
        return status
    except BrokenPipeError:
        if debug:
            raise
        _silence_stdout()
        return 141
    except (KeyboardInterrupt, *RUN_ERRORS) as error:
        reported = failure(error)
        if debug or reported is None:
            raise
        print(reported[1], file=sys.stderr)
        return reported[0]


if __name__ == "__main__":
    sys.exit(main())
