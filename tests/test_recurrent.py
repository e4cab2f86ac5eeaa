"""A recurrent policy's carry: reset exactly where an episode ended, replayed the same way.

PureJaxRL's `ppo_rnn.py` resets its GRU state inside the network from a done
flag passed alongside the observation, and its users report carry bugs there
(purejaxrl #29: initialising the carry; JaxMARL #119: resetting with the wrong
step's done). Here the rollout resets the carry itself, and PPO's minibatches
replay each environment's sequence from the rollout's first carry with the same
resets (`rollout.replay`). These tests pin both down, and check that the
comparisons they rely on do see a reset at the wrong step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reinforce_jax as rj
from reinforce_jax import algorithms, envs, policies
from reinforce_jax.rl.rollouts import replay, reset_envs, rollout

B, T = 4, 48
ENV = envs.hide_velocities()
# Episodes of at most 12 steps, so both terminations and truncations happen in a short rollout.
PARAMS = ENV.default_params.replace(max_steps_in_episode=12)
POLICY = policies.as_policy(policies.GRUPolicy(2, hidden=8))


def _decisive(params):
  """The GRU's logits layer scaled up: its initial one (orthogonal 0.01) keeps every policy
  near uniform, whatever the carry, and a wrong carry would change log-probs by ~1e-4 only."""
  logits = params["params"]["logits"]
  return {"params": {**params["params"], "logits": {**logits, "kernel": 300 * logits["kernel"]}}}


def _start(key):
  """Parameters, and an EnvCarry whose GRU state is not the initial one (so a reset shows)."""
  key_env, key_params, key_carry = jax.random.split(key, 3)
  carry = reset_envs(key_env, ENV, PARAMS, B, POLICY)
  np.testing.assert_array_equal(carry.policy_carry, np.zeros((B, 8)))  # initialize_carry
  params = _decisive(POLICY.init(key_params, carry.obs))
  return params, carry._replace(policy_carry=jax.random.normal(key_carry, (B, 8)))


@pytest.mark.slow
def test_the_carry_is_reset_exactly_where_an_episode_ended():
  """Step by step: a finished episode's carry is `initialize_carry`, every other the GRU's."""
  params, carry = _start(jax.random.key(0))
  fresh = POLICY.initial_carry(B)
  step = jax.jit(lambda key, carry: rollout(key, params, POLICY, ENV, PARAMS, carry, 1))
  terminated = truncated = 0
  for t in range(T):
    stepped = POLICY.apply(params, carry.policy_carry, carry.obs)[0]
    carry, traj = step(jax.random.key(t), carry)
    done = np.asarray(traj.terminated[0] | traj.truncated[0])
    np.testing.assert_array_equal(carry.policy_carry[done], fresh[done])
    np.testing.assert_allclose(carry.policy_carry[~done], stepped[~done], rtol=1e-6, atol=1e-6)
    if done.any():  # the GRU's own step would not have been the initial carry
      assert not np.allclose(stepped[done], fresh[done])
    terminated += int(traj.terminated.sum())
    truncated += int(traj.truncated.sum())
  assert terminated > 0 and truncated > 0


@pytest.mark.slow
def test_replay_reproduces_the_rollout_and_sees_a_wrong_reset():
  params, carry = _start(jax.random.key(1))
  _, traj = rollout(jax.random.key(2), params, POLICY, ENV, PARAMS, carry, T)
  done = traj.terminated | traj.truncated
  assert int(done.sum()) >= 2 * B
  log_prob, _, value = replay(params, POLICY, carry.policy_carry, traj.obs, traj.sample, done)
  np.testing.assert_allclose(log_prob, traj.log_prob, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(value, traj.value, rtol=1e-5, atol=1e-6)

  def mismatch(first_carry, resets):
    out = replay(params, POLICY, first_carry, traj.obs, traj.sample, resets)[0]
    return float(jnp.max(jnp.abs(out - traj.log_prob)))

  late = jnp.concatenate([jnp.zeros_like(done[:1]), done[:-1]])  # reset one step late
  early = jnp.concatenate([done[1:], jnp.zeros_like(done[:1])])  # one step early
  for wrong in (late, early, jnp.zeros_like(done)):
    assert mismatch(carry.policy_carry, wrong) > 1e-3
  # Starting from the initial carry instead of the rollout's first one (purejaxrl #29).
  assert mismatch(POLICY.initial_carry(B), done) > 1e-3


@pytest.mark.slow
def test_ppo_minibatches_replay_a_recurrent_rollout_exactly():
  """With a zero learning rate every minibatch sees the rollout's policy: log ratio 0.

  The minibatches split the environments (2 of 2 each) and each replays its
  sequences from the rollout's first carry, which after the first step is not
  the initial one (rollouts of 10 steps, episodes of at most 12).
  """
  def loss(hp, algo_state, batch):
    value, metrics = algorithms.ppo_objective(hp, algo_state, batch)
    return value, {**metrics, "max_log_ratio": jnp.max(jnp.abs(
        batch.log_prob - batch.old_log_prob))}

  algo = algorithms.ppo(num_epochs=2, num_minibatches=2)._replace(loss=loss)
  init_fn, train_step = rj.make_train_step(ENV, POLICY, optax.sgd(0.0), algo, num_envs=B,
                                           rollout_length=10, env_params=PARAMS)
  state = init_fn(jax.random.key(3))
  state, step = state._replace(params=_decisive(state.params)), jax.jit(train_step)
  carried = []
  for _ in range(4):
    carried.append(not np.allclose(state.env.policy_carry, 0.0))
    state, metrics = step(state, jax.random.key(4))
    assert float(metrics["max_log_ratio"]) < 1e-5
  assert carried == [False, True, True, True]
