"""Ctrl-C (SIGINT) stops a run with exit status 130 and one line, keeping what was written:
while JAX starts, while the program compiles, and during training (then the state is saved
and the run can be resumed)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from reinforce_jax import cli
from reinforce_jax.experiments import runner as experiment
from reinforce_jax.experiments.checkpoints import latest_step

pytestmark = [
    pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(),
                       reason="polls /proc for the moment to interrupt"),
    pytest.mark.skipif(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                       reason="SIGINT is ignored here (a background job), and so in children"),
]


def _start(out, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "reinforce_jax", "train", "bandit", "--num-envs", "8",
       "--no-progress", "--out", str(out), *extra],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_when(process, ready, timeout=120):
  """Sends SIGINT once `ready()` holds; returns (returncode, stdout, stderr)."""
  deadline = time.monotonic() + timeout
  while not ready():
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, "the marker never appeared"
    time.sleep(0.01)
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def _one_line(err):
  assert "Traceback" not in err, err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  return lines[0]


def test_ctrl_c_while_jax_starts_exits_130(tmp_path):
  """Once the process maps jaxlib, main() is past the argument checks and importing JAX
  (where the old CLI lost the KeyboardInterrupt in a garbage-collection callback)."""
  out = tmp_path / "run"
  process = _start(out, "--steps", "100000")
  maps = pathlib.Path(f"/proc/{process.pid}/maps")
  code, _, err = _interrupt_when(process, lambda: "jaxlib" in maps.read_text())
  assert code == 130, err
  assert "interrupted" in _one_line(err)
  if out.exists():  # the signal came late, during training: a complete, resumable folder
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_ctrl_c_during_training_saves_a_state_to_resume(tmp_path):
  out = tmp_path / "run"
  process = _start(out, "--steps", "100000")
  metrics = out / "metrics.jsonl"
  code, printed, err = _interrupt_when(
      process, lambda: metrics.exists() and metrics.stat().st_size > 0)
  assert code == 130, err
  assert "interrupted; saved the state of step" in _one_line(err)
  summary = json.loads((out / "summary.json").read_text())
  done = summary["steps_done"]
  assert summary["status"] == "interrupted" and 0 < done < 100000, printed
  assert latest_step(out / "checkpoints") == done
  rows = metrics.read_text().splitlines()
  assert json.loads(rows[-1])["step"] == done == len(rows)
  assert cli.main(["train", "bandit", "--steps", str(done + 2), "--resume", str(out),
                   "--no-progress"]) == 0
  assert json.loads((out / "summary.json").read_text())["steps_done"] == done + 2


def test_ctrl_c_while_compiling_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
  make_run = experiment.make_run

  def interrupted_make_run(*args, **kwargs):  # runs just before the chunk program compiles
    os.kill(os.getpid(), signal.SIGINT)
    return make_run(*args, **kwargs)

  monkeypatch.setattr(experiment, "make_run", interrupted_make_run)
  out, handler = tmp_path / "run", signal.getsignal(signal.SIGINT)
  try:
    code = cli.main(["train", "bandit", "--steps", "5", "--num-envs", "8", "--out", str(out),
                     "--no-progress"])
  except KeyboardInterrupt:
    pytest.fail("KeyboardInterrupt escaped the CLI")
  assert code == 130
  assert "before the first train step; nothing written" in _one_line(capsys.readouterr().err)
  assert not out.exists()
  assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_ctrl_c_during_a_sweep_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
  from reinforce_jax.experiments import sweep

  make_run = sweep.make_run

  def interrupted_make_run(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return make_run(*args, **kwargs)

  monkeypatch.setattr(sweep, "make_run", interrupted_make_run)
  out = tmp_path / "sweep"
  try:
    code = cli.main(["sweep", "bandit", "--lr", "0.1,0.2", "--steps", "2", "--num-envs", "8",
                     "--out", str(out)])
  except KeyboardInterrupt:
    pytest.fail("KeyboardInterrupt escaped the CLI")
  assert code == 130
  assert "nothing written" in _one_line(capsys.readouterr().err)
  assert not out.exists()


@pytest.mark.slow  # 5 s or more on 2 cores: make test-slow
def test_ctrl_c_is_honoured_within_seconds_at_any_step_count(tmp_path):
  """Chunks of about a second: 2e8 steps would be minutes of one call in 50 chunks."""
  out = tmp_path / "run"
  process = _start(out, "--steps", "200000000")
  metrics = out / "metrics.jsonl"
  deadline = time.monotonic() + 120
  while not (metrics.exists() and metrics.stat().st_size > 0):
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, "no metrics were written"
    time.sleep(0.01)
  signalled = time.monotonic()
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=60)
  assert process.returncode == 130, err
  assert time.monotonic() - signalled < 15, "the run took too long to stop"
  assert "interrupted; saved the state of step" in _one_line(err)
  done = json.loads((out / "summary.json").read_text())["steps_done"]
  assert latest_step(out / "checkpoints") == done > 0


def test_a_second_ctrl_c_ends_the_process_at_once():
  """The first Ctrl-C restores the default action, so the next one kills the process even
  inside a long computation, where no Python handler could run."""
  handler = signal.getsignal(signal.SIGINT)
  with cli.commands._Interrupts() as interrupts:
    assert not interrupts()
    signal.raise_signal(signal.SIGINT)  # handled by the run's flag, not KeyboardInterrupt
    assert interrupts()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is handler
  code = ("import signal, time\n"
          "from reinforce_jax.cli.commands import _Interrupts\n"
          "with _Interrupts() as interrupts:\n"
          "  signal.raise_signal(signal.SIGINT)\n"
          "  print('first', interrupts(), flush=True)\n"
          "  signal.raise_signal(signal.SIGINT)\n"
          "  print('never printed', flush=True)\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == -signal.SIGINT, done
  assert done.stdout.split() == ["first", "True"]


def _out_of_memory(*args, **kwargs):
  import jax

  raise jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 bytes.")


def test_out_of_memory_in_a_new_run_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch,
                                                                     capsys):
  monkeypatch.setattr(experiment.loop, "run_loop", _out_of_memory)
  out = tmp_path / "run"
  code = cli.main(["train", "bandit", "--steps", "5", "--num-envs", "8", "--out", str(out),
                   "--no-progress"])
  assert code == 1
  line = _one_line(capsys.readouterr().err)
  assert "out of memory (RESOURCE_EXHAUSTED" in line and "nothing was kept" in line, line
  assert not out.exists()
  # The folder is free for the same command again.
  monkeypatch.undo()
  assert cli.main(["train", "bandit", "--steps", "5", "--num-envs", "8", "--out", str(out),
                   "--no-progress"]) == 0


def test_out_of_memory_after_a_checkpoint_leaves_the_run_resumable(tmp_path, monkeypatch,
                                                                    capsys):
  out = tmp_path / "run"
  assert cli.main(["train", "bandit", "--steps", "6", "--num-envs", "8", "--out", str(out),
                   "--no-progress"]) == 0
  capsys.readouterr()
  monkeypatch.setattr(experiment.loop, "run_loop", _out_of_memory)
  code = cli.main(["train", "bandit", "--steps", "12", "--resume", str(out), "--no-progress"])
  assert code == 1
  line = _one_line(capsys.readouterr().err)
  assert f"keeps its checkpoint of step 6 (continue with --resume {out})" in line, line
  monkeypatch.undo()
  assert cli.main(["train", "bandit", "--steps", "12", "--resume", str(out),
                   "--no-progress"]) == 0
  assert json.loads((out / "summary.json").read_text())["steps_done"] == 12
