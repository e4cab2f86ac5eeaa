"""Checkpoints of a training run with orbax: save, find, restore.

A run folder holds `config.json` (everything needed to rebuild the run: the
environment, the seed, the config) and `checkpoints/<step>/`, written by an
`orbax.checkpoint.CheckpointManager`. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a process killed during a
save leaves the previous checkpoint as the latest usable one. Keys are not
stored: every step's key is derived from the seed and the step count.

Importing this module does not import JAX or orbax (the CLI reads `RUN_FILES`
before it starts JAX).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from typing import Any

from reinforce_jax.experiments.run_folder import LOCK_FILE, refuse_links

__all__ = [
    "CheckpointError",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "latest_step",
    "restore",
    "RUN_FILES",
    "save",
    "SWEEP_FILES",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PARAMS_FILE = "params.msgpack"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
# Everything `reinforce-jax train` and `sweep` write into a run folder (and all
# that `--overwrite` removes: other files in the folder are left alone). The lock
# file (`run_folder.LOCK_FILE`) is there only while a run holds the folder: it is
# not a run by itself, and `--overwrite` keeps it (the new run holds it).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, PARAMS_FILE, SUMMARY_FILE, CHECKPOINTS_DIR,
             "learning_curve.png", "policy.png", LOCK_FILE)
SWEEP_FILES = ("sweep.csv", "sweep.json", "sweep.png", LOCK_FILE)


class CheckpointError(ValueError):
  """A missing, corrupt or mismatched checkpoint (the CLI exits with status 2)."""


def _manager(directory: pathlib.Path, *, create: bool, **kwargs):
  import orbax.checkpoint as ocp

  # Synchronous: `save` waits for the commit anyway, and orbax's asynchronous save
  # leaves threads waiting (for 10 minutes) on a folder it could not create.
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory.absolute(), options=options, **kwargs)


def save(directory: str | pathlib.Path, step: int, state: Any) -> None:
  """Writes `state` as checkpoint `step` under `directory` (blocks until committed).

  Raises:
    reinforce_jax.experiments.run_folder.SymlinkError: `directory`, or anything in
      it, is a symbolic link (orbax would write, or delete old checkpoints, through it).
  """
  import orbax.checkpoint as ocp

  refuse_links(directory)
  manager = _manager(pathlib.Path(directory), create=True)
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()


def latest_step(directory: str | pathlib.Path) -> int | None:
  """The newest committed checkpoint's step, or None if there is none.

  Raises:
    CheckpointError: `directory` cannot be read.
  """
  steps = _steps(pathlib.Path(directory))
  return steps[0] if steps else None


def _steps(directory: pathlib.Path) -> list[int]:
  """The committed checkpoints' steps, newest first."""
  if not directory.is_dir():
    return []
  try:
    with _quiet_orbax():
      manager = _manager(directory, create=False)
      try:
        return sorted(manager.all_steps(), reverse=True)
      finally:
        manager.close()
  except OSError as error:
    raise CheckpointError(f"cannot read the checkpoints in {directory} "
                          f"({error.strerror or error})") from None


class _Corrupt(Exception):
  """A checkpoint whose files cannot be read (its message says why)."""


def restore(directory: str | pathlib.Path, like: Any) -> tuple[int, Any]:
  """Restores the newest committed checkpoint into the structure and shardings of `like`.

  The checkpoint's stored structure (every array's path, shape and dtype) is
  compared with `like` first: a difference is a mismatch (another environment,
  policy or config). A checkpoint of the right structure whose files cannot be
  read (missing, truncated, garbled) is corrupt; the error then names the
  newest older checkpoint that restores intact, if there is one, which resumes
  once the corrupt step's folder is removed. Nothing is restored from an older
  step without that: which state a run continues from stays the user's choice.

  Raises:
    CheckpointError: if there is no checkpoint, it is corrupt or incomplete, or its
      structure is not `like`'s (another environment, policy or config).
  """
  directory = pathlib.Path(directory)
  steps = _steps(directory)
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}")
  step = steps[0]
  with _quiet_orbax():
    manager = _restoring_manager(directory)
    try:
      try:
        return step, _restore_step(manager, directory, step, like)
      except _Corrupt as error:
        intact = next((older for older in steps[1:] if _is_intact(manager, directory, older,
                                                                   like)), None)
        if intact is None:
          offer = "; no older checkpoint is intact"
        else:
          offer = (f"; step {intact} is intact: remove the folder {directory / str(step)} "
                   "to resume from it")
        raise CheckpointError(f"checkpoint step {step} in {directory / str(step)} is corrupt "
                              f"({error}){offer}") from None
    finally:
      manager.close()


def _restoring_manager(directory: pathlib.Path):
  import orbax.checkpoint as ocp

  # The handler is named so that the stored structure can be read before restoring.
  return _manager(directory, create=False, item_handlers=ocp.StandardCheckpointHandler())


def _restore_step(manager, directory: pathlib.Path, step: int, like: Any) -> Any:
  """Checkpoint `step` read into `like`'s structure.

  Raises:
    _Corrupt: its files are missing or unreadable.
    CheckpointError: its structure is not `like`'s (nor the earlier layout's).
  """
  import jax
  import orbax.checkpoint as ocp

  folder = directory / str(step)
  if not (folder / "default").is_dir():
    raise _Corrupt("its folder 'default', which holds the state, is missing")
  try:
    metadata = manager.item_metadata(step)
  except Exception as error:  # orbax raises many types for unreadable files
    raise _Corrupt(f"its metadata cannot be read: {_first_line(error)}") from None
  stored = getattr(metadata, "tree", None)
  if stored is None:
    raise _Corrupt("its metadata is missing")
  mismatch = _mismatch(stored, like)
  target = like
  if mismatch is not None:
    legacy = _legacy_layout(like)
    if legacy is None or _mismatch(stored, legacy) is not None:
      raise CheckpointError(f"checkpoint {folder} cannot be restored into this run's state "
                            f"({mismatch}); it is of another environment, policy or config")
    target = legacy
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, target)))
  except Exception as error:  # orbax raises many types for unreadable files
    raise _Corrupt(_first_line(error)) from None
  return state if target is like else _from_legacy(like, state)


def _is_intact(manager, directory: pathlib.Path, step: int, like: Any) -> bool:
  try:
    _restore_step(manager, directory, step, like)
  except (_Corrupt, CheckpointError):
    return False
  return True


def _first_line(error: BaseException, limit: int = 200) -> str:
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  line = line if len(line) <= limit else line[:limit - 3] + "..."
  return f"{type(error).__name__}: {line}"


def _signature(tree: Any) -> dict[str, tuple]:
  """`{path: (shape, dtype)}` of every array in `tree` (a state, or orbax's metadata of one)."""
  import jax
  import numpy as np

  def name(key) -> str:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  signature = {}
  for path, leaf in leaves:
    try:
      dtype = str(np.dtype(leaf.dtype))
    except TypeError:  # a key or another extended dtype
      dtype = str(leaf.dtype)
    signature[".".join(name(k) for k in path)] = (tuple(np.shape(leaf)), dtype)
  return signature


def _mismatch(stored: Any, like: Any) -> str | None:
  """How the stored structure differs from `like`'s (its first difference), or None."""
  on_disk, here = _signature(stored), _signature(like)
  for path, value in here.items():
    if path not in on_disk:
      return f"it lacks {path!r}, which this run's state has"
    if on_disk[path] != value:
      return (f"{path!r} is {_describe(on_disk[path])} in it, {_describe(value)} in this "
              "run's state")
  extra = next((path for path in on_disk if path not in here), None)
  if extra is not None:
    return f"it holds {extra!r}, which this run's state lacks"
  return None


def _describe(signature: tuple) -> str:
  shape, dtype = signature
  return f"{dtype}{list(shape)}"


@contextlib.contextmanager
def _quiet_orbax():
  """Silences orbax's log lines while a checkpoint is read (its errors are raised, and
  reported in one line), and the stray reports of reads that orbax leaves in flight when a
  restore fails: their completions find orbax's event loop closed."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  _ignore_closed_loop_reports()
  try:
    yield
  finally:
    logger.setLevel(level)


def _ignore_closed_loop_reports() -> None:
  """Installs (once) a `sys.unraisablehook` that drops "Event loop is closed" reports.

  They come from tensorstore reads that a failed orbax restore left running: each
  completion schedules a callback on the event loop orbax has closed since. Every
  other report goes to the hook that was there before.
  """
  import sys

  previous = sys.unraisablehook
  if getattr(previous, "_drops_closed_loop_reports", False):
    return

  def hook(report) -> None:
    error = report.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(report)

  hook._drops_closed_loop_reports = True
  sys.unraisablehook = hook


def _legacy_layout(like: Any) -> dict | None:
  """`like` (a `TrainState`) as checkpoints before the open-core layout held it, or None.

  Those had `baseline` where `TrainState` now has `algo_state`, and no recurrent
  carry in the environment's state; a run recorded then resumes into today's state.
  """
  import jax

  env = getattr(like, "env", None)
  if not (hasattr(like, "algo_state") and hasattr(env, "policy_carry")):
    return None
  if jax.tree.leaves(env.policy_carry):  # a recurrent policy: there were none then
    return None
  return {"params": like.params, "opt_state": like.opt_state,
          "env": {k: v for k, v in env._asdict().items() if k != "policy_carry"},
          "step": like.step, "baseline": like.algo_state, "hyperparams": like.hyperparams}


def _from_legacy(like: Any, restored: dict) -> Any:
  return like._replace(params=restored["params"], opt_state=restored["opt_state"],
                       env=like.env._replace(**restored["env"]), step=restored["step"],
                       algo_state=restored["baseline"], hyperparams=restored["hyperparams"])
