"""A run's experiment, built from its config: data, tasks, model, loss, method, optimizer.

:func:`build_experiment` turns a :class:`~mtljax.config.RunConfig` and a loaded dataset into
the pieces the loop needs: the tasks (each with its loss and metrics, :mod:`mtljax.tasks`),
the loss of the NNX model (:func:`mtljax.metrics.task_losses` through
:func:`mtljax.nnx_bridge.model_loss`, so the aux's ``"present"`` mask reaches the step), the
method, the optimizer, the initial train state, the train iterator and the evaluation
(:func:`mtljax.metrics.make_evaluator`, compiled once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtljax.config import OptimizerConfig, RunConfig
from mtljax.data.loader import BatchIterator
from mtljax.data.multi_input import MultiInputDataset, MultiInputIterator
from mtljax.data.registry import dataset_entry, load_dataset
from mtljax.methods import Method, get_method
from mtljax.metrics import make_evaluator, task_losses
from mtljax.models.multi_input import multi_input_loss
from mtljax.models.registry import build_architecture
from mtljax.nnx_bridge import check_level, model_loss, model_predict, split_params
from mtljax.tasks import Tasks
from mtljax.train import MultiTaskLoss, TrainState, init_train_state

OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "sgd": optax.sgd,
}
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What one run trains and evaluates.

    Attributes:
      tasks: the trained tasks (``config.data.tasks`` of the dataset's).
      loss: the model's :class:`~mtljax.MultiTaskLoss`.
      method: the MTL method.
      optimizer: the optax optimizer.
      state: the initial train state (every leaf its own buffer: the step donates it).
      batches: the endless, resumable iterator of training batches.
      evaluate: ``evaluate(params, split) -> {task: {metric: value}}`` on ``"val"`` or
        ``"test"``.
    """

    tasks: Tasks
    loss: MultiTaskLoss
    method: Method
    optimizer: optax.GradientTransformation
    state: TrainState
    batches: BatchIterator | MultiInputIterator
    evaluate: Callable[[Any, str], dict[str, dict[str, float]]]


def load_data(config: RunConfig):
    """The dataset of ``config.data``, through :func:`mtljax.data.registry.load_dataset`."""
    data = config.data
    return load_dataset(data.name, root=data.root, seed=data.seed, **data.kwargs)


def select_tasks(all_tasks: Tasks, names: tuple[str, ...] | None) -> Tasks:
    """The tasks named ``names`` (all when ``None``), in the given order."""
    return all_tasks if names is None else Tasks([all_tasks[all_tasks.index(n)] for n in names])


def build_model(config: RunConfig, input_shape, tasks: Tasks) -> nnx.Module:
    """``config.model.name`` (by default the dataset's model) with ``config.model.kwargs``."""
    name = config.model.name or dataset_entry(config.data.name).default_model
    heads = {task.name: task.output_dim for task in tasks}
    return build_architecture(
        name, input_shape, heads, rngs=nnx.Rngs(config.seed), **config.model.kwargs
    )


def build_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """``optax.<name>(lr, **kw)``.

    Raises:
      ValueError: an unknown optimizer or argument.
    """
    if config.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {config.name!r}; known: {', '.join(OPTIMIZERS)}.")
    try:
        return OPTIMIZERS[config.name](config.lr, **config.kw)
    except TypeError as error:
        raise ValueError(f"optimizer.kw: {error}.") from None


def build_experiment(config: RunConfig, data) -> Experiment:
    """The :class:`Experiment` of ``config`` on the loaded dataset ``data``.

    A :class:`~mtljax.data.MultiInputDataset` (every task with its own inputs, e.g. Office-31)
    trains on one batch of every task per step (:func:`mtljax.models.multi_input_loss`, the
    parameter level only) and is evaluated task by task on each task's own inputs.
    """
    tasks = select_tasks(data.tasks, config.data.tasks)
    model = build_model(config, data.input_shape, tasks)
    graphdef, params, rest = split_params(model)
    method = get_method(config.method.name, len(tasks), **config.method.kw)
    level = config.level or method.level
    check_level(model, level)
    optimizer = build_optimizer(config.optimizer)
    # The step donates its state: give every leaf its own buffer (an init may use one array for
    # two fields, and XLA refuses to donate a buffer twice).
    state = jax.tree.map(jnp.copy, init_train_state(params, optimizer, method))
    predict = model_predict(graphdef, rest)
    batch_size, eval_size = config.schedule.batch_size, config.schedule.eval_batch_size
    if isinstance(data, MultiInputDataset):
        if level == "representation":
            raise ValueError(
                "A multi-input dataset trains at the parameter level only: set "
                "level=parameters or choose a parameter-level method."
            )
        loss = multi_input_loss(graphdef, rest, task_losses(tasks))
        train = {t: data.splits["train"][t] for t in tasks.names}
        batches = MultiInputIterator(train, batch_size, seed=config.seed)

        evaluators = {t.name: make_evaluator([t], predict, eval_size) for t in tasks}

        def evaluate(params, split):
            return {
                name: evaluator(params, data.task_arrays(split, name))[name]
                for name, evaluator in evaluators.items()
            }
    else:
        loss = model_loss(graphdef, rest, task_losses(tasks))
        keep = ("x", *tasks.names)
        splits = {name: {k: data.splits[name][k] for k in keep} for name in SPLITS}
        batches = BatchIterator(splits["train"], batch_size, seed=config.seed)

        evaluator = make_evaluator(tasks, predict, eval_size)

        def evaluate(params, split):
            return evaluator(params, splits[split])

    return Experiment(tasks, loss, method, optimizer, state, batches, evaluate)
