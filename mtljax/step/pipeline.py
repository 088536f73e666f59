"""The train step as a pipeline of named stages.

``TrainStep.__call__``: cast to the compute dtype → engine → cross-device reduction →
optimizer → after-step hook → apply or skip → metrics. Each stage is a function below.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtljax.methods import Method
from mtljax.step import collectives
from mtljax.step.context import StepContext
from mtljax.step.engines import ENGINES, EngineOutput, select_engine
from mtljax.step.gramian import loss_method_diagnostics
from mtljax.step.options import StepOptions, step_options
from mtljax.step.state import MultiTaskLoss, TrainState
from mtljax.tasks import Tasks, as_tasks


@dataclasses.dataclass(frozen=True, eq=False)
class TrainStep:
    """The per-device step ``(state, batch) -> (state, metrics)`` (not jitted).

    Attributes:
      context: the loss, tasks, method and :class:`~mtljax.step.options.StepOptions`.
      optimizer: the optax transformation of ``{"shared", "heads"}`` updates.
      engine: the name in :data:`~mtljax.step.engines.ENGINES` of the engine it runs.
    """

    context: StepContext
    optimizer: optax.GradientTransformation
    engine: str

    @property
    def options(self) -> StepOptions:
        """The step's :class:`~mtljax.step.options.StepOptions`."""
        return self.context.options

    def __call__(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        ctx = self.context
        batches = split_batches(ctx, batch)
        params, batches = to_compute(ctx, (state.params, batches))
        out = ENGINES[self.engine](ctx, state.method_state, params, batches)
        if ctx.method.kind == "loss" and self.engine != "jacobian" and ctx.options.diagnostics:
            weights = out.weights if out.row_weights is None else out.row_weights
            out = out._replace(metrics=loss_method_diagnostics(ctx, state.step, params,
                                                               batches[0], weights))
        out = reduce_across_devices(ctx, out)
        updates = to_param_dtype({"shared": out.shared_update, "heads": out.head_update},
                                 state.params)
        opt_updates, opt_state = self.optimizer.update(updates, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, opt_updates)
        method_state = after_step(ctx, out, new_params, batches[0])
        new_state, applied = apply_or_skip(
            ctx, state, TrainState(state.step + 1, new_params, opt_state, method_state), out,
            opt_updates,
        )
        return new_state, step_metrics(out, applied)


def split_batches(ctx: StepContext, batch) -> tuple:
    """The step's batches as a tuple (methods drawing several take a tuple of batches)."""
    num_batches = ctx.method.num_batches
    batches = tuple(batch) if num_batches > 1 else (batch,)
    if len(batches) != num_batches:
        raise ValueError(f"Method {ctx.method.name!r} needs {num_batches} batches per step, "
                         f"got {len(batches)}.")
    return batches


def to_compute(ctx: StepContext, tree):
    """Floating leaves cast to the compute dtype (mixed precision); the rest unchanged."""
    dtype = ctx.options.compute_dtype
    if dtype is None:
        return tree

    def one(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(one, tree)


def to_param_dtype(updates, params):
    """Each update leaf in its parameter's dtype (master parameters keep theirs)."""
    return jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params)


def reduce_across_devices(ctx: StepContext, out: EngineOutput) -> EngineOutput:
    """The data-parallel reduction after the engine.

    ``aux`` (e.g. batch accuracies) is per device: its mean over devices is reported. With
    ``aggregate="local"`` the update, losses, weights and diagnostics are the mean of each
    device's own, and a task is present (non-finite) when it is on some device.
    """
    axis = ctx.options.parallel.data_axis
    if axis is None:
        return out
    out = out._replace(aux=lax.pmean(out.aux, axis))
    if not ctx.options.parallel.local:
        return out
    shared, heads, losses, weights, metrics = lax.pmean(
        (out.shared_update, out.head_update, out.losses, out.weights, out.metrics), axis
    )
    status = jax.tree.map(lambda flags: collectives.any_device(flags, axis), out.status)
    return out._replace(losses=losses, status=status, weights=weights,
                        shared_update=shared, head_update=heads, metrics=metrics)


def after_step(ctx: StepContext, out: EngineOutput, new_params, batch):
    """The method's after-step hook (FAMO) with the losses at the new parameters; in the
    local mode, the method state's device mean."""
    method_state = out.method_state
    hook = ctx.method.after_step
    if hook is not None:
        losses_after, _ = ctx.losses(to_compute(ctx, new_params), batch)
        method_state = hook(method_state, task_losses_after=ctx.global_mean(losses_after),
                            task_mask=out.status.active)
    if ctx.options.parallel.local:
        method_state = device_mean_state(method_state, ctx.options.parallel.data_axis)
    return method_state


def device_mean_state(tree, axis_name: str):
    """``aggregate="local"``: float leaves averaged over devices; the others (PRNG keys,
    counters) do not depend on the data and are the same on every device."""

    def one(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return lax.pmean(x, axis_name)
        return collectives.from_first_device(x, axis_name)

    return jax.tree.map(one, tree)


def apply_or_skip(ctx: StepContext, state: TrainState, new_state: TrainState,
                  out: EngineOutput, opt_updates) -> tuple[TrainState, jax.Array]:
    """``new_state`` when the update is finite and no active task is non-finite (or the
    policy is ``"drop_task"``); else ``state`` with the step counter advanced."""
    update_ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                                   for x in jax.tree.leaves(opt_updates)]))
    applied = update_ok & (~jnp.any(out.status.nonfinite) | (ctx.options.nonfinite == "drop_task"))
    skipped = state._replace(step=state.step + 1)
    return lax.cond(applied, lambda: new_state, lambda: skipped), applied


def step_metrics(out: EngineOutput, applied: jax.Array) -> dict[str, Any]:
    """``losses``, ``weights``, ``nonfinite``, ``present`` (``[T]``), ``skipped`` and
    ``aux``, plus the diagnostics; instance-wise also ``row_weights`` (``[T, B]``)."""
    metrics = dict(out.metrics, losses=out.losses, weights=out.weights,
                   nonfinite=out.status.nonfinite, present=out.status.present,
                   skipped=~applied, aux=out.aux)
    if out.row_weights is not None:
        metrics["row_weights"] = out.row_weights
    return metrics


def make_train_step(
    loss: MultiTaskLoss,
    tasks: Tasks,
    method: Method,
    optimizer: optax.GradientTransformation,
    **options,
) -> TrainStep:
    """Builds the per-device step ``(state, batch) -> (state, metrics)`` (not jitted).

    Args:
      loss: the model's :class:`~mtljax.step.state.MultiTaskLoss`.
      tasks: the tasks, in the order of the loss vector.
      method: a :class:`~mtljax.methods.Method` built for ``len(tasks)`` tasks.
      optimizer: any optax transformation of ``{"shared", "heads"}`` updates.
      **options: keywords of :func:`~mtljax.step.options.step_options`, validated here:

        * ``level``: ``"parameters"`` or ``"representation"``; defaults to ``method.level``.
        * ``strategy``, ``chunk_size``: how the T backward passes run (:mod:`mtljax.jacobian`).
        * ``weight_heads``: whether heads get the method's weights (default: weighted for
          loss-only methods, unweighted for gradient methods; see :mod:`mtljax.step`).
        * ``nonfinite``: what a NaN/Inf in a present task's loss or gradient does (flagged in
          ``metrics["nonfinite"]`` either way): ``"skip_step"`` (default) skips the update;
          ``"drop_task"`` leaves those tasks out of the method for this step (``task_mask``)
          and updates with the others. ``"raise"`` and ``"skip"`` are aliases of
          ``"skip_step"`` (raising is the runner's job, on the host), ``"zero"`` of
          ``"drop_task"``. A task's gradient is non-finite when a row of its Jacobian is (for
          Gram-space methods: when ``G_tt = ‖g_t‖²`` is, which also flags a norm beyond the
          float range). A NaN that enters through shared computation (e.g. a NaN target
          feeding a matmul shared by all heads, whose pullback computes ``0 · NaN``) reaches
          every task's row, so ``"drop_task"`` then drops every task and the step does nothing.
        * ``diagnostics``: compute the Gram-based conflict metrics. Default true.
        * ``diagnostics_every``: for loss-only methods (whose update needs no Gram matrix),
          compute them only on the first step and every k-th (default 10), from the Gramian engine's
          ``G`` in a ``lax.cond``, so the other steps cost one backward pass; they report NaN
          and ``metrics["diagnosed"] = False``.
        * ``engine``: ``"auto"`` (default), ``"jacobian"`` or ``"gramian"``
          (:func:`~mtljax.step.engines.select_engine`, :mod:`mtljax.gramian`).
        * ``instance_wise``: per-sample losses ``{task: [B]}``; the method weights the ``T·B``
          rows (built for ``T·B`` tasks) on the Gramian engine.
        * ``axis_name``, ``reduce`` (``"loss"`` under ``shard_map``, ``"grad"`` under
          ``pmap``), ``aggregate`` (``"global"`` or ``"local"``): data parallelism.
        * ``task_axis``: task sharding (loss-only or Gram-space methods, no ``axis_name``).
        * ``compute_dtype``: dtype of the forward and backward passes (mixed precision).

        Extra batches (``method.num_batches > 1``) are passed as a tuple of batches.

    Returns:
      A :class:`TrainStep`: ``step(state, batch) -> (state, metrics)`` with metrics
      ``losses [T]``, ``weights [T]``, ``nonfinite [T]``, ``present [T]``, ``skipped []``,
      ``aux`` and, with diagnostics, those of :func:`mtljax.diagnostics.gram_diagnostics`.
      Its ``options.parallel`` tells :mod:`mtljax.parallel` how to map it.
    """
    tasks = as_tasks(tasks)
    context = StepContext(loss, tasks, method, step_options(method, tasks, **options))
    return TrainStep(context, optimizer, select_engine(method, context.options))
