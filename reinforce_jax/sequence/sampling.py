"""Sampling completions from a causal model, and scoring them teacher-forced.

Any causal model `apply_fn(params, tokens [N, L]) -> logits [N, L, V]` (the
logits at position `t` give the distribution of token `t + 1`) can be sampled:

    out = sample(key, apply_fn, params, prompts, max_new_tokens=8, eos_id=2, group_size=4)
    out.tokens     # [B * G, P + 8] int32: each prompt repeated G times, then its completion
    out.log_probs  # [B * G, P + 8] float32: log-prob of each sampled token, 0 elsewhere
    out.mask       # [B * G, P + 8] float32: 1 on sampled tokens up to and including EOS

Rows are prompt-major (`row = b * G + g`), so per-completion rewards reshape
to `[B, G]` for `losses.group_advantages`. Sequences keep the prompt, so
`token_log_probs(apply_fn, params, out.tokens, out.mask)` scores exactly the
sampled tokens in one forward pass and equals `out.log_probs` for the same
parameters (the check that the two paths agree). Slice `[:, P:]` for the
completion alone.

Without a decoder every new token reruns the model over the whole `[N, P + T]`
buffer (causal: positions not written yet cannot affect earlier logits), so
sampling costs `T` full forward passes. With a `Decoder` (a key/value cache,
`models.decoder`) the prompt is prefilled once and each token costs one
position: `benchmarks/sequence_throughput.py` measures the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Completions",
    "Decoder",
    "sample",
    "token_log_probs",
]

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, tokens [N, L]) -> logits [N, L, V]


class Decoder(NamedTuple):
  """Cached decoding: what a model offers to sample without recomputing earlier positions.

  `init_cache(params, batch) -> cache`, an empty cache for `batch` rows;
  `step(params, cache, tokens [N, S], offset) -> (logits [N, S, V], cache)`:
  the logits of `S` tokens at positions `offset .. offset + S - 1`, given the
  cache of the positions before, and the cache with these added;
  `max_len`: the most positions the cache holds (None: unchecked).
  """

  init_cache: Callable[[Any, int], Any]
  step: Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
  max_len: int | None = None


class Completions(NamedTuple):
  """Sampled sequences, prompt included: every array `[N, P + T]`, `N = B * group_size`."""

  tokens: jax.Array     # int32; after EOS: eos_id
  log_probs: jax.Array  # float32; log-prob of each sampled token, 0 where mask is 0
  mask: jax.Array       # float32; 1 on sampled tokens up to and including the first EOS


def _scaled_log_softmax(logits: jax.Array, temperature: float) -> jax.Array:
  """Log-probs of the distribution sampled at `temperature` (0: greedy; scored at 1)."""
  logits = logits.astype(jnp.float32)
  return jax.nn.log_softmax(logits if temperature == 0 else logits / temperature, axis=-1)


def _check_prompts(prompts: jax.Array, max_new_tokens: int, group_size: int,
                   temperature: float) -> None:
  if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
    raise ValueError(f"prompts must be integer [B, P], got shape {prompts.shape} "
                     f"dtype {prompts.dtype}")
  if prompts.shape[1] < 1:
    raise ValueError(f"prompts must hold at least one token, got shape {prompts.shape}")
  for name, value in (("max_new_tokens", max_new_tokens), ("group_size", group_size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")


def sample(
    key: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    prompts: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int | None = None,
    group_size: int = 1,
    decoder: Decoder | None = None,
) -> Completions:
  """Draws `group_size` completions of `max_new_tokens` tokens per prompt.

  Jittable (the loop is a `lax.scan` of fixed length). A completion stops at
  its first `eos_id`: that token is kept and masked 1, the positions after it
  hold `eos_id`, log-prob 0 and mask 0. `temperature` must be a Python float:
  log-probs are those of the distribution sampled from (`softmax(logits /
  temperature)`); `temperature=0` samples greedily and scores at temperature 1.

  Args:
    key: a `jax.random.key`.
    apply_fn: `(params, tokens [N, L]) -> logits [N, L, V]`, causal.
    params: the model's parameters.
    prompts: int `[B, P]`, all of the same length `P`.
    max_new_tokens: `T`, tokens sampled per completion.
    temperature: the sampling temperature (>= 0).
    eos_id: the token that ends a completion, or None (every completion has `T` tokens).
    group_size: `G`, completions per prompt.
    decoder: a key/value cache for `apply_fn`'s model (`models.decoder`); the
      same distribution, sampled without recomputing earlier positions.

  Returns:
    `Completions` with `tokens`, `log_probs` and `mask`, each `[B * G, P + T]`;
    prompt positions have log-prob 0 and mask 0.

  Raises:
    ValueError: for prompts that are not integer `[B, P]`, a non-positive
      `max_new_tokens` or `group_size`, or a negative temperature.
  """
  _check_prompts(prompts, max_new_tokens, group_size, temperature)
  prompts = jnp.repeat(prompts.astype(jnp.int32), group_size, axis=0)  # [N, P]
  n, p = prompts.shape
  if decoder is not None and decoder.max_len is not None and p + max_new_tokens > decoder.max_len:
    # Writes past the cache's end would be clipped silently by dynamic_update_slice.
    raise ValueError(f"prompts of shape {(n // group_size, p)} plus max_new_tokens="
                     f"{max_new_tokens} exceed the cache's max_len={decoder.max_len}")
  eos = -1 if eos_id is None else eos_id  # -1: no token ever matches
  step_keys = jax.random.split(key, max_new_tokens)

  def draw(step_key, logits):
    log_probs = _scaled_log_softmax(logits, temperature)
    if temperature == 0:
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      log_probs = _scaled_log_softmax(logits, 1.0)
    else:
      token = jax.random.categorical(step_key, log_probs, axis=-1).astype(jnp.int32)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]

  def emit(done, step_key, logits):
    token, log_prob = draw(step_key, logits)
    live = jnp.logical_not(done)
    # A finished row keeps emitting eos with mask 0: shapes stay fixed under jit.
    token = jnp.where(live, token, eos)
    log_prob = jnp.where(live, log_prob, 0.0)
    return token, log_prob, live.astype(jnp.float32), jnp.logical_or(done, token == eos)

  done0 = jnp.zeros((n,), bool)
  if decoder is None:
    buffer0 = jnp.concatenate([prompts, jnp.zeros((n, max_new_tokens), jnp.int32)], axis=1)

    def body(carry, xs):
      buffer, done = carry
      i, step_key = xs
      logits = jax.lax.dynamic_index_in_dim(apply_fn(params, buffer), p - 1 + i, axis=1,
                                            keepdims=False)
      token, log_prob, live, done = emit(done, step_key, logits)
      buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], p + i, axis=1)
      return (buffer, done), (token, log_prob, live)

    _, (tokens, log_probs, mask) = jax.lax.scan(
        body, (buffer0, done0), (jnp.arange(max_new_tokens), step_keys))
  else:
    logits, cache = decoder.step(params, decoder.init_cache(params, n), prompts,
                                 jnp.zeros((), jnp.int32))

    def body(carry, xs):
      cache, logits, done = carry
      i, step_key = xs
      token, log_prob, live, done = emit(done, step_key, logits)
      # The last step's forward pass is spare; it keeps the loop body uniform.
      next_logits, cache = decoder.step(params, cache, token[:, None], p + i)
      return (cache, next_logits[:, 0], done), (token, log_prob, live)

    _, (tokens, log_probs, mask) = jax.lax.scan(
        body, (cache, logits[:, -1], done0), (jnp.arange(max_new_tokens), step_keys))
  zeros = jnp.zeros((n, p), jnp.float32)
  return Completions(
      tokens=jnp.concatenate([prompts, tokens.T], axis=1),
      log_probs=jnp.concatenate([zeros, log_probs.T], axis=1),
      mask=jnp.concatenate([zeros, mask.T], axis=1),
  )


def token_log_probs(
    apply_fn: ApplyFn,
    params: Any,
    tokens: jax.Array,
    mask: jax.Array,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Teacher-forced log-probs of `tokens` under the model, in one forward pass.

  Position `t` gets `log p(tokens[:, t] | tokens[:, :t])` from the logits at
  `t - 1`; position 0 has no context and is always 0, so it must not be
  scored. Differentiable in `params`: the score function of a sequence is the
  masked sum of these.

  Args:
    apply_fn: `(params, tokens [N, L]) -> logits [N, L, V]`, causal.
    params: the model's parameters.
    tokens: int `[N, L]`, prompt and completion (`Completions.tokens`).
    mask: `[N, L]`, 1 where a token is scored (`Completions.mask`).
    temperature: the temperature the tokens were sampled at (> 0; a greedy
      sample's log-probs are those at 1).
    with_entropy: also return each position's entropy of the (tempered)
      next-token distribution, masked the same way.

  Returns:
    float32 `[N, L]` log-probs, 0 where `mask` is 0; with `with_entropy`,
    `(log_probs, entropy)`, both `[N, L]`.

  Raises:
    ValueError: if `tokens` is not integer `[N, L]`, `mask` has another shape,
      or the logits are not `[N, L, V]`.
  """
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer [N, L], got shape {tokens.shape} "
                     f"dtype {tokens.dtype}")
  if mask.shape != tokens.shape:
    raise ValueError(f"mask has shape {mask.shape}, tokens {tokens.shape}: they must match")
  logits = apply_fn(params, tokens)
  if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
    raise ValueError(f"apply_fn returned logits of shape {logits.shape} for tokens "
                     f"{tokens.shape}; expected [N, L, V]")
  all_log_probs = _scaled_log_softmax(logits[:, :-1], temperature or 1.0)  # [N, L - 1, V]
  scored = jnp.take_along_axis(all_log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
  scored_here = mask > 0
  first = jnp.zeros((tokens.shape[0], 1), jnp.float32)
  # `where`, not a product: an unscored token of probability 0 would give 0 * -inf = NaN.
  log_probs = jnp.where(scored_here, jnp.concatenate([first, scored], axis=1), 0.0)
  if not with_entropy:
    return log_probs
  entropy = -jnp.sum(jnp.exp(all_log_probs) * all_log_probs, axis=-1)
  return log_probs, jnp.where(scored_here, jnp.concatenate([first, entropy], axis=1), 0.0)
