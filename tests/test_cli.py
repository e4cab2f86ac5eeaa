import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import serialization

import reinforce_jax as rj
from reinforce_jax import cli
from reinforce_jax.envs import ContextualBandit
from reinforce_jax.experiments import runner as experiment
from reinforce_jax.rl.policies import CategoricalPolicy


def _rows(path):
  return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_train_bandit_writes_outputs(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["train", "bandit", "--steps", "7", "--num-envs", "16", "--num-seeds", "2",
                   "--seed", "3", "--out", str(out), "--no-progress"])
  assert code == 0
  for name in ("metrics.jsonl", "learning_curve.png", "policy.png", "params.msgpack",
               "config.json", "summary.json"):
    assert (out / name).stat().st_size > 0, name
  rows = _rows(out)
  assert [(r["step"], r["seed"]) for r in rows] == [(s, i) for s in range(1, 8) for i in (0, 1)]
  assert {"loss", "mean_return", "num_episodes"} <= set(rows[0])
  assert all(r["num_episodes"] == 16 for r in rows)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["steps_done"] == 7
  printed = capsys.readouterr().out
  assert "expected reward" in printed and str(out) in printed

  # The chunked CLI run is the same computation as one vmapped make_train.
  config = rj.TrainConfig(num_envs=16, num_steps=7)
  policy = CategoricalPolicy(2, hidden=())
  train = rj.make_train(ContextualBandit(), policy, rj.make_optimizer(config), config)
  want = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(3), 2)).state.params
  saved = serialization.from_bytes(want, (out / "params.msgpack").read_bytes())
  chex.assert_trees_all_equal(saved, jax.device_get(want))


@pytest.mark.parametrize("argv, fragment", [
    (["train", "bandit", "--num-envs", "0"], "--num-envs"),
    (["train", "bandit", "--steps", "-1"], "--steps"),
    (["train", "mountaincar"], "invalid choice"),
    (["train", "bandit", "--lr", "nan"], "--lr"),
    (["train", "bandit", "--lr", "inf"], "--lr"),
    (["train", "bandit", "--lr", "-1"], "--lr"),
    (["train", "bandit", "--gamma", "1.5"], "--gamma"),
    (["train", "bandit", "--num-seeds", "0"], "--num-seeds"),
    (["train", "bandit", "--num-envs", "1", "--baseline", "leave_one_out"], "num_envs >= 2"),
    (["train", "bandit", "--devices", "999"], "--devices 999"),
    (["train", "bandit", "--devices", "0"], "--devices"),
    (["sweep", "bandit", "--lr", "0.1,fast"], "--lr"),
    (["sweep", "bandit"], "--lr"),
    (["train"], "required"),
    ([], "required"),
])
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_bad_arguments_from_the_shell_have_no_traceback(tmp_path):
  done = subprocess.run([sys.executable, "-m", "reinforce_jax", "train", "bandit", "--num-envs",
                         "0"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
  assert done.returncode == 2
  assert "Traceback" not in done.stderr and "--num-envs" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


def test_non_finite_run_stops_and_keeps_last_finite_params(tmp_path, capsys):
  out = tmp_path / "nan"
  # A learning rate this large overflows the logits after the first update.
  code = cli.main(["train", "bandit", "--steps", "20", "--num-envs", "8", "--lr", "1e38",
                   "--out", str(out), "--no-progress"])
  assert code == 1
  summary = json.loads((out / "summary.json").read_text())
  assert summary["status"] == "non-finite" and summary["steps_done"] < 20
  assert "non-finite" in capsys.readouterr().err
  params = serialization.msgpack_restore((out / "params.msgpack").read_bytes())
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
  assert len(_rows(out)) == summary["steps_done"]
  # The last good state is saved: every run can be resumed.
  from reinforce_jax.experiments.checkpoints import latest_step
  assert latest_step(out / "checkpoints") == summary["steps_done"]


def test_interrupted_run_keeps_its_outputs(tmp_path, monkeypatch):
  class InterruptingBar(experiment.tqdm):
    """Raises KeyboardInterrupt (as Ctrl-C would) once 4 steps are done."""
    steps = 0

    def update(self, n=1):
      super().update(n)
      InterruptingBar.steps += n
      if InterruptingBar.steps >= 4:
        raise KeyboardInterrupt

  monkeypatch.setattr(experiment, "tqdm", InterruptingBar)
  out = tmp_path / "stop"
  code = cli.main(["train", "bandit", "--steps", "100", "--num-envs", "8", "--out", str(out),
                   "--no-progress"])
  assert code == 130
  summary = json.loads((out / "summary.json").read_text())
  assert summary["status"] == "interrupted" and 4 <= summary["steps_done"] < 100
  assert len(_rows(out)) == summary["steps_done"]
  assert (out / "params.msgpack").stat().st_size > 0
  from reinforce_jax.experiments.checkpoints import latest_step
  assert latest_step(out / "checkpoints") == summary["steps_done"]


@pytest.mark.slow
@pytest.mark.parametrize("env, algo", [("pendulum", "ppo"), ("cartpole", "a2c")])
def test_train_other_algorithms(env, algo, tmp_path, capsys):
  out = tmp_path / env
  code = cli.main(["train", env, "--algo", algo, "--steps", "2", "--num-envs", "8",
                   "--rollout-length", "16", "--out", str(out), "--no-progress"])
  assert code == 0
  config = json.loads((out / "config.json").read_text())
  assert config["algo"] == algo and config["num_envs"] == 8
  rows = _rows(out)
  assert len(rows) == 2 and "value_loss" in rows[0]
  assert f"{env} {algo}: completed" in capsys.readouterr().out


def test_stop_at_return(tmp_path):
  out = tmp_path / "solved"
  code = cli.main(["train", "bandit", "--steps", "500", "--num-envs", "64", "--seed", "1",
                   "--stop-at-return", "0.9", "--out", str(out), "--no-progress"])
  summary = json.loads((out / "summary.json").read_text())
  assert code == 0 and summary["status"] == "solved"
  assert summary["solved_at_step"] == summary["steps_done"] < 500
  rows = _rows(out)  # solved: the last 100 episodes average >= 0.9, from the written rows
  recent = experiment.RecentEpisodes(1)
  recent.add(np.array([[r["mean_return"] or np.nan for r in rows]]),
             np.array([[r["num_episodes"] for r in rows]]))
  assert recent.means()[0] >= 0.9


def test_profile_writes_a_trace(tmp_path):
  trace = tmp_path / "trace"
  code = cli.main(["train", "bandit", "--steps", "4", "--num-envs", "8", "--profile", str(trace),
                   "--out", str(tmp_path / "run"), "--no-progress"])
  assert code == 0
  assert list(trace.rglob("*.xplane.pb")), list(trace.rglob("*"))
  assert list(trace.rglob("*.trace.json.gz"))


@pytest.mark.slow
def test_cartpole_stops_at_its_solved_threshold_by_default(tmp_path, capsys):
  tiny = ["--steps", "2", "--num-envs", "8", "--rollout-length", "8", "--no-progress"]
  assert cli.main(["train", "cartpole", *tiny, "--out", str(tmp_path / "a")]) == 0
  assert json.loads((tmp_path / "a" / "config.json").read_text())["stop_at_return"] == 475.0
  assert cli.main(["train", "cartpole", *tiny, "--stop-at-return", "none",
                   "--out", str(tmp_path / "b")]) == 0
  assert json.loads((tmp_path / "b" / "config.json").read_text())["stop_at_return"] is None
  assert cli.main(["train", "bandit", "--steps", "2", "--num-envs", "8", "--no-progress",
                   "--out", str(tmp_path / "c")]) == 0
  assert json.loads((tmp_path / "c" / "config.json").read_text())["stop_at_return"] is None


@pytest.mark.slow  # ~15 s, two CLI processes; make test-slow runs it
def test_compilation_cache_is_written_then_reused(tmp_path):
  """A second identical run loads its programs from the cache: no new entries."""
  cache = tmp_path / "cache"
  env = {k: v for k, v in os.environ.items() if k != "REINFORCE_JAX_CACHE_DIR"}

  def run(out):
    done = subprocess.run(
        [sys.executable, "-m", "reinforce_jax", "train", "cartpole", "--steps", "2",
         "--num-envs", "8", "--rollout-length", "32", "--no-progress", "--out", str(out),
         "--compilation-cache", str(cache)], capture_output=True, text=True, env=env,
        timeout=300)
    assert done.returncode == 0, done.stderr
    return sorted(p.name for p in cache.iterdir())

  first = run(tmp_path / "a")
  assert any(name.startswith("jit_run") for name in first), first
  assert run(tmp_path / "b") == first


def test_solved_means_the_last_100_episodes_not_one_lucky_step():
  recent = experiment.RecentEpisodes(2)
  # Seed 0: 99 episodes of return 100, then one of 500; seed 1: 100 episodes of 480.
  recent.add(np.array([[100.0, 500.0], [480.0, np.nan]]), np.array([[99, 1], [100, 0]]))
  means = recent.means()
  np.testing.assert_allclose(means, [(99 * 100 + 500) / 100, 480.0])
  assert not np.all(means >= 475)
  # Until 100 episodes have finished there is no verdict.
  fresh = experiment.RecentEpisodes(1)
  fresh.add(np.array([[500.0]]), np.array([[40]]))
  assert np.isnan(fresh.means()[0])
  # Whole steps leave the window once newer ones hold 100 episodes.
  fresh.add(np.array([[480.0, 490.0]]), np.array([[60, 100]]))
  np.testing.assert_allclose(fresh.means(), [490.0])


# Every algorithm's fields, with their defaults, as a run folder's config.json held
# them before hyperparameters were declared per algorithm (whatever the run used).
_LEGACY_FIELDS = {
    "num_epochs": 4, "num_minibatches": 4, "gamma": 0.99, "gae_lambda": 0.95,
    "ema_decay": 0.9, "baseline_constant": 0.0, "entropy_coef": 0.0, "value_coef": 0.5,
    "clip_eps": 0.2, "normalize_advantages": False, "clip_value": True, "anneal_lr": False}


def _as_legacy_record(config_file, *, before=("clip_value", "anneal_lr")):
  """Rewrites `config_file` as the old layout wrote it, recorded before `before` existed."""
  stored = {**_LEGACY_FIELDS, **json.loads(config_file.read_text())}
  for key in before:
    del stored[key]
  config_file.write_text(json.dumps(stored))
  return stored


@pytest.mark.slow  # ~25 s of CLI runs; make test-slow runs it
def test_resume_keeps_the_stop_setting_fills_new_fields_and_guards_the_schedule(tmp_path, capsys):
  tiny = ["--num-envs", "8", "--rollout-length", "8", "--no-progress"]
  run = tmp_path / "run"
  assert cli.main(["train", "cartpole", "--steps", "2", *tiny, "--stop-at-return", "none",
                   "--out", str(run)]) == 0
  config_file = run / "config.json"
  assert "clip_eps" not in json.loads(config_file.read_text())  # reinforce has none
  legacy = _as_legacy_record(config_file)
  # The old record holds clip_eps 0.2, but the run (reinforce) has no use for it.
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "cartpole", "--clip-eps", "0.2", "--no-progress", "--resume", str(run)])
  assert exit_info.value.code == 2
  assert ("--clip-eps: clip_eps is not a hyperparameter of the run in "
          in capsys.readouterr().err)
  assert cli.main(["train", "cartpole", "--steps", "3", "--gamma", "0.99", *tiny[4:],
                   "--resume", str(run)]) == 0
  resumed = json.loads(config_file.read_text())
  assert resumed["stop_at_return"] is None and resumed["num_steps"] == 3
  assert resumed["baseline"] == legacy["baseline"] == "leave_one_out"
  assert "clip_eps" not in resumed and "anneal_lr" in resumed  # written in the new layout
  ppo = tmp_path / "ppo"
  assert cli.main(["train", "cartpole", "--algo", "ppo", "--steps", "2", *tiny,
                   "--out", str(ppo)]) == 0
  with pytest.raises(SystemExit) as exit_info:  # its learning rate anneals over 2 steps
    cli.main(["train", "cartpole", "--steps", "4", "--no-progress", "--resume", str(ppo)])
  assert exit_info.value.code == 2
  assert "anneals to 0 over num_steps 2" in capsys.readouterr().err
  # Recorded before clip_value existed: the run did not clip its value loss.
  _as_legacy_record(ppo / "config.json", before=("clip_value",))
  assert cli.main(["train", "cartpole", "--no-progress", "--no-clip-value", "--num-epochs", "4",
                   "--resume", str(ppo)]) == 0
  resumed = json.loads((ppo / "config.json").read_text())
  assert resumed["clip_value"] is False and resumed["anneal_lr"] is True
  assert resumed["num_steps"] == 2 and resumed["num_minibatches"] == 4
  assert "baseline_constant" not in resumed
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "cartpole", "--clip-value", "--resume", str(ppo)])
  assert exit_info.value.code == 2
  assert "--clip-value True contradicts the run" in capsys.readouterr().err
