import argparse
import csv
import json
import re

import jax
import numpy as np
import pytest

import reinforce_jax as rj
from reinforce_jax import cli, hparams
from reinforce_jax.cli import parsing
from reinforce_jax.experiments.presets import PRESETS
from reinforce_jax.experiments.sweep import run_sweep
from reinforce_jax.rl.config import RUN_RANGES, SWEEPABLE, sweep_grid


def _standalone_curve(config, keys):
  """Mean over seeds of `mean_return` from separate, ordinary runs of `config`."""
  preset = PRESETS["bandit"]
  env = preset.make_env()
  train = rj.make_train(env, preset.policy(env, config), rj.make_optimizer(config), config)
  return np.mean([np.asarray(jax.jit(train)(key).metrics["mean_return"]) for key in keys],
                 axis=0)


@pytest.mark.slow  # ~17 s; make test-slow runs it
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


# A sweep of each traced hyperparameter kind: the algorithm's own, PPO's, and a
# REINFORCE baseline's (nested in the algorithm's pytree).
# The three marked slow (~10 s each) run under `make test-slow`.
_SLOW = pytest.mark.slow
BASELINE_SWEEPS = [
    pytest.param(dict(baseline="ema"), {"ema_decay": [0.0, 0.9]}, id="ema_decay"),
    pytest.param(dict(baseline="constant"), {"baseline_constant": [-1.0, 1.0]},
                 id="baseline_constant", marks=_SLOW),
    pytest.param(dict(baseline="value", learning_rate=0.5), {"value_coef": [0.0, 4.0]},
                 id="value_coef0", marks=_SLOW),
    pytest.param(dict(algo="ppo", num_minibatches=2, learning_rate=0.5),
                 {"clip_eps": [0.01, 0.5]}, id="clip_eps"),
    pytest.param(dict(algo="a2c", learning_rate=0.5),
                 {"value_coef": [0.0, 4.0], "entropy_coef": [0.0]}, id="value_coef1", marks=_SLOW),
]


@pytest.mark.slow
@pytest.mark.parametrize("settings, grid", BASELINE_SWEEPS)
def test_every_kind_of_hyperparameter_sweeps_like_standalone_runs(settings, grid, tmp_path):
  config = rj.TrainConfig(num_envs=16, num_steps=6, **settings)
  result = run_sweep("bandit", config, grid, seed=2, out_dir=tmp_path)
  keys = jax.random.split(jax.random.key(2), 1)
  curves = []
  for row in result["rows"]:
    alone = config.replace(**{name: row[name] for name in grid})
    np.testing.assert_allclose(row["curve_mean"], _standalone_curve(alone, keys), rtol=1e-4)
    curves.append(row["curve_mean"])
  # The swept value reaches the step: the grid points train differently.
  assert np.max(np.abs(np.subtract(curves[0], curves[-1]))) > 1e-4, curves


def test_sweep_grid_rejects_what_would_not_change_the_run():
  reinforce = rj.TrainConfig()
  with pytest.raises(ValueError, match="sweeping clip_eps would change nothing: it is not a "
                                       "hyperparameter of algo='reinforce'"):
    sweep_grid(reinforce, {"clip_eps": [0.1, 0.2]})
  with pytest.raises(ValueError, match="sweeping gae_lambda would change nothing"):
    sweep_grid(reinforce, {"gae_lambda": [0.9]})
  with pytest.raises(ValueError, match="sweeping ema_decay would change nothing.*"
                                       "baseline='constant'"):
    sweep_grid(reinforce.replace(baseline="constant"), {"ema_decay": [0.5]})
  with pytest.raises(ValueError, match="cannot sweep 'num_envs'"):
    sweep_grid(reinforce, {"num_envs": [2, 4]})
  with pytest.raises(ValueError, match="cannot sweep 'num_epochs'"):  # structure: recompiles
    sweep_grid(rj.TrainConfig(algo="ppo"), {"num_epochs": [2, 4]})
  with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\], got 1.5"):
    sweep_grid(reinforce, {"gamma": [0.9, 1.5]})
  with pytest.raises(ValueError, match="no values to sweep for gamma"):
    sweep_grid(reinforce, {"gamma": []})
  with pytest.raises(ValueError, match="nothing to sweep"):
    sweep_grid(reinforce, {})
  ppo = rj.TrainConfig(algo="ppo", num_envs=8, num_minibatches=2)
  assert len(sweep_grid(ppo, {"clip_eps": [0.1, 0.2], "value_coef": [0.5, 1.0, 2.0]})) == 6
  ema = reinforce.replace(baseline="ema")
  assert sweep_grid(ema, {"ema_decay": [0.5, 0.9], "learning_rate": [0.1]}) == [
      {"ema_decay": 0.5, "learning_rate": 0.1}, {"ema_decay": 0.9, "learning_rate": 0.1}]


def test_every_sweepable_name_is_accepted_exactly_where_it_is_used():
  configs = [rj.TrainConfig(algo="a2c"), rj.TrainConfig(algo="ppo"),
             *(rj.TrainConfig(baseline=kind) for kind in hparams.BASELINES)]
  for name in SWEEPABLE:
    users = [c for c in configs if name == "learning_rate" or name in c.algorithm.flat()]
    assert users, name
    for config in configs:
      if config in users:
        assert len(sweep_grid(config, {name: [0.5, 0.25]})) == 2
      else:
        with pytest.raises(ValueError, match=f"sweeping {name} would change nothing"):
          sweep_grid(config, {name: [0.5, 0.25]})


def test_cli_flags_sweepable_names_and_declarations_agree():
  """One declaration per hyperparameter: the flags and the sweepable names follow from it."""
  declared = {"learning_rate": RUN_RANGES["learning_rate"], **hparams.all_hparam_ranges()}
  assert set(SWEEPABLE) == set(declared)
  assert tuple(o.field for o in parsing.SWEEPABLE_OPTIONS) == SWEEPABLE
  flags = {o.field: o.flag for o in parsing.SWEEPABLE_OPTIONS}
  assert flags == {
      "learning_rate": "--lr", "gamma": "--gamma", "gae_lambda": "--gae-lambda",
      "entropy_coef": "--entropy-coef", "value_coef": "--value-coef", "clip_eps": "--clip-eps",
      "baseline_constant": "--baseline-constant", "ema_decay": "--ema-decay"}
  statics = {}
  for cls in hparams.ALGORITHMS.values():
    statics.update(hparams.static_fields(cls))
  assert {o.field: o.flag for o in parsing.STATIC_OPTIONS} == {
      "normalize_advantages": "--normalize-advantages", "clip_value": "--clip-value",
      "num_epochs": "--num-epochs", "num_minibatches": "--num-minibatches",
      "bootstrap_truncation": "--bootstrap-truncation"}
  assert {o.field for o in parsing.STATIC_OPTIONS} == set(statics)
  resumed = {key for _, key in parsing.RUN_OPTIONS}
  assert set(SWEEPABLE) | set(statics) <= resumed
  for option in parsing.SWEEPABLE_OPTIONS:
    where = declared[option.field]
    assert where.help in option.help
    for value in (where.low, where.high, where.low - 1e-3, where.high + 1e-3, 0.0, 0.5, 1e39):
      if not np.isfinite(value):
        continue
      if where.contains(value) and abs(value) < 3e38:
        assert option.parse(repr(value)) == value
      else:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(where.describe())):
          option.parse(repr(value))
  parser = cli.build_parser()
  for option in parsing.SWEEPABLE_OPTIONS:  # `train` takes one value, `sweep` a list
    assert getattr(parser.parse_args(["train", "bandit", option.flag, "0.5"]),
                   option.field) == 0.5
    assert getattr(parser.parse_args(["sweep", "bandit", option.flag, "0.5,0.25"]),
                   option.field) == [0.5, 0.25]
  for command in ("train", "sweep"):
    args = parser.parse_args([command, "bandit", "--num-epochs", "3", "--no-clip-value"])
    assert args.num_epochs == 3 and args.clip_value is False


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_sweep_cli(tmp_path, capsys):
  code = cli.main(["sweep", "bandit", "--lr", "0.01,0.1", "--entropy-coef", "0,0.5",
                   "--num-seeds", "2", "--steps", "5", "--num-envs", "16",
                   "--out", str(tmp_path)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "8 runs (2 learning_rate x 2 entropy_coef x 2 seeds)" in printed
  assert "<- best" in printed and "sweep.csv" in printed
  assert {p.name for p in tmp_path.iterdir()} >= {"sweep.csv", "sweep.json", "sweep.png"}


def test_sweep_cli_sweeps_a_baselines_hyperparameter(tmp_path, capsys):
  code = cli.main(["sweep", "bandit", "--baseline", "ema", "--ema-decay", "0.5,0.9",
                   "--steps", "3", "--num-envs", "8", "--out", str(tmp_path)])
  assert code == 0
  assert "2 runs (2 ema_decay x 1 seeds)" in capsys.readouterr().out
  result = json.loads((tmp_path / "sweep.json").read_text())
  assert [row["ema_decay"] for row in result["rows"]] == [0.5, 0.9]
  assert result["config"]["baseline"] == "ema" and "ema_decay" not in result["config"]


@pytest.mark.parametrize("argv,message", [
    (["sweep", "bandit"], "nothing to sweep"),
    (["sweep", "bandit", "--clip-eps", "0.1,0.2"],
     "--clip-eps: clip_eps is not a hyperparameter of algo='reinforce' with baseline='none'"),
    (["sweep", "bandit", "--ema-decay", "0.5,0.9"],
     "--ema-decay: ema_decay is not a hyperparameter of algo='reinforce' with baseline='none'"),
    (["sweep", "bandit", "--baseline", "ema", "--baseline-constant", "0,1"],
     "baseline_constant is not a hyperparameter of algo='reinforce' with baseline='ema'"),
    (["sweep", "bandit", "--algo", "a2c", "--lr", "0.1", "--num-epochs", "2"],
     "--num-epochs: num_epochs is not a hyperparameter of algo='a2c'"),
    (["sweep", "bandit", "--lr", "0.1,-1"], "must be finite and positive"),
    (["sweep", "bandit", "--baseline", "ema", "--ema-decay", "0.5,1.5"],
     "argument --ema-decay: must be in [0, 1]"),
    (["sweep", "cartpole", "--algo", "reinforce", "--gae-lambda", "0.9,0.95"],
     "gae_lambda is not a hyperparameter of algo='reinforce' with baseline='leave_one_out'"),
])
def test_sweep_cli_errors_exit_2_with_one_line(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_run_that_goes_non_finite_stops_alone_and_its_later_steps_are_nan():
  from typing import NamedTuple

  import jax.numpy as jnp

  from reinforce_jax.experiments import sweep
  from reinforce_jax.rl.train import make_run

  class Toy(NamedTuple):
    params: jax.Array
    step: jax.Array
    bad: jax.Array  # the step from which this run's parameters are NaN

  def train_step(state, key):
    del key
    step = state.step + 1
    params = jnp.where(step >= state.bad, jnp.nan, state.params + 1.0)
    metrics = {"loss": params, "mean_return": step.astype(jnp.float32)}
    return state._replace(params=params, step=step), metrics

  runner = jax.jit(jax.vmap(make_run(train_step, 4), in_axes=(0, 0, None)))
  states = Toy(jnp.zeros(3), jnp.zeros(3, jnp.int32), jnp.asarray([100, 3, 7], jnp.int32))
  keys = jax.random.split(jax.random.key(0), 3)
  calls = []
  curves, stopped = sweep._run_chunks(runner, states, keys, 10, 4,
                                      lambda: calls.append(1) and False)
  steps = np.arange(1, 11, dtype=np.float32)
  np.testing.assert_array_equal(curves[0], steps)
  np.testing.assert_array_equal(curves[1], np.where(steps < 3, steps, np.nan))
  np.testing.assert_array_equal(curves[2], np.where(steps < 7, steps, np.nan))
  assert stopped.tolist() == [False, True, True] and len(calls) >= 3  # polled every chunk
  with pytest.raises(KeyboardInterrupt, match="nothing written"):
    sweep._run_chunks(runner, states, keys, 10, 4, lambda: True)
