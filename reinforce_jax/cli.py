"""`reinforce-jax`: train a preset from the command line.

    reinforce-jax train bandit
    reinforce-jax train cartpole --num-seeds 5 --out runs/cartpole
    reinforce-jax train pendulum --algo ppo

Bad arguments exit with status 2 and one line on stderr, no traceback. They are
found before JAX is imported (this module and what it imports at the top are
free of JAX), so the line comes back in milliseconds; only what needs the
devices (their count and memory, a cluster, a checkpoint) is checked after.
Ctrl-C stops at the end of the current chunk of steps, saves the state and
exits with status 130 (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

from reinforce_jax import hparams
from reinforce_jax.checkpoints import CHECKPOINTS_DIR, CONFIG_FILE, RUN_FILES, SWEEP_FILES
from reinforce_jax.config import (
    ALGOS,
    BASELINE_KINDS,
    RUN_RANGES,
    TrainConfig,
    sweep_grid,
)
from reinforce_jax.presets import PRESETS, SEQUENCE_OPTIONS, Preset

_INT32_MAX = 2**31 - 1  # step counters and array sizes are int32 in the compiled program
_UINT32_MAX = 2**32 - 1  # jax.random.key keeps 32 bits of the seed (without jax_enable_x64)
_PROGRESS_CHUNKS = 50  # a run is trained in this many jitted chunks between progress updates


class _Parser(argparse.ArgumentParser):
  """Reports a usage error as one line and exits with status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _int_in(minimum: int, maximum: int = _INT32_MAX):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    if value > maximum:
      raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
    return value
  return parse


def _float32(value: float) -> float:
  """`value` rounded to float32 (what the compiled program sees): inf when out of range."""
  try:
    return struct.unpack("f", struct.pack("f", value))[0]
  except OverflowError:
    return math.copysign(math.inf, value)


def _number(valid, requirement: str):
  """A float parser; `valid` sees the value as given and rounded to float32 (1e300 is not
  finite in float32, the dtype training uses)."""
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not valid(value):
      raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    if not valid(_float32(value)):
      raise argparse.ArgumentTypeError(f"must be {requirement} (in float32), got {text}")
    return value
  return parse


def _in_range(where: hparams.Range):
  """The parser of a float declared with `where` (`reinforce_jax.hparams.Range`)."""
  return _number(where.contains, where.describe())


_finite_float = _number(math.isfinite, "finite")


NONE = "none"  # what `--stop-at-return none` and `--compilation-cache none` parse to


def _or_none(parse):
  """`parse`, or the word `none` (any case) as `NONE`."""
  def parse_or_none(text: str):
    return NONE if text.strip().lower() == NONE else parse(text)
  return parse_or_none


def _folder(text: str) -> str:
  if not text.strip():
    raise argparse.ArgumentTypeError("expected a folder or 'none', got an empty string")
  return text


def _start_jax(args) -> None:
  """Process-wide JAX settings, before the first computation."""
  from reinforce_jax.compiler import default_cache_dir, use_compilation_cache

  cache = default_cache_dir() if args.compilation_cache is None else args.compilation_cache
  use_compilation_cache(None if cache == NONE else cache)


def _path(text: str) -> str:
  if not text.strip():
    raise argparse.ArgumentTypeError("expected a path, got an empty string")
  return text


def _address(text: str) -> str:
  host, _, port = text.rpartition(":")
  if not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
    raise argparse.ArgumentTypeError(f"expected HOST:PORT (a port in 1..65535), got {text!r}")
  return text


def _list_of(parse):
  def parse_list(text: str) -> list[float]:
    return [parse(part) for part in text.split(",")]
  return parse_list


class _Option(NamedTuple):
  """A command-line flag for a field of the config."""

  flag: str
  field: str  # the flat name (`TrainConfig`'s keyword, the key in config.json)
  parse: Callable[[str], Any] | None  # None: a bool flag (--x / --no-x)
  help: str


def _flag(name: str) -> str:
  return "--lr" if name == "learning_rate" else "--" + name.replace("_", "-")


def _users(name: str) -> str:
  """`; for ...`: the algorithms (and REINFORCE baselines) that have the setting `name`,
  unless every algorithm has it."""
  algos = [algo for algo, cls in hparams.ALGORITHMS.items()
           if name in hparams.hparam_ranges(cls) or name in hparams.static_fields(cls)]
  if len(algos) == len(hparams.ALGORITHMS):
    return ""
  algos += [f"reinforce --baseline {kind}" for kind, cls in hparams.BASELINES.items()
            if cls is not None and name in hparams.hparam_ranges(cls)]
  return f"; for {', '.join(algos)}"


def _help(text: str, name: str) -> str:
  return (text + _users(name)).replace("%", "%%")  # argparse formats help with %


def _float_options() -> tuple[_Option, ...]:
  """A flag per sweepable float: the learning rate and every declared hyperparameter."""
  ranges = {"learning_rate": RUN_RANGES["learning_rate"], **hparams.all_hparam_ranges()}
  return tuple(_Option(_flag(name), name, _in_range(where),
                       where.help if name == "learning_rate" else _help(where.help, name))
               for name, where in ranges.items())


def _static_options() -> tuple[_Option, ...]:
  """A flag per structural setting that is an int or a bool (PPO's epochs, minibatches...)."""
  fields = {}
  for cls in hparams.ALGORITHMS.values():
    fields.update(hparams.static_fields(cls))
  options = []
  for name, field in fields.items():
    text = _help(hparams.static_help(field), name)
    if isinstance(field.default, bool):
      options.append(_Option(_flag(name), name, None, text))
    elif isinstance(field.default, int):  # the declared ints count things: at least 1
      options.append(_Option(_flag(name), name, _int_in(1), text))
  return tuple(options)


# Floats take one value in `train` and a comma-separated list in `sweep`; structural
# settings take one value in both (they shape the compiled program).
_SWEEPABLE_OPTIONS = _float_options()
_STATIC_OPTIONS = _static_options()
# The options of a run's config, as (flag, key in config.json): `--resume` refuses
# any of them with another value than the stored run's.
_RUN_OPTIONS = (
    ("--algo", "algo"), ("--num-envs", "num_envs"), ("--rollout-length", "rollout_length"),
    *((o.flag, o.field) for o in (*_SWEEPABLE_OPTIONS, *_STATIC_OPTIONS)),
    ("--max-grad-norm", "max_grad_norm"), ("--baseline", "baseline"), ("--seed", "seed"),
    ("--num-seeds", "num_seeds"),
)


# `--log` backends: the module each needs and the extra that installs it
# (`reinforce_jax.loggers.BACKENDS`, repeated here because that module imports JAX).
_LOG_EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


def _check_log_extras(backends) -> None:
  """Raises ValueError naming the extra to install for a `--log` backend that is missing."""
  import importlib.util

  for backend in dict.fromkeys(backends):
    module, extra = _LOG_EXTRAS[backend]
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


def _make_loggers(args, out: pathlib.Path, hparams: dict, **names) -> list:
  """The `--log` loggers of a run (or sweep) in `out`, with `hparams` as its config."""
  from reinforce_jax import loggers

  made = []
  for backend in dict.fromkeys(args.log):
    if backend == "tensorboard":
      made.append(loggers.TensorBoardLogger(out / "tensorboard", hparams=hparams, **names))
    else:
      made.append(loggers.WandbLogger(out, config=hparams, name=out.name,
                                      run_names=names.get("run_names")))
  return made


def _add_run_options(command: argparse.ArgumentParser, *, sweep: bool = False) -> None:
  """Options shared by `train` and `sweep`: the task and its config."""
  command.add_argument("env", choices=sorted(PRESETS), metavar="ENV",
                       help="one of: " + ", ".join(f"{k} ({v.description})"
                                                   for k, v in sorted(PRESETS.items())))
  command.add_argument("--algo", choices=list(ALGOS),
                       help="reinforce, a2c or ppo (default: the preset's)")
  command.add_argument("--steps", type=_int_in(0), help="train steps")
  command.add_argument("--num-envs", type=_int_in(1), help="parallel environments")
  command.add_argument("--rollout-length", type=_int_in(1),
                       help="environment steps per environment per train step")
  for option in _SWEEPABLE_OPTIONS:
    if sweep:
      command.add_argument(option.flag, type=_list_of(option.parse), dest=option.field,
                           metavar="V[,V...]",
                           help=f"{option.help} (comma-separated values to sweep)")
    else:
      command.add_argument(option.flag, type=option.parse, dest=option.field, help=option.help)
  for option in _STATIC_OPTIONS:
    if option.parse is None:
      command.add_argument(option.flag, action=argparse.BooleanOptionalAction,
                           dest=option.field, help=option.help)
    else:
      command.add_argument(option.flag, type=option.parse, dest=option.field, help=option.help)
  command.add_argument("--max-grad-norm", type=_in_range(RUN_RANGES["max_grad_norm"]),
                       help="clip the gradient norm")
  command.add_argument("--baseline", choices=list(BASELINE_KINDS), help="REINFORCE's baseline")
  command.add_argument("--seed", type=_int_in(0, _UINT32_MAX),
                       help=f"random seed in [0, {_UINT32_MAX}] (default 0)")
  command.add_argument("--num-seeds", type=_int_in(1),
                       help="independent runs trained together in one program (default 1)")
  command.add_argument("--out", type=_path,
                       help="output folder (default runs/ENV, runs/ENV-sweep); one that "
                            "already holds a run is refused unless --overwrite")
  command.add_argument("--compilation-cache", type=_or_none(_folder), metavar="DIR",
                       help="JAX's persistent compilation cache, so a repeated run skips "
                            "compiling (default: $REINFORCE_JAX_CACHE_DIR, else "
                            "~/.cache/reinforce_jax/xla; 'none' turns it off)")
  command.add_argument("--log", action="append", choices=list(_LOG_EXTRAS), default=[],
                       help="also log to TensorBoard (event files in OUT/tensorboard/) or "
                            "Weights & Biases (OUT/wandb/; WANDB_MODE=offline keeps it local); "
                            "repeat for both. metrics.jsonl is always written")
  command.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out: delete its files (checkpoints "
                            "included; other files stay) before writing the new ones")


_SEQUENCE_FLAGS = {"estimator": "--estimator", "group_size": "--group-size",
                   "aggregation": "--aggregation", "kl_coef": "--kl-coef"}


def _add_sequence_options(command: argparse.ArgumentParser) -> None:
  """The settings of a sequence task (sort): `reinforce_jax.sequence.train.SequenceConfig`."""
  group = command.add_argument_group("sequence tasks (sort)")
  group.add_argument("--estimator", choices=SEQUENCE_OPTIONS["estimator"],
                     help="group advantage (default rloo: unbiased)")
  group.add_argument("--group-size", type=_int_in(1),
                     help="completions sampled per prompt (default 8)")
  group.add_argument("--aggregation", choices=SEQUENCE_OPTIONS["aggregation"],
                     help="how token terms are summed (default sequence_sum: unbiased)")
  group.add_argument("--kl-coef", type=_number(lambda v: 0 <= v < math.inf, "in [0, inf)"),
                     help="weight of the k3 KL estimate to the initial policy (default 0)")


def _sequence_options(args, preset: Preset) -> dict[str, Any] | None:
  """A sequence preset's settings: the preset's, a resumed run's, then the flags given.

  Raises:
    ValueError: for a sequence flag on another task, an algorithm the task lacks, a flag
      that contradicts the resumed run, or a group advantage without a group.
  """
  given = {k: getattr(args, k) for k in _SEQUENCE_FLAGS if getattr(args, k) is not None}
  if preset.build_step is None:
    if given:
      flag = _SEQUENCE_FLAGS[next(iter(given))]
      raise ValueError(f"{flag}: a setting of sequence tasks (sort), not of {args.env}")
    return None
  if args.algo is not None and args.algo not in preset.configs:
    raise ValueError(f"--algo {args.algo}: {args.env} trains with the sequence policy "
                     f"gradient ({', '.join(_SEQUENCE_FLAGS.values())}), algo "
                     f"{'/'.join(preset.configs)}")
  options = dict(preset.options or {})
  if args.resume:
    try:  # an unreadable record is reported by _stored_run
      stored = json.loads((pathlib.Path(args.resume) / CONFIG_FILE).read_text())["options"]
    except (OSError, ValueError, KeyError, TypeError):
      stored = {}
    for key, value in given.items():
      if key in stored and value != stored[key]:
        raise ValueError(f"{_SEQUENCE_FLAGS[key]} {value} contradicts the run in {args.resume} "
                         f"({key} {stored[key]}); a resumed run keeps its settings")
    options.update(stored)
  options.update(given)
  if options["estimator"] != "none" and options["group_size"] < 2:
    raise ValueError(f"--group-size {options['group_size']}: --estimator "
                     f"{options['estimator']} compares completions within a group; give at "
                     "least 2 (or --estimator none)")
  return options


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="reinforce-jax", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  train = commands.add_parser(
      "train", help="train a policy (REINFORCE, A2C or PPO)",
      description="Train a policy. Defaults come from the preset of ENV and --algo.")
  _add_run_options(train)
  train.add_argument("--stop-at-return", type=_or_none(_finite_float), metavar="R",
                     help="stop once every seed's last 100 episodes average >= R (default: the "
                          "preset's solved threshold, 475 for cartpole, none for the others; "
                          "'none' trains every step)")
  train.add_argument("--devices", type=_int_in(1),
                     help="local devices to split the environments over (default: all)")
  train.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed.initialize; the cluster "
                          "is detected on SLURM, TPU pods, MPI, or given by the next three)")
  train.add_argument("--coordinator", type=_address, metavar="HOST:PORT",
                     help="the coordinator's address")
  train.add_argument("--num-processes", type=_int_in(1), help="processes in the run")
  train.add_argument("--process-id", type=_int_in(0), help="this process's index")
  train.add_argument("--profile", type=_path, metavar="DIR",
                     help="write a jax.profiler trace of the first chunk of steps to DIR")
  train.add_argument("--checkpoint-every", type=_int_in(1), metavar="N",
                     help="also save the training state every N steps (it is always saved "
                          "when the run ends, Ctrl-C included)")
  train.add_argument("--resume", type=_path, metavar="DIR",
                     help="continue the run in DIR from its latest checkpoint up to --steps; "
                          "options that contradict the stored run are refused")
  train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  _add_sequence_options(train)
  sweep = commands.add_parser(
      "sweep", help="train every combination of hyperparameter values x seeds in one program",
      description="Sweep hyperparameters (every combination of the listed values) and seeds "
                  "in one jit; write a table (sweep.csv, sweep.json) and a plot (sweep.png).")
  _add_run_options(sweep, sweep=True)
  sweep.add_argument("--devices", type=_int_in(1),
                     help="local devices to spread the runs over (default: all)")
  return parser


class _Interrupts:
  """Turns Ctrl-C (SIGINT) into a request that the run polls: it stops at a safe point.

  Python's own handler raises `KeyboardInterrupt` wherever the main thread is,
  where it can be lost (JAX's garbage-collection callback swallows it) or land
  in the middle of writing a file. A second Ctrl-C raises at once. Nothing is
  installed outside the main thread, or where SIGINT is ignored (a background
  job of a non-interactive shell).
  """

  def __init__(self):
    self.count = 0
    self._previous = None

  def __enter__(self) -> _Interrupts:
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
      if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.count += 1
    if self.count > 1:
      raise KeyboardInterrupt

  def __call__(self) -> bool:
    return self.count > 0

  def check(self) -> None:
    """Raises `KeyboardInterrupt` if Ctrl-C came before the run has written anything."""
    if self.count:
      raise KeyboardInterrupt("before the first train step; nothing written")


def _config(args, preset, *, exclude=()):
  """The preset's config for `--algo` and `--baseline`, with the other options given.

  Raises:
    ValueError: for an option of a setting that this algorithm (and baseline)
      does not have: it would change nothing (`--clip-eps` for REINFORCE).
  """
  config = preset.configs[args.algo or preset.default_algo]
  if args.baseline is not None:
    config = config.replace(baseline=args.baseline)
  _check_options_apply(args, config)
  overrides = {"num_steps": args.steps, **{key: getattr(args, key) for _, key in _RUN_OPTIONS
                                           if key not in ("algo", "baseline", "seed",
                                                          "num_seeds")}}
  return config.replace(
      **{k: v for k, v in overrides.items() if v is not None and k not in exclude})


def _check_options_apply(args, config: TrainConfig, where: str = "") -> None:
  """Raises ValueError naming the first hyperparameter option `config` has no use for."""
  settings = config.to_dict()
  options = (*_SWEEPABLE_OPTIONS, *_STATIC_OPTIONS)
  for option in options:
    if getattr(args, option.field) is not None and option.field not in settings:
      flags = ", ".join(o.flag for o in options if o.field in settings)
      raise ValueError(f"{option.flag}: {option.field} is not a hyperparameter of "
                       f"{where}{_describe(config)} (its options: {flags})")


def _describe(config: TrainConfig) -> str:
  if config.algo == "reinforce":
    return f"algo='reinforce' with baseline={config.baseline!r}"
  return f"algo={config.algo!r}"


# Settings newer than some recorded runs, with the behaviour those runs had.
_ADDED_FIELDS = {"clip_value": False, "anneal_lr": False}


def _stored_run(args) -> tuple[TrainConfig, int, int, int | None, float | None]:
  """The config, seed, seed count, checkpoint interval and stop setting of `--resume DIR`.

  A `config.json` holds `TrainConfig.to_dict()` and the run's own keys; one written
  before hyperparameters were declared per algorithm holds every algorithm's
  settings (those the run's algorithm lacks are ignored).

  Raises:
    ValueError: no readable, complete `config.json`, another environment, or an
      option that contradicts the stored run or that its algorithm does not have.
  """
  folder = pathlib.Path(args.resume)
  where = f"--resume {args.resume}"
  try:
    stored = json.loads((folder / CONFIG_FILE).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{where}: no readable {CONFIG_FILE} ({e})") from None
  if not isinstance(stored, dict):
    raise ValueError(f"{where}: {CONFIG_FILE} is not a JSON object")
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
  _check_options_apply(args, config, where=f"the run in {args.resume}: ")
  recorded = {**config.to_dict(), "seed": stored["seed"], "num_seeds": stored["num_seeds"]}
  for flag, key in _RUN_OPTIONS:
    value = getattr(args, key)
    if value is not None and value != recorded[key]:
      raise ValueError(f"{flag} {value} contradicts the run in {args.resume} ({key} "
                       f"{recorded[key]}); a resumed run keeps its settings")
  if args.steps is not None:
    if config.anneal_lr and args.steps != config.num_steps:
      raise ValueError(f"--steps {args.steps} contradicts the run in {args.resume}: its "
                       f"learning rate anneals to 0 over num_steps {config.num_steps}")
    config = config.replace(num_steps=args.steps)
  for key, kind in (("seed", int), ("num_seeds", int)):
    if not isinstance(stored[key], kind) or isinstance(stored[key], bool):
      raise ValueError(f"{where}: {CONFIG_FILE} has {key} {stored[key]!r}, not an integer")
  return (config, stored["seed"], stored["num_seeds"], stored.get("checkpoint_every"),
          stored.get("stop_at_return"))


def _check_writable(path: pathlib.Path, flag: str) -> None:
  """Raises ValueError unless `path` is, or can be created as, a folder this process writes in."""
  try:
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


def _check_new_folder(path: pathlib.Path, flag: str, *, overwrite: bool) -> None:
  """Raises ValueError if `path` already holds a run (or sweep) and `overwrite` is off."""
  _check_writable(path, flag)
  held = [name for name in (*RUN_FILES, *SWEEP_FILES) if (path / name).exists()]
  if held and not overwrite:
    raise ValueError(f"{flag} {path} already holds a run ({', '.join(held)}); give another "
                     "folder, --resume it, or --overwrite to replace it")


def _clear(path: pathlib.Path) -> None:
  """Deletes the files of a run (or sweep) in `path`, for `--overwrite`."""
  for name in (*RUN_FILES, *SWEEP_FILES):
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


def _check_memory(parser, jax, need: int, *, devices: int, what: str) -> None:
  """Refuses a run whose estimated memory (`need` bytes over `devices` devices) cannot fit."""
  limit, shared, where = _memory_limit(jax)
  per_device = need if shared else -(-need // devices)
  if per_device > limit:
    parser.error(f"{what} need about {per_device / 2**30:,.1f} GiB of memory at once, more "
                 f"than the {where}; use fewer environments, steps per rollout or seeds")


def _check_cluster_options(args) -> None:
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


def _join_cluster(args, parser) -> None:
  """Connects to the other processes (before anything touches a JAX backend)."""
  from reinforce_jax.distributed import initialize

  try:
    initialize(args.coordinator, args.num_processes, args.process_id)
  except Exception as e:  # JAX raises ValueError, RuntimeError, XlaRuntimeError, ...
    first = (str(e).strip().splitlines() or [""])[0][:300]
    parser.error(f"cannot join a multi-process run ({type(e).__name__}: {first})")


def _sweep(args, parser, interrupts: _Interrupts) -> int:
  grid = {o.field: getattr(args, o.field) for o in _SWEEPABLE_OPTIONS
          if getattr(args, o.field) is not None}
  if not grid:
    parser.error("nothing to sweep: give comma-separated values to at least one of "
                 + ", ".join(o.flag for o in _SWEEPABLE_OPTIONS))
  seed = 0 if args.seed is None else args.seed
  num_seeds = args.num_seeds or 1
  out = pathlib.Path(args.out or f"runs/{args.env}-sweep")
  preset = PRESETS[args.env]
  if preset.build_step is not None:
    parser.error(f"sweep {args.env}: a sequence task trains with `reinforce-jax train` only")
  try:
    config = _config(args, preset, exclude=grid)
    combos = sweep_grid(config, grid)
    _check_new_folder(out, "--out", overwrite=args.overwrite)
    _check_log_extras(args.log)
  except ValueError as e:
    parser.error(str(e))
  interrupts.check()
  _start_jax(args)  # before the first computation
  import jax  # imported after the cheap argument checks

  from reinforce_jax.sweep import run_sweep

  if args.devices is not None and args.devices > jax.local_device_count():
    parser.error(f"--devices {args.devices}: only {jax.local_device_count()} device(s)")
  devices = args.devices or jax.local_device_count()
  runs = len(combos) * num_seeds
  per_run = run_bytes(preset, config, steps_per_call=config.num_steps)
  _check_memory(parser, jax, -(-runs // devices) * devices * per_run, devices=devices,
                what=f"{runs} runs of {config.num_envs} environments x {config.rollout_length} "
                     f"steps")
  interrupts.check()
  if args.overwrite:
    _clear(out)
  sweep_loggers = _make_loggers(
      args, out, {"env": args.env, "seed": seed, "num_seeds": num_seeds, **config.to_dict()},
      run_names=[f"{'-'.join(f'{k}_{v:g}' for k, v in combo.items())}-seed_{s}"
                 for combo in combos for s in range(num_seeds)],
      per_run_hparams=[{**combo, "seed_index": s} for combo in combos for s in range(num_seeds)])
  result = run_sweep(args.env, config, grid, seed=seed, num_seeds=num_seeds,
                     devices=args.devices, out_dir=out, should_stop=interrupts,
                     loggers=sweep_loggers)
  axes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
  print(f"{args.env} {config.algo}: {result['runs']} runs ({axes} x {num_seeds} seeds) "
        f"of {config.num_steps} steps in one program on {result['devices']} device(s), "
        f"{result['wall_s']:.1f} s (compile {result['compile_s']:.1f} s)")
  width = [max(len(name), 8) for name in grid]
  print("  " + " ".join(f"{name:>{w}}" for name, w in zip(grid, width, strict=True))
        + f" {'final return':>13} {'std over seeds':>15}")
  for row in result["rows"]:
    best = " <- best" if all(row[n] == result["best"][n] for n in grid) else ""
    print("  " + " ".join(f"{row[name]:>{w}g}" for name, w in zip(grid, width, strict=True))
          + f" {row['final_return_mean']:>13.4g} {row['final_return_std']:>15.3g}{best}")
  print(f"  outputs in {out}/: sweep.csv, sweep.json, sweep.png")
  return 0


def _train(args, parser, interrupts: _Interrupts) -> int:
  preset = PRESETS[args.env]
  seed = 0 if args.seed is None else args.seed
  num_seeds, checkpoint_every = args.num_seeds or 1, args.checkpoint_every
  stored_stop = None  # a resumed run's own stop setting
  out = pathlib.Path(args.resume or args.out or f"runs/{args.env}")
  try:
    _check_cluster_options(args)
    options = _sequence_options(args, preset)
    if args.resume:
      config, seed, num_seeds, stored_every, stored_stop = _stored_run(args)
      checkpoint_every = checkpoint_every or stored_every
      _check_writable(out, "--resume")
    else:
      config = _config(args, preset)
      _check_new_folder(out, "--out", overwrite=args.overwrite)
    if args.profile:
      _check_writable(pathlib.Path(args.profile), "--profile")
    _check_log_extras(args.log)
  except ValueError as e:
    parser.error(str(e))
  interrupts.check()
  _start_jax(args)  # before the first computation
  if args.distributed or args.coordinator:
    _join_cluster(args, parser)  # before anything starts a backend (reading a checkpoint does)

  import jax  # imported after the cheap argument checks

  from reinforce_jax.checkpoints import CheckpointError, latest_step
  from reinforce_jax.experiment import run_experiment

  devices = args.devices or jax.device_count()
  if devices > jax.device_count():
    parser.error(f"--devices {devices}: only {jax.device_count()} device(s)")
  if config.num_envs % devices:
    parser.error(f"--num-envs {config.num_envs} must be divisible by --devices {devices}")
  steps_per_call = max(1, math.ceil(config.num_steps / _PROGRESS_CHUNKS))
  _check_memory(parser, jax, num_seeds * run_bytes(preset, config, steps_per_call=steps_per_call),
                devices=devices,
                what=f"{num_seeds} seed(s) of {config.num_envs} environments x "
                     f"{config.rollout_length} steps")
  if args.resume:
    step = latest_step(out / CHECKPOINTS_DIR)
    if step is None:
      parser.error(f"--resume {args.resume}: no complete checkpoint in {out / CHECKPOINTS_DIR}")
    if config.num_steps < step:
      parser.error(f"--steps {config.num_steps} is below the checkpoint's step {step} of the "
                   f"run in {args.resume}")
  interrupts.check()
  if args.overwrite and jax.process_index() == 0:
    _clear(out)
  stop_at_return = args.stop_at_return
  if stop_at_return is None:  # a resumed run keeps its own; a new one takes the preset's
    stop_at_return = stored_stop if args.resume else preset.solved_return
  elif stop_at_return == NONE:
    stop_at_return = None
  try:
    result = run_experiment(args.env, config, seed=seed, num_seeds=num_seeds,
                            out_dir=out, progress=not args.no_progress,
                            num_chunks=_PROGRESS_CHUNKS,
                            stop_at_return=stop_at_return, devices=devices,
                            profile_dir=args.profile, checkpoint_every=checkpoint_every,
                            resume=bool(args.resume), should_stop=interrupts, options=options,
                            callbacks=_make_loggers(args, out, {
                                "env": args.env, "seed": seed, "num_seeds": num_seeds,
                                **config.to_dict()}) if jax.process_index() == 0 else ())
  except CheckpointError as e:
    parser.error(str(e))
  returns = [r for r in result.final_mean_return if r is not None]
  print(f"{result.env} {config.algo}: {result.status} {result.steps_done} steps x "
        f"{config.num_envs} envs x "
        f"{config.rollout_length} env steps, {result.num_seeds} seed(s), "
        f"{result.wall_time_s:.1f} s (compile {result.compile_time_s:.1f} s)")
  if returns:
    print(f"  final mean return: {sum(returns) / len(returns):.4g} "
          f"(per seed: {', '.join(f'{r:.4g}' for r in returns)})")
  recent = [r for r in result.recent_mean_return if r is not None]
  if len(recent) == len(result.recent_mean_return) and recent:
    print(f"  mean return of the last 100 episodes: {min(recent):.4g} in the worst seed "
          f"(per seed: {', '.join(f'{r:.4g}' for r in recent)})")
  if result.expected_reward is not None:
    print("  exact expected reward of the learned policy: "
          + ", ".join(f"{r:.4f}" for r in result.expected_reward))
  if result.solved_at_step is not None:
    print(f"  every seed's last 100 episodes averaged {stop_at_return:g} or more at step "
          f"{result.solved_at_step}, "
          f"{result.solved_after_s:.1f} s after the start (compile included)")
  if result.files:
    print(f"  outputs in {result.out_dir}/: {', '.join(result.files)}")
  else:
    print(f"  process {jax.process_index()}: trained; process 0 writes the outputs")
  return {"completed": 0, "solved": 0, "non-finite": 1, "interrupted": 130}[result.status]


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  with _Interrupts() as interrupts:
    args = parser.parse_args(argv)
    try:
      if args.command == "sweep":
        return _sweep(args, parser, interrupts)
      return _train(args, parser, interrupts)
    except KeyboardInterrupt as e:
      print(f"reinforce-jax: interrupted{f' {e}' if str(e) else ''}", file=sys.stderr)
      return 130
    except OSError as e:  # a folder that stopped being writable, a full disk, ...
      parser.error(f"cannot write {e.filename or 'the outputs'}: {e.strerror or e}")


if __name__ == "__main__":
  sys.exit(main())
