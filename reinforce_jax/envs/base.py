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

S = TypeVar("S")
P = TypeVar("P")


def _is_concrete(x) -> bool:
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


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
    obs_st, state_st, reward, terminated, truncated, info = self.step_env(
        key_step, state, action, params)
    if valid is not None:
      reward = jnp.where(valid, reward, jnp.nan)
      obs_st = jnp.where(valid, obs_st, jnp.nan)
    done = jnp.logical_or(terminated, truncated)
    obs_re, state_re = self.reset_env(key_reset, params)
    state = jax.tree.map(lambda r, s: jnp.where(done, r, s), state_re, state_st)
    obs = jnp.where(done, obs_re, obs_st)
    info = {**info, "final_observation": obs_st}
    return obs, state, reward, terminated, truncated, info

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
