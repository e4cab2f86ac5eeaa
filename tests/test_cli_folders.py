"""A run folder is never overwritten or mixed with another run without --overwrite."""

import json

import pytest

from reinforce_jax import cli


def _refused(argv, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  err = capsys.readouterr().err
  assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
  return err


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_a_second_run_into_a_run_folder_needs_overwrite(tmp_path, capsys):
  out = tmp_path / "run"
  first = ["train", "bandit", "--num-envs", "8", "--out", str(out), "--no-progress"]
  assert cli.main([*first, "--steps", "3", "--checkpoint-every", "1"]) == 0
  before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
  capsys.readouterr()
  err = _refused([*first, "--steps", "2", "--lr", "0.5"], capsys)
  assert "already holds a run" in err and "--overwrite" in err
  assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

  (out / "notes.txt").write_text("mine")  # not the run's: --overwrite leaves it
  assert cli.main([*first, "--steps", "2", "--lr", "0.5", "--overwrite"]) == 0
  assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2"]  # none of the first's
  assert (out / "notes.txt").read_text() == "mine"
  # Resuming continues the second run, with its own config.
  assert cli.main(["train", "bandit", "--steps", "4", "--resume", str(out), "--no-progress"]) == 0
  config = json.loads((out / "config.json").read_text())
  assert config["learning_rate"] == 0.5 and config["num_steps"] == 4
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_a_sweep_into_a_run_folder_needs_overwrite(tmp_path, capsys):
  (tmp_path / "sweep.json").write_text("{}")  # what an earlier sweep left
  err = _refused(["sweep", "bandit", "--lr", "0.1,0.2", "--out", str(tmp_path)], capsys)
  assert "already holds a run (sweep.json)" in err
  assert (tmp_path / "sweep.json").read_text() == "{}"
  run = tmp_path / "train"
  (run / "checkpoints" / "3").mkdir(parents=True)
  err = _refused(["sweep", "bandit", "--lr", "0.1,0.2", "--out", str(run)], capsys)
  assert "checkpoints" in err
