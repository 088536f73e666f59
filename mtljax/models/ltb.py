"""Learning to branch (LTB): a tree of MLP blocks whose branching is searched by Gumbel-softmax."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtljax.models._heads import check_heads
from mtljax.models.mlp import flatten_input

Tree = tuple[tuple[int, ...], ...]


def branch_weights(
    logits: jax.Array, key: jax.Array, temperature: float, *, hard: bool = False
) -> jax.Array:
    """Gumbel-softmax weights over the parents, one row per child: ``[C, P] -> [C, P]``.

    ``d_c = softmax((θ_c + g_c) / τ)`` with ``g`` i.i.d. standard Gumbel noise drawn from
    ``key`` (``jax.random.gumbel(key, logits.shape)``). ``hard=True`` is the straight-through
    estimator: the forward value is the one-hot of ``argmax(θ_c + g_c)`` (a sampled parent) and
    the gradient is that of the soft ``d_c``.
    """
    noisy = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    soft = jax.nn.softmax(noisy / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(noisy, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return one_hot + soft - jax.lax.stop_gradient(soft)


def batch_key(key: jax.Array, x: jax.Array) -> jax.Array:
    """``key`` folded with a digest of the batch ``x [B, F]``.

    The runner's functional step threads no RNG state through the model, so the tree sampled in
    a training step is keyed by its batch: a new sample for every batch, the same sample each
    time one batch is seen (engines that run the forward pass once per task see one tree). The
    digest is ``Σ_i bits(x_i) · c_i mod 2³²`` over the float32 bit patterns with odd
    position-dependent ``c_i``: integer sums are exact, so the key does not depend on how a
    compiled program orders the reduction.
    """
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(x).astype(jnp.float32), jnp.uint32)
    position = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
    # Knuth's multiplicative constant spreads the positions; "| 1" keeps every weight odd.
    weights = position * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
    return jax.random.fold_in(key, jnp.sum(bits * weights, dtype=jnp.uint32))


class BranchLayer(nnx.Module):
    """``N`` ReLU blocks of one tree layer, stored stacked: ``kernel [N, D_in, D_out]``.

    Block ``i`` computes ``h_i = relu(W_i u_i + b_i)``. In the first layer every block reads the
    input; in the others ``u_i = Σ_j d_ij h_j`` mixes the previous layer's blocks with the
    weights ``d_i`` of the learnable branching logits ``logits [N, N_prev]`` (zero at
    initialisation: a uniform distribution over the parents).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nodes: int,
        parents: int | None,
        *,
        rngs: nnx.Rngs,
    ):
        # Per-block LeCun-normal kernels (nnx.Linear's default); axis 0 indexes the block.
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))
        self.kernel = nnx.Param(init(rngs.params(), (nodes, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((nodes, out_features), jnp.float32))
        self.logits = (
            None if parents is None else nnx.Param(jnp.zeros((nodes, parents), jnp.float32))
        )

    def __call__(self, u: jax.Array) -> jax.Array:
        """Every block's input ``[N, B, D_in]`` -> its output ``[N, B, D_out]``."""
        return jax.nn.relu(
            jnp.einsum("nbi,nio->nbo", u, self.kernel[...]) + self.bias[...][:, None]
        )


class TaskBranch(nnx.Module):
    """One task's node of the last layer: logits over the last hidden layer, and a linear head."""

    def __init__(self, in_features: int, dim: int, parents: int, *, rngs: nnx.Rngs):
        self.logits = nnx.Param(jnp.zeros((parents,), jnp.float32))
        self.out = nnx.Linear(in_features, dim, rngs=rngs)


class LTB(nnx.Module):
    """Learning to branch: a tree of ReLU blocks whose parent choices are learned.

    Layer ``l = 1..L`` (``L = len(hidden)``) holds ``N_l`` blocks of width ``hidden[l-1]``; the
    last layer holds one node per task, its linear head. Every block of layer 1 reads the
    flattened input. Each later child ``c`` (a block, or a task's head) reads one parent among
    the previous layer's blocks, chosen by its branching logits ``θ_c``:

    * search (``tree=None``, training): ``u_c = Σ_p d_cp h_p`` with the Gumbel-softmax weights
      ``d_c = softmax((θ_c + g_c)/τ)`` (:func:`branch_weights`; ``hard=True`` samples one
      parent, straight-through). One tree is sampled per forward pass, shared by the batch.
      The logits are parameters trained with the network by the multi-task method.
    * argmax tree (``tree=None``, ``deterministic=True``: :meth:`nnx.Module.eval`, which the
      runner's evaluation sets): each child reads ``argmax_p θ_cp``, the tree the search has
      found so far, with the supernet's weights.
    * fixed tree (``tree`` given, or after :meth:`fix`): each child reads its listed parent,
      in training and evaluation alike. Blocks off the tree still run (their outputs unread)
      and the logits are kept (with zero gradient): a fixed model has the searching model's
      parameters, so it loads the search's checkpoints. Building
      ``LTB(..., tree=model.derive())`` trains the found tree from scratch (a second stage).

    Shared parameters (``shared``): every block and the logits of layers ``2..L``; their
    children may be read by several tasks. Task-specific (``heads``): each task's logits over
    layer ``L`` and its head. There is no single shared representation: parameter level only.

    The temperature ``τ`` is constant per model: the runner's step gives the model no step
    count, so the paper's annealing is a schedule over calls with ``temperature=`` in a custom
    loop. In the runner the noise is keyed by the batch (:func:`batch_key`).
    Inputs are flattened: MLP blocks on any input shape.

    Args:
      in_features: the size of one flattened input.
      hidden: the width of each layer's blocks, ``L >= 1`` layers.
      head_dims: output width of each task's head, keyed by task name (order kept).
      branches: ``N_l``, the blocks per layer: one count for every layer, or one per layer;
        ``None``: one block per task in every layer (so the search space holds both separate
        networks and full sharing).
      temperature: the Gumbel-softmax temperature ``τ > 0``.
      hard: straight-through one-hot samples instead of soft mixtures while searching.
      tree: a fixed tree, one row per layer ``2..L`` and a last row for the task heads (in
        ``head_dims`` order); row entries are parent indices in the previous layer.
      rngs: the parameter initialisation keys, and the noise key (stream ``noise``, else
        ``default``).

    Example:
      >>> model = LTB(4, (8, 8), {"a": 3, "b": 1}, rngs=nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(jnp.ones((2, 4))).items()}
      {'a': (2, 3), 'b': (2, 1)}
      >>> model.derive()
      ((0, 0), (0, 0))

    References:
      Guo, Lee and Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020,
      arXiv:2006.01895.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        head_dims: Mapping[str, int],
        *,
        branches: int | Sequence[int] | None = None,
        temperature: float = 1.0,
        hard: bool = False,
        tree: Sequence[Sequence[int]] | None = None,
        rngs: nnx.Rngs,
    ):
        head_dims = check_heads(head_dims, "LTB")
        widths = [int(in_features), *map(int, hidden)]
        nodes = _layer_nodes(branches, len(widths) - 1, len(head_dims))
        if len(widths) < 2 or any(w < 1 for w in widths) or any(n < 1 for n in nodes):
            raise ValueError(f"LTB needs positive widths and block counts, got {widths}, {nodes}.")
        if not float(temperature) > 0:
            raise ValueError(f"LTB needs a temperature > 0, got {temperature}.")
        self.in_features, self.temperature, self.hard = widths[0], float(temperature), bool(hard)
        self.nodes = tuple(nodes)
        self.deterministic = False
        parents = [None, *nodes[:-1]]
        self.shared = nnx.List(
            [
                BranchLayer(a, b, n, p, rngs=rngs)
                for a, b, n, p in zip(widths[:-1], widths[1:], nodes, parents, strict=True)
            ]
        )
        self.heads = nnx.Dict(
            {
                name: TaskBranch(widths[-1], dim, nodes[-1], rngs=rngs)
                for name, dim in head_dims.items()
            }
        )
        self.noise_key = nnx.Variable(rngs.noise())
        self.tree = None if tree is None else self._checked(tree)

    def _checked(self, tree: Sequence[Sequence[int]]) -> Tree:
        """``tree`` as a tuple of tuples, after checking its shape and parent indices."""
        tree = tuple(tuple(int(p) for p in row) for row in tree)
        children = [*self.nodes[1:], len(self.heads)]
        if [len(row) for row in tree] != children:
            raise ValueError(f"An LTB tree needs rows of lengths {children}, got {tree}.")
        for row, parents in zip(tree, self.nodes, strict=True):
            if any(not 0 <= p < parents for p in row):
                raise ValueError(f"LTB tree row {row}: parents must lie in [0, {parents}).")
        return tree

    def _logits(self) -> list[jax.Array]:
        """Every child's branching logits, layer by layer: ``[N_l, N_{l-1}]``, then ``[T, N_L]``."""
        heads = jnp.stack([head.logits[...] for head in self.heads.values()])
        return [layer.logits[...] for layer in self.shared[1:]] + [heads]

    def derive(self) -> Tree:
        """The argmax tree: each child's most probable parent (the format of ``tree``)."""
        return tuple(tuple(int(p) for p in jnp.argmax(t, axis=-1)) for t in self._logits())

    def branch_probabilities(self) -> list[jax.Array]:
        """``softmax(θ_c)`` of every child, layer by layer (rows: children; last: the tasks)."""
        return [jax.nn.softmax(t, axis=-1) for t in self._logits()]

    def fix(self, tree: Sequence[Sequence[int]] | None = None) -> None:
        """Fixes the tree (by default :meth:`derive`'s), keeping the current weights."""
        self.tree = self._checked(self.derive() if tree is None else tree)

    def _mixings(self, x: jax.Array, key: jax.Array | None, temperature: float | None):
        """Per layer ``2..L`` and the heads: parent indices ``[C]`` or mixing weights ``[C, P]``."""
        if self.tree is not None:
            return [jnp.asarray(row) for row in self.tree]
        logits = self._logits()
        if self.deterministic:
            return [jnp.argmax(t, axis=-1) for t in logits]
        key = batch_key(self.noise_key[...], x) if key is None else key
        tau = self.temperature if temperature is None else temperature
        keys = jax.random.split(key, len(logits))
        return [
            branch_weights(t, k, tau, hard=self.hard) for t, k in zip(logits, keys, strict=True)
        ]

    def __call__(
        self, x: jax.Array, *, key: jax.Array | None = None, temperature: float | None = None
    ) -> dict[str, jax.Array]:
        """``{task: [B, dim]}``; ``key`` and ``temperature`` override the search's noise key
        (``jax.random.split(key, L)[l]`` for layer ``l + 2``, the last for the heads) and ``τ``."""
        x = flatten_input(x, self.in_features, "LTB")
        mixings = self._mixings(x, key, temperature)
        h = self.shared[0](jnp.broadcast_to(x, (self.nodes[0], *x.shape)))
        for layer, mix in zip(self.shared[1:], mixings, strict=False):
            h = layer(_read_parents(mix, h))
        reads = _read_parents(mixings[-1], h)
        return {name: head.out(reads[t]) for t, (name, head) in enumerate(self.heads.items())}


def _read_parents(mix: jax.Array, h: jax.Array) -> jax.Array:
    """The children's inputs ``[C, B, D]`` from the parents' outputs ``h [P, B, D]``: a gather of
    parent indices ``[C]``, or the mixture ``Σ_p mix[c, p] h_p`` of weights ``[C, P]``."""
    if mix.ndim == 1:
        return h[mix]
    return jnp.einsum("cp,pbd->cbd", mix, h)


def _layer_nodes(branches: int | Sequence[int] | None, layers: int, tasks: int) -> list[int]:
    """The block count of each of the ``layers`` layers (see :class:`LTB`'s ``branches``)."""
    if branches is None:
        return [tasks] * layers
    if not isinstance(branches, Sequence):
        return [int(branches)] * layers
    nodes = [int(n) for n in branches]
    if len(nodes) != layers:
        raise ValueError(f"LTB branches lists {len(nodes)} counts for {layers} layers.")
    return nodes
