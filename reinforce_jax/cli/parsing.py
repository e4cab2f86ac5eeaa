"""The `reinforce-jax` argument parser, its value checks, and the run config it asks for.

Everything here is free of JAX: a bad argument is reported in milliseconds, as one
line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from reinforce_jax.experiments.checkpoints import CONFIG_FILE
from reinforce_jax.experiments.presets import PRESETS, SEQUENCE_OPTIONS, Preset
from reinforce_jax.rl import hparams
from reinforce_jax.rl.config import ALGOS, BASELINE_KINDS, RUN_RANGES, TrainConfig

__all__ = ["build_parser"]

_INT32_MAX = 2**31 - 1  # step counters and array sizes are int32 in the compiled program
_UINT32_MAX = 2**32 - 1  # jax.random.key keeps 32 bits of the seed (without jax_enable_x64)
PROGRESS_CHUNKS = 50  # a run is trained in this many jitted chunks between progress updates

# `--log` backends: the module each needs and the extra that installs it
# (`reinforce_jax.experiments.loggers.BACKENDS`, repeated here because that module imports JAX).
LOG_EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb", "wandb")}


class Parser(argparse.ArgumentParser):
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
  """The parser of a float declared with `where` (`reinforce_jax.rl.hparams.Range`)."""
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
SWEEPABLE_OPTIONS = _float_options()
STATIC_OPTIONS = _static_options()
# The options of a run's config, as (flag, key in config.json): `--resume` refuses
# any of them with another value than the stored run's.
RUN_OPTIONS = (
    ("--algo", "algo"), ("--num-envs", "num_envs"), ("--rollout-length", "rollout_length"),
    *((o.flag, o.field) for o in (*SWEEPABLE_OPTIONS, *STATIC_OPTIONS)),
    ("--max-grad-norm", "max_grad_norm"), ("--baseline", "baseline"), ("--seed", "seed"),
    ("--num-seeds", "num_seeds"),
)


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
  for option in SWEEPABLE_OPTIONS:
    if sweep:
      command.add_argument(option.flag, type=_list_of(option.parse), dest=option.field,
                           metavar="V[,V...]",
                           help=f"{option.help} (comma-separated values to sweep)")
    else:
      command.add_argument(option.flag, type=option.parse, dest=option.field, help=option.help)
  for option in STATIC_OPTIONS:
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
  command.add_argument("--log", action="append", choices=list(LOG_EXTRAS), default=[],
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


def sequence_options(args, preset: Preset) -> dict[str, Any] | None:
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
    try:  # an unreadable record is reported by stored_run
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
  parser = Parser(prog="reinforce-jax", description=__doc__.split("\n")[0])
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


def run_config(args, preset, *, exclude=()):
  """The preset's config for `--algo` and `--baseline`, with the other options given.

  Raises:
    ValueError: for an option of a setting that this algorithm (and baseline)
      does not have: it would change nothing (`--clip-eps` for REINFORCE).
  """
  config = preset.configs[args.algo or preset.default_algo]
  if args.baseline is not None:
    config = config.replace(baseline=args.baseline)
  check_options_apply(args, config)
  overrides = {"num_steps": args.steps, **{key: getattr(args, key) for _, key in RUN_OPTIONS
                                           if key not in ("algo", "baseline", "seed",
                                                          "num_seeds")}}
  return config.replace(
      **{k: v for k, v in overrides.items() if v is not None and k not in exclude})


def check_options_apply(args, config: TrainConfig, where: str = "") -> None:
  """Raises ValueError naming the first hyperparameter option `config` has no use for."""
  settings = config.to_dict()
  options = (*SWEEPABLE_OPTIONS, *STATIC_OPTIONS)
  for option in options:
    if getattr(args, option.field) is not None and option.field not in settings:
      flags = ", ".join(o.flag for o in options if o.field in settings)
      raise ValueError(f"{option.flag}: {option.field} is not a hyperparameter of "
                       f"{where}{_describe(config)} (its options: {flags})")


def _describe(config: TrainConfig) -> str:
  if config.algo == "reinforce":
    return f"algo='reinforce' with baseline={config.baseline!r}"
  return f"algo={config.algo!r}"


