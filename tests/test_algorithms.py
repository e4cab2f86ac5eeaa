"""Algorithms as values: the parts, their composition, and what a researcher swaps."""

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import reinforce_jax as rj
from reinforce_jax import algorithms, baselines, hparams, policies
from reinforce_jax.envs import CartPole, ContextualBandit
from reinforce_jax.rl.policies import CategoricalPolicy

CARTPOLE_SHAPE = {"num_envs": 8, "rollout_length": 16}


def _one_step(env, policy, algorithm, key=0, **kwargs):
  init_fn, train_step = rj.make_train_step(env, policy, optax.sgd(0.1), algorithm,
                                           **{**CARTPOLE_SHAPE, **kwargs})
  state = init_fn(jax.random.key(key))
  return state, jax.jit(train_step)(state, jax.random.key(key + 1))


@pytest.mark.parametrize("config, algorithm", [
    (rj.TrainConfig(num_envs=8, rollout_length=16, baseline="leave_one_out", gamma=0.9),
     algorithms.reinforce(baseline=baselines.LeaveOneOut(), gamma=0.9)),
    (rj.TrainConfig(num_envs=8, rollout_length=16, algo="a2c", gae_lambda=0.8),
     algorithms.a2c(gae_lambda=0.8)),
    (rj.TrainConfig(num_envs=8, rollout_length=16, algo="ppo", num_minibatches=2,
                    clip_eps=0.1),
     algorithms.ppo(num_minibatches=2, clip_eps=0.1)),
])
def test_a_config_names_exactly_the_algorithm_built_from_parts(config, algorithm):
  built = algorithms.build(config.algorithm)
  assert built.hparams == algorithm.hparams and built.needs_value == algorithm.needs_value
  assert (built.advantages, built.loss, built.schedule) == (
      algorithm.advantages, algorithm.loss, algorithm.schedule)


@pytest.mark.slow  # ~20 s of CartPole training; make test-slow runs it
def test_a_config_and_the_algorithm_it_names_train_identically():
  """The most involved case (PPO's minibatches) trained both ways: the same bits."""
  config = rj.TrainConfig(num_envs=8, rollout_length=16, algo="ppo", num_minibatches=2,
                          clip_eps=0.1)
  env = CartPole()
  policy = CategoricalPolicy(2, hidden=(8,), value="separate")
  by_config = _one_step(env, policy, config, num_envs=None, rollout_length=None)
  by_value = _one_step(env, policy, algorithms.ppo(num_minibatches=2, clip_eps=0.1))
  chex.assert_trees_all_equal(by_config[1], by_value[1])


def test_make_train_step_needs_a_batch_shape_and_an_algorithm():
  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  with pytest.raises(ValueError, match="num_envs=B, rollout_length=T"):
    rj.make_train_step(env, policy, optax.sgd(0.1), algorithms.reinforce())
  with pytest.raises(ValueError, match="algorithm must be"):
    rj.make_train_step(env, policy, optax.sgd(0.1), "ppo", num_envs=2, rollout_length=1)
  with pytest.raises(ValueError, match="num_envs must be a positive integer"):
    rj.make_train_step(env, policy, optax.sgd(0.1), algorithms.reinforce(), num_envs=0,
                       rollout_length=1)
  with pytest.raises(ValueError, match="contradicts the config's 1024"):
    rj.make_train_step(env, policy, optax.sgd(0.1), rj.TrainConfig(), num_envs=8)
  with pytest.raises(ValueError, match="needs num_envs >= 2"):
    rj.make_train_step(env, policy, optax.sgd(0.1),
                       algorithms.reinforce(baseline=baselines.LeaveOneOut()), num_envs=1,
                       rollout_length=1)
  with pytest.raises(ValueError, match="needs a value head"):
    init_fn, _ = rj.make_train_step(env, policy, optax.sgd(0.1), algorithms.a2c(), num_envs=2,
                                    rollout_length=1)
    init_fn(jax.random.key(0))


def test_hyperparameter_values_build_their_algorithm():
  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  by_hparams = _one_step(env, policy, hparams.Reinforce(entropy_coef=0.1), num_envs=16,
                         rollout_length=1)
  by_builder = _one_step(env, policy, algorithms.reinforce(entropy_coef=0.1), num_envs=16,
                         rollout_length=1)
  chex.assert_trees_all_equal(by_hparams[1], by_builder[1])


@pytest.mark.slow
def test_a_loss_without_mean_terms_still_gets_the_episode_metrics():
  """The step reduces the episode columns itself when the loss does not."""
  env, policy = CartPole(), CategoricalPolicy(2, hidden=(8,))

  def plain_loss(hp, algo_state, batch):
    del algo_state
    loss = -jnp.mean(batch.log_prob * batch.advantage) - hp.entropy_coef * jnp.mean(
        batch.entropy)
    return loss, {"policy_loss": -jnp.mean(batch.log_prob * batch.advantage)}

  builtin = algorithms.reinforce(entropy_coef=0.01)
  _, (state_a, metrics_a) = _one_step(env, policy, builtin)
  _, (state_b, metrics_b) = _one_step(env, policy, builtin._replace(loss=plain_loss))
  for name in ("mean_return", "num_episodes", "mean_length", "policy_loss", "loss"):
    np.testing.assert_allclose(metrics_a[name], metrics_b[name], rtol=1e-5, err_msg=name)
  chex.assert_trees_all_close(state_a.params, state_b.params, rtol=1e-5, atol=1e-7)
  assert "entropy" not in metrics_b  # the custom loss reports what it chooses to


@pytest.mark.slow  # ~11 s; make test-slow runs it
def test_a_variant_replaces_one_part_and_the_change_shows():
  """PPO with the unclipped surrogate (a 3-line loss) differs from PPO only in its loss."""
  env = CartPole()
  policy = CategoricalPolicy(2, hidden=(8,), value="separate")

  def unclipped(hp, algo_state, batch):
    ratio = jnp.exp(batch.log_prob - batch.old_log_prob)
    loss = -jnp.mean(ratio * batch.advantage) + hp.value_coef * rj.value_loss(
        batch.value, batch.target)
    return loss, {}

  base = algorithms.ppo(num_minibatches=2, clip_eps=0.01)
  _, (clipped_state, _) = _one_step(env, policy, base)
  _, (free_state, metrics) = _one_step(env, policy, base._replace(loss=unclipped))
  assert {"loss", "grad_norm", "mean_return"} <= set(metrics)
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), clipped_state.params,
                      free_state.params)
  assert max(jax.tree.leaves(diff)) > 1e-4


def test_a_carry_is_initialised_updated_and_seen_by_the_loss():
  """A toy adaptive coefficient: doubled after every step, read by the loss."""
  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  seen = []

  def loss(hp, coef, batch):
    seen.append(coef)
    return -jnp.mean(batch.log_prob * batch.advantage) * coef, {"coef": coef}

  doubling = algorithms.Carry(init=lambda hp: jnp.float32(0.5),
                              update=lambda hp, coef, *rest: 2.0 * coef)
  algorithm = algorithms.reinforce()._replace(loss=loss, carry=doubling)
  init_fn, train_step = rj.make_train_step(env, policy, optax.sgd(0.1), algorithm,
                                           num_envs=4, rollout_length=1)
  state = init_fn(jax.random.key(0))
  step = jax.jit(train_step)
  coefs = []
  for _ in range(3):
    state, metrics = step(state, jax.random.key(1))
    coefs.append(float(metrics["coef"]))
  assert coefs == [0.5, 1.0, 2.0] and float(state.algo_state) == 4.0


def test_the_ema_baseline_is_carried_state():
  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
  algorithm = algorithms.reinforce(baseline=baselines.EMA(decay=0.5))
  init_fn, train_step = rj.make_train_step(env, policy, optax.sgd(0.1), algorithm,
                                           num_envs=64, rollout_length=1)
  state = init_fn(jax.random.key(0))
  assert float(state.algo_state) == 0.0
  new, metrics = jax.jit(train_step)(state, jax.random.key(1))
  # decay 0.5 from 0: half the mean reward of the step's episodes.
  np.testing.assert_allclose(new.algo_state, 0.5 * metrics["mean_return"], rtol=1e-6)


@pytest.mark.slow
def test_a_schedule_of_your_own_is_called_with_the_learner():
  """Any value with `step(learner, state, key)` and `updates_per_step` is a schedule."""
  env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())

  calls = []

  class TwoPasses:
    updates_per_step = 2

    def step(self, learner, state, key):
      calls.append(learner)
      one = algorithms.one_pass()
      state, _ = one.step(learner, state, jax.random.fold_in(key, 0))
      return one.step(learner, state, jax.random.fold_in(key, 1))

  results = {}
  for name, schedule in (("two", TwoPasses()), ("one", algorithms.one_pass())):
    algorithm = algorithms.reinforce()._replace(schedule=schedule)
    init_fn, train_step = rj.make_train_step(env, policy, optax.adam(0.1), algorithm,
                                             num_envs=4, rollout_length=1)
    results[name], _ = jax.jit(train_step)(init_fn(jax.random.key(0)), jax.random.key(1))
  assert isinstance(calls[0], algorithms.Learner) and calls[0].num_envs == 4
  assert int(results["two"].step) == 1  # one train step, two updates inside it
  assert int(results["two"].opt_state[0].count) == 2 == 2 * int(results["one"].opt_state[0].count)
  assert rj.rl.train.updates_per_step(algorithm._replace(schedule=TwoPasses())) == 2


@pytest.mark.slow
def test_traced_ppo_hyperparameters_vmap_without_recompiling():
  env = CartPole()
  policy = CategoricalPolicy(2, hidden=(8,), value="separate")
  algorithm = algorithms.ppo(num_minibatches=2)
  init_fn, train_step = rj.make_train_step(env, policy, optax.adam(1e-2), algorithm,
                                           **CARTPOLE_SHAPE)
  state = init_fn(jax.random.key(0))

  def with_clip(clip):
    hp = algorithms.traced(algorithm.hparams, clip_eps=clip)
    return train_step(state._replace(hyperparams=hp), jax.random.key(1))[1]["clip_fraction"]

  fractions = jax.jit(jax.vmap(with_clip))(jnp.array([1e-4, 10.0]))
  assert fractions[0] > 0 and fractions[1] == 0  # clipping everything vs nothing
  with pytest.raises(ValueError, match="clip_eps must be"):
    algorithms.traced(algorithm.hparams, clip_eps=-1.0)
  with pytest.raises(ValueError, match="clip_eps must be"):
    algorithms.traced(algorithm.hparams, clip_eps=jnp.array([0.1, -1.0]))


# --- Policies: every kind drops in --------------------------------------------------


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, obs):
    return policies.Categorical(logits=nn.Dense(2, name="logits")(obs))


@pytest.mark.slow  # ~13 s; make test-slow runs it
def test_a_plain_function_a_linen_module_and_nnx_train_the_same_policy():
  """Same parameters, three ways to write the policy: the same step, to the bit."""
  env = CartPole()
  module = _Linear()
  params = module.init(jax.random.key(0), jnp.zeros((1, 4)))
  kernel, bias = params["params"]["logits"]["kernel"], params["params"]["logits"]["bias"]

  def apply(p, obs):
    return policies.Categorical(logits=obs @ p["kernel"] + p["bias"])

  class NNXLinear(nnx.Module):
    def __init__(self):
      self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)

    def __call__(self, obs):
      return policies.Categorical(logits=obs @ self.kernel[...] + self.bias[...])

  linen = policies.from_function(module.apply, params)
  plain = policies.from_function(apply, {"kernel": kernel, "bias": bias})
  results = [_one_step(env, p, algorithms.reinforce())[1][1]
             for p in (linen, plain, NNXLinear())]
  for other in results[1:]:
    chex.assert_trees_all_close(results[0], other, rtol=1e-6, atol=1e-7)
  # init_params= is the same as from_function.
  by_keyword = _one_step(env, apply, algorithms.reinforce(),
                         init_params={"kernel": kernel, "bias": bias})[1][1]
  chex.assert_trees_all_equal(results[1], by_keyword)


@pytest.mark.slow
def test_an_nnx_constructor_gives_each_seed_its_parameters_and_traces_once():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.hidden, self.out = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, obs):
      return policies.Categorical(logits=self.out(jnp.tanh(self.hidden(obs))))

  init_fn, train_step = rj.make_train_step(CartPole(), policies.from_nnx(Net), optax.adam(1e-2),
                                           algorithms.reinforce(), **CARTPOLE_SHAPE)
  states = jax.vmap(init_fn)(jax.random.split(jax.random.key(0), 2))
  kernels = states.params["out"]["kernel"][...]
  assert not np.allclose(kernels[0], kernels[1])
  traces = []

  def counted(state, key):
    traces.append(1)
    return train_step(state, key)

  step = jax.jit(counted)
  state = jax.tree.map(lambda x: x[0], states)
  for _ in range(3):
    state, metrics = step(state, jax.random.key(1))
  assert len(traces) == 1 and np.isfinite(float(metrics["loss"]))


def test_a_plain_function_without_parameters_is_refused_with_the_way_out():
  def apply(p, obs):
    return distrax.Categorical(logits=obs)

  with pytest.raises(ValueError, match="init_params=params"):
    rj.make_train_step(CartPole(), apply, optax.sgd(0.1), algorithms.reinforce(),
                       **CARTPOLE_SHAPE)
  with pytest.raises(ValueError, match="not a policy"):
    policies.as_policy(3)


@pytest.mark.slow
def test_distributions_own_their_fast_paths_and_plain_distrax_scores_the_same():
  logits = jax.random.normal(jax.random.key(0), (64, 3))
  fast = policies.Categorical(logits=logits)
  plain = distrax.Categorical(logits=logits)
  action, sample, log_prob, entropy = policies.sample_and_score(fast, jax.random.key(1))
  np.testing.assert_array_equal(action, sample)
  np.testing.assert_allclose(log_prob, plain.log_prob(action), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(entropy, plain.entropy(), rtol=1e-5, atol=1e-6)
  generic = policies.sample_and_score(plain, jax.random.key(1))
  np.testing.assert_allclose(generic[2], plain.log_prob(generic[0]), rtol=1e-6)
  # The gradient of the score goes through the logits, not the sampled action.
  grad = jax.grad(lambda z: jnp.sum(policies.score(policies.Categorical(logits=z), action)[0]))(
      logits)
  expected = jax.nn.one_hot(action, 3) - jax.nn.softmax(logits)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
