"""Reward shaping, baselines and token selection for sequence policy gradients.

Pure functions on plain arrays, so they compose with any surrogate in this subpackage:

* rewards: DAPO's overlong reward shaping (`overlong_penalty`);
* which completions count: DAPO's truncated-completion masking (`truncated_completion_mask`)
  and dynamic sampling as a fixed-shape group mask (`dynamic_sampling_mask`);
* baselines: ReMax, the reward of the greedy completion (`remax_advantages`,
  `greedy_completions`);
* which tokens get a gradient: the top-entropy "forking" tokens (`top_entropy_mask`), and the
  covariance-based Clip-Cov (`clip_cov`) and KL-Cov (`kl_cov`) controls of entropy collapse,
  built on `token_covariance`.

Per-token arrays are `[B, L]` with a 0/1 `mask`; masked-out entries may hold anything (nan,
+-inf) and never reach a result. Token counts that depend on a fraction (`top_entropy_mask`,
`clip_cov`, `kl_cov`) are computed exactly for the decimal fraction given (0.2 of 10 tokens is
2, whatever the float rounding of 0.2 * 10), under `jit` as well.

References:
  Yu, Q. et al. (2025). DAPO: an open-source LLM reinforcement learning system at scale.
  arXiv:2503.14476.
  Li, Z. et al. (2023). ReMax: a simple, effective, and efficient reinforcement learning method
  for aligning large language models. arXiv:2310.10505.
  Wang, S. et al. (2025). Beyond the 80/20 rule: high-entropy minority tokens drive effective
  reinforcement learning for LLM reasoning. arXiv:2506.01939.
  Cui, G. et al. (2025). The entropy mechanism of reinforcement learning for reasoning
  language models. arXiv:2505.22617.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks
from reinforce_jax._src.scalars import is_real_dtype
from reinforce_jax.sequence import sampling
from reinforce_jax.sequence.off_policy import Correction

__all__ = [
    "DynamicSampling",
    "clip_cov",
    "dynamic_sampling_mask",
    "greedy_completions",
    "kl_cov",
    "overlong_penalty",
    "remax_advantages",
    "token_covariance",
    "top_entropy_mask",
    "truncated_completion_mask",
]


# --- helpers -------------------------------------------------------------------------------


def _check_fraction(name: str, value, *, positive: bool = False) -> None:
  """A Python float in `[0, 1]` (`(0, 1]` with `positive`): token counts are built from it."""
  if isinstance(value, bool) or not isinstance(value, int | float):
    raise ValueError(f"{name} must be a Python float in [0, 1], got {value!r}")
  checks.check_number(name, value, low=0.0, high=1.0, low_open=positive)


def _count(fraction: float, n: jax.Array, *, up: bool) -> jax.Array:
  """`ceil(fraction * n)` (`up`) or `floor(fraction * n)`, exact for the decimal `fraction`.

  The float product is only a first guess; the exact rational `fraction = p / q` corrects it
  in integer arithmetic. `n * p - guess * q` may wrap around in int32, but its true value is
  small (the guess is off by a few units at most), so the wrapped difference is exact.
  """
  exact = Fraction(repr(float(fraction))).limit_denominator(10**7)
  p, q = exact.numerator, exact.denominator
  n = jnp.asarray(n, jnp.int32)
  guess = jnp.floor(n.astype(jnp.float32) * (p / q)).astype(jnp.int32)
  rest = n * p - guess * q
  if up:
    return guess - jnp.floor_divide(-rest, q)
  return guess + jnp.floor_divide(rest, q)


def _ranks(scores: jax.Array, eligible: jax.Array) -> jax.Array:
  """Each entry's rank (0 = first) among `eligible` entries by descending score.

  Ties go to the lower flat (row-major) index; ineligible entries rank after all eligible
  ones, whatever their score holds.
  """
  flat = jnp.where(eligible, scores, 0).reshape(-1)
  index = jnp.arange(flat.size)
  order = jnp.lexsort((index, -flat, ~eligible.reshape(-1)))
  ranks = jnp.zeros(flat.size, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return ranks.reshape(scores.shape)


def _token_advantages(advantages: jax.Array, log_probs: jax.Array) -> jax.Array:
  """Advantages `[B]` or `[B, L]` as `[B, L]`."""
  checks.check_floating(advantages=advantages)
  shape = checks.shape_of(log_probs)
  if checks.shape_of(advantages) == shape[:1]:
    return jnp.broadcast_to(advantages[:, None], shape)
  if checks.shape_of(advantages) != shape:
    raise ValueError(
        f"advantages must have shape [B] = {shape[:1]} or [B, L] = {shape} for log_probs of "
        f"shape {shape}, got shape {checks.shape_of(advantages)}")
  return advantages


# --- DAPO ----------------------------------------------------------------------------------


def overlong_penalty(lengths: jax.Array, *, max_length: int, cache_length: int) -> jax.Array:
  """DAPO's soft overlong punishment, a reward added to each completion's reward.

  With `L_max = max_length`, `L_cache = cache_length` and `|y|` the completion's length::

      R_length(y) = 0                                   if |y| <= L_max - L_cache
                  = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                  = -1                                  if L_max < |y|

  a penalty growing linearly from 0 to -1 over the last `L_cache` tokens of the budget
  (DAPO: `L_max = 20480`, `L_cache = 4096`).

  Args:
    lengths: `[N]` integer or float array, the number of tokens of each completion (e.g.
      `mask.sum(axis=1)`).
    max_length: `L_max`, a positive integer.
    cache_length: `L_cache`, an integer in `[1, max_length]`.

  Returns:
    `[N]` float32 penalties in `[-1, 0]`.

  Raises:
    ValueError: if `lengths` is not rank 1 and real, or the two lengths are not integers with
      `1 <= cache_length <= max_length`.
  """
  if jnp.ndim(lengths) != 1 or not is_real_dtype(jnp.result_type(lengths)):
    raise ValueError(f"lengths must be a real [N] array, got shape {checks.shape_of(lengths)} "
                     f"dtype {jnp.result_type(lengths)}")
  for name, value in (("max_length", max_length), ("cache_length", cache_length)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if cache_length > max_length:
    raise ValueError(f"cache_length must not exceed max_length, got cache_length="
                     f"{cache_length} and max_length={max_length}")
  expected = max_length - cache_length
  lengths = jnp.asarray(lengths)
  soft = (expected - lengths).astype(jnp.float32) / cache_length
  return jnp.where(lengths <= expected, 0.0,
                   jnp.where(lengths <= max_length, soft, -1.0)).astype(jnp.float32)


def truncated_completion_mask(
    tokens: jax.Array,
    mask: jax.Array,
    *,
    eos_id: int | Sequence[int],
) -> tuple[jax.Array, jax.Array]:
  """DAPO's overlong filtering: completions that hit the length limit leave the loss.

  A completion is truncated when it has tokens but none of its tokens (where `mask` is set)
  is an end-of-sequence id: generation stopped at the length limit. Its tokens are removed
  from the mask, so it contributes neither to the loss nor to any token-count normaliser
  (TRL's `mask_truncated_completions=True`).

  Args:
    tokens: `[N, L]` integer token ids.
    mask: `[N, L]` bool or 0/1, 1 on the completion's tokens (its EOS included).
    eos_id: the end-of-sequence id, or several.

  Returns:
    `(mask, truncated)`: the `[N, L]` bool mask without the truncated completions, and the
    `[N]` bool flags.

  Raises:
    ValueError: if `tokens` is not an integer `[N, L]` array, `mask` has another shape or
      (where concrete) holds values other than 0 and 1, or `eos_id` holds no integers.
  """
  if jnp.ndim(tokens) != 2 or not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
    raise ValueError(f"tokens must be an integer [N, L] array, got shape "
                     f"{checks.shape_of(tokens)} dtype {jnp.result_type(tokens)}")
  checks.check_same_shape(tokens=tokens, mask=mask)
  checks.check_mask("mask", mask)
  ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
  if not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
    raise ValueError(f"eos_id must be an integer or a non-empty sequence of integers, "
                     f"got {eos_id!r}")
  on = jnp.asarray(mask) != 0
  is_eos = jnp.isin(tokens, jnp.asarray(ids, jnp.result_type(tokens)))
  truncated = jnp.any(on, axis=1) & ~jnp.any(on & is_eos, axis=1)
  return on & ~truncated[:, None], truncated


class DynamicSampling(NamedTuple):
  """Which prompt groups DAPO's dynamic sampling keeps, in a fixed shape.

  `keep`: `[P]` bool, False for a group whose rewards are all equal (zero advantage under
  any group baseline: no gradient). `num_kept`: int32 scalar, `keep.sum()`. `order`: `[P]`
  int32, the kept groups' indices in order followed by the dropped ones', to gather a
  compact batch (`rewards[order[:k]]` for a static `k <= num_kept`) or to fill a buffer
  across sampling rounds.
  """

  keep: jax.Array
  num_kept: jax.Array
  order: jax.Array


def dynamic_sampling_mask(rewards: jax.Array) -> DynamicSampling:
  """DAPO's dynamic sampling as a mask: groups whose rewards are all equal are dropped.

  DAPO keeps a prompt only when `0 < |{i : y_i correct}| < G`; for general rewards, a group
  is kept when its rewards are not all equal (exact comparison; a nan reward makes a group
  unequal). Filtering changes the batch's shape, so this returns the mask and the count; a
  per-completion weight is `keep[:, None]` broadcast to `[P, G]`.

  Args:
    rewards: `[P, G]` float or integer rewards, `G` completions for each of `P` prompts.

  Returns:
    A `DynamicSampling` (`keep`, `num_kept`, `order`).

  Raises:
    ValueError: if `rewards` is not a real `[P, G]` array.
  """
  if jnp.ndim(rewards) != 2 or not is_real_dtype(jnp.result_type(rewards)):
    raise ValueError(f"rewards must be a real [P, G] array, got shape "
                     f"{checks.shape_of(rewards)} dtype {jnp.result_type(rewards)}")
  rewards = jnp.asarray(rewards)
  keep = ~jnp.all(rewards == rewards[:, :1], axis=1)
  order = jnp.argsort(~keep, stable=True).astype(jnp.int32)
  return DynamicSampling(keep, jnp.sum(keep, dtype=jnp.int32), order)


# --- ReMax ---------------------------------------------------------------------------------


def remax_advantages(rewards: jax.Array, greedy_rewards: jax.Array) -> jax.Array:
  """ReMax's advantages: each completion's reward minus that of the prompt's greedy decode.

  `A_{p,g} = r(x_p, y_{p,g}) - r(x_p, y_p^greedy)`. The greedy completion does not depend on
  the sampled ones, so the baseline keeps the score-function gradient unbiased.

  Args:
    rewards: `[P, G]` float, rewards of `G` sampled completions for each of `P` prompts.
    greedy_rewards: `[P]` float, the reward of each prompt's greedy completion (see
      `greedy_completions`).

  Returns:
    `[P, G]` advantages.

  Raises:
    ValueError: if `rewards` is not a float `[P, G]` array or `greedy_rewards` not `[P]`.
  """
  checks.check_floating(rewards=rewards, greedy_rewards=greedy_rewards)
  if jnp.ndim(rewards) != 2:
    raise ValueError(f"rewards must have shape [P, G], got shape {checks.shape_of(rewards)}")
  if checks.shape_of(greedy_rewards) != checks.shape_of(rewards)[:1]:
    raise ValueError(
        f"greedy_rewards must have shape [P] = {checks.shape_of(rewards)[:1]} for rewards of "
        f"shape {checks.shape_of(rewards)}, got shape {checks.shape_of(greedy_rewards)}")
  return rewards - jnp.asarray(greedy_rewards).astype(jnp.result_type(rewards))[:, None]


def greedy_completions(
    apply_fn: sampling.ApplyFn,
    params: Any,
    prompts: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    decoder: sampling.Decoder | None = None,
) -> sampling.Completions:
  """One greedy (argmax) completion per prompt, for ReMax's baseline.

  `sampling.sample` at `temperature=0`: each step takes the most likely token (the first on
  ties), deterministically, so no key is needed; log-probs are those at temperature 1.

  Args:
    apply_fn: `(params, tokens [N, L]) -> logits [N, L, V]`, causal.
    params: the model's parameters.
    prompts: int `[P, S]`.
    max_new_tokens: `T`, tokens decoded per completion.
    eos_id: the token that ends a completion, or None.
    decoder: an optional key/value cache (`models.decoder`).

  Returns:
    `sampling.Completions`, each array `[P, S + T]`, one row per prompt.

  Raises:
    ValueError: as `sampling.sample`.
  """
  return sampling.sample(jax.random.key(0), apply_fn, params, prompts,
                         max_new_tokens=max_new_tokens, temperature=0.0, eos_id=eos_id,
                         group_size=1, decoder=decoder)


# --- token selection ------------------------------------------------------------------------


def top_entropy_mask(entropy: jax.Array, mask: jax.Array, *, fraction: float) -> jax.Array:
  """The high-entropy "forking" tokens (Wang et al., 2025): the top `fraction` of the batch.

  Of the `n` tokens where `mask` is set, across the whole batch, keeps the
  `k = ceil(fraction * n)` with the highest entropy (the paper trains on the top 20%:
  `fraction=0.2`). Ties at the boundary go to the lower row-major index, so exactly `k` are
  kept; masked-out tokens are never kept, whatever their entropy holds. `fraction=0` keeps
  none, `fraction=1` every token. Use the result as the policy loss's mask (or as weights).

  TRL's `top_entropy_quantile=rho` keeps the tokens at or above the `1 - rho` quantile
  (linear interpolation), `1 + floor(rho * (n - 1))` tokens when entropies are distinct: the
  same count unless `frac(rho * n) < rho` (e.g. `n = 14`, `rho = 0.3`: TRL 4, here 5); at
  `rho = 0` TRL keeps the top token(s).

  Args:
    entropy: `[B, L]` float, each position's entropy (e.g. `sampling.token_log_probs(...,
      with_entropy=True)`).
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    fraction: the share of tokens kept, a Python float in `[0, 1]`.

  Returns:
    `[B, L]` bool, the kept tokens (a subset of `mask`).

  Raises:
    ValueError: if `entropy` is not a float `[B, L]` array of `mask`'s shape or `fraction`
      not in `[0, 1]`; where it is concrete, if `mask` holds values other than 0 and 1.
  """
  on = checks.check_tokens(mask, entropy=entropy)
  _check_fraction("fraction", fraction)
  entropy = jax.lax.stop_gradient(entropy)
  k = _count(fraction, jnp.sum(on), up=True)
  return on & (_ranks(entropy, on) < k)


def token_covariance(log_probs: jax.Array, advantages: jax.Array, mask: jax.Array) -> jax.Array:
  """Each token's centred covariance term between log-prob and advantage (Cui et al., 2025).

  Per token::

      Cov(y_t) = (log pi(y_t) - mean_s log pi(y_s)) * (A(y_t) - mean_s A(y_s)),

  the means over all tokens of the batch where `mask` is set (a sequence advantage counts
  once per token). Tokens with a large positive term are those whose update lowers the
  policy's entropy most. Gradient stopped.

  Args:
    log_probs: `[B, L]` float, log-probs of the sampled tokens.
    advantages: `[B]` (one per completion) or `[B, L]` (per token) float.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.

  Returns:
    `[B, L]` float, 0 where `mask` is not set.

  Raises:
    ValueError: if the shapes do not fit (`log_probs` and `mask` `[B, L]`, `advantages` `[B]`
      or `[B, L]`); where it is concrete, if `mask` holds values other than 0 and 1.
  """
  on = checks.check_tokens(mask, log_probs=log_probs)
  advantages = _token_advantages(advantages, log_probs)
  log_probs, advantages = checks.where_on(
      on, jax.lax.stop_gradient(log_probs),
      jax.lax.stop_gradient(advantages).astype(jnp.result_type(log_probs)))
  count = jnp.maximum(jnp.sum(on), 1).astype(log_probs.dtype)
  centred_log_probs = log_probs - jnp.sum(log_probs) / count
  centred_advantages = advantages - jnp.sum(advantages) / count
  return jnp.where(on, centred_log_probs * centred_advantages, 0)


def clip_cov(
    key: jax.Array,
    log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    fraction: float = 2e-4,
    low: float = 1.0,
    high: float = 5.0,
    exclude: jax.Array | None = None,
) -> Correction:
  """Clip-Cov (Cui et al., 2025): no gradient for a random few high-covariance tokens.

  The candidates are the tokens with `low < Cov(y_t) < high` (`token_covariance`, strict
  bounds), less those in `exclude`. Of these, `min(max(floor(fraction * n), 1), #candidates)`
  are drawn uniformly without replacement (`n` the number of tokens in `mask`): each
  candidate gets the priority `jax.random.uniform(key, log_probs.shape)` and the highest
  priorities are chosen. The chosen tokens get weight 0, so their term and its gradient
  leave the loss while the normalisers still count them (as the authors' code, which
  multiplies the PPO loss by 0 there). Defaults: `fraction=2e-4`, `low=1`, `high=5`, the
  paper's.

  Args:
    key: a `jax.random.key`.
    log_probs: `[B, L]` float, the current policy's log-probs of the sampled tokens.
    advantages: `[B]` or `[B, L]` float.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    fraction: the share `r` of tokens to clip, a Python float in `[0, 1]`.
    low: `omega_low`, the band's lower bound.
    high: `omega_high`, the band's upper bound.
    exclude: optional `[B, L]` bool, tokens that are never candidates; the authors' code
      excludes those PPO's clip already removes (where `-A * clip(rho, 1 - eps_low,
      1 + eps_high) > -A * rho`).

  Returns:
    A `Correction`: `weights` 1 on the tokens that keep their gradient, 0 on the chosen ones
    and off `mask`; `mask`, the tokens that keep their gradient. `metrics`:
    `fraction_clipped` (of the tokens in `mask`) and `num_candidates`.

  Raises:
    ValueError: if the shapes do not fit, `fraction` is not in `[0, 1]`, a bound is not
      finite or `low > high`; where it is concrete, if `mask` holds values other than 0
      and 1.
  """
  on = checks.check_tokens(mask, log_probs=log_probs)
  covariance = token_covariance(log_probs, advantages, mask)
  _check_fraction("fraction", fraction)
  checks.check_number("low", low)
  checks.check_number("high", high)
  if low > high:
    raise ValueError(f"low must not exceed high, got low={low!r} and high={high!r}")
  candidates = on & (covariance > low) & (covariance < high)
  if exclude is not None:
    checks.check_same_shape(log_probs=log_probs, exclude=exclude)
    candidates = candidates & ~jnp.asarray(exclude, bool)
  budget = jnp.maximum(_count(fraction, jnp.sum(on), up=False), 1)
  priority = jax.random.uniform(key, log_probs.shape)
  chosen = candidates & (_ranks(priority, candidates) < budget)
  kept = on & ~chosen
  dtype = jnp.result_type(log_probs)
  count = jnp.maximum(jnp.sum(on), 1).astype(dtype)
  metrics = {
      "fraction_clipped": jnp.sum(chosen).astype(dtype) / count,
      "num_candidates": jnp.sum(candidates, dtype=jnp.int32),
  }
  return Correction(kept.astype(dtype), kept, metrics)


def kl_cov(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    fraction: float = 2e-4,
    coef: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """KL-Cov (Cui et al., 2025): a KL penalty on the tokens of largest covariance.

  The `k = max(floor(fraction * n), 1)` tokens of largest `Cov(y_t)` (`token_covariance`;
  `n` the tokens in `mask`, none when `n = 0`; ties to the lower row-major index) get the
  per-token loss term::

      beta * |log pi_theta(y_t) - log pi_old(y_t)|,

  differentiated through `log_probs` (with the derivative of `|d|` taken as 0 at `d = 0`, so
  the penalty has no gradient at the on-policy point); every other token gets 0. KL-Cov's
  loss is the unclipped surrogate plus this term: `losses.policy_gradient_loss(..., clip_eps=None) +
  losses.aggregate(penalty, mask, aggregation=...)` with the same aggregation (the sum of
  two aggregates is the aggregate of the sum). Defaults: `fraction=2e-4` and `coef=1`, the
  paper's (`k = 2e-3` for its largest model).

  Args:
    log_probs: `[B, L]` float, the current policy's log-probs (differentiated).
    old_log_probs: `[B, L]` float, the sampling policy's log-probs (gradient stopped).
    advantages: `[B]` or `[B, L]` float.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    fraction: the share `k` of tokens penalised, a Python float in `(0, 1]`.
    coef: `beta`, the penalty's coefficient (finite).

  Returns:
    `(penalty, selected)`: the `[B, L]` per-token penalty (a loss term: add it, 0 off the
    selected tokens in value and gradient) and the `[B, L]` bool selection.

  Raises:
    ValueError: if the shapes do not fit, `fraction` is not in `(0, 1]` or `coef` is not
      finite; where it is concrete, if `mask` holds values other than 0 and 1.
  """
  on = checks.check_tokens(mask, log_probs=log_probs, old_log_probs=old_log_probs)
  covariance = token_covariance(log_probs, advantages, mask)
  _check_fraction("fraction", fraction, positive=True)
  checks.check_number("coef", coef)
  n = jnp.sum(on)
  k = jnp.where(n > 0, jnp.maximum(_count(fraction, n, up=False), 1), 0)
  selected = on & (_ranks(covariance, on) < k)
  dtype = jnp.result_type(log_probs)
  log_probs, old_log_probs = checks.where_on(
      selected, log_probs, jax.lax.stop_gradient(old_log_probs).astype(dtype))
  difference = log_probs - old_log_probs
  # |d| as sign(d) * d: its derivative at d = 0 (the on-policy point) is 0, as in the
  # paper's PyTorch code, where jnp.abs's is 1.
  penalty = coef * jax.lax.stop_gradient(jnp.sign(difference)) * difference
  return jnp.where(selected, penalty, 0), selected
