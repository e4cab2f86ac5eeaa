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
  (out / "config.json").write_text(json.dumps({**config, "num_envs": 32}))
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--steps", "20", "--resume", str(out), "--no-progress"])
  assert info.value.code == 2 and "cannot be restored" in _one_error_line(capsys)

  (out / "config.json").write_text(json.dumps(config))
  for path in (out / "checkpoints" / "10").rglob("*"):
    if path.is_file() and "metadata" not in path.name:
      path.write_bytes(b"corrupt")
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--steps", "20", "--resume", str(out), "--no-progress"])
  assert info.value.code == 2 and "cannot be restored" in _one_error_line(capsys)

  shutil.rmtree(out / "checkpoints")
  with pytest.raises(SystemExit) as info:
    cli.main(["train", "bandit", "--steps", "20", "--resume", str(out), "--no-progress"])
  assert info.value.code == 2 and "no complete checkpoint" in _one_error_line(capsys)
