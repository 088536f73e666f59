"""Figures show what they claim: checked on the matplotlib objects, not only on the files.

A run's cosines within ±0.2 get a colour scale spanning the data; a small negative cosine shows
its sign; every per-run title names the run; coinciding Pareto points stay visible and the
legend sits outside the axes; the toy2d figure has axis labels and a legend.
"""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mtljax import plots  # noqa: E402
from mtljax.benchmarks.toy2d import plot_trajectories, trajectory_figure  # noqa: E402
from mtljax.metrics_log import JsonlWriter  # noqa: E402

TASKS = ["a", "b", "c"]


def records(steps=(1, 5, 10)):
    """Diagnostics on ``steps``; the pair (a, b) swings within ±0.15, (b, c) is -0.0012."""
    out = []
    for step in steps:
        cos = np.eye(3)
        cos[0, 1] = cos[1, 0] = 0.15 * np.cos(step)
        cos[0, 2] = cos[2, 0] = 0.1
        cos[1, 2] = cos[2, 1] = -0.0012
        out.append({"step": step, "losses": dict.fromkeys(TASKS, 1.0 / step),
                    "weights": dict.fromkeys(TASKS, 1.0), "cosine": cos.tolist(),
                    "conflict_fraction": 0.5})  # fmt: skip
    return out


def test_cosine_over_time_scales_colours_to_the_data_and_says_so():
    fig = plots.plot_cosine_time(records())
    mesh = fig.axes[0].collections[0]
    limit = 0.15 * max(abs(np.cos([1, 5, 10])))
    np.testing.assert_allclose(mesh.get_clim(), (-limit, limit))
    assert "data's range" in fig.axes[1].get_ylabel() and f"{limit:.2g}" in fig.axes[1].get_ylabel()


@pytest.mark.parametrize(
    "value, text",
    [(-0.0012, "-0.0012"), (0.004, "0.004"), (0.0, "0.00"), (-0.5, "-0.50"), (np.nan, "n/a")],
)
def test_cosine_labels_keep_the_sign_of_small_values(value, text):
    assert plots._cosine_label(value) == text


def test_mean_cosine_cells_show_a_small_negative_with_its_sign():
    texts = [t.get_text() for t in plots.plot_cosine(records()).axes[0].texts]
    assert texts.count("-0.0012") == 2 and "-0.00" not in texts


def test_plot_run_writes_every_plot_and_titles_name_the_run(tmp_path, monkeypatch):
    run = tmp_path / "sweep" / "seed0"
    run.mkdir(parents=True)
    with JsonlWriter(run / "metrics.jsonl") as log:
        for record in records():
            log.write(record)
        log.write({"step": 10, "val": {t: {"accuracy": 0.5} for t in TASKS}})
    (run / "summary.json").write_text(json.dumps({"config": {"method": {"name": "pcgrad"}}}))
    titles = []
    monkeypatch.setattr(
        "matplotlib.figure.Figure.savefig",
        lambda fig, path, **kw: (titles.append(fig.axes[0].get_title()), open(path, "wb").close()),
    )
    paths = plots.plot_run(run)
    assert len(paths) == len(plots.PLOTS) and all(p.endswith(".png") for p in paths)
    assert all(title.endswith("pcgrad: sweep/seed0") for title in titles), titles
    assert plots.run_name(tmp_path / "pcgrad" / "seed0") == "pcgrad/seed0"  # no summary yet


def test_pareto_keeps_coinciding_methods_visible_and_the_legend_off_the_data():
    same = np.array([[0.95, 0.93], [0.951, 0.935]])
    runs = {"ew": same, "pcgrad": same.copy(), "mgda": np.array([[0.96, 0.92], [0.955, 0.925]])}
    front, stl = dict.fromkeys(runs, True), np.array([0.955, 0.94])
    fig = plots.plot_pareto(runs, ["left", "right"], [True, True], front=front, reference=stl)
    ax = fig.axes[0]
    markers = [c.lines[0].get_marker() for c in ax.containers]  # one errorbar per method
    assert len(set(markers)) == len(runs)
    assert [t.get_text() for t in ax.texts] == ["ew = pcgrad"]
    fig.draw_without_rendering()  # runs the constrained layout
    (legend,) = fig.legends
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    assert ax.get_legend() is None


def test_pareto_parallel_coordinates_have_distinct_markers_and_an_outside_legend():
    runs = {m: np.random.default_rng(i).random((2, 3)) for i, m in enumerate(["ew", "uw", "mgda"])}
    fig = plots.plot_pareto(runs, ["x", "y", "z"], [True, False, True])
    assert len({line.get_marker() for line in fig.axes[0].lines}) == 3
    assert len(fig.legends) == 1 and fig.axes[0].get_legend() is None


def test_toy2d_figure_has_axis_labels_titles_and_a_legend(tmp_path):
    traj = np.cumsum(np.full((2, 4, 2), -0.5), axis=1)  # two starts, three steps
    fig = trajectory_figure({"ew": traj, "mgda": traj}, scale=0.1)
    assert [ax.get_title() for ax in fig.axes] == ["ew", "mgda"]
    assert all(ax.get_xlabel() == "$x_1$" and ax.get_ylabel() == "$x_2$" for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["Pareto set", "trajectory", "start",
                                                          "end"]  # fmt: skip
    assert (tmp_path / "trajectories.png").samefile(
        plot_trajectories({"ew": traj}, 0.1, str(tmp_path))
    )
