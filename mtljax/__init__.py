"""mtljax: multi-task learning in JAX — per-task Jacobians, MTL methods, data parallel training.

The public API is re-exported here flat; see the README for a tour.
"""

from mtljax import methods
from mtljax._version import __version__
from mtljax.aggregate import aggregate
from mtljax.diagnostics import gram_diagnostics
from mtljax.jacobian import per_task_gradients
from mtljax.linalg import combine, cosine_matrix, gram
from mtljax.methods import (
    Method,
    MethodOutput,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from mtljax.tasks import Metric, Task, Tasks
from mtljax.train import MultiTaskLoss, TrainState, init_train_state, make_train_step

__all__ = [
    "Method",
    "MethodOutput",
    "Metric",
    "MultiTaskLoss",
    "Task",
    "Tasks",
    "TrainState",
    "__version__",
    "aggregate",
    "combine",
    "cosine_matrix",
    "get_method",
    "gram",
    "gram_diagnostics",
    "init_train_state",
    "make_train_step",
    "method_names",
    "methods",
    "per_task_gradients",
    "register_method",
    "unregister_method",
]
