"""The Brax, Jumanji and legacy-gymnax adapters: terminated apart from truncated, the final
observation kept, auto-reset (PPO on Brax: benchmarks/brax_ppo.py)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import BraxEnv, JumanjiEnv, LegacyGymnaxEnv, make


def _rollout(env, actions, num_envs=2, step=None):
  """Steps `env` with `actions[t]` (one per env); the stacked outputs of each step."""
  obs, state = env.reset_batch(jax.random.key(0), env.default_params, num_envs)
  step = step or jax.jit(env.step_batch)
  outs = []
  for t, action in enumerate(actions):
    obs, state, reward, terminated, truncated, info = step(jax.random.key(t), state, action)
    outs.append((obs, reward, terminated, truncated, info["final_observation"]))
  return [np.stack(x) for x in zip(*outs, strict=True)]


# --- Brax ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pendulum():
  """Brax's inverted pendulum with a 6-step time limit, and its jitted batch step."""
  pytest.importorskip("brax")
  env = make("brax:inverted_pendulum", episode_length=6)
  return env, jax.jit(env.step_batch)  # one compile for the tests below


@pytest.mark.slow  # ~30 s of brax compilation; make test-slow runs it
def test_brax_truncation_is_not_termination(pendulum):
  env, step = pendulum
  assert isinstance(env, BraxEnv)
  assert env.observation_shape == (4,) and env.action_shape == (1,)
  assert env.action_bounds == (-1.0, 1.0)
  # No force: the pole stays up for the 6 steps, so the time limit ends the episode.
  obs, _, terminated, truncated, final = _rollout(env, [jnp.zeros((2, 1))] * 7, step=step)
  assert not terminated.any()
  np.testing.assert_array_equal(truncated[:, 0], [0, 0, 0, 0, 0, 1, 0])
  # After the time limit the observation is the next episode's first, the last one in info.
  assert np.all(np.abs(obs[5, :, 1]) < 0.011)  # Brax resets the angle within +-0.01
  assert not np.allclose(final[5], obs[5])
  np.testing.assert_allclose(final[4], obs[4])  # mid-episode: the same observation


@pytest.mark.slow  # ~20 s; make test-slow runs it
def test_brax_a_fallen_pole_terminates_and_keeps_its_final_observation(pendulum):
  env, step = pendulum
  _, _, terminated, truncated, final = _rollout(env, [jnp.ones((2, 1))] * 5, step=step)
  assert not truncated.any() and terminated.any()
  t = int(np.argmax(terminated[:, 0]))
  assert abs(final[t, 0, 1]) > 0.2  # Brax ends the episode when |angle| > 0.2


# --- Jumanji ------------------------------------------------------------------------------


class _CountState(NamedTuple):
  t: jax.Array
  key: jax.Array


class _Countdown:
  """A Jumanji-style environment: ends by termination at t=3 for action 1, else by
  truncation at t=5 (Jumanji's `termination` / `truncation` time steps)."""

  def __init__(self):
    from jumanji import specs

    self.action_spec = specs.DiscreteArray(2)

  def reset(self, key):
    from jumanji.types import restart

    return _CountState(jnp.int32(0), key), restart(jnp.zeros(2, jnp.float32))

  def step(self, state, action):
    from jumanji.types import termination, transition, truncation

    t = state.t + 1
    obs = jnp.stack([t.astype(jnp.float32), action.astype(jnp.float32)])
    reward = jnp.float32(1.0)
    timestep = jax.lax.cond(
        jnp.logical_and(action == 1, t >= 3), lambda: termination(reward, obs),
        lambda: jax.lax.cond(t >= 5, lambda: truncation(reward, obs),
                             lambda: transition(reward, obs)))
    return state._replace(t=t), timestep


def test_jumanji_step_types_map_to_terminated_and_truncated():
  pytest.importorskip("jumanji")
  env = JumanjiEnv(_Countdown())
  assert env.num_actions == 2 and env.observation_shape == (2,)
  actions = [jnp.array([0, 1])] * 6  # env 0 runs to its time limit, env 1 terminates
  obs, _, terminated, truncated, final = _rollout(env, actions)
  np.testing.assert_array_equal(terminated[:, 1], [0, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(truncated[:, 0], [0, 0, 0, 0, 1, 0])
  assert not terminated[:, 0].any() and not truncated[:, 1].any()
  np.testing.assert_array_equal(final[4, 0], [5.0, 0.0])  # the last observation, kept
  np.testing.assert_array_equal(obs[4, 0], [0.0, 0.0])    # the next episode's first


@pytest.mark.slow
def test_jumanji_real_environment_steps():
  pytest.importorskip("jumanji")
  env = make("jumanji:Maze-v0")
  assert isinstance(env, JumanjiEnv) and env.num_actions == 4
  obs, _, terminated, truncated, final = _rollout(env, [jnp.array([0, 1])] * 3,
                                                  step=jax.jit(env.step_batch))
  assert obs.shape == final.shape == (3, 2, *env.observation_shape) and obs.dtype == np.float32
  assert terminated.dtype == truncated.dtype == bool


# --- legacy gymnax (5-value step) ---------------------------------------------------------


class _Space(NamedTuple):
  n: int
  shape: tuple = ()

  def sample(self, key):
    return jax.random.randint(key, (), 0, self.n)


class _ObsSpace(NamedTuple):
  shape: tuple = (1,)


class _LegacyCounter:
  """gymnax 0.0.x style: `step` returns `(obs, state, reward, done, info)`, done at t=3."""

  default_params = ()
  name = "Counter"

  def __init__(self, with_step_env=True):
    if not with_step_env:
      self.step_env = None
      del self.step_env

  def action_space(self, params):
    return _Space(2)

  def observation_space(self, params):
    return _ObsSpace()

  def reset(self, key, params):
    return jnp.zeros(1), jnp.int32(0)

  def _step(self, state):
    t = state + 1
    return t.astype(jnp.float32)[None], t, jnp.float32(1.0), t >= 3, {"discount": 1.0}

  def step(self, key, state, action, params):
    obs, t, reward, done, info = self._step(state)
    return jnp.where(done, 0.0, obs), jnp.where(done, 0, t), reward, done, info


class _LegacyWithStepEnv(_LegacyCounter):
  def reset_env(self, key, params):
    return self.reset(key, params)

  def step_env(self, key, state, action, params):
    return self._step(state)


@pytest.mark.parametrize("cls", [_LegacyWithStepEnv, _LegacyCounter])
def test_legacy_gymnax_done_becomes_terminated(cls):
  from reinforce_jax.envs.adapters import is_legacy_gymnax

  raw = cls()
  assert is_legacy_gymnax(raw)
  env = LegacyGymnaxEnv(raw)
  obs, _, terminated, truncated, final = _rollout(env, [jnp.array([0, 1])] * 4)
  np.testing.assert_array_equal(terminated[:, 0], [0, 0, 1, 0])
  assert not truncated.any()  # only `done` is known: no ending is a truncation
  np.testing.assert_array_equal(obs[2, 0], [0.0])  # auto-reset
  if cls is _LegacyWithStepEnv:
    np.testing.assert_array_equal(final[2, 0], [3.0])  # step_env: the final observation kept
  else:
    assert np.isnan(final[2, 0]).all()  # reset inside step: the final observation is lost
    np.testing.assert_array_equal(final[1, 0], [2.0])


def test_gymnax_1x_is_not_legacy():
  gymnax = pytest.importorskip("gymnax")
  from reinforce_jax.envs.adapters import is_legacy_gymnax

  assert not is_legacy_gymnax(*gymnax.make("CartPole-v1"))
