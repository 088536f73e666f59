"""`mtljax sweep` and `mtljax report`: planning, sharding, skipping, and the table's numbers."""

import csv
import io
import json
import re

import numpy as np
import pytest

from mtljax.cli import main
from mtljax.config import RunConfig
from mtljax.evaluation import delta_m, delta_p
from mtljax.methods import REGISTRY, unregister_method
from mtljax.metrics_log import JsonlWriter
from mtljax.report import build_report, mean_ranks, pareto_mask, to_csv, to_markdown, write_plots
from mtljax.sweep import (
    PlannedRun,
    grid_points,
    parse_grid,
    parse_shard,
    plan_sweep,
    run_status,
    shard,
)

SMALL = {
    "schedule.steps": 10,
    "schedule.eval_every": 10,
    "schedule.log_every": 5,
    "schedule.diagnostics_every": 0,  # one compiled step per run keeps the sweep test fast
    "data.kwargs": {"pairs_per_image": 1},
    "model.kwargs": {"hidden": [16]},
    "schedule.batch_size": 32,
}
SMALL_FLAGS = [
    arg for key, value in SMALL.items() for arg in ("--set", f"{key}={json.dumps(value)}")
]


def sweep_lines(out):
    """``{run name: what happened}`` from the ``[i/n] name: ...`` progress lines."""
    return dict(re.findall(r"^\[\d+/\d+\] (\S+): (.*)$", out, flags=re.M))


def test_sweep_shards_then_skips_then_reruns_incomplete(tmp_path, cached_data, capsys):
    sweep = ["sweep", "multidigits", "--methods", "ew,uw", "--seeds", "0,1", "--no-stl"]
    sweep += ["--workdir", str(tmp_path), *SMALL_FLAGS]
    expected = {f"{m}/seed{s}" for m in ("ew", "uw") for s in (0, 1)}

    shards = []
    for index in range(2):
        assert main([*sweep, "--shard", f"{index}/2"]) == 0
        lines = sweep_lines(capsys.readouterr().out)
        assert all(what.startswith("test left accuracy") for what in lines.values())
        shards.append(set(lines))
    assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == expected
    summaries = {name: tmp_path / name / "summary.json" for name in expected}
    mtimes = {name: path.stat().st_mtime_ns for name, path in summaries.items()}

    assert main(sweep) == 0
    out = capsys.readouterr().out
    assert set(sweep_lines(out).values()) == {"complete, skipped"}
    assert "ran 0, skipped 4 (complete)" in out
    assert {name: path.stat().st_mtime_ns for name, path in summaries.items()} == mtimes

    # An interrupted run (folder without summary.json) is trained again, here with checkpoints
    # (a setting that does not count as a config change); the rest is skipped.
    summaries["uw/seed1"].unlink()
    assert main([*sweep, "--set", "schedule.checkpoint_every=5"]) == 0
    lines = sweep_lines(capsys.readouterr().out)
    assert lines["uw/seed1"].endswith("(was incomplete: re-run)")
    assert [n for n, what in lines.items() if what == "complete, skipped"] == sorted(
        expected - {"uw/seed1"}
    )
    stored = json.loads(summaries["uw/seed1"].read_text())
    assert stored["config"]["method"]["name"] == "uw" and stored["config"]["seed"] == 1

    # Interrupted again after its last checkpoint: it resumes instead of training again.
    summaries["uw/seed1"].unlink()
    assert main([*sweep, "--set", "schedule.checkpoint_every=5"]) == 0
    lines = sweep_lines(capsys.readouterr().out)
    assert lines["uw/seed1"].endswith(f"(resumed from step {SMALL['schedule.steps']})")
    resumed = json.loads(summaries["uw/seed1"].read_text())
    assert resumed["test"] == stored["test"] and resumed["best_step"] == stored["best_step"]


def test_dry_run_lists_single_task_baselines_first(tmp_path, cached_data, capsys):
    args = ["sweep", "multidigits", "--methods", "pcgrad", "--seeds", "3", "--dry-run"]
    assert main([*args, "--workdir", str(tmp_path), *SMALL_FLAGS]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [f"stl_{t}/seed3" for t in cached_data.tasks.names] + ["pcgrad/seed3"]
    assert not any(tmp_path.iterdir())


def test_plot_writes_the_diagnostic_plots(tmp_path):
    """`mtljax plot RUN_DIR` on a hand-made log with diagnostics on steps 1, 5, 10."""
    pytest.importorskip("matplotlib")
    tasks = ["a", "b", "c"]
    with JsonlWriter(tmp_path / "metrics.jsonl") as log:
        for step in range(1, 11):
            record = {
                "step": step,
                "losses": dict.fromkeys(tasks, 1.0 / step),
                "weights": {t: w / step for t, w in zip(tasks, (1, 2, 3), strict=True)},
                "skipped": False,
            }
            if step in (1, 5, 10):
                cosine = np.eye(3) + (1 - np.eye(3)) * (0.5 - step / 10)
                record.update(cosine=cosine, conflict_fraction=float(step > 5))
            log.write(record)
        log.write({"step": 10, "val": {t: {"accuracy": 0.5} for t in tasks}})
    assert main(["plot", str(tmp_path)]) == 0
    for name in ("losses", "val_metrics", "weights", "conflict", "cosine", "cosine_time"):
        assert (tmp_path / f"plot_{name}.png").stat().st_size > 0


def test_changed_config_is_not_silently_reused(tmp_path):
    base = RunConfig().replace(SMALL)
    (planned,) = plan_sweep(base, methods=["ew"], seeds=[0], workdir=tmp_path)
    assert run_status(planned) == "new"
    (tmp_path / "ew" / "seed0").mkdir(parents=True)
    assert run_status(planned) == "incomplete"
    config = planned.config.to_dict()
    (tmp_path / "ew" / "seed0" / "summary.json").write_text(json.dumps({"config": config}))
    assert run_status(planned) == "complete"
    changes = {"schedule.steps": 11, "schedule.checkpoint_every": 5, "tensorboard": False}
    other = PlannedRun("ew", planned.config.replace(changes))
    with pytest.raises(ValueError, match=r"differs in \['schedule.steps'\]"):
        run_status(other)


def test_plan_grid_random_and_shards(tmp_path):
    base = RunConfig().replace(SMALL)
    grid = parse_grid(["method.kw.c=0.2,0.4,0.6", "lr=1e-3,1e-2"])  # lr: the 0.1 alias
    assert grid == {"method.kw.c": [0.2, 0.4, 0.6], "optimizer.lr": [1e-3, 1e-2]}
    runs = plan_sweep(
        base,
        methods=["ew", "cagrad"],
        seeds=[0, 1],
        workdir=tmp_path,
        grid=grid,
        stl_tasks=["left", "right"],
    )
    labels = list(dict.fromkeys(r.label for r in runs))
    # EW takes no `c`: only the lr grid applies to it.
    assert labels == [
        "stl_left",
        "stl_right",
        "ew_lr=0.001",
        "ew_lr=0.01",
        *(f"cagrad_c={c}_lr={lr}" for c in (0.2, 0.4, 0.6) for lr in (0.001, 0.01)),
    ]
    assert len(runs) == 2 * len(labels)
    stl = runs[0].config
    assert (stl.data.tasks, stl.method.name, stl.method.kw, stl.schedule.steps) == (
        ("left",), "ew", {}, 10
    )  # fmt: skip
    last = runs[-1].config
    assert (last.method.name, last.method.kw, last.optimizer.lr, last.seed) == (
        "cagrad", {"c": 0.6}, 0.01, 1
    )  # fmt: skip
    assert last.workdir == str(tmp_path / "cagrad_c=0.6_lr=0.01" / "seed1")

    for count in (1, 3, 7):
        parts = [shard(runs, i, count) for i in range(count)]
        names = [r.name for part in parts for r in part]
        assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError):
            parse_shard(bad)

    full = grid_points(grid)
    drawn = grid_points(grid, random=4, random_seed=5)
    assert len(drawn) == 4 and all(p in full for p in drawn)
    assert len({json.dumps(p) for p in drawn}) == 4
    assert drawn == grid_points(grid, random=4, random_seed=5)
    assert grid_points(grid, random=100) == full
    with pytest.raises(ValueError, match="cannot vary 'method.name'"):
        parse_grid(["method=ew,uw"])
    with pytest.raises(ValueError, match=r"takes the grid key\(s\) \['method.kw.c'\]"):
        plan_sweep(base, methods=["ew", "uw"], seeds=[0], workdir=tmp_path, grid=grid)


def test_mean_ranks_by_hand():
    # Metric 0: higher is better; metric 1: lower is better, with a tie; metric 2: a NaN.
    values = np.array(
        [
            [0.9, 2.0, 1.0],
            [0.7, 1.0, np.nan],
            [0.8, 1.0, 3.0],
        ]
    )
    # metric 0 ranks 1, 3, 2; metric 1 ranks 3, 1.5, 1.5; metric 2 ranks 2, 3 (NaN), 1.
    expected = [(1 + 3 + 2) / 3, (3 + 1.5 + 3) / 3, (2 + 1.5 + 1) / 3]
    np.testing.assert_allclose(mean_ranks(values, [True, False, True]), expected)


def test_pareto_mask_by_hand():
    points = np.array([[0.9, 0.1], [0.5, 0.5], [0.4, 0.4], [0.9, 0.1], [np.nan, 1.0]])
    assert pareto_mask(points, [True, True]).tolist() == [True, True, False, True, False]
    # Second objective lower-is-better: [0.9, 0.1] now dominates everything finite.
    assert pareto_mask(points, [True, False]).tolist() == [True, False, False, True, False]


def write_summary(folder, *, method, seed, tasks, test, method_kw=None):
    run = {"method.name": method, "method.kw": method_kw or {}, "seed": seed}
    run["data.tasks"] = tasks if len(tasks) == 1 else None
    config = RunConfig().replace(SMALL).replace(run).to_dict()
    higher = {t: {"accuracy": True, "cross_entropy": False} for t in tasks}
    summary = {"config": config, "tasks": tasks, "higher_is_better": higher, "test": test}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


def fake_sweep(root, rng, tasks=("left", "right")):
    """STL runs (2 seeds per task) and three groups of multi-task runs with random metrics."""

    def metrics(names):
        return {
            t: {"accuracy": float(rng.uniform(0.5, 1)), "cross_entropy": float(rng.uniform(0.1, 1))}
            for t in names
        }

    stl = {t: [] for t in tasks}
    for task in tasks:
        for seed in (0, 1):
            s = write_summary(
                root / f"stl_{task}" / f"seed{seed}",
                method="ew",
                seed=seed,
                tasks=[task],
                test=metrics([task]),
            )
            stl[task].append(s)
    groups = {}
    for label, method, kw, seeds in (
        ("cagrad c=0.2", "cagrad", {"c": 0.2}, (0, 1, 2)),
        ("cagrad c=0.5", "cagrad", {"c": 0.5}, (0, 1)),
        ("ew", "ew", {}, (0, 1, 2)),
    ):
        groups[label] = [
            write_summary(
                root / label.replace(" ", "_") / f"seed{seed}",
                method=method,
                seed=seed,
                tasks=list(tasks),
                test=metrics(tasks),
                method_kw=kw,
            )
            for seed in seeds
        ]
    return stl, groups


def test_report_matches_numpy(tmp_path, capsys):
    stl, groups = fake_sweep(tmp_path, np.random.default_rng(0))
    report = build_report([tmp_path])
    assert [row.label for row in report.rows] == list(groups)
    columns = [(t, m) for t in ("left", "right") for m in ("accuracy", "cross_entropy")]
    assert report.columns == columns
    baseline = {
        t: {m: np.mean([s["test"][t][m] for s in stl[t]]) for m in ("accuracy", "cross_entropy")}
        for t in stl
    }
    directions = groups["ew"][0]["higher_is_better"]

    table = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert [r["method"] for r in table] == ["STL", *groups]
    by_label = {r["method"]: r for r in table}
    means = []
    for label, summaries in groups.items():
        row = by_label[label]
        assert int(row["runs"]) == len(summaries)
        for task, metric in columns:
            values = np.array([s["test"][task][metric] for s in summaries])
            np.testing.assert_allclose(float(row[f"{task}/{metric}"]), values.mean(), rtol=1e-12)
            np.testing.assert_allclose(
                float(row[f"{task}/{metric} std"]), values.std(ddof=1), rtol=1e-12
            )
        dm = np.array([delta_m(s["test"], baseline, directions) for s in summaries])
        dp = np.array([delta_p(s["test"], baseline, directions) for s in summaries])
        np.testing.assert_allclose(float(row["delta_m"]), dm.mean(), rtol=1e-12)
        np.testing.assert_allclose(float(row["delta_m std"]), dm.std(ddof=1), rtol=1e-12)
        np.testing.assert_allclose(float(row["delta_p"]), dp.mean(), rtol=1e-12)
        np.testing.assert_allclose(float(row["delta_p std"]), dp.std(ddof=1), rtol=1e-12)
        means.append([np.mean([s["test"][t][m] for s in summaries]) for t, m in columns])
    ranks = mean_ranks(np.array(means), [m == "accuracy" for _, m in columns])
    for label, rank in zip(groups, ranks, strict=True):
        np.testing.assert_allclose(float(by_label[label]["mean_rank"]), rank, rtol=1e-12)
    stl_row = by_label["STL"]
    assert stl_row["delta_m"] == "" and stl_row["mean_rank"] == ""
    np.testing.assert_allclose(float(stl_row["left/accuracy"]), baseline["left"]["accuracy"])

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "table.md")]) == 0
    markdown = (tmp_path / "table.md").read_text()
    assert markdown == to_markdown(report) + "\n"
    ew_line = next(line for line in markdown.splitlines() if line.startswith("| ew |"))
    ew_acc = [s["test"]["left"]["accuracy"] for s in groups["ew"]]
    assert f"{np.mean(ew_acc):.4f} ± {np.std(ew_acc, ddof=1):.4f}" in ew_line

    pytest.importorskip("matplotlib")
    assert main(["report", str(tmp_path), "--format", "csv", "--plots"]) == 0
    assert capsys.readouterr().out == to_csv(report)
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_report_without_baseline_and_with_three_tasks(tmp_path):
    _, groups = fake_sweep(tmp_path / "a", np.random.default_rng(1), tasks=("x", "y", "z"))
    report = build_report([tmp_path / "a" / "ew", tmp_path / "a" / "cagrad_c=0.5"])
    assert report.stl is None and [r.label for r in report.rows] == ["cagrad c=0.5", "ew"]
    assert all(r.delta_m is None and r.rank is not None for r in report.rows)
    assert "| – | – |" in to_markdown(report)
    pytest.importorskip("matplotlib")
    assert write_plots(build_report([tmp_path / "a"]), tmp_path) == [str(tmp_path / "pareto.png")]
    # A benchmark's summary.json (another format) is not a run.
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "summary.json").write_text(json.dumps({"methods": {}}))
    with pytest.raises(ValueError, match="No run summary.json"):
        build_report([tmp_path / "bench"])


USER_METHOD = '''"""A config that registers its own Gram-space method (unit gradients, scaled)."""

import jax.numpy as jnp
import optax

import mtljax
from mtljax.config import RunConfig


def unit_sum(num_tasks, *, scale=1.0):
    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        weights = scale / jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 1e-12))
        return (weights if task_mask is None else jnp.where(task_mask, weights, 0.0)), state

    return mtljax.methods.gram_weighting("unit_sum", num_tasks, optax.EmptyState, weights_fn)


mtljax.register_method(
    "unit_sum", unit_sum, summary="sum of unit gradients", paper="-", overwrite=True
)


def get_config(arg=None):
    return RunConfig().replace({"method.name": "unit_sum"})
'''


def test_method_registered_in_a_config_file_sweeps_and_reports(tmp_path, cached_data, capsys):
    path = tmp_path / "mine.py"
    path.write_text(USER_METHOD)
    assert "unit_sum" not in REGISTRY  # only loading the config registers it
    args = ["sweep", str(path), "--seeds", "0", "--grid", "method.kw.scale=0.5,1.0"]
    try:
        assert main([*args, "--workdir", str(tmp_path / "sweep"), *SMALL_FLAGS]) == 0
        lines = sweep_lines(capsys.readouterr().out)
        assert set(lines) == {
            "stl_left/seed0", "stl_right/seed0", "unit_sum_scale=0.5/seed0",
            "unit_sum_scale=1.0/seed0",
        }  # fmt: skip
        assert main(["report", str(tmp_path / "sweep"), "--format", "csv"]) == 0
        rows = {r["method"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
        assert set(rows) == {"STL", "unit_sum scale=0.5", "unit_sum scale=1.0"}
        assert all(np.isfinite(float(rows[m]["delta_m"])) for m in rows if m != "STL")
    finally:
        unregister_method("unit_sum")


def test_report_names_broken_runs_and_withholds_a_broken_baselines_delta_m(tmp_path, capsys):
    """An empty, a half-written and a missing summary: each is named, none stops the report,
    and Δm% is withheld (not computed against a smaller baseline) while a baseline is broken."""
    _, groups = fake_sweep(tmp_path, np.random.default_rng(2))
    (tmp_path / "stl_right" / "seed1" / "summary.json").write_text("{}")
    half = tmp_path / "ew" / "seed2" / "summary.json"
    half.write_text(half.read_text()[:100])
    (tmp_path / "ew" / "seed3").mkdir()
    (tmp_path / "ew" / "seed3" / "metrics.jsonl").write_text('{"step": 1}\n')

    report = build_report([tmp_path])
    assert [(e.path, e.stl_task) for e in report.excluded] == [
        (str(half), None),
        (str(tmp_path / "stl_right" / "seed1" / "summary.json"), "right"),
        (str(tmp_path / "ew" / "seed3"), None),
    ]
    reasons = [e.reason for e in report.excluded]
    assert reasons[0].startswith("not valid JSON (") and reasons[1] == "empty ({})"
    assert reasons[2] == "no summary.json (still training, or interrupted)"
    rows = {row.label: row for row in report.rows}
    assert len(rows["ew"].seeds) == 2 and len(report.stl.values[("right", "accuracy")]) == 1
    assert all(r.delta_m is None for r in rows.values())
    assert {r.baseline_note for r in rows.values()} == {"baseline incomplete"}
    broken = f"task 'right' is incomplete ({report.excluded[1].path} excluded)"
    assert report.notes[3:] == [f"{label}: no Δm% or Δp: the single-task baseline of {broken}"
                                for label in groups]  # fmt: skip

    assert main(["report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[:3] == [f"mtljax report: excluded {e.path}: {e.reason}"
                                    for e in report.excluded]  # fmt: skip
    assert "| baseline incomplete | baseline incomplete |" in out
    assert "Notes (3 runs excluded):" in out and f"- excluded {half}: not valid JSON" in out

    # Fixed, but one baseline seed never ran: still withheld, and said so.
    (tmp_path / "stl_right" / "seed1" / "summary.json").unlink()
    (tmp_path / "stl_right" / "seed1").rmdir()
    report = build_report([tmp_path])
    assert report.notes[-1] == (
        "ew: no Δm% or Δp: the single-task baseline of task 'right' is incomplete (no seed [1])"
    )
    # Baselines complete again: a broken multi-task run only leaves its own row a run short.
    write_summary(tmp_path / "stl_right" / "seed1", method="ew", seed=1, tasks=["right"],
                  test={"right": {"accuracy": 0.9, "cross_entropy": 0.2}})  # fmt: skip
    report = build_report([tmp_path])
    assert all(r.delta_m is not None and r.baseline_note is None for r in report.rows)
    with pytest.raises(ValueError, match=r"No run summary.json .*\(1 excluded: .*seed2"):
        build_report([tmp_path / "ew" / "seed2"])
