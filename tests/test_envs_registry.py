"""make(), the gymnax adapter, and the wrappers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reinforce_jax as rj
from reinforce_jax.envs import (
    CartPole,
    EpisodeStatistics,
    GymnaxEnv,
    NormalizeObservation,
    Pendulum,
    make,
)
from reinforce_jax.experiments.presets import make_policy


def test_make_ours_and_unknown():
  assert isinstance(make("CartPole-v1"), CartPole)
  assert isinstance(make("Pendulum-v1"), Pendulum)
  with pytest.raises(ValueError, match="unknown environment 'Nope-v0'.*gymnax:<name>"):
    make("Nope-v0")


def test_gymnax_environment_drops_into_train_step():
  pytest.importorskip("gymnax")
  env = make("gymnax:CartPole-v1")
  assert isinstance(env, GymnaxEnv) and env.num_actions == 2
  assert env.observation_shape == (4,) and env.action_bounds is None
  config = rj.TrainConfig(num_envs=16, rollout_length=50, baseline="leave_one_out",
                          learning_rate=3e-3, num_steps=3)
  policy = make_policy(env, (16,))
  out = jax.jit(rj.make_train(env, policy, rj.make_optimizer(config), config))(
      jax.random.key(0))
  assert bool(out.finite) and int(out.steps_done) == 3
  assert np.all(np.asarray(out.metrics["num_episodes"]) > 0)
  continuous = make("gymnax:Pendulum-v1")
  assert continuous.action_bounds == (-2.0, 2.0) and continuous.action_shape == (1,)


def test_our_cartpole_and_gymnax_cartpole_agree():
  gymnax = pytest.importorskip("gymnax")
  theirs, params = gymnax.make("CartPole-v1")
  ours = CartPole()
  _, state = ours.reset(jax.random.key(0))
  their_state = theirs.reset(jax.random.key(0), params)[1].replace(
      x=state.x, x_dot=state.x_dot, theta=state.theta, theta_dot=state.theta_dot)
  for t in range(30):
    action = jnp.int32(t % 3 == 0)
    obs, state, reward, term, trunc, _ = ours.step_env(
        jax.random.key(t), state, action, ours.default_params)
    their_obs, their_state, their_reward, their_term, _ = theirs.step_env(
        jax.random.key(t), their_state, action, params)
    np.testing.assert_allclose(obs, their_obs, rtol=1e-5, atol=1e-6)
    assert bool(term) == bool(their_term)


def test_episode_statistics_wrapper():
  env = EpisodeStatistics(CartPole())
  assert env.num_actions == 2 and env.name == "CartPole-v1"
  obs, state = env.reset(jax.random.key(0))
  step = jax.jit(env.step)
  length, finished = 0, []
  for t in range(200):
    obs, state, reward, term, trunc, info = step(jax.random.key(t), state, jnp.int32(t % 2))
    length += 1
    if bool(info["returned_episode"]):
      finished.append(length)
      assert int(info["episode_length"]) == length == float(info["episode_return"])
      length = 0
  assert finished


def test_normalize_observation_wrapper_uses_running_statistics():
  """Normalised obs == (o_t - mean(o_0..o_t)) / std(o_0..o_t), from the same raw stream."""
  raw_env, env = Pendulum(), NormalizeObservation(Pendulum())
  raw, raw_state = raw_env.reset(jax.random.key(0))
  obs, state = env.reset(jax.random.key(0))
  history, normalised = [np.asarray(raw)], [np.asarray(obs)]
  for t in range(60):
    action = jnp.array([np.sin(t)], jnp.float32)
    raw, raw_state, *_ = raw_env.step(jax.random.key(t), raw_state, action)
    obs, state, *_ = env.step(jax.random.key(t), state, action)
    history.append(np.asarray(raw))
    normalised.append(np.asarray(obs))
  seen = np.stack(history)
  for t in (5, 30, 60):
    window = seen[: t + 1]
    want = np.clip((seen[t] - window.mean(0)) / np.sqrt(window.var(0) + 1e-8), -10, 10)
    np.testing.assert_allclose(normalised[t], want, rtol=1e-3, atol=1e-3)
