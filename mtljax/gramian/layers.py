"""A dense layer's contribution to ``G = J Jᵀ`` from its activations and output cotangents.

For ``y = A W`` with ``A`` flattened to ``[N, K]`` (N: the activation's free positions, e.g. the
batch) and the cotangents ``δ_t`` to ``[N, M]``, task t's weight gradient is ``Aᵀ δ_t``, so

    ⟨Aᵀδ_s, Aᵀδ_t⟩ = Σ_{n,n'} (A Aᵀ)_{n n'} ⟨δ_{s,n}, δ_{t,n'}⟩.

Two ways to compute it, picked per layer by their multiply-adds (shapes are static):

* *ghost* — ``C = A Aᵀ`` (N²K), then ``C δ_t`` for every task (T N² M) and the inner products
  (T² N M): no ``[K, M]`` product is formed;
* *exact* — the T weight gradients ``Aᵀ δ_t`` (T N K M), then their Gram (T² K M).

For instance-wise rows (one row per sample and task, :func:`instance_gram`), row ``(t, i)``'s
gradient is ``Σ_l a_{il} δ_{t,il}ᵀ`` over the sample's positions l, and

    G_{(s,i),(t,j)} = Σ_{l,l'} ⟨a_{il}, a_{jl'}⟩ ⟨δ_{s,il}, δ_{t,jl'}⟩,

the per-sample "ghost norm" identity (Goodfellow, "Efficient per-example gradient computations",
2015; Li et al., "Large language models can be strong differentially private learners", 2022).

Under data parallelism (:func:`dense_gram` with ``axis_name``) the layer's global gradient is
``Σ_d A_dᵀ δ_{t,d}`` over devices d, so ``G`` has cross-device terms ``⟨A_dᵀδ_{s,d},
A_{d'}ᵀδ_{t,d'}⟩``: the ghost form gathers ``A`` and ``δ`` over the batch (B(K + T M) values per
layer) and each device sums its own rows against all; the exact form sums the T weight gradients
over devices (T K M values). Either returns this device's *partial* ``[T, T]`` block, whose
sum over devices is the layer's global contribution (the engine's dummy input sums it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.gramian.taps import DenseTap
from mtljax.step import collectives

HIGHEST = lax.Precision.HIGHEST


def _matrices(tap: DenseTap, act: jax.Array, delta: jax.Array, dtype):
    """``A`` as ``[N, K]`` and ``δ`` as ``[T, N, M]`` in the Gram dtype."""
    a = jnp.transpose(act, tap.act_free + tap.act_contract)
    n = math.prod(a.shape[:len(tap.act_free)])
    a = a.reshape(n, -1).astype(dtype)
    d = jnp.transpose(delta, (0, *(1 + k for k in tap.out_perm)))
    return a, d.reshape(delta.shape[0], n, -1).astype(dtype)


# The exact form must save this share of the ghost form's multiply-adds to be taken: it holds
# the T weight gradients ([T, K, M]) at once, the chunked ghost form a fraction of δ.
EXACT_MARGIN = 0.8


def ghost_is_cheaper(num_rows: int, n: int, k: int, m: int) -> bool:
    """Whether the ghost form is taken: the exact one does not save a fifth of its
    multiply-adds (:data:`EXACT_MARGIN`)."""
    ghost = n * n * k + num_rows * n * n * m + num_rows * num_rows * n * m
    exact = num_rows * n * k * m + num_rows * num_rows * k * m
    return exact >= EXACT_MARGIN * ghost


def _gram(x, y) -> jax.Array:
    """``[T, T]``: inner products of the rows of ``x`` and ``y`` (any trailing shape)."""
    return lax.dot_general(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1),
                           (((1,), (1,)), ((), ())), precision=HIGHEST)


def dense_gram(tap: DenseTap, act, delta, dtype, *, axis_name: str | None = None,
               task_axis: str | None = None) -> jax.Array:
    """The layer's Gram contribution.

    Returns:
      ``[T, T]``, this device's partial over the data axis ``axis_name``; or, with the tasks
      sharded over ``task_axis`` (``delta`` holds this device's k task rows), the block
      ``[k, N·k]`` of this device's rows against every device's.
    """
    a, d = _matrices(tap, act, delta, dtype)
    t, n, m = d.shape
    nodes = 1 if axis_name is None else lax.axis_size(axis_name)
    columns = t if task_axis is None else t * lax.axis_size(task_axis)
    a_all, d_all = a, d
    if task_axis is not None:
        d_all = collectives.gather_task_rows(d, task_axis)
    if not ghost_is_cheaper(columns, n * nodes, a.shape[1], m):
        grads = jnp.einsum("nk,tnm->tkm", a, d, precision=HIGHEST)
        if task_axis is None:
            return rows_gram(grads, dtype, axis_name=axis_name)
        return _gram(grads, jnp.einsum("nk,tnm->tkm", a, d_all, precision=HIGHEST))
    if axis_name is not None:
        a_all = collectives.gather_batch(a[None], axis_name)[0]
        d_all = collectives.gather_batch(d, axis_name)
    return _ghost(a, a_all, d, d_all)


GHOST_CHUNKS = 8


def _ghost(a, a_all, d, d_all) -> jax.Array:
    """``G_st = Σ_{n,N} (a a_allᵀ)_{nN} ⟨d_{s,n}, d_all_{t,N}⟩`` over this side's rows n, in up
    to :data:`GHOST_CHUNKS` sequential chunks of rows: each chunk's ``[c, T, M]`` product with
    the kernel is small, so the layer's block adds little to the backward pass's memory."""
    n = d.shape[1]
    chunks = max(k for k in range(1, GHOST_CHUNKS + 1) if n % k == 0)
    size = n // chunks

    def chunk(i):
        rows = lax.dynamic_slice_in_dim(a, i * size, size, axis=0)
        mine = lax.dynamic_slice_in_dim(d, i * size, size, axis=1)
        kernel = jnp.dot(rows, a_all.T, precision=HIGHEST)  # [c, N]
        # mixed[n, t] = Σ_N K_nN δ_{t,N}, sample-major; then Σ_n δ_{s,n} · mixed[n, t].
        mixed = lax.dot_general(kernel, d_all, (((1,), (1,)), ((), ())), precision=HIGHEST)
        per = lax.dot_general(mine, mixed, (((2,), (2,)), ((1,), (0,))), precision=HIGHEST)
        return jnp.sum(per, axis=0)

    if chunks == 1:
        return chunk(0)
    return jnp.sum(lax.map(chunk, jnp.arange(chunks)), axis=0)


def instance_gram(tap: DenseTap, act, delta, batch: int, dtype) -> jax.Array:
    """``[T·B, T·B]`` Gram of the per-sample, per-task rows (task-major), ghost form.

    ``A``'s first free axis must be the batch axis (size ``batch``).

    Raises:
      ValueError: it is not.
    """
    if not tap.act_free or tap.act_free[0] != 0 or act.shape[0] != batch:
        raise ValueError(
            f"Instance-wise rows need the batch as the first axis of a dense layer's input; "
            f"a layer's input has shape {act.shape} (batch {batch})."
        )
    a, d = _matrices(tap, act, delta, dtype)
    t, n, m = d.shape
    positions = n // batch
    a = a.reshape(batch, positions, -1)
    d = d.reshape(t, batch, positions, m)
    kernel = jnp.einsum("ilk,jnk->iljn", a, a, precision=HIGHEST)
    if positions == 1:
        cross = jnp.einsum("sim,tjm->sitj", d[:, :, 0], d[:, :, 0], precision=HIGHEST)
        gram = cross * kernel[:, 0, :, 0][None, :, None, :]
    else:
        gram = jnp.einsum("iljn,silm,tjnm->sitj", kernel, d, d, precision=HIGHEST)
    return gram.reshape(t * batch, t * batch)


def rows_gram(rows, dtype, *, axis_name: str | None = None,
              task_axis: str | None = None) -> jax.Array:
    """``[R, R]`` Gram of per-row gradients ``[R, *p]``; over ``axis_name``, where each device
    holds a share of every row, this device's partial ``rows_d · (Σ_d' rows_d')ᵀ``; over
    ``task_axis``, where each device holds its own k rows, the block ``[k, N·k]``."""
    rows = rows.astype(dtype)
    if task_axis is not None:
        return _gram(rows, collectives.gather_task_rows(rows, task_axis))
    return _gram(rows, rows if axis_name is None else lax.psum(rows, axis_name))
