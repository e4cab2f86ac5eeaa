"""The CLI's user errors: exit status 2, one line on stderr, found before JAX is imported
where nothing but the arguments and the file system is needed, and no folder left behind."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from reinforce_jax import cli
from reinforce_jax.cli import checks, parsing
from reinforce_jax.rl.config import TrainConfig


def _exit_2_one_line(argv, capsys, fragment):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  err = capsys.readouterr().err
  assert info.value.code == 2, err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  assert fragment in err, err
  return err


@pytest.mark.parametrize("argv, fragment", [
    (["train", "bandit", "--seed", "9223372036854775808"], "--seed"),
    (["train", "bandit", "--seed", "4294967296"], "--seed"),  # jax.random.key keeps 32 bits
    (["train", "bandit", "--steps", "100000000000000"], "--steps"),
    (["train", "bandit", "--num-envs", "1000000000000"], "--num-envs"),
    (["train", "bandit", "--stop-at-return", "nan"], "--stop-at-return"),
    (["train", "bandit", "--stop-at-return", "inf"], "--stop-at-return"),
    (["train", "bandit", "--lr", "1e300"], "--lr"),  # finite in float64, inf in float32
    (["train", "bandit", "--lr", "1e-50"], "--lr"),  # 0 in float32
    (["train", "bandit", "--max-grad-norm", "1e39"], "--max-grad-norm"),
    (["sweep", "bandit", "--lr", "0.1,1e300"], "--lr"),
    (["train", "bandit", "--out", ""], "--out"),
    (["train", "bandit", "--resume", ""], "--resume"),
    (["sweep", "bandit", "--lr", "0.1", "--out", ""], "--out"),
    (["train", "bandit", "--coordinator", "notahost"], "--coordinator"),
    (["train", "bandit", "--coordinator", "localhost:0"], "--coordinator"),
    (["train", "bandit", "--process-id", "5", "--num-processes", "2",
      "--coordinator", "localhost:1234"], "--process-id 5 must be < --num-processes 2"),
    (["train", "bandit", "--num-processes", "2"], "--coordinator"),
    (["train", "bandit", "--process-id", "0"], "--coordinator"),
])
def test_bad_values_exit_2_with_one_line(argv, fragment, capsys):
  _exit_2_one_line(argv, capsys, fragment)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "bandit", "--clip-eps", "0.1"],
     "--clip-eps: clip_eps is not a hyperparameter of algo='reinforce' with baseline='none' "
     "(its options: --lr, --gamma, --entropy-coef, --normalize-advantages, "
     "--bootstrap-truncation)"),
    (["train", "bandit", "--ema-decay", "0.5"], "ema_decay is not a hyperparameter"),
    (["train", "bandit", "--baseline", "constant", "--ema-decay", "0.5"],
     "with baseline='constant'"),
    (["train", "bandit", "--algo", "a2c", "--num-minibatches", "2"],
     "--num-minibatches: num_minibatches is not a hyperparameter of algo='a2c'"),
    (["train", "bandit", "--algo", "a2c", "--no-clip-value"], "--clip-value: clip_value"),
    (["train", "bandit", "--algo", "ppo", "--baseline", "ema"], "applies to algo='reinforce'"),
    (["train", "bandit", "--algo", "ppo", "--num-epochs", "0"], "--num-epochs"),
    (["train", "bandit", "--algo", "ppo", "--num-minibatches", "3", "--num-envs", "16"],
     "num_minibatches=3 must divide"),
    (["train", "bandit", "--baseline", "ema", "--ema-decay", "1.5"],
     "argument --ema-decay: must be in [0, 1], got 1.5"),
    (["train", "bandit", "--gamma", "1.0000000001"], "argument --gamma: must be in [0, 1], got"),
    (["train", "bandit", "--baseline", "constant", "--baseline-constant", "1e39"],
     "argument --baseline-constant: must be finite (in float32)"),
    (["train", "bandit", "--algo", "ppo", "--clip-eps", "-0.1"],
     "argument --clip-eps: must be finite and non-negative"),
])
def test_options_the_algorithm_lacks_or_rejects_exit_2_with_one_line(argv, fragment, capsys):
  _exit_2_one_line(argv, capsys, fragment)


def test_the_float32_check_keeps_representable_values():
  assert parsing._number(lambda v: v > 0, "positive")("3e38") == 3e38
  assert parsing._float32(1e300) == float("inf") and parsing._float32(-1e300) == float("-inf")


def _stored_config(folder, **changes):
  """A config.json as `reinforce-jax train bandit` writes it."""
  folder.mkdir(parents=True, exist_ok=True)
  config = {"env": "bandit", "seed": 0, "num_seeds": 1, "stop_at_return": None,
            "checkpoint_every": None, "hidden": [],
            **TrainConfig(num_steps=200).to_dict(), **changes}
  (folder / "config.json").write_text(json.dumps(config))
  return config


def test_bad_arguments_are_reported_without_importing_jax(tmp_path):
  """Argument errors, folder errors and contradicting --resume options come back before
  JAX (or flax, optax, orbax) is imported: in milliseconds, not the ~2 s an import takes."""
  stored = tmp_path / "stored"
  _stored_config(stored)
  complete = _stored_config(tmp_path / "incomplete")
  del complete["gamma"]
  (tmp_path / "incomplete" / "config.json").write_text(json.dumps(complete))
  (tmp_path / "file").write_text("")
  bad = [
      ["train", "bandit", "--num-envs", "0"],
      ["train", "bandit", "--lr", "1e300"],
      ["train", "bandit", "--seed", "9223372036854775808"],
      ["train", "bandit", "--out", ""],
      ["train", "bandit", "--out", str(stored)],  # holds a run
      ["train", "bandit", "--out", str(tmp_path / "file")],
      ["train", "bandit", "--profile", str(tmp_path / "file")],
      ["train", "bandit", "--resume", str(stored), "--lr", "0.5"],
      ["train", "bandit", "--resume", str(stored), "--clip-eps", "0.2"],  # not reinforce's
      ["train", "bandit", "--resume", str(tmp_path / "incomplete")],
      ["train", "bandit", "--clip-eps", "0.1"],
      ["train", "bandit", "--baseline", "ema", "--baseline-constant", "1"],
      ["train", "bandit", "--algo", "ppo", "--num-epochs", "0"],
      ["train", "bandit", "--num-envs", "1", "--baseline", "leave_one_out"],
      ["train", "bandit", "--num-processes", "2"],
      ["sweep", "bandit", "--lr", "0.1,0.2", "--out", str(tmp_path / "file")],
      ["sweep", "bandit", "--clip-eps", "0.1,0.2"],
      ["sweep", "bandit", "--ema-decay", "0.5,0.9"],
  ]
  script = textwrap.dedent("""
      import json, runpy, sys
      from reinforce_jax import cli
      for argv in json.loads(sys.argv[1]):
        try:
          cli.main(argv)
        except SystemExit as e:
          assert e.code == 2, (argv, e.code)
        else:
          raise AssertionError(argv)
      sys.argv = ["reinforce-jax", "train", "bandit", "--steps", "-1"]
      try:
        runpy.run_module("reinforce_jax", run_name="__main__")  # python -m reinforce_jax
      except SystemExit as e:
        assert e.code == 2
      heavy = {"jax", "flax", "optax", "orbax", "chex", "distrax", "matplotlib"}
      print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
  """)
  done = subprocess.run([sys.executable, "-c", script, json.dumps(bad)], capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) == []
  errors = done.stderr.strip().splitlines()
  assert len(errors) == len(bad) + 1 and all(": error: " in line for line in errors), errors


def test_folders_that_cannot_be_written_exit_2(tmp_path, capsys):
  a_file = tmp_path / "file"
  a_file.write_text("not a folder")
  _exit_2_one_line(["train", "bandit", "--out", str(a_file)], capsys, "not a folder")
  _exit_2_one_line(["sweep", "bandit", "--lr", "0.1,0.2", "--out", str(a_file)], capsys,
                   "not a folder")
  _exit_2_one_line(["train", "bandit", "--out", str(a_file / "run")], capsys, "is a file")
  _exit_2_one_line(["train", "bandit", "--profile", str(a_file)], capsys, "--profile")
  _exit_2_one_line(["train", "bandit", "--profile", str(a_file / "trace")], capsys,
                   "--profile")
  assert a_file.read_text() == "not a folder"


def test_a_read_only_out_exits_2(tmp_path, capsys):
  """/sys refuses new files even to root (where chmod does not stop writes)."""
  sys_dir = pathlib.Path("/sys")
  try:
    (sys_dir / "reinforce-jax-probe").write_text("")
  except OSError:
    pass
  else:
    pytest.skip("/sys is writable here")
  if not sys_dir.is_dir():
    pytest.skip("no /sys")
  _exit_2_one_line(["train", "bandit", "--out", "/sys"], capsys, "cannot write in /sys")
  _exit_2_one_line(["train", "bandit", "--out", "/sys/reinforce-jax-run"], capsys,
                   "cannot write in /sys")
  _exit_2_one_line(["sweep", "bandit", "--lr", "0.1,0.2", "--out", "/sys"], capsys,
                   "cannot write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_chmod_read_only_out_exits_2(tmp_path, capsys):
  folder = tmp_path / "read-only"
  folder.mkdir()
  folder.chmod(0o555)
  try:
    _exit_2_one_line(["train", "bandit", "--out", str(folder)], capsys, "Permission denied")
  finally:
    folder.chmod(0o755)


@pytest.mark.parametrize("argv", [
    ["train", "bandit", "--num-envs", "100000000", "--rollout-length", "1000"],
    ["train", "bandit", "--num-seeds", "100000000"],
    ["train", "bandit", "--rollout-length", "1000000000"],
    ["sweep", "bandit", "--lr", "0.1,0.2", "--num-seeds", "100000000"],
])
def test_runs_too_large_for_the_device_exit_2_before_allocating(argv, tmp_path, capsys):
  out = tmp_path / "new" / "run"
  _exit_2_one_line([*argv, "--out", str(out)], capsys, "GiB of memory")
  assert not (tmp_path / "new").exists()


def test_the_memory_estimate_knows_the_environments():
  """The presets' observation and action sizes (read without building the environments)
  are the environments', and a preset's own run is far inside this machine's memory."""
  from reinforce_jax.experiments.presets import PRESETS

  for name, preset in PRESETS.items():
    env = preset.make_env()
    assert (preset.obs_size,) == env.observation_shape, name
    bounds = getattr(env, "action_bounds", None)
    assert preset.action_size == (env.action_shape[0] if bounds else env.num_actions), name
    for config in preset.configs.values():
      assert checks.run_bytes(preset, config, steps_per_call=10) < 2**30, name


def test_cluster_errors_exit_2(capsys):
  # No coordinator and no cluster to detect: jax.distributed.initialize refuses.
  _exit_2_one_line(["train", "bandit", "--distributed", "--steps", "1"], capsys,
                   "cannot join a multi-process run")


def test_a_failed_start_leaves_no_folder(tmp_path, capsys, monkeypatch):
  out = tmp_path / "a" / "b"
  _exit_2_one_line(["train", "bandit", "--devices", "999", "--out", str(out)], capsys,
                   "--devices 999")
  _exit_2_one_line(["train", "bandit", "--num-envs", "7", "--devices", "999",
                    "--out", str(out)], capsys, "--devices")
  assert not (tmp_path / "a").exists()

  # A disk that fills up while the run writes its config: what it created goes again.
  from reinforce_jax.experiments import run_folder

  real_write_text = run_folder.write_text

  def full_disk(path, *args, **kwargs):
    if pathlib.Path(path).name == "config.json":
      raise OSError(28, "No space left on device", str(path))
    return real_write_text(path, *args, **kwargs)

  monkeypatch.setattr(run_folder, "write_text", full_disk)
  _exit_2_one_line(["train", "bandit", "--steps", "2", "--num-envs", "8", "--out", str(out),
                    "--no-progress"], capsys, "No space left on device")
  assert not (tmp_path / "a").exists()
  (tmp_path / "empty").mkdir()  # an existing empty folder stays, and stays empty
  _exit_2_one_line(["train", "bandit", "--steps", "2", "--num-envs", "8",
                    "--out", str(tmp_path / "empty"), "--no-progress"], capsys, "No space")
  assert list((tmp_path / "empty").iterdir()) == []
