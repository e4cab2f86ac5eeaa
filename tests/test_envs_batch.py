"""Batched stepping and resetting: `step_batch` / `reset_batch` against `step` / `reset`.

Environments with deterministic transitions draw a whole batch's resets from one
key; the draws must follow the per-environment distribution, and everything
else (transitions, auto-reset, action checks) must be exactly what `step` does.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import CartPole, CartPoleState, ContextualBandit, EpisodeStatistics
from reinforce_jax.envs.bandit import make_params
from reinforce_jax.envs.pendulum import Pendulum

N = 200_000


def test_bandit_reset_batch_draws_contexts_with_their_probabilities():
  probs = np.array([0.2, 0.3, 0.5])
  params = make_params([[-1.0], [0.0], [1.0]], [[1, 0], [0, 1], [1, 0]], probs)
  obs, state = jax.jit(ContextualBandit(params).reset_batch, static_argnums=2)(
      jax.random.key(0), params, N)
  counts = np.bincount(np.asarray(state.context), minlength=3)
  se = np.sqrt(N * probs * (1 - probs))
  assert np.all(np.abs(counts - N * probs) < 4 * se), counts
  np.testing.assert_array_equal(obs, np.asarray(params.contexts)[np.asarray(state.context)])
  assert state.time.shape == (N,) and not np.any(state.time)


@pytest.mark.parametrize("env,low,high", [
    (CartPole(), [-0.05] * 4, [0.05] * 4),
    (Pendulum(), [-np.pi, -1.0], [np.pi, 1.0]),
])
def test_reset_batch_draws_each_variable_uniformly_in_its_range(env, low, high):
  _, state = jax.jit(env.reset_batch, static_argnums=2)(jax.random.key(1), env.default_params, N)
  fields = ([state.x, state.x_dot, state.theta, state.theta_dot] if isinstance(env, CartPole)
            else [state.theta, state.theta_dot])
  for value, lo, hi in zip(fields, low, high, strict=True):
    value = np.asarray(value, np.float64)
    assert value.shape == (N,) and value.min() >= lo and value.max() <= hi
    width = hi - lo
    # Mean and variance of U(lo, hi): (lo + hi) / 2 and width^2 / 12, within 4 SE.
    assert abs(value.mean() - (lo + hi) / 2) < 4 * width / np.sqrt(12 * N)
    assert abs(value.var() - width**2 / 12) < 4 * width**2 * np.sqrt(1 / 180) / np.sqrt(N)
  # Independent draws: no correlation between two variables of one environment.
  assert abs(np.corrcoef(np.asarray(fields[0]), np.asarray(fields[1]))[0, 1]) < 4 / np.sqrt(N)


def test_reset_batch_observations_match_the_states():
  env = Pendulum()
  obs, state = env.reset_batch(jax.random.key(2), env.default_params, 5)
  np.testing.assert_allclose(obs, np.stack(
      [np.cos(state.theta), np.sin(state.theta), state.theta_dot], axis=-1), rtol=1e-6)


def _cartpole_states():
  # Half of them one push away from termination (theta beyond 12 degrees), one truncated.
  theta = jnp.array([0.0, 0.01, 0.25, -0.25, 0.0, 0.3])
  zeros = jnp.zeros_like(theta)
  time = jnp.array([0, 3, 7, 0, 499, 2], jnp.int32)
  return CartPoleState(zeros, zeros, theta, zeros, time)


def test_deterministic_step_batch_is_step_env_plus_one_batched_reset():
  env, params = CartPole(), CartPole().default_params
  state, action = _cartpole_states(), jnp.array([0, 1, 1, 0, 1, 0])
  key = jax.random.key(3)
  obs, new_state, reward, terminated, truncated, info = jax.jit(env.step_batch)(
      key, state, action, params)
  obs_st, state_st, reward_st, term_st, trunc_st, _ = jax.vmap(
      env.step_env, in_axes=(None, 0, 0, None))(key, state, action, params)
  obs_re, state_re = env.reset_batch(key, params, 6)
  done = np.asarray(term_st | trunc_st)
  assert done.any() and not done.all()
  np.testing.assert_array_equal(reward, reward_st)
  np.testing.assert_array_equal(terminated, term_st)
  np.testing.assert_array_equal(truncated, trunc_st)
  # (jit against eager: float rounding may differ in the last bit)
  close = {"rtol": 1e-6, "atol": 1e-7}
  np.testing.assert_allclose(info["final_observation"], obs_st, **close)
  np.testing.assert_allclose(obs, np.where(done[:, None], obs_re, obs_st), **close)
  for new, re, st in zip(jax.tree.leaves(new_state), jax.tree.leaves(state_re),
                         jax.tree.leaves(state_st), strict=True):
    np.testing.assert_allclose(new, np.where(done, re, st), **close)


def test_step_batch_agrees_with_step_for_every_environment():
  # Per environment, step_batch must give what step gives from the same state,
  # apart from which random reset an ended episode gets.
  env, params = CartPole(), CartPole().default_params
  state, action = _cartpole_states(), jnp.array([0, 1, 1, 0, 1, 0])
  batch = env.step_batch(jax.random.key(4), state, action, params)
  single = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
      jax.random.split(jax.random.key(5), 6), state, action, params)
  for i in (2, 3, 4, 5):
    np.testing.assert_array_equal(batch[2][i], single[2][i])  # reward
    np.testing.assert_array_equal(batch[5]["final_observation"][i],
                                  single[5]["final_observation"][i])
  done = np.asarray(batch[3] | batch[4])
  np.testing.assert_array_equal(np.asarray(batch[0])[~done], np.asarray(single[0])[~done])


def test_wrapped_environments_step_each_environment_with_its_own_key():
  env = EpisodeStatistics(CartPole())
  params = env.default_params
  key = jax.random.key(6)
  obs, state = env.reset_batch(key, params, 4)
  expected = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, 4), params)
  chex.assert_trees_all_equal((obs, state), expected)
  action = jnp.array([0, 1, 0, 1])
  chex.assert_trees_all_equal(
      env.step_batch(key, state, action, params),
      jax.vmap(env.step, in_axes=(0, 0, 0, None))(jax.random.split(key, 4), state, action,
                                                   params))


def test_invalid_actions_in_a_batch():
  env = ContextualBandit()
  _, state = env.reset_batch(jax.random.key(0), env.default_params, 3)
  with pytest.raises(ValueError, match=r"invalid action \[0, 2, 1\]"):
    env.step_batch(jax.random.key(1), state, jnp.array([0, 2, 1]))
  with pytest.raises(ValueError, match="integers"):
    env.step_batch(jax.random.key(1), state, jnp.array([0.0, 1.0, 1.0]))
  # Under jit only the environment with the bad action goes NaN.
  obs, _, reward, *_ = jax.jit(env.step_batch)(jax.random.key(1), state, jnp.array([0, 2, 1]))
  reward = np.asarray(reward)
  assert np.isnan(reward[1]) and np.isfinite(reward[[0, 2]]).all()
  pendulum = Pendulum()
  _, state = pendulum.reset_batch(jax.random.key(0), pendulum.default_params, 3)
  with pytest.raises(ValueError, match="floats"):
    pendulum.step_batch(jax.random.key(1), state, jnp.zeros((3, 1), jnp.int32))
  out = pendulum.step_batch(jax.random.key(1), state, jnp.zeros((3, 1), jnp.float32))
  assert out[0].shape == (3, 3) and out[2].shape == (3,)
