import jax
import jax.numpy as jnp
import numpy as np

from reinforce_jax import reset_envs, rollout
from reinforce_jax.envs import CartPole
from reinforce_jax.policies import CategoricalPolicy
from reinforce_jax.rollout import sample_action


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


def test_inverse_cdf_sampling_has_the_right_distribution():
  policy = CategoricalPolicy(3, hidden=())
  logits_params = {"params": {"logits": {"kernel": jnp.zeros((1, 3)),
                                         "bias": jnp.log(jnp.array([0.2, 0.5, 0.3]))}}}
  n = 50_000
  dist = policy.apply(logits_params, jnp.zeros((n, 1)))
  actions = sample_action(dist, jax.random.key(0))
  freq = np.bincount(np.asarray(actions), minlength=3) / n
  np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=4 * np.sqrt(0.25 / n))
