"""What keeps PPO's program small and fast, and that it still computes the same thing.

* `make_run` traces the train step once (the metrics' shapes reuse the loop body's trace);
* the minibatch schedule draws every epoch's order in one batched draw, and each
  minibatch gathers its rows by its slice of the order (no shuffled copy per epoch);
* a rollout for advantages that treat a truncation as a termination skips the
  final observation's value (`bootstrap=False`), which those advantages never read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from reinforce_jax.envs import CartPole
from reinforce_jax.rl import algorithms, hparams
from reinforce_jax.rl.policies import CategoricalPolicy
from reinforce_jax.rl.rollouts import reset_envs, rollout
from reinforce_jax.rl.train import make_run, make_train_step
from reinforce_jax.xla import prng

NUM_ENVS, LENGTH = 2, 8


def _policy():
  return CategoricalPolicy(2, hidden=(8,), value="separate")


def _primitives(jaxpr) -> list[str]:
  names = []
  for eqn in jaxpr.eqns:
    names.append(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          names.extend(_primitives(sub.jaxpr))
        elif isinstance(sub, jax.extend.core.Jaxpr):
          names.extend(_primitives(sub))
  return names


def test_make_run_traces_the_step_once():
  init_fn, train_step = make_train_step(CartPole(), _policy(), optax.adam(1e-3),
                                        algorithms.ppo(num_epochs=1, num_minibatches=2),
                                        num_envs=NUM_ENVS, rollout_length=LENGTH)
  traces = []

  def counted(state, key):
    traces.append(1)
    return train_step(state, key)

  state = jax.eval_shape(init_fn, jax.random.key(0))
  jax.make_jaxpr(make_run(counted, 3))(state, jax.random.key(1), 3)
  assert len(traces) == 1


def test_epoch_orders_are_one_batched_draw():
  def sorts(num_epochs):
    algorithm = algorithms.ppo(num_epochs=num_epochs, num_minibatches=2)
    init_fn, train_step = make_train_step(CartPole(), _policy(), optax.adam(1e-3), algorithm,
                                          num_envs=NUM_ENVS, rollout_length=LENGTH)
    state = jax.eval_shape(init_fn, jax.random.key(0))
    return _primitives(jax.make_jaxpr(train_step)(state, jax.random.key(1)).jaxpr).count("sort")

  assert sorts(1) == sorts(5) > 0


@pytest.mark.slow  # compiles a train step (a few seconds)
def test_minibatches_gather_the_rows_of_their_slice_of_the_order():
  num_epochs, num_minibatches = 3, 4
  size = NUM_ENVS * LENGTH
  seen = []

  def loss(hp, algo_state, batch):
    # old_log_prob identifies a transition: record each minibatch's, in update order.
    jax.debug.callback(lambda x: seen.append(np.asarray(x)), batch.old_log_prob, ordered=True)
    return algorithms.ppo_objective(hp, algo_state, batch)

  algorithm = algorithms.ppo(num_epochs=num_epochs, num_minibatches=num_minibatches)
  algorithm = algorithm._replace(loss=loss)
  init_fn, train_step = make_train_step(CartPole(), _policy(), optax.adam(1e-3), algorithm,
                                        num_envs=NUM_ENVS, rollout_length=LENGTH)
  key = jax.random.key(7)
  jax.block_until_ready(jax.jit(train_step)(init_fn(jax.random.key(0)), key))
  assert len(seen) == num_epochs * num_minibatches
  assert all(x.shape == (size // num_minibatches,) for x in seen)
  # The orders the step draws: its key at step 0, split into (rollout, epochs).
  key_epochs = jax.random.split(jax.random.fold_in(key, 0))[1]
  orders = [np.asarray(prng.permutation(k, size)) for k in jax.random.split(key_epochs,
                                                                          num_epochs)]
  epochs = [np.concatenate(seen[e * num_minibatches:(e + 1) * num_minibatches])
            for e in range(num_epochs)]
  data = np.empty(size, np.float32)
  data[orders[0]] = epochs[0]  # the rollout's transitions, in their own order
  for order, shuffled in zip(orders, epochs, strict=True):
    np.testing.assert_array_equal(shuffled, data[order])


def _truncating_cartpole():
  """CartPole cut at 3 steps: every rollout of 8 steps truncates."""
  env = CartPole()
  return env, env.default_params.replace(max_steps_in_episode=3)


@pytest.mark.slow  # compiles a train step (a few seconds)
def test_rollout_without_bootstrap_leaves_zeros_and_the_rest_unchanged():
  (env, env_params), policy = _truncating_cartpole(), _policy()
  carry = reset_envs(jax.random.key(0), env, env_params, NUM_ENVS)
  params = policy.init(jax.random.key(1), carry.obs)
  apply = lambda p, obs: policy.apply(p, obs)  # noqa: E731
  with_value = rollout(jax.random.key(2), params, apply, env, env_params, carry, LENGTH)
  without = rollout(jax.random.key(2), params, apply, env, env_params, carry, LENGTH,
                    bootstrap=False)
  assert bool(jnp.any(with_value[1].truncated))
  assert bool(jnp.any(with_value[1].bootstrap_value != 0))
  np.testing.assert_array_equal(without[1].bootstrap_value, 0.0)
  for a, b in zip(jax.tree.leaves(with_value[1]._replace(bootstrap_value=0)),
                  jax.tree.leaves(without[1]._replace(bootstrap_value=0)), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(with_value[0]), jax.tree.leaves(without[0]), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # compiles a train step (a few seconds)
def test_no_bootstrap_step_has_no_cond_and_matches_the_bootstrapped_rollout():
  env, env_params = _truncating_cartpole()
  hp_cut = hparams.PPO(num_epochs=2, num_minibatches=2, bootstrap_truncation=False)
  hp_boot = hparams.PPO(num_epochs=2, num_minibatches=2)

  def gae_cut(hp, algo_state, traj, last_value):
    del hp
    return algorithms.gae(hp_cut, algo_state, traj, last_value)

  # The same advantages from a rollout that does evaluate the final observations.
  reference = algorithms.build(hp_boot)._replace(advantages=gae_cut)
  results = []
  for algorithm in (algorithms.build(hp_cut), reference):
    init_fn, train_step = make_train_step(env, _policy(), optax.adam(1e-2), algorithm,
                                          num_envs=NUM_ENVS, rollout_length=LENGTH,
                                          env_params=env_params)
    state = init_fn(jax.random.key(0))
    conds = _primitives(jax.make_jaxpr(train_step)(state, jax.random.key(1)).jaxpr)
    results.append(("cond" in conds, jax.jit(train_step)(state, jax.random.key(1))))
  (cond_cut, (state_cut, metrics_cut)), (cond_boot, (state_boot, metrics_boot)) = results
  assert not cond_cut and cond_boot
  for a, b in zip(jax.tree.leaves((state_cut, metrics_cut)),
                  jax.tree.leaves((state_boot, metrics_boot)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_init_draws_the_same_state_with_the_unrolled_keys():
  def state(fast: bool):
    # LeCun-normal kernels: the orthogonal initialiser's Gram-Schmidt is a loop of its own.
    policy = CategoricalPolicy(2, hidden=(8,), value="separate", initializer="lecun_normal")
    init_fn, _ = make_train_step(CartPole(), policy, optax.adam(1e-3), algorithms.ppo(),
                                 num_envs=NUM_ENVS, rollout_length=LENGTH)
    if fast:
      assert " while(" not in init_fn.lower(jax.random.key(3)).compile().as_text()
      return init_fn(jax.random.key(3))
    with prng.disabled():
      return init_fn(jax.random.key(3))

  fast, plain = state(True), state(False)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
