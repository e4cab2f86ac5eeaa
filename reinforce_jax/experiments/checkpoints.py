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


def _manager(directory: pathlib.Path, *, create: bool):
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=create)
  return ocp.CheckpointManager(directory.absolute(), options=options)


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
  """The newest committed checkpoint's step, or None if there is none."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return None
  manager = _manager(directory, create=False)
  step = manager.latest_step()
  manager.close()
  return step


def restore(directory: str | pathlib.Path, like: Any) -> tuple[int, Any]:
  """Restores the newest committed checkpoint into the structure and shardings of `like`.

  Raises:
    CheckpointError: if there is no checkpoint, or it cannot be read into `like`
      (corrupt files, another environment, policy or config).
  """
  import jax
  import orbax.checkpoint as ocp

  directory = pathlib.Path(directory)
  step = latest_step(directory)
  if step is None:
    raise CheckpointError(f"no checkpoint in {directory}")
  manager = _manager(directory, create=False)
  try:
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(
          jax.tree.map(ocp.utils.to_shape_dtype_struct, like)))
    except Exception:  # orbax raises many types for unreadable or mismatched data
      legacy = _legacy_layout(like)
      if legacy is None:
        raise
      restored = manager.restore(step, args=ocp.args.StandardRestore(
          jax.tree.map(ocp.utils.to_shape_dtype_struct, legacy)))
      state = _from_legacy(like, restored)
  except Exception as error:
    raise CheckpointError(
        f"checkpoint {directory / str(step)} cannot be restored into this run's state "
        f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
  finally:
    manager.close()
  return step, state


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
