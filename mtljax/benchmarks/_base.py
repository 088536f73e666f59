"""What every built-in benchmark shares: dotted overrides, the summary file, the scan trainer.

A benchmark is a frozen dataclass of its settings with ``run(workdir) -> summary`` and
``table(summary) -> str``; ``mtljax run NAME`` calls them when a config's ``get_config`` returns
one instead of a :class:`~mtljax.config.RunConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax
from flax import nnx
from jax import lax

from mtljax import objectives
from mtljax.config import coerce, parse_value
from mtljax.methods import get_method
from mtljax.metrics_log import to_json
from mtljax.nnx_bridge import model_loss, model_predict, split_params
from mtljax.tasks import Tasks
from mtljax.train import MultiTaskLoss, init_train_state, make_train_step


class BenchmarkConfig:
    """Mixin of the benchmark dataclasses: ``replace`` with ``--set`` style overrides."""

    def replace(self, overrides: Mapping[str, Any]):
        """A copy with ``overrides`` applied; ``"method_kw.famo"`` sets one key of a dict field.

        Values are checked against the field's type and text is parsed
        (:func:`mtljax.config.coerce`), so ``--set steps=20000`` sets an integer.

        Raises:
          ValueError: an unknown field, a dotted key into a field that is not a dict, or a
            value of the wrong type.
        """
        hints = typing.get_type_hints(type(self))
        fields = [f.name for f in dataclasses.fields(self)]
        values = {}
        for key, value in overrides.items():
            name, _, sub = key.partition(".")
            if name not in fields:
                raise ValueError(f"Unknown benchmark field {name!r}; fields: {sorted(fields)}.")
            if sub:
                current = values.get(name, getattr(self, name))
                if not isinstance(current, Mapping):
                    raise ValueError(f"{name!r} is not a dict field; cannot set {key!r}.")
                value = {**current, sub: parse_value(value)}
            values[name] = coerce(name, hints[name], value)
        return dataclasses.replace(self, **values)


def write_summary(workdir: str | None, summary: dict) -> dict:
    """Writes ``workdir/summary.json`` (when ``workdir`` is set) and returns ``summary``."""
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(to_json(summary), f, indent=2)
    return summary


def sample_batches(batch_size: int, num_samples: int) -> Callable[[jax.Array, Any], Any]:
    """A ``batch_fn`` for :func:`scan_train`: ``batch_size`` rows drawn uniformly with
    replacement from the first ``num_samples`` rows of every array of ``data``."""

    def batch_fn(key, data):
        index = jax.random.randint(key, (batch_size,), 0, num_samples)
        return jax.tree.map(lambda a: a[index], data)

    return batch_fn


def scan_train(
    loss: MultiTaskLoss,
    task_names: Sequence[str],
    method: str,
    method_kw: Mapping[str, Any],
    optimizer: optax.GradientTransformation,
    params: dict,
    batch_fn: Callable[[jax.Array, Any], Any],
    data: Any,
    steps: int,
    key: jax.Array,
    *,
    batched: bool = False,
) -> tuple[dict, jax.Array]:
    """Trains ``params`` for ``steps`` steps in one jitted ``lax.scan``.

    Args:
      loss: the model's :class:`~mtljax.MultiTaskLoss`.
      task_names: the T task names, in the loss's order.
      method, method_kw: a registry name and its hyper-parameters.
      optimizer: the optax optimizer of ``params = {"shared": ..., "heads": ...}``.
      params: the initial parameters.
      batch_fn: ``(key, data) -> batch``; a method that needs several batches gets a tuple of
        independent draws.
      data: the arrays ``batch_fn`` samples from (an argument, not a closure, so that
        ``batched`` runs share one compiled program).
      steps: number of steps.
      key: the batch-sampling key.
      batched: ``params``, ``data`` and ``key`` carry a leading axis of independent runs
        (seeds, datasets), trained together under ``vmap``.

    Returns:
      The final parameters and the per-step training losses ``[steps, T]`` (each with the
      leading run axis when ``batched``).
    """
    tasks = Tasks(list(task_names))
    m = get_method(method, len(tasks), **dict(method_kw))
    step = make_train_step(loss, tasks, m, optimizer, diagnostics=False)

    def train(params, data, key):
        def body(state, step_key):
            if m.num_batches > 1:
                keys = jax.random.split(step_key, m.num_batches)
                batch = tuple(batch_fn(k, data) for k in keys)
            else:
                batch = batch_fn(step_key, data)
            state, metrics = step(state, batch)
            return state, metrics["losses"]

        state = init_train_state(params, optimizer, m)
        state, losses = lax.scan(body, state, jax.random.split(key, steps))
        return state.params, losses

    return jax.jit(jax.vmap(train) if batched else train)(params, data, key)


def regression_model(model: nnx.Module, task_names: Sequence[str]):
    """``(loss, params, predict)`` of an NNX model whose task ``t`` regresses ``batch[t]``.

    The loss of task ``t`` is the mean squared error of ``model(batch["x"])[t]``.
    """

    def task_losses(outputs, batch):
        return {t: objectives.mse(outputs[t], batch[t]) for t in task_names}, {}

    graphdef, params, rest = split_params(model)
    return model_loss(graphdef, rest, task_losses), params, model_predict(graphdef, rest)
