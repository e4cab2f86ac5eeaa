"""Parallel rollouts: `vmap` over environments, `lax.scan` over time.

The rollout evaluates the policy once per step and records `log_prob` of the
sampled action with its dependence on the parameters intact, so a caller can
differentiate a loss built on the trajectory without a second forward pass.
Actions are sampled, then cut from the graph with `stop_gradient`: the score
function estimator differentiates `log_prob(a)` at a fixed `a`.

A sample is what `score` needs to evaluate `log_prob` again later (PPO's
epochs): the action itself, or for a `policies.SquashedGaussian` the
pre-`tanh` draw `u`, since inverting `tanh` near the bounds loses precision; the
environment receives `bijector.forward(u)`. The distribution owns this (its
`sample_and_score` and `score` methods); the rollout does not look at its type.

A recurrent policy (`policies.Policy` with `recurrent=True`) keeps its carry in
`EnvCarry.policy_carry`; the rollout resets it where an episode ended, and
`replay` evaluates a recorded rollout again with the same resets.

With a `normalizer` (`reinforce_jax.rl.normalization.ObsNormalizer`), the
policy sees observations normalised by the shared statistics in
`EnvCarry.obs_stats`, which the rollout advances by the normaliser's rule;
`EnvCarry.obs` stays the environments' own, and `Trajectory.obs` holds what the
policy saw.

While tracing, the rollout checks what the policy returns against the batch
and the environment: a distribution of batch shape `[B]`, a value of shape
`[B]`, as many categories as the environment has discrete actions, or actions
of the environment's `action_shape`. A mismatch raises `ValueError` naming
both sides before anything is compiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax.rl import policies
from reinforce_jax.rl.normalization import ObsNormalizer, ObsStats
from reinforce_jax.rl.policies import Policy, as_policy, score, split_output

act = policies.sample_and_score  # `(env_action, sample, log_prob, entropy)` of one draw

__all__ = ["batched_step", "EnvCarry", "Trajectory", "act", "replay", "reset_envs", "rollout",
           "score", "split_output"]


def _carry_policy(apply_fn) -> Policy:
  """A `Policy`, or a plain feedforward `apply(params, obs)` as one."""
  if isinstance(apply_fn, Policy):
    return apply_fn
  return Policy(init=None, apply=lambda params, carry, obs: (carry, apply_fn(params, obs)))


def _env_name(env) -> str:
  name = getattr(env, "name", None)
  return name if isinstance(name, str) else type(env).__name__


def _action_spec(env, env_params) -> tuple[int | None, tuple[int, ...]] | None:
  """`(num_actions, ())` for discrete actions, `(None, action_shape)` for continuous ones.

  Read from the environment's `num_actions` or `action_shape` (this library's
  environments and adapters), else from a gymnax-style `action_space(params)`
  (`.n`, or `.shape` for a box); `None` where the environment declares neither.
  """
  for attribute in ("num_actions", "action_shape"):
    try:
      value = getattr(env, attribute)
    except (AttributeError, NotImplementedError):
      continue
    if attribute == "num_actions" and isinstance(value, int | np.integer):
      return int(value), ()
    if attribute == "action_shape" and isinstance(value, tuple | list):
      return None, tuple(int(d) for d in value)
  space_fn = getattr(env, "action_space", None)
  if callable(space_fn):
    try:
      space = space_fn(env_params)
    except Exception:  # noqa: BLE001 - an unreadable space is left unchecked
      return None
    if isinstance(getattr(space, "n", None), int | np.integer):
      return int(space.n), ()
    if hasattr(space, "low") and isinstance(getattr(space, "shape", None), tuple | list):
      return None, tuple(int(d) for d in space.shape)
  return None


def _check_policy_output(dist, value, env_action, log_prob, env, env_params,
                        num_envs: int) -> None:
  """Raises `ValueError` unless one step's policy output fits `num_envs` environments of `env`.

  Shapes only, so it costs nothing at run time: the distribution's batch shape
  and `log_prob` are `[B]`, the value (if any) is `[B]`, and the actions fit
  the environment's action space (the number of categories of a categorical
  distribution against `num_actions`; the shape of one environment's action
  against `action_shape`).
  """
  batch = getattr(dist, "batch_shape", None)
  batch = tuple(jnp.shape(log_prob)) if batch is None else tuple(batch)
  if batch != (num_envs,) or tuple(jnp.shape(log_prob)) != (num_envs,):
    hint = ""
    if len(batch) > 1 and batch[0] == num_envs:
      hint = ("; observations with more than one axis per environment need a policy that "
              "flattens them (flatten=True, or torso='cnn' for images)")
    raise ValueError(
        f"the policy's distribution must have batch shape [B] = [{num_envs}] (one entry per "
        f"environment), got {list(batch)} (log_prob of shape {list(jnp.shape(log_prob))})"
        f"{hint}")
  if value is not None and tuple(jnp.shape(value)) != (num_envs,):
    raise ValueError(f"the policy's value must have shape [B] = [{num_envs}], got "
                     f"{list(jnp.shape(value))} (for a [B, 1] head, return value[..., 0])")
  spec = _action_spec(env, env_params)
  if spec is None:
    return
  num_actions, action_shape = spec
  name = _env_name(env)
  per_env = tuple(jnp.shape(env_action))[1:]
  if num_actions is not None:
    categories = getattr(dist, "num_categories", None)
    if isinstance(categories, int | np.integer) and categories != num_actions:
      raise ValueError(
          f"the policy's distribution has {categories} actions but {name} has {num_actions}: "
          f"build the policy with {num_actions} actions (e.g. CategoricalPolicy({num_actions}))")
    if per_env != ():
      raise ValueError(f"{name} takes one integer action per environment (actions [B]), but the "
                       f"policy's actions have shape {list(jnp.shape(env_action))}")
  elif per_env != action_shape and not (per_env == () and action_shape == (1,)):
    raise ValueError(
        f"{name} takes actions of shape {list(action_shape)} per environment, but the policy's "
        f"actions have shape {list(per_env)} (actions {list(jnp.shape(env_action))}): build the "
        f"policy with action_dim={math.prod(action_shape)}")


def _reset_where(done: jax.Array, fresh, carry):
  """`carry` with the entries of finished episodes replaced by `fresh` ones."""
  def pick(f, c):
    return jnp.where(done.reshape(done.shape + (1,) * (c.ndim - done.ndim)), f, c)
  return jax.tree.map(pick, fresh, carry)


class EnvCarry(NamedTuple):
  """What a rollout advances: batched environment state and episode counters."""

  env_state: Any              # EnvState pytree, leaves [B, ...]
  obs: jax.Array              # [B, ...] current observations
  episode_return: jax.Array   # [B] float32, undiscounted return so far
  episode_length: jax.Array   # [B] int32, steps so far in the current episode
  policy_carry: Any = ()      # a recurrent policy's state, leaves [B, ...]; () if none
  # The shared observation statistics (`normalization.ObsStats`, not batched) while a
  # rollout with a normaliser runs; () otherwise (`TrainState.obs_stats` keeps them).
  obs_stats: Any = ()


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


def reset_envs(key: jax.Array, env, env_params, num_envs: int, policy=None) -> EnvCarry:
  """Resets `num_envs` environments: an `EnvCarry` with batch size `num_envs`.

  With a recurrent `policy` (a `Policy`, or a module `as_policy` takes), the
  carry starts from its `initial_carry`.

  Raises:
    ValueError: if `num_envs` is not a positive integer.
  """
  if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
    raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
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
      policy_carry=() if policy is None else as_policy(policy).initial_carry(num_envs),
  )


def batched_step(env, num_envs: int):
  """`step(key, state, action, params)` of `num_envs` environments: `env.step_batch`, or
  `env.step` vmapped with one key per environment (a bare gymnax-style environment)."""
  if hasattr(env, "step_batch"):
    return env.step_batch

  def step(key, state, action, params):
    return jax.vmap(env.step, in_axes=(0, 0, 0, None))(
        jax.random.split(key, num_envs), state, action, params)

  return step


def _check_normalizer(normalizer, carry: EnvCarry) -> None:
  if not isinstance(normalizer, ObsNormalizer):
    raise ValueError(f"normalizer must be a normalization.ObsNormalizer or None, got "
                     f"{normalizer!r}")
  if not isinstance(carry.obs_stats, ObsStats):
    raise ValueError("a rollout with a normalizer needs the statistics in carry.obs_stats: "
                     "carry._replace(obs_stats=normalizer.init(obs_shape)); got "
                     f"{carry.obs_stats!r}")
  obs_shape = tuple(jnp.shape(carry.obs))[1:]
  if tuple(jnp.shape(carry.obs_stats.mean)) != obs_shape:
    raise ValueError(f"carry.obs_stats are of observations of shape "
                     f"{list(jnp.shape(carry.obs_stats.mean))}, but the environments' "
                     f"observations have shape {list(obs_shape)}")


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
    normalizer: ObsNormalizer | None = None,
    bootstrap: bool = True,
) -> tuple[EnvCarry, Trajectory]:
  """Steps `B` environments `num_steps` times with the policy `apply_fn(params, obs)`.

  Args:
    key: PRNG key for the whole rollout.
    params: policy parameters.
    apply_fn: maps `(params, obs [B, ...])` to a distribution with batch shape
      `[B]`, or to `(distribution, value [B])`; or a `policies.Policy`, whose
      carry (`carry.policy_carry`) is reset where an episode ends.
    env: an environment with the gymnax 1.x `step` (auto-resetting).
    env_params: the environment's params, shared by all `B` environments.
    carry: the batched environment state to continue from.
    num_steps: rollout length `T` (static).
    unroll: steps per iteration of the compiled loop (`lax.scan`'s `unroll`):
      fewer, larger iterations for small batches, where each iteration's fixed
      cost dominates; the same values either way.
    bootstrap: with a critic, evaluate it on the final observation of every
      truncated episode (`trajectory.bootstrap_value`); False leaves zeros there
      and skips that evaluation (for advantages that treat a truncation as a
      termination: under `jax.vmap` the evaluation would run on every step).
    normalizer: if set, the policy sees observations normalised with the
      shared statistics `carry.obs_stats` (`info["final_observation"]` too,
      for the truncation bootstrap), which are advanced by the normaliser's
      rule: after every step (`per_step`), or with the rollout's `T * B`
      observations at its end. `trajectory.obs` holds the normalised
      observations.

  Returns:
    `(carry, trajectory)`: the advanced `EnvCarry` and a `[T, B]` `Trajectory`.
    With a critic, `trajectory.bootstrap_value` holds the value of the final
    observation of every truncated episode (computed only on steps where some
    environment was truncated).

  Raises:
    ValueError: while tracing, if the policy's output does not fit the batch
      or the environment: a distribution whose batch shape is not `[B]`, a
      value not of shape `[B]`, more or fewer categories than the
      environment's actions, or actions of the wrong shape; with a
      `normalizer`, if `carry.obs_stats` holds no statistics of the
      observations' shape.
  """
  num_envs = carry.episode_return.shape[0]
  policy = _carry_policy(apply_fn)
  fresh = policy.initial_carry(num_envs) if policy.recurrent else ()
  env_step = batched_step(env, num_envs)
  if normalizer is not None:
    _check_normalizer(normalizer, carry)
  per_step = normalizer is not None and normalizer.per_step
  seen = carry.obs_stats  # with per_step=False: what normalises the whole rollout

  def value_of(policy_carry, obs):
    return jax.lax.stop_gradient(split_output(policy.apply(params, policy_carry, obs)[1])[1])

  def one_step(carry: EnvCarry, keys):
    key_action, key_env = keys
    stats = None if normalizer is None else carry.obs_stats if per_step else seen
    policy_obs = carry.obs if stats is None else normalizer.normalize(stats, carry.obs)
    policy_carry, output = policy.apply(params, carry.policy_carry, policy_obs)
    dist, value = split_output(output)
    action, sample, log_prob, entropy = act(dist, key_action)
    _check_policy_output(dist, value, action, log_prob, env, env_params, num_envs)
    obs, env_state, reward, terminated, truncated, info = env_step(
        key_env, carry.env_state, action, env_params)
    if per_step:
      stats = normalizer.update(stats, obs)
    if value is None:
      value = bootstrap_value = jnp.zeros_like(reward)
    elif not bootstrap:
      bootstrap_value = jnp.zeros_like(reward)
    else:
      def final_value():
        final = info["final_observation"]
        if stats is not None:
          final = normalizer.normalize(stats, final)
        return jnp.where(truncated, value_of(policy_carry, final), 0.0)

      bootstrap_value = jax.lax.cond(jnp.any(truncated), final_value,
                                     lambda: jnp.zeros_like(reward))
    episode_return = carry.episode_return + reward
    episode_length = carry.episode_length + 1
    done = jnp.logical_or(terminated, truncated)
    transition = Trajectory(
        obs=policy_obs,
        sample=sample,
        log_prob=log_prob,
        entropy=entropy,
        value=value,
        bootstrap_value=bootstrap_value,
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
        policy_carry=_reset_where(done, fresh, policy_carry) if policy.recurrent else (),
        obs_stats=stats if per_step else carry.obs_stats,
    )
    if normalizer is not None and not per_step:
      return carry, (transition, obs)
    return carry, transition

  # Every step's (action, environment) keys in one draw: on a CPU each threefry
  # call is a small loop, so fewer, larger calls are cheaper.
  keys = jax.random.split(key, (num_steps, 2))
  carry, out = jax.lax.scan(one_step, carry, (keys[:, 0], keys[:, 1]),
                            unroll=num_steps if num_steps == 1 else min(unroll, num_steps))
  if normalizer is None or per_step:
    return carry, out
  traj, new_obs = out  # the rollout's observations, merged in one batch
  stats = normalizer.update(seen, new_obs.reshape((-1,) + new_obs.shape[2:]))
  return carry._replace(obs_stats=stats), traj


def replay(params, policy: Policy, policy_carry, obs: jax.Array, sample: jax.Array,
           done: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(log_prob, entropy, value)`, `[T, B]`, of a recorded rollout, evaluated again.

  A recurrent policy is run over the sequence from the rollout's first carry,
  reset where an episode ended (`done`, `[T, B]`) just as in the rollout, so
  the same parameters give the rollout's own values. `value` is zeros without a
  critic.

  Raises:
    ValueError: if `obs` and `sample` do not start with the `[T, B]` of `done`.
  """
  if jnp.ndim(done) != 2:
    raise ValueError(f"done must have shape [T, B], got {list(jnp.shape(done))}")
  for name, x in (("obs", obs), ("sample", sample)):
    if tuple(jnp.shape(x))[:2] != tuple(jnp.shape(done)):
      raise ValueError(f"{name} must have shape [T, B, ...] = {list(jnp.shape(done))} + [...], "
                       f"got {list(jnp.shape(x))} (done has shape {list(jnp.shape(done))})")
  fresh = policy.initial_carry(done.shape[1]) if policy.recurrent else ()

  def one_step(carry, inputs):
    obs_t, sample_t, done_t = inputs
    carry, output = policy.apply(params, carry, obs_t)
    dist, value = split_output(output)
    log_prob, entropy = score(dist, sample_t)
    if value is None:
      value = jnp.zeros_like(log_prob)
    if policy.recurrent:
      carry = _reset_where(done_t, fresh, carry)
    return carry, (log_prob, entropy, value)

  _, out = jax.lax.scan(one_step, policy_carry, (obs, sample, done))
  return out
