"""Hypothesis fuzzing of every registered method: random Jacobians with degenerate structure.

Each example draws a zoo shape, per-row scales over twelve orders of magnitude, and one
degeneracy (none, a zero row, a duplicated row, an exactly opposite row, a rank-1 Jacobian,
an all-zero Jacobian); every method must return a finite ``[P]`` update of the input's dtype
and finite weights, and methods that claim non-conflict everywhere must keep it.

The default run is small (``max_examples`` per method and dtype below) and reuses the
compilations of the property tests (same shapes); ``pytest --nightly`` runs 30× more examples.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from method_table import TABLE
from properties import (
    DTYPES,
    assert_non_conflicting,
    assert_shape_and_finite,
    natural_scale,
    run,
    runner,
    shapes,
)

DEGENERACIES = ("none", "zero_row", "duplicate", "opposite", "rank_one", "all_zero")
EXAMPLES = 8


def examples(request) -> int:
    return EXAMPLES * (30 if request.config.getoption("--nightly") else 1)


@st.composite
def jacobians(draw, min_tasks: int, dtype: str):
    """``(J, losses, degeneracy)``: a float64 ``[T, P]`` Jacobian at a zoo shape of ``dtype``."""
    allowed = [s for s in shapes(dtype) if s[0] >= min_tasks] or [(min_tasks, 17)]
    num_tasks, dim = draw(st.sampled_from(allowed))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    log_scales = draw(st.lists(st.floats(-6.0, 6.0), min_size=num_tasks, max_size=num_tasks))
    jac = rng.normal(size=(num_tasks, dim)) * 10.0 ** np.asarray(log_scales)[:, None]
    kind = draw(st.sampled_from(DEGENERACIES if num_tasks >= 2 else ("none", "all_zero")))
    if kind == "zero_row":
        jac[rng.integers(num_tasks)] = 0.0
    elif kind == "duplicate":
        jac[1] = jac[0]
    elif kind == "opposite":
        jac[1] = -jac[0]
    elif kind == "rank_one":
        jac = np.outer(rng.normal(size=num_tasks), jac[0])
    elif kind == "all_zero":
        jac[:] = 0.0
    losses = rng.uniform(0.1, 10.0, size=num_tasks)
    return jac, losses, kind


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(TABLE))
def test_fuzz(name, dtype, request):
    claims = TABLE[name]

    @settings(max_examples=examples(request), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(jacobians(claims.min_tasks, dtype))
    def check(example):
        jac, losses, kind = example
        num_tasks = jac.shape[0]
        d, w = run(runner(name, num_tasks), jac, losses, dtype)
        assert_shape_and_finite(d, jac.shape[1], dtype)
        if w is not None:
            assert w.shape == (num_tasks,) and np.all(np.isfinite(w)), f"weights {w} ({kind})"
        if claims.non_conflicting == "all":
            as_input = np.asarray(jac.astype(dtype), np.float64)
            assert_non_conflicting(as_input, d, claims.rtol[dtype],
                                   natural_scale(as_input, claims.degree))

    check()
