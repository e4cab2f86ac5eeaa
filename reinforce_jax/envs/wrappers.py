"""Environment wrappers: episode statistics, observation normalisation and masking.

A wrapper is itself an environment with the gymnax 1.x interface; its state is
a pytree holding the inner state plus its own, so it vmaps and jits like any
environment. Attributes it does not define (`num_actions`, `action_bounds`, ...)
come from the wrapped environment.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from reinforce_jax.envs.base import Environment
from reinforce_jax.envs.cartpole import CartPole

__all__ = [
    "EpisodeStatistics",
    "EpisodeStatisticsState",
    "hide_velocities",
    "NormalizeObservation",
    "NormalizeObservationState",
    "ObservationMask",
    "Wrapper",
]


class Wrapper(Environment):
  def __init__(self, env):
    self.env = env

  def __getattr__(self, name):
    if name == "env":  # not set yet (e.g. during unpickling)
      raise AttributeError(name)
    return getattr(self.env, name)

  @property
  def default_params(self):
    return self.env.default_params

  @property
  def name(self) -> str:
    return self.env.name

  @property
  def observation_shape(self):
    return self.env.observation_shape

  @property
  def num_actions(self) -> int:
    return self.env.num_actions


@struct.dataclass
class EpisodeStatisticsState:
  env_state: Any
  episode_return: jax.Array    # [] float32, return so far in the running episode
  episode_length: jax.Array    # [] int32
  returned_return: jax.Array   # [] float32, return of the last finished episode
  returned_length: jax.Array   # [] int32


class EpisodeStatistics(Wrapper):
  """Tracks undiscounted returns and lengths.

  `info` gains `episode_return` and `episode_length` (of the most recently
  finished episode) and `returned_episode` (True on the step an episode ended).
  """

  def reset(self, key, params=None):
    obs, state = self.env.reset(key, params)
    zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    return obs, EpisodeStatisticsState(state, zero_f, zero_i, zero_f, zero_i)

  def step(self, key, state, action, params=None):
    obs, env_state, reward, terminated, truncated, info = self.env.step(
        key, state.env_state, action, params)
    done = jnp.logical_or(terminated, truncated)
    episode_return = state.episode_return + reward
    episode_length = state.episode_length + 1
    state = EpisodeStatisticsState(
        env_state=env_state,
        episode_return=jnp.where(done, 0.0, episode_return),
        episode_length=jnp.where(done, 0, episode_length),
        returned_return=jnp.where(done, episode_return, state.returned_return),
        returned_length=jnp.where(done, episode_length, state.returned_length),
    )
    info = {**info, "episode_return": state.returned_return,
            "episode_length": state.returned_length, "returned_episode": done}
    return obs, state, reward, terminated, truncated, info


@struct.dataclass
class NormalizeObservationState:
  env_state: Any
  mean: jax.Array   # running mean of the observations seen, obs shape
  m2: jax.Array     # running sum of squared deviations (Welford)
  count: jax.Array  # [] float32, observations seen


class NormalizeObservation(Wrapper):
  """Standardises observations with running statistics: `clip((o - mean) / std)`.

  Statistics are per environment instance (each vmapped copy keeps its own),
  updated with every observation it emits, episode after episode.
  `info["final_observation"]` is normalised with the same statistics.
  """

  def __init__(self, env, *, eps: float = 1e-8, clip: float = 10.0):
    super().__init__(env)
    self.eps, self.clip = eps, clip

  def _update(self, stats: NormalizeObservationState, obs):
    count = stats.count + 1.0
    delta = obs - stats.mean
    mean = stats.mean + delta / count
    return stats.replace(mean=mean, m2=stats.m2 + delta * (obs - mean), count=count)

  def _normalize(self, stats, obs):
    std = jnp.sqrt(stats.m2 / jnp.maximum(stats.count, 1.0) + self.eps)
    return jnp.clip((obs - stats.mean) / std, -self.clip, self.clip)

  def reset(self, key, params=None):
    obs, state = self.env.reset(key, params)
    stats = NormalizeObservationState(state, jnp.zeros_like(obs), jnp.zeros_like(obs),
                                      jnp.zeros((), jnp.float32))
    stats = self._update(stats, obs)
    return self._normalize(stats, obs), stats

  def step(self, key, state, action, params=None):
    obs, env_state, reward, terminated, truncated, info = self.env.step(
        key, state.env_state, action, params)
    stats = self._update(state.replace(env_state=env_state), obs)
    if "final_observation" in info:
      info = {**info, "final_observation": self._normalize(stats, info["final_observation"])}
    return self._normalize(stats, obs), stats, reward, terminated, truncated, info


class ObservationMask(Wrapper):
  """Keeps only the chosen entries of a flat observation: a partially observed task.

  The environment's dynamics, rewards, `terminated` and `truncated` are
  unchanged; every observation it emits, `info["final_observation"]` included,
  becomes `obs[..., keep]` (`[D] -> [len(keep)]`). The state is the wrapped
  environment's, so the batched fast paths (`reset_batch`, `step_batch`) of the
  wrapped environment are kept.

  `hide_velocities(CartPole())` keeps CartPole's position and angle (indices 0
  and 2): a policy then has to infer the velocities from the history of its
  observations, which a recurrent policy can do and a feedforward one cannot.

  Args:
    env: an environment with a flat observation `[D]`.
    keep: the indices in `[0, D)` to keep, in the order given; no repeats.

  Raises:
    ValueError: for an empty `keep`, a repeated index or one outside `[0, D)`.
  """

  def __init__(self, env, keep):
    super().__init__(env)
    keep = tuple(int(i) for i in keep)
    (size,) = env.observation_shape
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < size for i in keep):
      raise ValueError(f"keep must hold distinct indices in [0, {size}) of "
                       f"{env.name}'s observation, got {keep}")
    self.keep = keep

  @property
  def observation_shape(self) -> tuple[int, ...]:
    return (len(self.keep),)

  def _mask(self, obs: jax.Array) -> jax.Array:
    # Static slices rather than a gather: XLA fuses them into the step's loop.
    return jnp.concatenate([obs[..., i:i + 1] for i in self.keep], axis=-1)

  def _masked(self, stepped):
    obs, state, reward, terminated, truncated, info = stepped
    if "final_observation" in info:
      info = {**info, "final_observation": self._mask(info["final_observation"])}
    return self._mask(obs), state, reward, terminated, truncated, info

  def reset(self, key, params=None):
    obs, state = self.env.reset(key, params)
    return self._mask(obs), state

  def step(self, key, state, action, params=None):
    return self._masked(self.env.step(key, state, action, params))

  def reset_batch(self, key, params, num_envs):
    obs, state = self.env.reset_batch(key, params, num_envs)
    return self._mask(obs), state

  def step_batch(self, key, state, action, params=None):
    return self._masked(self.env.step_batch(key, state, action, params))


def hide_velocities(env=None) -> ObservationMask:
  """CartPole (`env`, default `CartPole()`) observing only position and angle (indices 0, 2).

  A partially observed CartPole for recurrent policies (the velocities at
  indices 1 and 3 are hidden), as in the memory tasks of POPGym's
  `StatelessCartPole` (Morad et al., 2023).
  """
  return ObservationMask(CartPole() if env is None else env, keep=(0, 2))
