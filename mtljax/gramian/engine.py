"""The Gramian engine: ``G = J Jᵀ`` layer by layer, the method's weights, then one backward pass.

A Gram-space or loss-only method needs only ``G`` (and the losses) to choose its weights ``w``;
its update ``Jᵀw`` is the gradient of ``Σ_t w_t L_t``. The engine

1. traces the loss function and finds its taps (:mod:`mtljax.gramian.taps`);
2. runs the forward pass once through a probe at each tap point
   (:mod:`mtljax.gramian.probe`) and pulls the T losses back in one batched pass: each probe
   adds its layer's Gram block while ``δ`` is alive; the fallback leaves and the heads give
   their per-task rows;
3. adds the fallback leaves' exact Grams to the probes' blocks;
4. runs the method on ``G`` and pulls ``w`` back once through the plain forward pass for the
   shared update (the heads' update is ``Σ_t c_t`` of their rows, as in the Jacobian engine).

No ``[T, P]`` array is formed for the tapped layers; the fallback leaves hold ``T ×`` their own
size. With *instance-wise* losses (``[T, B]``, one row per sample and task) the rows are the
``T·B`` pairs: step 2 pulls back one vector per task (each sample's loss reaches only its own
activations, so ``δ`` of ``Σ_i L_{t,i}`` holds every sample's own cotangent; models that mix
samples, such as batch normalisation in training mode, break this), and ``G`` is
``[T·B, T·B]`` by the per-sample identity of :func:`~mtljax.gramian.layers.instance_gram`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.gramian import layers
from mtljax.gramian.probe import PointSpec, through
from mtljax.gramian.taps import TapPlan, evaluate, find_taps
from mtljax.step import collectives


class Pulled(NamedTuple):
    """What one forward pass and the batched pullback of the T rows give."""

    losses: jax.Array  # [T] (or [T, B] instance-wise)
    aux: Any
    vjp_fn: Any  # the pullback of the losses to the parameters (the update's pass)
    plan: TapPlan
    gram: jax.Array  # the taps' part of G: [T, T] (or [T·B, T·B]); partial over devices
    fallback_rows: list  # per fallback leaf, [T, *leaf] (task rows only)
    head_rows: Any  # [T, *heads] (task rows only)


def trace_plan(losses_fn, params, batch) -> tuple[TapPlan, Any]:
    """The :class:`TapPlan` of ``losses_fn(params, batch) -> (losses, aux)`` and its output tree."""
    leaves, treedef = jax.tree.flatten(params["shared"])

    def traced(shared_leaves, rest):
        heads, b = rest
        return losses_fn({"shared": treedef.unflatten(shared_leaves), "heads": heads}, b)

    closed, shapes = jax.make_jaxpr(traced, return_shape=True)(leaves, (params["heads"], batch))
    return find_taps(closed, len(leaves)), jax.tree.structure(shapes)


def point_specs(plan: TapPlan, *, instance: bool, axis_name=None, scale=1.0,
                task_axis=None) -> list[PointSpec]:
    """One :class:`~mtljax.gramian.probe.PointSpec` per point of ``plan``."""
    losses = plan.closed.out_avals[0]
    dtype = jnp.promote_types(losses.dtype, jnp.float32)
    batch = losses.shape[1] if instance else None
    return [
        PointSpec(plan, tuple(t for t in plan.dense if t.point == k),
                  tuple(t for t in plan.bias if t.point == k), dtype, batch, axis_name, scale,
                  task_axis)
        for k in range(len(plan.points))
    ]


def forward(losses_fn, params, batch, *, instance: bool = False, axis_name=None,
            scale: float = 1.0, task_axis=None) -> Pulled:
    """One forward pass through the probes, then the batched pullback of the T rows.

    Task rows pull back the identity (``[T, T]``; with ``task_axis``, this device's k rows of
    it, and the taps' part of ``G`` is its ``[k, N·k]`` row block); instance-wise rows pull
    back, per task, ones on its row of the ``[T, B]`` losses.
    """
    plan, out_def = trace_plan(losses_fn, params, batch)
    num_tasks = plan.closed.out_avals[0].shape[0]
    dtype = plan.closed.out_avals[0].dtype
    if task_axis is not None:
        rows = collectives.local_task_rows(num_tasks, dtype, task_axis)
    else:
        rows = jnp.eye(num_tasks, dtype=dtype)
        if instance:
            size = plan.closed.out_avals[0].shape[1]
            rows = jnp.broadcast_to(rows[:, :, None], (*rows.shape, size))
    columns = num_tasks if task_axis is None else rows.shape[0] * lax.axis_size(task_axis)
    specs = point_specs(plan, instance=instance, axis_name=axis_name, scale=scale,
                        task_axis=task_axis)
    probes = [through(spec, rows.shape[0], columns) for spec in specs]

    leaves, treedef = jax.tree.flatten(params["shared"])

    def tapped(fallback, heads, dummies):
        # Only the fallback leaves, the heads and the dummies are differentiated: a tapped
        # kernel's per-task gradient is never formed (nor summed over devices).
        shared = list(leaves)
        for i, leaf in zip(plan.fallback, fallback, strict=True):
            shared[i] = leaf
        args = jax.tree.leaves((shared, (heads, batch)))

        def at_point(k, value, acts):
            g = dummies[k]
            if task_axis is None:  # typed like the point (device-varying under shard_map)
                g = g + jnp.zeros_like(value, dtype=g.dtype, shape=g.shape)
            return probes[k](value, acts, g)

        losses, aux = jax.tree.unflatten(out_def, evaluate(plan, args, at_point))
        return losses, aux

    # Over a data axis the dummies are replicated: the pullback of their cast to varying sums
    # the devices' partial blocks. Over a task axis each device's block is its own rows.
    dummies = [spec.dummy(columns) for spec in specs]
    if task_axis is not None:
        dummies = [lax.pcast(g, task_axis, to="varying") for g in dummies]
    fallback = [leaves[i] for i in plan.fallback]
    losses, rows_vjp, aux = jax.vjp(tapped, fallback, params["heads"], dummies, has_aux=True)
    # One vmap: the probes must see every row at once (mtljax.gramian.probe).
    fallback_rows, head_rows, parts = jax.vmap(rows_vjp)(rows.astype(losses.dtype))
    # The update's pullback, to all parameters: a second trace of the forward pass (the
    # T-pass above differentiates neither the tapped kernels nor the shared biases).
    _, vjp_fn = jax.vjp(lambda p: losses_fn(p, batch)[0], params)
    return Pulled(losses, aux, vjp_fn, plan, _sum_parts(parts, instance), fallback_rows,
                  head_rows)


def _sum_parts(parts: list, instance: bool) -> jax.Array:
    if not parts:
        return None
    if instance:
        parts = [p.reshape(p.shape[0] * p.shape[1], -1) for p in parts]
    return sum(parts[1:], parts[0])


def full_gram(pulled: Pulled, fallback_rows, dtype) -> jax.Array:
    """``G``: the probes' part plus the exact Grams of the fallback leaves' rows."""
    parts = [layers.rows_gram(rows, dtype) for rows in fallback_rows]
    if pulled.gram is not None:
        parts.append(pulled.gram.astype(dtype))
    return sum(parts[1:], parts[0])


def combined(pulled: Pulled, cotangent, safe_rows=None, part: str = "shared"):
    """Step 4: ``Σ_r c_r ∇L_r`` of ``params[part]``, one backward pass.

    With ``safe_rows`` (``[T]`` bool, some False), tasks outside it hold non-finite values: a
    single pass would compute ``0 · NaN``, so the tasks are pulled back one at a time and
    selected (only in that case, by ``lax.cond``).
    """

    def one_pass():
        return pulled.vjp_fn(cotangent)[0][part]

    if safe_rows is None:
        return one_pass()

    def task_by_task():
        def body(t, acc):
            ct = jnp.zeros_like(cotangent).at[t].set(cotangent[t])
            grad = pulled.vjp_fn(ct)[0][part]
            return jax.tree.map(lambda a, g: jnp.where(safe_rows[t], a + g, a), acc, grad)

        # zeros_like keeps the update's device-varying type; the pass itself is dead code.
        zeros = jax.tree.map(jnp.zeros_like, one_pass())
        return lax.fori_loop(0, cotangent.shape[0], body, zeros)

    return lax.cond(jnp.all(safe_rows), one_pass, task_by_task)

