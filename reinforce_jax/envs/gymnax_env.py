"""Any gymnax 1.x environment, with the attributes this library's code reads.

gymnax 1.x already has this library's interface (`reset(key, params)`,
`step(key, state, action, params)` returning
`(obs, state, reward, terminated, truncated, info)` with auto-reset and
`info["final_observation"]`), so the adapter only forwards the calls and
derives `num_actions`, `observation_shape` and, for a box action space,
`action_shape` and `action_bounds` from the spaces. gymnax is an optional
dependency: `pip install 'reinforce_jax[gymnax]'`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reinforce_jax.envs.base import Environment

__all__ = [
    "GymnaxEnv",
]


class GymnaxEnv(Environment):
  """Wraps `env, params = gymnax.make(name)` (or a user's gymnax-style pair)."""

  def __init__(self, env: Any, params: Any = None):
    self.env = env
    self._params = env.default_params if params is None else params
    space = env.action_space(self._params)
    self._discrete = not hasattr(space, "low")
    self._space = space

  @property
  def default_params(self):
    return self._params

  @property
  def name(self) -> str:
    return f"gymnax:{self.env.name}"

  @property
  def num_actions(self) -> int:
    if not self._discrete:
      raise AttributeError(f"{self.name} has a continuous action space")
    return int(self._space.n)

  @property
  def observation_shape(self) -> tuple[int, ...]:
    return tuple(self.env.observation_space(self._params).shape)

  @property
  def action_shape(self) -> tuple[int, ...]:
    return tuple(self._space.shape)

  @property
  def action_bounds(self) -> tuple[float, float] | None:
    if self._discrete:
      return None
    return float(np.min(self._space.low)), float(np.max(self._space.high))

  def reset(self, key, params=None):
    return self.env.reset(key, self._params if params is None else params)

  def step(self, key, state, action, params=None):
    return self.env.step(key, state, action, self._params if params is None else params)
