"""benchmarks/suite.py: reinforce_jax's PPO beside rejax's on the gymnax suite.

The slow test runs the whole command at a tiny scale on two environments (a
discrete one with rejax's observation normalisation, a continuous one) and
reads back what it wrote.
"""

import copy
import json
import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import suite  # noqa: E402


def _from_rejax(actor, critic):
  """rejax's actor and critic parameters in CategoricalPolicy(value="separate")'s tree."""
  return {"params": {
      "trunk": {"hidden_0": actor["features"]["Dense_0"],
                "hidden_1": actor["features"]["Dense_1"]},
      "logits": actor["action_logits"],
      "value_trunk": {"hidden_0": critic["Dense_0"], "hidden_1": critic["Dense_1"]},
      "value": critic["Dense_2"]}}


def _max_abs_difference(a, b) -> float:
  import jax
  import jax.numpy as jnp

  return max(float(jnp.abs(x - y).max())
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_plan_counts_the_iterations_rejax_trains():
  # rejax's train runs ceil(total / eval_freq) evaluations, each after
  # ceil(eval_freq / batch) whole iterations: Pendulum's 150,000 steps with a
  # batch of 10,000 and eval_freq 2,000 train 75 iterations (750,000 steps).
  plan = suite.make_plan("Pendulum-v1", 1.0, 10)
  assert plan.config_iterations == 75
  assert plan.iterations == 75 and plan.chunks == 5 and plan.env_steps == 750_000
  cartpole = suite.make_plan("CartPole-v1", 1.0, 10)
  assert (cartpole.iterations, cartpole.chunks, cartpole.env_steps) == (200, 10, 100_000)
  tiny = suite.make_plan("CartPole-v1", 0.01, 10)
  assert (tiny.iterations, tiny.chunks) == (2, 2)


def test_permutation_p_enumerates_every_relabelling():
  # Four seeds each, ours all below: 1 of the C(8, 4) = 70 relabellings is as low.
  assert suite.permutation_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(1 / 70)
  assert suite.permutation_p([5, 6, 7, 8], [1, 2, 3, 4]) == 1.0
  assert suite.permutation_p([3.0, 3.0], [3.0, 3.0]) == 1.0  # ties count as "at most"
  # One seed swapped: the observed split and the 3 others with a difference as low.
  assert suite.permutation_p([1, 2, 3, 5], [4, 6, 7, 8]) == pytest.approx(2 / 70)


@pytest.mark.slow  # importing gymnax takes seconds
def test_legacy_wrapper_survives_deepcopy():
  # rejax's create deep-copies its config, the environment included; gymnax's own
  # wrapper recurses there (its __getattr__ asks for _env before it is set).
  gymnax = pytest.importorskip("gymnax")

  env, params = gymnax.make("CartPole-v1")
  wrapped = copy.deepcopy(suite._legacy_wrapper_class()(env))
  assert wrapped.num_actions == env.num_actions
  assert wrapped.observation_space(params).shape == (4,)


@pytest.mark.slow
def test_suite_runs_both_libraries_and_writes_its_results(tmp_path):
  pytest.importorskip("rejax")
  pytest.importorskip("gymnax")
  envs = ["Acrobot-v1", "MountainCarContinuous-v0"]
  seeds = 4
  path = suite.main(["--scale", "0.01", "--envs", ",".join(envs), "--seeds", str(seeds),
                     "--curve-points", "2", "--out", str(tmp_path / "suite.json")])
  results = json.loads(path.read_text())
  assert results["benchmark"] == "suite"
  assert results["package_versions"]["rejax"] == "0.1.3"
  assert results["seeds"] == seeds and results["scale"] == 0.01
  assert {"device", "host", "versions", "features", "reinforce_jax"} <= set(results)
  assert set(results["envs"]) == set(envs)
  for name in envs:
    entry = results["envs"][name]
    assert entry["env_steps_per_seed"] > 0
    assert entry["settings"]["rejax_config"]["num_envs"] == entry["settings"]["our_config"][
        "num_envs"]
    assert entry["differences"]
    for lib in ("rejax", "ours"):
      row = entry["rows"][lib]
      returns = row["final_return_per_seed"]
      assert len(returns) == seeds and all(math.isfinite(r) for r in returns), (name, lib)
      assert row["finite"] and row["worst_seed"] == min(returns)
      assert row["train_s"] > 0 and row["compile_s"]["total_s"] > 0
      curve = row["curve"]
      assert len(curve["env_steps"]) == len(curve["returns"]) == entry["chunks"] + 1
      assert curve["env_steps"][-1] == entry["env_steps_per_seed"]
  table = path.with_suffix(".md").read_text()
  assert all(f"| {name} |" in table for name in envs)
  assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_brax_env_through_rejax_adapter_separates_time_limit_from_termination():
  # rejax 0.1.3's Brax adapter cannot step under gymnax 1.x as shipped; the suite's
  # subclass can, for both libraries: a falling double pendulum terminates, a
  # short time limit truncates, and either way the next state is a fresh episode.
  pytest.importorskip("rejax")
  pytest.importorskip("brax")
  import jax
  import jax.numpy as jnp

  from reinforce_jax import envs as rj_envs

  name = "brax/inverted_double_pendulum"
  assert suite.brax_status(name) is not None  # the adapter as shipped still fails

  def run(env, params, num_steps, action):
    ours = rj_envs.GymnaxEnv(env, params)

    def one(state, key):
      _, state, _, terminated, truncated, _ = ours.step(key, state, action)
      return state, (terminated, truncated, state.info["steps"])
    state = ours.reset(jax.random.key(0))[1]
    keys = jax.random.split(jax.random.key(1), num_steps)
    return jax.jit(lambda s: jax.lax.scan(one, s, keys)[1])(state)

  env, params = suite.make_env(name)
  assert rj_envs.GymnaxEnv(env, params).action_bounds == (-1.0, 1.0)
  terminated, truncated, steps = run(env, params, 200, jnp.ones((1,)))  # pushed over
  first = int(jnp.argmax(terminated))
  assert bool(terminated.any()) and not bool(truncated.any())
  assert int(steps[first]) == 0 and int(steps[first - 1]) == first  # a fresh episode
  terminated, truncated, steps = run(*suite.make_env(name, episode_length=5), 12,
                                     jnp.zeros((1,)))
  assert not bool(terminated.any())
  assert [int(t) for t in jnp.flatnonzero(truncated)] == [4, 9]
  assert int(steps[4]) == 0 and int(steps[3]) == 4
  five = suite._legacy_wrapper_class()(env).step(
      jax.random.key(2), env.reset(jax.random.key(0), params)[1], jnp.zeros((1,)), params)
  assert len(five) == 5 and bool(five[3]) is False


@pytest.mark.slow
def test_ours_at_rejax_settings_makes_rejax_update():
  # The suite's mapping, exactly: from the same parameters and the same rollout
  # (Acrobot, rejax's config with one epoch of one minibatch, so shuffling cannot
  # differ), our GAE equals rejax's and one update of our PPO (rejax's settings)
  # moves every parameter where rejax's moves it, up to float rounding.
  gymnax = pytest.importorskip("gymnax")
  rejax = pytest.importorskip("rejax")
  import jax
  import jax.numpy as jnp
  import optax
  from rejax.algos.ppo import AdvantageMinibatch

  from reinforce_jax.rl import algorithms, hparams
  from reinforce_jax.rl.policies import CategoricalPolicy
  from reinforce_jax.rl.returns import gae_advantages

  env, params = gymnax.make("Acrobot-v1")
  config = {k: v for k, v in suite.CONFIGS["Acrobot-v1"][0].items()
            if k not in ("total_timesteps", "eval_freq", "normalize_observations")}
  config.update(num_epochs=1, num_minibatches=1)
  algo = rejax.PPO.create(env=suite._legacy_wrapper_class()(env), env_params=params, **config)
  ts, traj = algo.collect_trajectories(algo.init_state(jax.random.key(3)))
  last_value = algo.critic.apply(ts.critic_ts.params, ts.last_obs)
  advantage, target = algo.calculate_gae(traj, jnp.where(ts.last_done, 0, last_value))
  flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
  batch = AdvantageMinibatch(jax.tree.map(flat, traj), flat(advantage), flat(target))
  updated = algo.update(ts, batch)

  ours_advantage, ours_target = gae_advantages(
      traj.reward, traj.value, traj.done, jnp.zeros_like(traj.done), last_value,
      gamma=config["gamma"], lambda_=config["gae_lambda"])
  assert float(jnp.abs(ours_advantage - advantage).max()) < 1e-5
  assert float(jnp.abs(ours_target - target).max()) < 1e-5

  policy = CategoricalPolicy(3, hidden=(64, 64), activation=jax.nn.tanh, value="separate",
                             initializer="lecun_normal")
  start = _from_rejax(ts.actor_ts.params["params"], ts.critic_ts.params["params"])
  assert jax.tree.structure(policy.init(jax.random.key(0), jnp.zeros((1, 6)))) == \
      jax.tree.structure(start)
  hp = hparams.PPO(gamma=config["gamma"], gae_lambda=config["gae_lambda"],
                   entropy_coef=config["ent_coef"], value_coef=config["vf_coef"],
                   clip_eps=config["clip_eps"], num_epochs=1, num_minibatches=1,
                   normalize_advantages=True, bootstrap_truncation=False)

  def loss(p):
    dist, value = policy.apply(p, batch.trajectories.obs)
    zeros = jnp.zeros_like(value)
    return algorithms.ppo_objective(hp, (), algorithms.Batch(
        dist.log_prob(batch.trajectories.action), dist.entropy(), value,
        batch.trajectories.log_prob, batch.trajectories.value, batch.advantages,
        batch.targets, zeros, zeros, zeros))[0]

  optimizer = optax.chain(optax.clip(config["max_grad_norm"]), optax.adam(config["learning_rate"]))
  updates, _ = optimizer.update(jax.grad(loss)(start), optimizer.init(start), start)
  moved = optax.apply_updates(start, updates)
  expected = _from_rejax(updated.actor_ts.params["params"], updated.critic_ts.params["params"])
  step = _max_abs_difference(moved, start)
  error = _max_abs_difference(moved, expected)
  assert step > 1e-4 and error < 1e-3 * step


@pytest.mark.slow
def test_rollouts_match_rejax_from_the_same_parameters():
  # Asterix, rejax's config and initial parameters: rejax's collect_trajectories and
  # this library's rollout (rejax's own networks, so only the loop differs) see the
  # same reward and episode ends per step, pick the same actions as often and
  # score them alike, within 4 standard errors over 8 seeds x 20 rollouts.
  gymnax = pytest.importorskip("gymnax")
  pytest.importorskip("rejax")
  import jax
  import jax.numpy as jnp
  import numpy as np

  from reinforce_jax import envs as rj_envs
  from reinforce_jax.rl import rollouts

  name = "Asterix-MinAtar"
  gym_env, gym_params = gymnax.make(name)
  plan = suite.make_plan(name, 1.0, 10)
  algo = suite.rejax_runner(plan, gym_env, gym_params)[3]
  policy = suite.rejax_networks(gym_env, gym_params, plan.config)
  env = rj_envs.GymnaxEnv(gym_env, gym_params)
  num_envs, steps, iterations = plan.config["num_envs"], plan.config["num_steps"], 20
  actions = jnp.arange(gym_env.num_actions)

  def stats(reward, done, action, log_prob):
    return jnp.concatenate([jnp.stack([reward.mean(), done.mean(), log_prob.mean()]),
                            (action[..., None] == actions).mean(axis=(0, 1))])

  def both(key):
    key_rejax, key_ours = jax.random.split(key)
    ts = algo.init_state(key_rejax)

    def rejax_step(ts, _):
      ts, traj = algo.collect_trajectories(ts)
      return ts, stats(traj.reward, traj.done, traj.action, traj.log_prob)

    params = {"actor": ts.actor_ts.params, "critic": ts.critic_ts.params}

    def ours_step(carry, key):
      carry, traj = rollouts.rollout(key, params, policy, env, gym_params, carry, steps,
                                     bootstrap=False)
      done = jnp.logical_or(traj.terminated, traj.truncated)
      return carry, stats(traj.reward, done, traj.sample, traj.log_prob)

    carry = rollouts.reset_envs(key_ours, env, gym_params, num_envs)
    return (jax.lax.scan(rejax_step, ts, None, iterations)[1].mean(0),
            jax.lax.scan(ours_step, carry, jax.random.split(key_ours, iterations))[1].mean(0))

  theirs, ours = map(np.asarray, jax.jit(jax.vmap(both))(
      jax.random.split(jax.random.key(0), 8)))
  se = np.sqrt(theirs.var(0, ddof=1) / len(theirs) + ours.var(0, ddof=1) / len(ours))
  assert np.all(np.abs(ours.mean(0) - theirs.mean(0)) <= 4 * se + 1e-6), (ours.mean(0),
                                                                         theirs.mean(0), se)


@pytest.mark.slow
def test_a_whole_ppo_iteration_equals_rejax_given_its_shuffles():
  # Asterix at rejax's Breakout config: rejax's rollout and advantages, then
  # its 4 epochs x 4 minibatches; this library's minibatch schedule, run on the
  # same rollout with the same epoch orders (rejax's permutations, looked up by
  # the epoch keys our schedule draws), ends at the same parameters: 16 Adam
  # steps, the rows each minibatch gathers and the optimiser state they thread.
  gymnax = pytest.importorskip("gymnax")
  rejax = pytest.importorskip("rejax")
  import jax
  import jax.numpy as jnp
  import optax
  from rejax.algos.ppo import AdvantageMinibatch

  from reinforce_jax.rl import algorithms, rollouts
  from reinforce_jax.rl.policies import CategoricalPolicy, as_policy, score, split_output
  from reinforce_jax.rl.train import TrainState

  name = "Asterix-MinAtar"
  env, params = gymnax.make(name)
  config = {k: v for k, v in suite.CONFIGS[name][0].items()
            if k not in ("total_timesteps", "eval_freq")}
  algo = rejax.PPO.create(env=suite._legacy_wrapper_class()(env), env_params=params, **config)
  ts, traj = algo.collect_trajectories(algo.init_state(jax.random.key(3)))
  last_value = algo.critic.apply(ts.critic_ts.params, ts.last_obs)
  advantage, target = algo.calculate_gae(traj, jnp.where(ts.last_done, 0, last_value))
  batch = AdvantageMinibatch(traj, advantage, target)
  start_actor, start_critic = ts.actor_ts.params["params"], ts.critic_ts.params["params"]
  epochs, num = config["num_epochs"], config["num_minibatches"]
  orders = []
  for _ in range(epochs):  # rejax's update_epoch, recording each epoch's order
    rng, minibatch_rng = jax.random.split(ts.rng)
    ts = ts.replace(rng=rng)
    orders.append(jax.random.permutation(minibatch_rng, algo.iteration_size))
    minibatches = algo.shuffle_and_split(batch, minibatch_rng)
    for i in range(num):
      ts = algo.update(ts, jax.tree.map(lambda x, i=i: x[i], minibatches))
  orders = jnp.stack(orders)

  key = jax.random.key(7)
  epoch_keys = jax.random.key_data(jax.random.split(jax.random.split(key)[1], epochs))

  def rejax_order(k, n):
    assert n == algo.iteration_size
    match = jnp.all(jax.random.key_data(k) == epoch_keys, axis=-1)
    return orders[jnp.argmax(match)]

  algorithm = algorithms.build(suite.ours_config(suite.make_plan(name, 1.0, 10),
                                                 rejax_settings=True).algorithm)
  algorithm = algorithm._replace(schedule=algorithm.schedule._replace(permutation=rejax_order))
  policy = as_policy(CategoricalPolicy(env.num_actions, hidden=(64, 64), activation=jnp.tanh,
                                       value="separate", flatten=True,
                                       initializer="lecun_normal"))
  optimizer = optax.chain(optax.clip(float(config["max_grad_norm"])),
                          optax.adam(config["learning_rate"]))
  zeros = jnp.zeros_like(traj.reward)
  ours_traj = rollouts.Trajectory(
      obs=traj.obs, sample=traj.action, log_prob=traj.log_prob, entropy=zeros, value=traj.value,
      bootstrap_value=zeros, reward=traj.reward, terminated=traj.done,
      truncated=jnp.zeros_like(traj.done), episode_return=zeros,
      episode_length=jnp.zeros(traj.reward.shape, jnp.int32))

  def evaluate(p, obs, sample):
    dist, value = split_output(policy.apply(p, (), obs)[1])
    return (*score(dist, sample), value)

  learner = algorithms.Learner(
      algorithm=algorithm, optimizer=optimizer,
      rollout=lambda p, carry, k: (carry, ours_traj),
      last_value=lambda p, carry: last_value, evaluate=evaluate, replay=None,
      recurrent=False, num_envs=config["num_envs"], rollout_length=config["num_steps"])
  start = _from_rejax(start_actor, start_critic)
  state = TrainState(params=start, opt_state=optimizer.init(start), env=(),
                     step=jnp.zeros((), jnp.int32), algo_state=algorithm.carry.init(
                         algorithm.hparams))
  moved = jax.jit(lambda s: algorithm.schedule.step(learner, s, key)[0].params)(state)
  expected = _from_rejax(ts.actor_ts.params["params"], ts.critic_ts.params["params"])
  step = _max_abs_difference(moved, start)
  error = _max_abs_difference(moved, expected)
  assert step > 1e-3 and error < 1e-4 * step, (step, error)  # measured: 3e-5 * step
