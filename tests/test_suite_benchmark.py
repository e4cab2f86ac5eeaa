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
