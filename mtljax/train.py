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
the local losses and ``pmean``-s the per-task gradients. Either way the method sees the *global*
per-task gradients, so a step does not depend on the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mtljax import linalg
from mtljax.diagnostics import gram_diagnostics
from mtljax.jacobian import pull_back_rows
from mtljax.methods import Method
from mtljax.tasks import Tasks, as_tasks

NONFINITE_POLICIES = ("raise", "skip", "zero")
REDUCTIONS = ("loss", "grad")


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
        ``"skip"`` (skip the update) or ``"zero"`` (drop those tasks from this step).
      diagnostics: compute the Gram-based conflict metrics (forces the Jacobian for loss-only
        methods; their update is the same by linearity).
      axis_name: the data-parallel mesh axis, when run under ``shard_map`` or ``pmap``.
      reduce: ``"loss"`` (``shard_map``) or ``"grad"`` (``pmap``); see the module docstring.
        Extra batches (``method.num_batches > 1``) are passed as a tuple of batches.

    Returns:
      ``step(state, batch) -> (state, metrics)`` with metrics ``losses [T]``, ``weights [T]``,
      ``nonfinite [T]``, ``skipped []`` and, with diagnostics, those of
      :func:`mtljax.diagnostics.gram_diagnostics`.
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
    if weight_heads is None:
        weight_heads = method.kind == "loss"
    use_jacobian = method.kind == "gradient" or diagnostics
    pmean_losses = axis_name is not None and reduce == "loss"
    pmean_grads = axis_name is not None and reduce == "grad"

    def rows(vjp_fn, dtype):
        return pull_back_rows(vjp_fn, num_tasks, dtype, strategy=strategy, chunk_size=chunk_size)

    def global_mean(tree):
        return lax.pmean(tree, axis_name) if pmean_grads else tree

    def decode_losses(params, rep, batch):
        raw, aux = loss.decode(params, rep, batch)
        losses = tasks.stack_losses(raw)
        if pmean_losses:
            losses = lax.pmean(losses, axis_name)
        return losses, aux

    def full_losses(params, batch):
        return decode_losses(params, loss.encode(params, batch), batch)

    def param_jacobian(params, batch):
        losses, vjp_fn, aux = jax.vjp(lambda p: full_losses(p, batch), params, has_aux=True)
        (jac,) = rows(vjp_fn, losses.dtype)
        return global_mean(losses), global_mean(jac), aux

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

    def row_finite(tree):
        parts = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in
                 jax.tree.leaves(tree)]
        # An empty tree (a model without task-specific parameters) has no bad rows.
        return jnp.stack(parts).all(0) if parts else jnp.ones((num_tasks,), bool)

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        params = state.params
        batches = tuple(batch) if method.num_batches > 1 else (batch,)
        if len(batches) != method.num_batches:
            raise ValueError(
                f"Method {method.name!r} needs {method.num_batches} batches per step, "
                f"got {len(batches)}."
            )
        batch = batches[0]
        extra = {}
        enc_vjp = None
        if not use_jacobian:
            # Loss-only shortcut: one backward pass of Σ_t c_t L_t.
            losses, vjp_fn, aux = jax.vjp(
                lambda p: full_losses(p, batch), params, has_aux=True
            )
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
        else:
            if level == "parameters":
                losses, jac, aux = param_jacobian(params, batch)
                shared_jac, head_jac = jac["shared"], jac["heads"]
                if method.num_batches > 1:
                    extra["extra_per_task_grads"] = tuple(
                        param_jacobian(params, b)[1]["shared"] for b in batches[1:]
                    )
            else:
                losses, shared_jac, head_jac, enc_vjp, aux = rep_jacobian(params, batch)
            ok = jnp.isfinite(losses) & row_finite(shared_jac) & row_finite(head_jac)
            if nonfinite == "zero":
                shared_jac, head_jac = mask_rows(shared_jac, ok), mask_rows(head_jac, ok)
            safe_losses = jnp.where(ok, losses, 1.0)
            out = method.apply(
                shared_jac, state.method_state, params["shared"], task_losses=safe_losses, **extra
            )
            method_state, weights = out.state, out.weights
            head_weights = weights if (weight_heads and weights is not None) else None
            if head_weights is None:
                head_weights = jnp.ones((num_tasks,), losses.dtype)
            head_update = linalg.combine(head_jac, jnp.where(ok, head_weights, 0.0))
            direction = out.updates
            metrics = {}
            if diagnostics:
                g = linalg.gram(shared_jac)
                if weights is not None:
                    task_dots, sq_norm = g @ weights.astype(g.dtype), weights @ g @ weights
                else:
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
        new_opt_updates, opt_state = optimizer.update(updates, state.opt_state, params)
        new_params = optax.apply_updates(params, new_opt_updates)
        if method.after_step is not None:
            losses_after, _ = full_losses(new_params, batch)
            method_state = method.after_step(
                method_state, task_losses_after=global_mean(losses_after)
            )

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

    return step


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
