"""The train step's options, validated once into frozen values.

:class:`StepOptions` holds everything :func:`mtljax.make_train_step` was told, resolved against
the method: the level, the Jacobian layout, the non-finite policy, diagnostics and the
parallelism. Parallelism is itself a value:

* :class:`SingleDevice` — no collective;
* :class:`DataParallel` ``(axis_name, reduce, aggregate)`` — the batch is split over a mesh
  axis; ``reduce="loss"`` under ``jax.shard_map`` (the step differentiates the ``pmean`` of the
  losses) or ``"grad"`` under ``jax.pmap`` (it ``pmean``-s the per-task gradients);
  ``aggregate="global"`` runs the method on the global Jacobian (exact), ``"local"`` on each
  device's own and averages the updates;
* :class:`TaskSharded` ``(axis_name)`` — every device holds the whole batch and the backward
  passes of ⌈T/N⌉ tasks.

:mod:`mtljax.parallel` reads what it needs (``check_vma``) from these values.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtljax.jacobian import resolve_strategy
from mtljax.methods import Method
from mtljax.tasks import Tasks

NONFINITE_ALIASES = {"raise": "skip_step", "skip": "skip_step", "zero": "drop_task"}
# Every accepted value of ``nonfinite``: the two policies, then the older spellings, which are
# aliases ("raise" is the runner's: the step skips, and the runner raises on the host).
NONFINITE_POLICIES = ("skip_step", "drop_task", *NONFINITE_ALIASES)
LEVELS = ("parameters", "representation")
ENGINE_CHOICES = ("auto", "jacobian", "gramian")
REDUCTIONS = ("loss", "grad")
AGGREGATIONS = ("global", "local")


def nonfinite_policy(name: str) -> str:
    """The policy ``"skip_step"`` or ``"drop_task"`` that ``name`` (or its alias) stands for."""
    if name not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {name!r}.")
    return NONFINITE_ALIASES.get(name, name)


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """The collectives a per-device step runs; the base value has none."""

    @property
    def data_axis(self) -> str | None:
        """The data-parallel mesh axis, or ``None``."""
        return None

    @property
    def task_axis(self) -> str | None:
        """The task-sharding mesh axis, or ``None``."""
        return None

    @property
    def local(self) -> bool:
        """Whether the method runs on each device's own Jacobian (``aggregate="local"``)."""
        return False

    @property
    def pmean_losses(self) -> bool:
        """Whether the differentiated losses are the ``pmean`` over the data axis."""
        return False

    @property
    def pmean_grads(self) -> bool:
        """Whether per-task gradients are ``pmean``-ed after the backward passes."""
        return False

    @property
    def vary_axis(self) -> str | None:
        """The axis to ``pcast`` parameters over before differentiating per device.

        Differentiating at device-varying parameters keeps the transpose of ``shard_map``'s
        implicit replicated→varying cast (a ``psum``) out of per-device gradients.
        """
        return None

    @property
    def check_vma(self) -> bool:
        """The ``check_vma`` flag of the ``jax.shard_map`` that runs the step."""
        return True


@dataclasses.dataclass(frozen=True)
class SingleDevice(Parallelism):
    """No parallelism."""


@dataclasses.dataclass(frozen=True)
class DataParallel(Parallelism):
    """The batch split over ``axis_name``; see the module docstring."""

    axis_name: str
    reduce: str = "loss"
    aggregate: str = "global"

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {self.reduce!r}.")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}.")

    @property
    def data_axis(self) -> str:
        return self.axis_name

    @property
    def local(self) -> bool:
        return self.aggregate == "local"

    @property
    def pmean_losses(self) -> bool:
        return self.reduce == "loss" and not self.local

    @property
    def pmean_grads(self) -> bool:
        return self.reduce == "grad" and not self.local

    @property
    def vary_axis(self) -> str | None:
        return self.axis_name if self.local else None

    @property
    def check_vma(self) -> bool:
        # The local mode runs methods (with their solver loops) on device-varying Jacobians:
        # it needs shard_map's untyped (pmap-like) semantics.
        return not self.local


@dataclasses.dataclass(frozen=True)
class TaskSharded(Parallelism):
    """The tasks' backward passes spread over ``axis_name``; the batch is replicated."""

    axis_name: str

    @property
    def task_axis(self) -> str:
        return self.axis_name

    @property
    def vary_axis(self) -> str:
        return self.axis_name


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """Validated options of a train step (build with :func:`step_options`).

    Attributes:
      level: ``"parameters"`` or ``"representation"``.
      parallel: a :class:`Parallelism` value.
      nonfinite: ``"skip_step"`` or ``"drop_task"``.
      diagnostics: whether the step computes the Gram-based conflict metrics.
      diagnostics_every: they are computed on the first step and every k-th
        (``state.step == 0`` or ``(state.step + 1) % k == 0``; the others report NaN and
        ``metrics["diagnosed"] = False``). Only loss-only methods skip
        work on the other steps (their update needs no Gram matrix); for the others ``G`` exists
        anyway and k is 1.
      weight_heads: whether head parameters get the method's weights (else weight 1).
      strategy, chunk_size: how the T backward passes run (:mod:`mtljax.jacobian`).
      task_last: whether the Jacobian of the shared parameters is stacked task-last (the fast
        Gram layout of XLA:CPU, for Gram-space methods on the unrolled strategy).
      compute_dtype: dtype of the forward and backward passes, or ``None``.
      engine: ``"auto"``, ``"jacobian"`` or ``"gramian"`` (:func:`mtljax.step.select_engine`).
      instance_wise: whether each task's loss is a per-sample ``[B]`` vector, one row per
        (task, sample) pair (the Gramian engine).
    """

    level: str
    parallel: Parallelism
    nonfinite: str
    diagnostics: bool
    diagnostics_every: int
    weight_heads: bool
    strategy: str
    chunk_size: int | None
    task_last: bool
    compute_dtype: jnp.dtype | None
    engine: str = "auto"
    instance_wise: bool = False

    def __post_init__(self):
        for name, value, allowed in [("level", self.level, LEVELS),
                                     ("engine", self.engine, ENGINE_CHOICES),
                                     ("nonfinite", self.nonfinite, ("skip_step", "drop_task"))]:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def step_options(
    method: Method,
    tasks: Tasks,
    *,
    level: str | None = None,
    strategy: str = "auto",
    chunk_size: int | None = None,
    weight_heads: bool | None = None,
    nonfinite: str = "skip_step",
    diagnostics: bool = True,
    diagnostics_every: int | None = None,
    axis_name: str | None = None,
    reduce: str = "loss",
    aggregate: str = "global",
    task_axis: str | None = None,
    compute_dtype=None,
    engine: str = "auto",
    instance_wise: bool = False,
) -> StepOptions:
    """Validates the keywords of :func:`mtljax.make_train_step` against ``method``.

    Raises:
      ValueError: naming the option at fault.
    """
    level = level or method.level
    if level not in LEVELS:
        raise ValueError(f'level must be "parameters" or "representation", got {level!r}.')
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {ENGINE_CHOICES}, got {engine!r}.")
    if instance_wise:
        _check_instance_wise(method, tasks, engine, level, axis_name, task_axis)
    elif method.num_tasks != len(tasks):
        raise ValueError(f"Method {method.name!r} was built for {method.num_tasks} tasks, but "
                         f"there are {len(tasks)} tasks: {list(tasks.names)}.")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    if method.num_batches > 1 and level != "parameters":
        raise ValueError(f"Method {method.name!r} draws several batches: parameter level only.")
    parallel = _parallelism(method, level, axis_name, reduce, aggregate, task_axis)
    if compute_dtype is not None:
        compute_dtype = jnp.dtype(compute_dtype)
        if not jnp.issubdtype(compute_dtype, jnp.floating):
            raise ValueError(f"compute_dtype must be a floating dtype, got {compute_dtype}.")
    gram_space = method.gram_weights is not None and method.num_batches == 1
    unrolled = chunk_size is None and resolve_strategy(strategy) == "unroll"
    return StepOptions(
        level=level,
        parallel=parallel,
        nonfinite=nonfinite_policy(nonfinite),
        diagnostics=bool(diagnostics),
        diagnostics_every=_diagnostics_every(method, diagnostics_every),
        weight_heads=method.kind == "loss" if weight_heads is None else bool(weight_heads),
        strategy=strategy,
        chunk_size=chunk_size,
        task_last=gram_space and unrolled and level == "parameters",
        compute_dtype=compute_dtype,
        engine=engine,
        instance_wise=bool(instance_wise),
    )


# Loss-only methods compute diagnostics (a Gram matrix they do not otherwise need) this often.
LOSS_DIAGNOSTICS_EVERY = 10


def _diagnostics_every(method: Method, every: int | None) -> int:
    if method.kind != "loss":
        return 1
    if every is None:
        return LOSS_DIAGNOSTICS_EVERY
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"diagnostics_every must be a positive integer, got {every!r}.")
    return every


def _parallelism(method, level, axis_name, reduce, aggregate, task_axis) -> Parallelism:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}.")
    if task_axis is not None:
        _check_task_sharding(method, level, axis_name)
        return TaskSharded(task_axis)
    if axis_name is None:
        return SingleDevice()
    if aggregate == "local" and level != "parameters":
        raise ValueError('aggregate="local" runs at the parameter level only.')
    return DataParallel(axis_name, reduce, aggregate)


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


def _check_instance_wise(method: Method, tasks: Tasks, engine, level, axis_name, task_axis):
    """Raises unless instance-wise rows can run (Gramian engine, one device, T·B rows)."""
    if method.num_tasks % len(tasks):
        raise ValueError(
            f"Instance-wise rows: method {method.name!r} was built for {method.num_tasks} rows, "
            f"not a multiple of the {len(tasks)} tasks (build it for tasks × batch size)."
        )
    if engine == "jacobian" or level != "parameters" or axis_name or task_axis:
        raise ValueError(
            "instance_wise=True runs on the Gramian engine at the parameter level, on one "
            "device (no axis_name or task_axis)."
        )
    if method.kind == "gradient" and method.gram_weights is None:
        raise ValueError(f"Method {method.name!r} is not a loss-only or Gram-space method: it "
                         "cannot weight instance-wise rows from their Gram matrix.")
    if method.after_step is not None or method.num_batches != 1:
        raise ValueError(f"Method {method.name!r} needs an after-step hook or extra batches, "
                         "which instance-wise rows (new samples every step) do not support.")
