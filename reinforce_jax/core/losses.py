"""The score-function (REINFORCE) surrogate loss.

For a policy pi_theta and a return R that does not depend on theta through a
differentiable path, the log-derivative trick gives

    grad_theta E[R] = E[(R - b) * grad_theta log pi_theta(a)],

for any baseline b that does not depend on the action a. The surrogate below
has exactly this gradient (negated, because optimisers minimise): the returns
and the baseline enter through `jax.lax.stop_gradient`, so `jax.grad` reaches the
parameters only through `log_prob`.

References:
  Williams, R. J. (1992). Simple statistical gradient-following algorithms for
  connectionist reinforcement learning. Machine Learning, 8, 229-256.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reinforce_jax._src import checks

__all__ = [
    "clipped_value_loss",
    "entropy_bonus",
    "ppo_clip_loss",
    "reinforce_loss",
    "value_loss",
]


def reinforce_loss(
    log_prob: jax.Array,
    reward: jax.Array,
    baseline: jax.Array | float | None = None,
    *,
    mask: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Scalar REINFORCE surrogate `-mean(log_prob * stop_gradient(reward - baseline))`.

  The gradient of the result with respect to whatever produced `log_prob` is the
  (negated) score-function estimate of the gradient of the expected reward; the
  gradient with respect to `reward` and `baseline` is exactly zero.

  Entries that `mask` drops (or that have weight 0) never reach the loss or its gradient,
  whatever they hold: padding and finished episodes may hold nan or +-inf in `log_prob`,
  `reward` or `baseline`, and the loss is the same, and the gradient with respect to
  `log_prob` is exactly 0 there, as if they held 0.

  Args:
    log_prob: `[...]` float array, log-probability of each sampled action under
      the current parameters (e.g. `[T, B]`, time-major).
    reward: the return credited to each action (reward-to-go), same shape as
      `log_prob`.
    baseline: `None`, a scalar, or an array of the same shape as `reward`. It is
      subtracted from `reward` to lower the variance; it must not depend on the
      action it is paired with, or the estimator is biased.
    mask: optional bool (or 0/1) array of the same shape as `log_prob`; the loss is the
      mean over the entries it keeps. An all-false mask gives a loss of 0.
    weights: optional real non-negative array of the same shape as `log_prob`; the loss
      becomes a weighted mean `sum(w * l) / sum(w)` (over the entries `mask` keeps, if
      both are given); all-zero weights give a loss of 0. A bool array here is taken as a
      mask.

  Returns:
    A float scalar: minimise it to ascend the expected reward.

  Raises:
    ValueError: at trace time, if shapes differ (naming both) or dtypes are not
      floating point; and, where they are concrete (not traced), for a baseline that is
      not finite, a mask that holds values other than 0 and 1, or weights that are
      negative or not finite (entries the mask drops are not checked).

  Example:
    >>> dist = policy.apply(params, obs)          # distrax.Categorical
    >>> action = dist.sample(seed=key)
    >>> loss = reinforce_loss(dist.log_prob(action), reward)
    >>> padded = reinforce_loss(log_probs, returns, mask=steps_before_done)
  """
  checks.check_floating(log_prob=log_prob)
  checks.check_same_shape(log_prob=log_prob, reward=reward)
  if baseline is not None and jnp.ndim(baseline) != 0:
    checks.check_same_shape(reward=reward, baseline=baseline)
  if weights is not None and jnp.result_type(weights) == jnp.bool_:
    checks.check_same_shape(log_prob=log_prob, weights=weights)
    if mask is not None:
      checks.check_same_shape(log_prob=log_prob, mask=mask)
      checks.check_mask("mask", mask)
      weights = jnp.logical_and(jnp.asarray(mask) != 0, weights)
    mask, weights = weights, None
  if mask is None and weights is None:
    advantage = reward
    if baseline is not None:
      checks.check_number("baseline", baseline)
      advantage = reward - baseline
    advantage = jax.lax.stop_gradient(advantage).astype(log_prob.dtype)
    return -jnp.mean(log_prob * advantage)

  on = jnp.ones(jnp.shape(log_prob), bool)
  if mask is not None:
    checks.check_same_shape(log_prob=log_prob, mask=mask)
    checks.check_mask("mask", mask)
    on = jnp.asarray(mask) != 0
  if weights is not None:
    checks.check_same_shape(log_prob=log_prob, weights=weights)
    checks.check_kept("weights", weights, on, low=0.0)
    weights = jax.lax.stop_gradient(jnp.asarray(weights))
    on = on & (weights != 0)
  if baseline is not None:
    checks.check_kept("baseline", baseline, on)
  # Replace the dropped entries before any arithmetic: their values and gradients are 0.
  log_prob, reward = checks.where_on(on, log_prob, reward)
  advantage = reward
  if baseline is not None:
    if jnp.ndim(baseline) != 0:
      (baseline,) = checks.where_on(on, baseline)
    advantage = reward - baseline
  per_item = log_prob * jax.lax.stop_gradient(advantage).astype(log_prob.dtype)
  if weights is None:
    total = jnp.sum(on).astype(log_prob.dtype)
    return -jnp.sum(per_item) / jnp.maximum(total, 1)
  (weights,) = checks.where_on(on, weights.astype(log_prob.dtype))
  total = jnp.sum(weights)
  return -jnp.sum(weights * per_item) / jnp.where(total == 0, 1, total)


def ppo_clip_loss(
    log_prob: jax.Array,
    old_log_prob: jax.Array,
    advantage: jax.Array,
    *,
    clip_eps: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO's clipped surrogate, to minimise: `-mean(min(r A, clip(r, 1-eps, 1+eps) A))`.

  `r = exp(log_prob - old_log_prob)` is the probability ratio of the current and
  the behaviour policy; `old_log_prob` and `advantage` enter through
  `stop_gradient`. At `r = 1` the gradient equals `reinforce_loss`'s.

  Args:
    log_prob: `[...]` log-probabilities under the current parameters.
    old_log_prob: same shape, under the parameters that collected the data.
    advantage: same shape, advantage estimates.
    clip_eps: the clipping range epsilon, >= 0 (a concrete value is checked).

  Returns:
    `(loss, metrics)` with metrics `approx_kl` (the estimator
    `mean((r - 1) - log r)` of KL(old || new), Schulman 2020) and
    `clip_fraction` (share of samples whose ratio left `[1 - eps, 1 + eps]`).

  References:
    Schulman, J. et al. (2017). Proximal policy optimization algorithms.
    arXiv:1707.06347.
  """
  checks.check_floating(log_prob=log_prob)
  checks.check_same_shape(log_prob=log_prob, old_log_prob=old_log_prob, advantage=advantage)
  checks.check_number("clip_eps", clip_eps, low=0.0)
  old_log_prob = jax.lax.stop_gradient(old_log_prob)
  advantage = jax.lax.stop_gradient(advantage)
  log_ratio = log_prob - old_log_prob
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = -jnp.mean(jnp.minimum(ratio * advantage, clipped * advantage))
  log_ratio = jax.lax.stop_gradient(log_ratio)
  metrics = {
      "approx_kl": jnp.mean(jnp.expm1(log_ratio) - log_ratio),
      "clip_fraction": jnp.mean(jnp.abs(jnp.exp(log_ratio) - 1.0) > clip_eps),
  }
  return loss, metrics


def value_loss(value: jax.Array, target: jax.Array) -> jax.Array:
  """`0.5 * mean((value - stop_gradient(target))^2)`: the critic's regression loss."""
  checks.check_same_shape(value=value, target=target)
  return 0.5 * jnp.mean(jnp.square(value - jax.lax.stop_gradient(target)))


def clipped_value_loss(
    value: jax.Array,
    old_value: jax.Array,
    target: jax.Array,
    *,
    clip_eps: float,
) -> jax.Array:
  """PPO's clipped value loss: `0.5 * mean(max((v - R)^2, (v_clip - R)^2))`.

  `v_clip = v_old + clip(v - v_old, -eps, eps)`, where `v_old` is the critic's
  estimate when the data was collected. Taking the larger of the two squared
  errors keeps an update from moving the value more than `eps` away from
  `v_old` when that lowers the loss (it never helps the critic by moving it
  further). `old_value` and `target` enter through `stop_gradient`. With
  `clip_eps = inf` it equals `value_loss`.

  Args:
    value: `[...]` value estimates under the current parameters.
    old_value: same shape, the estimates when the rollout was collected.
    target: same shape, the regression targets (returns or GAE targets).
    clip_eps: the clipping range, >= 0.

  References:
    Schulman, J. et al. (2017). Proximal policy optimization algorithms (the
    baselines implementation's value clipping). Huang, S. et al. (2022). The 37
    implementation details of proximal policy optimization. ICLR Blog Track.
  """
  checks.check_same_shape(value=value, old_value=old_value, target=target)
  checks.check_number("clip_eps", clip_eps, low=0.0)
  old_value = jax.lax.stop_gradient(old_value)
  target = jax.lax.stop_gradient(target)
  clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
  return 0.5 * jnp.mean(jnp.maximum(jnp.square(value - target), jnp.square(clipped - target)))


def entropy_bonus(entropy: jax.Array) -> jax.Array:
  """Mean policy entropy: a quantity to maximise.

  It is returned with its natural (positive) sign; a loss to minimise subtracts
  it: `loss = policy_loss - entropy_coef * entropy_bonus(entropy)`.
  """
  return jnp.mean(entropy)
