import distrax
import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax import reset_envs, rollout
from reinforce_jax.envs import CartPole
from reinforce_jax.rl.policies import CategoricalPolicy
from reinforce_jax.rl.rollouts import act


def test_time_major_shapes_and_episode_bookkeeping():
  env, policy = CartPole(), CategoricalPolicy(2, hidden=(8,))
  carry = reset_envs(jax.random.key(0), env, env.default_params, 6)
  params = policy.init(jax.random.key(1), carry.obs)
  run = jax.jit(rollout, static_argnames=("apply_fn", "env", "num_steps"))
  carry, traj = run(jax.random.key(2), params, policy.apply, env, env.default_params, carry,
                    num_steps=60)
  assert traj.log_prob.shape == traj.reward.shape == traj.terminated.shape == (60, 6)
  done = np.asarray(traj.terminated | traj.truncated)
  assert done.any()
  # A finished episode's return is its length (reward 1 per step), and the counters
  # restart: what is still running equals the steps since the last end.
  np.testing.assert_array_equal(traj.episode_return[done], traj.episode_length[done])
  for b in range(6):
    ends = np.flatnonzero(done[:, b])
    since = 60 - (ends[-1] + 1 if ends.size else 0)
    assert int(carry.episode_length[b]) == since
    assert float(carry.episode_return[b]) == since
    if ends.size > 1:
      assert np.all(np.diff(ends) == traj.episode_length[ends[1:], b])


def test_log_prob_is_differentiable_and_actions_are_not():
  env, policy = CartPole(), CategoricalPolicy(2, hidden=())
  carry = reset_envs(jax.random.key(0), env, env.default_params, 4)
  params = policy.init(jax.random.key(1), carry.obs)

  def total_log_prob(p):
    _, traj = rollout(jax.random.key(2), p, policy.apply, env, env.default_params, carry, 5)
    return traj.log_prob.sum()

  grads = jax.grad(total_log_prob)(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_act_scores_categorical_and_other_distributions():
  logits = jnp.array([[0.2, 1.0, -0.3], [2.0, 0.0, 0.0]])
  dist = distrax.Categorical(logits=logits)
  action, sample, log_prob, entropy = act(dist, jax.random.key(0))
  np.testing.assert_array_equal(action, sample)
  np.testing.assert_allclose(log_prob, dist.log_prob(action), rtol=1e-6)
  np.testing.assert_allclose(entropy, dist.entropy(), rtol=1e-6)
  # Any other distribution goes through its own methods.
  normal = distrax.Normal(jnp.zeros(3), jnp.ones(3))
  action, _, log_prob, entropy = act(normal, jax.random.key(1))
  np.testing.assert_allclose(log_prob, normal.log_prob(action), rtol=1e-6)
  np.testing.assert_allclose(entropy, normal.entropy(), rtol=1e-6)
