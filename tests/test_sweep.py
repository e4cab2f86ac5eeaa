import csv
import json
import warnings

import jax
import numpy as np
import optax
import pytest

import reinforce_jax as rj
from reinforce_jax import cli
from reinforce_jax.config import sweep_grid
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.policies import CategoricalPolicy
from reinforce_jax.sweep import run_sweep


def _standalone_curve(config, keys):
  """Mean over seeds of `mean_return` from separate, ordinary runs of `config`."""
  policy = CategoricalPolicy(2, hidden=())
  curves = []
  for key in keys:
    train = rj.make_train(ContextualBandit(), policy, optax.adam(config.learning_rate), config)
    curves.append(np.asarray(jax.jit(train)(key).metrics["mean_return"]))
  return np.mean(curves, axis=0)


def test_each_run_of_a_sweep_is_the_standalone_run(tmp_path):
  config = rj.TrainConfig(num_envs=32, num_steps=12)
  grid = {"learning_rate": [0.01, 0.2], "entropy_coef": [0.0, 2.0]}
  result = run_sweep("bandit", config, grid, seed=5, num_seeds=2, out_dir=tmp_path)
  assert (tmp_path / "sweep.png").stat().st_size > 0
  assert json.loads((tmp_path / "sweep.json").read_text())["runs"] == 8
  keys = jax.random.split(jax.random.key(5), 2)
  points = [(row["learning_rate"], row["entropy_coef"]) for row in result["rows"]]
  assert points == [(0.01, 0.0), (0.01, 2.0), (0.2, 0.0), (0.2, 2.0)]
  for row in result["rows"]:
    alone = config.replace(learning_rate=row["learning_rate"], entropy_coef=row["entropy_coef"])
    np.testing.assert_allclose(row["curve_mean"], _standalone_curve(alone, keys), rtol=1e-4)
  # Both axes really are swept: a larger step learns faster; a strong entropy
  # bonus holds the policy nearer uniform (the entropy-regularised optimum of the
  # seed's 0/1 task picks the right action with probability sigmoid(1 / 2) = 0.62).
  final = {p: row["final_return_mean"] for p, row in zip(points, result["rows"], strict=True)}
  assert final[(0.2, 0.0)] > final[(0.01, 0.0)] + 0.05
  assert final[(0.2, 0.0)] > final[(0.2, 2.0)] + 0.1
  assert result["best"] == {"learning_rate": 0.2, "entropy_coef": 0.0}
  with open(tmp_path / "sweep.csv") as f:
    table = list(csv.DictReader(f))
  assert [float(r["entropy_coef"]) for r in table] == [0.0, 2.0, 0.0, 2.0]
  np.testing.assert_allclose([float(r["final_return_mean"]) for r in table],
                             [row["final_return_mean"] for row in result["rows"]])


def test_sweep_grid_rejects_what_would_not_change_the_run():
  reinforce = rj.TrainConfig()
  with pytest.raises(ValueError, match="clip_eps applies to algo='ppo'"):
    sweep_grid(reinforce, {"clip_eps": [0.1, 0.2]})
  with pytest.raises(ValueError, match="gae_lambda"):
    sweep_grid(reinforce, {"gae_lambda": [0.9]})
  with pytest.raises(ValueError, match="cannot sweep 'num_envs'"):
    sweep_grid(reinforce, {"num_envs": [2, 4]})
  with pytest.raises(ValueError, match="gamma must lie in"):
    sweep_grid(reinforce, {"gamma": [0.9, 1.5]})
  with pytest.raises(ValueError, match="nothing to sweep"):
    sweep_grid(reinforce, {})
  ppo = rj.TrainConfig(algo="ppo", num_envs=8, num_minibatches=2)
  assert len(sweep_grid(ppo, {"clip_eps": [0.1, 0.2], "value_coef": [0.5, 1.0, 2.0]})) == 6


def test_hyperparams_and_sweepable_names_match_the_config():
  fields = {f for f in rj.TrainConfig.__dataclass_fields__}
  assert set(rj.Hyperparams._fields) <= fields


def test_sweep_cli(tmp_path, capsys):
  code = cli.main(["sweep", "bandit", "--lr", "0.01,0.1", "--entropy-coef", "0,0.5",
                   "--num-seeds", "2", "--steps", "5", "--num-envs", "16",
                   "--out", str(tmp_path)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "8 runs (2 learning_rate x 2 entropy_coef x 2 seeds)" in printed
  assert "<- best" in printed and "sweep.csv" in printed
  assert {p.name for p in tmp_path.iterdir()} >= {"sweep.csv", "sweep.json", "sweep.png"}


@pytest.mark.parametrize("argv,message", [
    (["sweep", "bandit"], "nothing to sweep"),
    (["sweep", "bandit", "--clip-eps", "0.1,0.2"], "clip_eps applies to algo='ppo'"),
    (["sweep", "bandit", "--lr", "0.1,-1"], "must be finite and positive"),
    (["sweep", "cartpole", "--algo", "reinforce", "--gae-lambda", "0.9,0.95"], "GAE's lambda"),
])
def test_sweep_cli_errors_exit_2_with_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sweep_warns_when_the_cpu_hang_workaround_is_missing(tmp_path, monkeypatch):
  import jaxlib

  config = rj.TrainConfig(num_envs=8, num_steps=1)
  monkeypatch.setenv("XLA_FLAGS", "")
  if jax.default_backend() == "cpu" and jaxlib.__version__.startswith("0.10."):
    with pytest.warns(RuntimeWarning, match="avoid_cpu_deadlock"):
      run_sweep("bandit", config, {"learning_rate": [0.1]}, out_dir=tmp_path)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    run_sweep("bandit", config, {"learning_rate": [0.1]}, out_dir=tmp_path)
