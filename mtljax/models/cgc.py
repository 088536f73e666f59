"""Customized Gate Control (CGC): shared and task-specific experts, one gate per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtljax.models._heads import check_heads, linear_heads
from mtljax.models._mixture import mix, softmax_gate, stack_experts
from mtljax.models.mlp import MLP


class ExtractionLevel(nnx.Module):
    """One extraction level of CGC/PLE: shared experts, task experts, gates.

    With shared experts ``E_s`` reading the shared input ``x_s`` and task ``t``'s experts
    ``E_t`` reading its input ``x_t``, task ``t``'s output is
    ``x'_t = Σ g_t(x_t) ⊙ [E_t(x_t); E_s(x_s)]`` (softmax gate over its own and the shared
    experts) and, with ``shared_gate``, the shared output is
    ``x'_s = Σ g_s(x_s) ⊙ [E_1(x_1); ...; E_T(x_T); E_s(x_s)]`` (softmax gate over all experts).
    Experts are ReLU :class:`~mtljax.models.MLP` s (inputs flattened).

    The shared experts are under ``shared``; task experts under ``task_experts``, gates under
    ``gates`` and ``shared_gate``.

    Args:
      in_features: the size of one flattened input of this level.
      hidden: the experts' hidden widths (the last is the output width).
      tasks: the task names.
      num_shared, num_task_experts: experts shared by all tasks, and per task.
      shared_gate: whether to compute the shared output ``x'_s`` (every PLE level but the last).
      rngs: the parameter initialisation keys.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        tasks: Sequence[str],
        *,
        num_shared: int,
        num_task_experts: int,
        shared_gate: bool,
        rngs: nnx.Rngs,
    ):
        if int(num_shared) < 1 or int(num_task_experts) < 0 or not hidden:
            raise ValueError(
                "An extraction level needs num_shared >= 1, num_task_experts >= 0 and at least "
                f"one expert layer, got {num_shared}, {num_task_experts}, {tuple(hidden)}."
            )
        self.out_features = int(hidden[-1])

        def experts(count):
            return nnx.List([MLP(in_features, hidden, rngs=rngs) for _ in range(count)])

        self.shared = experts(num_shared)
        self.task_experts = nnx.Dict({name: experts(num_task_experts) for name in tasks})
        own = int(num_task_experts) + int(num_shared)
        self.gates = nnx.Dict({name: nnx.Linear(in_features, own, rngs=rngs) for name in tasks})
        total = len(tasks) * int(num_task_experts) + int(num_shared)
        self.shared_gate = nnx.Linear(in_features, total, rngs=rngs) if shared_gate else None

    def shared_outputs(self, shared_input: jax.Array) -> jax.Array:
        """The shared experts' outputs ``E_s(x_s)``: ``[B, E_s, D]``."""
        return stack_experts(self.shared, shared_input)

    def __call__(
        self, task_inputs: Mapping[str, jax.Array], shared_input: jax.Array, shared_out: jax.Array
    ) -> tuple[dict[str, jax.Array], jax.Array | None]:
        """``({t: x'_t}, x'_s or None)`` from the inputs and :meth:`shared_outputs`."""
        own = {
            name: stack_experts(experts, task_inputs[name])
            for name, experts in self.task_experts.items()
        }
        task_outputs = {
            name: mix(
                softmax_gate(gate, task_inputs[name]),
                jnp.concatenate([own[name], shared_out], axis=1),
            )
            for name, gate in self.gates.items()
        }
        if self.shared_gate is None:
            return task_outputs, None
        everything = jnp.concatenate([*own.values(), shared_out], axis=1)
        return task_outputs, mix(softmax_gate(self.shared_gate, shared_input), everything)


class CGC(nnx.Module):
    """Customized Gate Control: one :class:`ExtractionLevel` on the input, then linear heads.

    Task ``t`` predicts ``y_t = h_t(Σ g_t(x) ⊙ [E_t(x); E_s(x)])``: unlike MMoE, part of the
    experts belong to one task, so the tasks' gradients only meet in the shared experts.

    Shared parameters: the shared experts (``level.shared``). Task experts, gates and heads are
    task-specific: each feeds one task only.

    Representation level: supported. :meth:`encode` gives the shared experts' outputs
    ``[B, E_s, D]``; :meth:`decode` runs the task experts and gates (on the input ``x``) and the
    heads.

    Args:
      in_features: the size of one flattened input.
      hidden: the experts' hidden widths.
      head_dims: output width of each task's head, keyed by task name (order kept).
      num_shared, num_task_experts: shared experts, and experts per task.
      rngs: the parameter initialisation keys.

    Example:
      >>> model = CGC(4, (8,), {"a": 3, "b": 1}, rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(jnp.ones((2, 4))).items()}
      {'a': (2, 3), 'b': (2, 1)}

    References:
      Tang, Liu, Zhao and Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task
      Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
    """

    decode_reads_input = True

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        head_dims: Mapping[str, int],
        *,
        num_shared: int = 2,
        num_task_experts: int = 1,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "CGC")
        self.level = ExtractionLevel(
            in_features,
            hidden,
            list(head_dims),
            num_shared=num_shared,
            num_task_experts=num_task_experts,
            shared_gate=False,
            rngs=rngs,
        )
        self.heads = linear_heads(self.level.out_features, head_dims, rngs)

    def encode(self, x: jax.Array) -> jax.Array:
        """The shared experts' outputs ``[B, E_s, D]`` (the shared representation)."""
        return self.level.shared_outputs(x)

    def decode(self, rep: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
        """Every task's output from the shared experts' outputs ``rep`` and the input ``x``."""
        features, _ = self.level({name: x for name in self.heads.keys()}, x, rep)
        return {name: head(features[name]) for name, head in self.heads.items()}

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        return self.decode(self.encode(x), x)
