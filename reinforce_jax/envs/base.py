"""Functional environments with the gymnax 1.x interface.

An environment object holds no state: everything that changes lives in an
`EnvState` pytree and every setting in an `EnvParams` pytree, so a batch of
environments (or of environment settings) is one `jax.vmap`.

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

`step` auto-resets: when an episode ends it returns the first observation and
state of the next episode, and the observation that ended the episode is kept
in `info["final_observation"]`. Nothing is jitted here; the caller decides.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Environment",
]

S = TypeVar("S")
P = TypeVar("P")


def _is_concrete(x) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def _where(flag: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """`jnp.where` with `flag` (`[]` or `[B]`) aligned to the leading axes of `x`."""
  flag = jnp.reshape(flag, jnp.shape(flag) + (1,) * (jnp.ndim(x) - jnp.ndim(flag)))
  return jnp.where(flag, x, y)


def _auto_reset(stepped, reset, valid):
  """Where an episode ended, the reset's observation and state replace the stepped ones."""
  obs_st, state_st, reward, terminated, truncated, info = stepped
  if valid is not None:
    reward = jnp.where(valid, reward, jnp.nan)
    obs_st = _where(valid, obs_st, jnp.nan)
  done = jnp.logical_or(terminated, truncated)
  obs_re, state_re = reset
  state = jax.tree.map(lambda r, s: _where(done, r, s), state_re, state_st)
  obs = _where(done, obs_re, obs_st)
  return obs, state, reward, terminated, truncated, {**info, "final_observation": obs_st}


class Environment(Generic[S, P]):
  """Base class: subclasses implement `reset_env`, `step_env` and the spaces.

  Subclasses whose `step_env` ignores its key set `deterministic_transitions =
  True`; `step` then hands its whole key to the reset instead of splitting it,
  which saves one key derivation per environment per step (random number
  generation dominates the cost of a cheap environment on a CPU).
  """

  deterministic_transitions: bool = False

  @property
  def default_params(self) -> P:
    raise NotImplementedError

  @property
  def name(self) -> str:
    return type(self).__name__

  @property
  def num_actions(self) -> int:
    """Number of discrete actions."""
    raise NotImplementedError

  @property
  def observation_shape(self) -> tuple[int, ...]:
    raise NotImplementedError

  def reset_env(self, key: jax.Array, params: P) -> tuple[jax.Array, S]:
    raise NotImplementedError

  def step_env(
      self, key: jax.Array, state: S, action: jax.Array, params: P
  ) -> tuple[jax.Array, S, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """One transition without auto-reset: `(obs, state, reward, terminated, truncated, info)`."""
    raise NotImplementedError

  def reset(self, key: jax.Array, params: P | None = None) -> tuple[jax.Array, S]:
    """Starts an episode: `(obs, state)`."""
    if params is None:
      params = self.default_params
    return self.reset_env(key, params)

  def step(
      self, key: jax.Array, state: S, action, params: P | None = None
  ) -> tuple[jax.Array, S, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """One transition with auto-reset.

    Args:
      key: PRNG key (used for the transition and for the reset).
      state: the current `EnvState`.
      action: an integer action in `[0, num_actions)`.
      params: `EnvParams`; `None` means `default_params`.

    Returns:
      `(obs, state, reward, terminated, truncated, info)`; after an episode ends
      `obs`/`state` belong to the next episode and `info["final_observation"]`
      holds the last observation of the finished one.

    Raises:
      ValueError: for a non-integer action dtype (always), or an out-of-range
        action given as a concrete value (outside `jax.jit`). Under a transform
        an out-of-range action makes the reward and observation NaN, so the
        error shows up in every downstream number instead of being ignored.
    """
    if params is None:
      params = self.default_params
    valid = self._check_action(action)
    if self.deterministic_transitions:
      key_step = key_reset = key
    else:
      key_step, key_reset = jax.random.split(key)
    stepped = self.step_env(key_step, state, action, params)
    return _auto_reset(stepped, self.reset_env(key_reset, params), valid)

  def reset_batch(self, key: jax.Array, params: P, num_envs: int) -> tuple[jax.Array, S]:
    """`num_envs` independent resets from one key: `(obs [B, ...], state [B, ...])`.

    The default vmaps `reset` over `jax.random.split(key, num_envs)`.
    Environments override it with one batched draw of the same distribution:
    on a CPU, threefry costs a call per key, so one draw of `B` numbers is
    cheaper than `B` keys and `B` draws.
    """
    return jax.vmap(self.reset, in_axes=(0, None))(jax.random.split(key, num_envs), params)

  def step_batch(
      self, key: jax.Array, state: S, action, params: P | None = None
  ) -> tuple[jax.Array, S, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """`step` for a batch of environments (the leading axis of `state` and `action`).

    Draws from the same distribution as `jax.vmap(env.step)` over
    `jax.random.split(key, B)`, which is what it does for environments with
    random transitions. With `deterministic_transitions`, the transitions take
    no key and every environment's would-be reset comes from one
    `reset_batch(key, ...)`, so the batch costs one random draw instead of `B`
    keys and `B` draws. Same checks and auto-reset as `step`.

    Raises:
      ValueError: if `action` has no batch axis, or one of another size than
        `state`'s (checked while tracing), and as `step` does.
    """
    if params is None:
      params = self.default_params
    num_envs = self._batch_size(state, action)
    if not self.deterministic_transitions:
      return jax.vmap(self.step, in_axes=(0, 0, 0, None))(
          jax.random.split(key, num_envs), state, action, params)
    valid = self._check_batch_action(action)
    stepped = jax.vmap(self.step_env, in_axes=(None, 0, 0, None))(key, state, action, params)
    return _auto_reset(stepped, self.reset_batch(key, params, num_envs), valid)

  def _batch_size(self, state: S, action) -> int:
    """`B`, the leading axis of `action`, which must match the leading axis of `state`'s leaves."""
    shape = tuple(jnp.shape(action))
    sizes = {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(state) if jnp.ndim(leaf)}
    if not shape or (sizes and sizes != {shape[0]}):
      expected = f"[{sizes.pop()}, ...]" if len(sizes) == 1 else "[B, ...]"
      raise ValueError(
          f"{self.name}: step_batch takes one action per environment, actions of shape "
          f"{expected} (batch axis first), got shape {list(shape)}; a policy's distribution "
          "must have batch shape [B]")
    return shape[0]

  def _check_batch_action(self, action) -> jax.Array | None:
    """`_check_action` for a batch `[B, ...]` of actions; a `[B]` flag or None."""
    return self._check_action(action)

  def _check_action(self, action) -> jax.Array | None:
    """Validates a discrete action; returns a traced validity flag, or None if known valid."""
    dtype = jnp.result_type(action)
    if not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(
          f"{self.name}: actions must be integers in [0, {self.num_actions}), got dtype {dtype}")
    if _is_concrete(action):
      a = np.asarray(action)
      if a.size and (a.min() < 0 or a.max() >= self.num_actions):
        raise ValueError(
            f"{self.name}: invalid action {a.tolist()}; expected an integer in "
            f"[0, {self.num_actions})")
      return None
    return jnp.logical_and(action >= 0, action < self.num_actions)
