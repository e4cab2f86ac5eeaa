"""`evaluate`: whole episodes of a policy in parallel, in one compiled program."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import CartPole, ContextualBandit, make_params
from reinforce_jax.rl import evaluation
from reinforce_jax.rl.evaluation import Evaluation, evaluate, mode
from reinforce_jax.rl.normalization import ObsStats, normalize
from reinforce_jax.rl.policies import (
    Categorical,
    GaussianPolicy,
    GRUPolicy,
    SquashedGaussian,
    as_policy,
)
from reinforce_jax.rl.rollouts import reset_envs


def _push_right(params, obs):
  """Pushes right with probability 1 (the logits are `params`, the same everywhere)."""
  return Categorical(logits=jnp.broadcast_to(params, obs.shape[:1] + (2,)))


RIGHT = jnp.array([-1e9, 0.0])


def _lengths_by_hand(env, params, key, num_episodes, action=1):
  """The environments stepped (without auto-reset) from `evaluate`'s reset, each until its
  first episode ends."""
  state = reset_envs(jax.random.split(key)[0], env, params, num_episodes).env_state
  step = jax.jit(jax.vmap(lambda s: env.step_env(jax.random.key(0), s, action, params)))
  lengths = np.zeros(num_episodes, int)
  for t in range(1, params.max_steps_in_episode + 1):
    _, state, _, terminated, truncated, _ = step(state)
    lengths[(np.asarray(terminated | truncated)) & (lengths == 0)] = t
    if np.all(lengths):
      break
  return lengths


def test_cartpole_returns_are_the_episode_lengths_stepped_by_hand():
  env, key = CartPole(), jax.random.key(3)
  result = evaluate(_push_right, RIGHT, env, key, 6)
  assert isinstance(result, Evaluation)
  expected = _lengths_by_hand(env, env.default_params, key, 6)
  assert len(set(expected.tolist())) > 1  # the resets differ, and so do the episodes
  np.testing.assert_array_equal(result.lengths, expected)
  np.testing.assert_array_equal(result.returns, expected.astype(np.float32))


def test_greedy_takes_the_mode_and_sampling_the_probabilities_on_a_bandit():
  # One context, two arms: arm 1 pays 1, arm 0 pays 0; the policy picks arm 1 w.p. 0.7.
  env = ContextualBandit(make_params([[0.0]], [[0.0, 1.0]]))
  logits = jnp.log(jnp.array([0.3, 0.7]))
  n = 4000
  sampled = evaluate(_push_right, logits, env, jax.random.key(0), n, max_steps=1)
  greedy = evaluate(_push_right, logits, env, jax.random.key(0), n, max_steps=1, greedy=True)
  np.testing.assert_array_equal(greedy.returns, np.ones(n))
  np.testing.assert_array_equal(sampled.lengths, np.ones(n))
  mean = float(sampled.returns.mean())
  assert abs(mean - 0.7) < 4 * np.sqrt(0.21 / n), mean  # about 0.029
  assert set(np.unique(sampled.returns).tolist()) == {0.0, 1.0}
  flipped = evaluate(_push_right, logits[::-1], env, jax.random.key(0), n, max_steps=1,
                     greedy=True)
  np.testing.assert_array_equal(flipped.returns, np.zeros(n))
  # Same key, same episodes.
  again = evaluate(_push_right, logits, env, jax.random.key(0), n, max_steps=1)
  np.testing.assert_array_equal(again.returns, sampled.returns)


def test_mode_is_argmax_mean_and_the_squashed_mean():
  logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
  np.testing.assert_array_equal(mode(Categorical(logits=logits)), [1, 0])
  loc = jnp.array([[0.3, -2.0]])
  gaussian = distrax.MultivariateNormalDiag(loc, jnp.ones_like(loc))
  np.testing.assert_array_equal(mode(gaussian), loc)
  box = distrax.Block(distrax.Chain([distrax.ScalarAffine(shift=1.0, scale=2.0),
                                     distrax.Tanh()]), ndims=1)
  np.testing.assert_allclose(mode(SquashedGaussian(gaussian, box)), 1.0 + 2.0 * jnp.tanh(loc),
                             rtol=1e-6)


def test_results_have_one_entry_per_episode_and_stop_at_max_steps():
  result = evaluate(_push_right, RIGHT, CartPole(), jax.random.key(0), 7, max_steps=3)
  assert result.returns.shape == result.lengths.shape == (7,)
  assert result.returns.dtype == jnp.float32 and result.lengths.dtype == jnp.int32
  # Pushing right takes more than 3 steps to fail: each episode counts its first 3.
  np.testing.assert_array_equal(result.lengths, np.full(7, 3))
  np.testing.assert_array_equal(result.returns, np.full(7, 3.0))


def test_one_compiled_program_serves_other_params_keys_and_statistics():
  traces = []

  def policy(params, obs):
    traces.append(1)
    return Categorical(logits=jnp.broadcast_to(params, obs.shape[:1] + (2,)))

  env = CartPole()
  stats = ObsStats(jnp.float32(10.0), jnp.full((4,), 0.5), jnp.full((4,), 2.0))
  evaluate(policy, RIGHT, env, jax.random.key(0), 4, max_steps=20, obs_stats=stats)
  first = len(traces)
  assert first >= 1
  evaluate(policy, -RIGHT, env, jax.random.key(1), 4, max_steps=20,
           obs_stats=stats._replace(mean=jnp.ones(4)))
  assert len(traces) == first  # no new trace
  evaluate(policy, RIGHT, env, jax.random.key(0), 4, max_steps=20, obs_stats=stats,
           greedy=True)
  assert len(traces) > first  # greedy is another program


def test_statistics_are_applied_and_left_as_they_were():
  env = CartPole()
  stats = ObsStats(jnp.float32(50.0), jnp.array([0.01, -0.02, 0.05, 0.0]),
                   jnp.array([0.01, 0.04, 0.002, 0.09]))
  kept = jax.tree.map(np.array, stats)

  def module(params, obs):  # pushes the way the (seen) pole leans
    return Categorical(logits=obs @ params)

  params = jnp.zeros((4, 2)).at[2, 1].set(100.0)

  def by_hand(params, obs):  # the same policy, normalising for itself
    return module(params, normalize(stats, obs))

  key = jax.random.key(2)
  normalised = evaluate(module, params, env, key, 8, max_steps=40, obs_stats=stats)
  manual = evaluate(by_hand, params, env, key, 8, max_steps=40)
  np.testing.assert_array_equal(normalised.lengths, manual.lengths)
  # On raw observations it balances the pole for all 40 steps; the statistics' shifted
  # angle makes it lean one way, and most episodes end early.
  assert np.sum(normalised.lengths < 40) >= 6
  again = evaluate(module, params, env, key, 8, max_steps=40, obs_stats=stats)
  np.testing.assert_array_equal(again.returns, normalised.returns)
  for name in ObsStats._fields:  # frozen: evaluation never updates them
    np.testing.assert_array_equal(getattr(stats, name), getattr(kept, name))
  with pytest.raises(ValueError, match=r"obs_stats are of observations of shape \[3\]"):
    evaluate(module, params, env, key, 8, max_steps=40,
             obs_stats=ObsStats(jnp.float32(1.0), jnp.zeros(3), jnp.ones(3)))


@pytest.mark.slow
def test_a_recurrent_policy_starts_each_episode_from_its_initial_carry():
  gru = GRUPolicy(2, hidden=8)
  params = as_policy(gru).init(jax.random.key(0), jnp.zeros((1, 4)))
  result = evaluate(gru, params, CartPole(), jax.random.key(1), 3, max_steps=30)
  lengths = np.asarray(result.lengths)
  assert lengths.shape == (3,) and np.all((lengths >= 8) & (lengths <= 30)), lengths
  np.testing.assert_array_equal(result.returns, lengths.astype(np.float32))


def test_an_nnx_module_with_its_own_parameters():
  from flax import nnx

  class Right(nnx.Module):
    def __init__(self, rngs):
      self.logits = nnx.Param(RIGHT)

    def __call__(self, obs):
      return Categorical(logits=jnp.broadcast_to(self.logits[...], obs.shape[:1] + (2,)))

  key = jax.random.key(3)
  result = evaluate(Right(nnx.Rngs(0)), None, CartPole(), key, 6)
  # The plain-function policy that always pushes right, from the same resets.
  np.testing.assert_array_equal(result.lengths,
                                evaluate(_push_right, RIGHT, CartPole(), key, 6).lengths)


@pytest.mark.slow  # a 200-step Pendulum program
def test_a_squashed_gaussian_acts_with_its_mean():
  from reinforce_jax.envs import Pendulum

  gaussian = GaussianPolicy(1, hidden=(), squash=(-2.0, 2.0))
  params = gaussian.init(jax.random.key(0), jnp.zeros((1, 3)))
  greedy = evaluate(gaussian, params, Pendulum(), jax.random.key(4), 2, greedy=True)
  np.testing.assert_array_equal(greedy.lengths, np.full(2, 200))  # Pendulum's time limit


def test_a_gymnax_environment_through_the_adapter():
  gymnax = pytest.importorskip("gymnax")
  from reinforce_jax.envs import GymnaxEnv

  raw, params = gymnax.make("CartPole-v1")
  result = evaluate(_push_right, RIGHT, GymnaxEnv(raw, params), jax.random.key(0), 4)
  lengths = np.asarray(result.lengths)
  assert np.all((lengths >= 5) & (lengths < 30)), lengths  # pushing right falls fast
  np.testing.assert_array_equal(result.returns, lengths.astype(np.float32))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_episodes": 0}, "num_episodes must be a positive integer, got 0"),
    ({"max_steps": 0}, "max_steps must be a positive integer, got 0"),
    ({"env": ContextualBandit()}, "declares no max_steps_in_episode in its params: pass "
                                  "max_steps="),
    ({"obs_stats": {"mean": 0}}, "obs_stats must be normalization.ObsStats"),
    ({"params": None}, "params is None: pass the policy's parameters"),
])
def test_bad_arguments_are_named(kwargs, message):
  arguments = {"policy": _push_right, "params": RIGHT, "env": CartPole(),
               "key": jax.random.key(0), "num_episodes": 2, **kwargs}
  with pytest.raises(ValueError, match=message):
    evaluation.evaluate(**arguments)
