"""Adapters from other libraries' functional environments to this library's interface.

Each gives `reset(key, params) -> (obs, state)` and
`step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)`
with auto-reset and `info["final_observation"]` (`reinforce_jax.envs.base`):

- `BraxEnv`: a Brax environment (`brax.envs.get_environment(name)`), with
  Brax's own `EpisodeWrapper` for the time limit. Brax's `done` covers both
  endings and `info["truncation"]` says which: `truncated = truncation`,
  `terminated = done and not truncation`.
- `JumanjiEnv`: a Jumanji environment. Its `TimeStep` ends an episode with
  `step_type == LAST`; `discount == 0` is a termination, a nonzero discount a
  truncation (`jumanji.types.truncation`).
- `LegacyGymnaxEnv`: the gymnax 0.0.x API, whose `step` returns five values
  `(obs, state, reward, done, info)`. With only `done` known, every ending is
  a termination (`truncated` is always False): a time limit's end is not
  bootstrapped, which biases value targets near the limit. Its `step_env`
  (without auto-reset) is used where it exists, so the final observation is
  kept; an environment without one resets itself, and `final_observation` is
  then NaN where an episode ended (the observation is lost).

The libraries are optional extras (`pip install 'reinforce_jax[brax]'`,
`'reinforce_jax[jumanji]'`), imported by `envs.make("brax:<name>")` and
`envs.make("jumanji:<name>")`; the classes here take an environment object.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax.envs.base import Environment, _auto_reset
from reinforce_jax.envs.gymnax_env import GymnaxEnv

__all__ = [
    "BraxEnv",
    "is_legacy_gymnax",
    "JumanjiEnv",
    "LegacyGymnaxEnv",
]


def _continuous_check(name: str, shape: tuple[int, ...], action) -> None:
  dtype = jnp.result_type(action)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{name}: actions must be floats, got dtype {dtype}")
  if tuple(jnp.shape(action))[-len(shape):] != shape:
    raise ValueError(f"{name}: an action has shape {shape}, got {jnp.shape(action)}")


class BraxEnv(Environment):
  """A Brax environment: continuous actions in `[-1, 1]^action_size`.

  Args:
    env: a Brax `Env` without training wrappers (`brax.envs.get_environment`);
      this adapter auto-resets, so Brax's `AutoResetWrapper` must not be on.
    episode_length: the time limit (Brax's `EpisodeWrapper`), in steps.
    action_repeat: steps of the simulation per step.
    name: for messages.
  """

  deterministic_transitions = True  # Brax's step takes no key

  def __init__(self, env: Any, *, episode_length: int = 1000, action_repeat: int = 1,
               name: str | None = None):
    from brax.envs.wrappers.training import EpisodeWrapper

    self.raw_env = env
    self.env = EpisodeWrapper(env, episode_length, action_repeat)
    self.episode_length = episode_length
    self._name = name or f"brax:{type(env).__name__}"

  @property
  def default_params(self):
    return ()  # Brax keeps its settings in the environment object

  @property
  def name(self) -> str:
    return self._name

  @property
  def observation_shape(self) -> tuple[int, ...]:
    size = self.raw_env.observation_size
    return (size,) if isinstance(size, int) else tuple(size)

  @property
  def action_shape(self) -> tuple[int, ...]:
    return (self.raw_env.action_size,)

  @property
  def action_bounds(self) -> tuple[float, float]:
    return (-1.0, 1.0)

  def reset_env(self, key, params):
    del params
    state = self.env.reset(key)
    return state.obs, state

  def step_env(self, key, state, action, params):
    del key, params
    state = self.env.step(state, action)
    truncated = state.info["truncation"].astype(bool)
    terminated = jnp.logical_and(state.done.astype(bool), jnp.logical_not(truncated))
    return state.obs, state, state.reward.astype(jnp.float32), terminated, truncated, {}

  def _check_action(self, action):
    _continuous_check(self.name, self.action_shape, action)
    return None

  def _check_batch_action(self, action):
    return self._check_action(action[0])


def _flatten(observation) -> jax.Array:
  """Every leaf of an observation pytree, as float32, in one vector."""
  leaves = jax.tree.leaves(observation)
  return jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in leaves])


class JumanjiEnv(Environment):
  """A Jumanji environment with a discrete action spec (`DiscreteArray`).

  Args:
    env: a `jumanji.Environment` (`jumanji.make(name)`).
    flatten: observations as one float32 vector of every leaf of Jumanji's
      observation (its board, action mask, ...), for an MLP policy; False
      keeps Jumanji's observation pytree.
    name: for messages.
  """

  deterministic_transitions = True  # a Jumanji state carries its own key

  def __init__(self, env: Any, *, flatten: bool = True, name: str | None = None):
    self.env = env
    self.flatten = flatten
    self._name = name or f"jumanji:{type(env).__name__}"
    example = jax.eval_shape(lambda key: env.reset(key)[1].observation, jax.random.key(0))
    self._observation_shape = jax.eval_shape(_flatten, example).shape if flatten else None

  @property
  def default_params(self):
    return ()

  @property
  def name(self) -> str:
    return self._name

  @property
  def num_actions(self) -> int:
    spec = self.env.action_spec
    if not hasattr(spec, "num_values") or np.ndim(spec.num_values):
      raise AttributeError(f"{self.name} has no single discrete action spec ({spec})")
    return int(spec.num_values)

  @property
  def observation_shape(self) -> tuple[int, ...]:
    if self._observation_shape is None:
      raise AttributeError(f"{self.name}: observations are pytrees (flatten=False)")
    return tuple(self._observation_shape)

  def _observe(self, timestep):
    return _flatten(timestep.observation) if self.flatten else timestep.observation

  def reset_env(self, key, params):
    del params
    state, timestep = self.env.reset(key)
    return self._observe(timestep), state

  def step_env(self, key, state, action, params):
    del key, params
    from jumanji.types import StepType

    state, timestep = self.env.step(state, action)
    last = timestep.step_type == StepType.LAST
    terminated = jnp.logical_and(last, timestep.discount == 0)
    truncated = jnp.logical_and(last, timestep.discount != 0)
    return (self._observe(timestep), state, jnp.asarray(timestep.reward, jnp.float32),
            terminated, truncated, {})


class LegacyGymnaxEnv(GymnaxEnv):
  """A gymnax 0.0.x environment, whose `step` returns `(obs, state, reward, done, info)`.

  Every ending is reported as `terminated` (see the module docstring for what
  is lost). Spaces and params come from `GymnaxEnv`; reset and step are this
  library's auto-reset over the legacy calls.
  """

  reset = Environment.reset  # the auto-reset of `reset_env`, not the legacy env's own

  def __init__(self, env: Any, params: Any = None):
    super().__init__(env, params)
    self._has_step_env = hasattr(env, "step_env") and hasattr(env, "reset_env")

  @property
  def name(self) -> str:
    return f"gymnax-legacy:{getattr(self.env, 'name', type(self.env).__name__)}"

  def reset_env(self, key, params):
    if self._has_step_env:
      return self.env.reset_env(key, params)
    return self.env.reset(key, params)

  def step_env(self, key, state, action, params):
    obs, state, reward, done, info = self.env.step_env(key, state, action, params)
    return obs, state, reward, jnp.asarray(done, bool), jnp.zeros((), bool), dict(info)

  def step(self, key, state, action, params=None):
    if params is None:
      params = self._params
    if self._has_step_env:
      key_step, key_reset = jax.random.split(key)
      stepped = self.step_env(key_step, state, action, params)
      return _auto_reset(stepped, self.reset_env(key_reset, params), None)
    # The environment resets itself: the observation that ended an episode is gone.
    obs, state, reward, done, info = self.env.step(key, state, action, params)
    done = jnp.asarray(done, bool)
    final = jnp.where(done, jnp.nan, obs)
    return obs, state, reward, done, jnp.zeros((), bool), {**info, "final_observation": final}

  def _check_action(self, action):
    return super()._check_action(action) if self._discrete else None


def is_legacy_gymnax(env: Any, params: Any = None) -> bool:
  """Whether `env.step` returns the five values of the gymnax 0.0.x API."""
  params = env.default_params if params is None else params
  key = jax.random.key(0)
  obs_state = jax.eval_shape(env.reset, key, params)
  action = env.action_space(params).sample(key)
  out = jax.eval_shape(env.step, key, obs_state[1], action, params)
  return len(out) == 5
