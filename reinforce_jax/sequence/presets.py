"""TRL's and tunix's GRPO-family losses and advantages, composed from this package's parts.

Every loss preset returns a pure, jittable function with one signature:

    loss_fn(log_probs, old_log_probs, ref_log_probs, advantages, mask, *, entropy=None,
            token_weights=None, ...) -> (loss, metrics)

* `log_probs`: `[B, L]` log-probs of the sampled completion tokens under the policy being
  differentiated; `old_log_probs`: `[B, L]` under the sampling policy, or `None` (on-policy:
  `stop_gradient(log_probs)`); `ref_log_probs`: `[B, L]` under the reference policy, or
  `None` (needed when the KL coefficient `beta` is not 0); `advantages`: `[B]` one per
  completion (`trl_advantages` / `tunix_advantages` flattened); `mask`: `[B, L]` bool or 0/1,
  1 on completion tokens; `entropy`: optional `[B, L]` per-token entropies (needed by TRL's
  `entropy_coef` and `top_entropy_quantile`); `token_weights`: optional `[B, L]` (or `[B]`,
  one per completion) non-negative weights that multiply each token's policy term, not the KL
  term, with the normalisers left as they are (gradient stopped; e.g. an importance
  correction from `off_policy`). `trl_loss`'s function also takes `sampler_log_probs`,
  `tunix_loss`'s `sampler_is_weights`.
* `loss`: a float scalar to minimise; `metrics`: a dict of float scalars named as the peer
  logs them (`"policy_loss"`, `"kl"`, `"clip_ratio/low_mean"`, `"pg_clipfrac"`, ...).

These reproduce one optimisation step of a single process without gradient accumulation
(TRL's `num_items_in_batch` is then the batch's token count, and its accumulation divisors
are 1); masked-out entries never reach a number here, where the peers multiply by the mask.
`docs/guides/sequence_losses.md` maps every peer setting to the parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks
from reinforce_jax.sequence import advantages as advantages_lib
from reinforce_jax.sequence import aggregation, importance, off_policy, regularizers

__all__ = [
    "TRL_LOSS_TYPES",
    "TRL_VLLM_IS_MODES",
    "TUNIX_LOSS_AGG_MODES",
    "TUNIX_LOSS_ALGOS",
    "trl_advantages",
    "trl_loss",
    "tunix_advantages",
    "tunix_loss",
]

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

# TRL 1.16 loss_type -> our aggregation mode.
_TRL_MODES = {"grpo": "sequence_mean", "sapo": "sequence_mean", "bnpo": "token_mean",
              "dapo": "token_mean", "cispo": "token_mean", "vespo": "token_mean",
              "dr_grpo": "constant", "luspo": "sequence_sum"}
TRL_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
_TRL_PPO = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
TRL_VLLM_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
TUNIX_LOSS_AGG_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-scale",
                        "seq-mean-token-sum", "sequence-mean-token-sum-norm")
TUNIX_LOSS_ALGOS = ("grpo", "gspo-token")
_TUNIX_ESTIMATORS = {"grpo": ("mean", "group"), "rloo": ("loo", "none"),
                     "drgrpo": ("mean", "none")}


def _check_choice(name: str, value: Any, names) -> None:
  if value not in names:
    raise ValueError(f"{name} must be one of {tuple(names)}, got {value!r}")


def trl_advantages(rewards: jax.Array, *, scale_rewards: str | bool = "group") -> jax.Array:
  """TRL's GRPO advantages: `(r - mean_group r) / (std + 1e-4)`, `ddof=1`.

  `relative_advantages(rewards, baseline="mean", scale=scale_rewards, ddof=1, eps=1e-4)`;
  `scale_rewards` is `"group"` (or `True`), `"batch"` or `"none"` (or `False`).

  Args:
    rewards: `[B, G]` float rewards (TRL's summed, weighted rewards, one row per prompt).
    scale_rewards: TRL's `scale_rewards`.

  Returns:
    `[B, G]` advantages.

  Raises:
    ValueError: as `advantages.relative_advantages`, or on an unknown `scale_rewards`.
  """
  scale = scale_rewards
  if isinstance(scale_rewards, bool):
    scale = "group" if scale_rewards else "none"
  _check_choice("scale_rewards", scale, advantages_lib.SCALES)
  return advantages_lib.relative_advantages(rewards, baseline="mean", scale=scale, ddof=1,
                                            eps=1e-4)


def tunix_advantages(rewards: jax.Array, *, advantage_estimator: str = "grpo") -> jax.Array:
  """tunix's group advantages: `"grpo"` (`ddof=1`, `eps=1e-6`), `"rloo"` or `"drgrpo"`.

  Args:
    rewards: `[B, G]` float rewards.
    advantage_estimator: tunix's registered group estimator name.

  Returns:
    `[B, G]` advantages.

  Raises:
    ValueError: as `advantages.relative_advantages`, or on an unknown name.
  """
  _check_choice("advantage_estimator", advantage_estimator, _TUNIX_ESTIMATORS)
  baseline, scale = _TUNIX_ESTIMATORS[advantage_estimator]
  return advantages_lib.relative_advantages(rewards, baseline=baseline, scale=scale, ddof=1,
                                            eps=1e-6)


def _masked_mean(x: jax.Array, on: jax.Array) -> jax.Array:
  (x,) = checks.where_on(on, x.astype(jnp.float32))
  return jnp.sum(x) / jnp.maximum(jnp.sum(on), 1)


def _inputs(log_probs, old_log_probs, ref_log_probs, advantages, mask, need_ref: bool):
  checks.check_sequence_advantages(log_probs, advantages, mask, rows="B")
  if need_ref and ref_log_probs is None:
    raise ValueError("beta != 0 needs ref_log_probs (the reference policy's [B, L] "
                     "log-probs); pass them or set beta=0")
  checks.check_mask("mask", mask)
  return jnp.asarray(mask) != 0


def _weights(name: str, weights, on: jax.Array, dtype) -> jax.Array:
  """`[B, L]` or `[B]` non-negative weights as `[B, L]`: gradient stopped, 0 off `on`."""
  checks.check_floating(**{name: weights})
  shape = checks.shape_of(weights)
  if shape == on.shape[:1]:
    weights = jnp.asarray(weights)[:, None]
  elif shape != on.shape:
    raise ValueError(f"{name} must have shape [B, L] = {on.shape} or [B] = ({on.shape[0]},), "
                     f"got shape {shape}")
  weights = jnp.broadcast_to(jnp.asarray(weights), on.shape)
  checks.check_kept(name, weights, on, low=0.0)
  return checks.where_on(on, jax.lax.stop_gradient(weights).astype(dtype))[0]


def _sampler(name: str, values, on: jax.Array, fallback: jax.Array) -> jax.Array:
  """`[B, L]` sampler log-probs, gradient stopped, with nan (not reported) read as `fallback`."""
  checks.check_floating(**{name: values})
  checks.check_same_shape(**{name: values}, mask=on)
  values = jax.lax.stop_gradient(jnp.asarray(values)).astype(fallback.dtype)
  (values,) = checks.where_on(on, values)
  return jnp.where(jnp.isnan(values), jax.lax.stop_gradient(fallback), values)


def _trl_entropy_mask(entropy, on: jax.Array, quantile: float) -> jax.Array:
  """TRL's `get_high_entropy_mask`: the tokens at or above the `1 - quantile` quantile.

  As `torch.quantile` (linear interpolation, `lerp` as torch rounds it) of the real tokens'
  entropies cast to float32, compared with the entropies in their own dtype; no real token:
  none kept.
  """
  if entropy is None:
    raise ValueError("top_entropy_quantile < 1 needs entropy (the [B, L] per-token "
                     "entropies); pass entropy=... or set top_entropy_quantile=1")
  checks.check_floating(entropy=entropy)
  checks.check_same_shape(entropy=entropy, mask=on)
  (entropy,) = checks.where_on(on, jax.lax.stop_gradient(entropy))
  values = jnp.sort(jnp.where(on, entropy.astype(jnp.float32), jnp.inf).ravel())
  count = jnp.sum(on)
  rank = jnp.float32(1.0 - quantile) * (count - 1).astype(jnp.float32)
  below = jnp.floor(rank)
  low = values[jnp.maximum(below.astype(jnp.int32), 0)]
  high = values[jnp.maximum(jnp.ceil(rank).astype(jnp.int32), 0)]
  weight = rank - below
  threshold = jnp.where(weight < 0.5, low + weight * (high - low),
                        high - (high - low) * (1 - weight))
  return on & (entropy >= threshold.astype(entropy.dtype)) & (count > 0)


def trl_loss(
    loss_type: str = "dapo",
    *,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    sapo_temperature_neg: float = 1.05,
    sapo_temperature_pos: float = 1.0,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    use_bias_correction_kl: bool = True,
    entropy_coef: float = 0.0,
    max_completion_length: int | None = None,
    top_entropy_quantile: float = 1.0,
    off_policy_mask_threshold: float | None = None,
    vllm_importance_sampling_correction: bool = True,
    vllm_importance_sampling_mode: str = "sequence_mask",
    vllm_importance_sampling_clip_min: float | None = None,
    vllm_importance_sampling_clip_max: float | None = 3.0,
) -> LossFn:
  """TRL 1.16's `GRPOTrainer` loss for one `loss_type`, as a composition of the parts.

  The arguments are `GRPOConfig`'s, with its defaults. Per token (`importance.py`):
  `"grpo"`, `"bnpo"`, `"dr_grpo"`, `"dapo"`, `"luspo"`: `ppo_objective(eps_low=epsilon,
  eps_high=epsilon_high or epsilon, delta=delta)`; `"cispo"`: `cispo_objective(high=
  epsilon_high or epsilon)`; `"sapo"`: `sapo_objective`; `"vespo"`: `vespo_objective` (on the
  token ratio, whatever the level). The ratio is `log_ratio(level=importance_sampling_level)`.
  With `beta != 0`, `beta` times k3 to the reference (times the ratio when
  `use_bias_correction_kl`, `regularizers.bias_corrected_kl`) joins each token's loss.
  Aggregation (`aggregation.aggregate`, rows `"batch"`): `"grpo"`, `"sapo"`:
  `"sequence_mean"`; `"bnpo"`, `"dapo"`, `"cispo"`, `"vespo"`: `"token_mean"`; `"dr_grpo"`:
  `"constant"` with `max_length=max_completion_length` (default the padded length);
  `"luspo"`: `"sequence_sum"`. Finally `- entropy_coef * entropy_bonus(entropy)` (the token
  mean).

  Weights multiply each token's policy term, before the KL term joins it, and leave the
  normalisers as they are (TRL's order): `off_policy_mask_threshold=delta`:
  `off_policy.off_policy_sequence_mask(threshold=delta)` against `sampler_log_probs` (else
  the old log-probs); `top_entropy_quantile < 1`: TRL's high-entropy mask (the tokens at or
  above the `1 - top_entropy_quantile` quantile of the real tokens' entropies, as
  `torch.quantile` computes it in float32), which also restricts the entropy bonus to those
  tokens; with `sampler_log_probs` (TRL's `use_vllm`, its sampling log-probs) and
  `vllm_importance_sampling_correction`, `off_policy.importance_correction(old_log_probs,
  sampler_log_probs, mode=, level=, low=clip_min, high=clip_max)` per
  `vllm_importance_sampling_mode` (`"token_truncate"`: `mode="truncate", level="token"`;
  `"sequence_mask"`: `mode="mask", level="sequence"`; ...), whose log joins VESPO's sequence
  ratio instead (token modes only); finally the call's `token_weights`. A sampler log-prob
  of nan (not reported) counts as no correction, as in TRL.

  Args:
    loss_type: one of `TRL_LOSS_TYPES`.
    beta: the KL coefficient (`>= 0`).
    epsilon: the lower clip range.
    epsilon_high: the upper clip range (CISPO: the cap on the ratio); `None`: `epsilon`.
    delta: the two-sided clip's cap on the ratio, or `None`.
    importance_sampling_level: `"token"` or `"sequence"` (GSPO).
    sapo_temperature_neg, sapo_temperature_pos: SAPO's temperatures.
    vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg: VESPO's Gamma shapes.
    use_bias_correction_kl: weight the KL term by the importance ratio.
    entropy_coef: the entropy bonus' coefficient (needs `entropy` in the call when not 0).
    max_completion_length: `"dr_grpo"`'s constant, or `None` for the padded length.
    top_entropy_quantile: the share of tokens, by entropy, that the policy term keeps, in
      `[0, 1]` (needs `entropy` in the call when below 1).
    off_policy_mask_threshold: the off-policy sequence mask's `delta`, or `None`.
    vllm_importance_sampling_correction: weight by the old/sampler ratio when the call
      passes `sampler_log_probs`.
    vllm_importance_sampling_mode: one of `TRL_VLLM_IS_MODES`.
    vllm_importance_sampling_clip_min, vllm_importance_sampling_clip_max: the ratio's bounds
      (`>= 0`), or `None` for none on that side.

  Returns:
    `loss_fn(log_probs, old_log_probs, ref_log_probs, advantages, mask, *, entropy=None,
    sampler_log_probs=None, token_weights=None) -> (loss, metrics)`, `sampler_log_probs`
    `[B, L]`; metrics: `"policy_loss"` (the loss before the entropy bonus),
    `"kl"` (when `beta != 0`), `"entropy"` (with `entropy`), and per loss type
    `"clip_ratio/low_mean"`, `"clip_ratio/high_mean"`, `"clip_ratio/region_mean"`,
    `"cispo_clip_ratio"` or `"vespo/phi_seq_mean"`.

  Raises:
    ValueError: on an unknown name or a setting out of range, here; on inputs that do not
      fit, when `loss_fn` is traced.
  """
  _check_choice("loss_type", loss_type, TRL_LOSS_TYPES)
  _check_choice("importance_sampling_level", importance_sampling_level, ("token", "sequence"))
  checks.check_number("beta", beta, low=0.0)
  checks.check_number("entropy_coef", entropy_coef)
  checks.check_number("epsilon", epsilon, low=0.0, high=1.0, high_open=True)
  high = epsilon if epsilon_high is None else epsilon_high
  checks.check_number("epsilon_high", high, low=0.0)
  if max_completion_length is not None:
    checks.check_number("max_completion_length", max_completion_length, low=1.0)
  vespo = dict(k_pos=vespo_k_pos, lambda_pos=vespo_lambda_pos, k_neg=vespo_k_neg,
               lambda_neg=vespo_lambda_neg)
  mode = _TRL_MODES[loss_type]
  checks.check_number("top_entropy_quantile", top_entropy_quantile, low=0.0, high=1.0)
  if off_policy_mask_threshold is not None:
    checks.check_number("off_policy_mask_threshold", off_policy_mask_threshold)
  _check_choice("vllm_importance_sampling_mode", vllm_importance_sampling_mode,
                TRL_VLLM_IS_MODES)
  clip_min, clip_max = vllm_importance_sampling_clip_min, vllm_importance_sampling_clip_max
  for name, bound in (("vllm_importance_sampling_clip_min", clip_min),
                      ("vllm_importance_sampling_clip_max", clip_max)):
    if bound is not None:
      checks.check_number(name, bound, low=0.0)
  if clip_min is not None and clip_max is not None and clip_min > clip_max:
    raise ValueError(f"vllm_importance_sampling_clip_min must not exceed "
                     f"vllm_importance_sampling_clip_max, got {clip_min!r} > {clip_max!r}")
  is_level, is_mode = vllm_importance_sampling_mode.split("_")

  def loss_fn(log_probs, old_log_probs, ref_log_probs, advantages, mask, *, entropy=None,
              sampler_log_probs=None, token_weights=None):
    on = _inputs(log_probs, old_log_probs, ref_log_probs, advantages, mask, beta != 0)
    ratio_log = importance.log_ratio(log_probs, old_log_probs, mask,
                                     level=importance_sampling_level)
    dtype = jnp.result_type(log_probs)
    old = jax.lax.stop_gradient(log_probs) if old_log_probs is None else old_log_probs
    weights, is_weights, entropy_mask = [], None, None
    if off_policy_mask_threshold is not None:
      sampler = old if sampler_log_probs is None else _sampler(
          "sampler_log_probs", sampler_log_probs, on, log_probs)
      weights.append(off_policy.off_policy_sequence_mask(
          log_probs, sampler, advantages, mask, threshold=off_policy_mask_threshold).weights)
    if top_entropy_quantile < 1:
      entropy_mask = _trl_entropy_mask(entropy, on, top_entropy_quantile)
      weights.append(entropy_mask.astype(dtype))
    if sampler_log_probs is not None and vllm_importance_sampling_correction:
      if loss_type == "vespo" and is_level != "token":
        raise ValueError("loss_type='vespo' with sampler_log_probs needs a token-level "
                         "vllm_importance_sampling_mode ('token_truncate' or 'token_mask'), "
                         f"got {vllm_importance_sampling_mode!r}")
      sampler = _sampler("sampler_log_probs", sampler_log_probs, on, old)
      is_weights = off_policy.importance_correction(
          old, sampler, mask, mode=is_mode, level=is_level, low=clip_min, high=clip_max).weights
      if loss_type != "vespo":
        weights.append(is_weights.astype(dtype))
    if token_weights is not None:
      weights.append(_weights("token_weights", token_weights, on, dtype))
    metrics = {}
    if loss_type == "cispo":
      objective = importance.cispo_objective(log_probs, ratio_log, advantages, mask, high=high)
      clipped = (jnp.exp(ratio_log) > high) & (advantages[:, None] > 0)
      metrics["cispo_clip_ratio"] = clipped
    elif loss_type == "sapo":
      objective = importance.sapo_objective(
          ratio_log, advantages, mask, temperature_pos=sapo_temperature_pos,
          temperature_neg=sapo_temperature_neg)
    elif loss_type == "vespo":
      token = importance.log_ratio(log_probs, old_log_probs, mask, level="token")
      if is_weights is None:
        objective = importance.vespo_objective(log_probs, token, advantages, mask, **vespo)
        phi = importance.vespo_weights(token, advantages, mask, **vespo)
      else:
        # The clamped log of each token's sampler ratio joins the sequence's log ratio.
        log_is = jnp.where(on, jnp.clip(jnp.log(is_weights.astype(dtype)), math.log(1e-8),
                                        20.0), 0.0)
        phi = importance.vespo_weights(jnp.concatenate([token, log_is], axis=1), advantages,
                                       jnp.concatenate([on, on], axis=1), **vespo)
        adv = checks.where_on(jnp.any(on, axis=1),
                              jax.lax.stop_gradient(advantages).astype(dtype))[0]
        (lp,) = checks.where_on(on, log_probs)
        objective = jnp.where(on, phi[:, None] * adv[:, None] * lp, 0.0)
      metrics["vespo/phi_seq_mean"] = jnp.mean(phi)
    else:
      objective = importance.ppo_objective(ratio_log, advantages, mask, eps_low=epsilon,
                                           eps_high=high, delta=delta)
      ratio = jnp.exp(jax.lax.stop_gradient(ratio_log))
      if delta is not None:
        ratio = jnp.minimum(ratio, delta)
      adv = advantages[:, None]
      low_clipped = (ratio < 1 - epsilon) & (adv < 0)
      high_clipped = (ratio > 1 + high) & (adv > 0)
      metrics.update({"clip_ratio/low_mean": low_clipped, "clip_ratio/high_mean": high_clipped,
                      "clip_ratio/region_mean": low_clipped | high_clipped})
    per_token = -objective
    for weight in weights:
      per_token = per_token * weight
    if beta != 0:
      kl = regularizers.kl_penalty(log_probs, ref_log_probs, mask, estimator="k3")
      if use_bias_correction_kl:
        kl = regularizers.bias_corrected_kl(kl, ratio_log, mask)
      per_token = per_token + beta * kl
      metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl), on)
    loss = aggregation.aggregate(per_token, mask, mode=mode, max_length=max_completion_length)
    metrics["policy_loss"] = jax.lax.stop_gradient(loss)
    if entropy is not None:
      metrics["entropy"] = _masked_mean(jax.lax.stop_gradient(entropy), on)
    if entropy_coef != 0:
      if entropy is None:
        raise ValueError("entropy_coef != 0 needs entropy (the [B, L] per-token entropies); "
                         "pass entropy=... or set entropy_coef=0")
      bonus_mask = mask if entropy_mask is None else entropy_mask
      loss = loss - entropy_coef * regularizers.entropy_bonus(entropy, bonus_mask)
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                 "cispo_clip_ratio"):
      if name in metrics:
        metrics[name] = _trl_mean(metrics[name], on, importance_sampling_level)
    return loss, metrics

  return loss_fn


def _trl_mean(flags: jax.Array, on: jax.Array, level: str) -> jax.Array:
  """TRL's logged mean: over tokens, or over sequences (all `B`) for sequence-level ratios."""
  if level == "token":
    return _masked_mean(flags, on)
  return jnp.mean(jnp.any(flags & on, axis=1).astype(jnp.float32))


def _tunix_aggregate(values, mask, loss_agg_mode: str, norm):
  if loss_agg_mode == "token-mean":
    return aggregation.aggregate(values, mask, mode="token_mean")
  if loss_agg_mode == "sequence-mean-token-mean":
    return aggregation.aggregate(values, mask, mode="sequence_mean", rows="nonempty")
  if loss_agg_mode == "sequence-mean-token-scale":
    return aggregation.aggregate(values, mask, mode="constant", rows="nonempty",
                                 max_length=norm)
  if loss_agg_mode == "seq-mean-token-sum" or norm is None:
    return aggregation.aggregate(values, mask, mode="sequence_sum", rows="nonempty")
  return aggregation.aggregate(values, mask, mode=lambda v, m: jnp.sum(v) / norm)


def tunix_loss(
    loss_agg_mode: str = "sequence-mean-token-mean",
    loss_algo: str = "grpo",
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    epsilon_c: float | None = None,
    beta: float = 0.04,
    kl_loss_mode: str = "kl",
    kl_clamp_value: float | None = None,
    norm: float | None = None,
) -> LossFn:
  """tunix 0.1.7's GRPO policy loss (`algo_core.grpo_loss_fn`), composed from the parts.

  The token log ratio is clamped to `[-20, 20]`; with `loss_algo="gspo-token"` it becomes
  GSPO-token's `sg(s_n) + log pi - sg(log pi)` (`s_n` the mean clamped log ratio, as
  `log_ratio(level="sequence_token")`), clamped above at 10. Then `ppo_objective(eps_low=
  epsilon, eps_high=epsilon_high or epsilon, dual_clip=epsilon_c)`, aggregated by
  `loss_agg_mode` (rows: tunix's non-empty rows):

  * `"token-mean"`: `"token_mean"`;
  * `"sequence-mean-token-mean"`: `"sequence_mean"`, `rows="nonempty"`;
  * `"sequence-mean-token-scale"`: `"constant"`, `rows="nonempty"`, `max_length=norm` (default
    the padded length);
  * `"seq-mean-token-sum"`: `"sequence_sum"`, `rows="nonempty"`;
  * `"sequence-mean-token-sum-norm"`: the token sum divided by `norm` (default: the non-empty
    rows, i.e. `"sequence_sum"`, `rows="nonempty"`).

  With `ref_log_probs`, the KL estimate `kl_loss_mode` (`"kl"`, `"mse_kl"`, `"low_var_kl"`:
  k1, k2, k3, clamped to `kl_clamp_value`) is aggregated the same way and `beta` times it is
  added; without `ref_log_probs` there is no KL term, whatever `beta` (as in tunix, whose
  default `beta=0.04` is kept here). The call's `sampler_is_weights` (tunix's
  `TrainExample.sampler_is_weights`, e.g. `off_policy.importance_correction(...).weights`)
  and `token_weights` multiply each token's policy term before it is aggregated, not the KL
  term, and leave the normalisers as they are.

  Args:
    loss_agg_mode: one of `TUNIX_LOSS_AGG_MODES`.
    loss_algo: `"grpo"` or `"gspo-token"`.
    epsilon: the lower clip range.
    epsilon_high: the upper clip range; `None`: `epsilon`.
    epsilon_c: the dual-clip constant (`>= 1`), or `None`.
    beta: the KL coefficient.
    kl_loss_mode: tunix's KL estimator name.
    kl_clamp_value: the clamp on the KL estimate, or `None`.
    norm: the custom normaliser of the two modes that take one, or `None`.

  Returns:
    `loss_fn(log_probs, old_log_probs, ref_log_probs, advantages, mask, *, entropy=None,
    sampler_is_weights=None, token_weights=None) -> (loss, metrics)`, each weight `[B, L]`
    or `[B]`; metrics: `"pg_loss"`, `"pg_clipfrac"`, `"pg_clipfrac_lower"`, `"ppo_kl"`,
    `"sampler_is/weight_mean"`, `"sampler_is/weight_min"` (1 without the weights), and with
    `ref_log_probs` `"kl"` (token mean) and `"kl_loss"`; `entropy` is only logged
    (`"entropy"`, aggregated by `loss_agg_mode`), as tunix does.

  Raises:
    ValueError: on an unknown name or a setting out of range, here; on inputs that do not
      fit, when `loss_fn` is traced.
  """
  _check_choice("loss_agg_mode", loss_agg_mode, TUNIX_LOSS_AGG_MODES)
  _check_choice("loss_algo", loss_algo, TUNIX_LOSS_ALGOS)
  _check_choice("kl_loss_mode", kl_loss_mode, regularizers.KL_NAMES)
  checks.check_number("epsilon", epsilon, low=0.0, high=1.0, high_open=True)
  high = epsilon if epsilon_high is None else epsilon_high
  checks.check_number("epsilon_high", high, low=0.0)
  checks.check_number("beta", beta, low=0.0)
  if norm is not None:
    checks.check_number("norm", norm, low=0.0, low_open=True)
  estimator = regularizers.KL_NAMES[kl_loss_mode]

  def loss_fn(log_probs, old_log_probs, ref_log_probs, advantages, mask, *, entropy=None,
              sampler_is_weights=None, token_weights=None):
    on = _inputs(log_probs, old_log_probs, ref_log_probs, advantages, mask, False)
    dtype = jnp.result_type(log_probs)
    weights = [_weights(name, value, on, dtype) for name, value in
               (("sampler_is_weights", sampler_is_weights), ("token_weights", token_weights))
               if value is not None]
    token = importance.log_ratio(log_probs, old_log_probs, mask, level="token")
    ppo_kl = _masked_mean(-jax.lax.stop_gradient(token), on)
    token = jnp.clip(token, -20.0, 20.0)
    if loss_algo == "gspo-token":
      lengths = jnp.maximum(jnp.sum(on, axis=1, keepdims=True), 1).astype(token.dtype)
      sequence = jnp.sum(token, axis=1, keepdims=True) / lengths
      moving = token - jax.lax.stop_gradient(token)
      token = jnp.where(on, jnp.minimum(jax.lax.stop_gradient(sequence) + moving, 10.0), 0.0)
    objective = importance.ppo_objective(token, advantages, mask, eps_low=epsilon,
                                         eps_high=high, dual_clip=epsilon_c)
    ratio = jnp.exp(jax.lax.stop_gradient(token))
    adv = jnp.where(jnp.any(on, axis=1), jax.lax.stop_gradient(advantages), 0.0)[:, None]
    unclipped, clipped = -adv * ratio, -adv * jnp.clip(ratio, 1 - epsilon, 1 + high)
    larger = jnp.maximum(unclipped, clipped)
    lower = (larger > -epsilon_c * adv) & (adv < 0) if epsilon_c is not None \
        else jnp.zeros(on.shape, bool)
    per_token = -objective
    for weight in weights:
      per_token = per_token * weight
    loss = _tunix_aggregate(per_token, mask, loss_agg_mode, norm)
    one = jnp.ones((), dtype)
    sampler_weights = weights[0] if sampler_is_weights is not None else None
    metrics = {"pg_loss": jax.lax.stop_gradient(loss),
               "sampler_is/weight_mean": one if sampler_weights is None
               else _masked_mean(sampler_weights, on),
               "sampler_is/weight_min": one if sampler_weights is None
               else jnp.min(jnp.where(on, sampler_weights, jnp.inf)),
               "pg_clipfrac": _masked_mean(clipped > unclipped, on),
               "pg_clipfrac_lower": _tunix_aggregate(lower.astype(log_probs.dtype), mask,
                                                     loss_agg_mode, norm),
               "ppo_kl": ppo_kl}
    if ref_log_probs is not None:
      kl = regularizers.kl_penalty(log_probs, ref_log_probs, mask, estimator=estimator,
                                   clamp=kl_clamp_value)
      kl_loss = _tunix_aggregate(kl, mask, loss_agg_mode, norm)
      metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl), on)
      metrics["kl_loss"] = jax.lax.stop_gradient(kl_loss)
      if beta != 0:
        loss = loss + beta * kl_loss
    if entropy is not None:
      metrics["entropy"] = _tunix_aggregate(jax.lax.stop_gradient(entropy), mask,
                                            loss_agg_mode, norm)
    return loss, metrics

  return loss_fn
