"""Any flax NNX causal language model as a `SequencePolicy`.

`nnx_policy(module)` takes an NNX module `module(tokens [N, L]) -> logits [N, L, V]`, or a
constructor `rngs -> module`, and splits it once (`nnx.split`) into a static graph and a
state of arrays. The state's `nnx.Param` variables are the policy's parameters, and
`apply(params, tokens)` merges them back (`nnx.merge`) inside the traced step, so the
compiled train step is a pure function of arrays: the module's Python object graph is
walked when the step is traced, once, and never per step (`nnx.jit` would walk it at
every call).

Models with another call signature take a `logits_fn(module, tokens) -> logits`. tunix's
decoders (`tunix.models.qwen3.model.Qwen3`, Llama 3, Gemma) are called as
`module(input_tokens, positions, cache, attention_mask) -> (logits, cache)`:
`tunix_logits` is that adapter (positions `0 .. L - 1`, a causal mask, no cache), and
`tunix_policy(module, max_len=...)` adds their key/value cache for sampling
(`tunix_decoder`):

    from tunix.models.qwen3 import model as qwen3

    config = qwen3.ModelConfig(num_layers=2, vocab_size=12, embed_dim=64, hidden_dim=128,
                               num_heads=4, head_dim=16, num_kv_heads=2, rope_theta=10_000,
                               norm_eps=1e-6)
    policy = tunix_policy(lambda rngs: qwen3.Qwen3(config, rngs=rngs), max_len=16)
    init_fn, train_step = make_sequence_train_step(
        task.sample_prompts, task.reward, policy, optax.adam(1e-3), settings)

A linen model or a plain function needs no adapter: `SequencePolicy(init, apply)` is
already `apply(params, tokens) -> logits` (`train.transformer_policy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from reinforce_jax.sequence.sampling import Decoder
from reinforce_jax.sequence.train import SequencePolicy

__all__ = [
    "nnx_policy",
    "tunix_decoder",
    "tunix_logits",
    "tunix_policy",
]

LogitsFn = Callable[[Any, jax.Array], jax.Array]  # (module, tokens [N, L]) -> logits [N, L, V]


def _call(module, tokens: jax.Array) -> jax.Array:
  return module(tokens)


def _check_logits(logits, tokens: jax.Array) -> jax.Array:
  shape = getattr(logits, "shape", None)
  if shape is None or len(shape) != 3 or tuple(shape[:2]) != tuple(tokens.shape):
    got = f"shape {tuple(shape)}" if shape is not None else f"a {type(logits).__name__}"
    raise ValueError(f"the model (through logits_fn) returned {got} for tokens of shape "
                     f"{tuple(tokens.shape)}; expected logits [N, L, V] (a model with another "
                     "call signature needs logits_fn=..., e.g. tunix_logits)")
  return logits


def nnx_policy(
    module,
    *,
    logits_fn: LogitsFn | None = None,
    decoder: Decoder | None = None,
    trainable=nnx.Param,
) -> SequencePolicy:
  """A `SequencePolicy` of a flax NNX causal language model.

  The module is split once into a graph and a state. The variables that `trainable`
  selects are the parameters (`init(key)` returns them as an `nnx.State`, a pytree of
  arrays that optax updates); the rest of the state (RNG counters, statistics) is held
  fixed at its initial value. `apply(params, tokens)` is
  `logits_fn(nnx.merge(graph, params, rest), tokens)`, traced once per compilation.

  Args:
    module: an `nnx.Module`, or a function `rngs -> nnx.Module`. With a constructor,
      `init(key)` builds the module from `nnx.Rngs(key)`, so each key gives its own
      parameters (the graph comes from `nnx.eval_shape`, allocating nothing); an instance
      gives its own parameters for every key.
    logits_fn: `(module, tokens [N, L]) -> logits [N, L, V]`, causal; None calls
      `module(tokens)`. `tunix_logits` for tunix's models.
    decoder: a key/value cache for sampling, a `sampling.Decoder` whose functions take the
      module where `sampling.Decoder`'s take parameters: `init_cache(module, batch)` and
      `step(module, cache, tokens [N, S], offset) -> (logits [N, S, V], cache)`
      (`tunix_decoder`); None recomputes every position at each sampled token.
    trainable: an `nnx` filter of the variables to train (`nnx.Param`).

  Returns:
    A `SequencePolicy` for `make_sequence_train_step`.

  Raises:
    ValueError: if `module` is neither an `nnx.Module` nor callable; when traced, if the
      logits are not `[N, L, V]` for tokens `[N, L]`.
  """
  if isinstance(module, nnx.Module):
    graphdef, params, rest = nnx.split(module, trainable, ...)

    def init(key: jax.Array):
      del key
      return params
  elif callable(module):
    abstract = nnx.eval_shape(lambda: module(nnx.Rngs(0)))
    graphdef, _, rest = nnx.split(abstract, trainable, ...)
    if jax.tree.leaves(rest):  # state that is not trained: its values, built once
      rest = nnx.split(module(nnx.Rngs(0)), trainable, ...)[2]

    def init(key: jax.Array):
      return nnx.split(module(nnx.Rngs(key)), trainable, ...)[1]
  else:
    raise ValueError(f"module must be an nnx.Module or a function rngs -> nnx.Module, got "
                     f"{type(module).__name__}")
  logits_fn = logits_fn or _call

  def merged(params):
    return nnx.merge(graphdef, params, rest)

  def apply(params, tokens: jax.Array) -> jax.Array:
    return _check_logits(logits_fn(merged(params), tokens), tokens)

  cached = None
  if decoder is not None:
    cached = Decoder(
        init_cache=lambda params, batch: decoder.init_cache(merged(params), batch),
        step=lambda params, cache, tokens, offset: decoder.step(merged(params), cache, tokens,
                                                                offset),
        max_len=decoder.max_len)
  return SequencePolicy(init=init, apply=apply, decoder=cached)


def tunix_logits(module, tokens: jax.Array) -> jax.Array:
  """Logits of a tunix-style decoder over whole sequences, without a cache.

  Calls `module(tokens, positions, None, attention_mask)` with positions `0 .. L - 1` in
  every row and the causal mask `[N, L, L]` (`True` where a query may attend to a key).

  Args:
    module: a model called as `(input_tokens, positions, cache, attention_mask) ->
      (logits, cache)`, as tunix's Qwen3, Llama 3 and Gemma are.
    tokens: int `[N, L]`, every row starting at position 0, without padding.

  Returns:
    float logits `[N, L, V]`.
  """
  n, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (n, length))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (n, length, length))
  logits, _ = module(tokens, positions, None, causal)
  return logits


def tunix_decoder(max_len: int, dtype=jnp.float32) -> Decoder:
  """Cached sampling for a tunix-style decoder (for `nnx_policy(..., decoder=...)`).

  The cache is the model's own, `module.init_cache(batch, max_len, dtype)`; each step
  writes `S` new tokens at positions `offset .. offset + S - 1` and attends to the cached
  positions up to each query's own.

  Args:
    max_len: the cache's length: at least prompt length plus `max_new_tokens`.
    dtype: passed to `init_cache` (tunix's models use their configured dtype).

  Returns:
    A `sampling.Decoder` whose functions take the module in place of parameters.

  Raises:
    ValueError: if `max_len` is not a positive integer.
  """
  if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"max_len must be a positive integer, got {max_len!r}")

  def init_cache(module, batch: int):
    return module.init_cache(batch, max_len, dtype)

  def step(module, cache, tokens: jax.Array, offset):
    n, s = tokens.shape
    positions = offset + jnp.arange(s, dtype=jnp.int32)  # [S]
    mask = jnp.arange(max_len)[None, :] <= positions[:, None]  # [S, max_len]
    return module(tokens, jnp.broadcast_to(positions, (n, s)), cache,
                  jnp.broadcast_to(mask, (n, s, max_len)))

  return Decoder(init_cache=init_cache, step=step, max_len=max_len)


def tunix_policy(module, *, max_len: int | None = None, trainable=nnx.Param) -> SequencePolicy:
  """`nnx_policy` of a tunix-style decoder: `tunix_logits`, and its cache when `max_len` is set.

  Args:
    module: a tunix model (e.g. `tunix.models.qwen3.model.Qwen3`) or a function
      `rngs -> model`.
    max_len: the key/value cache's length for sampling (prompt length plus
      `max_new_tokens` at least), or None to sample without a cache.
    trainable: an `nnx` filter of the variables to train (`nnx.Param`).

  Returns:
    A `SequencePolicy` for `make_sequence_train_step`.
  """
  return nnx_policy(module, logits_fn=tunix_logits, trainable=trainable,
                    decoder=None if max_len is None else tunix_decoder(max_len))
