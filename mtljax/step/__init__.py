"""The multi-task train step: losses → per-task gradients → method → optax update.

A model is described by two pure functions over ``params = {"shared": ..., "heads": ...}``
(:class:`MultiTaskLoss`): ``encode(params, batch) -> rep`` (the shared trunk) and
``decode(params, rep, batch) -> (losses, aux)`` (task heads and losses).

:func:`make_train_step` validates its keywords once into :class:`StepOptions` and returns a
:class:`TrainStep`, a short pipeline of named stages (:mod:`mtljax.step.pipeline`): cast to
the compute dtype → engine → cross-device reduction → optimizer → after-step hook → apply or
skip → metrics. The engine (:mod:`mtljax.step.engines`) computes the update:

* at the *parameter* level it differentiates every task loss with respect to the shared
  parameters (the Jacobian, one forward and T backward passes) and hands it to the method;
* at the *representation* level it differentiates with respect to ``rep`` instead, lets the
  method combine those per-task gradients, and back-propagates the combination through
  ``encode`` once (MGDA-UB style);
* loss-only methods take a shortcut at either level: one backward pass of ``Σ_t w_t L_t``,
  unless diagnostics ask for the Jacobian.

Task-specific parameters receive ``Σ_t c_t ∇L_t`` with ``c = w`` (the method's weights) when
``weight_heads`` is true and ``c = 1`` otherwise. The default follows each method's paper:
weighted for loss-only methods (their objective is ``Σ w_t L_t``), unweighted for gradient
methods (each head descends its own loss, as in Sener & Koltun and torchjd).

Task presence and non-finite values (:mod:`mtljax.step.status`): a task absent from the batch
(``aux["present"]`` false) or, under ``nonfinite="drop_task"``, with a non-finite loss or
gradient is left out of the method through ``task_mask`` — its row does not exist for the
method — and its head is not updated.

Data parallelism (:class:`DataParallel`): the step is written per device. Under
``jax.shard_map`` (``reduce="loss"``) it differentiates the ``pmean`` of the losses, so
gradients of replicated parameters come out globally reduced; under ``jax.pmap``
(``reduce="grad"``) it differentiates the local losses and ``pmean``-s the per-task gradients.
Either way, with the default ``aggregate="global"``, the method sees the *global* per-task
gradients, so a step does not depend on the number of devices; that all-reduces the ``[T, P]``
Jacobian, ``T·P`` elements per step. ``aggregate="local"`` instead runs the method on each
device's own Jacobian and all-reduces the updates, ``P`` elements per step: a cheaper but
*different* method, ``d = (1/N) Σ_i m(J_i)``, whose result depends on the device count N (for
a non-linear method m, ``m(mean_i J_i) ≠ mean_i m(J_i)``). Its method state is the device mean
(float leaves).

Task sharding (:class:`TaskSharded`, under :func:`mtljax.parallel.task_sharded_step`): every
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

from mtljax.step.engines import ENGINES, EngineOutput, select_engine
from mtljax.step.options import (
    NONFINITE_ALIASES,
    NONFINITE_POLICIES,
    DataParallel,
    Parallelism,
    SingleDevice,
    StepOptions,
    TaskSharded,
    nonfinite_policy,
    step_options,
)
from mtljax.step.pipeline import TrainStep, make_train_step
from mtljax.step.state import MultiTaskLoss, TrainState, init_train_state
from mtljax.step.status import TaskStatus

__all__ = [
    "ENGINES",
    "NONFINITE_ALIASES",
    "NONFINITE_POLICIES",
    "DataParallel",
    "EngineOutput",
    "MultiTaskLoss",
    "Parallelism",
    "SingleDevice",
    "StepOptions",
    "TaskSharded",
    "TaskStatus",
    "TrainState",
    "TrainStep",
    "init_train_state",
    "make_train_step",
    "nonfinite_policy",
    "select_engine",
    "step_options",
]
