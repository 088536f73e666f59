"""Every user error of `mtljax` is one line that names what was wrong and how to fix it, with a
non-zero status (2 for usage errors); bugs keep their traceback; Ctrl-C, a closed pipe, a
resumed finished run and output that is not a terminal behave (issue 13, command line)."""

import io
import json
import os
import subprocess
import sys
import warnings

import pytest

from mtljax import _version, cli
from mtljax.cli import failure, main
from mtljax.config import ConfigError, MethodConfig, RunConfig
from mtljax.run import RunInterrupted, run
from mtljax.run.experiment import check_method
from mtljax.run.log import ProgressLines, RunLog, _duration, step_record
from mtljax.tasks import Tasks, classification

TINY = [
    "--set",
    "model.kwargs.hidden=[16]",
    "--set",
    "schedule.batch_size=64",
    "--set",
    "schedule.diagnostics_every=0",
    "--set",
    "tensorboard=false",
]

TASKS = Tasks([classification("a", 2)])


def one_line_error(capsys) -> str:
    """The stderr of the last command: one ``mtljax: error:`` line, no traceback."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("mtljax: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["method=cagrad", "method_kw.cc=0.4"], ["method.kw.cc", "'cagrad'", "c, rescale"]),
        (["method.kw.cc=0.4"], ["method.kw.cc", "'ew'", "hyper-parameters: reduction"]),
        (["method=imtl_g", "method.kw.lr=1"], ["method.kw.lr", "hyper-parameters: none"]),
        (["method=mean", "method.kw.reduction=sum"], ["method.kw.reduction", "fixes"]),
        (["lr=fast"], ["optimizer.lr expects a number, got 'fast'"]),
        (["steps=5.5"], ["schedule.steps expects an integer, got '5.5'"]),
        (["steps=true"], ["schedule.steps expects an integer, got 'true'"]),
        (["method=cagrad", "method_kw.c=abc"], ["method.kw.c expects a number, got 'abc'"]),
        (["method=cagrad", "method.kw.max_iters=2.5"], ["method.kw.max_iters expects an integer"]),
        (["tensorboard=maybe"], ["tensorboard expects true or false"]),
        (["method.name=nope"], ["method.name: Unknown method 'nope'"]),
        (["data.tasks=left,nope"], ["data.tasks", "'nope'", "'right'"]),
        (["optimizer.kw.nope=1"], ["optimizer.kw", "nope"]),
        (["steps"], ["--set expects key=value"]),
    ],
)
def test_bad_values_are_one_line_usage_errors(overrides, named, capsys, cached_data):
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["run", "multidigits", *TINY, *sets]) == 2
    err = one_line_error(capsys)
    assert all(text in err for text in named), err
    assert "invalid literal" not in err and "unexpected keyword" not in err


def test_booleans_take_words_and_digits_only():
    for text, value in (("yes", True), ("1", True), ("True", True), ("no", False), ("0", False)):
        assert RunConfig().replace({"tensorboard": text}).tensorboard is value
    for text in ("maybe", "2", "on"):
        with pytest.raises(ConfigError, match="tensorboard expects true or false"):
            RunConfig().replace({"tensorboard": text})


def test_method_hyper_parameters_are_checked_against_the_factory():
    check_method(MethodConfig("cagrad", {"c": 0.4, "max_iters": 3, "tol": 1e-6}))
    check_method(MethodConfig("cagrad", {"c": 1}))  # an integer is a number
    check_method(MethodConfig("mgda", {"max_iters": None}))  # int | None
    check_method(MethodConfig("cr_mogm", {"anything": 1}))  # **kwargs: handed to its base
    with pytest.raises(ConfigError, match="method.kw.rescale expects an integer, got True"):
        check_method(MethodConfig("cagrad", {"rescale": True}))


def test_config_files_with_errors_name_the_file_and_line(tmp_path, capsys):
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def get_config(arg=None):\n    return {'steps': 3\n")
    wrong = tmp_path / "wrong.py"
    wrong.write_text('"""A config."""\n\n\ndef get_config(arg=None):\n    return 5\n')
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    for argv, named in (
        (["run", str(syntax)], [f"syntax error in config file {syntax}, line 2"]),
        (["configs", str(syntax)], [str(syntax), "line 2"]),
        (["run", str(wrong)], [f"{wrong}, line 4", "get_config returned int"]),
        (["run", str(empty)], ["has no get_config"]),
        (["run", str(tmp_path / "missing.py")], ["No config file"]),
        (["sweep", str(wrong), "--workdir", str(tmp_path / "s")], [str(wrong), "line 4"]),
    ):
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert all(text in err for text in named), err


def test_workdir_that_is_not_a_writable_folder(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    base = ["run", "multidigits", *TINY]
    assert main([*base, "--workdir", str(afile)]) == 2
    assert f"workdir {afile} is a file, not a folder" in one_line_error(capsys)
    assert main([*base, "--workdir", str(afile / "run")]) == 2
    assert f"({afile}) is a file" in one_line_error(capsys)
    assert afile.read_text() == "mine"
    # Tests may run as root, who may write anywhere: pretend the folder is read-only.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main([*base, "--workdir", str(tmp_path / "new")]) == 2
    assert f"{tmp_path} is not writable" in one_line_error(capsys)
    assert not (tmp_path / "new").exists()


def test_plot_sweep_and_report_errors(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "is not a folder; mtljax plot takes the --workdir of one run" in one_line_error(capsys)
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no metrics.jsonl" in one_line_error(capsys)
    assert main(["sweep", "multidigits", "--workdir", str(tmp_path), "--seeds", "0,a"]) == 2
    assert "--seeds expects comma-separated integers" in one_line_error(capsys)
    assert main(["report", str(tmp_path / "missing")]) != 0
    one_line_error(capsys)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"mtljax {_version.__version__}\n"
    assert main(["run", "--no-such-flag"]) == 2  # argparse's own usage errors


def raise_from_test_code(error):
    def command(args):
        raise error

    return command


def test_bugs_keep_their_traceback(monkeypatch, capsys):
    # Raised outside mtljax (here: by test code), a KeyError or TypeError is a bug.
    for error in (KeyError("x"), TypeError("bad"), ValueError("from a library")):
        monkeypatch.setattr(cli, "_cmd_configs", raise_from_test_code(error))
        with pytest.raises(type(error)):
            main(["configs"])
    # A message mtljax raises for the user is one line (a KeyError's without its quotes)...
    try:
        TASKS.index("nope")
    except KeyError as error:
        assert failure(error) == (1, "mtljax: error: Unknown task 'nope'; tasks are ['a'].")
    # ... but an operation that fails inside mtljax (a missing key) is a bug.
    try:
        step_record(1, {}, TASKS)
    except KeyError as error:
        assert failure(error) is None
    # MTLJAX_DEBUG=1 shows the traceback of a user error too.
    monkeypatch.setenv("MTLJAX_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["run", "multidigits", "--set", "steps=abc"])


def test_warnings_of_mtljax_are_one_line(monkeypatch, capsys):
    def warn(args):
        warnings.warn_explicit(
            "checkpoint step 20 is corrupt;\nresuming", UserWarning, cli.__file__, 1
        )
        warnings.warn_explicit("from elsewhere", UserWarning, "other.py", 7)
        return 0

    monkeypatch.setattr(cli, "_cmd_configs", warn)
    assert main(["configs"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("mtljax: warning: checkpoint step 20 is corrupt; resuming\n")
    assert "other.py:7: UserWarning: from elsewhere" in err


def test_interrupt_outside_a_run(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_configs", interrupted)
    assert main(["configs"]) == 130
    assert capsys.readouterr().err == "mtljax: interrupted\n"
    message = str(RunInterrupted(5, 10, None))
    assert message.startswith("interrupted at step 5 of 10; no checkpoint was written")
    assert "schedule.checkpoint_every" in message


class ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_pipe_ends_quietly(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["configs"]) == 141
    assert capsys.readouterr().err == ""


def test_closed_pipe_in_a_process():
    """``mtljax configs | head -0``: the reader is gone before the first write."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mtljax.cli", "configs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "MTLJAX_DEBUG": ""},
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == ""


def test_resumed_finished_run_moves_its_summary_aside_and_ctrl_c(
    tmp_path, cached_data, monkeypatch, capsys
):
    args = ["run", "multidigits", "--workdir", str(tmp_path), *TINY]
    args += ["--set", "schedule.checkpoint_every=1", "--set", "schedule.eval_every=2"]
    assert main([*args, "--set", "schedule.steps=2"]) == 0
    finished = json.loads((tmp_path / "summary.json").read_text())
    capsys.readouterr()
    # A resume that the checkpoint refuses leaves the finished run as it was.
    assert main([*args, "--set", "schedule.steps=4", "--set", "lr=0.1", "--resume"]) == 1
    assert "different config" in one_line_error(capsys)
    assert json.loads((tmp_path / "summary.json").read_text()) == finished

    step = RunLog.step

    def ctrl_c_at_step_4(self, index, metrics):
        if index == 4:
            raise KeyboardInterrupt
        step(self, index, metrics)

    monkeypatch.setattr(RunLog, "step", ctrl_c_at_step_4)
    assert main([*args, "--set", "schedule.steps=4", "--resume"]) == 130
    err = capsys.readouterr().err  # progress lines, then the one line of the interrupt
    assert "Traceback" not in err and err.splitlines()[-1] == (
        "mtljax: interrupted at step 4 of 4; rerun with --resume to continue from the "
        "checkpoint of step 3"
    )
    # The partial run does not look finished; the old result is kept aside.
    assert not (tmp_path / "summary.json").exists()
    assert json.loads((tmp_path / "summary.previous.json").read_text()) == finished

    monkeypatch.setattr(RunLog, "step", step)
    assert main([*args, "--set", "schedule.steps=4", "--resume"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] == 3 and summary["config"]["schedule"]["steps"] == 4


def test_progress_lines_when_not_a_terminal(tmp_path, cached_data, capsys):
    config = {
        "schedule": {"steps": 20, "eval_every": 20, "log_every": 5, "diagnostics_every": 0},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "tensorboard": False,
    }
    run(config)  # capsys: stderr is not a terminal
    lines = capsys.readouterr().err.strip().splitlines()
    # The first step, each new tenth (every 2 steps) and the last.
    assert [line.split()[4] for line in lines] == [f"{s}/20" for s in (1, *range(2, 21, 2))]
    assert lines[-1].startswith("mtljax run ew: step 20/20 (100%) · loss left ")
    assert all(" elapsed · eta " in line for line in lines[1:])
    quiet = RunLog(None, TASKS, **LOG_OPTIONS, progress=False)
    assert quiet.bar is None and quiet.lines is None


LOG_OPTIONS = {
    "log_every": 1,
    "nonfinite": "raise",
    "method": "ew",
    "steps": 10,
    "resumed_from": 0,
    "tensorboard": False,
}


def test_progress_line_format(capsys):
    lines = ProgressLines(1000, "pcgrad", 200, every_s=0.0)
    lines.update(201, {"a": 0.5, "b": float("nan")})
    first = capsys.readouterr().err  # includes the compilation: no estimate yet
    assert first.startswith("mtljax run pcgrad: step 201/1000 (20%) · loss a 0.5, b nan · ")
    assert first.endswith(" elapsed\n")
    lines.update(202, {"a": 0.25, "b": 1e-5})
    assert " · loss a 0.25, b 1e-05 · " in capsys.readouterr().err.split(" elapsed · eta ")[0]
    assert [_duration(s) for s in (9.4, 125, 3720)] == ["9 s", "2 min 05 s", "1 h 02 min"]
