import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import ContextualBandit, make_params, seed_params


def test_seed_task_rewards(bandit):
  obs, state = bandit.reset(jax.random.key(0))
  for action in (0, 1):
    _, _, reward, terminated, truncated, info = bandit.step(
        jax.random.key(1), state, jnp.int32(action))
    x = float(info["final_observation"][0])
    assert float(reward) == float((x > 0) == (action == 1))
    assert bool(terminated) and not bool(truncated)
  assert obs.shape == (1,) and bandit.num_actions == 2 and bandit.observation_shape == (1,)


def test_contexts_are_equally_likely_and_reset_each_step(bandit):
  n = 20_000
  obs, state = jax.vmap(bandit.reset)(jax.random.split(jax.random.key(0), n))
  frac = float(jnp.mean(obs[:, 0] > 0))
  assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / n)
  step = jax.vmap(bandit.step)
  new_obs, _, _, _, _, info = step(jax.random.split(jax.random.key(1), n), state,
                                   jnp.zeros(n, jnp.int32))
  np.testing.assert_array_equal(info["final_observation"], obs)  # auto-reset keeps it
  frac_new = float(jnp.mean(new_obs[:, 0] > 0))
  assert abs(frac_new - 0.5) < 4 * np.sqrt(0.25 / n)
  assert 0.4 < float(jnp.mean(new_obs[:, 0] == obs[:, 0])) < 0.6  # fresh, independent draws


def test_general_params_and_vmap_over_params():
  env = ContextualBandit(make_params(
      contexts=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
      rewards=[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]],
      context_probs=[0.2, 0.3, 0.5]))
  assert env.num_actions == 3 and env.num_contexts == 3 and env.observation_shape == (2,)
  n = 30_000
  obs, _ = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), n))
  freq = [float(jnp.mean(jnp.all(obs == c, axis=1))) for c in env.default_params.contexts]
  np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=4 * np.sqrt(0.25 / n))
  # A batch of reward tables: one vmap over params.
  tables = jnp.stack([seed_params().rewards, 1.0 - seed_params().rewards])
  batch = seed_params().replace(
      contexts=jnp.stack([seed_params().contexts] * 2), rewards=tables,
      context_probs=jnp.stack([seed_params().context_probs] * 2))
  bandit = ContextualBandit()
  keys = jax.random.split(jax.random.key(3), 2)
  _, states = jax.vmap(bandit.reset)(keys, batch)
  _, _, rewards, *_ = jax.vmap(bandit.step)(keys, states, jnp.zeros(2, jnp.int32), batch)
  assert float(rewards[0]) + float(rewards[1]) == 1.0


def test_expected_reward_closed_form():
  params = seed_params()
  assert float(ContextualBandit.expected_reward(jnp.full((2, 2), 0.5), params)) == 0.5
  assert float(ContextualBandit.expected_reward(jnp.eye(2), params)) == 1.0
  with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
    ContextualBandit.expected_reward(jnp.ones((2, 3)), params)


def test_bad_params_raise():
  with pytest.raises(ValueError, match=r"\(3, 1\).*\(2, 2\)"):
    make_params(contexts=np.zeros((3, 1)), rewards=np.zeros((2, 2)))
  with pytest.raises(ValueError, match="context_probs"):
    make_params(contexts=np.zeros((2, 1)), rewards=np.zeros((2, 2)), context_probs=[1.0])


def test_invalid_actions(bandit):
  _, state = bandit.reset(jax.random.key(0))
  for bad in (2, -1):
    with pytest.raises(ValueError, match=r"invalid action .*\[0, 2\)"):
      bandit.step(jax.random.key(0), state, jnp.int32(bad))
  with pytest.raises(ValueError, match="integers"):
    bandit.step(jax.random.key(0), state, jnp.float32(1.0))
  # Under jit the error cannot be raised, so it poisons the outputs instead.
  obs, _, reward, *_ = jax.jit(bandit.step)(jax.random.key(0), state, jnp.int32(5))
  assert np.isnan(float(reward))
  _, _, reward, *_ = jax.jit(bandit.step)(jax.random.key(0), state, jnp.int32(1))
  assert np.isfinite(float(reward))
