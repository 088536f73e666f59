"""A token-sequence trunk: embeddings, one Transformer block, masked mean pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class SequenceEncoder(nnx.Module):
    """Integer tokens ``[B, L]`` → a representation ``[B, D]``.

    ``h = E[x] + P[:L]`` (learned token and position embeddings), one pre-norm Transformer
    block ``h ← h + MHA(LN(h))``, ``h ← h + W₂ relu(W₁ LN(h))`` whose attention ignores padding
    tokens, then a final LN and the mean of ``h`` over the non-padding positions. A sequence of
    padding only gives zeros.

    Args:
      vocab_size: the number of token ids (``0 .. vocab_size − 1``).
      features: the model width ``D`` (the output width).
      num_heads: attention heads (must divide ``features``).
      max_length: the longest sequence accepted.
      pad_id: the padding token id, or ``None`` when no token is padding.
      rngs: the parameter initialisation keys.

    Attributes:
      out_features: the width of the output representation.

    Example:
      >>> enc = SequenceEncoder(50, features=16, rngs=nnx.Rngs(0))
      >>> enc(jnp.array([[3, 4, 5, 0], [7, 0, 0, 0]])).shape
      (2, 16)

    References:
      Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        features: int = 32,
        num_heads: int = 2,
        max_length: int = 128,
        pad_id: int | None = 0,
        rngs: nnx.Rngs,
    ):
        sizes = (int(vocab_size), int(features), int(num_heads), int(max_length))
        if min(sizes) < 1 or int(features) % int(num_heads):
            raise ValueError(
                f"SequenceEncoder needs positive sizes and num_heads dividing features, got "
                f"vocab_size={vocab_size}, features={features}, num_heads={num_heads}, "
                f"max_length={max_length}."
            )
        self.out_features = int(features)
        self.max_length = int(max_length)
        self.pad_id = pad_id
        self.embed = nnx.Embed(int(vocab_size), self.out_features, rngs=rngs)
        self.position = nnx.Embed(self.max_length, self.out_features, rngs=rngs)
        self.attention_norm = nnx.LayerNorm(self.out_features, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            int(num_heads), self.out_features, decode=False, keep_rngs=False, rngs=rngs
        )
        self.mlp_norm = nnx.LayerNorm(self.out_features, rngs=rngs)
        self.mlp_in = nnx.Linear(self.out_features, 4 * self.out_features, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * self.out_features, self.out_features, rngs=rngs)
        self.final_norm = nnx.LayerNorm(self.out_features, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"SequenceEncoder expects integer tokens [B, L], got {tokens.shape}.")
        if tokens.shape[1] > self.max_length:
            raise ValueError(
                f"Sequences of length {tokens.shape[1]} exceed max_length={self.max_length}."
            )
        keep = (
            jnp.ones(tokens.shape, bool) if self.pad_id is None else tokens != self.pad_id
        )  # [B, L]
        h = self.embed(tokens) + self.position(jnp.arange(tokens.shape[1]))
        mask = nnx.make_attention_mask(keep, keep)  # [B, 1, L, L]
        h = h + self.attention(self.attention_norm(h), mask=mask, deterministic=True)
        h = h + self.mlp_out(jax.nn.relu(self.mlp_in(self.mlp_norm(h))))
        h = self.final_norm(h)
        weights = keep.astype(h.dtype)
        # A row of padding only has no query to average: its mean is defined as zero.
        return jnp.einsum("bl,bld->bd", weights, h) / jnp.maximum(weights.sum(1), 1.0)[:, None]
