"""Pendulum-v1 as gymnasium defines it, as a pure function.

Swing a frictionless pendulum up and hold it: the state is the angle `theta`
(0 = upright) and angular velocity; the action is a torque, clipped to
[-2, 2]; the reward is `-(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)`
(computed before the state changes); the velocity is clipped to [-8, 8]; there
is no terminal state and episodes are truncated after 200 steps. Reset draws
`theta ~ U(-pi, pi)` and `theta_dot ~ U(-1, 1)`. Observations are
`[cos theta, sin theta, theta_dot]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from reinforce_jax.envs.base import Environment

__all__ = [
    "Pendulum",
    "PendulumParams",
    "PendulumState",
]


@struct.dataclass
class PendulumParams:
  max_speed: float = 8.0
  max_torque: float = 2.0
  dt: float = 0.05
  g: float = 10.0
  m: float = 1.0
  l: float = 1.0  # noqa: E741 (gymnasium's name)
  max_steps_in_episode: int = 200


@struct.dataclass
class PendulumState:
  theta: jax.Array      # [] float32
  theta_dot: jax.Array  # [] float32
  time: jax.Array       # [] int32


def _angle_normalize(x):
  return ((x + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class Pendulum(Environment[PendulumState, PendulumParams]):
  """Pendulum-v1: a continuous torque in [-2, 2] (actions of shape `(1,)`)."""

  deterministic_transitions = True

  @property
  def default_params(self) -> PendulumParams:
    return PendulumParams()

  @property
  def name(self) -> str:
    return "Pendulum-v1"

  @property
  def action_shape(self) -> tuple[int, ...]:
    return (1,)

  @property
  def action_bounds(self) -> tuple[float, float]:
    return (-2.0, 2.0)

  @property
  def observation_shape(self) -> tuple[int, ...]:
    return (3,)

  @staticmethod
  def observe(state: PendulumState) -> jax.Array:
    return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot], axis=-1)

  def reset_env(self, key, params):
    del params
    return self._reset(key, ())

  def reset_batch(self, key, params, num_envs):
    del params
    return self._reset(key, (num_envs,))

  def _reset(self, key, shape):
    high = jnp.reshape(jnp.array([jnp.pi, 1.0], jnp.float32), (2,) + (1,) * len(shape))
    theta, theta_dot = jax.random.uniform(
        key, (2, *shape), jnp.float32, minval=-high, maxval=high)
    state = PendulumState(theta, theta_dot, jnp.zeros(shape, jnp.int32))
    return self.observe(state), state

  def step_env(self, key, state, action, params):
    del key
    u = jnp.clip(jnp.reshape(action, ())[()], -params.max_torque, params.max_torque)
    cost = (_angle_normalize(state.theta) ** 2 + 0.1 * state.theta_dot**2 + 0.001 * u**2)
    theta_dot = state.theta_dot + (
        3 * params.g / (2 * params.l) * jnp.sin(state.theta)
        + 3.0 / (params.m * params.l**2) * u) * params.dt
    theta_dot = jnp.clip(theta_dot, -params.max_speed, params.max_speed)
    state = PendulumState(
        theta=state.theta + theta_dot * params.dt, theta_dot=theta_dot, time=state.time + 1)
    terminated = jnp.zeros((), jnp.bool_)
    truncated = state.time >= params.max_steps_in_episode
    return self.observe(state), state, -cost.astype(jnp.float32), terminated, truncated, {}

  def _check_action(self, action):
    """Continuous actions: any finite float of shape (1,) (clipped to the torque limit)."""
    dtype = jnp.result_type(action)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"{self.name}: actions must be floats, got dtype {dtype}")
    if jnp.shape(action) not in ((1,), ()):
      raise ValueError(f"{self.name}: an action has shape (1,), got {jnp.shape(action)}")
    return None

  def _check_batch_action(self, action):
    return self._check_action(action[0])
