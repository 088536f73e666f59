"""Shared inputs and asserts of the method tests: the zoo, a compiled runner, the properties.

Each property is written once, here, with its definition in the docstring; the claims table
(``tests/method_table.py``) says which method claims which property, and
``tests/test_method_properties.py`` runs the table over the zoo.

Every method runs through :func:`runner`: ``jax.jit`` of one ``init`` + ``apply`` on a single
``[T, P]`` Jacobian, compiled once per (method, hyper-parameters, T, P, dtype) and shared by the
property and fuzz tests, so the suite pays one XLA compilation per shape (``conftest.py``
drops compiled programs after each module; later modules read them back from the session's
compilation cache on disk).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from method_table import TABLE

import mtljax

DTYPES = ("float32", "float64")
# (T, P) of the zoo: every T of the brief, at one P. Compiling dominates the cost of the
# suite (one compilation per method, shape and dtype, ~0.2 s; running a member takes ~1 ms),
# so there is no second P for T > P: the "narrow" member, whose gradients span 4 of the 17
# coordinates, has the Gram matrix of a [5, 4] Jacobian (zero columns change neither G nor
# the elementwise methods' other coordinates).
SHAPES = ((1, 17), (2, 17), (3, 17), (5, 17))
# float32 runs on two of them: T = 2 (the two-task special cases) and T = 5 (the general
# case, T > P included); the float64 zoo covers every T.
FLOAT32_SHAPES = ((2, 17), (5, 17))
NARROW = 4  # coordinates spanned by the narrow member (T > NARROW only)
SCALES = (0.3, 7.0)


def shapes(dtype: str) -> tuple[tuple[int, int], ...]:
    """The zoo shapes run in ``dtype``."""
    return FLOAT32_SHAPES if dtype == "float32" else SHAPES


# ---------------------------------------------------------------------------------------------
# The zoo.


@dataclasses.dataclass(frozen=True)
class Member:
    """One zoo input: a ``[T, P]`` Jacobian (float64 NumPy) and positive ``[T]`` losses."""

    name: str
    jac: np.ndarray
    losses: np.ndarray
    independent: bool  # the rows are linearly independent (up to roundoff)

    @property
    def num_tasks(self) -> int:
        return self.jac.shape[0]

    def __repr__(self) -> str:
        return f"Member({self.name}, T={self.jac.shape[0]}, P={self.jac.shape[1]})"


def _members(num_tasks: int, dim: int, seed: int) -> list[Member]:
    rng = np.random.default_rng(seed)
    gauss = rng.normal(size=(num_tasks, dim))
    losses = rng.uniform(0.5, 2.0, size=num_tasks)
    full_rank = num_tasks <= dim
    out = [
        Member("gauss", gauss, losses, full_rank),
        Member("huge", 1e6 * gauss, losses, full_rank),
        Member("tiny", 1e-6 * gauss, losses, full_rank),
    ]
    zero = gauss.copy()
    zero[0] = 0.0
    out.append(Member("zero_row", zero, losses, False))
    if num_tasks >= 2:
        rank = min(num_tasks - 1, 2)
        low = rng.normal(size=(num_tasks, rank)) @ rng.normal(size=(rank, dim))
        out.append(Member("low_rank", low, losses, False))
        same = gauss.copy()
        same[1] = same[0]
        out.append(Member("identical", same, losses, False))
        opposite = gauss.copy()
        opposite[1] = -opposite[0]
        out.append(Member("opposite", opposite, losses, False))
        out.append(Member("all_zero", np.zeros_like(gauss), losses, False))
    if num_tasks > NARROW:
        narrow = np.zeros_like(gauss)
        narrow[:, :NARROW] = rng.normal(size=(num_tasks, NARROW))
        out.append(Member("narrow", narrow, losses, False))
    return out


@functools.cache
def zoo(num_tasks: int, dim: int) -> tuple[Member, ...]:
    """The seeded zoo at one shape: Gaussian, huge (1e6), tiny (1e-6), a zero row (at T = 1,
    the zero Jacobian), low rank, two identical rows, two exactly opposite rows, the zero
    Jacobian (the last four for T ≥ 2), and for T > NARROW gradients that span NARROW
    coordinates only (T > P in effect)."""
    return tuple(_members(num_tasks, dim, seed=1000 * num_tasks + dim))


def permutation(num_tasks: int) -> np.ndarray:
    """A fixed permutation that moves every task when T ≥ 2 (a reversal then a roll)."""
    return np.roll(np.arange(num_tasks)[::-1], 1)


# ---------------------------------------------------------------------------------------------
# Building and running methods.


def build(name: str, num_tasks: int, **hparams) -> mtljax.Method:
    """``mtljax.get_method`` (a missing method module is an error, never a skip)."""
    return mtljax.get_method(name, num_tasks, **hparams)


def extra_inputs(method: mtljax.Method, jac):
    """Keyword inputs besides the losses: methods drawing several batches get extra Jacobians.

    The extra batches' Jacobians are column rolls of ``J``: different directions, yet permuted
    and scaled together with ``J``, so permutation and scaling claims stay testable.
    """
    if method.num_batches == 1:
        return {}
    return {
        "extra_per_task_grads": tuple(jnp.roll(jac, i, axis=-1)
                                      for i in range(1, method.num_batches))
    }


def _jit_apply(method: mtljax.Method):
    @jax.jit
    def run(jac, losses):
        state = method.init(jnp.zeros(jac.shape[1:], jac.dtype))
        out = method.apply(jac, state, jnp.zeros(jac.shape[1:], jac.dtype),
                           task_losses=losses, **extra_inputs(method, jac))
        return out.updates, out.weights

    return run


def runner(name: str, num_tasks: int, perm: tuple[int, ...] | None = None, overrides=()):
    """The jitted ``(J, losses) -> (d, weights)`` of method ``name`` from its initial state.

    Built with the table's hyper-parameters (task-axis ones permuted by ``perm``) updated by
    ``overrides`` (a tuple of ``(name, value)`` pairs); cached, and jit caches per shape and
    dtype, so each (method, shape, dtype) compiles once in a test module (and XLA compiles it
    once in the session: see the module docstring).
    """
    # One cache key however the call spells its arguments (runner(n, t) and runner(n, t, None)
    # would otherwise be two functools.cache entries, and compile twice).
    return _cached_runner(name, num_tasks, None if perm is None else tuple(perm), tuple(overrides))


@functools.cache
def _cached_runner(name, num_tasks, perm, overrides):
    perm = None if perm is None else np.asarray(perm)
    hparams = TABLE[name].build_hparams(num_tasks, perm) | dict(overrides)
    return _jit_apply(build(name, num_tasks, **hparams))


def run(fn, jac: np.ndarray, losses: np.ndarray, dtype: str):
    """Calls a runner on NumPy inputs cast to ``dtype``; returns NumPy ``(d, weights)``."""
    d, w = fn(jnp.asarray(jac, dtype), jnp.asarray(losses, dtype))
    return d, (None if w is None else np.asarray(w))


# ---------------------------------------------------------------------------------------------
# Properties.


def natural_scale(jac: np.ndarray, degree: float | None) -> float:
    """The size ``‖J‖^k`` an update of homogeneity degree k has (k = 1 when none is claimed).

    ``‖J‖`` is the largest row norm; a zero Jacobian has scale 1.
    """
    norm = float(np.max(np.linalg.norm(jac, axis=1)))
    if norm == 0.0:
        return 1.0
    return norm ** (1.0 if degree is None else degree)


def assert_close(actual, expected, rtol: float, scale: float, what: str) -> None:
    """``‖actual − expected‖∞ ≤ rtol · max(‖actual‖∞, ‖expected‖∞, scale)``."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    size = max(np.max(np.abs(actual), initial=0.0), np.max(np.abs(expected), initial=0.0), scale)
    err = np.max(np.abs(actual - expected), initial=0.0)
    assert err <= rtol * size, (
        f"{what}: max error {err:.3g} > {rtol:.1e} × {size:.3g}\n"
        f"actual   {actual}\nexpected {expected}"
    )


def assert_shape_and_finite(d, num_params: int, dtype: str) -> None:
    """Shape and finiteness: ``d`` has shape ``[P]``, the input's dtype, and finite entries."""
    assert d.shape == (num_params,), f"update shape {d.shape}, expected ({num_params},)"
    assert d.dtype == jnp.dtype(dtype), f"update dtype {d.dtype}, input dtype {dtype}"
    assert np.all(np.isfinite(np.asarray(d))), f"non-finite update {d}"


def assert_zero_for_zero_jacobian(jac: np.ndarray, d) -> None:
    """A zero Jacobian gives exactly the zero update (every method combines the gradients)."""
    if not np.any(jac):
        assert not np.any(np.asarray(d)), f"zero Jacobian, non-zero update {d}"


def assert_non_conflicting(jac: np.ndarray, d, rtol: float, scale: float) -> None:
    """Non-conflicting: ``g_t · d ≥ −rtol · ‖g_t‖ · max(‖d‖, s)`` for every task t.

    ``s`` is the update's natural size (:func:`natural_scale`). Without it the bound would be
    on the cosine of ``g_t`` and ``d``, which an iterative solver cannot meet when the exact
    ``d`` is 0 (a Pareto-stationary J): its guarantee is ``J d ≥ ‖d‖² − gap · ‖J‖²``.
    """
    d = np.asarray(d, np.float64)
    dots = jac @ d
    bound = -rtol * np.linalg.norm(jac, axis=1) * max(np.linalg.norm(d), scale)
    bad = np.flatnonzero(dots < bound)
    assert bad.size == 0, (
        f"update conflicts with tasks {bad.tolist()}: g_t·d = {dots[bad]}, bound {bound[bad]}"
    )


def assert_permutation_equivariant(d, d_perm, rtol: float, scale: float) -> None:
    """Permutation equivariance: permuting the tasks (the rows of J, the losses and the
    task-axis hyper-parameters alike) leaves ``d`` unchanged."""
    assert_close(d_perm, d, rtol, scale, "d(P J) vs d(J)")


def assert_homogeneous(d, d_scaled, c: float, degree: float, rtol: float, scale: float) -> None:
    """Homogeneity of degree k: ``d(cJ) = c^k d(J)`` for ``c > 0``, losses held fixed."""
    assert_close(d_scaled, c**degree * np.asarray(d, np.float64), rtol, c**degree * scale,
                 f"d({c} J) vs {c}^{degree:g} d(J)")
