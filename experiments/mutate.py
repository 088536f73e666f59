"""Mutation check: plant plausible bugs in a copy of the repository and see the tests catch them.

Each mutant is one exact text replacement in one file of the core (method formulas, solvers,
reductions, Δm%, checkpoint restore and pruning, the step's device reduction, diagnostics) and
the tests that exist to catch it. The script copies the repository once to a temporary folder,
runs each mutant's tests there unmutated (the baseline must pass), then for each mutant
writes the mutated file, runs its tests (``pytest -x``) with that copy first on ``PYTHONPATH``,
and restores the file. It prints a caught/missed table.

Command (from the repository root; not part of CI)::

    .venv/bin/python experiments/mutate.py            # every mutant, ~2 minutes on 2 idle cores
    .venv/bin/python experiments/mutate.py --list     # the mutants and their anchors
    .venv/bin/python experiments/mutate.py --only mgda_corral_pivot checkpoint_string_sort

Exit status: 0 when every mutant is caught; 1 when a mutant is missed, when a mutant's old
text is no longer found exactly once in its file (the code moved: update the anchor; the
table says ``stale``), or when the baseline tests fail (nothing can then be judged).

Expected result: every mutant ``caught``. A ``missed`` mutant is a test gap: add the test that
fails on it (issue 15 found the first three).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache",
                                "runs", "*.egg-info", "build", "dist")


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments, relative to the repository root
    why: str


MUTANTS = (
    # --- the three gaps of issue 15 ---
    Mutant(
        "mgda_corral_pivot", "mtljax/solvers/_simplex.py",
        "k = jnp.argmin(jnp.where(corral, diag, jnp.inf))", "k = jnp.argmin(diag)",
        ("tests/test_solver_optimality.py",),
        "Wolfe's affine solve pivots on a vertex outside the corral (negative MGDA weights)",
    ),
    Mutant(
        "diagnostics_conflict_sign", "mtljax/diagnostics.py",
        "(cos < 0) & upper", "(cos > 0) & upper",
        ("tests/test_diagnostics_values.py",),
        "conflict fraction counts agreeing pairs",
    ),
    Mutant(
        "diagnostics_update_cosine_factor", "mtljax/diagnostics.py",
        "_safe_div(task_dots, norms * update_norm)", "_safe_div(task_dots, update_norm)",
        ("tests/test_diagnostics_values.py",),
        "update cosine not divided by the task gradient's norm",
    ),
    Mutant(
        "checkpoint_string_sort", "mtljax/checkpoint.py",
        "return sorted(\n            int(name)\n"
        "            for name in os.listdir(self.directory)\n"
        "            if name.isdigit() and os.path.isdir(os.path.join(self.directory, name))\n"
        "        )",
        "names = [\n            name\n            for name in os.listdir(self.directory)\n"
        "            if name.isdigit() and os.path.isdir(os.path.join(self.directory, name))\n"
        "        ]\n        return [int(name) for name in sorted(names)]",
        ("tests/test_checkpoint_housekeeping.py",),
        "step folders ordered as strings: 10 before 9, pruning deletes the newest",
    ),
    # --- solvers and method formulas ---
    Mutant(
        "upgrad_mean_of_projections", "mtljax/methods/_upgrad.py",
        "return projections.sum(0), state", "return projections.mean(0), state",
        ("tests/test_solver_optimality.py", "-k", "dual"),
        "UPGrad divides by T twice",
    ),
    Mutant(
        "dual_cone_ridge", "mtljax/solvers/_dual_cone.py",
        "return scaled + reg_eps * jnp.eye(", "return scaled + 2 * reg_eps * jnp.eye(",
        ("tests/test_solver_optimality.py", "-k", "dual"),
        "the projection's ridge twice the documented one",
    ),
    Mutant(
        "fair_power", "mtljax/solvers/_fair.py",
        "power = 1.0 / alpha", "power = alpha",
        ("tests/test_solver_optimality.py", "-k", "fair"),
        "FairGrad solves G w = w^(−α) instead of w^(−1/α) (invisible at α = 1)",
    ),
    Mutant(
        "cagrad_dual_norm", "mtljax/methods/_cagrad.py",
        "radius * jnp.sqrt(jnp.clip(w @ g @ w, 0.0) + eps**2)",
        "radius * (jnp.clip(w @ g @ w, 0.0) + eps**2)",
        ("tests/test_solver_optimality.py", "-k", "cagrad"),
        "CAGrad's dual uses ‖g_w‖² instead of ‖g_w‖",
    ),
    Mutant(
        "pcgrad_conflict_sign", "mtljax/methods/_pcgrad.py",
        "(dot < 0)", "(dot > 0)",
        ("tests/test_engine.py", "-k", "pcgrad"),
        "PCGrad projects agreeing gradients instead of conflicting ones",
    ),
    # --- evaluation, checkpoints, the step ---
    Mutant(
        "delta_m_relative_to_method", "mtljax/evaluation.py",
        "change = (m - b) / b", "change = (m - b) / m",
        ("tests/test_evaluation.py",),
        "Δm% relative to the method's metric instead of the baseline's",
    ),
    Mutant(
        "checkpoint_prune_newest", "mtljax/checkpoint.py",
        "for old in self.steps()[: -self.keep]:", "for old in self.steps()[self.keep :]:",
        ("tests/test_checkpoint_housekeeping.py",),
        "npz pruning deletes the newest steps",
    ),
    Mutant(
        "checkpoint_restore_oldest", "mtljax/checkpoint.py",
        "step = self.latest_step() if step is None else int(step)",
        "step = self.steps()[0] if step is None and self.steps() else step",
        ("tests/test_checkpoint_housekeeping.py",),
        "restore without a step reads the oldest checkpoint",
    ),
    Mutant(
        "step_loss_psum", "mtljax/step/context.py",
        "losses = lax.pmean(losses, self.options.parallel.data_axis)",
        "losses = lax.psum(losses, self.options.parallel.data_axis)",
        ("tests/test_diagnostics_values.py", "-k", "shard_map or parallel"),
        "data-parallel losses summed over devices: the update scales with the device count",
    ),
    Mutant(
        "step_grad_no_pmean", "mtljax/step/context.py",
        "return lax.pmean(tree, parallel.data_axis) if parallel.pmean_grads else tree",
        "return tree",
        ("tests/test_diagnostics_values.py", "-k", "pmap or parallel"),
        "pmap step never averages the gradients over devices",
    ),
)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """``("pass" | "fail" | "error", seconds)`` of ``pytest -x`` on ``tests`` in ``copy``."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "error", time.perf_counter() - start
    seconds = time.perf_counter() - start
    # 0: passed; 1: some test failed; anything else (collection error, no tests): error.
    return {0: "pass", 1: "fail"}.get(proc.returncode, "error"), seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these mutants (names)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    args = parser.parse_args(argv)
    known = {m.name for m in MUTANTS}
    unknown = set(args.only or ()) - known
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; known: {sorted(known)}")
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:34s} {m.path}: {m.why}")
        return 0

    with tempfile.TemporaryDirectory(prefix="mtljax-mutate-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=IGNORE)
        for tests in dict.fromkeys(m.tests for m in mutants):  # each distinct run, once
            status, seconds = run_tests(copy, tests, args.timeout)
            print(f"baseline {' '.join(tests)}: {status} in {seconds:.0f}s")
            if status != "pass":
                print("The unmutated tests do not pass: no mutant can be judged.")
                return 1
        rows = []
        for m in mutants:
            target = copy / m.path
            original = target.read_text(encoding="utf-8") if target.exists() else ""
            count = original.count(m.old)
            if count != 1:
                rows.append((m, f"stale ({count} matches)", 0.0))
                continue
            target.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                status, seconds = run_tests(copy, m.tests, args.timeout)
            finally:
                target.write_text(original, encoding="utf-8")
            verdict = {"fail": "caught", "pass": "MISSED", "error": "caught (error)"}[status]
            rows.append((m, verdict, seconds))

    print(f"\n{'mutant':34s} {'result':18s} {'time':>6s}  file")
    for m, verdict, seconds in rows:
        print(f"{m.name:34s} {verdict:18s} {seconds:5.0f}s  {m.path}")
    bad = [m.name for m, verdict, _ in rows if not verdict.startswith("caught")]
    if bad:
        print(f"\nNot caught or stale: {', '.join(bad)}")
        return 1
    print(f"\nAll {len(rows)} mutants caught.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
