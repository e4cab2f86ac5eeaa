"""orbax checkpoints: resume is bit-identical; broken checkpoints fail clearly."""

import json
import shutil

import pytest

from reinforce_jax import cli

COMMON = ["--num-envs", "16", "--num-seeds", "2", "--no-progress"]


def _train(out, steps, *extra):
  return cli.main(["train", "bandit", "--steps", str(steps), "--checkpoint-every", "10",
                   "--out", str(out), *COMMON, *extra])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  out = tmp_path_factory.mktemp("full")
  assert _train(out, 40) == 0
  return out


def _assert_same_run(a, b):
  assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
  assert (a / "params.msgpack").read_bytes() == (b / "params.msgpack").read_bytes()


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_resume_is_bit_identical(uninterrupted, tmp_path):
  out = tmp_path / "half"
  assert _train(out, 20) == 0
  assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["10", "20"]
  assert cli.main(["train", "bandit", "--steps", "40", "--resume", str(out), "--no-progress"]) == 0
  _assert_same_run(uninterrupted, out)


def test_a_save_killed_midway_leaves_the_previous_checkpoint(uninterrupted, tmp_path):
  out = tmp_path / "killed"
  assert _train(out, 30) == 0
  # What a process killed while writing step 30 leaves: an unfinished temporary folder,
  # and metrics rows past the last complete checkpoint.
  shutil.rmtree(out / "checkpoints" / "30")
  partial = out / "checkpoints" / "30.orbax-checkpoint-tmp-1234567"
  partial.mkdir()
  (partial / "junk").write_text("half a checkpoint")
  assert cli.main(["train", "bandit", "--steps", "40", "--resume", str(out), "--no-progress"]) == 0
  _assert_same_run(uninterrupted, out)


def _one_error_line(capsys):
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return err.strip().splitlines()[-1]


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_missing_corrupt_and_mismatched_checkpoints_exit_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--resume", str(tmp_path / "nowhere")])
  assert info.value.code == 2 and "no readable config.json" in _one_error_line(capsys)

  out = tmp_path / "run"
  assert _train(out, 10) == 0
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "cartpole", "--resume", str(out)])
  assert info.value.code == 2 and "holds a 'bandit' run" in _one_error_line(capsys)

  config = json.loads((out / "config.json").read_text())
  for key in ("seed", "num_seeds", "num_envs"):
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != key}))
    with pytest.raises(SystemExit) as info:
      cli.main(["train", "bandit", "--resume", str(out)])
    assert info.value.code == 2 and f"lacks {key!r}" in _one_error_line(capsys)
  (out / "config.json").write_text(json.dumps({**config, "num_envs": "many"}))
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--resume", str(out)])
  assert info.value.code == 2 and "invalid config" in _one_error_line(capsys)

  (out / "config.json").write_text(json.dumps({**config, "num_envs": 32}))
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--steps", "20", "--resume", str(out), "--no-progress"])
  assert info.value.code == 2 and "cannot be restored" in _one_error_line(capsys)
  assert (out / "config.json").read_text() == json.dumps({**config, "num_envs": 32})  # as it was

  (out / "config.json").write_text(json.dumps(config))
  for path in (out / "checkpoints" / "10").rglob("*"):
    if path.is_file() and "metadata" not in path.name:
      path.write_bytes(b"corrupt")
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--steps", "20", "--resume", str(out), "--no-progress"])
  line = _one_error_line(capsys)
  assert info.value.code == 2 and "checkpoint step 10 in" in line and "is corrupt" in line

  shutil.rmtree(out / "checkpoints")
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--steps", "20", "--resume", str(out), "--no-progress"])
  assert info.value.code == 2 and "no complete checkpoint" in _one_error_line(capsys)


def test_every_run_can_be_resumed(uninterrupted, tmp_path):
  """Without --checkpoint-every the final state is saved too."""
  out = tmp_path / "plain"
  assert cli.main(["train", "bandit", "--steps", "20", "--out", str(out), *COMMON]) == 0
  assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["20"]
  assert cli.main(["train", "bandit", "--steps", "40", "--resume", str(out), "--no-progress"]) == 0
  _assert_same_run(uninterrupted, out)


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_checkpoints_land_every_n_steps(tmp_path, monkeypatch):
  """60 steps run in chunks of 2 (60 / 50, rounded up); every 5 steps must still save."""
  from reinforce_jax.experiments import checkpoints

  steps, save = [], checkpoints.save
  monkeypatch.setattr(checkpoints, "save",
                      lambda directory, step, state: (steps.append(step),
                                                      save(directory, step, state)))
  assert cli.main(["train", "bandit", "--steps", "60", "--checkpoint-every", "5", "--num-envs",
                   "8", "--out", str(tmp_path), "--no-progress"]) == 0
  assert steps == list(range(5, 61, 5))


def test_a_torn_last_metrics_line_is_dropped_on_resume(uninterrupted, tmp_path, capsys):
  out = tmp_path / "torn"
  assert _train(out, 30) == 0
  metrics = out / "metrics.jsonl"
  text = metrics.read_text()
  metrics.write_text(text + text.splitlines()[-1][:25])  # a process killed mid-write
  capsys.readouterr()
  assert cli.main(["train", "bandit", "--steps", "40", "--resume", str(out), "--no-progress"]) == 0
  err = capsys.readouterr().err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "torn" in err, err
  _assert_same_run(uninterrupted, out)


def test_resume_refuses_options_that_contradict_the_stored_run(tmp_path, capsys):
  out = tmp_path / "run"
  assert _train(out, 10) == 0
  stored = (out / "config.json").read_bytes()
  capsys.readouterr()
  for extra, named in [
      (["--num-envs", "32"], "--num-envs 32"), (["--lr", "0.5"], "--lr 0.5"),
      (["--seed", "1"], "--seed 1"), (["--algo", "a2c"], "--algo a2c"),
      (["--num-seeds", "3"], "--num-seeds 3"), (["--rollout-length", "2"], "--rollout-length"),
      (["--baseline", "ema"], "--baseline ema"), (["--gamma", "0.5"], "--gamma 0.5"),
      (["--max-grad-norm", "1"], "--max-grad-norm 1"), (["--out", str(tmp_path / "x")], "--out"),
      (["--overwrite"], "--overwrite"), (["--steps", "5"], "--steps 5"),
  ]:
    with pytest.raises(SystemExit) as info:
      cli.main(["train", "bandit", "--resume", str(out), "--no-progress", *extra])
    assert info.value.code == 2 and named in _one_error_line(capsys), extra
    assert (out / "config.json").read_bytes() == stored, extra
  assert not (tmp_path / "x").exists()
  # The stored values themselves are no contradiction.
  assert cli.main(["train", "bandit", "--resume", str(out), "--steps", "12", "--num-envs", "16",
                   "--num-seeds", "2", "--seed", "0", "--out", str(out), "--no-progress"]) == 0
  assert json.loads((out / "config.json").read_text())["num_steps"] == 12


@pytest.mark.slow  # ~12 s; make test-slow runs it
def test_a_checkpoint_of_the_earlier_state_layout_resumes_bit_identically(tmp_path):
  """Runs recorded before the open-core layout (`baseline` where `TrainState` now has
  `algo_state`, no recurrent carry) resume into today's state, losing nothing."""
  import jax
  import numpy as np

  from reinforce_jax.experiments import checkpoints
  from reinforce_jax.experiments.checkpoints import _legacy_layout
  from reinforce_jax.experiments.presets import PRESETS
  from reinforce_jax.rl import train
  from reinforce_jax.rl.config import TrainConfig

  ema = ["--baseline", "ema", "--num-envs", "16", "--no-progress"]
  full, half = tmp_path / "full", tmp_path / "half"
  assert cli.main(["train", "bandit", "--steps", "8", "--out", str(full), *ema]) == 0
  assert cli.main(["train", "bandit", "--steps", "4", "--out", str(half), *ema]) == 0
  # Rewrite the step-4 checkpoint in the old layout, as earlier versions saved it.
  step = checkpoints.latest_step(half / "checkpoints")
  config = TrainConfig.from_dict(json.loads((half / "config.json").read_text()))
  preset = PRESETS["bandit"]
  env = preset.make_env()
  init_fn, _ = train.make_train_step(env, preset.policy(env, config),
                                     train.make_optimizer(config), config)
  like = jax.vmap(init_fn)(jax.random.split(jax.random.key(0), 1))
  _, state = checkpoints.restore(half / "checkpoints", like)
  assert float(np.asarray(state.algo_state)[0]) != 0.0  # the EMA has moved: a real value
  shutil.rmtree(half / "checkpoints")
  checkpoints.save(half / "checkpoints", step, _legacy_layout(state))
  with pytest.raises(checkpoints.CheckpointError):  # the new layout alone cannot read it
    checkpoints.restore(half / "checkpoints", {"algo_state": like.algo_state})
  _, restored = checkpoints.restore(half / "checkpoints", like)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert cli.main(["train", "bandit", "--steps", "8", "--resume", str(half), "--no-progress"]) == 0
  _assert_same_run(full, half)
