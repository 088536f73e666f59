"""Multi-task architectures: shapes, the shared/task-specific split, training, paper details."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtljax
from mtljax import nnx_bridge, objectives
from mtljax.data.multidigits import load_multidigits
from mtljax.models import (
    CGC,
    MLP,
    MTAN,
    PLE,
    Cascade,
    CrossStitch,
    DSelectK,
    HardSharing,
    MMoE,
    ResNet,
    SequenceEncoder,
    SoftSharing,
)
from mtljax.models.dselect_k import dselect_weights, smooth_step
from mtljax.models.registry import ARCHITECTURES, build_architecture
from mtljax.run import run

TASKS = ("left", "right")
HEADS = {"left": 10, "right": 10}
IN = 144  # MultiDigits: 12 × 12 × 1


def mlps(count, rngs, hidden=(8,)):
    return [MLP(IN, hidden, rngs=rngs) for _ in range(count)]


BUILDERS = {
    "soft_sharing": lambda r: SoftSharing(mlps(2, r), HEADS, weight=1e-2, rngs=r),
    "cross_stitch": lambda r: CrossStitch(IN, (8, 8), HEADS, rngs=r),
    "mmoe": lambda r: MMoE(mlps(3, r), IN, HEADS, rngs=r),
    "cgc": lambda r: CGC(IN, (8,), HEADS, num_shared=2, num_task_experts=1, rngs=r),
    "ple": lambda r: PLE(IN, (8,), HEADS, num_levels=2, rngs=r),
    "mtan": lambda r: MTAN(1, HEADS, features=(4, 4), rngs=r),
    "dselect_k": lambda r: DSelectK(mlps(4, r), IN, HEADS, k=2, rngs=r),
    "resnet": lambda r: HardSharing(
        ResNet(1, features=(4, 4), out_features=8, grid=3, rngs=r), HEADS, rngs=r
    ),
    "cascade": lambda r: Cascade(MLP(IN, (8,), rngs=r), HEADS, {"right": ["left"]}, rngs=r),
}
WITH_REPRESENTATION = {"mmoe", "cgc", "mtan", "dselect_k", "resnet", "cascade"}
# Learning, not speed, is under test: XLA's cheapest CPU pipeline halves the compile times.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


@pytest.fixture(scope="module")
def models():
    return {name: build(nnx.Rngs(0)) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def data():
    return load_multidigits(pairs_per_image=1)


@pytest.fixture(scope="module")
def batch(data):
    """64 MultiDigits training samples."""
    return {k: jnp.asarray(data.splits["train"][k][:64]) for k in ("x", *TASKS)}


def task_losses_fn(outputs, batch):
    losses = {t: objectives.softmax_cross_entropy(outputs[t], batch[t]) for t in TASKS}
    return losses, {}


def per_task_grads(model, batch):
    """``{task: grads of that task's (penalised) loss w.r.t. {"shared", "heads"}}``."""
    graphdef, params, rest = nnx_bridge.split_params(model)
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses_fn)

    def grads(p):
        def one(task):
            return jax.grad(lambda q: loss.decode(q, loss.encode(q, batch), batch)[0][task])(p)

        return {t: one(t) for t in TASKS}

    return compiled(grads, params)(params)


def flat(tree):
    return {"/".join(map(str, path)): np.asarray(v) for path, v in nnx.to_flat_state(tree)}


@pytest.mark.parametrize("name", BUILDERS)
def test_output_shapes(models, batch, name):
    out = models[name](batch["x"][:5])
    assert {k: v.shape for k, v in out.items()} == {t: (5, 10) for t in TASKS}
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())


@pytest.mark.parametrize("name", BUILDERS)
def test_shared_and_task_specific_split(models, batch, name):
    model = models[name]
    grads = per_task_grads(model, batch)
    _, params, _ = nnx_bridge.split_params(model)
    shared, heads = flat(params["shared"]), flat(params["heads"])
    assert shared and all("shared" in path.split("/") for path in shared)
    # Every task-specific parameter belongs to exactly one task...
    owners = {path: [t for t in TASKS if t in path.split("/")] for path in heads}
    assert all(len(o) == 1 for o in owners.values()), owners
    for task, other in itertools.permutations(TASKS):
        head_grads = flat(grads[task]["heads"])
        # ... and only that task's loss reaches it (the cascade's stop-gradient included).
        assert all(np.all(head_grads[p] == 0) for p, o in owners.items() if o == [other])
        assert any(np.any(head_grads[p] != 0) for p, o in owners.items() if o == [task])
        # Every task's loss reaches the shared parameters.
        assert any(np.any(g != 0) for g in flat(grads[task]["shared"]).values())


@pytest.mark.parametrize(
    ("name", "method_name"), [(n, m) for n in BUILDERS for m in ("ew", "pcgrad")]
)
def test_trains_on_multidigits(models, batch, name, method_name):
    # The split is functional: training the parameters leaves the fixture's model unchanged.
    graphdef, params, rest = nnx_bridge.split_params(models[name])
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses_fn)
    method = mtljax.get_method(method_name, len(TASKS))
    opt = optax.adam(3e-2)
    state = mtljax.init_train_state(params, opt, method)
    step = compiled(
        mtljax.make_train_step(loss, TASKS, method, opt, diagnostics=False), state, batch
    )
    first = None
    for _ in range(25):
        state, metrics = step(state, batch)
        first = np.asarray(metrics["losses"]) if first is None else first
    last = np.asarray(metrics["losses"])
    assert np.all(np.isfinite(last)) and np.all(last < 0.8 * first), (first, last)


def test_representation_level_support(models, batch):
    for name, model in models.items():
        assert nnx_bridge.has_representation(model) == (name in WITH_REPRESENTATION)
        if name not in WITH_REPRESENTATION:
            with pytest.raises(ValueError, match="no single shared representation"):
                nnx_bridge.check_level(model, "representation")
        nnx_bridge.check_level(model, "parameters")
    # MMoE at the representation level: the experts' outputs are the representation.
    graphdef, params, rest = nnx_bridge.split_params(models["mmoe"])
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses_fn)
    assert loss.encode(params, batch).shape == (64, 3, 8)
    method = mtljax.get_method("mgda_ub", len(TASKS))
    opt = optax.adam(1e-2)
    state = mtljax.init_train_state(params, opt, method)
    step = compiled(
        mtljax.make_train_step(loss, TASKS, method, opt, diagnostics=False), state, batch
    )
    losses = []
    for _ in range(10):
        state, metrics = step(state, batch)
        losses.append(np.asarray(metrics["losses"]))
    assert np.all(losses[-1] < losses[0])
    # Without a representation, the train step refuses the representation level.
    graphdef, params, rest = nnx_bridge.split_params(models["cross_stitch"])
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses_fn)
    state = mtljax.init_train_state(params, opt, method)
    with pytest.raises(ValueError, match="representation level"):
        mtljax.make_train_step(loss, TASKS, method, opt)(state, batch)


@pytest.mark.parametrize("kind", ["pairs", "mean"])
def test_soft_sharing_penalty_matches_numpy(batch, kind):
    rngs, weight = nnx.Rngs(3), 0.37
    heads = {"a": 10, "b": 10, "c": 10}
    model = SoftSharing(
        [MLP(IN, (8, 8), rngs=rngs) for _ in range(3)],
        heads,
        weight=weight,
        penalty=kind,
        rngs=rngs,
    )
    theta = [
        np.concatenate([np.ravel(v) for v in jax.tree.leaves(nnx.state(t, nnx.Param))]).astype(
            np.float64
        )
        for t in model.shared
    ]
    mean = np.mean(theta, axis=0)
    if kind == "pairs":
        want = weight * sum(np.sum((a - b) ** 2) for a, b in itertools.combinations(theta, 2))
        shares = [
            weight / 2 * sum(np.sum((theta[t] - theta[j]) ** 2) for j in range(3) if j != t)
            for t in range(3)
        ]
    else:
        want = weight * sum(np.sum((a - mean) ** 2) for a in theta)
        shares = [weight * np.sum((a - mean) ** 2) for a in theta]
    np.testing.assert_allclose(model.penalty(), want, rtol=1e-5)
    got = model.task_penalties()
    np.testing.assert_allclose([got[t] for t in heads], shares, rtol=1e-5)
    np.testing.assert_allclose(sum(shares), want, rtol=1e-10)
    # model_loss adds each task's share to its loss.
    graphdef, params, rest = nnx_bridge.split_params(model)

    def fn(outputs, b):
        return {t: jnp.sum(outputs[t]) * 0 for t in heads}, {}

    loss = nnx_bridge.model_loss(graphdef, rest, fn)
    losses, _ = loss.decode(params, loss.encode(params, batch), batch)
    np.testing.assert_allclose([losses[t] for t in heads], shares, rtol=1e-5)


def test_soft_sharing_without_penalty_separates_the_trunks(batch):
    model = SoftSharing(mlps(2, nnx.Rngs(0)), HEADS, weight=0.0, rngs=nnx.Rngs(0))
    grads = per_task_grads(model, batch)
    for t, task in enumerate(TASKS):
        trunk_grads = {p: g for p, g in flat(grads[task]["shared"]).items()}
        assert all(np.all(g == 0) for p, g in trunk_grads.items() if p.split("/")[1] != str(t))
        assert any(np.any(g != 0) for p, g in trunk_grads.items() if p.split("/")[1] == str(t))


def test_cross_stitch_units_start_near_identity(batch):
    model = CrossStitch(IN, (8, 8, 8), {"a": 2, "b": 2, "c": 2}, rngs=nnx.Rngs(0))
    units = np.asarray(model.shared.stitches[...])
    assert units.shape == (3, 3, 3)
    for unit in units:  # α_S = 0.9 on the diagonal, rows summing to one (the paper's init)
        np.testing.assert_allclose(np.diag(unit), 0.9, rtol=1e-6)
        np.testing.assert_allclose(unit.sum(1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(unit[~np.eye(3, dtype=bool)], 0.05, rtol=1e-6)
    # α = I gives separate networks: task "left"'s loss never reaches column "right".
    separate = CrossStitch(IN, (8,), HEADS, self_weight=1.0, rngs=nnx.Rngs(0))
    kernel_grads = per_task_grads(separate, batch)["left"]["shared"]["shared"]["kernels"][0][...]
    assert np.any(kernel_grads[0] != 0) and np.all(kernel_grads[1] == 0)


def test_smooth_step_matches_the_cubic():
    gamma = 2.0
    t = jnp.linspace(-3.0, 3.0, 61)
    inner = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
    want = np.where(t <= -1, 0.0, np.where(t >= 1, 1.0, inner))
    np.testing.assert_allclose(smooth_step(t, gamma), want, atol=1e-12)
    slope = jax.vmap(jax.grad(lambda s: smooth_step(s, gamma)))(t)
    assert np.all(np.asarray(slope)[np.abs(np.asarray(t)) >= 1] == 0)
    assert float(jax.grad(lambda s: smooth_step(s, gamma))(1e30)) == 0.0  # no inf · 0


def test_dselect_weights_match_numpy_and_become_k_sparse():
    rng = np.random.default_rng(0)
    gamma, k, bits = 1.0, 2, 3
    z, alpha = rng.uniform(-0.6, 0.6, (5, k, bits)), rng.normal(size=(5, k))
    got = np.asarray(dselect_weights(jnp.asarray(z), jnp.asarray(alpha), gamma))
    s = np.asarray(smooth_step(jnp.asarray(z), gamma))
    softmax = np.exp(alpha) / np.exp(alpha).sum(1, keepdims=True)
    want = np.zeros((5, 2**bits))
    for b, i, expert in itertools.product(range(5), range(k), range(2**bits)):
        code = [(expert >> j) & 1 for j in range(bits)]
        r = np.prod([s[b, i, j] if c else 1 - s[b, i, j] for j, c in enumerate(code)])
        want[b, expert] += softmax[b, i] * r
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)
    assert np.all(np.count_nonzero(got, axis=1) > k)  # dense inside the transition region
    # Saturated selectors pick one expert each: bits (1, 0, 1) → expert 5, (0, 1, 0) → 2.
    z = jnp.array([[5.0, -5.0, 5.0], [-5.0, 5.0, -5.0]])
    alpha = jnp.array([0.3, -0.2])
    weights = np.asarray(dselect_weights(z, alpha, gamma))
    assert np.count_nonzero(weights) == k
    np.testing.assert_allclose(weights[[5, 2]], jax.nn.softmax(alpha), rtol=1e-12)


@pytest.mark.parametrize("per_example", [True, False])
def test_dselect_k_gates_are_distributions(models, batch, per_example):
    model = (
        models["dselect_k"]
        if per_example
        else DSelectK(mlps(4, nnx.Rngs(0)), IN, HEADS, k=2, per_example=False, rngs=nnx.Rngs(0))
    )
    for weights in model.gate_weights(batch["x"]).values():
        assert weights.shape == (64, 4)
        assert bool(jnp.all(weights >= 0))
        np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="power-of-two"):
        DSelectK(mlps(3, nnx.Rngs(0)), IN, HEADS, rngs=nnx.Rngs(0))


def test_mmoe_gates_are_distributions(models, batch):
    for weights in models["mmoe"].gate_weights(batch["x"]).values():
        assert weights.shape == (64, 3)
        np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_cascade_stop_gradient(batch, stop_gradient):
    rngs = nnx.Rngs(0)
    model = Cascade(
        MLP(IN, (8,), rngs=rngs),
        HEADS,
        {"right": ["left"]},
        stop_gradient=stop_gradient,
        rngs=rngs,
    )
    assert model.heads["right"].in_features == 8 + 10
    upstream = flat(per_task_grads(model, batch)["right"]["heads"])
    left = [g for p, g in upstream.items() if p.startswith("heads/left")]
    assert all(np.all(g == 0) for g in left) == stop_gradient


def test_cascade_validates_reads():
    rngs = nnx.Rngs(0)
    trunk = MLP(IN, (4,), rngs=rngs)
    with pytest.raises(ValueError, match="cycle"):
        Cascade(trunk, HEADS, {"right": ["left"], "left": ["right"]}, rngs=rngs)
    with pytest.raises(ValueError, match="unknown tasks"):
        Cascade(trunk, HEADS, {"right": ["middle"]}, rngs=rngs)


def test_resnet_downsamples_and_keeps_position(models):
    net = models["resnet"].shared
    assert isinstance(net, ResNet)
    assert [b.project is not None for b in net.blocks] == [False, True]  # stride 2 at stage 2
    x = np.zeros((2, 12, 12, 1), np.float32)
    x[0, :3, :3], x[1, -3:, -3:] = 1.0, 1.0
    out = nnx.jit(lambda m, v: m(v))(net, jnp.asarray(x))
    assert out.shape == (2, 8) and not np.allclose(out[0], out[1])


def test_sequence_encoder_ignores_padding():
    enc = SequenceEncoder(20, features=8, num_heads=2, max_length=8, rngs=nnx.Rngs(0))
    encode = nnx.jit(lambda m, tokens: m(tokens))
    short = encode(enc, jnp.array([[3, 4, 5], [7, 9, 1], [0, 0, 0]]))
    padded = encode(enc, jnp.array([[3, 4, 5, 0, 0], [7, 9, 1, 0, 0], [0, 0, 0, 0, 0]]))
    np.testing.assert_allclose(short, padded, rtol=1e-5, atol=1e-6)
    assert short.shape == (3, 8) and not np.allclose(short[0], short[1])
    np.testing.assert_array_equal(short[2], 0.0)  # padding only
    with pytest.raises(ValueError, match="max_length"):
        enc(jnp.ones((1, 9), jnp.int32))


def test_registry_builds_every_architecture():
    # The fixture's sizes, so that parameter initialisation reuses its compiled shapes.
    sizes = {"hidden": (8,), "cnn_features": (4, 4), "cnn_out": 8}
    for name in ARCHITECTURES:
        model = build_architecture(name, (12, 12, 1), HEADS, rngs=nnx.Rngs(0), **sizes)
        _, params, _ = nnx_bridge.split_params(model)
        assert jax.tree.leaves(params["shared"]) and jax.tree.leaves(params["heads"])
    mmoe = build_architecture("mmoe", (12, 12, 1), HEADS, rngs=nnx.Rngs(0), num_experts=5, **sizes)
    assert len(mmoe.shared) == 5
    with pytest.raises(ValueError, match="unknown option"):
        build_architecture("mmoe", (12, 12, 1), HEADS, rngs=nnx.Rngs(0), k=2, **sizes)
    with pytest.raises(ValueError, match="Unknown model 'nope'"):
        build_architecture("nope", (12, 12, 1), HEADS, rngs=nnx.Rngs(0))


def test_runner_runs_an_architecture_and_checks_the_level(data):
    small = {
        "model": "mmoe",
        "hidden": [8],
        "steps": 3,
        "batch_size": 32,
        "eval_every": 3,
        "eval_batch_size": 512,
        "diagnostics_every": 0,
        "dataset_kw": {"pairs_per_image": 1},
    }
    summary = run(small, data=data)
    assert set(summary["test"]) == set(TASKS)
    with pytest.raises(ValueError, match="no single shared representation"):
        run({**small, "model": "cross_stitch", "method": "mgda_ub"}, data=data)
