"""The multi-task train step: losses → per-task gradients → method → optax update.

A model is described by two pure functions over ``params = {"shared": ..., "heads": ...}``:

* ``encode(params, batch) -> rep`` — the shared trunk (reads ``params["shared"]``);
* ``decode(params, rep, batch) -> (losses, aux)`` — task heads and losses (reads
  ``params["heads"]``); ``losses`` is a dict keyed by task name or a ``[T]`` array.

At the *parameter* level the step differentiates every task loss with respect to the shared
parameters (the Jacobian, one forward and T backward passes) and hands it to the method. At the
*representation* level it differentiates with respect to ``rep`` instead, lets the method
combine those per-task gradients, and back-propagates the combination through ``encode`` once
(MGDA-UB style). Loss-only methods take a shortcut at either level: one backward pass of
``Σ_t w_t L_t``, unless diagnostics ask for the Jacobian.

Task-specific parameters receive ``Σ_t c_t ∇L_t`` with ``c = w`` (the method's weights) when
``weight_heads`` is true and ``c = 1`` otherwise. The default follows each method's paper:
weighted for loss-only methods (their objective is ``Σ w_t L_t``), unweighted for gradient
methods (each head descends its own loss, as in Sener & Koltun and torchjd).

Data parallelism: the step is written per device. Under ``jax.shard_map`` (``axis_name`` set,
``reduce="loss"``) it differentiates the ``pmean`` of the losses, so gradients of replicated
parameters come out globally reduced; under ``jax.pmap`` (``reduce="grad"``) it differentiates
the local losses and ``pmean``-s the per-task gradients. Either way, with the default
``aggregate="global"``, the method sees the *global* per-task gradients, so a step does not
depend on the number of devices; that all-reduces the ``[T, P]`` Jacobian, ``T·P`` elements
per step. ``aggregate="local"`` instead runs the method on each device's own Jacobian and
all-reduces the updates, ``P`` elements per step: a cheaper but *different* method,
``d = (1/N) Σ_i m(J_i)``, whose result depends on the device count N (for a non-linear method
m, ``m(mean_i J_i) ≠ mean_i m(J_i)``). Its method state is the device mean (float leaves).

Task sharding (``task_axis`` set, under :func:`mtljax.parallel.task_sharded_step`): every
device holds the whole batch and pulls back only its ⌈T/N⌉ tasks; the method sees the Gram
matrix (:func:`mtljax.parallel.ring_gram`) and the update ``Jᵀw`` is a ``psum`` of per-device
partial combinations, so no device holds the ``[T, P]`` Jacobian. Only methods that need
nothing but ``G`` and ``Jᵀw`` run this way: loss-only and Gram-space methods.

Mixed precision (``compute_dtype``, e.g. ``jnp.bfloat16``): the floating parameters and batch
leaves are cast to ``compute_dtype`` for the forward and backward passes, so the Jacobian is in
``compute_dtype``; the losses are promoted to at least float32, the Gram matrix and the T×T
solves run in at least float32 (:func:`mtljax.linalg.gram_dtype`), and the update is cast back
to the parameters' dtype before the optimizer, so master parameters and optimizer state stay in
their own dtype (float32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtljax import linalg, parallel
from mtljax.diagnostics import gram_diagnostics
from mtljax.jacobian import pull_back, pull_back_each, resolve_strategy, stack_tasks
from mtljax.methods import Method
from mtljax.tasks import Tasks, as_tasks

NONFINITE_POLICIES = ("raise", "skip", "zero")
REDUCTIONS = ("loss", "grad")
AGGREGATIONS = ("global", "local")


class TrainState(NamedTuple):
    step: jax.Array  # [] int32
    params: Any  # {"shared": ..., "heads": ...}
    opt_state: Any
    method_state: Any


class MultiTaskLoss(NamedTuple):
    """The pure functions of a multi-task model (see the module docstring)."""

    encode: Callable[[Any, Any], Any]
    decode: Callable[[Any, Any, Any], tuple[Any, Any]]

    @classmethod
    def from_fn(cls, fn: Callable[[Any, Any], Any]) -> MultiTaskLoss:
        """Wraps ``fn(params, batch) -> losses`` or ``(losses, aux)``; parameter level only."""

        def decode(params, rep, batch):
            del rep
            out = fn(params, batch)
            return out if isinstance(out, tuple) else (out, {})

        return cls(lambda params, batch: None, decode)


def init_train_state(params, optimizer: optax.GradientTransformation, method: Method) -> TrainState:
    """The initial :class:`TrainState` for ``params = {"shared": ..., "heads": ...}``."""
    _check_params(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        method_state=method.init(params["shared"]),
    )


def _check_params(params):
    if not isinstance(params, dict) or set(params) != {"shared", "heads"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f'params must be a dict with keys "shared" and "heads", got {keys}.')


def make_train_step(
    loss: MultiTaskLoss,
    tasks: Tasks,
    method: Method,
    optimizer: optax.GradientTransformation,
    *,
    level: str | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
    weight_heads: bool | None = None,
    nonfinite: str = "raise",
    diagnostics: bool = True,
    axis_name: str | None = None,
    reduce: str = "loss",
    aggregate: str = "global",
    task_axis: str | None = None,
    compute_dtype=None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Builds the per-device step ``(state, batch) -> (state, metrics)`` (not jitted).

    Args:
      loss: the model's :class:`MultiTaskLoss`.
      tasks: the tasks, in the order of the loss vector.
      method: a :class:`~mtljax.methods.Method` built for ``len(tasks)`` tasks.
      optimizer: any optax transformation of ``{"shared", "heads"}`` updates.
      level: ``"parameters"`` or ``"representation"``; defaults to ``method.level``.
      strategy, chunk_size: how the T backward passes run (:mod:`mtljax.jacobian`).
      weight_heads: whether heads get the method's weights (default: see module docstring).
      nonfinite: policy for NaN/Inf in a task's loss or gradient: ``"raise"`` (the update is
        skipped and ``metrics["nonfinite"]`` flags the task; the runner raises naming it),
        ``"skip"`` (skip the update) or ``"zero"`` (drop those tasks from this step). A
        task is dropped when its loss or its gradient row is non-finite (for Gram-space
        methods: when ``G_tt = ‖g_t‖²`` is, which also flags a norm beyond the float range).
        A NaN that enters through shared computation (e.g. a NaN target feeding a matmul
        shared by all heads, where the pullback computes ``0 · NaN``) reaches every task's
        row, so ``"zero"`` then drops every task and the step does nothing, as ``"skip"``
        would; ``metrics["nonfinite"]`` shows which tasks were hit.
      diagnostics: compute the Gram-based conflict metrics (forces the Jacobian for loss-only
        methods; their update is the same by linearity).
      axis_name: the data-parallel mesh axis, when run under ``shard_map`` or ``pmap``.
      reduce: ``"loss"`` (``shard_map``) or ``"grad"`` (``pmap``); see the module docstring.
        Extra batches (``method.num_batches > 1``) are passed as a tuple of batches.
      aggregate: with ``axis_name``: ``"global"`` (exact; all-reduces the ``[T, P]``
        Jacobian, ``T·P`` elements per step) or ``"local"`` (the method on each device's
        Jacobian, then the mean of the updates; ``P`` elements per step, but the result
        depends on the device count). Parameter level only.
      task_axis: the mesh axis to spread the tasks' backward passes over (see the module
        docstring and :func:`mtljax.parallel.task_sharded_step`); parameter level, loss-only
        or Gram-space methods, no ``axis_name``.
      compute_dtype: dtype of the forward and backward passes (mixed precision, see the
        module docstring); ``None`` computes in the parameters' dtype.

    Returns:
      ``step(state, batch) -> (state, metrics)`` with metrics ``losses [T]``, ``weights [T]``,
      ``nonfinite [T]``, ``skipped []`` and, with diagnostics, those of
      :func:`mtljax.diagnostics.gram_diagnostics`. Its attribute ``check_vma`` is false for
      ``aggregate="local"``: wrap it in ``jax.shard_map(..., check_vma=False)`` (as
      :func:`mtljax.parallel.shard_map_step` does).
    """
    tasks = as_tasks(tasks)
    num_tasks = len(tasks)
    level = level or method.level
    if level not in ("parameters", "representation"):
        raise ValueError(f'level must be "parameters" or "representation", got {level!r}.')
    if method.num_tasks != num_tasks:
        raise ValueError(
            f"Method {method.name!r} was built for {method.num_tasks} tasks, but there are "
            f"{num_tasks} tasks: {list(tasks.names)}."
        )
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")
    if method.num_batches > 1 and level != "parameters":
        raise ValueError(f"Method {method.name!r} draws several batches: parameter level only.")
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}.")
    local = axis_name is not None and aggregate == "local"
    if local and level != "parameters":
        raise ValueError('aggregate="local" runs at the parameter level only.')
    if task_axis is not None:
        _check_task_sharding(method, level, axis_name)
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype)
        if not jnp.issubdtype(compute_dtype, jnp.floating):
            raise ValueError(f"compute_dtype must be a floating dtype, got {compute_dtype}.")
    if weight_heads is None:
        weight_heads = method.kind == "loss"
    use_jacobian = method.kind == "gradient" or diagnostics
    # Methods defined on G alone (gram_weighting) get G and Jᵀw from the step itself.
    gram_space = method.gram_weights is not None and method.num_batches == 1
    unrolled = chunk_size is None and resolve_strategy(strategy) == "unroll"
    pmean_losses = axis_name is not None and reduce == "loss" and not local
    pmean_grads = axis_name is not None and reduce == "grad" and not local
    # Per-device Jacobians (local mode, task sharding): differentiating at device-varying
    # parameters keeps the transpose of shard_map's implicit replicated→varying cast (a psum)
    # out of the gradients; a no-op under check_vma=False and pmap.
    vary_axis = task_axis if task_axis is not None else (axis_name if local else None)

    def rows(vjp_fn, dtype):
        # The cotangents are typed like the losses: device-varying in the local mode.
        eye = varying(jnp.eye(num_tasks, dtype=dtype))
        return pull_back(vjp_fn, eye, strategy=strategy, chunk_size=chunk_size)

    def to_compute(tree):
        if compute_dtype is None:
            return tree

        def one(x):
            x = jnp.asarray(x)
            return x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

        return jax.tree.map(one, tree)

    def varying(tree):
        return tree if vary_axis is None else lax.pcast(tree, vary_axis, to="varying")

    def global_mean(tree):
        return lax.pmean(tree, axis_name) if pmean_grads else tree

    def decode_losses(params, rep, batch):
        raw, aux = loss.decode(params, rep, batch)
        losses = tasks.stack_losses(raw)
        if compute_dtype is not None:
            losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
        if pmean_losses:
            losses = lax.pmean(losses, axis_name)
        return losses, aux

    def full_losses(params, batch):
        return decode_losses(params, loss.encode(params, batch), batch)

    def param_jacobian(params, batch):
        # Also returns, for Gram-space methods on the unrolled engine, the shared Jacobian
        # stacked task-last (XLA:CPU's fast layout for G and Jᵀw; the task-first stack of the
        # shared rows is then read by nothing and dropped by XLA), else None.
        losses, vjp_fn, aux = jax.vjp(lambda p: full_losses(p, batch), params, has_aux=True)
        columns = None
        if gram_space and unrolled:
            eye = varying(jnp.eye(num_tasks, dtype=losses.dtype))
            pulled = [grads for (grads,) in pull_back_each(vjp_fn, eye)]
            jac = stack_tasks(pulled)
            columns = global_mean(stack_tasks([grads["shared"] for grads in pulled], axis=-1))
        else:
            (jac,) = rows(vjp_fn, losses.dtype)
        return global_mean(losses), global_mean(jac), aux, columns

    def task_sharded_jacobian(params, batch):
        # This device's ⌈T/N⌉ rows of the Jacobian; losses and aux are equal on every device.
        losses, vjp_fn, aux = jax.vjp(
            lambda p: full_losses(p, batch), varying(params), has_aux=True
        )
        cotangents = parallel.local_task_rows(num_tasks, losses.dtype, task_axis)
        (jac,) = pull_back(vjp_fn, cotangents, strategy=strategy, chunk_size=chunk_size)
        losses, aux = parallel.from_first_device((losses, aux), task_axis)
        return losses, jac, aux

    def rep_jacobian(params, batch):
        heads = params["heads"]
        rep, enc_vjp = jax.vjp(
            lambda s: loss.encode({"shared": s, "heads": heads}, batch), params["shared"]
        )
        if jax.tree.leaves(rep) == []:
            raise ValueError("The representation level needs an encode function with an output.")
        losses, dec_vjp, aux = jax.vjp(
            lambda r, h: decode_losses({"shared": params["shared"], "heads": h}, r, batch),
            rep,
            heads,
            has_aux=True,
        )
        rep_jac, head_jac = rows(dec_vjp, losses.dtype)
        if axis_name is not None:
            # The method must see the whole batch's representation gradients (GradDrop is
            # elementwise; Gram sums run over all samples): gather the batch axis.
            rep_jac = jax.tree.map(lambda x: _gather_batch(x, axis_name), rep_jac)
            if pmean_grads:
                rep_jac = jax.tree.map(lambda x: x / lax.axis_size(axis_name), rep_jac)
        return global_mean(losses), rep_jac, global_mean(head_jac), enc_vjp, aux

    def local_slice(tree):
        # The rows of a gathered batch axis that belong to this device.
        if axis_name is None:
            return tree
        index = lax.axis_index(axis_name)

        def one(x):
            size = x.shape[0] // lax.axis_size(axis_name)
            return lax.dynamic_slice_in_dim(x, index * size, size, axis=0)

        return jax.tree.map(one, tree)

    def encoder_grad(enc_vjp, rep_direction):
        (grad,) = enc_vjp(local_slice(rep_direction))
        return lax.psum(grad, axis_name) if pmean_grads else grad

    def mask_rows(tree, ok):
        def one(x):
            keep = ok.reshape((-1,) + (1,) * (x.ndim - 1))
            return jnp.where(keep, x, jnp.zeros_like(x))

        return jax.tree.map(one, tree)

    def row_finite(tree, size):
        # Reduce over the leaf's own axes: a reshape first makes XLA:CPU copy the Jacobian.
        parts = [jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim))) for x in
                 jax.tree.leaves(tree)]
        # An empty tree (a model without task-specific parameters) has no bad rows.
        return jnp.stack(parts).all(0) if parts else jnp.ones((size,), bool)

    def diagnostics_from_gram(g, weights):
        return gram_diagnostics(g, g @ weights.astype(g.dtype), weights @ g @ weights)

    def task_sharded_update(state, params, batch):
        # The Jacobian path with the tasks spread over task_axis: the method sees G (or only
        # the losses) and Jᵀw is a psum of each device's partial combination.
        losses, jac, aux = task_sharded_jacobian(params, batch)
        shared_jac, head_jac = jac["shared"], jac["heads"]
        size = linalg.num_tasks(shared_jac)
        local_ok = row_finite(shared_jac, size) & row_finite(head_jac, size)
        ok = jnp.isfinite(losses) & parallel.gather_task_vector(local_ok, num_tasks, task_axis)
        if nonfinite == "zero":
            keep = parallel.local_task_slice(ok, task_axis)
            shared_jac, head_jac = mask_rows(shared_jac, keep), mask_rows(head_jac, keep)
        safe_losses = jnp.where(ok, losses, 1.0)
        g = parallel.ring_gram(shared_jac, task_axis)[:num_tasks, :num_tasks]
        if method.kind == "loss":
            weights, method_state = method.loss_weights(state.method_state,
                                                        task_losses=safe_losses)
        else:
            weights, method_state = method.gram_weights(g, state.method_state,
                                                        task_losses=safe_losses)
        head_weights = weights if weight_heads else jnp.ones((num_tasks,), losses.dtype)

        def combined(per_task, w):
            local_w = parallel.local_task_slice(w, task_axis)
            return lax.psum(linalg.combine(per_task, local_w), task_axis)

        shared_update = combined(shared_jac, weights)
        head_update = combined(head_jac, jnp.where(ok, head_weights, 0.0))
        metrics = diagnostics_from_gram(g, weights) if diagnostics else {}
        return losses, aux, ok, weights, method_state, shared_update, head_update, metrics

    def device_mean_state(tree):
        # aggregate="local": float leaves are averaged over devices; the others (PRNG keys,
        # counters) do not depend on the data and are the same on every device.
        def one(x):
            if jnp.issubdtype(x.dtype, jnp.floating):
                return lax.pmean(x, axis_name)
            return parallel.from_first_device(x, axis_name)

        return jax.tree.map(one, tree)

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        params = state.params
        batches = tuple(batch) if method.num_batches > 1 else (batch,)
        if len(batches) != method.num_batches:
            raise ValueError(
                f"Method {method.name!r} needs {method.num_batches} batches per step, "
                f"got {len(batches)}."
            )
        cparams = to_compute(params)
        batches = to_compute(batches)
        batch = batches[0]
        extra = {}
        enc_vjp = None
        if not use_jacobian:
            # Loss-only shortcut: one backward pass of Σ_t c_t L_t.
            # (Task sharded, every device runs the same replicated backward pass.)
            at = cparams if task_axis is not None else varying(cparams)
            losses, vjp_fn, aux = jax.vjp(lambda p: full_losses(p, batch), at, has_aux=True)
            losses = global_mean(losses)
            ok = jnp.isfinite(losses)
            safe_losses = jnp.where(ok, losses, 1.0)
            weights, method_state = method.loss_weights(
                state.method_state, task_losses=safe_losses
            )
            weights = jnp.where(ok, weights, 0.0).astype(losses.dtype)
            (grads,) = vjp_fn(weights)
            if not weight_heads:
                (head_grads,) = vjp_fn(ok.astype(losses.dtype))
                grads = {"shared": grads["shared"], "heads": head_grads["heads"]}
            grads = global_mean(grads)
            shared_update, head_update = grads["shared"], grads["heads"]
            metrics = {}
        elif task_axis is not None:
            (losses, aux, ok, weights, method_state, shared_update, head_update,
             metrics) = task_sharded_update(state, cparams, batch)
        else:
            if level == "parameters":
                losses, jac, aux, shared_columns = param_jacobian(varying(cparams), batch)
                shared_jac, head_jac = jac["shared"], jac["heads"]
                if method.num_batches > 1:
                    extra["extra_per_task_grads"] = tuple(
                        param_jacobian(varying(cparams), b)[1]["shared"] for b in batches[1:]
                    )
            else:
                losses, shared_jac, head_jac, enc_vjp, aux = rep_jacobian(cparams, batch)
                shared_columns = None
            if gram_space:
                # G once; a non-finite gradient row shows on G's diagonal, so the Jacobian
                # is not read again to check it.
                if shared_columns is None:
                    g = linalg.gram(shared_jac)
                else:
                    g = linalg.gram_of_columns(shared_columns)
                shared_ok = jnp.isfinite(jnp.diagonal(g))
            else:
                shared_ok = row_finite(shared_jac, num_tasks)
            ok = jnp.isfinite(losses) & shared_ok & row_finite(head_jac, num_tasks)
            if nonfinite == "zero":
                shared_jac, head_jac = mask_rows(shared_jac, ok), mask_rows(head_jac, ok)
                if shared_columns is not None:
                    shared_columns = jax.tree.map(
                        lambda x: jnp.where(ok, x, jnp.zeros_like(x)), shared_columns
                    )
            safe_losses = jnp.where(ok, losses, 1.0)
            if gram_space:
                if nonfinite == "zero":
                    g = jnp.where(ok[:, None] & ok[None, :], g, jnp.zeros_like(g))
                weights, method_state = method.gram_weights(
                    g, state.method_state, task_losses=safe_losses
                )
                if shared_columns is None:
                    direction = linalg.combine(shared_jac, weights)
                else:
                    direction = linalg.combine_columns(shared_columns, weights)
            else:
                out = method.apply(
                    shared_jac, state.method_state, cparams["shared"], task_losses=safe_losses,
                    **extra
                )
                method_state, weights, direction = out.state, out.weights, out.updates
            head_weights = weights if (weight_heads and weights is not None) else None
            if head_weights is None:
                head_weights = jnp.ones((num_tasks,), losses.dtype)
            head_update = linalg.combine(head_jac, jnp.where(ok, head_weights, 0.0))
            metrics = {}
            if diagnostics:
                if weights is not None:
                    g = g if gram_space else linalg.gram(shared_jac)
                    metrics.update(diagnostics_from_gram(g, weights))
                else:
                    g = linalg.gram(shared_jac)
                    task_dots = linalg.dots(shared_jac, direction)
                    sq_norm = linalg.squared_norms(jax.tree.map(lambda x: x[None], direction))[0]
                    metrics.update(gram_diagnostics(g, task_dots, sq_norm))
            if level == "representation":
                shared_update = encoder_grad(enc_vjp, direction)
            else:
                shared_update = direction
            if weights is None:
                weights = jnp.full((num_tasks,), jnp.nan, losses.dtype)

        updates = {"shared": shared_update, "heads": head_update}
        if local:
            # aggregate="local": the mean over devices of each device's own method output.
            updates, losses, weights, metrics = lax.pmean(
                (updates, losses, weights, metrics), axis_name
            )
            ok = lax.psum((~ok).astype(jnp.int32), axis_name) == 0
        if compute_dtype is not None:
            updates = jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params)
        new_opt_updates, opt_state = optimizer.update(updates, state.opt_state, params)
        new_params = optax.apply_updates(params, new_opt_updates)
        if method.after_step is not None:
            losses_after, _ = full_losses(to_compute(new_params), batch)
            method_state = method.after_step(
                method_state, task_losses_after=global_mean(losses_after)
            )
        if local:
            method_state = device_mean_state(method_state)

        all_ok = jnp.all(ok)
        update_ok = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_opt_updates)])
        )
        apply = update_ok & (all_ok | (nonfinite == "zero"))
        new_state = lax.cond(
            apply,
            lambda: TrainState(state.step + 1, new_params, opt_state, method_state),
            lambda: state._replace(step=state.step + 1),
        )
        if axis_name is not None:
            # aux (e.g. batch accuracies) is per device; report its mean over devices.
            aux = lax.pmean(aux, axis_name)
        metrics.update(
            losses=losses,
            weights=weights,
            nonfinite=~ok,
            skipped=~apply,
            aux=aux,
        )
        return new_state, metrics

    # The local mode runs methods (with their solver loops) on device-varying Jacobians: it
    # needs shard_map's untyped (pmap-like) semantics, which parallel.shard_map_step reads here.
    step.check_vma = not local
    return step


def _check_task_sharding(method: Method, level: str, axis_name: str | None) -> None:
    """Raises unless ``method`` can run task sharded (from ``G`` and ``Jᵀw`` only)."""
    if axis_name is not None:
        raise ValueError(
            "task_axis and axis_name cannot be combined: the task-sharded step holds the whole "
            "batch on every device of its task axis."
        )
    if level != "parameters":
        raise ValueError("The task-sharded step runs at the parameter level only.")
    if method.kind == "gradient" and method.gram_weights is None:
        raise ValueError(
            f"Method {method.name!r} needs P-sized data beyond the Gram matrix and Jᵀw (it is "
            "not a Gram-space method), so it cannot run task sharded: no device holds the "
            "whole [T, P] Jacobian. Use a loss-only or Gram-space method, or drop task_axis."
        )


def _gather_batch(x, axis_name):
    """All-gathers axis 1 (the batch axis of ``[T, B_local, ...]``) as a device-invariant value.

    A ``psum`` of zero-padded slices gives the same array as ``all_gather`` but is typed as
    replicated under ``shard_map``, so methods with loops over it need no device annotations.
    """
    n, index = lax.axis_size(axis_name), lax.axis_index(axis_name)
    local = x.shape[1]
    padded = jnp.zeros((x.shape[0], local * n, *x.shape[2:]), x.dtype)
    padded = lax.dynamic_update_slice_in_dim(padded, x, index * local, axis=1)
    return lax.psum(padded, axis_name)
