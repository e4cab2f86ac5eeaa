"""A small causal transformer (flax linen) with an explicit key/value cache.

`CausalTransformer` maps tokens `[N, L]` to next-token logits `[N, L, V]`: the
`apply_fn(params, tokens) -> logits` that `sampling.sample` and
`sampling.token_log_probs` take. Called with a cache it processes `S` new
tokens at absolute positions `offset .. offset + S - 1`, attending to what the
cache holds before them, and returns the updated cache: a prompt is prefilled
in one call (`S = P`), then each new token costs one call of `S = 1`, and no
position is recomputed. `decoder(model)` packs that into the
`sampling.Decoder` that `sample(..., decoder=...)` uses.

The cache is a plain pytree, a tuple per layer of `(keys, values)`, each
`[N, max_len, heads, head_dim]`, so it lives in a `lax.scan` carry under jit.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from reinforce_jax.sequence.sampling import Decoder

__all__ = [
    "CausalTransformer",
    "decoder",
]

LayerCache = tuple[jax.Array, jax.Array]  # keys, values: [N, max_len, heads, head_dim] each


class _Block(nn.Module):
  """Pre-norm attention and MLP, with an optional key/value cache."""

  d_model: int
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x, positions, cache: LayerCache | None):
    n, s, _ = x.shape
    head_dim = self.d_model // self.num_heads
    h = nn.LayerNorm(name="ln_attn")(x)
    qkv = nn.Dense(3 * self.d_model, name="qkv")(h).reshape(n, s, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cache is None:
      keys, values, key_pos = k, v, positions
    else:
      # The new keys go where their positions are; the rest of the cache is either
      # earlier tokens or not written yet (masked out below: position > query's).
      keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k, positions[0], axis=1)
      values = jax.lax.dynamic_update_slice_in_dim(cache[1], v, positions[0], axis=1)
      cache = (keys, values)
      key_pos = jnp.arange(keys.shape[1])
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, keys) / jnp.sqrt(head_dim).astype(q.dtype)
    causal = key_pos[None, :] <= positions[:, None]  # [S, K]
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    attn = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), values)
    x = x + nn.Dense(self.d_model, name="out")(attn.reshape(n, s, self.d_model))
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(self.mlp_ratio * self.d_model, name="mlp_in")(h)
    x = x + nn.Dense(self.d_model, name="mlp_out")(nn.gelu(h))
    return x, cache


class CausalTransformer(nn.Module):
  """A GPT-style decoder: token and learned position embeddings, pre-norm blocks, a linear head.

  Attributes:
    vocab_size: `V`, the number of token ids.
    max_len: the longest sequence (prompt and completion) it embeds positions for.
    d_model: the residual width; a multiple of `num_heads`.
    num_heads: attention heads per layer.
    num_layers: transformer blocks.
    mlp_ratio: the MLP's hidden width over `d_model`.
  """

  vocab_size: int
  max_len: int
  d_model: int = 64
  num_heads: int = 4
  num_layers: int = 2
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, tokens, cache: tuple[LayerCache, ...] | None = None, offset=0):
    """Next-token logits.

    Args:
      tokens: int `[N, S]`.
      cache: None (tokens are the whole sequence from position 0), or the
        cache of `init_cache` holding positions `< offset`.
      offset: int scalar (may be traced), the absolute position of `tokens[:, 0]`;
        only with a cache.

    Returns:
      Without a cache: float32 logits `[N, S, V]`; with one: `(logits, cache)`.

    Raises:
      ValueError: if `tokens` is not `[N, S]` or `S` exceeds `max_len`.
    """
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [N, S], got shape {tokens.shape}")
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"tokens of shape {tokens.shape} are longer than max_len={self.max_len}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of num_heads={self.num_heads}")
    positions = offset + jnp.arange(tokens.shape[1])
    x = nn.Embed(self.vocab_size, self.d_model, name="embed")(tokens)
    x = x + nn.Embed(self.max_len, self.d_model, name="pos_embed")(positions)[None]
    new_cache = []
    for i in range(self.num_layers):
      x, layer_cache = _Block(self.d_model, self.num_heads, self.mlp_ratio, name=f"block_{i}")(
          x, positions, None if cache is None else cache[i])
      new_cache.append(layer_cache)
    logits = nn.Dense(self.vocab_size, name="head")(nn.LayerNorm(name="ln_out")(x))
    return logits if cache is None else (logits, tuple(new_cache))

  def init_cache(self, batch: int, dtype=jnp.float32) -> tuple[LayerCache, ...]:
    """An empty cache: per layer `(keys, values)`, zeros `[batch, max_len, heads, head_dim]`."""
    shape = (batch, self.max_len, self.num_heads, self.d_model // self.num_heads)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                 for _ in range(self.num_layers))


def decoder(model: CausalTransformer) -> Decoder:
  """The cached decoding functions of `model`, for `sampling.sample(..., decoder=...)`."""

  def step(params, cache, tokens, offset):
    return model.apply(params, tokens, cache, offset)

  return Decoder(init_cache=lambda params, batch: model.init_cache(batch), step=step,
                 max_len=model.max_len)
