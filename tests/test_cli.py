"""The `mtljax` command line and the config layer behind it: listing, typed overrides, configs,
outputs, a finished workdir, NaN policy."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from mtljax import configs, report
from mtljax.cli import main
from mtljax.config import (
    ALIASES,
    OUTPUT_FIELDS,
    RESUMABLE_FIELDS,
    ConfigError,
    RunConfig,
    canonical_path,
    changed_fields,
    parse_overrides,
)
from mtljax.methods import REGISTRY
from mtljax.metrics_log import read_jsonl
from mtljax.run import experiment, run
from mtljax.tasks import Tasks

SMALL = [
    "--set",
    "schedule.steps=20",
    "--set",
    "schedule.eval_every=10",
    "--set",
    "data.kwargs.pairs_per_image=1",
    "--set",
    "model.kwargs.hidden=[32]",
    "--set",
    "schedule.batch_size=64",
]
TINY = {
    "schedule": {"steps": 3, "eval_every": 3, "log_every": 10, "diagnostics_every": 0},
    "model": {"kwargs": {"hidden": [16]}},
}


def first_column(table):
    return {line.split()[0] for line in table.splitlines()[2:] if line.strip()}


def test_methods_lists_every_registry_name(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert first_column(out) == set(REGISTRY)
    ew_row = next(line for line in out.splitlines() if line.startswith("ew "))
    assert ew_row.split()[1:3] == ["loss", "parameters"]


def test_console_script_methods():
    script = shutil.which("mtljax") or str(Path(sys.executable).with_name("mtljax"))
    if not Path(script).exists():
        pytest.skip("the mtljax console script is not installed")
    out = subprocess.run(
        [script, "methods"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert first_column(out) == set(REGISTRY)


def test_typed_overrides_and_aliases():
    overrides = parse_overrides(
        [
            "method.name=cagrad",
            "method.kw.c=0.4",
            "schedule.steps=100",
            "model.kwargs.hidden=[64,64]",
            "data.tasks=left",
            "level=null",
            "optimizer.lr=1e-2",
            "tensorboard=false",
        ]
    )
    assert overrides["schedule.steps"] == "100"  # text until the field's type parses it
    config = RunConfig().replace({"method.kw.other": 1}).replace(overrides)
    assert config.method == type(config.method)("cagrad", {"other": 1, "c": 0.4})
    assert config.model.kwargs == {"hidden": [64, 64]} and config.data.tasks == ("left",)
    assert config.schedule.steps == 100 and config.level is None
    assert config.optimizer.lr == 0.01 and config.tensorboard is False
    # The flat names of mtljax 0.1 are aliases of the same fields.
    old = ["method=cagrad", "method_kw.c=0.4", "steps=100", "hidden=[64,64]", 'tasks=["left"]']
    old = parse_overrides([*old, "lr=0.01", "tensorboard=false", "level=null"])
    assert RunConfig().replace({"method_kw.other": 1}).replace(old) == config
    assert canonical_path("method_kw.c") == "method.kw.c" and canonical_path("method.kw") == (
        "method.kw"
    )
    assert all(canonical_path(path) == path for path in ALIASES.values())
    # A whole section as JSON; python values go through the same checks as text.
    assert RunConfig().replace({"method": '{"name": "pcgrad"}'}).method.name == "pcgrad"
    assert RunConfig().replace({"schedule": {"steps": 7}}).schedule.steps == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule.steps=abc", "schedule.steps expects an integer, got 'abc'"),
        ("steps=true", "schedule.steps expects an integer, got 'true'"),
        ("steps=5.5", "schedule.steps expects an integer, got '5.5'"),
        ("lr=fast", "optimizer.lr expects a number, got 'fast'"),
        ("tensorboard=maybe", r"tensorboard expects true or false \(or yes/no, 1/0\), got 'maybe'"),
        ("data.tasks=[1]", r"data.tasks\[0\] expects a string, got 1"),
        ("method.kw=[1]", r"method.kw expects a JSON object, got '\[1\]'"),
        ("schedule.steps=0", "schedule.steps must be a positive integer, got 0"),
        ("lr=-1", "optimizer.lr must be positive"),
        ("nonfinite=maybe", "nonfinite must be one of"),
        ("stepz=1", "Unknown config field 'stepz'; sections and options: data, model"),
        ("schedule.stepz=1", "Unknown config field 'schedule.stepz'; schedule fields: steps"),
        ("schedule.steps.x=1", "schedule.steps is not a dict field"),
    ],
)
def test_override_errors_name_the_field_and_type(override, message, capsys):
    with pytest.raises(ConfigError, match=message):
        RunConfig().replace(parse_overrides([override]))
    assert main(["run", "multidigits", "--set", override]) == 2  # a usage error
    err = capsys.readouterr().err
    assert err.startswith("mtljax: error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_field_sets_are_derived_from_the_metadata_once():
    assert OUTPUT_FIELDS == (
        "schedule.checkpoint_every", "schedule.keep_checkpoints", "tensorboard", "workdir"
    )  # fmt: skip
    assert RESUMABLE_FIELDS == tuple(sorted((*OUTPUT_FIELDS, "schedule.steps")))
    assert report.SEED_FIELDS == ("seed", *OUTPUT_FIELDS)
    config = RunConfig().replace({"method.kw.c": 0.4, "steps": 5, "workdir": "x"})
    assert RunConfig.from_dict(config.to_dict()) == config
    # A stored config with the 0.1 names compares equal to its nested form.
    flat = {"method": "cagrad", "method_kw": {"c": 0.4}, "steps": 5, "hidden": [16]}
    nested = RunConfig.from_dict(flat).to_dict()
    assert nested["model"]["kwargs"] == {"hidden": [16]} and changed_fields(flat, nested, ()) == []
    assert changed_fields(flat, {**nested, "workdir": "y", "seed": 3}, OUTPUT_FIELDS) == ["seed"]


def test_configs_ship_in_the_package_and_files_load(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # shipped configs do not depend on the working directory
    assert {"multidigits", "nyuv2", "cityscapes", "celeba", "office31", "toy2d"} <= set(
        configs.names()
    )
    assert configs.load("multidigits:mgda").method.name == "mgda"
    for name in configs.names():
        config = configs.load(name)
        if isinstance(config, RunConfig):
            doc = sys.modules[f"mtljax.configs.{name}"].__doc__
            assert "Command::" in doc and "Expected" in doc, name
    flat = tmp_path / "flat.py"
    flat.write_text("def get_config(arg=None):\n    return {'method': arg, 'steps': 7}\n")
    assert configs.load(f"{flat}:pcgrad") == RunConfig().replace(
        {"method.name": "pcgrad", "schedule.steps": 7}
    )
    with pytest.raises(ValueError, match="multidigits"):
        configs.load("no_such_config")
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    assert "No config file" in capsys.readouterr().err


def test_help_lists_configs_and_a_configs_fields(capsys):
    assert main(["run", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("--overwrite" in line for line in lines)
    assert all(any(line.startswith(f"{n} ") for line in lines) for n in configs.names())
    assert main(["run", "multidigits", "--help"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line}
    assert rows["schedule.steps"][1:3] == ["int", "1000"]
    assert rows["schedule.eval_every"][1:4] == ["int", "250", "100"]  # default, this config
    assert rows["data.tasks"][1:4] == ["list[str]", "|", "null"]
    assert main(["configs"]) == 0 and "nyuv2" in capsys.readouterr().out
    assert main(["datasets"]) == 0 and "dense_mtan" in capsys.readouterr().out


def test_run_writes_metrics_and_summary(tmp_path, cached_data, capsys):
    workdir = tmp_path / "run"
    status = main(
        [
            "run",
            "multidigits:pcgrad",
            "--workdir",
            str(workdir),
            *SMALL,
            "--set",
            "schedule.diagnostics_every=5",
        ]
    )
    assert status == 0
    tasks = list(cached_data.tasks.names)
    records = read_jsonl(workdir / "metrics.jsonl")
    steps = [r for r in records if "losses" in r]
    assert [r["step"] for r in steps] == [1, 5, 10, 15, 20]
    assert all(list(r["losses"]) == tasks and list(r["weights"]) == tasks for r in steps)
    diag = [r for r in steps if "cosine" in r]
    assert [r["step"] for r in diag] == [1, 5, 10, 15, 20]
    assert len(diag[0]["cosine"]) == len(tasks) and 0 <= diag[0]["conflict_fraction"] <= 1
    assert [r["step"] for r in records if "val" in r] == [10, 20]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["config"]["method"]["name"] == "pcgrad" and summary["best_step"] in (10, 20)
    assert summary["config"]["schedule"]["steps"] == 20
    for split in ("val", "test"):
        assert set(summary[split]) == set(tasks)
        assert all(0 <= summary[split][t]["accuracy"] <= 1 for t in tasks)
    out = capsys.readouterr().out
    assert all(t in out for t in tasks) and "test" in out
    pytest.importorskip("matplotlib")
    assert main(["plot", str(workdir)]) == 0
    for name in ("losses", "val_metrics", "weights", "conflict", "cosine"):
        assert (workdir / f"plot_{name}.png").stat().st_size > 0


def test_finished_workdir_is_refused_then_overwritten(tmp_path, cached_data, capsys):
    args = ["run", "multidigits", "--workdir", str(tmp_path), *SMALL]
    args += ["--set", "schedule.steps=2", "--set", "schedule.diagnostics_every=0"]
    assert main(args) == 0
    first = (tmp_path / "summary.json").read_text()
    (tmp_path / "plot_losses.png").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*args, "--set", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "summary.json").read_text() == first  # untouched
    assert main([*args, "--set", "seed=1", "--set", "tensorboard=false", "--overwrite"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["seed"] == 1
    # The old outputs went first: no stale plot or event files beside the new run.
    assert not (tmp_path / "plot_losses.png").exists() and not (tmp_path / "tb").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "val" in r] == [2]


def nan_task(monkeypatch, data, task):
    """Makes ``task``'s loss NaN on every batch (its gradient too)."""
    tasks = Tasks(
        [
            dataclasses.replace(t, loss=lambda *a, f=t.loss: f(*a) * jnp.nan) if t.name == task
            else t
            for t in data.tasks
        ]
    )  # fmt: skip
    corrupt = dataclasses.replace(data, tasks=tasks)
    monkeypatch.setattr(experiment, "load_data", lambda config: corrupt)


def test_nonfinite_raise_names_task_and_step(tmp_path, small_data, monkeypatch, capsys):
    nan_task(monkeypatch, small_data, "right")
    args = ["run", "multidigits", "--workdir", str(tmp_path), *SMALL]
    assert main([*args, "--set", "schedule.steps=3", "--set", "schedule.diagnostics_every=0"]) == 1
    err = capsys.readouterr().err
    assert "step 1 " in err and "['right']" in err and "left" not in err
    assert "nonfinite=skip_step" in err


@pytest.mark.parametrize("policy", ["skip_step", "skip"])
def test_nonfinite_skip_logs_and_continues(tmp_path, small_data, monkeypatch, policy):
    nan_task(monkeypatch, small_data, "right")
    summary = run({**TINY, "nonfinite": policy, "workdir": str(tmp_path)})
    assert summary["nonfinite_steps"] == 3
    flagged = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "nonfinite" in r]
    assert [(r["step"], r["nonfinite"], r["skipped"]) for r in flagged] == [
        (s, ["right"], True) for s in (1, 2, 3)
    ]


def test_unknown_names_fail_before_training(capsys):
    for override, message in (
        ("optimizer.name=lbfgs", "optimizer.name: unknown optimizer 'lbfgs'; known: adam, adamw"),
        ("method.name=nope", "method.name: Unknown method 'nope'"),
        ("data.name=nope", "data.name: Unknown dataset 'nope'"),
    ):
        assert main(["run", "multidigits", "--set", override]) == 2
        assert message in capsys.readouterr().err
