"""Task masks: a step with absent tasks is the step of the present tasks alone.

For every registry name (built with the claims table's hyper-parameters), ``task_mask`` [T]
leaves the absent tasks out of the method:

* **present sub-problem** — on T = 5 tasks with K present, the weights of the present tasks
  and the update equal those of the same method built for K tasks and run on their rows (the
  table's ``task_mask`` says whether exactly, to the row's ``rtol``, or in law for randomised
  methods); absent tasks get weight exactly 0. Under the table's ``min_tasks`` the method
  abstains: ``d = 0``. An all-True mask gives the unmasked method's result.
* **no leak** — absent rows and losses full of NaN and inf give bit for bit the result of
  absent rows full of finite garbage; with no task present ``d = 0``.
* **state** — absent tasks' per-task state (every state leaf with a leading task axis, both
  axes of ``[T, T]`` leaves) is left bit for bit as it was, and stays finite.

The K-task references are the property tests' compiled runners (``properties.runner``), so XLA
compiles each of them once in the whole suite; the masked runner compiles once per method and dtype
and takes the mask, the losses and the state as arguments.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from method_table import TABLE
from properties import DTYPES, assert_close, build, extra_inputs, natural_scale, run, runner, zoo

from mtljax.methods import method_names

NUM_TASKS = 5
DIM = 17  # the zoo's P, so the K-task runners are the property tests' own
# Masks per dtype: K = 3, 2, 1 and all present in float64; K = 2 and all present in float32
# (the K of the property tests' float32 runners).
MASKS = {
    "float64": ((True, False, True, True, False), (False, True, False, False, True),
                (False, False, False, True, False), (True,) * NUM_TASKS),
    "float32": ((False, True, False, True, False), (True,) * NUM_TASKS),
}
NAMES = sorted(TABLE)


def test_every_registered_method_is_tested():
    assert set(NAMES) == set(method_names())


def _hparam_overrides(name: str, mask: tuple[bool, ...]) -> tuple:
    """Task-axis hyper-parameters of the K-task method on the present tasks (``fixed``'s
    weights): the T-task values outside the mask, the K-task values inside it."""
    claims, present = TABLE[name], np.asarray(mask)
    out = []
    for key, make in sorted(claims.task_hparams.items()):
        values = np.array(make(NUM_TASKS), dtype=np.float64)
        values[present] = make(int(present.sum()))
        out.append((key, tuple(np.asarray(claims.task_value(key, values)).tolist())))
    return tuple(out)


@functools.cache
def masked_runner(name: str, overrides: tuple = ()):
    """``(method, step)``: the T-task method and its jitted masked step from a given state,
    ``step(J, losses, mask, state) -> (d, w, state)`` (the ``after_step`` hook included, with
    losses 0.9 L after the update)."""
    method = build(name, NUM_TASKS, **(TABLE[name].build_hparams(NUM_TASKS) | dict(overrides)))

    @jax.jit
    def step(jac, losses, mask, state):
        zeros = jnp.zeros(jac.shape[1:], jac.dtype)
        out = method.apply(jac, state, zeros, task_losses=losses, task_mask=mask,
                           **extra_inputs(method, jac))
        state = out.state
        if method.after_step is not None:
            state = method.after_step(state, task_losses_after=0.9 * losses, task_mask=mask)
        return out.updates, out.weights, state

    return method, step


def _runner_for(name, mask):
    return masked_runner(name, _hparam_overrides(name, mask))


def _init(method, dtype):
    return method.init(jnp.zeros((DIM,), dtype))


def _embed(rows: np.ndarray, mask: np.ndarray, filler: np.ndarray) -> np.ndarray:
    """``filler`` with the present rows replaced by ``rows``."""
    out = np.array(filler, dtype=np.float64)
    out[mask] = rows
    return out


def _garbage(shape, seed, kind):
    """Absent rows: large finite noise, or NaN and ±inf."""
    if kind == "finite":
        return 1e3 * np.random.default_rng(seed).normal(size=shape)
    out = np.full(shape, np.nan)
    out.reshape(-1)[::3] = np.inf
    out.reshape(-1)[1::3] = -np.inf
    return out


def _masked_run(name, mask, jac, losses, dtype, kind="finite", state=None):
    """One masked step on the K present rows ``jac`` embedded in T rows of garbage."""
    method, step = _runner_for(name, mask)
    present = np.asarray(mask)
    full_jac = _embed(jac, present, _garbage((NUM_TASKS, DIM), 1, kind))
    full_losses = _embed(losses, present, _garbage((NUM_TASKS,), 2, kind))
    state = _init(method, dtype) if state is None else state
    d, w, state = step(jnp.asarray(full_jac, dtype), jnp.asarray(full_losses, dtype),
                       jnp.asarray(present), state)
    return np.asarray(d), None if w is None else np.asarray(w), state


def weight_scale(jac: np.ndarray, degree: float | None) -> float:
    """The size ``‖J‖^(k−1)`` of weights whose update ``Jᵀw`` has degree k (1 for J = 0)."""
    norm = float(np.max(np.linalg.norm(jac, axis=1)))
    return natural_scale(jac, degree) / norm if norm > 0.0 else 1.0


def _cases(claim=lambda c: True):
    return [pytest.param(n, d, id=f"{n}-{d}") for n in NAMES for d in DTYPES if claim(TABLE[n])]


def _check_member(name, dtype, mask, member):
    """Asserts the sub-problem claim of one masked step on one zoo member."""
    claims, present = TABLE[name], np.asarray(mask)
    k = int(present.sum())
    d, w, _ = _masked_run(name, mask, member.jac, member.losses, dtype)
    assert np.all(np.isfinite(d)), f"non-finite update {d}"
    if w is not None:
        assert np.all(w[~present] == 0.0), f"absent tasks' weights {w}"
    if k < claims.min_tasks:
        assert not np.any(d), f"K < {claims.min_tasks} must abstain, got {d}"
        assert w is None or not np.any(w), f"abstaining weights {w}"
        return
    d_sub, w_sub = run(runner(name, k), member.jac, member.losses, dtype)
    rtol = claims.rtol[dtype]
    assert_close(d, d_sub, rtol, natural_scale(member.jac, claims.degree), "d vs K-task d")
    if w is not None:
        assert_close(w[present], w_sub, rtol, weight_scale(member.jac, claims.degree),
                     "w vs K-task w")


@pytest.mark.parametrize("name,dtype", _cases())
def test_masked_step_equals_present_subproblem(name, dtype):
    claims, failures = TABLE[name], []
    for mask in MASKS[dtype]:
        k = sum(mask)
        if k < NUM_TASKS and claims.task_mask == "distribution" and k > 1:
            continue  # the law is tested below; one present task has no randomness left
        for member in zoo(k, DIM):
            if member.name in claims.task_mask_skip:
                continue
            try:
                _check_member(name, dtype, mask, member)
            except AssertionError as err:
                failures.append(f"{member} in T={NUM_TASKS} under mask {mask}: {err}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("name,dtype", _cases())
def test_absent_rows_do_not_leak(name, dtype):
    mask = MASKS[dtype][0]
    present = np.asarray(mask)
    for member in zoo(int(present.sum()), DIM)[:4]:
        finite = _masked_run(name, mask, member.jac, member.losses, dtype, "finite")
        poisoned = _masked_run(name, mask, member.jac, member.losses, dtype, "nan")
        for a, b, what in zip(finite[:2], poisoned[:2], ("d", "w"), strict=True):
            assert a is None or np.array_equal(a, b), (
                f"{member}: {what} depends on the absent rows\nfinite {a}\nNaN    {b}"
            )
    nobody = (False,) * NUM_TASKS
    method, step = _runner_for(name, nobody)
    nan = jnp.full((NUM_TASKS, DIM), jnp.nan, dtype)
    d, w, state = step(nan, nan[:, 0], jnp.zeros((NUM_TASKS,), bool), _init(method, dtype))
    assert not np.any(np.asarray(d)), f"no task present, non-zero update {d}"
    assert w is None or not np.any(np.asarray(w)), f"no task present, weights {w}"
    _assert_finite_state(state)


def _assert_finite_state(state):
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            assert np.all(np.isfinite(np.asarray(leaf))), f"non-finite state leaf {leaf}"


@pytest.mark.parametrize("name,dtype", _cases())
def test_absent_tasks_keep_their_state(name, dtype):
    """One step with every task present, then a masked step with NaN rows: the absent tasks'
    rows of every per-task state leaf are unchanged, and no leaf turns non-finite."""
    mask = MASKS[dtype][0]
    present = np.asarray(mask)
    member = zoo(NUM_TASKS, DIM)[0]
    method, step = _runner_for(name, mask)
    jac, losses = jnp.asarray(member.jac, dtype), jnp.asarray(member.losses, dtype)
    _, _, before = step(jac, losses, jnp.ones((NUM_TASKS,), bool), _init(method, dtype))
    rows = member.jac[present] * 1.5
    *_, after = _masked_run(name, mask, rows, member.losses[present] * 0.5, dtype, "nan", before)
    _assert_finite_state(after)
    shared = TABLE[name].shared_state
    for (path, old), new in zip(jax.tree_util.tree_flatten_with_path(before)[0],
                                jax.tree.leaves(after), strict=True):
        if jnp.ndim(old) == 0 or jnp.shape(old)[0] != NUM_TASKS:
            continue  # shared state: step counters, keys, optimizer counts
        if any(getattr(key, "name", None) in shared for key in path):
            continue
        old, new = np.asarray(old), np.asarray(new)
        assert np.array_equal(old[~present], new[~present]), f"absent rows changed: {new}"
        if old.ndim >= 2 and old.shape[1] == NUM_TASKS:  # pair state, [T, T]
            assert np.array_equal(old[:, ~present], new[:, ~present]), f"pairs changed: {new}"


@functools.cache
def law_runner(name: str, num_tasks: int):
    """Jitted ``(J, losses, mask, keys) -> w [N, T]``: one step per key from the initial state."""
    method = build(name, num_tasks, **TABLE[name].build_hparams(num_tasks))

    @jax.jit
    def draws(jac, losses, mask, keys):
        zeros = jnp.zeros(jac.shape[1:], jac.dtype)
        state = method.init(zeros)

        def one(key):
            return method.apply(jac, state._replace(key=key), zeros, task_losses=losses,
                                task_mask=mask).weights

        return jax.vmap(one)(keys)

    return draws


@pytest.mark.parametrize(
    "name", [n for n in NAMES if TABLE[n].task_mask == "distribution"]
)
def test_randomised_masked_step_has_the_subproblem_law(name):
    """The first two moments of the present tasks' weights over 1000 keys match the K-task
    method's (independent keys), within 5 standard errors."""
    num_draws, mask = 1000, np.asarray(MASKS["float64"][0])
    member = next(m for m in zoo(int(mask.sum()), DIM) if m.name == "gauss")
    full_jac = _embed(member.jac, mask, _garbage((NUM_TASKS, DIM), 1, "nan"))
    full_losses = _embed(member.losses, mask, _garbage((NUM_TASKS,), 2, "nan"))
    masked = law_runner(name, NUM_TASKS)(jnp.asarray(full_jac), jnp.asarray(full_losses),
                                         jnp.asarray(mask), jax.random.split(jax.random.key(1),
                                                                             num_draws))
    sub = law_runner(name, int(mask.sum()))(jnp.asarray(member.jac), jnp.asarray(member.losses),
                                            None, jax.random.split(jax.random.key(2), num_draws))
    masked = np.asarray(masked)
    assert np.all(masked[:, ~mask] == 0.0)
    for power in (1, 2):
        a, b = masked[:, mask] ** power, np.asarray(sub) ** power
        error = np.sqrt((a.var(0) + b.var(0)) / num_draws)
        gap = np.abs(a.mean(0) - b.mean(0))
        assert np.all(gap <= 5 * error + 1e-12), (
            f"moment {power}: masked {a.mean(0)} vs K-task {b.mean(0)} (s.e. {error})"
        )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.ones(NUM_TASKS + 1, bool), np.ones(NUM_TASKS, np.int32)],
                         ids=["shape", "dtype"])
def test_bad_mask_raises(name, bad):
    method, _ = _runner_for(name, (True,) * NUM_TASKS)
    jac = jnp.ones((NUM_TASKS, DIM))

    def apply():
        return method.apply(jac, _init(method, jac.dtype), jnp.zeros(DIM), task_mask=bad,
                            task_losses=jnp.ones(NUM_TASKS), **extra_inputs(method, jac))

    with pytest.raises(ValueError, match="task_mask"):
        jax.eval_shape(apply)
