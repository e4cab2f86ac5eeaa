"""Parallel rollouts: `vmap` over environments, `lax.scan` over time.

The rollout evaluates the policy once per step and records `log_prob` of the
sampled action with its dependence on the parameters intact, so a caller can
differentiate a loss built on the trajectory without a second forward pass.
Actions are sampled, then cut from the graph with `stop_gradient`: the score
function estimator differentiates `log_prob(a)` at a fixed `a`.

A sample is what `score` needs to evaluate `log_prob` again later (PPO's
epochs): the action itself, or for a `distrax.Transformed` distribution (a
tanh-squashed Gaussian) the pre-transform draw `u`, since inverting `tanh` near
the bounds loses precision; the environment receives `bijector.forward(u)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp

from reinforce_jax import _sampling, policies


def _small_categorical(dist) -> bool:
  """Whether `dist` takes the reduction-free categorical path (see `_sampling`)."""
  return (type(dist) in (distrax.Categorical, policies.Categorical)
          and dist.num_categories <= _sampling.UNROLL_MAX)


def split_output(output) -> tuple[Any, jax.Array | None]:
  """A policy returns a distribution or `(distribution, value)`: `(dist, value or None)`."""
  if isinstance(output, tuple):
    dist, value = output
    return dist, value
  return output, None


def score(dist, sample: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(log_prob, entropy)` of a sample drawn by `act`, differentiable in `dist`.

  For a `distrax.Transformed`, `log_prob = base.log_prob(u) - log|det J(u)|` at
  the stored pre-transform draw `u` (exact change of variables, no inverse), and
  the entropy is the base distribution's (the transformed one has no closed form).
  """
  if _small_categorical(dist):
    return _sampling.categorical_score(dist.logits, sample)
  if isinstance(dist, distrax.Transformed):
    log_prob = dist.distribution.log_prob(sample) - dist.bijector.forward_log_det_jacobian(
        sample)
    return log_prob, dist.distribution.entropy()
  return dist.log_prob(sample), dist.entropy()


def act(dist, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Samples one action per batch entry: `(env_action, sample, log_prob, entropy)`.

  `env_action` goes to the environment; `sample` is what `score` re-evaluates
  (the same array except for transformed distributions); neither has a gradient
  path. A `distrax.Categorical` with few categories takes a reduction-free path
  with the same distribution and values (see `_sampling`).
  """
  if _small_categorical(dist):
    action, log_prob, entropy = _sampling.categorical_statistics(dist.logits, key)
    return action, action, log_prob, entropy
  base = dist.distribution if isinstance(dist, distrax.Transformed) else dist
  sample = jax.lax.stop_gradient(base.sample(seed=key))
  env_action = sample
  if isinstance(dist, distrax.Transformed):
    env_action = jax.lax.stop_gradient(dist.bijector.forward(sample))
  log_prob, entropy = score(dist, sample)
  return env_action, sample, log_prob, entropy


class EnvCarry(NamedTuple):
  """What a rollout advances: batched environment state and episode counters."""

  env_state: Any              # EnvState pytree, leaves [B, ...]
  obs: jax.Array              # [B, ...] current observations
  episode_return: jax.Array   # [B] float32, undiscounted return so far
  episode_length: jax.Array   # [B] int32, steps so far in the current episode


class Trajectory(NamedTuple):
  """Time-major `[T, B]` record of a rollout."""

  obs: jax.Array             # [T, B, ...] observations the actions were taken in
  sample: jax.Array          # [T, B, ...] what `score` re-evaluates (usually the action)
  log_prob: jax.Array        # [T, B] float32, differentiable w.r.t. params
  entropy: jax.Array         # [T, B] float32, entropy of the policy at each obs
  value: jax.Array           # [T, B] float32 value estimates (zeros without a critic)
  bootstrap_value: jax.Array  # [T, B] value of the final observation where truncated, else 0
  reward: jax.Array          # [T, B] float32
  terminated: jax.Array      # [T, B] bool
  truncated: jax.Array       # [T, B] bool
  episode_return: jax.Array  # [T, B] float32, return of the episode that ended at t (else 0)
  episode_length: jax.Array  # [T, B] int32, length of the episode that ended at t (else 0)


def reset_envs(key: jax.Array, env, env_params, num_envs: int) -> EnvCarry:
  """Resets `num_envs` environments: an `EnvCarry` with batch size `num_envs`."""
  if hasattr(env, "reset_batch"):
    obs, env_state = env.reset_batch(key, env_params, num_envs)
  else:  # a bare gymnax-style environment
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
    *,
    unroll: int = 1,
) -> tuple[EnvCarry, Trajectory]:
  """Steps `B` environments `num_steps` times with the policy `apply_fn(params, obs)`.

  Args:
    key: PRNG key for the whole rollout.
    params: policy parameters.
    apply_fn: maps `(params, obs [B, ...])` to a distribution with batch shape
      `[B]`, or to `(distribution, value [B])`.
    env: an environment with the gymnax 1.x `step` (auto-resetting).
    env_params: the environment's params, shared by all `B` environments.
    carry: the batched environment state to continue from.
    num_steps: rollout length `T` (static).
    unroll: steps per iteration of the compiled loop (`lax.scan`'s `unroll`):
      fewer, larger iterations for small batches, where each iteration's fixed
      cost dominates; the same values either way.

  Returns:
    `(carry, trajectory)`: the advanced `EnvCarry` and a `[T, B]` `Trajectory`.
    With a critic, `trajectory.bootstrap_value` holds the value of the final
    observation of every truncated episode (computed only on steps where some
    environment was truncated).
  """
  num_envs = carry.episode_return.shape[0]
  if hasattr(env, "step_batch"):
    env_step = env.step_batch
  else:  # a bare gymnax-style environment: one key per environment
    def env_step(key, state, action, params):
      return jax.vmap(env.step, in_axes=(0, 0, 0, None))(
          jax.random.split(key, num_envs), state, action, params)

  def value_of(obs):
    return jax.lax.stop_gradient(split_output(apply_fn(params, obs))[1])

  def one_step(carry: EnvCarry, keys):
    key_action, key_env = keys
    dist, value = split_output(apply_fn(params, carry.obs))
    action, sample, log_prob, entropy = act(dist, key_action)
    obs, env_state, reward, terminated, truncated, info = env_step(
        key_env, carry.env_state, action, env_params)
    if value is None:
      value = bootstrap = jnp.zeros_like(reward)
    else:
      bootstrap = jax.lax.cond(
          jnp.any(truncated),
          lambda: jnp.where(truncated, value_of(info["final_observation"]), 0.0),
          lambda: jnp.zeros_like(reward))
    episode_return = carry.episode_return + reward
    episode_length = carry.episode_length + 1
    done = jnp.logical_or(terminated, truncated)
    transition = Trajectory(
        obs=carry.obs,
        sample=sample,
        log_prob=log_prob,
        entropy=entropy,
        value=value,
        bootstrap_value=bootstrap,
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
  return jax.lax.scan(one_step, carry, (keys[:, 0], keys[:, 1]),
                      unroll=num_steps if num_steps == 1 else min(unroll, num_steps))
