"""Times the T×T solve of every Gram-space method at the sizes of instance-wise learning.

Instance-wise multi-task learning hands a Gram-space method an ``R × R`` Gram matrix, ``R = B``
(instance-wise risk minimisation) or ``R = B·T`` rows. This script builds, for each method of
the registry with a Gram-space core (``Method.gram_weights``) and each ``R``, a realistic
positive semi-definite Gram matrix ``G = J Jᵀ`` (see :func:`realistic_gram`), jits the method's
weights function and reports the compile time and the median solve time after compilation.

For scale: forming that Gram matrix from ``R`` rows of width ``P`` costs ``R² P`` multiply-adds,
``2.2e11`` at ``R = 256`` and ``3.6e12`` at ``R = 1024`` for the 3.4 M-parameter hps-mlp trunk
(:func:`gram_flops`), seconds of CPU time; the Gramian engine's ``(A Aᵀ) ⊙ (Δ Δᵀ)`` route costs
far less, so the solve must stay well under a 256-sample forward/backward step (~50 ms here).

Run (a few minutes on 2 CPU cores; sizes whose previous size took over ``--max-ms`` are
skipped)::

    .venv/bin/python experiments/bench_solvers.py --out runs/bench_solvers.json
    .venv/bin/python experiments/bench_solvers.py --methods upgrad,mgda --sizes 256,1024

Prints a Markdown table; ``--out`` writes JSON rows ``{method, R, dtype, solve_ms,
compile_s}`` (``solve_ms`` null for a skipped size) and the environment. A benchmark, never a
test: timings on shared machines vary ±30% between runs.

On a CPU shared with other jobs, set ``OPENBLAS_NUM_THREADS=1``: jaxlib's LAPACK calls
(Cholesky, ``eigh``, QR) go to OpenBLAS, whose worker threads then wait on busy cores, and a
``256 × 256`` Cholesky takes 100–250 ms instead of 0.5 ms (XLA's own matrix products are not
affected). The variable is recorded in the JSON environment.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mtljax._version import __version__
from mtljax.methods import get_method, method_names

SIZES = (16, 64, 256, 512, 1024)
HPS_MLP_PARAMS = 3.4e6


def gram_methods() -> list[str]:
    """Registry names whose method, built at T = 4 with default hyper-parameters, has a
    Gram-space core at the parameter level (the ``_ub`` twins run the same solve; ``fixed``
    and ``cr_mogm``, which need arguments, are left out)."""
    names = []
    for name in method_names():
        try:
            method = get_method(name, 4)
        except (TypeError, ValueError):  # a required hyper-parameter (fixed weights)
            continue
        if method.gram_weights is not None and method.level == "parameters":
            names.append(name)
    return names


def realistic_gram(size: int, *, seed: int = 0, conflicting: float = 0.1) -> np.ndarray:
    """``G = J Jᵀ`` (float64) of per-sample gradients: correlated rows, some conflicting.

    Each row is ``a_i c + n_i``: a shared direction ``c`` with a per-sample strength
    ``a_i ~ U(0.2, 1)``, plus isotropic noise of norm about 1 (cosine to ``c`` about 0.5); a
    fraction ``conflicting`` of the rows is negated (e.g. corrupted labels), and the rows are
    rescaled by factors spanning a decade (``J`` is ``[R, 2R]``, so ``G`` has full rank).
    """
    rng = np.random.default_rng(seed)
    width = 2 * size
    common = rng.normal(size=width) / np.sqrt(width)
    strength = rng.uniform(0.2, 1.0, size=(size, 1))
    rows = strength * common + rng.normal(size=(size, width)) / np.sqrt(width)
    flip = rng.random(size) < conflicting
    rows[flip] *= -1.0
    rows *= 10.0 ** rng.uniform(-0.5, 0.5, size=(size, 1))
    return rows @ rows.T


def gram_flops(size: int, width: float = HPS_MLP_PARAMS) -> float:
    """Multiply-adds of the exact Gram matrix of ``size`` rows of ``width`` parameters."""
    return size * size * width


def time_method(name: str, gram: np.ndarray, dtype, repeats: int) -> tuple[float, float]:
    """``(median solve ms, compile s)`` of ``name``'s jitted weights function on ``gram``."""
    size = gram.shape[0]
    method = get_method(name, size)
    state = method.init(None)
    losses = jnp.ones((size,), dtype)

    def weights(g):
        return method.gram_weights(g, state, task_losses=losses)[0]

    g = jnp.asarray(gram, dtype)
    start = time.perf_counter()
    compiled = jax.jit(weights).lower(g).compile()
    compile_s = time.perf_counter() - start
    compiled(g).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled(g).block_until_ready()
        times.append(1e3 * (time.perf_counter() - start))
        if sum(times) > 3e3:  # slow solvers: a few runs are enough
            break
    return statistics.median(times), compile_s


def run(methods, sizes, dtype, repeats: int, max_ms: float) -> list[dict]:
    """One row per method and size; a size after one slower than ``max_ms`` is skipped."""
    rows = []
    for name in methods:
        too_slow = False
        for size in sizes:
            row = {
                "method": name,
                "R": size,
                "dtype": jnp.dtype(dtype).name,
                "solve_ms": None,
                "compile_s": None,
            }
            if not too_slow:
                solve_ms, compile_s = time_method(name, realistic_gram(size), dtype, repeats)
                row.update(solve_ms=round(solve_ms, 3), compile_s=round(compile_s, 3))
                too_slow = solve_ms > max_ms
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], sizes) -> str:
    """Markdown table: a row per method, a column per size, ``solve ms (compile s)``."""
    head = "| method | " + " | ".join(f"R = {s}" for s in sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(sizes)]
    for name in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for size in sizes:
            (row,) = [r for r in rows if r["method"] == name and r["R"] == size]
            ms = row["solve_ms"]
            cells.append("skipped" if ms is None else f"{ms:.3g} ms ({row['compile_s']:.1f} s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gram = " | ".join(f"{gram_flops(s):.1e}" for s in sizes)
    lines.append(f"| *exact Gram, P = 3.4e6 (multiply-adds)* | {gram} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=None, help="comma list (default: every Gram method)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--max-ms",
        type=float,
        default=2000.0,
        help="skip the larger sizes of a method once a solve takes longer",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    methods = args.methods.split(",") if args.methods else gram_methods()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = run(methods, sizes, jnp.dtype(args.dtype), args.repeats, args.max_ms)
    print(table(rows, sizes))
    if args.out is not None:
        env = {
            "date": datetime.date.today().isoformat(),
            "jax": jax.__version__,
            "mtljax": __version__,
            "backend": jax.default_backend(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
