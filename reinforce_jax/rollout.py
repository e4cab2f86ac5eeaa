"""Parallel rollouts: `vmap` over environments, `lax.scan` over time.

The rollout evaluates the policy once per step and records `log_prob` of the
sampled action with its dependence on the parameters intact, so a caller can
differentiate a loss built on the trajectory without a second forward pass.
Actions are sampled, then cut from the graph with `stop_gradient`: the score
function estimator differentiates `log_prob(a)` at a fixed `a`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp

from reinforce_jax import _sampling


def act(dist, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Samples one action per batch entry and scores it: `(action, log_prob, entropy)`.

  The action has no gradient path (the score-function estimator differentiates
  `log_prob(a)` at a fixed `a`); `log_prob` keeps its dependence on the policy's
  parameters; `entropy` is a metric and carries no gradient. A
  `distrax.Categorical` takes a fast path with the same distribution and values
  (see `_sampling`); any other distribution uses its own methods.
  """
  if type(dist) is distrax.Categorical:
    return _sampling.categorical_statistics(dist.logits, key)
  action = jax.lax.stop_gradient(dist.sample(seed=key))
  return action, dist.log_prob(action), jax.lax.stop_gradient(dist.entropy())


class EnvCarry(NamedTuple):
  """What a rollout advances: batched environment state and episode counters."""

  env_state: Any              # EnvState pytree, leaves [B, ...]
  obs: jax.Array              # [B, ...] current observations
  episode_return: jax.Array   # [B] float32, undiscounted return so far
  episode_length: jax.Array   # [B] int32, steps so far in the current episode


class Trajectory(NamedTuple):
  """Time-major `[T, B]` record of a rollout."""

  log_prob: jax.Array        # [T, B] float32, differentiable w.r.t. params
  entropy: jax.Array         # [T, B] float32, entropy of the policy at each obs
  reward: jax.Array          # [T, B] float32
  terminated: jax.Array      # [T, B] bool
  truncated: jax.Array       # [T, B] bool
  episode_return: jax.Array  # [T, B] float32, return of the episode that ended at t (else 0)
  episode_length: jax.Array  # [T, B] int32, length of the episode that ended at t (else 0)


def reset_envs(key: jax.Array, env, env_params, num_envs: int) -> EnvCarry:
  """Resets `num_envs` environments: an `EnvCarry` with batch size `num_envs`."""
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(key, num_envs), env_params)
  return EnvCarry(
      env_state=env_state,
      obs=obs,
      episode_return=jnp.zeros((num_envs,), jnp.float32),
      episode_length=jnp.zeros((num_envs,), jnp.int32),
  )


def rollout(
    key: jax.Array,
    params: Any,
    apply_fn: Callable[[Any, jax.Array], Any],
    env,
    env_params: Any,
    carry: EnvCarry,
    num_steps: int,
) -> tuple[EnvCarry, Trajectory]:
  """Steps `B` environments `num_steps` times with the policy `apply_fn(params, obs)`.

  Args:
    key: PRNG key for the whole rollout.
    params: policy parameters.
    apply_fn: maps `(params, obs [B, ...])` to a distribution with batch shape `[B]`.
    env: an environment with the gymnax 1.x `step` (auto-resetting).
    env_params: the environment's params, shared by all `B` environments.
    carry: the batched environment state to continue from.
    num_steps: rollout length `T` (static).

  Returns:
    `(carry, trajectory)`: the advanced `EnvCarry` and a `[T, B]` `Trajectory`.
  """
  num_envs = carry.episode_return.shape[0]
  env_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def one_step(carry: EnvCarry, keys):
    key_action, key_env = keys
    action, log_prob, entropy = act(apply_fn(params, carry.obs), key_action)
    obs, env_state, reward, terminated, truncated, _ = env_step(
        jax.random.split(key_env, num_envs), carry.env_state, action, env_params)
    episode_return = carry.episode_return + reward
    episode_length = carry.episode_length + 1
    done = jnp.logical_or(terminated, truncated)
    transition = Trajectory(
        log_prob=log_prob,
        entropy=entropy,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        episode_return=jnp.where(done, episode_return, 0.0),
        episode_length=jnp.where(done, episode_length, 0),
    )
    carry = EnvCarry(
        env_state=env_state,
        obs=obs,
        episode_return=jnp.where(done, 0.0, episode_return),
        episode_length=jnp.where(done, 0, episode_length),
    )
    return carry, transition

  # Every step's (action, environment) keys in one draw: on a CPU each threefry
  # call is a small loop, so fewer, larger calls are cheaper.
  keys = jax.random.split(key, (num_steps, 2))
  return jax.lax.scan(one_step, carry, (keys[:, 0], keys[:, 1]), unroll=num_steps == 1)
