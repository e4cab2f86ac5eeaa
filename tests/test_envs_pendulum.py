"""Pendulum agrees with gymnasium's Pendulum-v1 step by step (gymnasium is dev-only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import Pendulum, PendulumState

gym = pytest.importorskip("gymnasium")


def test_matches_gymnasium_from_the_same_states():
  env = Pendulum()
  step_env = jax.jit(env.step_env)
  reference = gym.make("Pendulum-v1").unwrapped
  reference.reset(seed=0)
  rng = np.random.default_rng(0)
  for _ in range(300):
    theta, theta_dot = rng.uniform([-6.0, -9.0], [6.0, 9.0]).astype(np.float32)
    torque = np.float32(rng.uniform(-3.0, 3.0))  # beyond the limit too: both clip
    reference.state = np.array([theta, theta_dot], np.float64)
    want_obs, want_reward, want_terminated, _, _ = reference.step(np.array([torque]))
    state = PendulumState(jnp.float32(theta), jnp.float32(theta_dot), jnp.int32(0))
    obs, _, reward, terminated, truncated, _ = step_env(
        jax.random.key(0), state, jnp.array([torque]), env.default_params)
    np.testing.assert_allclose(obs, want_obs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(reward), want_reward, rtol=1e-5, atol=1e-5)
    assert not bool(terminated) and not want_terminated and not bool(truncated)


def test_truncation_after_200_steps_and_reset_distribution():
  env = Pendulum()
  step = jax.jit(env.step)
  obs, state = env.reset(jax.random.key(0))
  for t in range(1, 201):
    obs, state, _, terminated, truncated, _ = step(jax.random.key(t), state, jnp.zeros(1))
    assert not bool(terminated) and bool(truncated) == (t == 200)
  assert int(state.time) == 0
  n = 4096
  obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(1), n))
  assert np.all(np.abs(state.theta) <= np.pi) and np.all(np.abs(state.theta_dot) <= 1.0)
  np.testing.assert_allclose(obs[:, 0] ** 2 + obs[:, 1] ** 2, 1.0, rtol=1e-5)


def test_actions_must_be_float_vectors():
  env = Pendulum()
  _, state = env.reset(jax.random.key(0))
  with pytest.raises(ValueError, match="floats"):
    env.step(jax.random.key(0), state, jnp.array([1]))
  with pytest.raises(ValueError, match=r"shape \(1,\)"):
    env.step(jax.random.key(0), state, jnp.zeros(2))
