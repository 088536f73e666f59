"""The `mtljax` command line and the runner behind it: listing, overrides, outputs, NaN policy."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from mtljax import objectives, runner
from mtljax.cli import load_config, main, parse_overrides
from mtljax.methods import REGISTRY
from mtljax.metrics_log import read_jsonl
from mtljax.runner import RunConfig

SMALL = [
    "--set",
    "steps=20",
    "--set",
    "eval_every=10",
    "--set",
    "dataset_kw.pairs_per_image=1",
    "--set",
    "hidden=[32]",
    "--set",
    "batch_size=64",
]


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


def test_set_parsing_and_overrides():
    overrides = parse_overrides(
        [
            "method=cagrad",
            "method_kw.c=0.4",
            "steps=100",
            "hidden=[64,64]",
            'tasks=["left"]',
            "level=null",
            "lr=1e-2",
        ]
    )
    assert overrides == {
        "method": "cagrad",
        "method_kw.c": 0.4,
        "steps": 100,
        "hidden": [64, 64],
        "tasks": ["left"],
        "level": None,
        "lr": 0.01,
    }
    config = RunConfig(method_kw={"other": 1}).replace(overrides)
    assert config.method_kw == {"other": 1, "c": 0.4}
    assert config.hidden == (64, 64) and config.tasks == ("left",) and config.steps == 100
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["steps"])
    with pytest.raises(ValueError, match="Unknown config field 'stepz'"):
        config.replace({"stepz": 1})
    with pytest.raises(ValueError, match="not a dict field"):
        config.replace({"steps.x": 1})
    with pytest.raises(ValueError, match="optimizer"):
        config.replace({"optimizer": "lbfgs"})


def test_config_from_file_with_arg(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def get_config(arg=None):\n    return {'method': arg, 'steps': 7}\n")
    config = load_config(f"{path}:pcgrad")
    assert (config.method, config.steps) == ("pcgrad", 7)
    assert load_config("multidigits:mgda").method == "mgda"
    with pytest.raises(ValueError, match="multidigits"):
        load_config("no_such_config")


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
            "diagnostics_every=5",
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
    assert summary["config"]["method"] == "pcgrad" and summary["best_step"] in (10, 20)
    for split in ("val", "test"):
        assert set(summary[split]) == set(tasks)
        assert all(0 <= summary[split][t]["accuracy"] <= 1 for t in tasks)
    out = capsys.readouterr().out
    assert all(t in out for t in tasks) and "test" in out
    pytest.importorskip("matplotlib")
    assert main(["plot", str(workdir)]) == 0
    for name in ("losses", "val_metrics", "weights", "conflict", "cosine"):
        assert (workdir / f"plot_{name}.png").stat().st_size > 0


def nan_for_negative_labels(monkeypatch, data, task):
    """Marks every training label of ``task`` invalid (-1) and makes its loss NaN."""
    real = objectives.softmax_cross_entropy

    def loss(logits, labels, mask=None):
        value = real(logits, jnp.maximum(labels, 0), mask)
        return jnp.where(jnp.any(labels < 0), jnp.nan, value)

    monkeypatch.setattr(objectives, "softmax_cross_entropy", loss)
    train = {**data.splits["train"], task: -jnp.ones_like(data.splits["train"][task])}
    splits = {**data.splits, "train": train}
    corrupt = type(data)(data.tasks, splits, data.num_classes, data.input_shape)
    monkeypatch.setattr(runner, "load_dataset", lambda config: corrupt)


def test_nonfinite_raise_names_task_and_step(tmp_path, small_data, monkeypatch, capsys):
    nan_for_negative_labels(monkeypatch, small_data, "right")
    status = main(
        [
            "run",
            "multidigits",
            "--workdir",
            str(tmp_path),
            *SMALL,
            "--set",
            "steps=3",
            "--set",
            "diagnostics_every=0",
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "step 1 " in err and "['right']" in err and "left" not in err


def test_nonfinite_skip_logs_and_continues(tmp_path, small_data, monkeypatch):
    nan_for_negative_labels(monkeypatch, small_data, "right")
    config = RunConfig(
        steps=3,
        eval_every=3,
        hidden=(16,),
        nonfinite="skip",
        log_every=10,
        diagnostics_every=0,
        workdir=str(tmp_path),
    )
    summary = runner.run(config)
    assert summary["nonfinite_steps"] == 3
    flagged = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "nonfinite" in r]
    assert [(r["step"], r["nonfinite"], r["skipped"]) for r in flagged] == [
        (s, ["right"], True) for s in (1, 2, 3)
    ]
