"""LTB (learning to branch): Gumbel-softmax weights, the soft supernet and the argmax tree
against NumPy forward passes, the shared/task-specific split, training, the runner."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtljax import nnx_bridge, objectives
from mtljax.cli import main
from mtljax.metrics_log import read_jsonl
from mtljax.models import LTB
from mtljax.models.ltb import batch_key, branch_weights
from mtljax.run import run

HEADS = {"a": 2, "b": 3}
SCHEDULE = {
    "steps": 40,
    "batch_size": 256,
    "log_every": 10,
    "eval_every": 20,
    "eval_batch_size": 512,
    "checkpoint_every": 20,
    "diagnostics_every": 0,
}


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def relu(z):
    return np.maximum(z, 0.0)


def small_model(temperature=0.7, **kw):
    """3 inputs, layers of 2 and 3 blocks (widths 4, 5), heads a (2) and b (3), logits set."""
    model = LTB(3, (4, 5), HEADS, branches=(2, 3), temperature=temperature, rngs=nnx.Rngs(1), **kw)
    rng = np.random.default_rng(0)
    model.shared[1].logits[...] = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    for head in model.heads.values():
        head.logits[...] = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
    return model


def numpy_params(model):
    """Kernels, biases and logits as float64 NumPy arrays."""
    layers = [
        (np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64))
        for layer in model.shared
    ]
    heads = [
        (np.asarray(h.out.kernel[...], np.float64), np.asarray(h.out.bias[...], np.float64))
        for h in model.heads.values()
    ]
    logits = [np.asarray(model.shared[1].logits[...], np.float64)]
    logits.append(np.stack([np.asarray(h.logits[...], np.float64) for h in model.heads.values()]))
    return layers, heads, logits


def numpy_forward(model, x, mixings):
    """The LTB forward pass with every child's weights over its parents given (rows)."""
    (k1, b1), (k2, b2) = numpy_params(model)[0]
    heads = numpy_params(model)[1]
    h1 = relu(np.einsum("bi,nio->nbo", x, k1) + b1[:, None])  # [2, B, 4]
    u2 = np.einsum("cp,pbd->cbd", mixings[0], h1)
    h2 = relu(np.einsum("nbi,nio->nbo", u2, k2) + b2[:, None])  # [3, B, 5]
    reads = np.einsum("cp,pbd->cbd", mixings[1], h2)
    return [reads[t] @ k + b for t, (k, b) in enumerate(heads)]


def jitted(model):
    """``model(x, key=key, temperature=tau)``, compiled; ``None``: the batch key, the model τ."""
    graphdef, state = nnx.split(model)

    def forward(x, key=None, tau=None):
        return nnx.merge(graphdef, state)(jnp.asarray(x), key=key, temperature=tau)

    return jax.jit(forward)


def test_branch_weights_match_numpy_and_hard_is_straight_through():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
    key = jax.random.key(5)
    noise = np.asarray(jax.random.gumbel(key, (3, 4), jnp.float32), np.float64)
    want = softmax((np.asarray(logits, np.float64) + noise) / 0.5)
    np.testing.assert_allclose(branch_weights(logits, key, 0.5), want, rtol=1e-5)
    hard = branch_weights(logits, key, 0.5, hard=True)
    np.testing.assert_array_equal(hard, np.eye(4)[np.argmax(want, axis=-1)])
    # Straight-through: the hard sample's gradient is the soft weights' gradient.
    c = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    grads = [
        jax.grad(lambda t, h=h: jnp.sum(c * branch_weights(t, key, 0.5, hard=h)))(logits)
        for h in (False, True)
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


def test_soft_mixture_matches_a_hand_computation():
    model = small_model(temperature=5.0)
    x = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32)
    key = jax.random.key(3)
    forward = jitted(model)
    out = forward(x, key, 0.7)  # the temperature of this call
    assert {k: v.shape for k, v in out.items()} == {"a": (6, 2), "b": (6, 3)}
    layer_key, head_key = jax.random.split(key, 2)
    logits = numpy_params(model)[2]
    noise = [
        np.asarray(jax.random.gumbel(k, t.shape, jnp.float32), np.float64)
        for k, t in zip((layer_key, head_key), logits, strict=True)
    ]
    mixings = [softmax((t + g) / 0.7) for t, g in zip(logits, noise, strict=True)]
    want = numpy_forward(model, x.astype(np.float64), mixings)
    for got, expected in zip(out.values(), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    # Without a key, the noise is keyed by the batch: the same batch, the same tree sample;
    # the batch in another order, another sample.
    again = forward(x)
    np.testing.assert_array_equal(again["a"], forward(x)["a"])
    assert not np.allclose(again["a"], forward(x[::-1])["a"][::-1])


def test_batch_key_is_an_exact_integer_digest():
    x = np.random.default_rng(6).normal(size=(5, 7)).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64).ravel()
    weights = (np.arange(x.size, dtype=np.uint64) * 0x9E3779B1 % 2**32) | 1
    digest = int(np.sum(bits * weights % 2**32) % 2**32)
    key = jax.random.key(7)
    want = jax.random.key_data(jax.random.fold_in(key, np.uint32(digest)))
    for fn in (batch_key, jax.jit(batch_key)):
        np.testing.assert_array_equal(jax.random.key_data(fn(key, jnp.asarray(x))), want)


def test_fixed_tree_is_the_argmax_tree():
    model = small_model()
    logits = numpy_params(model)[2]
    tree = tuple(tuple(int(p) for p in np.argmax(t, axis=-1)) for t in logits)
    assert model.derive() == tree
    for probabilities, t in zip(model.branch_probabilities(), logits, strict=True):
        np.testing.assert_allclose(probabilities, softmax(t), rtol=1e-6)
    x = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    # The hand-built network: each task's chain of blocks, read off the argmax tree.
    (k1, b1), (k2, b2) = numpy_params(model)[0]
    heads = numpy_params(model)[1]
    want = []
    for t, (k, b) in enumerate(heads):
        block2 = tree[1][t]
        block1 = tree[0][block2]
        h1 = relu(x.astype(np.float64) @ k1[block1] + b1[block1])
        h2 = relu(h1 @ k2[block2] + b2[block2])
        want.append(h2 @ k + b)
    model.eval()  # searching model, evaluation mode: the argmax tree
    evaluated = model(jnp.asarray(x))
    model.train()
    model.fix()  # the tree is fixed: training mode reads it too, no noise
    fixed = model(jnp.asarray(x), key=jax.random.key(9))
    rebuilt = LTB(3, (4, 5), HEADS, branches=(2, 3), tree=tree, rngs=nnx.Rngs(1))
    nnx.update(rebuilt, nnx.state(model, nnx.Param))
    for outputs in (evaluated, fixed, rebuilt(jnp.asarray(x))):
        for got, expected in zip(outputs.values(), want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rows of lengths"):
        model.fix(((0, 0), (0, 1)))
    with pytest.raises(ValueError, match=r"parents must lie in \[0, 3\)"):
        model.fix(((0, 1, 0), (0, 3)))


def task_losses_fn(outputs, batch):
    losses = {t: objectives.softmax_cross_entropy(outputs[t], batch[t]) for t in HEADS}
    return losses, {}


def flat_grads(model, batch):
    """``{task: {path: grad}}`` of each task's loss w.r.t. every parameter."""
    graphdef, params, rest = nnx_bridge.split_params(model)
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses_fn)

    def grads(p):
        return {t: jax.grad(lambda q, t=t: loss.decode(q, None, batch)[0][t])(p) for t in HEADS}

    return {
        task: {
            "/".join(map(str, path)): np.asarray(g)
            for part in per_task.values()
            for path, g in nnx.to_flat_state(part)
        }
        for task, per_task in jax.jit(grads)(params).items()
    }


def test_gradients_reach_the_branching_logits_and_split_by_task():
    rng = np.random.default_rng(5)
    batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}
    batch |= {t: jnp.asarray(rng.integers(0, d, 8)) for t, d in HEADS.items()}
    model = small_model()
    grads = flat_grads(model, batch)
    for task, other in (("a", "b"), ("b", "a")):
        assert np.any(grads[task]["shared/1/logits"] != 0)  # shared branching logits
        assert np.any(grads[task][f"heads/{task}/logits"] != 0)
        # Each task's loss reaches every shared block and none of the other task's parameters.
        shared = [g for path, g in grads[task].items() if path.startswith("shared/")]
        assert len(shared) == 5 and all(np.any(g != 0) for g in shared)
        assert all(np.all(g == 0) for p, g in grads[task].items() if f"/{other}/" in p)
    model.fix()
    fixed = flat_grads(model, batch)
    assert all(np.all(g[path] == 0) for g in fixed.values() for path in g if "logits" in path)


def test_runner_trains_ltb_and_resumes_exactly(tmp_path, cached_data):
    """`mtljax run multidigits --set model=ltb` with PCGrad: the loss falls; a run stopped at
    step 20 and resumed ends as the uninterrupted one (the sampled trees are keyed by batch)."""
    sets = {
        "model": "ltb",
        "hidden": [8, 8],
        "method": "pcgrad",
        "optimizer.lr": 0.01,
        "data.kwargs.pairs_per_image": 1,
        "tensorboard": "false",
    }
    sets |= {f"schedule.{k}": v for k, v in SCHEDULE.items()}
    args = [item for key, value in sets.items() for item in ("--set", f"{key}={value}")]
    full = tmp_path / "full"
    assert main(["run", "multidigits", "--workdir", str(full), *args]) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert summary["config"]["model"]["name"] == "ltb"
    losses = [r["losses"] for r in read_jsonl(full / "metrics.jsonl") if "losses" in r]
    assert all(losses[-1][t] < 0.9 * losses[0][t] for t in ("left", "right")), losses
    # The run as if stopped after step 20: its last checkpoint and summary removed.
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / str(SCHEDULE["steps"]))
    (part / "summary.json").unlink()
    resumed = run({**summary["config"], "workdir": str(part)}, resume=True)
    assert resumed["resumed_from"] == SCHEDULE["checkpoint_every"]
    for key in ("val", "test", "best_step", "final_val"):
        assert resumed[key] == summary[key], key
