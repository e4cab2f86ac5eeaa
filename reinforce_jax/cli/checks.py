"""What a run request must pass before training: its folder, resume record, memory,
cluster options and logging extras. Each check raises `ValueError` with one line that
names the problem (the command reports it with exit status 2).
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import socket
import tempfile

from reinforce_jax.cli.parsing import LOG_EXTRAS, RUN_OPTIONS, check_options_apply, read_record
from reinforce_jax.experiments.checkpoints import CONFIG_FILE, RUN_FILES, SWEEP_FILES
from reinforce_jax.experiments.presets import PRESETS, Preset
from reinforce_jax.experiments.run_folder import LOCK_FILE
from reinforce_jax.rl.config import TrainConfig

__all__ = ["run_bytes"]



def check_log_extras(backends) -> None:
  """Raises ValueError naming the extra to install for a `--log` backend that is missing."""
  import importlib.util

  for backend in dict.fromkeys(backends):
    module, extra = LOG_EXTRAS[backend]
    if importlib.util.find_spec(module) is None:
      raise ValueError(f"--log {backend} needs {module}: pip install 'reinforce_jax[{extra}]'")
  if "wandb" in backends and not _wandb_can_start():
    raise ValueError("--log wandb: no W&B credentials (WANDB_API_KEY or `wandb login`); "
                     "log in, or set WANDB_MODE=offline to keep the run in OUT/wandb/")


def _wandb_can_start() -> bool:
  """Whether `wandb.init` can start without asking for a key (which, with no terminal, fails
  only after the program has compiled)."""
  if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
    return True
  if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_BASE_URL"):
    return True
  netrc = pathlib.Path(os.environ.get("NETRC", pathlib.Path.home() / ".netrc"))
  try:
    return "api.wandb.ai" in netrc.read_text()
  except OSError:
    return False


# Settings newer than some recorded runs, with the behaviour those runs had. A record
# without them is complete; any other field a record lacks, or holds beyond the schema
# (`parsing.CONFIG_SETTINGS`), is an error.
_ADDED_FIELDS = {"clip_value": False, "anneal_lr": False, "bootstrap_truncation": True,
                 "normalize_observations": False}


def stored_run(args) -> tuple[TrainConfig, int, int, int | None, float | None]:
  """The config, seed, seed count, checkpoint interval and stop setting of `--resume DIR`.

  Every field of `config.json` is checked as its command-line option checks the
  same value (`parsing.read_record`): a seed of -1 or 1e14, a `checkpoint_every`
  of "x" or a NaN `stop_at_return` is refused, as `--seed -1` is. A record written
  before hyperparameters were declared per algorithm holds every algorithm's
  settings (checked too; those the run's algorithm lacks are ignored).

  Raises:
    ValueError: no readable, complete `config.json`, a field with an invalid value,
      an unknown field, another environment or policy, or an option that contradicts
      the stored run or that its algorithm does not have.
  """
  folder = pathlib.Path(args.resume)
  where = f"--resume {args.resume}"
  preset = PRESETS[args.env]
  try:
    stored = read_record(folder)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  # Fields added after a run was recorded take the value that reproduces it.
  stored = {**_ADDED_FIELDS, **stored}
  missing = [k for k in ("env", "seed", "num_seeds", "algo", "baseline") if k not in stored]
  try:
    if not missing:  # the settings a complete record of this algorithm holds
      expected = TrainConfig.from_dict({"algo": stored["algo"], "baseline": stored["baseline"]})
      missing = [k for k in expected.to_dict() if k not in stored]
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {CONFIG_FILE} holds an invalid config ({e})") from None
  if missing:
    raise ValueError(f"{where}: {CONFIG_FILE} lacks {', '.join(map(repr, missing))}; "
                     "it is not the record of a complete run")
  if stored["env"] != args.env:
    raise ValueError(f"{where} holds a {stored['env']!r} run, not {args.env!r}")
  if "hidden" in stored and stored["hidden"] != list(preset.hidden):
    raise ValueError(f"{where}: {folder / CONFIG_FILE} holds hidden {stored['hidden']}, but "
                     f"the {args.env} policy's hidden layers are {list(preset.hidden)}; it is "
                     "not a run of this version's preset")
  if args.overwrite:
    raise ValueError("--overwrite and --resume contradict each other")
  if args.out is not None and pathlib.Path(args.out).resolve() != folder.resolve():
    raise ValueError(f"--out {args.out} contradicts {where}: a resumed run stays in its folder")
  try:
    config = TrainConfig.from_dict(stored)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {CONFIG_FILE} holds an invalid config ({e})") from None
  # Compared with the config read back, not the raw record: an old record's value
  # of a setting the run's algorithm lacks must not let that option through.
  check_options_apply(args, config, where=f"the run in {args.resume}: ")
  recorded = {**config.to_dict(), "seed": stored["seed"], "num_seeds": stored["num_seeds"]}
  for flag, key in RUN_OPTIONS:
    value = getattr(args, key)
    if value is not None and value != recorded[key]:
      raise ValueError(f"{flag} {value} contradicts the run in {args.resume} ({key} "
                       f"{recorded[key]}); a resumed run keeps its settings")
  if args.steps is not None:
    if config.anneal_lr and args.steps != config.num_steps:
      raise ValueError(f"--steps {args.steps} contradicts the run in {args.resume}: its "
                       f"learning rate anneals to 0 over num_steps {config.num_steps}")
    config = config.replace(num_steps=args.steps)
  return (config, stored["seed"], stored["num_seeds"], stored.get("checkpoint_every"),
          stored.get("stop_at_return"))


def check_writable(path: pathlib.Path, flag: str) -> None:
  """Raises ValueError unless `path` is, or can be created as, a folder this process writes in.

  `path` may be a symbolic link to a folder, not a link to nothing (creating the
  folder would fail, or make it where the link points).
  """
  try:
    if path.is_symlink() and not path.exists():
      raise ValueError(f"{flag} {path}: a symbolic link to {os.readlink(path)}, which does not "
                       "exist; remove the link, or give the folder it should point to")
    if path.exists() and not path.is_dir():
      raise ValueError(f"{flag} {path}: exists and is not a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
      raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    with tempfile.TemporaryFile(dir=existing):  # as real as a check gets (root passes chmod)
      pass
  except OSError as e:
    raise ValueError(f"{flag} {path}: cannot write in {e.filename or path} "
                     f"({e.strerror or e})") from None


def _run_files() -> list[str]:
  """The names of a run's (or sweep's) files but the lock file, which is not a run by itself."""
  return [name for name in dict.fromkeys((*RUN_FILES, *SWEEP_FILES)) if name != LOCK_FILE]


def check_new_folder(path: pathlib.Path, flag: str, *, overwrite: bool) -> None:
  """Raises ValueError if `path` already holds a run (or sweep) and `overwrite` is off.

  A symbolic link with a run file's name counts as that file, even a link to
  nothing (a run would otherwise create the file it points to). The lock file
  does not: a live run's lock is refused when the lock is taken, naming its
  process, and one left by a killed process is taken over.
  """
  check_writable(path, flag)
  held = [name for name in _run_files() if os.path.lexists(path / name)]
  if held and not overwrite:
    raise ValueError(f"{flag} {path} already holds a run ({', '.join(held)}); give another "
                     "folder, --resume it, or --overwrite to replace it")


def clear_run_files(path: pathlib.Path) -> None:
  """Deletes the files of a run (or sweep) in `path`, for `--overwrite`.

  Links are removed, not followed. The lock file stays: the run that clears the
  folder holds it.
  """
  for name in _run_files():
    target = path / name
    if target.is_dir() and not target.is_symlink():
      shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
      target.unlink()


def run_bytes(preset: Preset, config: TrainConfig, *, steps_per_call: int) -> int:
  """An estimate, from below, of the memory one run of `config` holds at once, in bytes.

  A train step keeps its `[T, B]` trajectory (observations, actions, rewards,
  flags, log-probabilities, values, returns, advantages) and, for the backward
  pass, every layer's activations for the transitions of a gradient step (all
  of them; one minibatch in ppo), all float32; a call of `steps_per_call` steps
  also buffers each step's metrics. The compiled program needs more (CartPole
  REINFORCE, 4096 x 200: 840 MB measured, 490 MB estimated), so a run above
  this estimate cannot fit.
  """
  transitions = config.num_envs * config.rollout_length
  trajectory = 2 * preset.obs_size + preset.action_size + 8
  networks = 2 if config.uses_value else 1
  activations = networks * (sum(preset.hidden) + preset.action_size + 1)
  # An algorithm that splits the batch into minibatches back-propagates one at a time.
  activations = math.ceil(activations / getattr(config.algorithm, "num_minibatches", 1))
  return 4 * (transitions * (trajectory + activations) + 16 * steps_per_call)


def _memory_limit(jax) -> tuple[int, bool, str]:
  """(bytes one device can hold, whether the devices share them, what the bytes are)."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return stats["bytes_limit"], False, f"{stats['bytes_limit'] / 2**30:.1f} GiB of {device}"
  physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return physical, True, f"{physical / 2**30:.1f} GiB of physical memory"


def check_memory(parser, jax, need: int, *, devices: int, what: str) -> None:
  """Refuses a run whose estimated memory (`need` bytes over `devices` devices) cannot fit."""
  limit, shared, where = _memory_limit(jax)
  per_device = need if shared else -(-need // devices)
  if per_device > limit:
    parser.error(f"{what} need about {per_device / 2**30:,.1f} GiB of memory at once, more "
                 f"than the {where}; use fewer environments, steps per rollout or seeds")


def check_cluster_options(args) -> None:
  """Raises ValueError for multi-process options that cannot work together."""
  if (args.num_processes is not None or args.process_id is not None) and not (
      args.coordinator or args.distributed):
    raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT "
                     "(or --distributed, on a cluster JAX detects)")
  if args.process_id is not None and args.num_processes is not None and (
      args.process_id >= args.num_processes):
    raise ValueError(f"--process-id {args.process_id} must be < --num-processes "
                     f"{args.num_processes}")
  if args.coordinator:
    host, _, port = args.coordinator.rpartition(":")
    try:
      socket.getaddrinfo(host.strip("[]"), int(port))
    except OSError as e:
      raise ValueError(f"--coordinator {args.coordinator}: unknown host {host!r} "
                       f"({e.strerror or e})") from None


def join_cluster(args, parser) -> None:
  """Connects to the other processes (before anything touches a JAX backend)."""
  from reinforce_jax.experiments.distributed import initialize

  try:
    initialize(args.coordinator, args.num_processes, args.process_id)
  except Exception as e:  # JAX raises ValueError, RuntimeError, XlaRuntimeError, ...
    first = (str(e).strip().splitlines() or [""])[0][:300]
    parser.error(f"cannot join a multi-process run ({type(e).__name__}: {first})")


