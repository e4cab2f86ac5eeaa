import json

import jax
import numpy as np
import optax

import reinforce_jax as rj
from reinforce_jax import cli
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.policies import CategoricalPolicy
from reinforce_jax.sweep import run_sweep


def test_each_run_of_a_sweep_is_the_standalone_run(tmp_path):
  config = rj.TrainConfig(num_envs=32, num_steps=12)
  learning_rates = [0.01, 0.2]
  result = run_sweep("bandit", config, learning_rates, seed=5, num_seeds=2, out_dir=tmp_path)
  assert (tmp_path / "sweep.png").stat().st_size > 0
  assert json.loads((tmp_path / "sweep.json").read_text())["runs"] == 4
  keys = jax.random.split(jax.random.key(5), 2)
  policy = CategoricalPolicy(2, hidden=())
  for row, lr in zip(result["rows"], learning_rates, strict=True):
    standalone = []
    for key in keys:
      train = rj.make_train(ContextualBandit(), policy, optax.adam(lr), config)
      standalone.append(np.asarray(jax.jit(train)(key).metrics["mean_return"]))
    np.testing.assert_allclose(row["curve_mean"], np.mean(standalone, axis=0), rtol=1e-4)
  # The learning rate really is swept (not one rate for every run).
  assert result["rows"][1]["final_return_mean"] > result["rows"][0]["final_return_mean"] + 0.05


def test_sweep_cli(tmp_path, capsys):
  code = cli.main(["sweep", "bandit", "--lr", "0.01,0.1", "--num-seeds", "2", "--steps", "5",
                   "--num-envs", "16", "--out", str(tmp_path)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "4 runs (2 learning rates x 2 seeds)" in printed and "sweep.png" in printed
