"""Discounted returns over time-major `[T, B, ...]` rollouts.

Episode ends come in two kinds and are kept apart:
  * `terminated`: the MDP reached a terminal state; nothing follows, so the
    return is not bootstrapped.
  * `truncated`: the episode was cut by a time limit; the true return continues,
    so it is bootstrapped from an estimate of the value of the final
    observation (`bootstrap_value_t`, zero when there is no critic).
When both are set, `terminated` wins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reinforce_jax import _checks


def discounted_returns(
    reward_t: jax.Array,
    terminated_t: jax.Array,
    truncated_t: jax.Array,
    *,
    gamma: float | jax.Array,
    bootstrap_value_t: jax.Array | None = None,
    last_value: jax.Array | None = None,
) -> jax.Array:
  """Discounted reward-to-go, computed with a reverse `lax.scan`.

  `G_t = r_t + gamma * c_t`, where the continuation `c_t` is 0 if the episode
  terminated at t, `bootstrap_value_t[t]` if it was truncated at t, and
  `G_{t+1}` otherwise; after the last step `G_T = last_value`.

  Args:
    reward_t: `[T, ...]` float rewards, time-major.
    terminated_t: `[T, ...]` bool, the episode terminated at step t.
    truncated_t: `[T, ...]` bool, the episode was truncated at step t.
    gamma: discount factor in [0, 1].
    bootstrap_value_t: `[T, ...]` value of the final observation of step t, used
      where the episode was truncated. Defaults to zeros (returns are cut).
    last_value: `[...]` value of the observation after the rollout's last step,
      for episodes still running at its end. Defaults to zeros (cut).

  Returns:
    `[T, ...]` float returns `G_t`, same shape and dtype as `reward_t`.
  """
  _checks.check_rank_at_least("reward_t", reward_t, 1)
  _checks.check_same_shape(
      reward_t=reward_t, terminated_t=terminated_t, truncated_t=truncated_t)
  if bootstrap_value_t is None:
    bootstrap_value_t = jnp.zeros_like(reward_t)
  _checks.check_same_shape(reward_t=reward_t, bootstrap_value_t=bootstrap_value_t)
  if last_value is None:
    last_value = jnp.zeros_like(reward_t[0])
  _checks.check_same_shape(**{"reward_t[0]": reward_t[0], "last_value": last_value})

  def backward(next_return, xs):
    reward, terminated, truncated, bootstrap = xs
    continuation = jnp.where(
        terminated, 0.0, jnp.where(truncated, bootstrap, next_return))
    ret = reward + gamma * continuation
    return ret, ret

  _, returns = jax.lax.scan(
      backward, last_value.astype(reward_t.dtype),
      (reward_t, terminated_t, truncated_t, bootstrap_value_t.astype(reward_t.dtype)),
      reverse=True, unroll=reward_t.shape[0] == 1)
  return returns
