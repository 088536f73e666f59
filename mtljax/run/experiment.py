"""A run's experiment, built from its config: data, tasks, model, loss, method, optimizer.

:func:`build_experiment` turns a :class:`~mtljax.config.RunConfig` and a loaded dataset into
the pieces the loop needs: the tasks (each with its loss, metrics and priority level,
:mod:`mtljax.tasks`), the loss of the NNX model (:func:`mtljax.metrics.task_losses` through
:func:`mtljax.nnx_bridge.model_loss`, so the aux's ``"present"`` mask reaches the step), the
method (a role-aware one given the tasks' roles, :func:`role_kwargs`), the optimizer, the
initial train state, the train iterator and the evaluation (:func:`mtljax.metrics.make_evaluator`,
compiled once). :func:`check` validates the names and hyper-parameters first, before any data
is loaded or any file is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtljax.config import (
    ConfigError,
    DataConfig,
    MethodConfig,
    OptimizerConfig,
    RunConfig,
    coerce,
)
from mtljax.data.loader import BatchIterator
from mtljax.data.multi_input import MultiInputDataset, MultiInputIterator
from mtljax.data.registry import dataset_entry, load_dataset
from mtljax.methods import REGISTRY, Method, get_factory, get_method
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
      tasks: the trained tasks (``config.data.tasks`` of the dataset's), with the roles of
        ``config.data.primary`` and ``config.data.levels`` (:func:`apply_roles`).
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
    """The tasks named ``names`` (all when ``None``), in the given order.

    Raises:
      ConfigError: a name that is not one of ``all_tasks``.
    """
    if names is None:
        return all_tasks
    unknown = [n for n in names if n not in all_tasks.names]
    if unknown:
        raise ConfigError(
            f"data.tasks: unknown task(s) {unknown}; the dataset's tasks are "
            f"{list(all_tasks.names)}."
        )
    return Tasks([all_tasks[all_tasks.index(n)] for n in names])


def apply_roles(tasks: Tasks, config: DataConfig) -> Tasks:
    """``tasks`` with the roles of ``config``: ``data.primary`` (those tasks level 0, the others
    level 1), then ``data.levels`` (``{task: level}``, which wins); unchanged when neither is
    set.

    Raises:
      ConfigError: a name that is not one of ``tasks`` (e.g. a primary task left out of
        ``data.tasks``), an empty ``data.primary``, or no task left at level 0.
    """
    where = "the selected tasks (data.tasks)" if config.tasks is not None else "the tasks"
    for field, names in (("data.primary", config.primary or ()), ("data.levels", config.levels)):
        unknown = [n for n in names if n not in tasks.names]
        if unknown:
            raise ConfigError(
                f"{field}: unknown task(s) {unknown}; {where} are {list(tasks.names)}."
            )
    try:
        return tasks.with_roles(config.primary, config.levels)
    except ValueError as error:
        raise ConfigError(f"data.primary / data.levels: {error}") from None


# The task roles a role-aware method factory may take, by parameter name.
_ROLE_PARAMETERS: dict[str, Callable[[Tasks], tuple[int, ...]]] = {
    "primary": lambda tasks: tasks.primary,
    "levels": lambda tasks: tasks.levels,
}


def role_kwargs(config: MethodConfig, tasks: Tasks) -> dict[str, tuple[int, ...]]:
    """The task roles to pass to the method's factory: ``primary=tasks.primary`` (indices of
    the level-0 tasks) and ``levels=tasks.levels`` (one level per task), each only when the
    factory's signature names that parameter and neither ``method.kw`` nor the registry name
    sets it."""
    parameters = inspect.signature(get_factory(config.name)).parameters
    given = {*config.kw, *REGISTRY[config.name].presets}
    return {
        name: roles(tasks)
        for name, roles in _ROLE_PARAMETERS.items()
        if name in parameters and name not in given
    }


def check(config: RunConfig) -> None:
    """Checks the dataset, method and optimizer of ``config`` without loading or building them.

    Raises:
      ConfigError: an unknown dataset, method or optimizer name (listing the known ones), a
        hyper-parameter the method does not take or of the wrong type (:func:`check_method`),
        an unknown optimizer argument, roles naming a task outside ``data.tasks`` when it is
        set (:func:`apply_roles`).
    """
    try:
        dataset_entry(config.data.name)
    except ValueError as error:
        raise ConfigError(f"data.name: {error}") from None
    roles = config.data.primary is not None or config.data.levels
    if roles and config.data.tasks is not None:
        apply_roles(Tasks(config.data.tasks), config.data)
    check_method(config.method)
    build_optimizer(config.optimizer)


# The annotations a hyper-parameter's value is checked against (one of them, or one | None).
_SIMPLE_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}


def check_method(config: MethodConfig) -> None:
    """Checks ``method.kw`` against the signature of the method's factory.

    Every key must be a keyword-only parameter of the factory that the registry name does not
    preset (any key, when the factory takes ``**kwargs``). A value is checked against the
    parameter's annotation, by :func:`mtljax.config.coerce`, when the annotation is a plain
    ``int``, ``float``, ``bool``, ``str`` or ``dict`` (or one of them ``| None``): so
    ``method.kw.c=abc`` fails here, naming the field, not inside the factory.

    Raises:
      ConfigError: an unknown method name, a key the method does not take (naming the ones it
        does), or a value of the wrong type.
    """
    try:
        factory = get_factory(config.name)
    except ValueError as error:
        raise ConfigError(f"method.name: {error}") from None
    presets = REGISTRY[config.name].presets
    parameters = inspect.signature(factory).parameters
    takes = [
        p.name for p in parameters.values() if p.kind is p.KEYWORD_ONLY and p.name not in presets
    ]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for key, value in config.kw.items():
        field = f"method.kw.{key}"
        if key in presets:
            raise ConfigError(
                f"{field}: method {config.name!r} fixes {key}={presets[key]!r}; set "
                "method.name to another registry name to change it (mtljax methods)."
            )
        if key not in takes:
            if open_ended:
                continue
            raise ConfigError(
                f"{field}: method {config.name!r} has no hyper-parameter {key!r}; its "
                f"hyper-parameters: {', '.join(takes) or 'none'}."
            )
        hint = _simple_hint(parameters[key].annotation)
        if hint is not None:
            coerce(field, hint, value)


def _simple_hint(annotation):
    """The type ``annotation`` names when it is built of :data:`_SIMPLE_TYPES` and ``None``
    (``"float | None"`` -> ``float | None``); ``None`` for any other annotation."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = [part.strip() for part in text.split("|")]
    simple = {**_SIMPLE_TYPES, "None": type(None)}
    if not text or not all(part in simple for part in parts):
        return None
    return functools.reduce(operator.or_, (simple[part] for part in parts))


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
      ConfigError: an unknown optimizer, or an argument its optax function does not take
        (``learning_rate`` is ``optimizer.lr``).
    """
    if config.name not in OPTIMIZERS:
        raise ConfigError(
            f"optimizer.name: unknown optimizer {config.name!r}; known: {', '.join(OPTIMIZERS)}."
        )
    factory = OPTIMIZERS[config.name]
    takes = [name for name in inspect.signature(factory).parameters if name != "learning_rate"]
    unknown = [key for key in config.kw if key not in takes]
    if unknown:
        raise ConfigError(
            f"optimizer.kw.{unknown[0]}: optax.{config.name} has no argument {unknown[0]!r}; "
            f"its arguments: {', '.join(takes)}."
        )
    return factory(config.lr, **config.kw)


def build_experiment(config: RunConfig, data) -> Experiment:
    """The :class:`Experiment` of ``config`` on the loaded dataset ``data``.

    A :class:`~mtljax.data.MultiInputDataset` (every task with its own inputs, e.g. Office-31)
    trains on one batch of every task per step (:func:`mtljax.models.multi_input_loss`, the
    parameter level only) and is evaluated task by task on each task's own inputs.
    """
    tasks = apply_roles(select_tasks(data.tasks, config.data.tasks), config.data)
    model = build_model(config, data.input_shape, tasks)
    graphdef, params, rest = split_params(model)
    check_method(config.method)
    roles = role_kwargs(config.method, tasks)
    if roles and len(tasks) > 1 and len(tasks.primary) == len(tasks):
        warnings.warn(
            f"method {config.method.name!r} treats primary and auxiliary tasks differently, "
            f"but every task is primary ({', '.join(f'{k}={v}' for k, v in roles.items())}); "
            "declare the auxiliary tasks with data.primary or data.levels.",
            stacklevel=2,
        )
    try:
        method = get_method(config.method.name, len(tasks), **roles, **config.method.kw)
    except ValueError as error:  # the factory's own checks of its hyper-parameters
        raise ConfigError(f"method {config.method.name!r}: {error}") from None
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
