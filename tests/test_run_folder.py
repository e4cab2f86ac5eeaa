"""Run folders: no write through a symbolic link, whole files renamed into place, one run at a
time per folder (the lock), for `train`, `--resume`, `--overwrite` and `sweep`."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from reinforce_jax import cli
from reinforce_jax.experiments import checkpoints, plotting, run_folder
from reinforce_jax.experiments.run_folder import (
  LOCK_FILE,
  FolderInUseError,
  SymlinkError,
  lock_folder,
)

TRAIN = ["train", "bandit", "--num-envs", "8", "--no-progress"]
SWEEP = ["sweep", "bandit", "--lr", "0.1,0.2", "--steps", "3", "--num-envs", "8"]


def _refused(argv, capsys):
  """Runs the CLI in this process; asserts exit status 2 and one line; returns the line."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


def _outside(tmp_path):
  """A folder outside the run folder, with a file a planted link points to."""
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  (elsewhere / "x").write_text("not the run's")
  return elsewhere


def _link_outside(run, tmp_path, name):
  """Moves `run/name` out of the run folder and leaves a relative link to it in its place."""
  target = tmp_path / "elsewhere" / name
  target.parent.mkdir(exist_ok=True)
  (run / name).rename(target)
  (run / name).symlink_to(os.path.relpath(target, run))
  return target


def _contents(folder):
  return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
          for p in sorted(folder.rglob("*")) if not p.is_symlink()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 30-step run (copied by the tests that change it)."""
  out = tmp_path_factory.mktemp("base") / "run"
  assert cli.main([*TRAIN, "--steps", "30", "--out", str(out)]) == 0
  return out


@pytest.fixture
def run(finished_run, tmp_path):
  out = tmp_path / "run"
  shutil.copytree(finished_run, out, symlinks=True)
  return out


# --- the module itself ---------------------------------------------------------------------


def test_whole_file_writes_replace_the_file_and_leave_no_temporary(tmp_path):
  path = tmp_path / "a.json"
  run_folder.write_text(path, "first")
  inode = path.stat().st_ino
  run_folder.write_bytes(path, b"second")
  assert path.read_bytes() == b"second" and path.stat().st_ino != inode  # renamed into place
  with pytest.raises(RuntimeError), run_folder.atomic_writer(path) as file:
    file.write("half")
    raise RuntimeError("stopped while writing")
  assert path.read_text() == "second"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
  mask = os.umask(0)
  os.umask(mask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as `open` would make it


def test_writes_refuse_a_link_and_leave_its_target(tmp_path):
  elsewhere = _outside(tmp_path)
  run = tmp_path / "run"
  (run / "sub").mkdir(parents=True)
  (run / "file").symlink_to(elsewhere / "x")
  (run / "missing").symlink_to(elsewhere / "nothing")
  (run / "linked").symlink_to(elsewhere)
  for write in (lambda p: run_folder.write_text(p, "new", root=run),
                lambda p: run_folder.write_bytes(p, b"new", root=run),
                lambda p: run_folder.open_append(p, root=run).close()):
    for name in ("file", "missing"):
      with pytest.raises(SymlinkError) as info:
        write(run / name)
      assert str(info.value) == (f"{run / name}: is a symbolic link, and a run does not write "
                                 "through links (remove the link, or choose another folder)")
    with pytest.raises(SymlinkError, match="linked: is a symbolic link"):
      write(run / "linked" / "y")  # a folder between the run folder and the file
    with pytest.raises(SymlinkError, match="linked: is a symbolic link"):
      write(run / "linked" / "sub" / "y")
  assert (elsewhere / "x").read_text() == "not the run's"
  assert sorted(p.name for p in elsewhere.iterdir()) == ["x"]
  assert sorted(p.name for p in (run / "sub").iterdir()) == []


def test_the_run_folder_itself_may_be_a_link(tmp_path):
  (tmp_path / "real").mkdir()
  (tmp_path / "run").symlink_to(tmp_path / "real")
  run_folder.write_text(tmp_path / "run" / "config.json", "{}")
  with run_folder.open_append(tmp_path / "run" / "metrics.jsonl") as file:
    file.write("row\n")
  with run_folder.open_append(tmp_path / "run" / "metrics.jsonl") as file:
    file.write("row\n")
  assert (tmp_path / "real" / "metrics.jsonl").read_text() == "row\nrow\n"
  assert (tmp_path / "real" / "config.json").read_text() == "{}"


def test_refuse_links_checks_the_folder_and_everything_below(tmp_path):
  elsewhere = _outside(tmp_path)
  folder = tmp_path / "run" / "checkpoints"
  run_folder.refuse_links(folder)  # nothing there yet: nothing to refuse
  (folder / "5" / "state").mkdir(parents=True)
  (folder / "5" / "state" / "data").write_text("ok")
  run_folder.refuse_links(folder)
  (folder / "5" / "state" / "deep").symlink_to(elsewhere / "x")
  with pytest.raises(SymlinkError, match="deep: is a symbolic link"):
    run_folder.refuse_links(folder)
  (folder / "5" / "state" / "deep").unlink()
  (folder / "7").symlink_to(elsewhere)
  with pytest.raises(SymlinkError, match="7: is a symbolic link"):
    run_folder.refuse_links(folder)
  shutil.rmtree(folder)
  folder.symlink_to(elsewhere)
  with pytest.raises(SymlinkError, match="checkpoints: is a symbolic link"):
    run_folder.refuse_links(folder)
  with pytest.raises(SymlinkError, match="checkpoints: is a symbolic link"):
    run_folder.refuse_links(folder / "7" / "state", root=tmp_path / "run")


def test_checkpoint_save_refuses_a_link_before_orbax_writes(tmp_path):
  elsewhere = _outside(tmp_path)
  directory = tmp_path / "checkpoints"
  directory.mkdir()
  (directory / "3").symlink_to(elsewhere)  # orbax would delete old steps through it
  with pytest.raises(SymlinkError, match="3: is a symbolic link"):
    checkpoints.save(directory, 4, {"w": 1.0})
  assert sorted(p.name for p in directory.iterdir()) == ["3"]
  assert sorted(p.name for p in elsewhere.iterdir()) == ["x"]


def test_figures_are_written_whole_and_never_through_a_link(tmp_path):
  import io

  import numpy as np

  elsewhere = _outside(tmp_path)
  curve = np.array([[0.1, 0.5, np.nan, 0.9]])
  plotting.plot_learning_curve(curve, tmp_path / "curve.png", title="t")
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  buffer = io.BytesIO()
  plotting.plot_learning_curve(curve, buffer, title="t")
  assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
  (tmp_path / "linked.png").symlink_to(elsewhere / "x")
  with pytest.raises(SymlinkError):
    plotting.plot_learning_curve(curve, tmp_path / "linked.png", title="t")
  assert (elsewhere / "x").read_text() == "not the run's"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "elsewhere", "linked.png"]


def test_the_lock_is_exclusive_holds_the_pid_and_goes_with_its_release(tmp_path):
  out = tmp_path / "new" / "run"
  with lock_folder(out) as lock:
    assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(FolderInUseError) as info:
      lock_folder(out)  # per open file: refused in the same process too
    assert info.value.pid == os.getpid()
    assert str(info.value) == (f"{out}: in use by another run (process {os.getpid()} holds "
                               f"{out / LOCK_FILE}); wait for it to end, or choose another "
                               "folder")
    assert lock.held
  assert not lock.held
  assert not (tmp_path / "new").exists()  # it made both folders; both were left empty
  out.mkdir(parents=True)
  (out / LOCK_FILE).write_text("999999999\n")  # left by a killed process: taken over
  with lock_folder(out):
    assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    (out / "config.json").write_text("{}")
  assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # the folder stays


def test_a_linked_lock_file_is_refused(tmp_path):
  elsewhere = _outside(tmp_path)
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / LOCK_FILE).symlink_to(elsewhere / "x")
  with pytest.raises(SymlinkError, match=f"{LOCK_FILE}: is a symbolic link"):
    lock_folder(tmp_path / "run")
  assert (elsewhere / "x").read_text() == "not the run's"


# --- the command: links --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["params.msgpack", "summary.json", "metrics.jsonl",
                                  "config.json", "learning_curve.png", "policy.png"])
def test_resume_refuses_a_linked_run_file(run, tmp_path, capsys, name):
  target = _link_outside(run, tmp_path, name)
  old = target.read_bytes()
  before = _contents(run)
  line = _refused([*TRAIN, "--resume", str(run), "--steps", "40"], capsys)
  assert f"cannot write {run / name}: is a symbolic link" in line, line
  assert target.read_bytes() == old
  assert _contents(run) == before and (run / name).is_symlink()


@pytest.mark.parametrize("where", ["checkpoints", "checkpoints/30", "checkpoints/7"])
def test_resume_refuses_a_link_in_the_checkpoints(run, tmp_path, capsys, where):
  elsewhere = _outside(tmp_path)
  target = run / where
  if target.exists():
    (elsewhere / "moved").mkdir()
    target.rename(elsewhere / "moved" / target.name)
    target.symlink_to(elsewhere / "moved" / target.name)
  else:
    target.symlink_to(elsewhere)
  before = _contents(elsewhere)
  line = _refused([*TRAIN, "--resume", str(run), "--steps", "40"], capsys)
  assert "is a symbolic link" in line and where.split("/")[-1] in line, line
  assert _contents(elsewhere) == before


@pytest.mark.parametrize("name", ["summary.json", "params.msgpack", "metrics.jsonl"])
def test_each_write_refuses_a_link_even_past_the_first_check(run, tmp_path, capsys,
                                                             monkeypatch, name):
  """With the check before compiling taken out, the writes themselves still refuse."""
  monkeypatch.setattr(run_folder, "refuse_links", lambda *args, **kwargs: None)
  target = _link_outside(run, tmp_path, name)
  old = target.read_bytes()
  line = _refused([*TRAIN, "--resume", str(run), "--steps", "40"], capsys)
  assert f"cannot write {run / name}: is a symbolic link" in line, line
  assert target.read_bytes() == old
  assert (run / name).is_symlink()


def test_resume_replaces_files_whole(run, tmp_path):
  """A hard link to a run file elsewhere keeps the old contents: files are renamed into
  place, never rewritten where they are."""
  copies = {}
  for name in ("summary.json", "params.msgpack", "config.json"):
    copies[name] = tmp_path / f"copy-{name}"
    os.link(run / name, copies[name])
    copies[name] = (copies[name], copies[name].read_bytes())
  assert cli.main([*TRAIN, "--resume", str(run), "--steps", "40"]) == 0
  assert json.loads((run / "summary.json").read_text())["steps_done"] == 40
  for path, old in copies.values():
    assert path.read_bytes() == old
  assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_FILE]


def test_a_dangling_link_in_a_new_folder_counts_as_a_file(tmp_path, capsys):
  elsewhere = _outside(tmp_path)
  out = tmp_path / "run"
  out.mkdir()
  (out / "params.msgpack").symlink_to(elsewhere / "missing")
  line = _refused([*TRAIN, "--steps", "30", "--out", str(out)], capsys)
  assert "already holds a run (params.msgpack)" in line, line
  assert sorted(p.name for p in out.iterdir()) == ["params.msgpack"]
  assert not os.path.lexists(elsewhere / "missing")
  # --overwrite removes the link itself; the run writes its own file
  assert cli.main([*TRAIN, "--steps", "30", "--out", str(out), "--overwrite"]) == 0
  assert not (out / "params.msgpack").is_symlink() and (out / "params.msgpack").stat().st_size
  assert sorted(p.name for p in elsewhere.iterdir()) == ["x"]


def test_an_out_that_is_a_dangling_link_is_refused(tmp_path, capsys):
  (tmp_path / "run").symlink_to(tmp_path / "missing")
  line = _refused([*TRAIN, "--steps", "30", "--out", str(tmp_path / "run")], capsys)
  assert "a symbolic link to" in line and "which does not exist" in line, line
  assert not os.path.lexists(tmp_path / "missing")


def test_a_linked_tensorboard_folder_is_refused(tmp_path, capsys):
  pytest.importorskip("tensorboardX")
  elsewhere = _outside(tmp_path)
  out = tmp_path / "run"
  out.mkdir()
  (out / "tensorboard").symlink_to(elsewhere)
  line = _refused([*TRAIN, "--steps", "3", "--out", str(out), "--log", "tensorboard"], capsys)
  assert f"cannot write {out / 'tensorboard'}: is a symbolic link" in line, line
  assert sorted(p.name for p in elsewhere.iterdir()) == ["x"]
  assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]  # nothing else written


def test_sweeps_refuse_links_and_overwrite_removes_them(tmp_path, capsys):
  elsewhere = _outside(tmp_path)
  out = tmp_path / "sweep"
  out.mkdir()
  (out / "sweep.csv").symlink_to(elsewhere / "missing")
  line = _refused([*SWEEP, "--out", str(out)], capsys)
  assert "already holds a run (sweep.csv)" in line, line
  (out / "sweep.png").symlink_to(elsewhere / "x")
  assert cli.main([*SWEEP, "--out", str(out), "--overwrite"]) == 0
  assert sorted(p.name for p in out.iterdir()) == [
      "metrics.jsonl", "sweep.csv", "sweep.json", "sweep.png"]
  assert not any(p.is_symlink() for p in out.iterdir())
  assert sorted(p.name for p in elsewhere.iterdir()) == ["x"]
  assert (elsewhere / "x").read_text() == "not the run's"


# --- the command: one run per folder ---------------------------------------------------------


_HOLD = ("import sys\n"
         "from reinforce_jax.experiments.run_folder import lock_folder\n"
         "with lock_folder(sys.argv[1]):\n"
         "  print('locked', flush=True)\n"
         "  sys.stdin.read()\n")


@pytest.fixture
def held(tmp_path):
  """Runs a helper process that holds the lock on `tmp_path/run` until the test ends."""
  out = tmp_path / "run"
  helper = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert helper.stdout.readline() == "locked\n"
    yield out, helper.pid
  finally:
    helper.stdin.close()
    assert helper.wait(timeout=60) == 0


def test_a_run_into_a_locked_folder_is_refused_naming_the_holder(held, capsys):
  out, pid = held
  (out / "config.json").write_text("mine")  # --overwrite must not touch it either
  for argv in ([*TRAIN, "--steps", "30", "--out", str(out), "--overwrite"],
               [*SWEEP, "--out", str(out), "--overwrite"]):
    line = _refused(argv, capsys)
    assert line.endswith(f"--out {out}: in use by another run (process {pid} holds "
                         f"{out / LOCK_FILE}); wait for it to end, or choose another folder")
  assert sorted(p.name for p in out.iterdir()) == ["config.json", LOCK_FILE]
  assert (out / "config.json").read_text() == "mine"


def test_resume_of_a_locked_folder_is_refused(finished_run, tmp_path, capsys):
  out = tmp_path / "run"
  shutil.copytree(finished_run, out)
  before = _contents(out)
  helper = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert helper.stdout.readline() == "locked\n"
    line = _refused([*TRAIN, "--resume", str(out), "--steps", "40"], capsys)
    assert f"--resume {out}: in use by another run (process {helper.pid} holds" in line, line
  finally:
    helper.stdin.close()
    assert helper.wait(timeout=60) == 0
  assert _contents(out) == before
  assert cli.main([*TRAIN, "--resume", str(out), "--steps", "40"]) == 0  # free again


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once(tmp_path):
  """Two real `reinforce-jax` processes: the second is refused while the first trains,
  and the folder holds the first run's files only."""
  out = tmp_path / "run"
  command = [sys.executable, "-m", "reinforce_jax", *TRAIN, "--out", str(out)]
  first = subprocess.Popen([*command, "--steps", "100000000", "--seed", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size):
      assert first.poll() is None, first.communicate()
      assert time.monotonic() < deadline, "the first run wrote no metrics"
      time.sleep(0.05)
    assert (out / LOCK_FILE).read_text() == f"{first.pid}\n"
    second = subprocess.run([*command, "--steps", "30", "--seed", "2", "--overwrite"],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second
    assert second.stderr.strip().splitlines() == [
        f"reinforce-jax: error: --out {out}: in use by another run (process {first.pid} "
        f"holds {out / LOCK_FILE}); wait for it to end, or choose another folder"]
    assert first.poll() is None  # the first run goes on
  finally:
    first.kill()
    first.communicate(timeout=60)
  assert json.loads((out / "config.json").read_text())["seed"] == 1
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert rows and [r["step"] for r in rows] == list(range(1, len(rows) + 1))
  # The killed run's lock file is left; the next run takes it over.
  assert (out / LOCK_FILE).exists()
  assert cli.main([*TRAIN, "--steps", "30", "--out", str(out), "--overwrite"]) == 0
  assert json.loads((out / "config.json").read_text())["seed"] == 0
  assert not (out / LOCK_FILE).exists()


def test_a_folder_filled_while_waiting_for_the_lock_is_refused(tmp_path, capsys, monkeypatch):
  """A new run checks the folder again once it holds the lock: another run may have
  filled it after the first check."""
  from reinforce_jax.cli import commands

  out = tmp_path / "run"
  taken = commands.lock_folder

  def lock_after_another_run(folder):
    pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(folder) / "summary.json").write_text("{}")  # that run's, just ended
    return taken(folder)

  monkeypatch.setattr(commands, "lock_folder", lock_after_another_run)
  line = _refused([*TRAIN, "--steps", "30", "--out", str(out)], capsys)
  assert "already holds a run (summary.json)" in line, line
  assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
