"""ObservationMask and hide_velocities: the same episodes, fewer observed entries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reinforce_jax.envs import CartPole, ObservationMask, Pendulum, hide_velocities, make
from reinforce_jax.rl.policies import CategoricalPolicy
from reinforce_jax.rl.rollouts import reset_envs, rollout

# Episodes of 10 steps at most: pushing one way ends one sooner (terminated), alternating
# pushes reach the limit (truncated).
SHORT = CartPole().default_params.replace(max_steps_in_episode=10)


def test_masked_cartpole_keeps_position_and_angle_and_everything_else():
  raw_env, env = CartPole(), hide_velocities()
  assert env.observation_shape == (2,) and env.num_actions == 2 and env.keep == (0, 2)
  raw, raw_state = raw_env.reset(jax.random.key(0), SHORT)
  obs, state = env.reset(jax.random.key(0), SHORT)
  np.testing.assert_array_equal(obs, raw[jnp.array([0, 2])])
  step, raw_step = jax.jit(env.step), jax.jit(raw_env.step)
  ends = {"terminated": 0, "truncated": 0}
  for t in range(40):
    key, action = jax.random.key(t), jnp.int32(t >= 20 and t % 2)
    raw, raw_state, raw_reward, raw_term, raw_trunc, raw_info = raw_step(
        key, raw_state, action, SHORT)
    obs, state, reward, term, trunc, info = step(key, state, action, SHORT)
    np.testing.assert_array_equal(obs, raw[jnp.array([0, 2])])
    np.testing.assert_array_equal(info["final_observation"],
                                  raw_info["final_observation"][jnp.array([0, 2])])
    assert (float(reward), bool(term), bool(trunc)) == (
        float(raw_reward), bool(raw_term), bool(raw_trunc))
    jax.tree.map(np.testing.assert_array_equal, state, raw_state)
    ends["terminated"] += int(term)
    ends["truncated"] += int(trunc)
  assert ends["terminated"] > 0 and ends["truncated"] > 0


def test_the_batched_paths_are_the_wrapped_environments_masked():
  raw_env, env = CartPole(), ObservationMask(CartPole(), keep=(3, 1))  # any order
  raw, raw_state = raw_env.reset_batch(jax.random.key(0), SHORT, 8)
  obs, state = env.reset_batch(jax.random.key(0), SHORT, 8)
  np.testing.assert_array_equal(obs, raw[:, jnp.array([3, 1])])
  for t in range(12):
    action = jnp.arange(8, dtype=jnp.int32) % 2
    raw, raw_state, _, raw_term, raw_trunc, raw_info = raw_env.step_batch(
        jax.random.key(t), raw_state, action, SHORT)
    obs, state, _, term, trunc, info = env.step_batch(jax.random.key(t), state, action, SHORT)
    np.testing.assert_array_equal(obs, raw[:, jnp.array([3, 1])])
    np.testing.assert_array_equal(info["final_observation"],
                                  raw_info["final_observation"][:, jnp.array([3, 1])])
    np.testing.assert_array_equal(term, raw_term)
    np.testing.assert_array_equal(trunc, raw_trunc)


def test_a_rollout_sees_the_masked_observations():
  env = make("MaskedCartPole-v1")
  policy = CategoricalPolicy(2, hidden=(8,))
  carry = reset_envs(jax.random.key(0), env, env.default_params, 4)
  params = policy.init(jax.random.key(1), carry.obs)
  _, traj = rollout(jax.random.key(2), params, policy.apply, env, env.default_params, carry, 30)
  assert traj.obs.shape == (30, 4, 2)
  assert bool(jnp.any(traj.terminated))


def test_observation_mask_refuses_bad_indices():
  for keep in ((), (0, 0), (4,), (-1,)):
    with pytest.raises(ValueError, match=r"distinct indices in \[0, 4\)"):
      ObservationMask(CartPole(), keep=keep)
  assert ObservationMask(Pendulum(), keep=(2,)).observation_shape == (1,)
