"""CartPole-v1 as gymnasium defines it, as a pure function.

Constants, the Euler integrator, the reset distribution (each state variable
uniform in [-0.05, 0.05]), the termination test (|x| > 2.4 or |theta| > 12
degrees), a reward of 1 on every step (the terminating one included) and the
500-step time limit all follow gymnasium's `CartPoleEnv` with `TimeLimit`.
Dynamics are from Barto, Sutton and Anderson (1983), with the corrected
equations of Florian (2007).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

from reinforce_jax.envs.base import Environment

__all__ = [
    "CartPole",
    "CartPoleParams",
    "CartPoleState",
]


@struct.dataclass
class CartPoleParams:
  gravity: float = 9.8
  masscart: float = 1.0
  masspole: float = 0.1
  length: float = 0.5  # half the pole's length
  force_mag: float = 10.0
  tau: float = 0.02  # seconds per step
  theta_threshold_radians: float = 12 * 2 * math.pi / 360
  x_threshold: float = 2.4
  max_steps_in_episode: int = 500


@struct.dataclass
class CartPoleState:
  x: jax.Array          # [] float32 cart position
  x_dot: jax.Array      # [] float32 cart velocity
  theta: jax.Array      # [] float32 pole angle (radians)
  theta_dot: jax.Array  # [] float32 pole angular velocity
  time: jax.Array       # [] int32 steps taken in this episode


class CartPole(Environment[CartPoleState, CartPoleParams]):
  """CartPole-v1: push the cart left (0) or right (1) to keep the pole up."""

  deterministic_transitions = True

  @property
  def default_params(self) -> CartPoleParams:
    return CartPoleParams()

  @property
  def name(self) -> str:
    return "CartPole-v1"

  @property
  def num_actions(self) -> int:
    return 2

  @property
  def observation_shape(self) -> tuple[int, ...]:
    return (4,)

  @staticmethod
  def observe(state: CartPoleState) -> jax.Array:
    return jnp.stack([state.x, state.x_dot, state.theta, state.theta_dot], axis=-1)

  def reset_env(self, key, params):
    del params
    return self._reset(key, ())

  def reset_batch(self, key, params, num_envs):
    del params
    return self._reset(key, (num_envs,))

  def _reset(self, key, shape):
    x, x_dot, theta, theta_dot = jax.random.uniform(
        key, (4, *shape), jnp.float32, minval=-0.05, maxval=0.05)
    state = CartPoleState(x, x_dot, theta, theta_dot, jnp.zeros(shape, jnp.int32))
    return self.observe(state), state

  def step_env(self, key, state, action, params):
    del key
    force = jnp.where(action == 1, params.force_mag, -params.force_mag)
    cos, sin = jnp.cos(state.theta), jnp.sin(state.theta)
    total_mass = params.masspole + params.masscart
    polemass_length = params.masspole * params.length
    temp = (force + polemass_length * state.theta_dot**2 * sin) / total_mass
    theta_acc = (params.gravity * sin - cos * temp) / (
        params.length * (4.0 / 3.0 - params.masspole * cos**2 / total_mass))
    x_acc = temp - polemass_length * theta_acc * cos / total_mass
    state = CartPoleState(
        x=state.x + params.tau * state.x_dot,
        x_dot=state.x_dot + params.tau * x_acc,
        theta=state.theta + params.tau * state.theta_dot,
        theta_dot=state.theta_dot + params.tau * theta_acc,
        time=state.time + 1,
    )
    terminated = (
        (state.x < -params.x_threshold) | (state.x > params.x_threshold)
        | (state.theta < -params.theta_threshold_radians)
        | (state.theta > params.theta_threshold_radians))
    truncated = state.time >= params.max_steps_in_episode
    reward = jnp.ones((), jnp.float32)
    return self.observe(state), state, reward, terminated, truncated, {}
