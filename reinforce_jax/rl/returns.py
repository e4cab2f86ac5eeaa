"""Returns and advantages over time-major `[T, B, ...]` rollouts.

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

from reinforce_jax._src import checks

__all__ = [
    "discounted_returns",
    "gae_advantages",
    "lambda_returns",
    "normalize_advantages",
]


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

  Raises:
    ValueError: for mismatched shapes, or a concrete `gamma` outside [0, 1]
      (a traced one cannot be checked).
  """
  checks.check_number("gamma", gamma, low=0.0, high=1.0)
  checks.check_rank_at_least("reward_t", reward_t, 1)
  checks.check_same_shape(
      reward_t=reward_t, terminated_t=terminated_t, truncated_t=truncated_t)
  if bootstrap_value_t is None:
    bootstrap_value_t = jnp.zeros_like(reward_t)
  checks.check_same_shape(reward_t=reward_t, bootstrap_value_t=bootstrap_value_t)
  if last_value is None:
    last_value = jnp.zeros_like(reward_t[0])
  checks.check_same_shape(**{"reward_t[0]": reward_t[0], "last_value": last_value})

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


def _continuation_values(value_t, terminated_t, truncated_t, bootstrap_value_t, last_value):
  """`v'_t`: what follows step t: 0 if terminated, the final observation's value
  if truncated, else the next step's value (`last_value` after the last step)."""
  next_value_t = jnp.concatenate([value_t[1:], last_value[None]], axis=0)
  return jnp.where(terminated_t, 0.0, jnp.where(truncated_t, bootstrap_value_t, next_value_t))


def _check_value_inputs(reward_t, value_t, terminated_t, truncated_t, bootstrap_value_t,
                        last_value):
  checks.check_rank_at_least("reward_t", reward_t, 1)
  checks.check_same_shape(reward_t=reward_t, value_t=value_t, terminated_t=terminated_t,
                           truncated_t=truncated_t)
  if bootstrap_value_t is None:
    bootstrap_value_t = jnp.zeros_like(reward_t)
  checks.check_same_shape(reward_t=reward_t, bootstrap_value_t=bootstrap_value_t)
  checks.check_same_shape(**{"value_t[0]": value_t[0], "last_value": last_value})
  return bootstrap_value_t


def gae_advantages(
    reward_t: jax.Array,
    value_t: jax.Array,
    terminated_t: jax.Array,
    truncated_t: jax.Array,
    last_value: jax.Array,
    *,
    gamma: float | jax.Array,
    lambda_: float | jax.Array,
    bootstrap_value_t: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation, GAE(lambda), with a reverse `lax.scan`.

  `delta_t = r_t + gamma * v'_t - v_t` with `v'_t` the continuation value (0 at
  termination, `bootstrap_value_t` at truncation, else `v_{t+1}`), and
  `A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}`, `A_T = 0`.

  Args:
    reward_t: `[T, ...]` rewards.
    value_t: `[T, ...]` value estimates of the observations the actions were taken in.
    terminated_t, truncated_t: `[T, ...]` bool episode ends.
    last_value: `[...]` value of the observation after the rollout's last step.
    gamma: discount in [0, 1].
    lambda_: GAE mixing in [0, 1]; 1 gives discounted returns minus values, 0
      one-step TD errors.
    bootstrap_value_t: `[T, ...]` value of each step's final observation, used
      where it was truncated (zeros if omitted).

  Returns:
    `(advantages, value_targets)`, both `[T, ...]`, with
    `value_targets = advantages + value_t` (the lambda-returns).

  References:
    Schulman, J. et al. (2016). High-dimensional continuous control using
    generalized advantage estimation. ICLR.

  Raises:
    ValueError: for mismatched shapes, or a concrete `gamma` or `lambda_`
      outside [0, 1] (traced ones cannot be checked).
  """
  checks.check_number("gamma", gamma, low=0.0, high=1.0)
  checks.check_number("lambda_", lambda_, low=0.0, high=1.0)
  bootstrap_value_t = _check_value_inputs(
      reward_t, value_t, terminated_t, truncated_t, bootstrap_value_t, last_value)
  continuation = _continuation_values(
      value_t, terminated_t, truncated_t, bootstrap_value_t, last_value)
  delta_t = reward_t + gamma * continuation - value_t
  chain_t = gamma * lambda_ * (1.0 - jnp.logical_or(terminated_t, truncated_t))

  def backward(next_advantage, xs):
    delta, chain = xs
    advantage = delta + chain * next_advantage
    return advantage, advantage

  _, advantages = jax.lax.scan(
      backward, jnp.zeros_like(last_value, dtype=delta_t.dtype),
      (delta_t, chain_t.astype(delta_t.dtype)), reverse=True)
  return advantages, advantages + value_t


def lambda_returns(
    reward_t: jax.Array,
    value_t: jax.Array,
    terminated_t: jax.Array,
    truncated_t: jax.Array,
    last_value: jax.Array,
    *,
    gamma: float | jax.Array,
    lambda_: float | jax.Array,
    bootstrap_value_t: jax.Array | None = None,
) -> jax.Array:
  """Lambda-returns `G_t = r_t + gamma * [(1 - lambda) v'_t + lambda G_{t+1}]`.

  At an episode end the bracket is the continuation value alone (0 when
  terminated, `bootstrap_value_t` when truncated); after the last step
  `G_T = last_value`. Arguments as in `gae_advantages`: the lambda-return is
  `A_t + v_t` (a telescoping identity), so this is GAE's value target.

  Returns:
    `[T, ...]` float returns.
  """
  return gae_advantages(
      reward_t, value_t, terminated_t, truncated_t, last_value, gamma=gamma,
      lambda_=lambda_, bootstrap_value_t=bootstrap_value_t)[1]


def normalize_advantages(advantages: jax.Array, *, eps: float = 1e-8) -> jax.Array:
  """`(A - mean(A)) / (std(A) + eps)` over every entry (a constant shift and scale)."""
  checks.check_number("eps", eps, low=0.0)
  return (advantages - jnp.mean(advantages)) / (jnp.std(advantages) + eps)
