"""Task roles: primary and auxiliary tasks, priority levels, and what reads them.

Covers ``Task.level`` / ``Tasks.with_levels`` / ``Tasks.with_primary``, the config fields
``data.primary`` and ``data.levels``, the runner passing ``primary=`` / ``levels=`` to a
role-aware method factory, the levels a summary records, and ``mtljax report`` restricting Δm%
to the primary tasks. Nothing trains: the runner's part is checked on the built experiment and
its summary, the report's on hand-made summaries.
"""

import csv
import io
import json
import warnings

import numpy as np
import pytest

from mtljax.cli import main
from mtljax.config import ConfigError, RunConfig, parse_overrides
from mtljax.evaluation import delta_m, delta_p
from mtljax.methods import REGISTRY, get_factory, register_method
from mtljax.report import build_report, run_levels, to_csv, to_markdown
from mtljax.run import experiment
from mtljax.run.checkpointing import RunState
from mtljax.run.summary import make_summary, selection_score, write_summary
from mtljax.sweep import plan_sweep
from mtljax.tasks import Task, Tasks, classification, regression

TINY = {
    "schedule": {"steps": 3, "eval_every": 3, "log_every": 10, "diagnostics_every": 0},
    "model": {"kwargs": {"hidden": [16]}},
    "tensorboard": False,
}


# --- Tasks --------------------------------------------------------------------------------


def test_levels_roles_and_primary_indices():
    tasks = Tasks(["digit", "helpful", "harmful"])
    assert tasks.levels == (0, 0, 0) and tasks.primary == (0, 1, 2)
    assert all(t.role == "primary" for t in tasks)

    aux = tasks.with_primary(["digit"])
    assert aux.levels == (0, 1, 1) and aux.primary == (0,)
    assert [t.role for t in aux] == ["primary", "auxiliary", "auxiliary"]
    assert tasks.with_primary("helpful").primary == (1,)  # one name as a string
    ranked = aux.with_levels({"harmful": 2})
    assert ranked.levels == (0, 1, 2) and ranked.names == tasks.names
    assert tasks.with_roles(["digit"], {"harmful": 2}) == ranked
    assert tasks.with_roles() == tasks

    # The levels are part of a collection's identity; the rest of each task is kept.
    assert aux != tasks and hash(aux.with_levels({"helpful": 0, "harmful": 0})) == hash(tasks)
    assert aux.with_levels({"helpful": 0, "harmful": 0}) == tasks
    digit = Tasks([classification("digit", 10), "other"]).with_primary(["digit"])
    assert digit[0].output_dim == 10 and digit[0].metrics[0].name == "accuracy"
    assert "levels=[0, 1, 2]" in repr(ranked) and repr(tasks) == (
        "Tasks(['digit', 'helpful', 'harmful'])"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t.with_levels({"colour": 1}), r"Unknown task\(s\) \['colour'\]; the tasks"),
        (lambda t: t.with_primary(["digit", "colour"]), r"Unknown task\(s\) \['colour'\]"),
        (lambda t: t.with_primary([]), "at least one primary task"),
        (lambda t: t.with_levels({"digit": -1}), "Task 'digit': level must be an int >= 0"),
        (lambda t: t.with_levels({"digit": 1.5}), "level must be an int >= 0, got 1.5"),
        (lambda t: t.with_levels({"digit": True}), "level must be an int >= 0, got True"),
        (lambda t: t.with_levels(dict.fromkeys(t.names, 1)), r"primary \(level 0\).*'digit': 1"),
        (lambda t: Tasks([Task("a", level=2)]), r"At least one task must be primary"),
    ],
)
def test_bad_roles_name_the_task_or_value(make, message):
    with pytest.raises(ValueError, match=message):
        make(Tasks(["digit", "helpful"]))


# --- Config -------------------------------------------------------------------------------


def test_config_fields_are_typed_overrides():
    config = RunConfig().replace(
        parse_overrides(["data.primary=[left]", "data.levels.right=2", "data.levels.left=0"])
    )
    assert config.data.primary == ("left",) and config.data.levels == {"right": 2, "left": 0}
    assert RunConfig.from_dict(config.to_dict()) == config
    for text in ("left,right", "[left, right]", '["left", "right"]'):
        assert RunConfig().replace({"data.primary": text}).data.primary == ("left", "right")
    assert RunConfig().replace({"data.primary": "null"}).data.primary is None
    for override, message in (
        ("data.levels.right=abc", "data.levels.right expects an integer, got 'abc'"),
        ("data.levels.right=-1", "data.levels.right must be >= 0, got -1"),
        ("data.levels.right=1.5", "data.levels.right expects an integer, got 1.5"),
        ("data.levels=[1]", r"data.levels expects a JSON object, got '\[1\]'"),
        ("data.primary=[1]", r"data.primary\[0\] expects a string, got 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            RunConfig().replace(parse_overrides([override]))


def test_configs_help_lists_the_role_fields(capsys):
    assert main(["configs", "multidigits"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("data.")}
    assert "primary tasks" in lines["data.primary"] and "list[str] | null" in lines["data.primary"]
    assert "dict[str, int]" in lines["data.levels"] and "priority" in lines["data.levels"]


# --- Runner -------------------------------------------------------------------------------

CALLS = []


def role_aware(num_tasks, *, primary=(0,), scale=1.0):
    """EW, recording the task roles it was built with (a stand-in for PCD or gradsim)."""
    CALLS.append({"primary": tuple(primary)})
    return get_factory("ew")(num_tasks)


def level_aware(num_tasks, *, levels=None, primary=(0,)):
    """EW, recording the levels and primary tasks (a stand-in for lexicographic)."""
    CALLS.append({"levels": None if levels is None else tuple(levels), "primary": tuple(primary)})
    return get_factory("ew")(num_tasks)


@pytest.fixture
def role_methods():
    """Registers the two recording methods; restores the registry afterwards."""
    saved = dict(REGISTRY)
    CALLS.clear()
    register_method("role_aware", role_aware, summary="EW that records its roles", paper="-")
    register_method("level_aware", level_aware, summary="EW that records levels", paper="-")
    register_method(
        "role_aware_left", role_aware, summary="preset", paper="-", presets={"primary": [0]}
    )
    yield CALLS
    REGISTRY.clear()
    REGISTRY.update(saved)


@pytest.mark.parametrize(
    ("overrides", "levels", "passed"),
    [
        ({"data.primary": ["right"], "method.name": "role_aware"}, (1, 0), {"primary": (1,)}),
        ({"method.name": "role_aware"}, (0, 0), {"primary": (0, 1)}),  # no roles: all primary
        ({"data.levels": {"left": 1}, "method.name": "level_aware"},
         (1, 0), {"levels": (1, 0), "primary": (1,)}),
        ({"data.primary": ["left"], "data.levels": {"right": 3}, "method.name": "level_aware"},
         (0, 3), {"levels": (0, 3), "primary": (0,)}),
        # The user's method.kw and the registry's presets win over the roles.
        ({"data.primary": ["right"], "method.name": "role_aware", "method.kw.primary": [0]},
         (1, 0), {"primary": (0,)}),
        ({"data.primary": ["right"], "method.name": "role_aware_left"}, (1, 0), {"primary": (0,)}),
        # Selected tasks: the indices count in the selected order.
        ({"data.tasks": ["right", "left"], "data.primary": ["left"], "method.name": "role_aware"},
         (1, 0), {"primary": (1,)}),
    ],
)  # fmt: skip
def test_runner_passes_roles_to_a_factory_that_takes_them(
    small_data, role_methods, overrides, levels, passed
):
    config = RunConfig().replace(TINY).replace(overrides)
    experiment.check(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = experiment.build_experiment(config, small_data)
    assert exp.tasks.levels == levels and role_methods == [passed]
    # A role-aware method given no auxiliary task is told so.
    said = [str(w.message) for w in caught if "every task is primary" in str(w.message)]
    assert said == (["method 'role_aware' treats primary and auxiliary tasks differently, but "
                     "every task is primary (primary=(0, 1)); declare the auxiliary tasks with "
                     "data.primary or data.levels."] if levels == (0, 0) else [])  # fmt: skip


@pytest.mark.parametrize(
    ("name", "passed"),
    [("pcd", {"primary": (1,)}), ("gradsim", {"primary": (1,)}),
     ("lexicographic", {"levels": (1, 0)})],
)  # fmt: skip
def test_the_role_aware_builtins_get_the_roles(small_data, name, passed):
    config = RunConfig().replace(TINY).replace({"data.primary": ["right"], "method.name": name})
    assert experiment.role_kwargs(config.method, small_data.tasks.with_primary("right")) == passed
    assert experiment.build_experiment(config, small_data).method.num_tasks == 2


def test_methods_without_role_parameters_get_none(small_data):
    config = RunConfig().replace(TINY).replace({"data.primary": ["left"], "method.name": "upgrad"})
    exp = experiment.build_experiment(config, small_data)  # upgrad takes no primary=: not given
    assert exp.tasks.primary == (0,) and exp.method.name == "upgrad"
    assert experiment.role_kwargs(config.method, exp.tasks) == {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data.primary": ["colour"]},
         r"data.primary: unknown task\(s\) \['colour'\]; the tasks are \['left', 'right'\]"),
        ({"data.tasks": ["right"], "data.primary": ["left"]},
         r"data.primary: unknown task\(s\) \['left'\]; the selected tasks \(data.tasks\) are "
         r"\['right'\]"),
        ({"data.levels": {"top": 1}}, r"data.levels: unknown task\(s\) \['top'\]"),
        ({"data.levels": {"left": 1, "right": 2}}, "At least one task must be primary"),
        ({"data.primary": []}, "at least one primary task"),
    ],
)  # fmt: skip
def test_bad_roles_are_config_errors(small_data, overrides, message):
    config = RunConfig().replace(TINY).replace(overrides)
    with pytest.raises(ConfigError, match=message):
        experiment.build_experiment(config, small_data)


def test_bad_roles_fail_before_loading_when_tasks_are_selected(capsys):
    args = ["run", "multidigits", "--set", "data.tasks=[right]", "--set", "data.primary=[left]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtljax: error: data.primary: unknown task(s) ['left']")


def test_model_selection_counts_the_primary_tasks():
    tasks = Tasks([classification("digit", 10), regression("age"), classification("noise", 2)])
    val = {"digit": {"accuracy": 0.8}, "age": {"mae": 3.0}, "noise": {"accuracy": 0.1}}
    assert selection_score(val, tasks) == pytest.approx((0.8 - 3.0 + 0.1) / 3)
    assert selection_score(val, tasks.with_primary(["digit"])) == 0.8
    assert selection_score(val, tasks.with_primary(["digit", "age"])) == pytest.approx(-1.1)


def test_summary_records_levels_and_sweep_baselines_have_no_roles(tmp_path, small_data):
    config = RunConfig().replace(TINY).replace(parse_overrides(["data.primary=[right]"]))
    exp = experiment.build_experiment(config, small_data)
    test = {t: {"accuracy": 0.5} for t in exp.tasks.names}
    times = {"train": 1.0, "wall": 2.0}
    summary = make_summary(config, exp.tasks, RunState(exp.state), test, resumed_from=0,
                           times=times, tensorboard=False)  # fmt: skip
    write_summary(str(tmp_path), summary)
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["levels"] == {"left": 1, "right": 0} and run_levels(stored) == stored["levels"]
    assert stored["config"]["data"]["primary"] == ["right"]

    # The sweep's single-task baselines drop the roles (an auxiliary task alone is no error).
    planned = plan_sweep(config, methods=["ew"], seeds=[0], workdir=tmp_path / "sweep",
                         stl_tasks=("left", "right"))  # fmt: skip
    for baseline in planned[:2]:
        assert baseline.config.data.primary is None and baseline.config.data.levels == {}
        experiment.check(baseline.config)
    assert planned[2].config.data.primary == ("right",)


# --- Report -------------------------------------------------------------------------------

HIGHER = {"accuracy": True, "loss": False}


def write_run(folder, *, tasks, test, seed=0, roles=None, levels=None, method="ew"):
    """A hand-made ``summary.json``: ``roles`` are config overrides (data.primary/levels),
    ``levels`` the recorded ``{task: level}`` (left out when ``None``, as in older runs)."""
    overrides = {"method.name": method, "seed": seed, **(roles or {})}
    overrides["data.tasks"] = tasks if len(tasks) == 1 else None
    summary = {
        "config": RunConfig().replace(overrides).to_dict(),
        "tasks": tasks,
        "higher_is_better": {t: HIGHER for t in tasks},
        "test": test,
    }
    if levels is not None:
        summary["levels"] = levels
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return summary


def metrics(rng, tasks):
    return {t: {"accuracy": rng.uniform(0.5, 1), "loss": rng.uniform(0.1, 1)} for t in tasks}


TASKS = ["digit", "helpful", "harmful"]
AUX = {"digit": 0, "helpful": 1, "harmful": 1}


def aux_sweep(root, rng, *, stl=TASKS):
    """STL runs of ``stl`` (2 seeds), and EW and PCGrad runs (2 seeds) with digit primary;
    the PCGrad runs record no levels (their config says data.primary)."""
    base = {}
    for task in stl:
        runs = [write_run(root / f"stl_{task}" / f"seed{s}", tasks=[task], seed=s,
                          test=metrics(rng, [task])) for s in (0, 1)]  # fmt: skip
        base[task] = {m: np.mean([r["test"][task][m] for r in runs]) for m in HIGHER}
    groups = {
        "ew": [write_run(root / "ew" / f"seed{s}", tasks=TASKS, seed=s, levels=AUX,
                         roles={"data.primary": ["digit"]}, test=metrics(rng, TASKS))
               for s in (0, 1)],
        "pcgrad": [write_run(root / "pcgrad" / f"seed{s}", tasks=TASKS, seed=s, method="pcgrad",
                             roles={"data.primary": ["digit"]}, test=metrics(rng, TASKS))
                   for s in (0, 1)],
    }  # fmt: skip
    return base, groups


def expected(summaries, baseline, tasks):
    directions = {t: HIGHER for t in tasks}
    return (
        np.array([delta_m(s["test"], baseline, directions) for s in summaries]),
        np.array([delta_p(s["test"], baseline, directions) for s in summaries]),
    )


def test_report_counts_the_primary_tasks_and_says_so(tmp_path, capsys):
    baseline, groups = aux_sweep(tmp_path, np.random.default_rng(0))
    report = build_report([tmp_path])
    assert report.delta_scope == "primary: digit"
    for row in report.rows:
        dm, dp = expected(groups[row.label], baseline, ["digit"])
        np.testing.assert_allclose(row.delta_m, dm, rtol=1e-12)
        np.testing.assert_allclose(row.delta_p, dp, rtol=1e-12)
        assert row.delta_tasks == ("digit",)
        # Every column stays in the table, auxiliary tasks included.
        assert ("harmful", "accuracy") in row.values
    markdown = to_markdown(report)
    assert "| Δm% (primary: digit) ↓ | Δp (primary: digit) ↑ |" in markdown
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(to_csv(report)))}
    assert rows["ew"]["delta_tasks"] == "digit" and rows["STL"]["delta_tasks"] == ""

    # --all-tasks: Δm% over every task, against every task's baseline.
    full = build_report([tmp_path], all_tasks=True)
    assert full.delta_scope == "all tasks"
    for row in full.rows:
        dm, _ = expected(groups[row.label], baseline, TASKS)
        np.testing.assert_allclose(row.delta_m, dm, rtol=1e-12)
    assert main(["report", str(tmp_path), "--all-tasks"]) == 0
    assert "| Δm% (all tasks) ↓ |" in capsys.readouterr().out
    assert main(["report", str(tmp_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out == to_csv(report)


def test_auxiliary_tasks_need_no_baseline_unless_counted(tmp_path):
    baseline, groups = aux_sweep(tmp_path, np.random.default_rng(1), stl=["digit"])
    report = build_report([tmp_path])
    dm, _ = expected(groups["ew"], baseline, ["digit"])
    np.testing.assert_allclose(report.rows[0].delta_m, dm, rtol=1e-12)
    assert not report.notes
    full = build_report([tmp_path], all_tasks=True)
    assert all(row.delta_m is None and row.baseline_note == "no baseline" for row in full.rows)
    assert "no single-task run of task(s) ['helpful', 'harmful']" in full.notes[0]


def test_runs_with_different_roles_are_not_averaged_together(tmp_path, capsys):
    rng = np.random.default_rng(2)
    aux_sweep(tmp_path, rng)
    # Same method, every task primary: its own group, and a different Δm%.
    for seed in (0, 1):
        write_run(tmp_path / "ew_all" / f"seed{seed}", tasks=TASKS, seed=seed,
                  levels=dict.fromkeys(TASKS, 0), test=metrics(rng, TASKS))  # fmt: skip
    report = build_report([tmp_path])
    labels = [row.label for row in report.rows]
    assert labels == ["ew primary=['digit']", "ew primary=None", "pcgrad primary=['digit']"]
    assert all(r.delta_m is None and r.baseline_note == "roles differ" for r in report.rows)
    assert report.delta_scope is None
    assert "different primary tasks ([digit]; [digit, helpful, harmful])" in report.notes[-1]
    assert main(["report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "| roles differ | roles differ |" in out and "--all-tasks" in err
    assert all(r.delta_m is not None for r in build_report([tmp_path], all_tasks=True).rows)


def test_summaries_without_levels_read_roles_from_config_and_bad_levels_are_named(tmp_path):
    rng = np.random.default_rng(3)
    old = write_run(tmp_path / "old", tasks=TASKS, test=metrics(rng, TASKS),
                    roles={"data.primary": ["digit"], "data.levels": {"harmful": 2}})  # fmt: skip
    assert run_levels(old) == {"digit": 0, "helpful": 1, "harmful": 2}
    plain = write_run(tmp_path / "plain", tasks=TASKS, test=metrics(rng, TASKS), method="mgda")
    assert run_levels(plain) == dict.fromkeys(TASKS, 0)
    for name, levels in (("other", {"digit": 0, "colour": 1}), ("none", dict.fromkeys(TASKS, 2))):
        write_run(tmp_path / name, tasks=TASKS, test=metrics(rng, TASKS), method="uw",
                  levels=levels)  # fmt: skip
    report = build_report([tmp_path])
    reasons = {e.path.split("/")[-2]: e.reason for e in report.excluded}
    assert set(reasons) == {"other", "none"}
    assert all(r.startswith("task levels unreadable") for r in reasons.values())
