"""CartPole agrees with gymnasium's CartPole-v1 step by step (gymnasium is dev-only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import CartPole, CartPoleState

gym = pytest.importorskip("gymnasium")


def _state(values, time=0):
  x, x_dot, theta, theta_dot = (jnp.float32(v) for v in values)
  return CartPoleState(x, x_dot, theta, theta_dot, jnp.int32(time))


def _as_array(state):
  return np.array([state.x, state.x_dot, state.theta, state.theta_dot], np.float64)


def test_matches_gymnasium_from_the_same_states():
  env = CartPole()
  step_env = jax.jit(env.step_env)
  reference = gym.make("CartPole-v1")
  reference.reset(seed=0)
  rng = np.random.default_rng(0)
  # Random states over and beyond the termination region, with both actions.
  starts = rng.uniform([-2.6, -3.0, -0.25, -3.5], [2.6, 3.0, 0.25, 3.5], size=(300, 4))
  terminations = 0
  for values in starts.astype(np.float32):
    for action in (0, 1):
      reference.unwrapped.state = values.astype(np.float64)
      reference.unwrapped.steps_beyond_terminated = None
      want_obs, want_reward, want_terminated, _, _ = reference.unwrapped.step(action)
      obs, _, reward, terminated, truncated, _ = step_env(
          jax.random.key(0), _state(values), jnp.int32(action), env.default_params)
      np.testing.assert_allclose(obs, want_obs, rtol=1e-5, atol=1e-5)
      assert float(reward) == want_reward == 1.0
      assert bool(terminated) == want_terminated
      assert not bool(truncated)
      terminations += want_terminated
  assert 50 < terminations < 550  # both outcomes were exercised


def test_episode_matches_gymnasium_with_time_limit():
  """A balancing controller for a full episode: truncation at step 500 in both."""
  env = CartPole()
  step = jax.jit(env.step)
  reference = gym.make("CartPole-v1")
  want_obs, _ = reference.reset(seed=3)
  state = _state(want_obs)
  obs = CartPole.observe(state)
  for t in range(1, 501):
    action = int(obs[2] + 0.5 * obs[3] > 0)
    want_obs, want_reward, want_terminated, want_truncated, _ = reference.step(action)
    obs, state, reward, terminated, truncated, info = step(
        jax.random.key(t), state, jnp.int32(action))
    np.testing.assert_allclose(info["final_observation"], want_obs, rtol=1e-4, atol=1e-4)
    assert (bool(terminated), bool(truncated)) == (want_terminated, want_truncated), t
    # Copy the float64 reference state so float32 rounding cannot accumulate.
    if not (want_terminated or want_truncated):
      state = _state(reference.unwrapped.state, int(state.time))
      obs = CartPole.observe(state)
  assert want_truncated and not want_terminated and t == 500
  assert int(state.time) == 0 and np.all(np.abs(obs) <= 0.05)  # auto-reset happened


def test_reset_distribution_and_auto_reset():
  env = CartPole()
  n = 4096
  obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), n))
  assert obs.shape == (n, 4) and obs.dtype == jnp.float32
  assert np.all(np.abs(obs) <= 0.05)
  np.testing.assert_allclose(obs.mean(0), 0.0, atol=4 * 0.1 / np.sqrt(12 * n))
  falling = _state([0.0, 0.0, 0.25, 0.0], time=7)
  new_obs, new_state, _, terminated, _, info = env.step(jax.random.key(1), falling, 0)
  assert bool(terminated) and int(new_state.time) == 0
  assert np.all(np.abs(new_obs) <= 0.05) and float(info["final_observation"][2]) > 0.2


def test_invalid_action_is_an_error_outside_jit_and_poisons_inside():
  env = CartPole()
  _, state = env.reset(jax.random.key(0))
  with pytest.raises(ValueError, match=r"CartPole-v1: invalid action \[2\]"):
    env.step(jax.random.key(0), state, jnp.array([2]))
  with pytest.raises(ValueError, match="integers"):
    env.step(jax.random.key(0), state, 0.5)
  obs, _, reward, *_ = jax.jit(env.step)(jax.random.key(0), state, jnp.int32(-1))
  assert np.isnan(float(reward)) and np.all(np.isnan(obs))
