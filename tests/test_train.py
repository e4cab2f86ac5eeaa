import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_linear_params

import reinforce_jax as rj
from reinforce_jax.envs import CartPole, ContextualBandit
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.rl.policies import CategoricalPolicy

SMALL = rj.TrainConfig(num_envs=32, num_steps=6)


def test_state_is_small_and_metrics_are_scalars(bandit, linear_policy):
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.05), SMALL)
  state = init_fn(jax.random.key(0))
  assert isinstance(state, rj.TrainState) and state.env.obs.shape == (32, 1)
  state, metrics = jax.jit(train_step)(state, jax.random.key(1))
  assert int(state.step) == 1
  assert {"loss", "mean_return", "num_episodes"} <= set(metrics)
  assert all(np.shape(v) == () for v in metrics.values())
  assert int(metrics["num_episodes"]) == 32  # one-step episodes


@pytest.mark.slow
def test_jit_and_eager_agree_and_same_key_is_bit_identical(bandit, linear_policy):
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.05), SMALL)
  state = init_fn(jax.random.key(0))
  eager = train_step(state, jax.random.key(1))
  jitted = jax.jit(train_step)
  compiled = jitted(state, jax.random.key(1))
  chex.assert_trees_all_close(eager, compiled, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_equal(compiled, jitted(state, jax.random.key(1)))
  other = jitted(state, jax.random.key(2))
  assert not np.array_equal(other[0].env.obs, compiled[0].env.obs)


def _counting_traces(train_step):
  """`(counted_step, traces)`: `traces` grows by one each time JAX traces the step."""
  traces = []

  def counted(state, key):
    traces.append(1)
    return train_step(state, key)

  return counted, traces


def test_second_call_with_same_shapes_does_not_retrace(bandit, linear_policy):
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.05), SMALL)
  counted, traces = _counting_traces(train_step)
  step = jax.jit(counted, donate_argnums=0)
  state = init_fn(jax.random.key(0))
  key = jax.random.key(1)
  for _ in range(4):
    state, _ = step(state, key)  # the state coming out must look exactly like the one in
  assert len(traces) == 1 and int(state.step) == 4


@pytest.mark.slow
def test_vmap_over_seeds_equals_separate_runs(bandit, linear_policy):
  train = rj.make_train(bandit, linear_policy, optax.adam(0.05), SMALL)
  keys = jax.random.split(jax.random.key(0), 3)
  together = jax.jit(jax.vmap(train))(keys)
  single = jax.jit(train)
  for i in range(3):
    chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], together),
                                single(keys[i]), rtol=1e-5, atol=1e-6)


def test_chunked_run_is_bit_identical_to_one_program(bandit, linear_policy):
  config = SMALL.replace(num_steps=7)
  optimizer = optax.adam(0.05)
  whole = jax.jit(rj.make_train(bandit, linear_policy, optimizer, config))(jax.random.key(4))
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optimizer, config)
  key_init, key_run = jax.random.split(jax.random.key(4))
  run = jax.jit(rj.make_run(train_step, 3))
  state, losses = init_fn(key_init), []
  for n in (3, 3, 1):
    out = run(state, key_run, n)
    assert int(out.steps_done) == n and bool(out.finite)
    state = out.state
    losses.append(np.asarray(out.metrics["loss"][:n]))
  chex.assert_trees_all_equal(state, whole.state)
  np.testing.assert_array_equal(np.concatenate(losses), whole.metrics["loss"])


def test_train_step_gradient_is_unbiased(bandit, linear_policy):
  """SGD with step 1 exposes the gradient: params_new - params estimates grad E[r]."""
  n = 2**15
  config = rj.TrainConfig(num_envs=n)
  params = random_linear_params(jax.random.key(21))
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.sgd(1.0), config)
  state = init_fn(jax.random.key(0))._replace(params=params)
  new_state, _ = jax.jit(train_step)(state, jax.random.key(1))
  flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa: E731
  estimate = flat(new_state.params) - flat(params)
  env_params = bandit.default_params

  def expected(p):
    return ContextualBandit.expected_reward(
        linear_policy.apply(p, env_params.contexts).probs, env_params)

  exact = flat(jax.grad(expected)(params))
  # Closed-form per-episode variance by enumerating the four (context, action) pairs.
  second_moment = 0.0
  for c in range(2):
    for a in range(2):
      def log_pi(p, c=c, a=a):
        return linear_policy.apply(p, env_params.contexts[c]).log_prob(a)
      prob = 0.5 * jnp.exp(log_pi(params))
      second_moment += prob * (flat(jax.grad(log_pi)(params)) * env_params.rewards[c, a])**2
  stderr = jnp.sqrt((second_moment - exact**2) / n)
  assert np.all(np.abs(estimate - exact) < 4 * stderr), (estimate, exact, stderr)


def test_bandit_default_config_reaches_expected_reward_099(bandit):
  preset = PRESETS["bandit"]
  config = preset.configs["reinforce"]
  policy = CategoricalPolicy(2, hidden=preset.hidden)
  out = jax.jit(rj.make_train(bandit, policy, rj.make_optimizer(config), config))(
      jax.random.key(0))
  assert bool(out.finite) and int(out.steps_done) == config.num_steps
  probs = policy.apply(out.state.params, bandit.default_params.contexts).probs
  assert float(ContextualBandit.expected_reward(probs, bandit.default_params)) >= 0.99


@pytest.mark.slow
def test_cartpole_return_rises_well_above_random():
  preset = PRESETS["cartpole"]
  config = preset.configs["reinforce"].replace(num_steps=40)
  env = CartPole()
  policy = CategoricalPolicy(2, hidden=preset.hidden)
  out = jax.jit(rj.make_train(env, policy, rj.make_optimizer(config), config))(
      jax.random.key(0))
  returns = np.asarray(out.metrics["mean_return"])
  assert returns[:3].mean() < 30  # a near-uniform policy: about 22
  assert np.nanmean(returns[-5:]) > 150


@pytest.mark.parametrize("name, optimizer", [
    ("chain+clip", optax.chain(optax.clip_by_global_norm(0.1), optax.adam(0.05))),
    ("schedule", optax.adam(optax.linear_schedule(0.05, 0.0, 5))),
    ("inject_hyperparams", optax.inject_hyperparams(optax.adam)(learning_rate=0.05)),
    ("MultiSteps", optax.MultiSteps(optax.adam(0.05), every_k_schedule=3)),
])
def test_optax_compositions(bandit, linear_policy, name, optimizer):
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optimizer, SMALL)
  step = jax.jit(train_step)
  state = init_fn(jax.random.key(0))
  params = [state.params]
  for _ in range(6):
    state, metrics = step(state, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    params.append(state.params)
  changed = [not np.array_equal(params[i + 1]["params"]["logits"]["kernel"],
                                params[i]["params"]["logits"]["kernel"]) for i in range(6)]
  if name == "MultiSteps":
    assert changed == [False, False, True, False, False, True]
  elif name == "schedule":
    assert changed == [True] * 5 + [False]  # the rate reaches 0 at the last step
  else:
    assert all(changed)
  if name == "inject_hyperparams":  # a hyperparameter is state: set it to 0 and nothing moves
    state.opt_state.hyperparams["learning_rate"] = jnp.zeros_like(
        state.opt_state.hyperparams["learning_rate"])
    frozen, _ = step(state, jax.random.key(2))
    chex.assert_trees_all_equal(frozen.params, state.params)


def _nan_after(k):
  """An optimizer that works as SGD until its k-th update, which is NaN."""
  def init(params):
    return jnp.zeros((), jnp.int32)

  def update(grads, count, params=None):
    del params
    bad = count >= k
    updates = jax.tree.map(lambda g: jnp.where(bad, jnp.nan, -0.1 * g), grads)
    return updates, count + 1

  return optax.GradientTransformation(init, update)


def test_run_stops_on_non_finite_and_keeps_last_good_params(bandit, linear_policy):
  config = SMALL.replace(num_steps=5)
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, _nan_after(2), config)
  key_init, key_run = jax.random.split(jax.random.key(0))
  state = init_fn(key_init)
  out = jax.jit(rj.make_run(train_step, 5))(state, key_run, 5)
  assert int(out.steps_done) == 2 and not bool(out.finite)
  good = jax.jit(rj.make_run(train_step, 5))(state, key_run, 2)
  assert bool(good.finite)
  chex.assert_trees_all_equal(out.state, good.state)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.state.params))


def test_vmapped_runs_stop_independently(bandit, linear_policy):
  config = SMALL.replace(num_steps=4)
  _, train_step = rj.make_train_step(bandit, linear_policy, _nan_after(1), config)
  init_fn, _ = rj.make_train_step(bandit, linear_policy, _nan_after(1), config)
  states = jax.vmap(init_fn)(jax.random.split(jax.random.key(0), 2))
  # Seed 1 starts with its counter past the NaN step: it stops at once.
  states = states._replace(opt_state=jnp.array([0, 5], jnp.int32))
  run = jax.jit(jax.vmap(rj.make_run(train_step, 4), in_axes=(0, 0, None)))
  out = run(states, jax.random.split(jax.random.key(1), 2), 4)
  np.testing.assert_array_equal(out.steps_done, [1, 0])
  np.testing.assert_array_equal(out.finite, [False, False])


# --- a2c and ppo share the rollout and the returns module ---

def _run_preset(env_name, algo, num_steps, seed=0):
  preset = PRESETS[env_name]
  config = preset.configs[algo].replace(num_steps=num_steps)
  env = preset.make_env()
  policy = preset.policy(env, config)
  train = rj.make_train(env, policy, rj.make_optimizer(config), config)
  return jax.jit(train)(jax.random.key(seed))


@pytest.mark.slow
def test_a2c_learns_cartpole():
  out = _run_preset("cartpole", "a2c", 60)
  returns = np.asarray(out.metrics["mean_return"])
  assert "value_loss" in out.metrics
  assert np.nanmean(returns[:3]) < 30 and np.nanmean(returns[-5:]) > 100


@pytest.mark.slow
def test_ppo_learns_cartpole_and_reports_its_metrics():
  out = _run_preset("cartpole", "ppo", 60)  # 60 x 512 env steps (PureJaxRL's batch)
  returns = np.asarray(out.metrics["mean_return"])
  assert np.nanmean(returns[:5]) < 40 and np.nanmean(returns[-10:]) > 120
  kl, clip = np.asarray(out.metrics["approx_kl"]), np.asarray(out.metrics["clip_fraction"])
  assert np.all(kl >= 0) and np.all((clip >= 0) & (clip <= 1)) and clip.max() > 0


@pytest.mark.slow
def test_ppo_improves_pendulum():
  out = _run_preset("pendulum", "ppo", 40)
  returns = np.asarray(out.metrics["mean_return"])
  finished = returns[np.isfinite(returns)]
  assert finished[-3:].mean() > finished[:3].mean() + 150


def test_value_head_is_required_where_used(bandit, linear_policy):
  for config in (rj.TrainConfig(algo="a2c"), rj.TrainConfig(baseline="value")):
    with pytest.raises(ValueError, match="value head"):  # when the step is built
      rj.make_train_step(bandit, linear_policy, optax.adam(0.1), config)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="num_minibatches=3 must divide"):
    rj.TrainConfig(algo="ppo", num_envs=4, rollout_length=2, num_minibatches=3)
  with pytest.raises(ValueError, match="applies to algo='reinforce'"):
    rj.TrainConfig(algo="ppo", baseline="leave_one_out")
  with pytest.raises(ValueError, match="gae_lambda"):
    rj.TrainConfig(gae_lambda=1.5)


# --- hyperparameters as traced values of the state ---

@pytest.mark.parametrize("env_name,algo,name,values,changes", [
    ("bandit", "reinforce", "entropy_coef", [0.0, 0.5], {"baseline": "ema"}),
    ("bandit", "reinforce", "baseline_constant", [0.0, 0.8], {"baseline": "constant"}),
    pytest.param("cartpole", "reinforce", "gamma", [0.9, 0.99], {}, marks=pytest.mark.slow),
    # PPO's clip_eps, the constant baseline, the EMA decay and the value coefficients
    # are checked the same way through run_sweep (tests/test_sweep.py).
    pytest.param("cartpole", "a2c", "gae_lambda", [0.0, 0.95], {}, marks=pytest.mark.slow),
])
@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_vmap_over_hyperparams_equals_runs_with_those_configs(
    env_name, algo, name, values, changes):
  if env_name == "bandit":
    env, policy = ContextualBandit(), CategoricalPolicy(2, hidden=())
    config = SMALL.replace(num_steps=3, **changes)
  else:
    env = CartPole()
    policy = CategoricalPolicy(2, hidden=(16,), value=None if algo == "reinforce" else "separate")
    epochs = {"num_minibatches": 2, "num_epochs": 2} if algo == "ppo" else {}
    config = PRESETS["cartpole"].configs[algo].replace(
        num_envs=16, rollout_length=8, num_steps=3, **epochs, **changes)
  # SGD, not Adam: Adam rescales a near-zero first gradient to a full step, which
  # turns float rounding (constants folded or not) into visible differences.
  sgd = optax.sgd(0.05)
  init_fn, train_step = rj.make_train_step(env, policy, sgd, config)
  run = rj.make_run(train_step, 3)
  key_init, key_run = jax.random.key(0), jax.random.key(1)

  def with_value(value):
    state = init_fn(key_init)
    hp = rj.algorithms.traced(config.algorithm, **{name: value})
    return run(state._replace(hyperparams=hp), key_run, 3)

  together = jax.jit(jax.vmap(with_value))(jnp.asarray(values, jnp.float32))
  finals = []
  for i, value in enumerate(values):
    other = config.replace(**{name: value})
    init_alone, step_alone = rj.make_train_step(env, policy, sgd, other)
    alone = jax.jit(rj.make_run(step_alone, 3))(init_alone(key_init), key_run, 3)
    chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], together.metrics),
                                alone.metrics, rtol=2e-4, atol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], together.state.params),
                                alone.state.params, rtol=2e-4, atol=1e-6)
    finals.append(alone.state.params)
  # The two values really train differently.
  flat = [jax.flatten_util.ravel_pytree(p)[0] for p in finals]
  assert float(jnp.max(jnp.abs(flat[0] - flat[1]))) > 1e-5  # rounding: ~1e-7


def test_entropy_sweep_converges_to_the_entropy_regularised_optimum(bandit, linear_policy):
  # Maximising E[r] + c H(pi) in each context gives pi = softmax(r / c); on the
  # seed's 0/1 task the right action's probability is sigmoid(1 / c). One program
  # trains all three coefficients (vmap over the traced hyperparameters).
  config = rj.TrainConfig(num_envs=1024, num_steps=400)
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.02), config)
  run = rj.make_run(train_step, config.num_steps)

  def train(coef):
    state = init_fn(jax.random.key(0))
    state = state._replace(hyperparams=rj.algorithms.traced(config.algorithm, entropy_coef=coef))
    return run(state, jax.random.key(1), config.num_steps).state.params

  coefs = np.array([0.5, 1.0, 2.0], np.float32)
  params = jax.jit(jax.vmap(train))(coefs)
  for i, coef in enumerate(coefs):
    probs = linear_policy.apply(jax.tree.map(lambda v, i=i: v[i], params),
                                bandit.default_params.contexts).probs
    right = float(ContextualBandit.expected_reward(probs, bandit.default_params))
    np.testing.assert_allclose(right, 1 / (1 + np.exp(-1 / coef)), atol=0.01)


def test_changing_hyperparams_between_steps_does_not_recompile(bandit, linear_policy):
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.05), SMALL)
  counted, traces = _counting_traces(train_step)
  step = jax.jit(counted)
  state = init_fn(jax.random.key(0))
  hp = rj.algorithms.traced(SMALL.algorithm)
  for coef in (0.0, 0.1, 0.2):  # an annealing schedule for the entropy bonus
    state = state._replace(hyperparams=hp.replace(entropy_coef=jnp.float32(coef)))
    state, metrics = step(state, jax.random.key(1))
  assert len(traces) == 1 and np.isfinite(float(metrics["loss"]))


def test_traced_hyperparams_reject_unknown_names():
  with pytest.raises(ValueError, match="entropy: not a hyperparameter of algo='reinforce'"):
    rj.algorithms.traced(SMALL.algorithm, entropy=0.1)
  hp = rj.algorithms.traced(SMALL.algorithm, entropy_coef=0.25)
  assert hp.entropy_coef.dtype == jnp.float32 and float(hp.entropy_coef) == 0.25
  assert float(hp.gamma) == np.float32(SMALL.gamma)


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
@pytest.mark.parametrize("baseline", ["none", "value"])
def test_fused_step_metrics_equal_the_public_losses(baseline):
  """The one-pass step's loss terms are `reinforce_loss`, `entropy_bonus`, `value_loss`."""
  env = CartPole()
  coef = {"value_coef": 0.7} if baseline == "value" else {}
  config = rj.TrainConfig(num_envs=8, rollout_length=16, baseline=baseline,
                          entropy_coef=0.05, gamma=0.9, **coef)
  policy = CategoricalPolicy(2, hidden=(8,), value="shared" if baseline == "value" else None)
  init_fn, train_step = rj.make_train_step(env, policy, optax.sgd(0.1), config)
  state = init_fn(jax.random.key(0))
  key = jax.random.key(3)
  _, metrics = jax.jit(train_step)(state, key)

  carry, traj = rj.rollout(jax.random.fold_in(key, state.step), state.params, policy.apply,
                           env, env.default_params, state.env, config.rollout_length)
  last = (policy.apply(state.params, carry.obs)[1] if baseline == "value"
          else jnp.zeros(config.num_envs))
  returns = rj.discounted_returns(traj.reward, traj.terminated, traj.truncated, gamma=0.9,
                                  bootstrap_value_t=traj.bootstrap_value, last_value=last)
  advantage = returns - (traj.value if baseline == "value" else 0.0)
  expected = {"policy_loss": rj.reinforce_loss(traj.log_prob, advantage),
              "entropy": rj.entropy_bonus(traj.entropy)}
  loss = expected["policy_loss"] - 0.05 * expected["entropy"]
  if baseline == "value":
    expected["value_loss"] = rj.value_loss(traj.value, returns)
    loss = loss + 0.7 * expected["value_loss"]
  expected["loss"] = loss
  done = np.asarray(traj.terminated | traj.truncated)
  expected["num_episodes"] = done.sum()
  if done.any():
    expected["mean_return"] = np.asarray(traj.episode_return)[done].mean()
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=name)


def test_plain_jit_bandit_step_has_no_tiny_library_reductions(bandit, linear_policy):
  """Under plain `jax.jit`, XLA:CPU hands every reduction to YNNPACK at ~10 us each.

  The bandit step needs two (the bias gradient over the batch, and the fused sum
  of its per-transition statistics); before the reduction-free normalisation
  and the fused statistics it had seven. Structural, not timed.
  """
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU only")
  config = rj.TrainConfig(num_envs=4096, rollout_length=1)
  init_fn, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.01), config)
  state = jax.jit(init_fn)(jax.random.key(0))
  hlo = jax.jit(train_step).lower(state, jax.random.key(1)).compile().as_text()
  assert hlo.count('"__ynn_fusion"') <= 2, hlo.count('"__ynn_fusion"')


@pytest.mark.parametrize("max_steps", [0, -3, 2.5, True])
def test_make_run_refuses_a_bad_max_steps(bandit, linear_policy, max_steps):
  _, train_step = rj.make_train_step(bandit, linear_policy, optax.adam(0.05), SMALL)
  with pytest.raises(ValueError, match="max_steps must be a positive integer"):
    rj.make_run(train_step, max_steps)


@pytest.mark.slow
def test_ppo_value_clipping_is_on_by_default_and_changes_the_critic_update():
  assert rj.TrainConfig(algo="ppo").clip_value is True
  env = CartPole()
  policy = CategoricalPolicy(2, hidden=(16,), value="separate")
  params = {}
  for clip_value in (True, False):
    config = rj.TrainConfig(algo="ppo", num_envs=8, rollout_length=32, num_minibatches=2,
                            num_epochs=4, clip_eps=0.01, clip_value=clip_value)
    init_fn, train_step = rj.make_train_step(env, policy, optax.adam(3e-2), config)
    state, metrics = jax.jit(train_step)(init_fn(jax.random.key(0)), jax.random.key(1))
    assert np.isfinite(float(metrics["value_loss"]))
    params[clip_value] = state.params["params"]
  # Same data and keys; only the critic's loss differs, so only the critic moves differently.
  critic = [k for k in params[True] if k.startswith("value")]
  assert critic
  assert any(not np.allclose(a, b) for k in critic for a, b in zip(
      jax.tree.leaves(params[True][k]), jax.tree.leaves(params[False][k]), strict=True))
  chex.assert_trees_all_close(params[True]["trunk"], params[False]["trunk"])
  with pytest.raises(ValueError, match="clip_value must be a bool"):
    rj.TrainConfig(algo="ppo", clip_value=1)


@pytest.mark.parametrize("algo, per_step", [("reinforce", 1), ("ppo", 6)])
def test_linear_anneal_follows_purejaxrls_schedule(algo, per_step):
  from reinforce_jax.rl.train import linear_anneal, updates_per_step

  epochs = {"num_epochs": 2, "num_minibatches": 3} if algo == "ppo" else {}
  config = rj.TrainConfig(algo=algo, num_envs=6, num_steps=5, **epochs)
  assert updates_per_step(config) == per_step
  anneal = linear_anneal(config)
  state = anneal.init(jnp.zeros(()))
  for count in range(5 * per_step + 2):
    update, state = anneal.update(jnp.ones(()), state)
    expected = max(1.0 - (count // per_step) / 5, 0.0)
    np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=f"update {count}")
  # make_optimizer anneals only when asked. With a constant gradient Adam's step
  # is -learning_rate; the last update of the last train step is scaled by 1/5.
  grads = {"w": jnp.ones(())}
  for anneal_lr, scale in ((True, 0.2), (False, 1.0)):
    opt = rj.make_optimizer(config.replace(anneal_lr=anneal_lr, learning_rate=0.1))
    opt_state = opt.init(grads)
    for _ in range(5 * per_step):
      update, opt_state = opt.update(grads, opt_state, grads)
    np.testing.assert_allclose(update["w"], -0.1 * scale, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_unroll_changes_speed_not_values(algo):
  env = CartPole()
  policy = CategoricalPolicy(2, hidden=(8,), value="separate" if algo == "ppo" else None)
  epochs = {"num_epochs": 2, "num_minibatches": 2} if algo == "ppo" else {}
  config = rj.TrainConfig(algo=algo, num_envs=4, rollout_length=16, num_steps=3, **epochs)
  outs = [jax.jit(rj.make_train(env, policy, optax.adam(1e-2), config, unroll=u))(
      jax.random.key(0)) for u in (1, 4)]
  chex.assert_trees_all_close(outs[0].state.params, outs[1].state.params, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(outs[0].metrics["loss"], outs[1].metrics["loss"], rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="unroll must be a positive integer"):
    rj.make_train_step(env, policy, optax.adam(1e-2), config, unroll=0)
