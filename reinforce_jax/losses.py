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

from reinforce_jax import _checks


def reinforce_loss(
    log_prob: jax.Array,
    reward: jax.Array,
    baseline: jax.Array | float | None = None,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
  """Scalar REINFORCE surrogate `-mean(log_prob * stop_gradient(reward - baseline))`.

  The gradient of the result with respect to whatever produced `log_prob` is the
  (negated) score-function estimate of the gradient of the expected reward; the
  gradient with respect to `reward` and `baseline` is exactly zero.

  Args:
    log_prob: `[...]` float array, log-probability of each sampled action under
      the current parameters (e.g. `[T, B]`, time-major).
    reward: the return credited to each action (reward-to-go), same shape as
      `log_prob`.
    baseline: `None`, a scalar, or an array of the same shape as `reward`. It is
      subtracted from `reward` to lower the variance; it must not depend on the
      action it is paired with, or the estimator is biased.
    weights: optional non-negative array of the same shape as `log_prob`; the
      loss becomes a weighted mean `sum(w * l) / sum(w)` (use a 0/1 mask to drop
      padded steps). An all-zero mask gives a loss of 0.

  Returns:
    A float scalar: minimise it to ascend the expected reward.

  Raises:
    ValueError: at trace time, if shapes differ (naming both) or dtypes are not
      floating point.

  Example:
    >>> dist = policy.apply(params, obs)          # distrax.Categorical
    >>> action = dist.sample(seed=key)
    >>> loss = reinforce_loss(dist.log_prob(action), reward)
  """
  _checks.check_floating(log_prob=log_prob)
  _checks.check_same_shape(log_prob=log_prob, reward=reward)
  advantage = reward
  if baseline is not None:
    if jnp.ndim(baseline) != 0:
      _checks.check_same_shape(reward=reward, baseline=baseline)
    advantage = reward - baseline
  advantage = jax.lax.stop_gradient(advantage).astype(log_prob.dtype)
  per_item = log_prob * advantage
  if weights is None:
    return -jnp.mean(per_item)
  _checks.check_same_shape(log_prob=log_prob, weights=weights)
  weights = jax.lax.stop_gradient(weights).astype(log_prob.dtype)
  total = jnp.sum(weights)
  return -jnp.sum(weights * per_item) / jnp.where(total == 0, 1, total)
