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

  def ours(actor, critic):
    return {"params": {
        "trunk": {"hidden_0": actor["features"]["Dense_0"],
                  "hidden_1": actor["features"]["Dense_1"]},
        "logits": actor["action_logits"],
        "value_trunk": {"hidden_0": critic["Dense_0"], "hidden_1": critic["Dense_1"]},
        "value": critic["Dense_2"]}}

  policy = CategoricalPolicy(3, hidden=(64, 64), activation=jax.nn.tanh, value="separate",
                             initializer="lecun_normal")
  start = ours(ts.actor_ts.params["params"], ts.critic_ts.params["params"])
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
  expected = ours(updated.actor_ts.params["params"], updated.critic_ts.params["params"])
  step = max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(moved), jax.tree.leaves(start), strict=True))
  error = max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(moved), jax.tree.leaves(expected), strict=True))
  assert step > 1e-4 and error < 1e-3 * step
