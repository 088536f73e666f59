"""The bridge from a Flax NNX model to the pure functions of the train step.

The train step works on ``params = {"shared": ..., "heads": ...}`` and two pure functions
(:class:`mtljax.MultiTaskLoss`). An NNX model is split once, outside ``jit``, into a static
``graphdef``, its parameters and the rest of its state; the functions below merge them back
inside the traced step, so the step stays a plain ``jax.jit`` over pytrees (``nnx.State`` is a
pytree, so optax, ``jax.vjp`` and the methods take it as is).

The parameters under a path containing ``"shared"`` (the :class:`~mtljax.models.HardSharing`
trunk) are the shared ones; every other ``nnx.Param`` is task-specific.

The model protocol read by :func:`model_loss` (docs/architectures.md):

* ``encode(x)`` / ``decode(rep)``: a single shared representation, so the representation
  level works; ``decode(rep, x)`` when the class sets ``decode_reads_input = True`` (gates on
  the input, as in MMoE). Models without ``encode`` run their whole forward pass in ``decode``
  and support the parameter level only (:func:`check_level`).
* ``task_penalties() -> {task: scalar}``: added to each task's loss (soft sharing's penalty).

Example:
  >>> from flax import nnx
  >>> from mtljax.models import MLP, HardSharing
  >>> rngs = nnx.Rngs(0)
  >>> model = HardSharing(MLP(4, (8,), rngs=rngs), {"a": 2, "b": 2}, rngs=rngs)
  >>> graphdef, params, rest = split_params(model)
  >>> sorted(params)
  ['heads', 'shared']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from mtljax.step.state import losses_and_aux
from mtljax.train import MultiTaskLoss

SHARED = "shared"

TaskLossesFn = Callable[[dict[str, jax.Array], Any], tuple[dict[str, jax.Array], dict]]

_SHARED_PARAMS = nnx.All(nnx.Param, nnx.PathContains(SHARED))


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, dict[str, nnx.State], nnx.State]:
    """Splits a model into ``(graphdef, {"shared": ..., "heads": ...}, rest)``.

    Args:
      model: an NNX module with its shared parameters under a ``shared`` attribute.

    Returns:
      The static graph definition; the parameters as ``{"shared": nnx.State, "heads":
      nnx.State}`` (``"heads"`` holds every ``nnx.Param`` outside ``shared``); and the rest of
      the state (RNG counters, batch statistics, ...), possibly empty.

    Raises:
      ValueError: the model has no parameter under a path containing ``"shared"``.
    """
    graphdef, shared, heads, rest = nnx.split(model, _SHARED_PARAMS, nnx.Param, ...)
    if not jax.tree.leaves(shared):
        raise ValueError(
            f"{type(model).__name__} has no nnx.Param under a path containing {SHARED!r}: "
            "name the shared trunk `shared` (see mtljax.models.HardSharing)."
        )
    return graphdef, {"shared": shared, "heads": heads}, rest


def merge_params(graphdef: nnx.GraphDef, params: dict[str, nnx.State], rest: nnx.State):
    """The inverse of :func:`split_params`: a model with these parameters."""
    return nnx.merge(graphdef, params["shared"], params["heads"], rest)


def has_representation(model: nnx.Module) -> bool:
    """Whether ``model`` has an ``encode``/``decode`` split (one shared representation)."""
    return callable(getattr(model, "encode", None))


def check_level(model: nnx.Module, level: str | None) -> None:
    """Raises a clear ``ValueError`` when ``level="representation"`` is asked of a model
    without a single shared representation (no ``encode``)."""
    if level == "representation" and not has_representation(model):
        raise ValueError(
            f"{type(model).__name__} has no single shared representation (no encode/decode "
            'split): train it at level="parameters" (see docs/architectures.md).'
        )


def model_loss(
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    task_losses_fn: TaskLossesFn,
    *,
    input_key: str = "x",
) -> MultiTaskLoss:
    """The :class:`~mtljax.MultiTaskLoss` of a model (see the module docstring's protocol).

    ``encode(params, batch) = model.encode(batch[input_key])`` and ``decode(params, rep, batch)
    = task_losses_fn(model.decode(rep), batch)``, with the model merged from ``params`` in each;
    ``model.decode(rep, x)`` for models with ``decode_reads_input``. A model without ``encode``
    gives ``encode = None`` and ``decode = task_losses_fn(model(x), batch)``: parameter level
    only (the train step refuses the representation level; :func:`check_level` says why).
    A model's ``task_penalties()`` are added to the task losses, so the logged losses include
    them; they should depend on shared parameters only through ``decode`` at the parameter
    level (the representation level does not differentiate ``decode`` w.r.t. ``shared``).

    Args:
      graphdef, rest: from :func:`split_params`.
      task_losses_fn: ``(predictions, batch) -> (losses, aux)``, ``losses`` a dict of scalars
        keyed by task name (e.g. built from :mod:`mtljax.objectives`).
      input_key: the batch entry fed to the model.

    Returns:
      The pure functions of the train step.
    """

    def encode(params, batch):
        model = merge_params(graphdef, params, rest)
        return model.encode(batch[input_key]) if has_representation(model) else None

    def decode(params, rep, batch):
        model = merge_params(graphdef, params, rest)
        x = batch[input_key]
        if not has_representation(model):
            outputs = model(x)
        elif getattr(model, "decode_reads_input", False):
            outputs = model.decode(rep, x)
        else:
            outputs = model.decode(rep)
        losses, aux = losses_and_aux(task_losses_fn(outputs, batch), source="task_losses_fn")
        if callable(getattr(model, "task_penalties", None)):
            penalties = model.task_penalties()
            losses = {name: value + penalties[name] for name, value in losses.items()}
        return losses, aux

    return MultiTaskLoss(encode, decode)


def model_predict(
    graphdef: nnx.GraphDef, rest: nnx.State
) -> Callable[[dict[str, nnx.State], jax.Array], dict[str, jax.Array]]:
    """A pure (jittable) ``predict(params, x) -> {task: outputs}`` for evaluation.

    The model runs in evaluation mode (:meth:`nnx.Module.eval`: ``deterministic=True``), so
    stochastic layers, such as :class:`~mtljax.models.LTB`'s sampled branching, are deterministic.
    """

    def predict(params, x):
        model = merge_params(graphdef, params, rest)
        model.eval()
        return model(x)

    return predict
