"""Corrections for the gap between the sampler's and the trainer's token probabilities.

A fast inference engine samples the completions and reports each token's log-prob
`sampler_log_probs` (`log mu`); the trainer recomputes the same tokens at the same
parameters as `old_log_probs` (`log pi_old`). Kernels, precision and mixture-of-experts
routing make the two differ, so the batch is off-policy for the trainer even with one update
per batch. The functions here turn the per-token ratio `rho = pi_old / mu` into weights for
the policy-gradient surrogate (pass `Correction.weights` as `weights=` to
`losses.policy_gradient_loss` or `losses.aggregate`: a weight scales a token's term and its
gradient without changing the normalisers, as TRL does), or into masks.

Every ratio is computed from the two log-probs of the tokens `mask` keeps: masked-out entries
(padding, prompt) may hold anything (nan, +-inf) and never reach a number, and weights carry
no gradient (`jax.lax.stop_gradient`).

Levels (`level=`): `"token"`: `rho_t = exp(log pi_old_t - log mu_t)`; `"sequence"`: one ratio
per completion, `exp(sum_t (log pi_old_t - log mu_t))` (the ratio of the sequence
probabilities), given to each of its tokens; `"geometric"`: the length-normalised
`exp(mean_t (log pi_old_t - log mu_t))`.

TRL 1.16's `GRPOTrainer` with `use_vllm=True` and `vllm_importance_sampling_correction=True`
computes `importance_sampling_ratio` and multiplies each token's loss by it. With
`C_min = vllm_importance_sampling_clip_min` and `C_max = vllm_importance_sampling_clip_max`
(`vllm_importance_sampling_cap` is the deprecated name of `C_max`; `None` is no bound), and
TRL's `old_per_token_logps` and `sampling_per_token_logps` passed as `old_log_probs` and
`sampler_log_probs`, each mode is:

===========================  =================================================================
TRL mode                     here (`Correction.weights` equals TRL's ratio on every real token)
===========================  =================================================================
``"token_truncate"``         ``importance_correction(..., mode="truncate", level="token",
                             low=C_min, high=C_max)``
``"token_mask"``             ``importance_correction(..., mode="mask", level="token",
                             low=C_min, high=C_max)``
``"sequence_truncate"``      ``importance_correction(..., mode="truncate", level="sequence",
                             low=C_min, high=C_max)``
``"sequence_mask"``          ``importance_correction(..., mode="mask", level="sequence",
                             low=C_min, high=C_max)``
===========================  =================================================================

TRL reads a sampler log-prob of nan (one vLLM did not report) as "no correction": that token
gets log-ratio 0. To reproduce it, pass
`jnp.where(jnp.isnan(sampler_log_probs), old_log_probs, sampler_log_probs)`. TRL's
`off_policy_mask_threshold=delta` is `off_policy_sequence_mask(..., threshold=delta)` and its
`use_bias_correction_kl=True` KL term (with `beta`) is `unbiased_kl`.

References:
  Yao, F., Liu, L., Zhang, D., Dong, C., Shang, J., Gao, J. (2025). Your efficient RL
  framework secretly brings you off-policy RL training. https://fengyao.notion.site/off-policy-rl
  (truncated importance sampling, TIS; and the masked variant, MIS, in its follow-up
  "When speed kills stability").
  Ling Team (2025). Every step evolves: scaling reinforcement learning for trillion-scale
  thinking model. arXiv:2510.18855. (IcePop)
  DeepSeek-AI (2025). DeepSeek-V3.2: pushing the frontier of open large language models.
  arXiv:2512.02556. (off-policy sequence masking, unbiased KL estimate)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks
from reinforce_jax.sequence import importance, regularizers

__all__ = [
    "Correction",
    "icepop",
    "importance_correction",
    "masked_importance_sampling",
    "off_policy_sequence_mask",
    "truncated_importance_sampling",
    "unbiased_kl",
]

LEVELS = ("token", "sequence", "geometric")
MODES = ("truncate", "mask")


class Correction(NamedTuple):
  """Per-token weights and the tokens that still count, with scalar diagnostics.

  `weights`: `[B, L]` float, gradient stopped, exactly 0 where `mask` is off.
  `mask`: `[B, L]` bool, the input mask less the tokens (or sequences) dropped.
  `metrics`: a dict of float scalars, described by the function that returns it.
  """

  weights: jax.Array
  mask: jax.Array
  metrics: dict[str, jax.Array]


def _check_bound(name: str, value) -> None:
  if value is not None:
    checks.check_number(name, value, low=0.0)


def _check_per_sequence(name: str, value, tokens) -> None:
  if checks.shape_of(value) != checks.shape_of(tokens)[:1]:
    raise ValueError(
        f"{name} must have shape [B] = {checks.shape_of(tokens)[:1]} for per-token arrays of "
        f"shape {checks.shape_of(tokens)}, got shape {checks.shape_of(value)}")


def _safe_mean(values: jax.Array, on: jax.Array) -> jax.Array:
  """Mean of `values` where `on`; 0 when nothing is on."""
  total = jnp.sum(jnp.where(on, values, 0))
  return total / jnp.maximum(jnp.sum(on), 1).astype(total.dtype)


def _log_ratios(old_log_probs, sampler_log_probs, on, level: str) -> jax.Array:
  """Log-ratios `log pi_old - log mu`, `[B, L]`, at `level`; 0 off `on` for "token"."""
  old, sampler = checks.where_on(
      on, jax.lax.stop_gradient(old_log_probs),
      jax.lax.stop_gradient(sampler_log_probs).astype(jnp.result_type(old_log_probs)))
  log_ratio = old - sampler
  if level == "token":
    return log_ratio
  total = jnp.sum(log_ratio, axis=1, keepdims=True)
  if level == "geometric":
    total = total / jnp.maximum(jnp.sum(on, axis=1, keepdims=True), 1).astype(total.dtype)
  return jnp.broadcast_to(total, log_ratio.shape)


def importance_correction(
    old_log_probs: jax.Array,
    sampler_log_probs: jax.Array,
    mask: jax.Array,
    *,
    mode: str,
    level: str = "token",
    low: float | None = None,
    high: float | None = None,
) -> Correction:
  """Truncated or masked importance weights `pi_old / mu` for the sampler/trainer mismatch.

  With `rho` the ratio at `level` (see the module docstring) and the bounds `[low, high]`
  (`None`: unbounded on that side):

  * `mode="truncate"` (TIS): `w = clip(rho, low, high)`, e.g. `min(rho, C)` with `high=C`;
    every token keeps counting.
  * `mode="mask"` (MIS, IcePop): `w = rho` if `low <= rho <= high`, else `w = 0` and the token
    (with `level="sequence"` or `"geometric"`, the whole completion) leaves `mask`.

  Both bounds are inclusive: a ratio equal to a bound is kept (and left as is).

  Args:
    old_log_probs: `[B, L]` float, the trainer's log-probs of the sampled tokens at the
      sampling parameters (or the current `log_probs`: the gradient is stopped either way).
    sampler_log_probs: `[B, L]` float, the sampler's log-probs of the same tokens.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    mode: `"truncate"` or `"mask"`.
    level: `"token"`, `"sequence"` or `"geometric"`.
    low: the lower bound `C_min >= 0`, or `None`.
    high: the upper bound `C_max >= 0`, or `None`.

  Returns:
    A `Correction`. Its `metrics`: `fraction_truncated` and `fraction_masked`, the fraction of
    real tokens whose weight the bounds changed or zeroed (per token, also at sequence level);
    `ratio_mean`, `ratio_min`, `ratio_max`, the raw ratio `rho` over real tokens (at sequence
    level, over completions with at least one token); `log_ratio_abs_mean` and
    `log_ratio_abs_max`, `|log pi_old - log mu|` over real tokens. All are 0 without real
    tokens.

  Raises:
    ValueError: if the arrays are not all `[B, L]` floats of one shape, `mode` or `level` is
      unknown, a bound is negative or not finite, or `low > high`; where it is concrete, if
      `mask` holds values other than 0 and 1.
  """
  on = checks.check_tokens(mask, old_log_probs=old_log_probs, sampler_log_probs=sampler_log_probs)
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
  _check_bound("low", low)
  _check_bound("high", high)
  if low is not None and high is not None and low > high:
    raise ValueError(f"low must not exceed high, got low={low!r} and high={high!r}")
  token_log_ratio = _log_ratios(old_log_probs, sampler_log_probs, on, "token")
  log_ratio = token_log_ratio if level == "token" else _log_ratios(
      old_log_probs, sampler_log_probs, on, level)
  ratio = jnp.exp(log_ratio)
  outside = jnp.zeros(ratio.shape, bool)
  if low is not None:
    outside = outside | (ratio < low)
  if high is not None:
    outside = outside | (ratio > high)
  if mode == "truncate":
    weights = ratio
    if low is not None:
      weights = jnp.maximum(weights, low)
    if high is not None:
      weights = jnp.minimum(weights, high)
    kept = on
  else:
    weights = ratio
    kept = on & ~outside
  weights = jnp.where(kept, weights, 0)
  changed = _safe_mean(outside.astype(ratio.dtype), on)
  zero = jnp.zeros((), ratio.dtype)
  # Ratio statistics over tokens, or over completions with a token at sequence level.
  units = on if level == "token" else (on & (jnp.cumsum(on, axis=1) == 1))
  any_unit = jnp.any(units)
  abs_log_ratio = jnp.abs(token_log_ratio)
  metrics = {
      "fraction_truncated": changed if mode == "truncate" else zero,
      "fraction_masked": changed if mode == "mask" else zero,
      "ratio_mean": _safe_mean(ratio, units),
      "ratio_min": jnp.where(any_unit, jnp.min(jnp.where(units, ratio, jnp.inf)), 0),
      "ratio_max": jnp.where(any_unit, jnp.max(jnp.where(units, ratio, -jnp.inf)), 0),
      "log_ratio_abs_mean": _safe_mean(abs_log_ratio, on),
      "log_ratio_abs_max": jnp.max(jnp.where(on, abs_log_ratio, 0)),
  }
  return Correction(jax.lax.stop_gradient(weights), kept, metrics)


def truncated_importance_sampling(
    old_log_probs: jax.Array,
    sampler_log_probs: jax.Array,
    mask: jax.Array,
    *,
    cap: float = 2.0,
    level: str = "token",
) -> Correction:
  """Truncated importance sampling (TIS; Yao et al., 2025): `w = min(pi_old / mu, C)`.

  The policy-gradient term of each token is multiplied by `w` (gradient stopped). `cap=2.0`
  is the blog's default `C`. With `level="sequence"` the ratio is that of the whole
  completion, `min(prod_t pi_old_t / mu_t, C)`. Same as
  `importance_correction(..., mode="truncate", level=level, high=cap)`.

  Args:
    old_log_probs: `[B, L]` float, the trainer's log-probs of the sampled tokens.
    sampler_log_probs: `[B, L]` float, the sampler's log-probs of the same tokens.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    cap: the truncation `C >= 0`.
    level: `"token"`, `"sequence"` or `"geometric"`.

  Returns:
    A `Correction` (see `importance_correction`); its `mask` is the input mask.

  Raises:
    ValueError: as `importance_correction`.
  """
  return importance_correction(old_log_probs, sampler_log_probs, mask, mode="truncate",
                               level=level, high=cap)


def masked_importance_sampling(
    old_log_probs: jax.Array,
    sampler_log_probs: jax.Array,
    mask: jax.Array,
    *,
    cap: float = 2.0,
    low: float | None = None,
    level: str = "token",
) -> Correction:
  """Masked importance sampling (MIS): `w = rho` if `rho <= C` (and `rho >= low`), else 0.

  Instead of truncating a large ratio `rho = pi_old / mu`, the token (at `level="sequence"`,
  the whole completion) is dropped. Same as
  `importance_correction(..., mode="mask", level=level, low=low, high=cap)`.

  Args:
    old_log_probs: `[B, L]` float, the trainer's log-probs of the sampled tokens.
    sampler_log_probs: `[B, L]` float, the sampler's log-probs of the same tokens.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    cap: the upper bound `C >= 0`.
    low: an optional lower bound (two-sided masking), or `None`.
    level: `"token"`, `"sequence"` or `"geometric"`.

  Returns:
    A `Correction` (see `importance_correction`).

  Raises:
    ValueError: as `importance_correction`.
  """
  return importance_correction(old_log_probs, sampler_log_probs, mask, mode="mask",
                               level=level, low=low, high=cap)


def icepop(
    old_log_probs: jax.Array,
    sampler_log_probs: jax.Array,
    mask: jax.Array,
    *,
    low: float = 0.5,
    high: float = 5.0,
    level: str = "token",
    mode: str = "mask",
) -> Correction:
  """IcePop (Ling Team, 2025): two-sided masking of the training/inference ratio.

  `M(k) = k` if `alpha <= k <= beta`, else 0, with `k = pi_train(y_t; theta_old) /
  pi_infer(y_t; theta_old)` (here `old_log_probs` and `sampler_log_probs`); IcePop's
  objective multiplies each token's clipped PPO term by `M(k)`. The defaults `alpha = 0.5`,
  `beta = 5` are those used in published IcePop configurations. Same as
  `importance_correction(..., mode=mode, level=level, low=low, high=high)`;
  `mode="truncate"` clips `k` to `[alpha, beta]` instead of dropping the token.

  Args:
    old_log_probs: `[B, L]` float, the trainer's log-probs of the sampled tokens.
    sampler_log_probs: `[B, L]` float, the sampler's log-probs of the same tokens.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    low: `alpha`, the lower bound.
    high: `beta`, the upper bound.
    level: `"token"` (IcePop as published), `"sequence"` or `"geometric"`.
    mode: `"mask"` (IcePop as published) or `"truncate"`.

  Returns:
    A `Correction` (see `importance_correction`).

  Raises:
    ValueError: as `importance_correction`.
  """
  return importance_correction(old_log_probs, sampler_log_probs, mask, mode=mode,
                               level=level, low=low, high=high)


def off_policy_sequence_mask(
    log_probs: jax.Array,
    sampler_log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    threshold: float,
) -> Correction:
  """DeepSeek-V3.2's off-policy sequence masking: drop far-off-policy negative samples.

  Completion `i` is dropped (all its tokens get weight 0) when::

      A_i < 0  and  (1 / |o_i|) sum_t (log mu(o_{i,t}) - log pi_theta(o_{i,t})) > delta,

  with `mu` the sampler (the inference engine's log-probs) and `pi_theta` the current policy:
  the mean per-token log-ratio estimates `KL(mu || pi_theta)` on the completion. A completion
  with `A_i >= 0`, or whose estimate is at most `delta`, is kept. A completion without tokens
  has estimate 0. This is TRL's `off_policy_mask_threshold` (`get_off_policy_mask`).

  Args:
    log_probs: `[B, L]` float, the current policy's log-probs (gradient stopped here).
    sampler_log_probs: `[B, L]` float, the sampler's log-probs of the same tokens.
    advantages: `[B]` float, one advantage per completion.
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.
    threshold: `delta`, a finite real (e.g. 0.5).

  Returns:
    A `Correction` whose `weights` are 1 on the kept completions' tokens and 0 elsewhere.
    `metrics`: `fraction_masked` (of the `B` completions), `kl_mean` (the mean of the
    per-completion estimates over completions with tokens).

  Raises:
    ValueError: if the per-token arrays are not `[B, L]` floats of one shape, `advantages` is
      not `[B]`, or `threshold` is not finite; where it is concrete, if `mask` holds values
      other than 0 and 1.
  """
  on = checks.check_tokens(mask, log_probs=log_probs, sampler_log_probs=sampler_log_probs)
  checks.check_floating(advantages=advantages)
  _check_per_sequence("advantages", advantages, log_probs)
  checks.check_number("threshold", threshold)
  log_ratio = -_log_ratios(log_probs, sampler_log_probs, on, "token")
  lengths = jnp.sum(on, axis=1)
  kl = jnp.sum(log_ratio, axis=1) / jnp.maximum(lengths, 1).astype(log_ratio.dtype)
  advantages = jax.lax.stop_gradient(advantages)
  keep = (advantages >= 0) | (kl <= threshold)
  kept = on & keep[:, None]
  metrics = {
      "fraction_masked": jnp.mean((~keep).astype(log_ratio.dtype)),
      "kl_mean": _safe_mean(kl, lengths > 0),
  }
  return Correction(kept.astype(log_ratio.dtype), kept, metrics)


def unbiased_kl(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    ref_log_probs: jax.Array,
    mask: jax.Array,
) -> jax.Array:
  """DeepSeek-V3.2's unbiased KL estimate: the k3 estimator weighted by `pi_theta / pi_old`.

  Per token, with `d = log pi_theta - log pi_ref` and `w = exp(log pi_theta - log pi_old)`::

      kl_t = w * (pi_ref / pi_theta - log(pi_ref / pi_theta) - 1) = w * (exp(-d) + d - 1).

  `w` is differentiated (its value is 1 on-policy, its gradient is not 0): the gradient of
  `kl_t` is `w * d * grad log pi_theta`, whose expectation over tokens drawn from `pi_old` is
  the gradient of the per-token reverse KL `KL(pi_theta || pi_ref)` at the sampled prefix.
  Without `w` (plain k3 on off-policy samples) it is not. Pass the distribution the tokens
  were drawn from as `old_log_probs` (the sampler's log-probs, or TRL's
  `old_per_token_logps`). Add it to the loss as
  `beta * losses.aggregate(unbiased_kl(...), mask, aggregation=...)`; it equals TRL's
  per-token KL with `use_bias_correction_kl=True` (token-level ratios). It is
  `regularizers.bias_corrected_kl` applied to `regularizers.kl_penalty(..., estimator="k3")`
  and the token-level `importance.log_ratio`, which compose with other estimators and levels.

  Args:
    log_probs: `[B, L]` float, the current policy's log-probs (differentiated).
    old_log_probs: `[B, L]` float, the sampling policy's log-probs (gradient stopped).
    ref_log_probs: `[B, L]` float, the reference policy's log-probs (gradient stopped).
    mask: `[B, L]` bool or 0/1, 1 on the completion's tokens.

  Returns:
    `[B, L]` per-token estimates, exactly 0 (value and gradient) where `mask` is not set,
    whatever the inputs hold there.

  Raises:
    ValueError: if the arrays are not all `[B, L]` floats of one shape; where it is
      concrete, if `mask` holds values other than 0 and 1.
  """
  checks.check_tokens(mask, log_probs=log_probs, old_log_probs=old_log_probs,
                ref_log_probs=ref_log_probs)
  kl = regularizers.kl_penalty(log_probs, ref_log_probs, mask, estimator="k3")
  log_ratio = importance.log_ratio(log_probs, old_log_probs, mask, level="token")
  return regularizers.bias_corrected_kl(kl, log_ratio, mask)
