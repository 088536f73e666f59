"""Reference values of PCD from torchjd, for ``tests/methods/test_pcd.py`` (which needs no torch).

Runs torchjd's ``PCD`` aggregator (torchjd 0.18, float64) on seeded sequences of Jacobians,
one fresh aggregator per case so that its moving average sees the case's steps in order, and
writes every step's input and output to ``tests/fixtures/pcd_torchjd.json``::

    .venv/bin/python experiments/pcd_reference.py   # about 2 s; needs torch and torchjd

The cases cover conflicting and random gradients, scalar and per-secondary ``τ``, several
``β`` (so the moving average matters over the steps), a large ``ε``, infeasible constraints,
a zero primary gradient, and mtljax's task roles: torchjd's first row is the primary
objective, so a case whose primary tasks are not just task 0 feeds torchjd the rows
``[Σ_p g_p, secondaries in task order]`` and records mtljax's ``primary`` indices.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib

import numpy as np

DIM = 6  # one P for every case: the tests compile once per T and dtype
OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pcd_torchjd.json"


def _conflicting(rng, num_tasks, dim):
    """Secondaries pulled against the primary: a random row minus a multiple of g_1."""
    jac = rng.normal(size=(num_tasks, dim))
    jac[1:] -= rng.uniform(0.5, 1.5, size=(num_tasks - 1, 1)) * jac[0]
    return jac


def _steps(make, rng, num_steps, num_tasks, dim, spread=1.0):
    """``num_steps`` Jacobians from ``make``, each row scaled by a random factor per step."""
    out = []
    for _ in range(num_steps):
        scales = 10.0 ** rng.uniform(-spread, spread, size=(num_tasks, 1))
        out.append(make(rng, num_tasks, dim) * scales)
    return out


def _cases(rng):
    def gauss(r, t, p):
        return r.normal(size=(t, p))

    cases = [
        dict(name="random", primary=[0], tau=0.02, beta=0.9, eps=1e-8,
             steps=_steps(gauss, rng, 4, 3, DIM)),
        dict(name="conflicting", primary=[0], tau=0.2, beta=0.999, eps=1e-8,
             steps=_steps(_conflicting, rng, 3, 4, DIM)),
        dict(name="vector_tau", primary=[0], tau=[0.0, 0.1, 0.3], beta=0.5, eps=1e-8,
             steps=_steps(_conflicting, rng, 3, 4, DIM)),
        dict(name="large_eps", primary=[0], tau=0.1, beta=0.8, eps=1e-2,
             steps=[0.1 * s for s in _steps(_conflicting, rng, 3, 3, DIM)]),
        dict(name="many_secondaries", primary=[0], tau=0.05, beta=0.9, eps=1e-8,
             steps=_steps(_conflicting, rng, 2, 5, DIM)),
        dict(name="multi_primary", primary=[0, 2], tau=0.05, beta=0.9, eps=1e-8,
             steps=_steps(_conflicting, rng, 3, 4, DIM)),
        dict(name="primary_last", primary=[2], tau=0.1, beta=0.7, eps=1e-8,
             steps=[s[[1, 2, 0]] for s in _steps(_conflicting, rng, 3, 3, DIM)]),
    ]
    infeasible = rng.normal(size=(3, DIM))
    infeasible[2] = -2.0 * infeasible[1]
    feasible = _conflicting(rng, 3, DIM)
    cases.append(dict(name="infeasible", primary=[0], tau=0.02, beta=0.9, eps=1e-8,
                      steps=[infeasible, feasible, 0.5 * infeasible]))
    zero_first = _conflicting(rng, 3, DIM)
    zero_first[0] = 0.0
    cases.append(dict(name="zero_primary", primary=[0], tau=0.1, beta=0.9, eps=1e-8,
                      steps=[zero_first, _conflicting(rng, 3, DIM)]))
    return cases


def _torchjd_rows(jac: np.ndarray, primary: list[int]) -> np.ndarray:
    secondary = [t for t in range(jac.shape[0]) if t not in primary]
    return np.concatenate([jac[primary].sum(0, keepdims=True), jac[secondary]])


def main() -> None:
    import torch
    from torchjd.aggregation import PCD

    cases = _cases(np.random.default_rng(20261203))
    for case in cases:
        tau = case["tau"]
        aggregator = PCD(tau=torch.tensor(tau, dtype=torch.float64) if isinstance(tau, list)
                         else tau, beta=case["beta"], eps=case["eps"])
        outputs = []
        for jac in case["steps"]:
            rows = torch.tensor(_torchjd_rows(jac, case["primary"]), dtype=torch.float64)
            outputs.append(aggregator(rows).numpy().tolist())
        case["steps"] = [jac.tolist() for jac in case["steps"]]
        case["updates"] = outputs
    version = importlib.metadata.version("torchjd")
    OUT.write_text(json.dumps({"torchjd": version, "cases": cases}) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
