"""The claims table: for every registry name, the properties its paper promises.

One row per registry name (``test_method_properties`` asserts that the table and
:data:`mtljax.methods.REGISTRY` hold the same names). A row says which shared properties of
``tests/properties.py`` the method claims, with what tolerance, and with which hyper-parameters
the tests build it. A property a row does not claim is not tested for that method; a claim is
only made where the paper's formulas imply it, and the reason for each non-obvious choice is
written next to it.

Fields of :class:`Claims`:

* ``hparams`` — keyword arguments for :func:`mtljax.get_method` in every test.
* ``task_hparams`` — hyper-parameters with a task axis, as ``name -> fn(T) -> value`` (built
  per T and permuted together with the tasks by the permutation test).
* ``degree`` — the claimed homogeneity degree ``k`` of ``d(cJ) = c^k d(J)`` for ``c > 0``
  (with the losses held fixed), or ``None`` when the method claims none.
* ``permutation`` — whether permuting the tasks leaves ``d`` unchanged. Randomised methods
  do not claim it: with one PRNG key, permuting the tasks changes which task each random draw
  goes to, so the law of ``d`` is equivariant but a single draw is not.
* ``permutation_min_tasks`` — the smallest T at which the permutation claim is tested (2, or
  more where smaller T always produce a tie that the method breaks by task index).
* ``index_hparams`` — names of ``task_hparams`` the factory takes as task *indices*
  (``primary``): the table writes them as per-task 0/1 vectors, so that the permutation and
  mask tests move them with the tasks, and :meth:`Claims.task_value` passes the factory the
  indices of the 1 entries.
* ``non_conflicting`` — where ``J d ≥ 0`` is claimed: ``"all"`` (every zoo member),
  ``"independent"`` (members with linearly independent rows, the paper's assumption) or
  ``"two_tasks"`` (only T = 2), or ``None``. ``"primary"``: only ``g_P · d ≥ 0`` for the
  primary objective ``g_P``, the sum of the rows ``primary_tasks(T)`` marks, on every member.
* ``primary_tasks`` — ``fn(T) -> [T] bool``, the primary tasks of the row's hyper-parameters
  (for ``non_conflicting="primary"``).
* ``rtol`` — relative tolerance of comparisons, per dtype name: exact closed forms and
  finite (active-set) solvers get round-off-level tolerances, iterative solvers looser ones.
* ``min_tasks`` — the smallest T the method is defined for (smaller zoo members are skipped).
  Under a task mask with fewer present tasks the method abstains: ``d = 0`` and ``w = 0``.
* ``task_mask`` — how a step with absent tasks (``task_mask``) relates to the same method built
  for the K present tasks and run on their rows (``tests/methods/test_task_mask.py``):
  ``"exact"`` (the same weights and update, to ``rtol``) or ``"distribution"`` (randomised
  methods whose draw depends on T: the same law, tested on moments over many keys; the draw
  itself still ignores the absent rows exactly).
* ``task_mask_skip`` — ``zoo member name -> reason`` for members the sub-problem claim is not
  tested on.
* ``shared_state`` — names of state fields with a task axis that are shared bookkeeping, not
  per-task state (exempt from "absent tasks keep their state").
* ``xfail`` — ``property -> "BUG: ..."`` for a claimed property the current implementation
  fails (the reason names the minimal failing input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

EXACT = {"float32": 1e-4, "float64": 1e-9}
SOLVER = {"float32": 2e-3, "float64": 1e-4}
# Finite active-set solves are exact up to the round-off of the Gram matrix: EXACT in float64.
# In float32 the Gram matrix of gradients whose norms span decades (the fuzz spans twelve)
# keeps few digits of the small ones, whose constraints then hold only to SOLVER's tolerance.
ACTIVE_SET = {"float32": SOLVER["float32"], "float64": EXACT["float64"]}


@dataclasses.dataclass(frozen=True)
class Claims:
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task_hparams: Mapping[str, Callable[[int], Any]] = dataclasses.field(default_factory=dict)
    index_hparams: tuple[str, ...] = ()
    primary_tasks: Callable[[int], np.ndarray] | None = None
    degree: float | None = 1.0
    permutation: bool = True
    permutation_min_tasks: int = 2
    non_conflicting: str | None = None
    rtol: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(EXACT))
    xfail: Mapping[str, str] = dataclasses.field(default_factory=dict)
    min_tasks: int = 1
    task_mask: str = "exact"
    task_mask_skip: Mapping[str, str] = dataclasses.field(default_factory=dict)
    shared_state: tuple[str, ...] = ()

    def build_hparams(self, num_tasks: int, perm: np.ndarray | None = None) -> dict[str, Any]:
        """The hyper-parameters for T tasks, task-axis ones permuted by ``perm``."""
        out = dict(self.hparams)
        for name, make in self.task_hparams.items():
            value = np.asarray(make(num_tasks))
            out[name] = self.task_value(name, value[perm] if perm is not None else value)
        return out

    def task_value(self, name: str, value: np.ndarray) -> Any:
        """What the factory takes for task-axis hyper-parameter ``name`` given per task: the
        indices of the non-zero entries for an ``index_hparams`` name, else ``value``."""
        if name in self.index_hparams:
            return tuple(int(i) for i in np.flatnonzero(value))
        return value


_NO_FAIR_SOLUTION = "no solution: regularised weights are round-off dependent"


def _every_third(num_tasks: int) -> np.ndarray:
    # Tasks 0, 3, ...: one primary task at T ≤ 3, two at T = 5 (a summed primary objective).
    return np.arange(num_tasks) % 3 == 0


def _three_levels(num_tasks: int) -> np.ndarray:
    # Levels 0, 1, 2, 0, 1: several levels, and several tasks per level at T = 5.
    return np.arange(num_tasks) % 3


def _fixed_weights(num_tasks: int) -> np.ndarray:
    # Distinct weights, so that a permutation that forgets to move them shows.
    return np.linspace(0.5, 2.0, num_tasks)


# Loss-only methods compute d = Jᵀ w(losses, state): linear in J at fixed losses, so they are
# homogeneous of degree 1 whatever their weighting rule.
LOSS_ONLY = Claims()
RANDOMISED = Claims(permutation=False)
# T random logits (or a Dir(α 1_T) sample, or a permutation of T) restricted to the K present
# tasks have the law of the K-task draw, but not its value: the same key draws T numbers.
RANDOMISED_LAW = Claims(permutation=False, task_mask="distribution")

TABLE: dict[str, Claims] = {
    "ew": Claims(),
    "mean": Claims(),
    "sum": Claims(),
    "fixed": Claims(task_hparams={"weights": _fixed_weights}),
    "constant": Claims(task_hparams={"weights": _fixed_weights}),
    # One task per step (random or round-robin): the task drawn does not follow a permutation.
    # Under a mask the k-th present task is drawn with k ~ U{0..K-1} (or k = step mod K): the
    # same key gives the K-task method's very draw, so the mask claim is exact.
    "alternating": RANDOMISED,
    "uw": LOSS_ONLY,
    "dwa": LOSS_ONLY,
    "si": LOSS_ONLY,
    "gls": LOSS_ONLY,
    "rlw": RANDOMISED_LAW,
    "random": RANDOMISED_LAW,
    "imtl_l": LOSS_ONLY,
    # The first warm-up_steps steps weight by 1/L_t; the tests see the first step.
    "stch": Claims(hparams={"warmup_steps": 1}),
    # `present` records which tasks the step saw, so that after_step (whose caller may not pass
    # the mask) leaves the absent tasks out: it is the step's record, not per-task state.
    "famo": Claims(shared_state=("present",)),
    # GradNorm's weights are learned from the gradient norms; whether the step uses the weights
    # before or after their update is an implementation choice, so no homogeneity is claimed.
    "gradnorm": Claims(degree=None, rtol=SOLVER),
    # The projection order is random (one key): no permutation claim. At T = 2 the order does
    # not matter and the paper shows the result conflicts with neither task.
    # Under a mask the present tasks are visited in the order a permutation of T induces on
    # them: uniform, the K-task law, but not the K-task draw.
    "pcgrad": Claims(permutation=False, non_conflicting="two_tasks", task_mask="distribution"),
    # MGDA's d is the unique min-norm point of the convex hull: non-conflicting everywhere
    # (g_t · d ≥ ‖d‖²). Wolfe's algorithm stops at the exact minimiser (Frank-Wolfe gap at
    # round-off, measured ≤ 3e-16 in float64 on the zoo), so the claim holds to EXACT.
    "mgda": Claims(non_conflicting="all"),
    "mgda_ub": Claims(non_conflicting="all"),
    # Random pair order (like PCGrad); cosines are scale-free, so d is linear in the scale.
    "gradvac": RANDOMISED_LAW,
    # Random drop masks; the sign purity is scale-free, so d is linear in the scale. The
    # thresholds U are drawn per element, not per task, so the mask claim is exact.
    "graddrop": RANDOMISED,
    # d = g0 + c‖g0‖ g_w/‖g_w‖ (then rescaled by a constant): degree 1.
    "cagrad": Claims(rtol=SOLVER),
    # Weights from unit gradients (scale-free), d = Jᵀα: degree 1.
    "imtl_g": Claims(),
    "imtl": Claims(rtol=SOLVER),
    # G w = 1/w: under J → cJ, w → w/c, so d = Jᵀw has degree 0. J d = G w = 1/w > 0 needs a
    # solution, which exists for linearly independent gradients (Navon et al., Claim 3.1).
    "nash_mtl": Claims(degree=0.0, non_conflicting="independent", rtol=SOLVER),
    # Ĵ = σ_min U Vᵀ scales with J: degree 1.
    "aligned_mtl": Claims(rtol=SOLVER),
    "aligned_mtl_ub": Claims(rtol=SOLVER),
    # Projections onto the dual cone {d : J d ≥ 0}: non-conflicting for every J (Quinton & Rey,
    # Prop. 1). That is the exact projection, reg_eps = 0, which the finite active-set solver
    # computes on every zoo member (rank-deficient ones included) to round-off. The default
    # ridge reg_eps = 1e-4 (torchjd's) only guarantees g_t·d ≥ −reg_eps·tr(G)·w_t, up to 9e-4
    # of ‖g_t‖‖J‖ on the zoo; tests/methods/test_projection_methods.py tests that bound.
    "upgrad": Claims(hparams={"reg_eps": 0.0}, non_conflicting="all", rtol=ACTIVE_SET),
    "dualproj": Claims(hparams={"reg_eps": 0.0}, non_conflicting="all", rtol=ACTIVE_SET),
    # ConFIG: the unit direction with equal cosines to every unit gradient exists when the
    # gradients are independent; the norm Σ g_t·u scales with J.
    "config": Claims(non_conflicting="independent", rtol=SOLVER),
    # α-fair allocation G w = w^(-1/α): w → c^(-2α/(1+α)) w, so d has degree (1-α)/(1+α);
    # J d = w^(-1/α) > 0 for independent gradients. Tested at α = 2: degree -1/3.
    # Under a mask: where G has a positive null vector (low_rank, opposite) the system has no
    # solution and the ridge-regularised weights (~1e9, cancelling in d ≈ 0) are round-off:
    # the K-task method's own weights change by 1% with the summation order.
    "fairgrad": Claims(hparams={"alpha": 2.0}, degree=-1.0 / 3.0,
                       non_conflicting="independent", rtol=SOLVER,
                       task_mask_skip={"low_rank": _NO_FAIR_SOLUTION,
                                       "opposite": _NO_FAIR_SOLUTION}),
    # Weights are exponentiated excess risks, a non-linear function of the gradient scale.
    "excess_mtl": Claims(degree=None, rtol=SOLVER),
    # MoCo, SDMGrad, MoDo: fixed step sizes on the weights make them scale dependent.
    "moco": Claims(degree=None, rtol=SOLVER),
    # Under a mask, "opposite": the double-sampling cross Gram of exactly opposite rows is
    # indefinite, and each inner step (lr = 5) multiplies a deviation along its negative
    # direction by 1 + 2 lr |C_11| ≈ 16: after 20 steps the K-task method's own weights are
    # decided by the round-off of one dot product (its weights land on a vertex either way).
    "sdmgrad": Claims(degree=None, rtol=SOLVER,
                      task_mask_skip={"opposite": "round-off amplified 16x per inner step"}),
    "modo": Claims(degree=None, rtol=SOLVER),
    # Unit-norm EMA gradients of the log losses, rescaled by the largest norm: degree 1 (the
    # norm guard is relative to the largest norm, so it holds for tiny gradients too).
    "db_mtl": Claims(rtol=SOLVER),
    # Selection by pairwise distances (scale-free ranking), then a mean of rows: degree 1.
    # Each score sums the T - f - 2 nearest distances: T ≥ f + 3 (f = 0 by default). At
    # T = f + 3 the score is the distance to the nearest gradient, so the two gradients of the
    # closest pair always tie for the best score and Krum keeps the lower task index: a
    # permutation can swap which one is returned (the paper picks any minimiser). Ties are
    # exceptional from T = f + 4 on, where permutation equivariance is claimed.
    "krum": Claims(min_tasks=3, permutation_min_tasks=4),
    # Trims k = 1 largest and smallest values per coordinate: 2k < T.
    "trimmed_mean": Claims(min_tasks=3),
    # An EMA of the base method's weights (MGDA by default, whose weights are scale-free).
    "cr_mogm": Claims(rtol=SOLVER),
    # Auxiliary gradients weighted by [cos > 0] or max(0, cos) with the primary objective g_P
    # (scale-free): degree 1, and g_P · d ≥ ‖g_P‖² on every J (Du et al., Proposition 1). The
    # primary tasks are 0 and 3 at T = 5. A single primary task can conflict with d when there
    # are several (the objective is their sum), so only the sum is claimed.
    "gradsim": Claims(task_hparams={"primary": _every_third}, index_hparams=("primary",),
                      non_conflicting="primary", primary_tasks=_every_third),
    # Dual-cone projections per level (reg_eps = 0, exact): the level-0 tasks (0 and 3) never
    # conflict with d; lower-priority tasks may (tests/methods/test_aux_methods.py tests what
    # they are promised).
    "lexicographic": Claims(task_hparams={"levels": _three_levels}, non_conflicting="primary",
                            primary_tasks=_every_third, rtol=ACTIVE_SET),
    # PCD at τ = 0: d̃ is the projection of g̃_P onto the secondaries' dual cone, so
    # g_P · d = ‖g_P‖‖d̃‖ ≥ 0 (and every secondary's g_t · d ≥ 0). At τ > 0 a secondary
    # opposed to g_P forces g_P · d < 0 (the "opposite" member: d = −g_P), so the claim is
    # made at τ = 0; tests/methods/test_pcd.py tests the τ > 0 shares against torchjd. ε = 0
    # makes the first step's normalisation exact (g̃ = g/‖g‖): d̃ is scale-free and d, rescaled
    # to ‖g_P‖, has degree 1. Finite dual active-set solver: ACTIVE_SET tolerances.
    "pcd": Claims(hparams={"tau": 0.0, "eps": 0.0}, task_hparams={"primary": _every_third},
                  index_hparams=("primary",), non_conflicting="primary",
                  primary_tasks=_every_third, rtol=ACTIVE_SET),
}
