"""Evaluating a policy: whole episodes, all in parallel, in one compiled program.

`evaluate(policy, params, env, key, num_episodes)` resets `num_episodes`
environments and steps them together until each has finished its first
episode (or `max_steps` steps have passed), inside one `lax.while_loop` that
stops as soon as every episode is over. It returns each episode's
undiscounted return and length.

    result = evaluate(policy, state.params, env, jax.random.key(0), 100,
                      greedy=True, obs_stats=state.obs_stats)
    result.returns.mean(), result.lengths.max()

The program is compiled once per policy, environment, `num_episodes`,
`greedy` and `max_steps`: other parameters, keys, environment params and
statistics of the same shapes reuse it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax.rl.normalization import ObsNormalizer, ObsStats
from reinforce_jax.rl.policies import Policy, as_policy, split_output
from reinforce_jax.rl.rollouts import _check_policy_output, act, batched_step, reset_envs

__all__ = [
    "Evaluation",
    "evaluate",
    "mode",
]


class Evaluation(NamedTuple):
  """Per-episode results of `evaluate`, each `[num_episodes]`."""

  returns: jax.Array  # float32, undiscounted return of the first episode
  lengths: jax.Array  # int32, its steps (`max_steps` where it had not ended by then)


def mode(dist) -> jax.Array:
  """The most likely action of `dist`, as the environment takes it.

  The argmax of a categorical distribution; the mean of a Gaussian; for a
  transformed distribution (a `tanh`-squashed Gaussian), the transform of its
  base distribution's mode.
  """
  if isinstance(dist, distrax.Transformed):
    return dist.bijector.forward(mode(dist.distribution))
  return dist.mode()


def _as_policy(policy: Any) -> Policy:
  """A `Policy` from anything `as_policy` takes, or a plain `apply(params, obs)`."""
  try:
    return as_policy(policy)
  except ValueError:
    if not callable(policy):
      raise
  return Policy(init=None, apply=lambda params, carry, obs: (carry, policy(params, obs)))


def _max_steps(env, env_params, max_steps) -> int:
  if max_steps is not None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int | np.integer) \
        or max_steps < 1:
      raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    return int(max_steps)
  limit = getattr(env_params, "max_steps_in_episode", None)
  if limit is None:
    name = getattr(env, "name", type(env).__name__)
    raise ValueError(f"{name} declares no max_steps_in_episode in its params: pass "
                     "max_steps=, the most steps an episode may run before it is cut")
  try:
    return int(limit)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise ValueError(f"the environment params' max_steps_in_episode ({limit!r}) is not a "
                     "concrete integer: pass max_steps=") from None


def evaluate(
    policy: Any,
    params: Any,
    env,
    key: jax.Array,
    num_episodes: int,
    *,
    greedy: bool = False,
    obs_stats: ObsStats | None = None,
    env_params: Any = None,
    max_steps: int | None = None,
    normalizer: ObsNormalizer | None = None,
) -> Evaluation:
  """Returns and lengths of `num_episodes` episodes, run in parallel from reset.

  Each of `num_episodes` environments runs from its reset until its first
  episode ends (terminated or truncated by the environment) or `max_steps`
  steps have passed; its later steps are not counted. One jitted program.

  Args:
    policy: a flax linen module (a recurrent one too: its carry starts from
      `initialize_carry` for every environment), an NNX module, a
      `policies.Policy`, or a plain function `apply(params, obs)`, returning a
      distribution with batch shape `[B]` or `(distribution, value)`.
    params: its parameters (`TrainState.params`); `None` for an NNX module
      evaluates the module's own.
    env: an environment with the gymnax 1.x interface: this library's, a
      gymnax 1.x one, or one adapted by `reinforce_jax.envs` (`GymnaxEnv`,
      `BraxEnv`, ...).
    key: PRNG key; the reset uses its first half (`jax.random.split(key)[0]`,
      given to `rollouts.reset_envs`), the steps the second.
    num_episodes: environments run side by side, one episode each.
    greedy: act with the distribution's mode (`mode`: argmax, or the mean)
      instead of sampling.
    obs_stats: the shared observation statistics of a run that normalises
      observations (`TrainState.obs_stats`): the policy sees observations
      normalised by them, which stay fixed (`None` or `()`: raw observations).
    env_params: the environment's params; `env.default_params` if `None`.
    max_steps: the most steps per episode; by default the params'
      `max_steps_in_episode`.
    normalizer: the rule the statistics are applied with (its `eps` and
      `clip`); the default rule if `None`.

  Returns:
    An `Evaluation`: `returns` (float32) and `lengths` (int32), `[num_episodes]`.

  Raises:
    ValueError: for a `num_episodes` or `max_steps` that is not a positive
      integer, an environment without `max_steps_in_episode` and no
      `max_steps`, statistics of another observation shape, or a policy
      whose output does not fit the environment.
  """
  if isinstance(num_episodes, bool) or not isinstance(num_episodes, int | np.integer) \
      or num_episodes < 1:
    raise ValueError(f"num_episodes must be a positive integer, got {num_episodes!r}")
  if env_params is None:
    env_params = env.default_params
  limit = _max_steps(env, env_params, max_steps)
  if isinstance(obs_stats, tuple) and not obs_stats:
    obs_stats = None
  if obs_stats is not None and not isinstance(obs_stats, ObsStats):
    raise ValueError(f"obs_stats must be normalization.ObsStats (TrainState.obs_stats) or "
                     f"None, got {type(obs_stats).__name__}")
  if obs_stats is not None:  # float32, not weakly typed: one program whatever built them
    obs_stats = ObsStats(*(jnp.asarray(x, jnp.float32) for x in obs_stats))
  if normalizer is None:
    normalizer = ObsNormalizer()
  elif not isinstance(normalizer, ObsNormalizer):
    raise ValueError(f"normalizer must be a normalization.ObsNormalizer, got {normalizer!r}")
  if params is None:
    params = _as_policy(policy).init(jax.random.key(0), None) if _is_nnx(policy) else None
    if params is None:
      raise ValueError("params is None: pass the policy's parameters (TrainState.params)")
  return _evaluate(policy, env, int(num_episodes), bool(greedy), limit,
                   normalizer if obs_stats is not None else None,
                   params, key, obs_stats, env_params)


def _is_nnx(policy) -> bool:
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover - flax always ships nnx today
    return False
  return isinstance(policy, nnx.Module)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _evaluate(policy, env, num_episodes: int, greedy: bool, max_steps: int,
              normalizer: ObsNormalizer | None, params, key, obs_stats, env_params):
  apply = _as_policy(policy)
  key_reset, key_run = jax.random.split(key)
  carry = reset_envs(key_reset, env, env_params, num_episodes, apply)
  if normalizer is not None:
    obs_shape = tuple(carry.obs.shape[1:])
    if tuple(obs_stats.mean.shape) != obs_shape:
      raise ValueError(f"obs_stats are of observations of shape {list(obs_stats.mean.shape)}, "
                       f"but the environment's observations have shape {list(obs_shape)}")
  env_step = batched_step(env, num_episodes)

  def body(loop):
    t, env_carry, done, returns, lengths = loop
    key_action, key_env = jax.random.split(jax.random.fold_in(key_run, t))
    obs = env_carry.obs
    if normalizer is not None:
      obs = normalizer.normalize(obs_stats, obs)
    policy_carry, output = apply.apply(params, env_carry.policy_carry, obs)
    dist, value = split_output(output)
    action, _, log_prob, _ = act(dist, key_action)
    _check_policy_output(dist, value, action, log_prob, env, env_params, num_episodes)
    if greedy:
      action = mode(dist)
    next_obs, env_state, reward, terminated, truncated, _ = env_step(
        key_env, env_carry.env_state, action, env_params)
    running = jnp.logical_not(done)
    returns = returns + jnp.where(running, reward, 0.0)
    lengths = lengths + running.astype(jnp.int32)
    done = jnp.logical_or(done, jnp.logical_or(terminated, truncated))
    env_carry = env_carry._replace(env_state=env_state, obs=next_obs, policy_carry=policy_carry)
    return t + 1, env_carry, done, returns, lengths

  def cond(loop):
    t, _, done, _, _ = loop
    return jnp.logical_and(t < max_steps, jnp.logical_not(jnp.all(done)))

  start = (jnp.zeros((), jnp.int32), carry, jnp.zeros((num_episodes,), bool),
           jnp.zeros((num_episodes,), jnp.float32), jnp.zeros((num_episodes,), jnp.int32))
  _, _, _, returns, lengths = jax.lax.while_loop(cond, body, start)
  return Evaluation(returns=returns, lengths=lengths)
