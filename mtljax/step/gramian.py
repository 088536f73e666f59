"""The ``"gramian"`` engine of the train step (:mod:`mtljax.gramian`): ``G`` layer by layer,
the method on ``G``, then one backward pass of ``Σ_t w_t L_t``.

Under data parallelism (``aggregate="global"``) ``G`` is the global one: each probe adds this
device's rows against every device's (:func:`mtljax.gramian.layers.dense_gram`) and the sum
over devices happens in the pullback of the replicated dummy inputs; the fallback leaves' rows
are the global rows, and the update is the gradient of the global weighted loss, so the step
equals the one-device step. Instance-wise (``instance_wise=True``) the rows are the ``T·B``
(task, sample) pairs, task-major; ``drop_task`` drops a task's rows together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mtljax import linalg
from mtljax.diagnostics import gram_diagnostics
from mtljax.gramian import engine as gramian
from mtljax.step import collectives
from mtljax.step import status as st
from mtljax.step.context import StepContext
from mtljax.step.engine_output import EngineOutput
from mtljax.step.weighting import head_coefficients, t_sized_weights


def global_gram(ctx: StepContext, params, batch):
    """The forward pass with probes and ``G`` ``[T, T]`` (global under ``aggregate="global"``).

    Returns:
      ``(pulled, losses, gram)``: the pulled values, the (global) losses and ``G``.
    """
    parallel = ctx.options.parallel
    axis = None if parallel.data_axis is None or parallel.local else parallel.data_axis
    # Under pmap the losses are local and the global gradient is the device mean.
    scale = 1.0 / lax.axis_size(axis) if parallel.pmean_grads else 1.0
    at = params if parallel.task_axis is not None else ctx.varying(params)
    pulled = gramian.forward(ctx.losses, at, batch, axis_name=axis, scale=scale)
    losses = ctx.global_mean(pulled.losses)
    if parallel.pmean_grads and pulled.gram is not None:
        pulled = pulled._replace(gram=lax.psum(pulled.gram, axis))
    dtype = jnp.promote_types(losses.dtype, jnp.float32)
    return pulled, losses, gramian.full_gram(pulled, ctx.global_mean(pulled.fallback_rows), dtype)


def gramian_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """Task rows: ``G`` ``[T, T]`` without the shared Jacobian."""
    if ctx.options.instance_wise:
        return instance_engine(ctx, method_state, params, batches)
    if ctx.options.parallel.task_axis is not None:
        return task_sharded_engine(ctx, method_state, params, batches)
    pulled, losses, gram = global_gram(ctx, params, batches[0])
    head_rows = ctx.global_mean(pulled.head_rows)
    present, aux = st.split_presence(ctx, pulled.aux)
    finite = (jnp.isfinite(losses) & jnp.isfinite(jnp.diagonal(gram))
              & st.row_finite(head_rows, ctx.num_tasks))
    status = st.task_status(ctx, finite, present)
    safe = None
    if st.needs_row_masks(ctx, present):
        keep = st.kept_rows(status, finite)
        gram, head_rows, safe = st.mask_gram(gram, keep), linalg.zero_rows(head_rows, keep), keep
    weights, method_state = t_sized_weights(ctx, method_state, losses, status, gram)
    shared = ctx.global_mean(gramian.combined(pulled, weights.astype(losses.dtype), safe))
    head_update = linalg.combine(head_rows, head_coefficients(ctx, weights, status, losses.dtype))
    metrics = {}
    if ctx.options.diagnostics:
        w = weights.astype(gram.dtype)
        metrics = gram_diagnostics(gram, gram @ w, w @ gram @ w)
    return EngineOutput(losses, aux, status, weights, method_state, shared, head_update, metrics)


def task_sharded_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """Tasks sharded: each device pulls back its ⌈T/N⌉ rows; the probes give its row block of
    ``G`` (gathering the tasks' ``δ`` layer by layer), the fallback leaves their ring Gram;
    each device back-propagates its own tasks' ``w_t L_t`` and the updates are summed."""
    axis, num_tasks = ctx.options.parallel.task_axis, ctx.num_tasks
    pulled = gramian.forward(ctx.losses, ctx.varying(params), batches[0], task_axis=axis)
    # Losses and aux are equal on every device; this types them so.
    losses, aux = collectives.from_first_device((pulled.losses, pulled.aux), axis)
    dtype = jnp.promote_types(losses.dtype, jnp.float32)
    parts = [collectives.ring_gram(rows, axis) for rows in pulled.fallback_rows]
    if pulled.gram is not None:
        parts.append(collectives.gather_task_rows(pulled.gram, axis))
    gram = sum(parts[1:], parts[0]).astype(dtype)[:num_tasks, :num_tasks]
    heads = pulled.head_rows
    size = linalg.num_tasks(heads) if jax.tree.leaves(heads) else None
    local_finite = st.row_finite(heads, size) if size else None
    finite = jnp.isfinite(losses) & jnp.isfinite(jnp.diagonal(gram))
    if local_finite is not None:
        finite &= collectives.gather_task_vector(local_finite, num_tasks, axis)
    present, aux = st.split_presence(ctx, aux)
    status = st.task_status(ctx, finite, present)
    safe = None
    if st.needs_row_masks(ctx, present):
        safe = st.kept_rows(status, finite)
        gram = st.mask_gram(gram, safe)
        heads = linalg.zero_rows(heads, collectives.local_task_slice(safe, axis))
    weights, method_state = t_sized_weights(ctx, method_state, losses, status, gram)
    mine = jnp.sum(collectives.local_task_rows(num_tasks, losses.dtype, axis), axis=0)
    shared = lax.psum(gramian.combined(pulled, weights.astype(losses.dtype) * mine, safe), axis)
    coefficients = head_coefficients(ctx, weights, status, losses.dtype)
    head_update = lax.psum(linalg.combine(heads, collectives.local_task_slice(coefficients,
                                                                              axis)), axis)
    metrics = {}
    if ctx.options.diagnostics:
        w = weights.astype(gram.dtype)
        metrics = gram_diagnostics(gram, gram @ w, w @ gram @ w)
    return EngineOutput(losses, aux, status, weights, method_state, shared, head_update, metrics)


def loss_method_diagnostics(ctx: StepContext, step, params, batch, weights) -> dict:
    """Diagnostics of a loss-only method's step from ``G`` (the Gramian engine's forward
    pass), on the first step and every ``diagnostics_every``-th (``step`` counts from 0, so
    ``step == 0`` or ``(step + 1) % k == 0``); NaN on the others.

    ``metrics["diagnosed"]`` says which. The update itself never needs ``G``.
    """

    def compute():
        if ctx.options.instance_wise:
            gram = instance_gram(ctx, params, batch)
            return _task_level_diagnostics(gram, weights.reshape(-1).astype(gram.dtype),
                                           ctx.num_tasks)
        _, _, gram = global_gram(ctx, params, batch)
        w = weights.astype(gram.dtype)
        return gram_diagnostics(gram, gram @ w, w @ gram @ w)

    def skip():
        shapes = jax.eval_shape(compute)
        return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

    # The first step and every k-th (counting from 1), as the runner logs them.
    diagnosed = (step == 0) | ((step + 1) % ctx.options.diagnostics_every == 0)
    return dict(lax.cond(diagnosed, compute, skip), diagnosed=diagnosed)


def nonfinite_gradient_tasks(ctx: StepContext, params, batch) -> jax.Array:
    """``[T]``: the tasks whose shared gradient is non-finite, for a loss-only step whose
    combined gradient is: ``G_tt`` of each device's own share, OR-ed over devices (a row is
    non-finite globally when it is on some device; only T flags are communicated)."""
    parallel = ctx.options.parallel
    if parallel.pmean_losses:  # this device's share, without summing rows over devices
        params = lax.pcast(params, parallel.data_axis, to="varying")
    pulled = gramian.forward(ctx.losses, params, batch)
    dtype = jnp.promote_types(pulled.losses.dtype, jnp.float32)
    bad = ~jnp.isfinite(jnp.diagonal(gramian.full_gram(pulled, pulled.fallback_rows, dtype)))
    if parallel.data_axis is not None and not parallel.local:
        bad = collectives.any_device(bad, parallel.data_axis)
    return bad


def instance_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """Instance-wise rows: ``G`` ``[T·B, T·B]``; metrics per task (row means and sums).

    A loss-only method needs no ``G``: one backward pass of ``Σ_r w_r L_r`` (its diagnostics
    come from :func:`loss_method_diagnostics`). Unweighted heads (gradient methods) get each
    task's mean loss gradient, the instance-wise form of "each head its own task's loss".
    """
    batch, num_tasks = batches[0], ctx.num_tasks
    if ctx.method.kind == "loss":
        losses, vjp_fn, aux = jax.vjp(lambda p: ctx.losses(p, batch), params, has_aux=True)
        pulled, gram = None, None
    else:
        pulled = gramian.forward(ctx.losses, params, batch, instance=True)
        losses, aux, vjp_fn = pulled.losses, pulled.aux, pulled.vjp_fn
        gram = instance_gram(ctx, params, batch, pulled)
    num_rows, size = _check_rows(ctx, losses)
    present, aux = st.split_presence(ctx, aux)
    finite = jnp.isfinite(losses)
    if gram is not None:
        finite &= jnp.isfinite(jnp.diagonal(gram)).reshape(losses.shape)
    finite = jnp.all(finite, axis=1)
    status = st.task_status(ctx, finite, present)
    row_active = jnp.repeat(status.active, size)
    safe = None
    if gram is not None and st.needs_row_masks(ctx, present):
        keep = st.kept_rows(status, finite)
        gram, safe = st.mask_gram(gram, jnp.repeat(keep, size)), keep
    flat = losses.reshape(-1)
    kw = dict(task_losses=jnp.where(row_active & jnp.isfinite(flat), flat, 1.0),
              task_mask=row_active)
    if gram is None:
        w, method_state = ctx.method.loss_weights(method_state, **kw)
    else:
        w, method_state = ctx.method.gram_weights(gram, method_state, **kw)
    w = jnp.where(row_active, w, 0.0).astype(losses.dtype).reshape(num_tasks, size)
    coefficients = w if ctx.options.weight_heads else jnp.broadcast_to(
        status.active[:, None] / size, w.shape).astype(losses.dtype)
    if pulled is None:
        shared, heads = vjp_fn(w)[0]["shared"], vjp_fn(coefficients)[0]["heads"]
    else:
        shared = gramian.combined(pulled, w, safe)
        heads = gramian.combined(pulled, coefficients, safe, part="heads")
    metrics = {}
    if ctx.options.diagnostics and gram is not None:
        metrics = _task_level_diagnostics(gram, w.reshape(-1).astype(gram.dtype), num_tasks)
    return EngineOutput(jnp.mean(losses, axis=1), aux, status, jnp.sum(w, axis=1),
                        method_state, shared, heads, metrics, row_weights=w)


def instance_gram(ctx: StepContext, params, batch, pulled=None) -> jax.Array:
    """``G`` ``[T·B, T·B]`` of the instance-wise rows (the probes, plus the fallback leaves'
    per-sample rows)."""
    if pulled is None:
        pulled = gramian.forward(ctx.losses, params, batch, instance=True)
    _check_rows(ctx, pulled.losses)
    dtype = jnp.promote_types(pulled.losses.dtype, jnp.float32)
    plan = pulled.plan
    fallback = _per_sample_fallback(ctx, params, batch, plan) if plan.fallback else []
    return gramian.full_gram(pulled, fallback, dtype)


def _check_rows(ctx: StepContext, losses) -> tuple[int, int]:
    num_tasks, size = losses.shape
    if ctx.method.num_tasks != num_tasks * size:
        raise ValueError(
            f"Instance-wise rows: {num_tasks} tasks × batch {size} = {num_tasks * size} rows, "
            f"but method {ctx.method.name!r} was built for {ctx.method.num_tasks}."
        )
    return num_tasks * size, size


def _per_sample_fallback(ctx: StepContext, params, batch, plan) -> list:
    """Per-(task, sample) gradients ``[T·B, *leaf]`` of the fallback leaves, one sample at a
    time (``vmap`` over the batch)."""
    leaves, treedef = jax.tree.flatten(params["shared"])

    def one(sample):
        single = jax.tree.map(lambda x: x[None], sample)

        def losses(fallback):
            full = list(leaves)
            for i, leaf in zip(plan.fallback, fallback, strict=True):
                full[i] = leaf
            p = {"shared": treedef.unflatten(full), "heads": params["heads"]}
            return ctx.losses(p, single)[0][:, 0]

        return jax.jacrev(losses)([leaves[i] for i in plan.fallback])

    per_sample = jax.vmap(one)(batch)  # each [B, T, *leaf]
    return [jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]) for x in per_sample]


def _task_level_diagnostics(gram, w, num_tasks: int) -> dict:
    """Diagnostics of the task-level Gram ``S G Sᵀ`` (S sums each task's rows: the gradients
    of ``Σ_i L_{t,i}``) and the update ``d = Jᵀw``."""
    rows = gram.shape[0]
    summing = jnp.repeat(jnp.eye(num_tasks, dtype=gram.dtype), rows // num_tasks, axis=1)
    task_gram = summing @ gram @ summing.T
    return gram_diagnostics(task_gram, summing @ (gram @ w), w @ gram @ w)
