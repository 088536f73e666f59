"""Loss-weighting methods: golden values against NumPy references, state evolution, contracts.

Each reference below is written from the paper's formula, independently of the library code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy import make_problem

import mtljax

DTYPES = [jnp.float32, jnp.float64]
# Per-step loss sequences for multi-step golden tests (T = 3).
LOSS_SEQ = np.array(
    [
        [2.0, 0.5, 1.0],
        [1.5, 0.6, 0.9],
        [1.2, 0.4, 1.1],
        [0.9, 0.45, 0.7],
        [0.8, 0.3, 0.75],
        [0.6, 0.35, 0.5],
        [0.55, 0.2, 0.45],
        [0.4, 0.25, 0.42],
    ]
)


def tol(dtype):
    return dict(rtol=2e-5, atol=1e-7) if dtype == jnp.float32 else dict(rtol=1e-10, atol=1e-12)


def run_weights(method, losses_seq, dtype, after_seq=None):
    """Jitted weights_fn over a loss sequence; returns the [S, T] weights and the last state."""
    state = method.init(None)
    fn = jax.jit(lambda s, losses: method.loss_weights(s, task_losses=losses))
    out = []
    for i, losses in enumerate(losses_seq):
        w, state = fn(state, jnp.asarray(losses, dtype))
        assert w.dtype == dtype and w.shape == (method.num_tasks,)
        out.append(np.asarray(w))
        if after_seq is not None:
            state = method.after_step(state, task_losses_after=jnp.asarray(after_seq[i], dtype))
    return np.stack(out), state


def np_adam(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """A NumPy Adam (PyTorch semantics: weight decay added to the gradient)."""
    mem = {"m": 0.0, "v": 0.0, "t": 0}

    def step(x, g):
        g = g + weight_decay * x
        mem["t"] += 1
        mem["m"] = b1 * mem["m"] + (1 - b1) * g
        mem["v"] = b2 * mem["v"] + (1 - b2) * g * g
        m_hat = mem["m"] / (1 - b1 ** mem["t"])
        v_hat = mem["v"] / (1 - b2 ** mem["t"])
        return x - lr * m_hat / (np.sqrt(v_hat) + eps)

    return step


def state_dtypes(state):
    return jax.tree.map(lambda x: (x.shape, x.dtype), state)


# ---------------------------------------------------------------- stateless


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed(dtype):
    method = mtljax.get_method("constant", 3, weights=[2.0, -0.5, 0.0])
    w, _ = run_weights(method, LOSS_SEQ[:2], dtype)
    np.testing.assert_array_equal(w, [[2.0, -0.5, 0.0]] * 2)
    for bad in ([1.0, 2.0], [1.0, np.nan, 0.0], [np.inf, 1.0, 1.0]):
        with pytest.raises(ValueError, match="weights"):
            mtljax.get_method("fixed", 3, weights=bad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_si(dtype):
    losses = np.array([[2.0, 0.5, 1e-8], [1e8, 0.0, -1.0]])
    w, _ = run_weights(mtljax.get_method("si", 3), losses, dtype)
    np.testing.assert_allclose(w, 1.0 / np.maximum(losses, 1e-12), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gls(dtype):
    losses = np.array([[2.0, 0.5, 1.0], [1e8, 1e-8, 3.0], [0.0, 1.0, 2.0]])
    w, _ = run_weights(mtljax.get_method("gls", 3), losses, dtype)
    safe = np.maximum(losses, 1e-12)
    geo = np.prod(safe, axis=1, keepdims=True) ** (1 / 3)
    np.testing.assert_allclose(w, geo / (3 * safe), **tol(dtype))
    # Σ w L is the geometric mean itself (Euler's theorem for a 1-homogeneous function).
    np.testing.assert_allclose((w * safe)[:2].sum(1), geo[:2, 0], **tol(dtype))


def test_alternating_round_robin_and_probs():
    w, _ = run_weights(
        mtljax.get_method("alternating", 3, order="round_robin"), LOSS_SEQ[:5], jnp.float32
    )
    np.testing.assert_array_equal(w, np.eye(3)[[0, 1, 2, 0, 1]])
    w, _ = run_weights(
        mtljax.get_method("alternating", 3, probs=[0.0, 2.0, 0.0]), LOSS_SEQ, jnp.float64
    )
    np.testing.assert_array_equal(w, np.tile([0.0, 1.0, 0.0], (len(LOSS_SEQ), 1)))


def test_alternating_random_draws():
    method = mtljax.get_method("alternating", 3, key=3)
    state = method.init(None)
    draws = jax.lax.scan(
        lambda s, _: method.loss_weights(s, task_losses=jnp.ones(3))[::-1], state, None, 300
    )[1]
    counts = np.asarray(draws).sum(0)
    assert np.all(np.asarray(draws).sum(1) == 1)
    assert np.all(np.abs(counts - 100) < 35), counts
    with pytest.raises(ValueError, match="probs"):
        mtljax.get_method("alternating", 3, order="round_robin", probs=[1, 1, 1])
    with pytest.raises(ValueError, match="probs"):
        mtljax.get_method("alternating", 3, probs=[-1, 1, 1])


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw(distribution):
    method = mtljax.get_method("rlw", 4, distribution=distribution, key=1)
    w, _ = run_weights(method, np.ones((20, 4)), jnp.float32)
    assert np.all(w > 0)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    assert not np.allclose(w[0], w[1])  # fresh draws each step
    again, _ = run_weights(method, np.ones((20, 4)), jnp.float32)
    np.testing.assert_array_equal(w, again)  # the key lives in the state
    if distribution == "uniform":
        # softmax of U(0,1) samples: every weight within [1/(1+3e), e/(e+3)].
        assert np.all(w > 1 / (1 + 3 * np.e)) and np.all(w < np.e / (np.e + 3))


def test_random_is_rlw():
    a, _ = run_weights(mtljax.get_method("random", 3, key=5), LOSS_SEQ, jnp.float32)
    b, _ = run_weights(mtljax.get_method("rlw", 3, key=5), LOSS_SEQ, jnp.float32)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- learned parameters


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["half", "full"])
def test_uw_golden(form, dtype):
    c = 0.5 if form == "half" else 1.0
    method = mtljax.get_method("uw", 3, lr=0.1, form=form, init=-0.5, dtype=dtype)
    w, state = run_weights(method, LOSS_SEQ, dtype)
    adam, s, ref = np_adam(0.1), np.full(3, -0.5), []
    for losses in LOSS_SEQ:
        ref.append(c * np.exp(-s))
        s = adam(s, c * (1 - np.exp(-s) * losses))
    np.testing.assert_allclose(w, ref, **tol(dtype))
    np.testing.assert_allclose(state.log_vars, s, **tol(dtype))


def test_uw_sgd_fixed_point():
    # Plain gradient descent on s with constant losses converges to e^s = L.
    losses = np.array([0.2, 1.0, 5.0])
    method = mtljax.get_method("uw", 3, optimizer=optax.sgd(0.5), form="full")
    _, state = run_weights(method, np.tile(losses, (200, 1)), jnp.float64)
    np.testing.assert_allclose(np.exp(state.log_vars), losses, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_imtl_l_golden(dtype):
    method = mtljax.get_method("imtl_l", 3, lr=0.05, dtype=dtype)
    w, state = run_weights(method, LOSS_SEQ, dtype)
    adam, s, ref = np_adam(0.05), np.zeros(3), []
    for losses in LOSS_SEQ:
        ref.append(np.exp(s))
        s = adam(s, np.exp(s) * losses - 1)
    np.testing.assert_allclose(w, ref, **tol(dtype))
    np.testing.assert_allclose(state.log_scales, s, **tol(dtype))
    # At the fixed point the scaled losses are equal: w = 1/L.
    losses = np.array([0.2, 1.0, 5.0])
    sgd = mtljax.get_method("imtl_l", 3, optimizer=optax.sgd(0.1), dtype=jnp.float64)
    w, _ = run_weights(sgd, np.tile(losses, (300, 1)), jnp.float64)
    np.testing.assert_allclose(w[-1], 1 / losses, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_famo_same_batch_golden(dtype):
    after_seq = LOSS_SEQ * 0.9 + np.array([0.0, 0.05, -0.02])
    method = mtljax.get_method("famo", 3, lr=0.1, weight_decay=0.01, min_loss=0.1, dtype=dtype)
    w, state = run_weights(method, LOSS_SEQ, dtype, after_seq=after_seq)
    adam, xi, ref = np_adam(0.1, weight_decay=0.01), np.zeros(3), []
    for before, after in zip(LOSS_SEQ, after_seq, strict=True):
        z = np.exp(xi) / np.exp(xi).sum()
        gaps = np.maximum(before - 0.1, 0) + 1e-8
        ref.append(z / gaps / np.sum(z / gaps))
        delta = np.log(gaps) - np.log(np.maximum(after - 0.1, 0) + 1e-8)
        jac = np.diag(z) - np.outer(z, z)  # ∂z/∂ξ, symmetric
        xi = adam(xi, jac @ delta)
    np.testing.assert_allclose(w, ref, **tol(dtype))
    np.testing.assert_allclose(state.logits, xi, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_famo_next_batch_golden(dtype):
    method = mtljax.get_method("famo", 3, same_batch=False, dtype=dtype)
    assert method.after_step is None
    w, state = run_weights(method, LOSS_SEQ, dtype)
    adam, xi, ref, prev = np_adam(0.025, weight_decay=1e-3), np.zeros(3), [], None
    for losses in LOSS_SEQ:
        gaps = losses + 1e-8
        if prev is not None:
            z = np.exp(xi) / np.exp(xi).sum()
            xi = adam(xi, (np.diag(z) - np.outer(z, z)) @ (np.log(prev) - np.log(gaps)))
        z = np.exp(xi) / np.exp(xi).sum()
        ref.append(z / gaps / np.sum(z / gaps))
        prev = gaps
    np.testing.assert_allclose(w, ref, **tol(dtype))
    np.testing.assert_allclose(state.logits, xi, **tol(dtype))


def test_famo_balances_improvement():
    # Task 0 improves fast, task 1 not at all: the logits move weight towards task 1.
    method = mtljax.get_method("famo", 2, lr=0.1)
    _, state = run_weights(method, [[1.0, 1.0]] * 5, jnp.float32, after_seq=[[0.5, 1.0]] * 5)
    z = jax.nn.softmax(state.logits)
    assert z[1] > z[0]


# ---------------------------------------------------------------- epoch / warm-up statistics


@pytest.mark.parametrize("dtype", DTYPES)
def test_dwa_golden(dtype):
    spe, temp = 2, 2.0
    w, state = run_weights(
        mtljax.get_method("dwa", 3, steps_per_epoch=spe, dtype=dtype), LOSS_SEQ, dtype
    )
    epochs = LOSS_SEQ.reshape(-1, spe, 3).mean(1)
    for step in range(len(LOSS_SEQ)):
        e = step // spe
        if e < 2:
            ref = np.ones(3)
        else:
            r = epochs[e - 1] / epochs[e - 2]
            ref = 3 * np.exp(r / temp) / np.exp(r / temp).sum()
        np.testing.assert_allclose(w[step], ref, **tol(dtype))
    np.testing.assert_allclose(state.last, epochs[-1], **tol(dtype))
    np.testing.assert_allclose(state.before_last, epochs[-2], **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", ["log", "linear"])
def test_stch_golden(transform, dtype):
    warmup, window, mu = 4, 2, 0.5
    method = mtljax.get_method(
        "stch", 3, warmup_steps=warmup, nadir_steps=window, mu=mu, transform=transform, dtype=dtype
    )
    w, _ = run_weights(method, LOSS_SEQ, dtype)
    nadir = LOSS_SEQ[warmup - window : warmup].mean(0)
    np.testing.assert_allclose(w[:warmup], 1 / LOSS_SEQ[:warmup], **tol(dtype))
    for losses, got in zip(LOSS_SEQ[warmup:], w[warmup:], strict=True):
        u = np.log(losses / nadir) if transform == "log" else losses / nadir - 1
        p = np.exp(u / mu) / np.exp(u / mu).sum()
        np.testing.assert_allclose(
            got, 3 * p / (losses if transform == "log" else nadir), **tol(dtype)
        )
    ew, _ = run_weights(
        mtljax.get_method("stch", 3, warmup_steps=2, warmup="ew"), LOSS_SEQ[:2], dtype
    )
    np.testing.assert_array_equal(ew, np.ones((2, 3)))


# ---------------------------------------------------------------- contracts

CASES = {
    "fixed": dict(weights=[1.0, 2.0, 0.5]),
    "alternating": {},
    "uw": {},
    "dwa": dict(steps_per_epoch=2),
    "si": {},
    "gls": {},
    "rlw": {},
    "imtl_l": {},
    "stch": dict(warmup_steps=2),
    "famo": {},
}
EXTREME = np.array(
    [
        [0.0, 0.0, 0.0],
        [1e8, 1e-8, 1.0],
        [1e-8, 1e-8, 1e-8],
        [1e8, 1e8, 1e8],
        [0.0, 1e8, 1e-8],
        [1.0, 2.0, 3.0],
        [1e8, 0.0, 1e-8],
    ]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_and_stable_state(name, dtype):
    """Finite weights on zero/huge/tiny losses; the state keeps its shapes and dtypes."""
    method = mtljax.get_method(name, 3, **CASES[name])
    state = method.init(None)
    fn = jax.jit(lambda s, losses: method.apply(jnp.eye(3, dtype=dtype), s, task_losses=losses))
    for losses in EXTREME:
        out = fn(state, jnp.asarray(losses, dtype))
        assert state_dtypes(out.state) == state_dtypes(state)
        assert out.weights.dtype == dtype
        assert np.all(np.isfinite(out.weights)), (losses, out.weights)
        np.testing.assert_allclose(out.updates, out.weights, **tol(dtype))
        state = out.state
        if method.after_step is not None:
            state = method.after_step(state, task_losses_after=jnp.asarray(losses[::-1], dtype))
    assert fn._cache_size() == 1
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(np.all(np.isfinite(x)) for x in floats)


def test_t1_and_validation():
    for name, kw in CASES.items():
        kw = dict(kw, weights=[1.0]) if name == "fixed" else kw
        method = mtljax.get_method(name, 1, **kw)
        w, _ = method.loss_weights(method.init(None), task_losses=jnp.ones(1))
        assert w.shape == (1,) and np.isfinite(w).all()
    bad = [
        ("dwa", dict(steps_per_epoch=0)),
        ("dwa", dict(steps_per_epoch=2, temperature=0)),
        ("uw", dict(form="log")),
        ("stch", dict(warmup_steps=2, nadir_steps=3)),
        ("stch", dict(warmup_steps=2, mu=0.0)),
        ("rlw", dict(distribution="beta")),
        ("famo", dict(lr=-1.0)),
        ("alternating", dict(order="sorted")),
        ("si", dict(eps=0)),
    ]
    for name, kw in bad:
        with pytest.raises(ValueError):
            mtljax.get_method(name, 3, **kw)
    with pytest.raises(ValueError, match="task_losses"):
        mtljax.get_method("si", 3).loss_weights(optax.EmptyState(), task_losses=None)


# ---------------------------------------------------------------- end to end

E2E = {
    "fixed": dict(weights=[1.0, 0.5, 2.0]),
    "alternating": dict(order="round_robin"),
    "uw": dict(lr=0.01),
    "dwa": dict(steps_per_epoch=5),
    "si": {},
    "gls": {},
    "rlw": {},
    "imtl_l": dict(lr=0.01),
    "stch": dict(warmup_steps=10),
    "famo": {},
    "famo_next_batch": dict(same_batch=False),
}


@pytest.mark.parametrize("case", sorted(E2E))
def test_train_step_reduces_every_loss(case):
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method(case.removesuffix("_next_batch"), len(tasks), **E2E[case])
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=False))
    first = None
    for _ in range(40):
        state, metrics = step(state, batch)
        first = metrics["losses"] if first is None else first
        assert np.all(np.isfinite(metrics["weights"]))
    assert np.all(np.asarray(metrics["losses"]) < np.asarray(first)), (first, metrics["losses"])
    if case == "famo":  # after_step ran: the logits moved away from 0.
        assert np.any(np.asarray(state.method_state.logits) != 0)


def test_loss_shortcut_equals_jacobian_path_with_state():
    tasks, loss, params, batch = make_problem()
    method = mtljax.get_method("uw", len(tasks), lr=0.1)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    fast = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=False))
    full = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics=True))
    a = b = state
    for _ in range(3):
        a, _ = fast(a, batch)
        b, _ = full(b, batch)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
