"""Engines: from parameters and batches to the method's update, one function each.

An engine is ``engine(ctx, method_state, params, batches) -> EngineOutput``: it runs the
forward and backward passes its way, calls the method (with ``task_mask``, see
:mod:`mtljax.step.status`) and returns the shared and head updates. :data:`ENGINES` lists
them and :func:`select_engine` picks one; adding an engine is adding one function and its
rule there.

* ``"loss"`` — loss-only methods: one backward pass of ``Σ_t c_t L_t``.
* ``"jacobian"`` — the parameter Jacobian (one forward pass, T backward passes), stacked
  task-first, or task-last for Gram-space methods on the unrolled CPU strategy
  (:attr:`StepOptions.task_last <mtljax.step.options.StepOptions>`).
* ``"representation"`` — the Jacobian with respect to the shared representation; the method's
  combination is back-propagated through ``encode`` once (MGDA-UB style).
* ``"task_sharded"`` — each device of the task axis pulls back ⌈T/N⌉ tasks; the method sees
  ``G`` (:func:`~mtljax.step.collectives.ring_gram`) and ``Jᵀw`` is a ``psum`` of per-device
  partial combinations, so no device holds the ``[T, P]`` Jacobian.

Under data parallelism with ``aggregate="global"`` an engine returns the global update (the
losses or per-task gradients are reduced before the method sees them); with
``aggregate="local"`` it returns this device's own, and the step averages them afterwards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mtljax import linalg
from mtljax.gramian import trace_plan
from mtljax.jacobian import pull_back_each, stack_tasks
from mtljax.methods import Method
from mtljax.step import collectives
from mtljax.step import status as st
from mtljax.step.context import StepContext
from mtljax.step.engine_output import Engine, EngineOutput
from mtljax.step.gramian import gramian_engine, nonfinite_gradient_tasks
from mtljax.step.options import StepOptions
from mtljax.step.weighting import (
    MethodResult,
    TaskJacobian,
    diagnostics,
    head_coefficients,
    run_method,
    t_sized_weights,
)


def loss_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """Loss-only methods: ``w`` from the losses, then one backward pass of ``Σ_t w_t L_t``
    (and one of ``Σ_t L_t`` for the heads when they are unweighted)."""
    batch = batches[0]
    # Task sharded, every device runs the same replicated backward pass.
    at = params if ctx.options.parallel.task_axis is not None else ctx.varying(params)
    losses, vjp_fn, aux = jax.vjp(lambda p: ctx.losses(p, batch), at, has_aux=True)
    losses = ctx.global_mean(losses)
    present, aux = st.split_presence(ctx, aux)
    status = st.task_status(ctx, jnp.isfinite(losses), present)
    weights, method_state = t_sized_weights(ctx, method_state, losses, status)
    weights = weights.astype(losses.dtype)
    (grads,) = vjp_fn(weights)
    if not ctx.options.weight_heads:
        (head_grads,) = vjp_fn(status.active.astype(losses.dtype))
        grads = {"shared": grads["shared"], "heads": head_grads["heads"]}
    grads = ctx.global_mean(grads)
    # Non-finite gradients with every loss finite: find the task(s) (rare; T pullbacks).
    explained = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    explained |= jnp.any(status.nonfinite)
    bad_rows = lax.cond(explained, lambda: jnp.zeros_like(status.present),
                        lambda: nonfinite_gradient_tasks(ctx, at, batch))
    status = status._replace(nonfinite=status.nonfinite | (status.present & bad_rows))
    return EngineOutput(losses, aux, status, weights, method_state, grads["shared"],
                        grads["heads"], {})


def jacobian_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """The parameter Jacobian of every batch; the method on the shared rows."""
    losses, jac, aux = _parameter_rows(ctx, params, batches[0])
    extra = {}
    if len(batches) > 1:
        extra["extra_per_task_grads"] = tuple(
            _parameter_rows(ctx, params, b)[1].shared for b in batches[1:]
        )
    return weigh_rows(ctx, method_state, params["shared"], losses, aux, jac, extra)


def _parameter_rows(ctx: StepContext, params, batch):
    losses, vjp_fn, aux = jax.vjp(lambda p: ctx.losses(p, batch), ctx.varying(params),
                                  has_aux=True)
    eye = ctx.identity(losses.dtype)
    if ctx.options.task_last:
        pulled = [grads for (grads,) in pull_back_each(vjp_fn, eye)]
        jac = TaskJacobian(None, stack_tasks([g["heads"] for g in pulled]),
                           stack_tasks([g["shared"] for g in pulled], axis=-1))
    else:
        (rows,) = ctx.pull_back(vjp_fn, eye)
        jac = TaskJacobian(rows["shared"], rows["heads"])
    return ctx.global_mean(losses), ctx.global_mean(jac), aux


def representation_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """The Jacobian at the shared representation; ``d_rep`` back through ``encode`` once."""
    batch, heads = batches[0], params["heads"]
    rep, enc_vjp = jax.vjp(lambda s: ctx.loss.encode({"shared": s, "heads": heads}, batch),
                           params["shared"])
    if jax.tree.leaves(rep) == []:
        raise ValueError("The representation level needs an encode function with an output.")
    losses, dec_vjp, aux = jax.vjp(
        lambda r, h: ctx.decode_losses({"shared": params["shared"], "heads": h}, r, batch),
        rep, heads, has_aux=True,
    )
    rep_jac, head_jac = ctx.pull_back(dec_vjp, ctx.identity(losses.dtype))
    parallel = ctx.options.parallel
    if parallel.data_axis is not None:
        # The method must see the whole batch's representation gradients (GradDrop is
        # elementwise; Gram sums run over all samples): gather the batch axis.
        axis = parallel.data_axis
        rep_jac = jax.tree.map(lambda x: collectives.gather_batch(x, axis), rep_jac)
        if parallel.pmean_grads:
            rep_jac = jax.tree.map(lambda x: x / lax.axis_size(axis), rep_jac)
    jac = TaskJacobian(rep_jac, ctx.global_mean(head_jac))
    out = weigh_rows(ctx, method_state, params["shared"], ctx.global_mean(losses), aux, jac, {})
    return out._replace(shared_update=_encoder_grad(ctx, enc_vjp, out.shared_update))


def _encoder_grad(ctx: StepContext, enc_vjp, rep_direction):
    parallel = ctx.options.parallel
    if parallel.data_axis is not None:
        rep_direction = collectives.local_batch_slice(rep_direction, parallel.data_axis)
    (grad,) = enc_vjp(rep_direction)
    return lax.psum(grad, parallel.data_axis) if parallel.pmean_grads else grad


def weigh_rows(ctx: StepContext, method_state, shared_params, losses, aux, jac: TaskJacobian,
               extra: dict) -> EngineOutput:
    """The method stage shared by the Jacobian engines: status, method, heads, diagnostics."""
    num_tasks = ctx.num_tasks
    present, aux = st.split_presence(ctx, aux)
    gram = jac.gram() if ctx.gram_space or ctx.options.diagnostics else None
    if gram is not None:
        # A non-finite gradient row shows on G's diagonal: the rows are not read again.
        shared_finite = jnp.isfinite(jnp.diagonal(gram))
    else:
        shared_finite = st.row_finite(jac.shared, num_tasks)
    finite = jnp.isfinite(losses) & shared_finite & st.row_finite(jac.heads, num_tasks)
    status = st.task_status(ctx, finite, present)
    if st.needs_row_masks(ctx, present):
        keep = st.kept_rows(status, finite)
        jac = jac.masked(keep)
        gram = None if gram is None else st.mask_gram(gram, keep)
    result = run_method(ctx, method_state, shared_params, losses, status, jac, gram, extra)
    coefficients = head_coefficients(ctx, result.weights, status, losses.dtype)
    head_update = linalg.combine(jac.heads, coefficients)
    metrics = diagnostics(jac, gram, result) if ctx.options.diagnostics else {}
    weights = result.weights
    if weights is None:
        weights = jnp.full((num_tasks,), jnp.nan, losses.dtype)
    return EngineOutput(losses, aux, status, weights, result.state, result.direction,
                        head_update, metrics)


def task_sharded_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """This device's ⌈T/N⌉ rows; ``G`` by the ring, ``Jᵀw`` by a ``psum``."""
    axis, num_tasks = ctx.options.parallel.task_axis, ctx.num_tasks
    losses, vjp_fn, aux = jax.vjp(lambda p: ctx.losses(p, batches[0]), ctx.varying(params),
                                  has_aux=True)
    (rows,) = ctx.pull_back(vjp_fn, collectives.local_task_rows(num_tasks, losses.dtype, axis))
    # Losses and aux are equal on every device; this types them so.
    losses, aux = collectives.from_first_device((losses, aux), axis)
    present, aux = st.split_presence(ctx, aux)
    shared, heads = rows["shared"], rows["heads"]
    size = linalg.num_tasks(shared)
    local_finite = st.row_finite(shared, size) & st.row_finite(heads, size)
    finite = jnp.isfinite(losses) & collectives.gather_task_vector(local_finite, num_tasks, axis)
    status = st.task_status(ctx, finite, present)
    if st.needs_row_masks(ctx, present):
        keep = collectives.local_task_slice(st.kept_rows(status, finite), axis)
        shared, heads = linalg.zero_rows(shared, keep), linalg.zero_rows(heads, keep)
    gram = collectives.ring_gram(shared, axis)[:num_tasks, :num_tasks]
    weights, method_state = t_sized_weights(ctx, method_state, losses, status, gram)

    def combined(per_task, w):
        return lax.psum(linalg.combine(per_task, collectives.local_task_slice(w, axis)), axis)

    coefficients = head_coefficients(ctx, weights, status, losses.dtype)
    metrics = {}
    if ctx.options.diagnostics:
        metrics = diagnostics(None, gram, MethodResult(weights, None, None))
    return EngineOutput(losses, aux, status, weights, method_state, combined(shared, weights),
                        combined(heads, coefficients), metrics)


# engine="auto" takes the Gramian engine for a Gram-space method when dense layers hold at
# least half of the shared parameters and the Jacobian of those layers would have at least
# this many entries (T × tapped parameters; 16 MB in float32). Below it both engines take a few
# milliseconds and the exact Jacobian is kept (docs/engines.md, measured).
AUTO_GRAMIAN_MIN_ENTRIES = 1 << 22


def auto_engine(ctx: StepContext, method_state, params, batches) -> EngineOutput:
    """``engine="auto"`` for a Gram-space method: the Gramian or the Jacobian engine, decided
    at trace time from the loss function's taps (:data:`AUTO_GRAMIAN_MIN_ENTRIES`)."""
    plan, _ = trace_plan(ctx.losses, ctx.varying(params), batches[0])
    tapped = plan.tapped_size()
    large = ctx.num_tasks * tapped >= AUTO_GRAMIAN_MIN_ENTRIES
    engine = gramian_engine if large and 2 * tapped >= plan.shared_size() else jacobian_engine
    return engine(ctx, method_state, params, batches)


ENGINES: dict[str, Engine] = {
    "loss": loss_engine,
    "jacobian": jacobian_engine,
    "representation": representation_engine,
    "task_sharded": task_sharded_engine,
    "gramian": gramian_engine,
    "auto": auto_engine,
}


def select_engine(method: Method, options: StepOptions) -> str:
    """The name in :data:`ENGINES` of the engine for this method and these options.

    Instance-wise rows take the Gramian engine. Gram-space methods take it with
    ``engine="gramian"`` (parameter level), and under ``"auto"`` when the Jacobian is large
    (:func:`auto_engine`). Loss-only methods take one backward pass (their
    diagnostics, every ``diagnostics_every`` steps, come from the Gramian engine's ``G``;
    :func:`mtljax.step.gramian.loss_method_diagnostics`), unless ``engine="jacobian"`` asks
    for the Jacobian (the same update by linearity).
    """
    if options.instance_wise:
        _check_gramian(method, options)
        return "gramian"
    if method.kind == "loss" and options.engine != "jacobian":
        return "loss"
    if options.engine == "gramian":
        _check_gramian(method, options)
        return "gramian"
    gram_space = method.gram_weights is not None and method.num_batches == 1
    if (options.engine == "auto" and gram_space and options.level == "parameters"
            and options.parallel.task_axis is None):
        return "auto"
    if options.parallel.task_axis is not None:
        return "task_sharded"
    return "representation" if options.level == "representation" else "jacobian"


def _check_gramian(method: Method, options: StepOptions) -> None:
    """Raises unless ``method`` and ``options`` can run on the Gramian engine."""
    if method.kind == "gradient" and (method.gram_weights is None or method.num_batches > 1):
        raise ValueError(
            f'engine="gramian" needs a loss-only or Gram-space method; {method.name!r} needs '
            "the per-task gradients themselves. Use engine=\"jacobian\"."
        )
    if options.level != "parameters":
        raise ValueError('engine="gramian" runs at the parameter level.')
