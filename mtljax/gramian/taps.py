"""Where the shared parameters meet the activations: the taps of the Gramian engine.

The engine traces the loss function once to a jaxpr (``jax.make_jaxpr``) and classifies every
shared parameter leaf by how it enters the computation:

* **dense tap** — the leaf is used once, as an operand of a ``dot_general`` with no batch
  dimensions whose other operand ``A`` is an activation (``y = A W``). Task t's gradient of the
  leaf is ``Aᵀ δ_t``, where ``δ_t = ∂L_t/∂y``, so its Gram contribution needs only ``A`` and the
  ``δ_t`` (:mod:`mtljax.gramian.layers`).
* **bias tap** — the leaf is used once by a ``reshape`` or ``broadcast_in_dim`` whose result is
  used once, by an ``add`` (``y = x + b``); task t's gradient is ``δ_t`` summed over the
  broadcast axes, mapped back through the reshape.
* **fallback** — every other leaf (convolution kernels, normalisation scales, a leaf used twice
  or inside a nested jaxpr such as a ``jit`` or ``scan``): its per-task gradients are computed
  exactly, leaf by leaf, and enter ``G`` through their own ``[T, T]`` Gram.

:func:`evaluate` runs the jaxpr again and lets the engine wrap the value at each tap's *point*
(the value whose cotangent is ``δ``; a dense product followed by its bias shares the point at
the sum) together with the dense taps' activations there (:mod:`mtljax.gramian.probe`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp

SCALE_PRIMITIVES = ("reshape", "broadcast_in_dim")
# Identities on values: shard_map's casts of a replicated parameter to device-varying.
CAST_PRIMITIVES = ("pvary", "pcast")


@dataclasses.dataclass(frozen=True)
class DenseTap:
    """A leaf used as ``y = dot_general(A, W)``.

    Attributes:
      leaf: the leaf's index among the shared leaves.
      eqn: the index of the ``dot_general`` equation.
      act_operand: 0 when ``A`` is the left operand, 1 when it is the right one.
      act_contract, act_free: ``A``'s contracted axes (in the order they pair with ``W``'s)
        and its other axes.
      out_perm: the permutation of ``y``'s axes into ``(A's free axes, W's free axes)``.
      point: the index of the cotangent point ``δ`` is read at.
    """

    leaf: int
    eqn: int
    act_operand: int
    act_contract: tuple[int, ...]
    act_free: tuple[int, ...]
    out_perm: tuple[int, ...]
    point: int


@dataclasses.dataclass(frozen=True)
class BiasTap:
    """A leaf used as ``y = x + broadcast(b)``: ``eqn`` is the reshape or broadcast."""

    leaf: int
    eqn: int
    point: int


@dataclasses.dataclass(frozen=True)
class TapPlan:
    """The taps of one traced loss function.

    Attributes:
      closed: the traced jaxpr; its first ``num_shared`` inputs are the shared leaves.
      dense, bias: the taps, in equation order.
      fallback: indices of the shared leaves without a tap.
      points: the jaxpr variables where a zero ``e_k`` is added (their cotangent is ``δ``).
    """

    closed: Any
    num_shared: int
    dense: tuple[DenseTap, ...]
    bias: tuple[BiasTap, ...]
    fallback: tuple[int, ...]
    points: tuple[Any, ...]

    def tapped_size(self) -> int:
        """The number of shared parameters that have a tap."""
        invars = self.closed.jaxpr.invars
        tapped = [t.leaf for t in (*self.dense, *self.bias)]
        return sum(math.prod(invars[i].aval.shape) for i in tapped)

    def shared_size(self) -> int:
        """The number of shared parameters."""
        return sum(math.prod(v.aval.shape) for v in self.closed.jaxpr.invars[:self.num_shared])


def _uses(jaxpr) -> dict:
    """``var -> [(eqn index, operand position)]``; an output of the jaxpr counts as a use."""
    uses = defaultdict(list)
    for i, eqn in enumerate(jaxpr.eqns):
        for k, v in enumerate(eqn.invars):
            if isinstance(v, jcore.Var):
                uses[v].append((i, k))
    for v in jaxpr.outvars:
        if isinstance(v, jcore.Var):
            uses[v].append((None, None))
    return uses


def _follow_casts(jaxpr, uses, var):
    """``var``, or the value it becomes through a chain of single-use casts, and its uses."""
    while len(uses.get(var, [])) == 1:
        (i, position), = uses[var]
        if i is None or jaxpr.eqns[i].primitive.name not in CAST_PRIMITIVES:
            break
        var = jaxpr.eqns[i].outvars[position]
    return var, uses.get(var, [])


def find_taps(closed, num_shared: int) -> TapPlan:
    """Classifies the first ``num_shared`` inputs of ``closed`` into dense, bias and fallback."""
    jaxpr = closed.jaxpr
    uses = _uses(jaxpr)
    shared = set(jaxpr.invars[:num_shared])
    points: list = []

    def point_of(var) -> int:
        if var not in points:
            points.append(var)
        return points.index(var)

    dense, bias, fallback = [], [], []
    for leaf, var in enumerate(jaxpr.invars[:num_shared]):
        var, use = _follow_casts(jaxpr, uses, var)
        shared.add(var)
        found = _bias_tap(jaxpr, uses, leaf, use) if len(use) == 1 else None
        if found is not None:
            bias.append(BiasTap(leaf, found[0], point_of(found[1])))
            continue
        found = _dense_tap(jaxpr, uses, shared, leaf, use) if len(use) == 1 else None
        if found is not None:
            dense.append(dataclasses.replace(found[0], point=point_of(found[1])))
            continue
        fallback.append(leaf)
    return TapPlan(closed, num_shared, tuple(dense), tuple(bias), tuple(fallback), tuple(points))


def _bias_tap(jaxpr, uses, leaf, use):
    """``(eqn, point var)`` when the leaf is a bias, else ``None``."""
    (i, _), = use
    if i is None or jaxpr.eqns[i].primitive.name not in SCALE_PRIMITIVES:
        return None
    out, out_uses = _follow_casts(jaxpr, uses, jaxpr.eqns[i].outvars[0])
    if len(out_uses) != 1:
        return None
    (j, _), = out_uses
    if j is None or jaxpr.eqns[j].primitive.name != "add":
        return None
    (total,) = jaxpr.eqns[j].outvars
    if len(total.aval.shape) != len(out.aval.shape):
        return None
    return i, total


def _dense_tap(jaxpr, uses, shared, leaf, use):
    """``(DenseTap, point var)`` when the leaf is a dense kernel, else ``None``."""
    (i, position), = use
    if i is None:
        return None
    eqn = jaxpr.eqns[i]
    if eqn.primitive.name != "dot_general":
        return None
    (contract_l, contract_r), (batch_l, batch_r) = eqn.params["dimension_numbers"]
    act = 1 - position
    act_var = eqn.invars[act]
    if batch_l or batch_r or not isinstance(act_var, jcore.Var) or act_var in shared:
        return None
    act_contract = tuple(contract_l if act == 0 else contract_r)
    param_contract = contract_r if act == 0 else contract_l
    act_rank = len(act_var.aval.shape)
    param_rank = len(eqn.invars[position].aval.shape)
    act_free = tuple(d for d in range(act_rank) if d not in act_contract)
    n_act, n_param = len(act_free), param_rank - len(param_contract)
    out_perm = (tuple(range(n_act + n_param)) if act == 0 else
                tuple(range(n_param, n_param + n_act)) + tuple(range(n_param)))
    (out,) = eqn.outvars
    point = out
    # A product followed by its bias shares the bias's point (the same cotangent).
    out_uses = uses.get(out, [])
    if len(out_uses) == 1 and out_uses[0][0] is not None:
        nxt = jaxpr.eqns[out_uses[0][0]]
        if nxt.primitive.name == "add" and nxt.outvars[0].aval.shape == out.aval.shape:
            point = nxt.outvars[0]
    return DenseTap(leaf, i, act, act_contract, act_free, out_perm, -1), point


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = []
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    return eqn.primitive.bind(*subfuns, *invals, **params)


def evaluate(plan: TapPlan, args: list, at_point) -> list:
    """Runs the jaxpr on ``args``; the value of point k becomes ``at_point(k, value, acts)``.

    ``acts`` are the activations ``A`` of the dense taps whose point is k (``plan.dense`` order).
    """
    jaxpr = plan.closed.jaxpr
    env = dict(zip(jaxpr.constvars, plan.closed.consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    index = {v: k for k, v in enumerate(plan.points)}
    act_of = {tap.eqn: tap.act_operand for tap in plan.dense}
    acts = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
        invals = [read(v) for v in eqn.invars]
        if i in act_of:
            acts[i] = invals[act_of[i]]
        out = _bind(eqn, invals)
        outs = out if eqn.primitive.multiple_results else [out]
        for v, value in zip(eqn.outvars, outs, strict=True):
            if isinstance(v, jcore.DropVar):
                continue
            if v in index:
                k = index[v]
                value = at_point(k, value, [acts[t.eqn] for t in plan.dense if t.point == k])
            env[v] = value
    return [read(v) for v in jaxpr.outvars]


def bias_rows(plan: TapPlan, tap: BiasTap, delta: jax.Array) -> jax.Array:
    """Per-row gradients ``[R, *leaf]`` of a bias from ``δ`` (``[R, *point]``).

    ``δ`` is summed over the axes the ``add`` broadcast, then mapped back through the reshape
    (a reshape) or the ``broadcast_in_dim`` (a sum over the axes it added or expanded).
    """
    eqn = plan.closed.jaxpr.eqns[tap.eqn]
    shape = eqn.outvars[0].aval.shape
    leaf = plan.closed.jaxpr.invars[tap.leaf].aval

    def one(d):
        axes = tuple(k for k, (a, b) in enumerate(zip(shape, d.shape, strict=True)) if a != b)
        d = jnp.sum(d, axis=axes, keepdims=True)
        if eqn.primitive.name == "broadcast_in_dim":
            kept = eqn.params["broadcast_dimensions"]
            d = jnp.sum(d, axis=tuple(k for k in range(d.ndim) if k not in kept))
            expanded = tuple(i for i, k in enumerate(kept) if leaf.shape[i] != d.shape[i])
            d = jnp.sum(d, axis=expanded, keepdims=True)
        return d.reshape(leaf.shape).astype(leaf.dtype)

    return jax.vmap(one)(delta)
