"""The built-in benchmarks: their generators against their definitions, and CLI smoke runs."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.benchmarks import gradnorm_synthetic, linear, mmoe_synthetic, text, toy2d
from mtljax.cli import main


def numpy_toy(x1, x2, s):
    """The toy losses written from the CAGrad paper's formulas, independently of toy2d."""
    up, down = max(np.tanh(x2 / 2), 0.0), max(np.tanh(-x2 / 2), 0.0)
    a1 = np.log(max(abs(-0.5 * (x1 + 7) - np.tanh(-x2)), 5e-6)) + 6
    a2 = np.log(max(abs(0.5 * (3 - x1) + np.tanh(-x2) + 2), 5e-6)) + 6
    q1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    q2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    return np.array([s * (up * a1 + down * q1), up * a2 + down * q2])


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_toy_losses_match_numpy(scale):
    points = [
        (-8.5, 7.5),
        (0.0, 0.0),
        (9.0, 9.0),
        (-7.5, -0.5),
        (9.0, -1.0),
        (3.0, -8.3),
        (-7.0, 0.5),
        (1.0, 2.0),
    ]
    got = np.asarray(toy2d.toy_losses(jnp.asarray(points, jnp.float64), scale))
    want = np.stack([numpy_toy(x1, x2, scale) for x1, x2 in points])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_pareto_curve_is_pareto_stationary():
    """On (x1, h(x1)) the λ(x1)-combination of the autodiff gradients vanishes; off it, not."""
    x1 = np.linspace(-6.9, 6.9, 15)
    assert np.allclose(toy2d.pareto_x2(0.0), -8.3551, atol=1e-3)  # the papers' -8.3552
    jac = jax.vmap(jax.jacobian(lambda x: toy2d.toy_losses(x, 1.0)))
    lam1 = (1 + x1 / 7) / 2
    for x2, stationary in ((toy2d.pareto_x2(x1), True), (toy2d.pareto_x2(x1) + 0.3, False)):
        j = np.asarray(jac(jnp.asarray(np.stack([x1, x2], 1))))  # [N, 2 losses, 2 coords]
        combo = lam1[:, None] * j[:, 0] + (1 - lam1)[:, None] * j[:, 1]
        assert (np.abs(combo).max(1) < 1e-9).all() == stationary
    # φ has exactly one root in [-12, -8] (the uniqueness the docstring relies on).
    grid = np.linspace(-12, -8, 4001)
    for a in (-7.0, -3.0, 0.0, 5.0, 7.0):
        assert (np.diff(np.sign(toy2d._phi(a, grid))) != 0).sum() == 1


def test_pareto_membership():
    h0 = float(toy2d.pareto_x2(0.0))
    inside = [(0.0, h0), (-7.0, float(toy2d.pareto_x2(-7.0))), (3.0, float(toy2d.pareto_x2(3.0)))]
    outside = [(0.0, 0.0), (8.0, h0), (0.0, h0 + 0.2), (5.0, 3.9), (-5.0, 2.6)]
    assert toy2d.on_pareto_set(inside).all()
    assert not toy2d.on_pareto_set(outside).any()


@pytest.mark.parametrize("method", ["mgda", "cagrad"])
def test_methods_reach_pareto_set_from_near_start(method):
    traj = toy2d.run_method(
        method, [(1.0, -7.5)], steps=3000, scale=0.1, method_kw=toy2d._default_kw(method, 0.1)
    )
    assert traj.shape == (1, 3001, 2)
    assert not toy2d.on_pareto_set(traj[0, 0])
    assert toy2d.on_pareto_set(traj[0, -1])


def test_gradnorm_generator_statistics():
    assert gradnorm_synthetic.task_scales(2) == (1.0, 100.0)
    sigmas = gradnorm_synthetic.task_scales(10)
    assert np.isclose(sigmas[0], 1.0) and np.isclose(sigmas[-1], 100.0)
    assert np.allclose(np.diff(np.log(sigmas)), np.log(100) / 9)
    x, y, b, eps = gradnorm_synthetic.make_data((1.0, 100.0), 500, seed=1)
    assert x.shape == (500, 250) and y.shape == (2, 500, 100) and eps.shape == (2, 100, 250)
    assert abs(b.std() - 10.0) < 0.2 and abs(eps.std() - 3.5) < 0.1 and abs(b.mean()) < 0.2
    assert abs(x.std() - 1.0) < 0.02
    # x was rounded to float32 after y was computed: compare at that precision.
    np.testing.assert_allclose(y[1], 100.0 * np.tanh(x @ (b + eps[1]).T), atol=1e-2)
    assert np.abs(y[0]).max() <= 1.0 and np.abs(y[1]).max() <= 100.0


def test_linear_recovers_the_weights():
    summary = linear.Linear(steps=400).run()
    for method in ("ew", "alternating"):
        res = summary["methods"][method]
        np.testing.assert_allclose(res["w"], linear.TRUE_W, atol=1e-3)
        np.testing.assert_allclose(res["b"], linear.TRUE_B, atol=1e-3)
        assert res["recovered"]


def test_text_targets_are_the_defined_features():
    data = text.make_data(300, vocab_size=10, length=7, seed=3)
    assert data["x"].min() >= 1 and data["x"].max() <= 9
    for row, presence, parity in zip(data["x"], data["presence"], data["parity"], strict=True):
        tokens = row.tolist()
        assert presence == int(text.PRESENT_TOKEN in tokens)
        assert parity == tokens.count(text.PARITY_TOKEN) % 2
    assert 0.2 < data["presence"].mean() < 0.8 and 0.2 < data["parity"].mean() < 0.8


@pytest.mark.parametrize("p", [1.0, 0.8, 0.3, -0.5])
def test_mmoe_generator_correlation(p):
    d = mmoe_synthetic.make_data(p, 20_000, seed=2)
    w1, w2 = d["w1"], d["w2"]
    assert np.isclose(w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2), p)
    linear_part = np.corrcoef(d["x"] @ w1, d["x"] @ w2)[0, 1]
    assert abs(linear_part - p) < 0.02
    if p == 1.0:
        np.testing.assert_allclose(d["f1"], d["f2"], atol=1e-5)
    # The noise is N(0, 0.01²) around the label-generating functions.
    assert abs(np.std(d["y1"] - d["f1"]) - 0.01) < 1e-3


def test_mmoe_label_correlation_falls_with_p():
    corr = [
        np.corrcoef(*(lambda d: (d["f1"], d["f2"]))(mmoe_synthetic.make_data(p, 20_000)))[0, 1]
        for p in (1.0, 0.9, 0.5, 0.0)
    ]
    assert np.all(np.diff(corr) < 0) and corr[0] > 0.999


SMOKE = {
    "toy2d": ['methods=["mgda","famo"]', "steps=20"],
    "gradnorm_synthetic": [
        "steps=3",
        "n_train=64",
        "n_test=32",
        "hidden=[8]",
        'methods=["ew","gradnorm"]',
    ],
    "mmoe_synthetic": [
        "steps=3",
        "seeds=1",
        "correlations=[1.0,0.5]",
        "n_train=64",
        "n_test=32",
        "experts=2",
        "expert_width=4",
    ],
    "linear": ["steps=3", "atol=10.0"],
    "text": ["steps=3", 'methods=["ew"]', "n_train=64", "n_test=32", "features=8"],
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_cli_smoke(name, tmp_path, capsys):
    args = ["run", name, "--workdir", str(tmp_path)]
    for item in SMOKE[name]:
        args += ["--set", item]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmark"] == name
    out = capsys.readouterr().out
    assert "summary.json" in out and "---" in out


def test_cli_rejects_unknown_benchmark_field(capsys):
    assert main(["run", "linear", "--set", "nonsense=1"]) == 2  # a usage error
    assert "Unknown benchmark field" in capsys.readouterr().err


# experiments/benchmark.py: the new flags at smoke-test sizes (no timings asserted).

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
QUICK = ["--quick", "--repeats", "1", "--warmup", "1", "--agg-tasks", ""]
ROW_KEYS = {"T", "method", "engine", "step_ms", "memory_mb", "final_loss",
            "torchjd_autojac", "torchjd_autogram"}


@pytest.fixture(scope="module")
def benchmark_script():
    sys.path.insert(0, str(EXPERIMENTS))
    import benchmark

    yield benchmark
    sys.path.remove(str(EXPERIMENTS))


def test_benchmark_engines_agree(benchmark_script, tmp_path):
    """Both engines take the same SGD steps: equal losses after two updates, same JSON rows."""
    out = tmp_path / "engines.json"
    benchmark_script.main([*QUICK, "--tasks", "3", "--methods", "upgrad", "--engines",
                           "jacobian,gramian", "--no-torch", "--out", str(out)])
    rows = json.loads(out.read_text())["engines"]
    assert [(r["T"], r["method"], r["engine"]) for r in rows] == [
        (3, "upgrad", "jacobian"), (3, "upgrad", "gramian")]
    for row in rows:
        assert ROW_KEYS <= set(row) and row["step_ms"] > 0 and row["memory_mb"] > 0
        assert row["torchjd_autojac"] is None and row["torchjd_autogram"] is None
    np.testing.assert_allclose(rows[0]["final_loss"], rows[1]["final_loss"], rtol=1e-5)


def test_benchmark_iwrm_rows(benchmark_script, tmp_path):
    """IWRM: a plain row, then one row per weighting of the B = 16 per-sample losses."""
    out = tmp_path / "iwrm.json"
    benchmark_script.main([*QUICK, "--workload", "iwrm", "--methods", "mean,upgrad",
                           "--no-torch", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = report["iwrm"]
    assert [(r["method"], r["engine"], r["rows"]) for r in rows] == [
        ("plain", None, 16), ("mean", "gramian", 16), ("upgrad", "gramian", 16)]
    assert all(r["step_ms"] > 0 and np.isfinite(r["final_loss"]) for r in rows)
    # The mean weighting of the B rows is the plain step's gradient: the same SGD trajectory.
    np.testing.assert_allclose(rows[1]["final_loss"], rows[0]["final_loss"], rtol=1e-5)
    assert "torch" in report["notes"][0]


def test_benchmark_torch_peer_takes_the_same_steps(benchmark_script):
    """torchjd's autojac, on the same weights and batch, follows mtljax's exact UPGrad steps."""
    pytest.importorskip("torch")
    pytest.importorskip("torchjd")
    args = benchmark_script.parse_args([*QUICK, "--tasks", "2", "--threads", "1"])
    peer = benchmark_script.peer_summary(benchmark_script.run_peer(args, "autojac", 2, "upgrad"))
    assert {"step_ms", "peak_rss_mb", "rss_before_mb", "final_loss"} <= set(peer)
    ours = benchmark_script.time_jax_step("upgrad", 2, args, engine="jacobian")
    np.testing.assert_allclose(peer["final_loss"], ours["final_loss"], rtol=1e-4)
