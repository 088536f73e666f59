"""A tap point's contribution to ``G``, formed inside the batched backward pass.

At each tap point the forward value goes through ``through(y, acts, g)``: the identity in
``y``, with a custom VJP whose backward hands ``δ`` on unchanged (zero cotangent to ``acts``)
and returns, as the cotangent of the dummy input ``g``, the point's Gram contribution. The
engine pulls the T cotangent rows back in one ``vmap``; under it the contribution function
(``jax.custom_batching.custom_vmap``) sees all T cotangents at once and forms the ``[T, T]``
block from ``δ`` and ``A`` right where the backward pass produces ``δ``. Each layer's ``δ`` is
then freed once the layer below has its own: the program holds a few layers' ``δ`` at a time,
never the whole ``[T, B, Σ widths]``, and never a tapped weight's per-task gradient.

Outside that ``vmap`` (the single backward pass of ``Σ_t w_t L_t``) the dummy's cotangent is
zero and unused, so it is dead code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.gramian import layers
from mtljax.gramian.taps import BiasTap, DenseTap, TapPlan, bias_rows


@dataclasses.dataclass(frozen=True)
class PointSpec:
    """What one point contributes, and how.

    Attributes:
      plan: the traced taps.
      dense, bias: the taps reading ``δ`` at this point.
      dtype: the Gram dtype.
      batch: ``None`` for one row per task; the batch size B for instance-wise rows.
      axis_name: the data axis whose devices share the batch (global mode), or ``None``.
      scale: the factor taking ``δ`` to this device's share of the global cotangent.
      task_axis: the axis the task rows are sharded over (each device pulls back k rows and
        gives the block of its rows against all N·k), or ``None``.
    """

    plan: TapPlan
    dense: tuple[DenseTap, ...]
    bias: tuple[BiasTap, ...]
    dtype: jnp.dtype
    batch: int | None = None
    axis_name: str | None = None
    scale: float = 1.0
    task_axis: str | None = None

    def dummy(self, columns: int) -> jax.Array:
        """The dummy input ``g``: one row of the contribution (``columns`` task columns)."""
        shape = (columns,) if self.batch is None else (self.batch, columns * self.batch)
        return jnp.zeros(shape, self.dtype)

    def contribution(self, delta: jax.Array, acts) -> jax.Array:
        """``[T, T]`` (or ``[T, B, T·B]``) from the batched ``δ`` ``[T, *point]``."""
        delta = delta * self.scale if self.scale != 1.0 else delta
        if self.batch is not None:
            return self._instance(delta, acts)
        axes = dict(axis_name=self.axis_name, task_axis=self.task_axis)
        parts = [layers.dense_gram(tap, act, delta, self.dtype, **axes)
                 for tap, act in zip(self.dense, acts, strict=True)]
        parts += [layers.rows_gram(bias_rows(self.plan, tap, delta), self.dtype, **axes)
                  for tap in self.bias]
        return sum(parts[1:], parts[0])

    def _instance(self, delta, acts) -> jax.Array:
        t, b = delta.shape[0], self.batch
        parts = [layers.instance_gram(tap, act, delta, b, self.dtype)
                 for tap, act in zip(self.dense, acts, strict=True)]
        for tap in self.bias:
            per_sample = jax.vmap(lambda d, tap=tap: bias_rows(self.plan, tap, d[:, None]),
                                  in_axes=1, out_axes=1)(delta)  # [T, B, *leaf]
            parts.append(layers.rows_gram(per_sample.reshape(t * b, -1), self.dtype))
        return sum(parts[1:], parts[0]).reshape(t, b, t * b)


def through(spec: PointSpec, num_rows: int, columns: int):
    """``(y, acts, g) -> y`` whose VJP gives ``g`` the point's contribution (see above), for
    ``num_rows`` cotangent rows pulled back together (``columns`` task columns)."""

    @jax.custom_batching.custom_vmap
    def contribution(delta, *acts):
        del acts  # one cotangent row alone has no Gram block: outside the batched pass, 0
        zeros = spec.dummy(columns)
        return jnp.zeros_like(delta, dtype=zeros.dtype, shape=zeros.shape)

    @contribution.def_vmap
    def _batched(axis_size, in_batched, delta, *acts):
        if not in_batched[0] or any(in_batched[1:]) or axis_size != num_rows:
            raise ValueError("The Gramian engine's probe must see the T cotangent rows batched "
                             "together (one vmap over the task axis).")
        return spec.contribution(delta, acts), True

    @jax.custom_vjp
    def identity(y, acts, g):
        del acts, g
        return y

    def forward(y, acts, g):
        return y, (acts, g)

    def backward(residuals, dy):
        acts, g = residuals
        zero_acts = jax.tree.map(jnp.zeros_like, acts)
        block = contribution(dy, *acts).astype(spec.dtype)
        return dy, zero_acts, varying_like(block, jax.typeof(g), have=jax.typeof(block))

    identity.defvjp(forward, backward)
    return identity


def varying_like(x: jax.Array, aval, have=None) -> jax.Array:
    """``x`` cast device-varying over the axes ``aval`` varies over (under ``shard_map``),
    except those of ``have`` (``x``'s own type, when it varies already)."""
    vma = set(getattr(aval, "vma", ()) or ())
    vma -= set(getattr(have, "vma", ()) or ()) if have is not None else set()
    return lax.pcast(x, tuple(sorted(vma)), to="varying") if vma else x
